//! The daemon's watcher: what the kernel does not tell the agent, checked on a tick.
//!
//! - **Tampering**: another root process can detach an attachment's links (`bpftool link
//!   detach`); the cgroup would then be unenforced while the agent runs on. Every link is
//!   checked (≈ 50 µs for the 12 of an attachment); a missing one freezes the cgroup
//!   (`cgroup.freeze`: nothing in it runs, so nothing gets out) until the links are back,
//!   and is logged as an error and counted. Under a gate the gap is closed in the kernel
//!   too (`not_enforced`); the freeze covers cgroups that are not gated. A gate's own links
//!   are checked the same way (its whole parent is frozen while they are re-attached).
//! - **Exited containers**: an attachment whose cgroup was removed is detached: its pins,
//!   listeners, lock file and record go, so thousands of short-lived containers leave
//!   nothing behind.
//! - **Exemptions** that appear later are applied.

use std::{sync::Arc, time::Duration};

use super::Daemon;
use crate::{agent::Running, bpf::BpfError, cgroup::Cgroup};

/// How long a frozen cgroup may take to report itself frozen or thawed.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(2);

/// Checks everything every `interval` until the task is aborted.
pub async fn watch(daemon: Arc<Daemon>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        daemon.sweep().await;
    }
}

/// What one attachment's check found.
enum Found {
    Intact,
    Repaired,
    Gone,
}

impl Daemon {
    /// One pass of the watcher.
    pub async fn sweep(&self) {
        let mut gone = Vec::new();
        {
            let mut map = self.attachments.lock().await;
            for (id, r) in map.iter_mut() {
                match check(r) {
                    Found::Intact => {}
                    Found::Repaired => self.shared.audit.metrics().tamper_repaired(),
                    Found::Gone => gone.push(*id),
                }
            }
        }
        for id in gone {
            match self.detach_id(id).await {
                Ok(_) => {
                    self.shared.audit.metrics().exited();
                    tracing::info!(
                        cgroup_id = id,
                        "cgroup removed (the container exited); detached"
                    );
                }
                Err(e) => {
                    tracing::error!(cgroup_id = id, error = %e, "detaching an exited container")
                }
            }
        }
        let mut gates = self.gates();
        for g in gates.parents.iter_mut() {
            g.refresh_exempt();
            match g.gate.missing_links() {
                Ok(missing) if missing.is_empty() => {}
                Ok(missing) => {
                    let parent = g.parent().clone();
                    tracing::error!(parent = %parent.path.display(), links = ?missing, "gate links detached by someone else; freezing the gated parent and re-attaching");
                    let res = frozen(&parent, || g.gate.reattach(&missing));
                    report_repair(&parent, res);
                    self.shared.audit.metrics().tamper_repaired();
                }
                Err(e) => {
                    tracing::error!(parent = %g.parent().path.display(), error = %e, "checking the gate's links")
                }
            }
        }
    }
}

fn check(r: &mut Running) -> Found {
    let cg = r.attachment.cgroup.clone();
    if !cg.exists() {
        return Found::Gone;
    }
    match r.enforcement.missing_links() {
        Ok(missing) if missing.is_empty() => Found::Intact,
        Ok(missing) => {
            tracing::error!(cgroup = %cg.path.display(), cgroup_id = cg.id, links = ?missing, "links detached by someone else; freezing the cgroup and re-attaching");
            let res = frozen(&cg, || r.enforcement.reattach(&missing));
            report_repair(&cg, res);
            Found::Repaired
        }
        Err(BpfError::CgroupGone(_)) => Found::Gone,
        Err(e) => {
            tracing::error!(cgroup_id = cg.id, error = %e, "checking the links");
            Found::Intact
        }
    }
}

/// Runs `repair` with `cg` frozen, and thaws it only once the repair succeeded: a cgroup
/// whose links could not be re-attached stays frozen, and the next tick tries again. If the
/// freeze itself fails the repair still runs: the sooner the links are back, the better.
fn frozen(cg: &Cgroup, repair: impl FnOnce() -> Result<(), BpfError>) -> Result<(), String> {
    let froze = cg.freeze(FREEZE_TIMEOUT);
    if let Err(e) = &froze {
        tracing::error!(cgroup = %cg.path.display(), error = %e, "could not freeze while repairing");
    }
    let repaired = repair().map_err(|e| e.to_string());
    if froze.is_ok() && repaired.is_ok() {
        if let Err(e) = cg.thaw(FREEZE_TIMEOUT) {
            tracing::error!(cgroup = %cg.path.display(), error = %e, "thawing after the repair");
        }
    }
    repaired
}

fn report_repair(cg: &Cgroup, res: Result<(), String>) {
    match res {
        Ok(()) => {
            tracing::warn!(cgroup = %cg.path.display(), "links re-attached; enforcement restored")
        }
        Err(e) => {
            tracing::error!(cgroup = %cg.path.display(), error = %e, "re-attaching failed; the cgroup stays frozen until the next try")
        }
    }
}
