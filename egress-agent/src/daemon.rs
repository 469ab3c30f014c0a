//! Control plane: the daemon's state: its attachments by cgroup id and the operations the control socket
//! and the Kubernetes loop ask of it (attach, detach, reload, status, metrics). Every
//! operation validates before its first change; a failed one changes nothing. The command
//! that runs it is [`crate::service`].

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Deserialize;

use crate::{agent::Running, attachment::Shared, cgroup::Cgroup, netns::Netns};

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
}

/// The running daemon: the shared agent state and its attachments by cgroup id.
pub struct Daemon {
    pub shared: Arc<Shared>,
    pub policy_path: PathBuf,
    attachments: tokio::sync::Mutex<BTreeMap<u64, Running>>,
    started: std::time::Instant,
}

impl Daemon {
    pub fn new(shared: Arc<Shared>, policy_path: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            shared,
            policy_path,
            attachments: tokio::sync::Mutex::new(BTreeMap::new()),
            started: std::time::Instant::now(),
        })
    }

    /// Resolve, validate, attach. Every check comes before the first change;
    /// a failure after the programs were attached removes them again (unless
    /// they were pinned before, by an earlier agent: then they stay, as found).
    pub async fn attach(&self, req: AttachRequest) -> Result<serde_json::Value, DaemonError> {
        let (cg, netns) = resolve_target(&req)?;
        let pid = req.pid;
        self.attach_resolved(cg, netns, req.profile, move |cg| cg.check_dedicated(pid))
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
        self.attach_resolved(cg, netns, profile, Cgroup::check_dedicated_pod)
            .await
    }

    async fn attach_resolved(
        &self,
        cg: Cgroup,
        netns: Netns,
        profile: String,
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
        let running = match Running::start(self.shared.clone(), cg.clone(), netns, profile) {
            Ok(r) => r,
            Err(e) => {
                if !was_pinned {
                    let _ = crate::bpf::detach(&cg);
                }
                return Err(e.into());
            }
        };
        let v = describe(&running);
        map.insert(cg.id, running);
        Ok(v)
    }

    /// Stop serving a cgroup and remove its enforcement. A cgroup this daemon
    /// does not serve but that still carries pins (an earlier agent's) is
    /// detached too; anything else is an error.
    pub async fn detach(&self, req: DetachRequest) -> Result<serde_json::Value, DaemonError> {
        let cg = match (&req.cgroup, req.pid) {
            (Some(p), None) => Cgroup::open(p)?,
            (None, Some(pid)) => cgroup_of_pid(pid)?,
            _ => {
                return Err(DaemonError::Invalid(
                    "give exactly one of `cgroup` or `pid`".into(),
                ))
            }
        };
        let mut map = self.attachments.lock().await;
        match map.remove(&cg.id) {
            Some(r) => {
                let counters = kernel_counters(&r);
                let path = r.attachment.cgroup.path.clone();
                r.detach()?;
                self.shared.audit.metrics().retire_kernel(&counters);
                Ok(serde_json::json!({"detached": path, "cgroup_id": cg.id}))
            }
            None if crate::bpf::is_attached(&cg)? => {
                crate::bpf::detach(&cg)?;
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
        let counters = kernel_counters(&r);
        let path = r.attachment.cgroup.path.clone();
        r.detach()?;
        self.shared.audit.metrics().retire_kernel(&counters);
        Ok(serde_json::json!({"detached": path, "cgroup_id": id}))
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
        })
    }

    pub async fn metrics(&self) -> String {
        let map = self.attachments.lock().await;
        let kernel: Vec<_> = map.values().flat_map(kernel_counters).collect();
        drop(map);
        self.shared
            .audit
            .metrics()
            .render(&kernel, self.shared.audit.lost())
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
    })
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
