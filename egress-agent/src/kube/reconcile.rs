//! One discovery pass: list the sandboxes, end what ended, decide and act on what is new.
//!
//! A pod is *tracked* once acted on (attached, exempted, found served by the runtime
//! wrapper, or left gated on purpose); a failure leaves it untracked, so the next pass tries
//! again (a profile added by a policy reload, a sandbox process that was still starting).

use std::collections::BTreeMap;

use super::{
    cri::{CriClient, Sandbox},
    pod_cgroup,
    select::{decide, Decision},
    KubeConfig, KubeError,
};
use crate::{
    agent::AgentError,
    cgroup::Cgroup,
    daemon::{Daemon, DaemonError},
    netns::Netns,
};

/// What this loop did with a pod.
#[derive(Debug, Clone)]
struct Tracked {
    pod: String,
    /// The pod cgroup's id, once resolved.
    cgroup_id: Option<u64>,
    /// The daemon serves the pod's cgroup (attached by this loop or by the runtime wrapper).
    served: bool,
    /// This loop exempted the pod's cgroup from its gate.
    exempted: bool,
}

pub struct Discovery {
    cri: CriClient,
    cfg: KubeConfig,
    tracked: BTreeMap<String, Tracked>,
    /// The last error logged per sandbox id: a failure repeated every pass is said once.
    said: BTreeMap<String, String>,
    list_err: Option<String>,
}

impl Discovery {
    pub fn new(cri: CriClient, cfg: KubeConfig) -> Self {
        Self {
            cri,
            cfg,
            tracked: BTreeMap::new(),
            said: BTreeMap::new(),
            list_err: None,
        }
    }

    /// One pass; errors are logged (once each), never returned.
    pub async fn pass(&mut self, daemon: &Daemon) {
        let pods = match self.cri.list().await {
            Ok(p) => {
                if self.list_err.take().is_some() {
                    tracing::info!("listing pods works again");
                }
                p
            }
            Err(e) => {
                let s = e.to_string();
                if self.list_err.as_ref() != Some(&s) {
                    tracing::error!(error = %s, "listing pods (will retry)");
                }
                self.list_err = Some(s);
                return;
            }
        };
        let ready: BTreeMap<&str, &Sandbox> = pods
            .iter()
            .filter(|p| p.ready)
            .map(|p| (p.id.as_str(), p))
            .collect();
        let ended: Vec<String> = self
            .tracked
            .keys()
            .filter(|id| !ready.contains_key(id.as_str()))
            .cloned()
            .collect();
        for id in ended {
            self.end(daemon, &id).await;
        }
        self.said.retain(|id, _| ready.contains_key(id.as_str()));
        // Detached behind the loop's back (by hand, by the watcher): act on it again.
        let live = daemon.attached_ids().await;
        self.tracked
            .retain(|_, t| !t.served || t.cgroup_id.is_some_and(|id| live.contains(&id)));
        for (id, pod) in ready {
            if self.tracked.contains_key(id) {
                continue;
            }
            match self.handle(daemon, pod).await {
                Ok(t) => {
                    self.said.remove(id);
                    self.tracked.insert(id.to_string(), t);
                }
                Err(e) => self.say(pod, e),
            }
        }
    }

    /// A failure for `pod`, logged unless it is the one logged last time.
    fn say(&mut self, pod: &Sandbox, e: KubeError) {
        let s = e.to_string();
        if self.said.get(&pod.id) == Some(&s) {
            return;
        }
        match &e {
            KubeError::Daemon { source, .. } => match source.as_ref() {
                DaemonError::Agent(AgentError::UnknownProfile(profile)) => tracing::error!(
                    pod = %pod.display(),
                    profile = %profile,
                    "pod names a profile the policy does not have: it stays without network under the gate"
                ),
                _ => {
                    tracing::error!(pod = %pod.display(), error = %s, "enforcing pod (will retry)")
                }
            },
            _ => tracing::error!(pod = %pod.display(), error = %s, "resolving pod (will retry)"),
        }
        self.said.insert(pod.id.clone(), s);
    }

