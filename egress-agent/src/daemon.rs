//! `egress-agent daemon --config FILE`: enforce a static list of cgroups/pids,
//! reload the policy on SIGHUP (an invalid file changes nothing), and leave the
//! kernel enforcement pinned when stopped (fail closed).
//!
//! ```toml
//! policy = "/etc/egress-agent/policy.toml"
//! audit_log = "/var/log/egress-agent/audit.jsonl"   # optional
//! [[attach]]
//! cgroup = "/sys/fs/cgroup/sandbox/job1"   # or: pid = 1234
//! profile = "default"
//! netns = "/run/netns/job1"                # optional
//! ```

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use anyhow::{Context, Result};
use serde::Deserialize;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    agent::{Running, Shared},
    audit::Audit,
    cgroup::Cgroup,
    netns::Netns,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    pub policy: PathBuf,
    pub audit_log: Option<PathBuf>,
    #[serde(default)]
    pub attach: Vec<AttachEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachEntry {
    pub cgroup: Option<PathBuf>,
    pub pid: Option<u32>,
    #[serde(default = "default_profile")]
    pub profile: String,
    pub netns: Option<PathBuf>,
}

fn default_profile() -> String {
    "default".into()
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

pub async fn run(config_path: &Path) -> Result<ExitCode> {
    let config = load_config(config_path)?;
    let policy = crate::cli::load_policy(&config.policy)?;
    let audit = Audit::open(config.audit_log.as_deref())?;
    let shared = Shared::new(policy, audit)?;
    let mut running = Vec::new();
    for (i, a) in config.attach.iter().enumerate() {
        let (cg, netns) =
            resolve_entry(a).with_context(|| format!("{}: attach[{i}]", config_path.display()))?;
        running.push(Running::start(
            shared.clone(),
            cg,
            netns,
            a.profile.clone(),
        )?);
    }
    tracing::info!(attachments = running.len(), "daemon ready");
    let policy_path = config.policy.clone();
    let shared2 = shared.clone();
    let reload = move || reload(&shared2, &policy_path);
    wait_for_shutdown_with_reload(reload, &mut running).await;
    Ok(ExitCode::SUCCESS)
}

fn resolve_entry(a: &AttachEntry) -> Result<(Cgroup, Netns)> {
    let cg = match (&a.cgroup, a.pid) {
        (Some(p), None) => Cgroup::open(p)?,
        (None, Some(pid)) => Cgroup::of_pid(pid)?,
        _ => anyhow::bail!("give exactly one of `cgroup` or `pid`"),
    };
    let netns = match (&a.netns, a.pid) {
        (Some(p), _) => Netns::open(p)?,
        (None, Some(pid)) => Netns::of_pid(pid)?,
        (None, None) => {
            let pid = *cg
                .pids()?
                .first()
                .context("the cgroup has no processes: give `netns`")?;
            Netns::of_pid(pid)?
        }
    };
    Ok((cg, netns))
}

/// Parse, validate, swap: an invalid file is reported and changes nothing.
pub fn reload(shared: &Arc<Shared>, path: &Path) -> bool {
    match crate::cli::load_policy(path) {
        Ok(p) => {
            let version = p.version().to_string();
            if let Some(r) = p.resolver() {
                if r != shared.resolver.load().server {
                    match crate::resolve::Resolver::new(Some(r)) {
                        Ok(res) => shared.resolver.store(Arc::new(res)),
                        Err(e) => {
                            tracing::error!(error = %e, "reload refused: resolver");
                            return false;
                        }
                    }
                }
            }
            shared.policy.store(Arc::new(p));
            tracing::info!(policy = %version, "policy reloaded");
            true
        }
        Err(e) => {
            tracing::error!(error = %crate::cli::one_line(&e), "reload refused; keeping the policy in force");
            false
        }
    }
}

async fn wait_for_shutdown_with_reload(reload: impl Fn() -> bool, running: &mut [Running]) {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                if reload() {
                    for r in running.iter_mut() {
                        if let Err(e) = r.resync() {
                            tracing::error!(error = %e, "re-syncing the kernel deny set");
                        }
                    }
                }
            }
        }
    }
}

pub async fn wait_for_shutdown(on_hup: impl Fn()) {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => on_hup(),
        }
    }
}
