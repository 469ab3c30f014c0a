//! Control plane: the daemon's state — its attachments by cgroup id, its gated parents
//! ([`gates`]), the records it restores after a restart ([`state`]) — and the operations the
//! control socket, the OCI hook and the Kubernetes loop ask of it (attach, adopt, detach,
//! reload, status, metrics), plus the watcher that notices tampered links and exited
//! containers ([`watch`]). Every operation validates before its first change; a failed one
//! changes nothing. The command that runs it is [`crate::service`].

pub mod gates;
mod pods;
pub mod state;
mod watch;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Deserialize;

use crate::{agent::Running, attachment::Shared, cgroup::Cgroup, netns::Netns};
use gates::Gates;
use state::{Saved, Store};
pub use watch::watch;

fn default_profile() -> String {
    "default".into()
}

/// Errors of the daemon's operations (a request that fails changes nothing).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Invalid(String),
    #[error("process {0} does not exist (it may have exited)")]
    NoSuchProcess(u32),
    #[error("cgroup {path} (id {id}) is already attached (profile {profile})")]
    AlreadyAttached {
        path: PathBuf,
        id: u64,
        profile: String,
    },
    #[error("{0} is not attached")]
    NotAttached(String),
    #[error("reload refused, the policy in force is unchanged: {0}")]
    Reload(String),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    #[error(transparent)]
    Bpf(#[from] crate::bpf::BpfError),
}

impl DaemonError {
    /// The HTTP status the control socket answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::Invalid(_) | Self::NoSuchProcess(_) | Self::Reload(_) => 400,
            Self::Cgroup(_) | Self::Netns(_) => 400,
            Self::AlreadyAttached { .. } => 409,
            Self::NotAttached(_) => 404,
            Self::Agent(crate::agent::AgentError::UnknownProfile(_)) => 400,
            Self::Agent(_) | Self::Bpf(_) => 500,
        }
    }
}

/// A target as the control socket names it.
#[derive(Debug, Clone, Default, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default = "default_profile")]
    pub profile: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetachRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// A cgroup whose directory may be gone already (a container that exited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
}