    /// A pod that is gone or no longer ready: out of the daemon and out of the gate.
    async fn end(&mut self, daemon: &Daemon, id: &str) {
        let Some(t) = self.tracked.remove(id) else {
            return;
        };
        let Some(cg) = t.cgroup_id else { return };
        if t.served {
            match daemon.detach_id(cg).await {
                Ok(_) => tracing::info!(pod = %t.pod, cgroup_id = cg, "pod ended; detached"),
                // The watcher saw its cgroup go first.
                Err(DaemonError::NotAttached(_)) => {}
                Err(e) => tracing::error!(pod = %t.pod, error = %e, "detaching an ended pod"),
            }
        }
        if t.exempted {
            daemon.unexempt(cg);
            tracing::info!(pod = %t.pod, cgroup_id = cg, "pod ended; exemption removed");
        }
    }

    /// Decide and act on a ready pod not tracked yet.
    async fn handle(&self, daemon: &Daemon, pod: &Sandbox) -> Result<Tracked, KubeError> {
        let started = std::time::Instant::now();
        let inspect = self.cri.inspect(&pod.id).await?;
        let name = pod.display();
        let (uid, pid) = (pod.uid.clone(), inspect.pid);
        let n = name.clone();
        let cg = tokio::task::spawn_blocking(move || pod_cgroup::of_sandbox(&n, &uid, pid))
            .await
            .map_err(|e| KubeError::PodCgroup {
                pod: name.clone(),
                reason: e.to_string(),
            })??;
        let mut t = Tracked {
            pod: name.clone(),
            cgroup_id: Some(cg.id),
            served: false,
            exempted: false,
        };
        let served = daemon.served_profile(cg.id).await;
        match (decide(&self.cfg, pod, inspect.host_network), served) {
            (Decision::Enforce { profile, .. }, Some(p)) if p == profile => t.served = true,
            // Served (by the runtime wrapper, its handler naming the profile) and only the
            // default profile says otherwise: left as it is.
            (Decision::Enforce { fallback: true, .. }, Some(p)) => {
                tracing::info!(pod = %name, profile = %p, "pod already enforced (runtime wrapper); default_profile does not override it");
                t.served = true;
            }
            (Decision::Enforce { profile, .. }, _) => {
                self.enforce(daemon, pod, cg, pid, &profile).await?;
                tracing::info!(
                    pod = %name,
                    profile = %profile,
                    cgroup_id = t.cgroup_id.unwrap_or(0),
                    host_network = inspect.host_network,
                    took_us = started.elapsed().as_micros() as u64,
                    "pod attached"
                );
                t.served = true;
            }
            (d, Some(p)) => {
                // Enforced already (the runtime wrapper adopted it) and nothing explicit says
                // otherwise (an annotation, a namespace profile): enforced as it is stays.
                tracing::info!(pod = %name, profile = %p, decision = ?d, "pod already enforced (runtime wrapper); left as it is");
                t.served = true;
            }
            (Decision::Exempt { why }, None) => {
                let gated = daemon.exempt(&cg).map_err(|e| KubeError::Daemon {
                    pod: name.clone(),
                    source: Box::new(e),
                })?;
                tracing::info!(pod = %name, reason = %why, cgroup_id = cg.id, gated, "pod exempt");
                t.exempted = gated;
            }
            (Decision::Gated { why }, None) => {
                if daemon.is_gated(&cg) {
                    tracing::warn!(pod = %name, reason = %why, "pod stays without network under the gate");
                } else {
                    tracing::error!(pod = %name, reason = %why, cgroup = %cg.path.display(), "pod is NOT enforced and no gate covers its cgroup");
                }
            }
        }
        Ok(t)
    }

    /// Attach (or switch the profile of) the pod's cgroup, in the network namespace of its
    /// sandbox process (the node's for a hostNetwork pod).
    async fn enforce(
        &self,
        daemon: &Daemon,
        pod: &Sandbox,
        cg: Cgroup,
        pid: u32,
        profile: &str,
    ) -> Result<(), KubeError> {
        let netns = Netns::of_pid(pid).map_err(|source| KubeError::Netns {
            pod: pod.display(),
            source,
        })?;
        daemon
            .attach_pod(cg, netns, profile.to_string())
            .await
            .map(drop)
            .map_err(|e| KubeError::Daemon {
                pod: pod.display(),
                source: Box::new(e),
            })
    }
}
