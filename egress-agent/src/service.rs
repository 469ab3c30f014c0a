//! Command: `egress-agent daemon --config FILE`: the long-running agent. Enforces the config's
//! `[[attach]]` entries and whatever the control socket attaches later, finds Kubernetes pods
//! when configured, serves metrics, reloads on SIGHUP, and leaves the kernel enforcement
//! pinned when stopped (fail closed). The state it serves is [`crate::daemon::Daemon`].
//!
//! ```toml
//! policy = "/etc/egress-agent/policy.toml"
//! audit_log = "/var/log/egress-agent/audit.jsonl"   # optional
//! [[attach]]
//! cgroup = "/sys/fs/cgroup/sandbox/job1"   # or: pid = 1234
//! profile = "default"
//! netns = "/run/netns/job1"                # optional
//! [[gate]]                                  # optional: no network until adopted (see `daemon::gates`)
//! cgroup = "/sys/fs/cgroup/sandbox.slice"
//! exempt = ["infra"]
//! [kubernetes]                              # optional: pods by annotation (see `kube`)
//! annotation = "egress-agent.io/profile"
//! ```
//!
//! Start-up order keeps every container either served or refused, never open: the gates'
//! pinned maps are loaded, the attachments of an earlier daemon restored (their pins
//! adopted, listeners created anew, gate entries updated), the `[[attach]]` entries
//! attached, and only then are the gates armed.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::{
    attachment::Shared,
    audit::Audit,
    daemon::{gates::GateConfig, state, AttachRequest, Daemon},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    pub policy: PathBuf,
    pub audit_log: Option<PathBuf>,
    #[serde(default)]
    pub attach: Vec<AttachRequest>,
    /// Gated parents: below each, a cgroup not adopted has no network.
    #[serde(default)]
    pub gate: Vec<GateConfig>,
    /// Where attachments are recorded for a restart (default /run/egress-agent/attachments).
    pub state_dir: Option<PathBuf>,
    /// How often links are checked for tampering and cgroups for exit (default 500).
    pub watch_interval_ms: Option<u64>,
    /// Pods selected by annotation on this node (see `kube`).
    pub kubernetes: Option<crate::kube::KubeConfig>,
}

pub fn load_config(path: &Path) -> Result<DaemonConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        let (line, col) = e.span().map(|s| line_col(&text, s.start)).unwrap_or((0, 0));
        anyhow::anyhow!("{}:{line}:{col}: {}", path.display(), e.message())
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

pub async fn run(
    config_path: &Path,
    control: &Path,
    metrics_addr: Option<std::net::SocketAddr>,
) -> Result<ExitCode> {
    let config = load_config(config_path)?;
    let policy = crate::policy::Policy::load(&config.policy)?;
    let audit = Audit::open(config.audit_log.as_deref())?;
    let shared = Shared::new(policy, audit)?;
    let state_dir = config
        .state_dir
        .clone()
        .unwrap_or_else(|| state::DEFAULT_DIR.into());
    let daemon = Daemon::new(shared.clone(), config.policy.clone(), state_dir);
    // Bind first: a second daemon on the same socket is refused before it
    // touches any cgroup.
    let listener = crate::control::bind(control)?;
    if let Err(e) = start(&daemon, &config, config_path).await {
        let _ = std::fs::remove_file(control);
        return Err(e);
    }
    let interval =
        std::time::Duration::from_millis(config.watch_interval_ms.unwrap_or(500).max(50));
    let watch_task = tokio::spawn(crate::daemon::watch(daemon.clone(), interval));
    let metrics_task = match metrics_addr {
        Some(addr) => {
            let d = daemon.clone();
            let render: crate::metrics::Render = Arc::new(move || {
                let d = d.clone();
                Box::pin(async move { d.metrics().await })
            });
            Some(crate::metrics::serve_tcp(addr, render).await?)
        }
        None => None,
    };
    let kube_task = config
        .kubernetes
        .clone()
        .map(|k| tokio::spawn(crate::kube::run(daemon.clone(), k)));
    let server = tokio::spawn(crate::control::serve(listener, daemon.clone()));
    tracing::info!(
        attachments = daemon.list().await.len(),
        control = %control.display(),
        metrics = ?metrics_addr,
        "daemon ready"
    );
    // Errors of a SIGHUP reload are logged by `reload`.
    crate::signals::wait_for_shutdown(|| async {
        let _ = daemon.reload().await;
    })
    .await;
    server.abort();
    watch_task.abort();
    if let Some(t) = kube_task {
        t.abort();
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    let _ = std::fs::remove_file(control);
    daemon.shutdown().await;
    shared.audit.flush();
    Ok(ExitCode::SUCCESS)
}

/// Gates loaded, earlier attachments restored, configured ones attached, gates armed.
async fn start(daemon: &Daemon, config: &DaemonConfig, config_path: &Path) -> Result<()> {
    daemon
        .load_gates(&config.gate)
        .map_err(|e| anyhow::anyhow!("{}: {e}", config_path.display()))?;
    let restored = daemon.restore().await;
    if restored > 0 {
        tracing::info!(
            restored,
            "serving the attachments of an earlier daemon again"
        );
    }
    for (i, req) in config.attach.iter().cloned().enumerate() {
        if let Err(e) = daemon.attach_configured(req).await {
            anyhow::bail!("{}: attach[{i}]: {e}", config_path.display());
        }
    }
    daemon
        .arm_gates()
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", config_path.display()))
}