/// A container a runtime is starting (the OCI hook): enforce it before its first instruction.
/// Idempotent: adopting an attachment again with the same profile changes nothing.
///
/// Unknown fields are ignored, unlike the operator's requests: the hook is whatever binary
/// the runtime executes, and during an upgrade that is the new one while the old daemon still
/// runs. Every field a newer hook may add only asks for more (e.g. `trusts_ca`); without it
/// the container is enforced all the same.
#[derive(Debug, Clone, Default, serde::Serialize, Deserialize)]
pub struct AdoptRequest {
    /// The container's init process (the OCI state's `pid`): its cgroup and network namespace.
    pub pid: u32,
    pub profile: String,
    /// The runtime's `linux.cgroupsPath`, checked against the process's own cgroup (a runtime
    /// that had not placed the process yet would otherwise get its own cgroup enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroups_path: Option<String>,
    /// A Kubernetes pod sandbox: adopt the pod's cgroup (the parent of the sandbox
    /// container's), so every container of the pod is enforced from its first syscall.
    #[serde(default)]
    pub pod: bool,
    /// With `pod`: the pod's uid (the CRI's `io.kubernetes.cri.sandbox-uid`), which the
    /// pod cgroup's name must carry (`pod<uid>`, or with `_` for `-` under systemd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The runtime wrapper mounted the agent's trust bundle over the container's system
    /// store: a denied TLS name is then answered with a minted certificate and a 403.
    #[serde(default)]
    pub trusts_ca: bool,
    /// The runtime's container id, for the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// A Kubernetes pod's `namespace/name` (the CRI's sandbox annotations), for the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

/// The running daemon: the shared agent state, its attachments by cgroup id, its gates.
pub struct Daemon {
    pub shared: Arc<Shared>,
    pub policy_path: PathBuf,
    /// Lock order: `attachments`, then `gates`.
    attachments: tokio::sync::Mutex<BTreeMap<u64, Running>>,
    gates: std::sync::Mutex<Gates>,
    saved: Store,
    started: std::time::Instant,
}

impl Daemon {
    /// `state_dir`: where attachments are recorded for a restart ([`state::DEFAULT_DIR`]).
    pub fn new(shared: Arc<Shared>, policy_path: PathBuf, state_dir: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            shared,
            policy_path,
            attachments: tokio::sync::Mutex::new(BTreeMap::new()),
            gates: std::sync::Mutex::new(Gates::default()),
            saved: Store::new(state_dir),
            started: std::time::Instant::now(),
        })
    }

    fn gates(&self) -> std::sync::MutexGuard<'_, Gates> {
        self.gates.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads the configured gates (pinned maps reused, nothing armed yet) and starts reading
    /// their denials (`not_adopted`, `not_enforced`) into the audit log.
    pub fn load_gates(&self, configs: &[gates::GateConfig]) -> Result<(), String> {
        let mut loaded = Vec::new();
        for c in configs {
            let mut g = gates::Gated::load(c)?;
            let ring = g
                .gate
                .take_events()
                .map_err(|e| format!("gate {}: {e}", c.cgroup.display()))?;
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let res = crate::bpf::events::run(ring, move |ev| {
                    let version = shared.policy.load().version().to_string();
                    shared
                        .audit
                        .record(crate::agent::kernel_event_record("", version, &ev));
                })
                .await;
                if let Err(e) = res {
                    tracing::error!(error = %e, "gate event reader stopped");
                }
            });
            loaded.push(g);
        }
        gates::warn_unconfigured(&loaded);
        let mut gates = self.gates();
        gates.parents = loaded;
        gates.exempt_self();
        Ok(())
    }

    /// Arms every gate: from here on an unadopted cgroup below one has no network. Called
    /// once the attachments that existed before (restored, configured) are adopted, so
    /// installing a gate never cuts a container this daemon serves.
    pub async fn arm_gates(&self) -> Result<(), String> {
        let map = self.attachments.lock().await;
        let mut gates = self.gates();
        for r in map.values() {
            gates
                .adopt(&r.attachment.cgroup, &r.config)
                .map_err(|e| format!("cgroup id {}: {e}", r.attachment.cgroup.id))?;
        }
        for g in gates.parents.iter_mut() {
            g.prune_gone();
            g.refresh_exempt();
            g.arm()
                .map_err(|e| format!("gate {}: {e}", g.parent().path.display()))?;
            tracing::info!(parent = %g.parent().path.display(), adopted = g.gate.adopted, "gate in force");
        }
        Ok(())
    }

    /// Serves again what an earlier daemon served (its records, its pins). A cgroup that
    /// is gone is detached; one whose network namespace cannot be found keeps its pins (fail
    /// closed) and its record, and is retried by the watcher.
    pub async fn restore(&self) -> usize {
        let mut served = 0;
        for s in self.saved.load_all() {
            match self.restore_one(&s).await {
                Ok(()) => served += 1,
                Err(e) => {
                    tracing::error!(cgroup = %s.cgroup.display(), cgroup_id = s.cgroup_id, error = %e, "restoring an attachment")
                }
            }
        }
        served
    }

    async fn restore_one(&self, s: &Saved) -> Result<(), DaemonError> {
        let cg = match Cgroup::open(&s.cgroup) {
            Ok(cg) if cg.id == s.cgroup_id => cg,
            _ => {
                // The container is gone: so is its cgroup; its pins and record go too.
                let gone = Cgroup {
                    path: s.cgroup.clone(),
                    id: s.cgroup_id,
                };
                let _ = crate::bpf::detach(&gone);
                self.saved.remove(s.cgroup_id);
                tracing::info!(cgroup = %s.cgroup.display(), "saved attachment's cgroup is gone; detached");
                return Ok(());
            }
        };
        let netns = match &s.netns {
            Some(p) => Netns::open(p)?,
            None => netns_of_subtree(&cg)?,
        };
        self.attach_resolved(cg, netns, s.profile.clone(), s.netns.clone(), |_| Ok(()))
            .await?;
        if s.trusts_ca {
            self.mark_trusting(s.cgroup_id).await;
        }
        Ok(())
    }

    /// Resolve, validate, attach. Every check comes before the first change;
    /// a failure after the programs were attached removes them again (unless
    /// they were pinned before, by an earlier agent: then they stay, as found).
    pub async fn attach(&self, req: AttachRequest) -> Result<serde_json::Value, DaemonError> {
        let (cg, netns) = resolve_target(&req)?;
        let pid = req.pid;
        self.attach_resolved(cg, netns, req.profile, req.netns, move |cg| {
            cg.check_dedicated(pid)
        })
        .await
    }

    /// A `[[attach]]` entry of daemon.toml: like [`Daemon::attach`], but an entry already
    /// served (restored from before a restart) with the same profile is left as it is.
    pub async fn attach_configured(
        &self,
        req: AttachRequest,
    ) -> Result<serde_json::Value, DaemonError> {
        match self.attach(req.clone()).await {
            Err(DaemonError::AlreadyAttached { profile, .. }) if profile == req.profile => {
                Ok(serde_json::json!({"already": true}))
            }
            other => other,
        }
    }

    /// The OCI hook's request ([`AdoptRequest`]): enforce the container (or pod) `pid`
    /// belongs to, before it runs anything. The same container adopted twice is one
    /// attachment; a different profile on an adopted container is a profile change, made
    /// without ever leaving it unenforced.
    pub async fn adopt(&self, req: AdoptRequest) -> Result<serde_json::Value, DaemonError> {
        let (container, pod, profile) = (
            req.container.clone().unwrap_or_default(),
            req.pod_name.clone().unwrap_or_default(),
            req.profile.clone(),
        );
        let res = self.adopt_checked(req).await;
        if let Err(e) = &res {
            // The hook's caller (a runtime) may not show its message to anyone: say it here too.
            tracing::error!(container = %container, pod = %pod, profile = %profile, error = %e, "refused to adopt: the container does not start");
        }
        res
    }

    async fn adopt_checked(&self, req: AdoptRequest) -> Result<serde_json::Value, DaemonError> {
        let started = std::time::Instant::now();
        let own = cgroup_of_pid(req.pid)?;
        if let Some(cp) = &req.cgroups_path {
            check_cgroups_path(&own, cp)?;
        }
        let cg = if req.pod {
            own_pod_cgroup(&own, req.pod_uid.as_deref())?
        } else {
            own
        };
        if let Some(r) = self.attachments.lock().await.get(&cg.id) {
            if r.attachment.profile == req.profile {
                if req.trusts_ca {
                    r.attachment.set_trusts_ca(true);
                }
                return Ok(describe(r));
            }
        }
        let netns = Netns::of_pid(req.pid).map_err(|e| {
            if Path::new(&format!("/proc/{}", req.pid)).exists() {
                e.into()
            } else {
                DaemonError::NoSuchProcess(req.pid)
            }
        })?;
        let pid = req.pid;
        let pod = req.pod;
        let v = self
            .attach_or_switch(cg, netns, req.profile, move |cg| {
                if pod {
                    cg.check_dedicated_pod()
                } else {
                    cg.check_dedicated(Some(pid))
                }
            })
            .await?;
        tracing::info!(
            container = req.container.as_deref().unwrap_or(""),
            pod = req.pod_name.as_deref().unwrap_or(""),
            pid = req.pid,
            cgroup_id = v["cgroup_id"].as_u64().unwrap_or(0),
            profile = v["profile"].as_str().unwrap_or(""),
            took_us = started.elapsed().as_micros() as u64,
            "adopted"
        );
        if req.trusts_ca {
            self.mark_trusting(v["cgroup_id"].as_u64().unwrap_or(0))
                .await;
        }
        Ok(v)
    }

    /// Records that an attachment's sandbox trusts the agent's CA (now and after a restart).
    async fn mark_trusting(&self, id: u64) {
        let map = self.attachments.lock().await;
        let Some(r) = map.get(&id) else { return };
        r.attachment.set_trusts_ca(true);
        let saved = Saved {
            cgroup: r.attachment.cgroup.path.clone(),
            cgroup_id: id,
            profile: r.attachment.profile.clone(),
            netns: None,
            trusts_ca: true,
        };
        if let Err(e) = self.saved.save(&saved) {
            tracing::error!(cgroup_id = id, error = %e, "recording the attachment for a restart");
        }
    }

    /// The trust files (CA, system roots + CA bundle, JKS truststore) written under the
    /// state directory, for a runtime wrapper to mount into a container: certificates
    /// only, never the key.
    pub fn trust_files(&self) -> Result<serde_json::Value, DaemonError> {
        let policy = self.shared.policy.load_full();
        let inspector = crate::inspect::Inspector::get(&policy).map_err(DaemonError::Invalid)?;
        let t = inspector
            .ca
            .write_trust(&crate::inspect::ca::state_dir())
            .map_err(|e| DaemonError::Invalid(format!("writing the trust files: {e}")))?;
        Ok(serde_json::json!({"ca": t.ca, "bundle": t.bundle, "jks": t.jks}))
    }

    /// Attach, or (already attached with another profile) serve it again under the new
    /// profile: the old listeners stop, the pins stay (connections are refused, never let
    /// through, for the moment it takes), the new ones start.
    async fn attach_or_switch(
        &self,
        cg: Cgroup,
        netns: Netns,
        profile: String,
        dedicated: impl FnOnce(&Cgroup) -> Result<(), crate::cgroup::CgroupError>,
    ) -> Result<serde_json::Value, DaemonError> {
        if !self.shared.policy.load().has_profile(&profile) {
            return Err(crate::agent::AgentError::UnknownProfile(profile).into());
        }
        let old = self.attachments.lock().await.remove(&cg.id);
        if let Some(old) = old {
            tracing::info!(cgroup_id = cg.id, from = %old.attachment.profile, to = %profile, "profile change");
            drop(old); // stops serving; the pins (and the gate entry) stay
            return self
                .attach_resolved(cg, netns, profile, None, |_| Ok(()))
                .await;
        }
        self.attach_resolved(cg, netns, profile, None, dedicated)
            .await
    }

    /// A Kubernetes pod's cgroup (see `kube`): dedicated means no process of
    /// the host's pid namespace in it (its containers' namespaces differ).
    pub async fn attach_pod(
        &self,
        cg: Cgroup,
        netns: Netns,
        profile: String,
    ) -> Result<serde_json::Value, DaemonError> {
        self.attach_or_switch(cg, netns, profile, Cgroup::check_dedicated_pod)
            .await
    }

    /// Validate, attach (or adopt the pins), adopt into the gate, record for a restart.
    async fn attach_resolved(
        &self,
        cg: Cgroup,
        netns: Netns,
        profile: String,
        netns_path: Option<PathBuf>,
        dedicated: impl FnOnce(&Cgroup) -> Result<(), crate::cgroup::CgroupError>,
    ) -> Result<serde_json::Value, DaemonError> {
        let mut map = self.attachments.lock().await;
        if let Some(r) = map.get(&cg.id) {
            return Err(DaemonError::AlreadyAttached {
                path: cg.path.clone(),
                id: cg.id,
                profile: r.attachment.profile.clone(),
            });
        }
        cg.check_enforceable()?;
        dedicated(&cg)?;
        if !self.shared.policy.load().has_profile(&profile) {
            return Err(crate::agent::AgentError::UnknownProfile(profile).into());
        }
        let was_pinned = crate::bpf::is_attached(&cg)?;
        let started = Running::start(self.shared.clone(), cg.clone(), netns, profile.clone())
            .map_err(DaemonError::from)
            .and_then(|r| {
                self.gates().adopt(&cg, &r.config)?;
                Ok(r)
            });
        let running = match started {
            Ok(r) => r,
            Err(e) => {
                if !was_pinned {
                    self.gates().release(&cg);
                    let _ = crate::bpf::detach(&cg);
                }
                return Err(e);
            }
        };
        let saved = Saved {
            cgroup: cg.path.clone(),
            cgroup_id: cg.id,
            profile,
            netns: netns_path,
            trusts_ca: false,
        };
        if let Err(e) = self.saved.save(&saved) {
            tracing::error!(cgroup_id = cg.id, error = %e, "recording the attachment for a restart");
        }
        let v = describe(&running);
        map.insert(cg.id, running);
        Ok(v)
    }

    /// Stop serving a cgroup and remove its enforcement. A cgroup this daemon
    /// does not serve but that still carries pins (an earlier agent's) is
    /// detached too; anything else is an error.
    pub async fn detach(&self, req: DetachRequest) -> Result<serde_json::Value, DaemonError> {
        let cg = match (&req.cgroup, req.pid, req.cgroup_id) {
            (Some(p), None, None) => Cgroup::open(p)?,
            (None, Some(pid), None) => cgroup_of_pid(pid)?,
            (None, None, Some(id)) => return self.detach_id(id).await,
            _ => {
                return Err(DaemonError::Invalid(
                    "give exactly one of `cgroup`, `pid` or `cgroup_id`".into(),
                ))
            }
        };
        let mut map = self.attachments.lock().await;
        match map.remove(&cg.id) {
            Some(r) => self.retire(r),
            None if crate::bpf::is_attached(&cg)? => {
                self.gates().release(&cg);
                crate::bpf::detach(&cg)?;
                self.saved.remove(cg.id);
                Ok(
                    serde_json::json!({"detached": cg.path, "cgroup_id": cg.id, "orphaned_pins": true}),
                )
            }
            None => Err(DaemonError::NotAttached(format!(
                "cgroup {} (id {})",
                cg.path.display(),
                cg.id
            ))),
        }
    }

    /// Detach by cgroup id: for a cgroup whose directory may be gone already
    /// (a deleted pod). The pins are keyed by the id and removed all the same.
    pub async fn detach_id(&self, id: u64) -> Result<serde_json::Value, DaemonError> {
        let r = self
            .attachments
            .lock()
            .await
            .remove(&id)
            .ok_or_else(|| DaemonError::NotAttached(format!("cgroup id {id}")))?;
        self.retire(r)
    }

    /// Ends one attachment: out of its gate first (so it never has network without its
    /// programs), then its pins, listeners and record.
    fn retire(&self, r: Running) -> Result<serde_json::Value, DaemonError> {
        let counters = kernel_counters(&r);
        let cg = r.attachment.cgroup.clone();
        self.gates().release(&cg);
        r.detach()?;
        self.saved.remove(cg.id);
        self.shared.audit.metrics().retire_kernel(&counters);
        Ok(serde_json::json!({"detached": cg.path, "cgroup_id": cg.id}))
    }

    /// Ids of the cgroups served now.
    pub async fn attached_ids(&self) -> std::collections::BTreeSet<u64> {
        self.attachments.lock().await.keys().copied().collect()
    }

    pub async fn list(&self) -> Vec<serde_json::Value> {
        self.attachments
            .lock()
            .await
            .values()
            .map(describe)
            .collect()
    }

    /// Parse, validate, swap, re-sync every attachment's kernel deny set.
    pub async fn reload(&self) -> Result<serde_json::Value, DaemonError> {
        let mut map = self.attachments.lock().await;
        let profiles: Vec<String> = map.values().map(|r| r.attachment.profile.clone()).collect();
        let res = self.shared.reload(&self.policy_path, &profiles);
        self.shared.audit.metrics().reloaded(res.is_ok());
        let version = res.map_err(DaemonError::Reload)?;
        let mut warnings = Vec::new();
        for r in map.values_mut() {
            if let Err(e) = r.resync() {
                tracing::error!(error = %e, cgroup_id = r.attachment.cgroup.id, "re-syncing the kernel deny set");
                warnings.push(format!("cgroup id {}: {e}", r.attachment.cgroup.id));
            }
        }
        Ok(serde_json::json!({"policy": version, "warnings": warnings}))
    }

    pub async fn status(&self) -> serde_json::Value {
        let policy = self.shared.policy.load();
        let attachments = self.list().await;
        serde_json::json!({
            "agent": "egress-agent",
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "uptime_s": self.started.elapsed().as_secs(),
            "policy": {
                "version": policy.version(),
                "file": self.policy_path,
                "mode": policy.mode().as_str(),
                "profiles": policy.profile_names().collect::<Vec<_>>(),
            },
            "audit": {
                "path": self.shared.audit.path(),
                "written": self.shared.audit.written(),
                "lost": self.shared.audit.lost(),
            },
            "attachments": attachments,
            "gates": self.gates().describe(),
        })
    }

    pub async fn metrics(&self) -> String {
        let map = self.attachments.lock().await;
        let kernel: Vec<_> = map.values().flat_map(kernel_counters).collect();
        drop(map);
        self.shared.audit.metrics().render(
            &kernel,
            self.shared.audit.lost(),
            self.shared.asks.pending_count(),
        )
    }

    /// Stop serving everything; the pins stay (fail closed).
    pub async fn shutdown(&self) {
        self.attachments.lock().await.clear();
    }
}

fn kernel_counters(r: &Running) -> Vec<(&'static str, u32, u64)> {
    r.enforcement
        .counters()
        .map(|v| {
            v.into_iter()
                .map(|(h, reason, n)| (h.label(), reason, n))
                .collect()
        })
        .unwrap_or_default()
}

fn describe(r: &Running) -> serde_json::Value {
    let c = &r.config;
    let a = &r.attachment;
    serde_json::json!({
        "cgroup": a.cgroup.path,
        "cgroup_id": a.cgroup.id,
        "profile": a.profile,
        "adopted": r.enforcement.adopted,
        "netns": {"dev": r.netns.dev, "ino": r.netns.ino},
        "listeners": {
            "tcp": [format!("127.0.0.1:{}", c.tcp_port4), format!("[::1]:{}", c.tcp_port6)],
            "dns": [format!("127.0.0.1:{}", c.dns_port4), format!("[::1]:{}", c.dns_port6)],
        },
        "budgets": a.budgets.describe(&a.shared.policy.load(), &a.profile),
    })
}

/// The network namespace of the first process found in `cg`'s subtree.
fn netns_of_subtree(cg: &Cgroup) -> Result<Netns, DaemonError> {
    let pid = *cg.pids_recursive()?.first().ok_or_else(|| {
        DaemonError::Invalid(format!(
            "cgroup {} has no processes left to find its network namespace from",
            cg.path.display()
        ))
    })?;
    Ok(Netns::of_pid(pid)?)
}

/// The process must already be in the cgroup its runtime named: `linux.cgroupsPath` is a
/// path (cgroupfs driver) or `slice:prefix:name` (systemd driver, the scope
/// `prefix-name.scope`).
fn check_cgroups_path(own: &Cgroup, cgroups_path: &str) -> Result<(), DaemonError> {
    let ok = match cgroups_path.split(':').collect::<Vec<_>>()[..] {
        [_slice, prefix, name] => own
            .path
            .file_name()
            .is_some_and(|f| f.to_string_lossy() == format!("{prefix}-{name}.scope")),
        _ => own
            .path
            .to_string_lossy()
            .ends_with(cgroups_path.trim_end_matches('/')),
    };
    if ok {
        return Ok(());
    }
    Err(DaemonError::Invalid(format!(
        "the container's process is in {} but its runtime names linux.cgroupsPath {cgroups_path:?}: not placed in its cgroup yet",
        own.path.display()
    )))
}

/// The pod-level cgroup of a pod's sandbox (pause) container: its parent, which must carry
/// the pod's uid when it is known (else a runtime without pod cgroups would get its whole
/// parent — every pod of a QoS class — adopted as one).
fn own_pod_cgroup(sandbox: &Cgroup, uid: Option<&str>) -> Result<Cgroup, DaemonError> {
    let parent = sandbox.path.parent().ok_or_else(|| {
        DaemonError::Invalid(format!("{} has no parent cgroup", sandbox.path.display()))
    })?;
    if let Some(uid) = uid {
        let name = parent
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        if !name.contains(uid) && !name.contains(&uid.replace('-', "_")) {
            return Err(DaemonError::Invalid(format!(
                "the pod sandbox's parent cgroup {} does not carry the pod uid {uid}: no pod-level cgroup to adopt",
                parent.display()
            )));
        }
    }
    Ok(Cgroup::open(parent)?)
}

/// `/proc/PID/cgroup`, with "no such process" told apart from other failures.
fn cgroup_of_pid(pid: u32) -> Result<Cgroup, DaemonError> {
    if pid == 0 || !Path::new(&format!("/proc/{pid}")).exists() {
        return Err(DaemonError::NoSuchProcess(pid));
    }
    Cgroup::of_pid(pid).map_err(|e| {
        if Path::new(&format!("/proc/{pid}")).exists() {
            e.into()
        } else {
            DaemonError::NoSuchProcess(pid)
        }
    })
}

fn resolve_target(a: &AttachRequest) -> Result<(Cgroup, Netns), DaemonError> {
    let cg = match (&a.cgroup, a.pid) {
        (Some(p), None) => Cgroup::open(p)?,
        (None, Some(pid)) => cgroup_of_pid(pid)?,
        _ => {
            return Err(DaemonError::Invalid(
                "give exactly one of `cgroup` or `pid`".into(),
            ))
        }
    };
    let netns = match (&a.netns, a.pid) {
        (Some(p), _) => Netns::open(p)?,
        (None, Some(pid)) => Netns::of_pid(pid).map_err(|e| {
            if Path::new(&format!("/proc/{pid}")).exists() {
                e.into()
            } else {
                DaemonError::NoSuchProcess(pid)
            }
        })?,
        (None, None) => {
            let pid = *cg.pids()?.first().ok_or_else(|| {
                DaemonError::Invalid(format!(
                    "cgroup {} has no processes: give `netns` for its network namespace",
                    cg.path.display()
                ))
            })?;
            Netns::of_pid(pid)?
        }
    };
    if let Some(pid) = a.pid {
        // The process may have exited between reading its cgroup and its
        // namespace: then both may belong to a recycled pid. Check once more.
        let again = cgroup_of_pid(pid)?;
        if again.id != cg.id {
            return Err(DaemonError::Invalid(format!(
                "process {pid} changed cgroup during attach"
            )));
        }
    }
    Ok((cg, netns))
}
