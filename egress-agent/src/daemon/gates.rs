//! The daemon's gated parents (`[[gate]]` in daemon.toml): under each, a cgroup the daemon
//! has not adopted (nor exempted) has no network from its first syscall. Adoption is the
//! last step of an attach below a gated parent, release the first step of a detach.
//!
//! ```toml
//! [[gate]]
//! cgroup = "/sys/fs/cgroup/sandbox.slice"
//! exempt = ["infra"]          # below the parent (or absolute); exempted when it appears
//! ```

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{
    bpf::{
        gate::{self, Gate},
        maps::EgressConfig,
        BpfError,
    },
    cgroup::Cgroup,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// The gated parent cgroup.
    pub cgroup: PathBuf,
    /// Cgroups left unenforced: paths below the parent (or absolute paths under it).
    #[serde(default)]
    pub exempt: Vec<PathBuf>,
}

/// One gated parent and the exemptions the operator asked for.
pub struct Gated {
    pub gate: Gate,
    exempt: Vec<PathBuf>,
    /// Exempt cgroups that exist and carry an entry.
    exempted: BTreeSet<u64>,
}

impl Gated {
    /// Loads the gate of `cfg.cgroup` (reusing its pinned maps, so a restart keeps every
    /// entry) without arming it: the caller adopts what it serves, then [`Gated::arm`]s.
    pub fn load(cfg: &GateConfig) -> Result<Self, String> {
        let parent =
            Cgroup::open(&cfg.cgroup).map_err(|e| format!("gate {}: {e}", cfg.cgroup.display()))?;
        let exempt = cfg
            .exempt
            .iter()
            .map(|p| {
                if p.is_absolute() {
                    p.clone()
                } else {
                    parent.path.join(p)
                }
            })
            .collect::<Vec<_>>();
        if let Some(bad) = exempt.iter().find(|p| !p.starts_with(&parent.path)) {
            return Err(format!(
                "gate {}: exempt {} is not below the gated parent",
                cfg.cgroup.display(),
                bad.display()
            ));
        }
        let gate =
            Gate::load(&parent).map_err(|e| format!("gate {}: {e}", cfg.cgroup.display()))?;
        Ok(Self {
            gate,
            exempt,
            exempted: BTreeSet::new(),
        })
    }

    /// Removes the entries of cgroups that no longer exist below the parent: pods that ended
    /// while no daemon ran (their exemptions, their adoptions). Ids are never reused, so such
    /// an entry only takes a slot of the map (16384).
    pub fn prune_gone(&mut self) {
        let Ok(entries) = self.gate.entries() else {
            return;
        };
        let live = cgroup_ids_below(&self.gate.parent.path);
        let mut pruned = 0;
        for (id, _) in entries {
            if !live.contains(&id) && self.gate.release(id).unwrap_or(false) {
                pruned += 1;
            }
        }
        if pruned > 0 {
            tracing::info!(parent = %self.gate.parent.path.display(), pruned, "gate entries of cgroups that are gone removed");
        }
    }

    pub fn arm(&mut self) -> Result<(), BpfError> {
        self.gate.arm()
    }

    pub fn parent(&self) -> &Cgroup {
        &self.gate.parent
    }

    /// Whether `cg` is below this gate's parent.
    pub fn covers(&self, cg: &Cgroup) -> bool {
        cg.path != self.gate.parent.path && cg.path.starts_with(&self.gate.parent.path)
    }

    /// Exempts the configured cgroups that exist now (they may appear at any time: a
    /// container started later). Until then they are gated like every other cgroup.
    pub fn refresh_exempt(&mut self) {
        for p in &self.exempt {
            let Ok(cg) = Cgroup::open(p) else { continue };
            if self.exempted.contains(&cg.id) {
                continue;
            }
            match self.gate.exempt(cg.id) {
                Ok(()) => {
                    tracing::info!(cgroup = %cg.path.display(), cgroup_id = cg.id, "exempt from the gate");
                    self.exempted.insert(cg.id);
                }
                Err(e) => tracing::error!(cgroup = %cg.path.display(), error = %e, "exempting"),
            }
        }
        // A removed exempt cgroup's id is never reused while the system runs; drop its entry.
        let gone: Vec<u64> = self
            .exempted
            .iter()
            .copied()
            .filter(|id| {
                !self
                    .exempt
                    .iter()
                    .any(|p| Cgroup::open(p).is_ok_and(|c| c.id == *id))
            })
            .collect();
        for id in gone {
            let _ = self.gate.release(id);
            self.exempted.remove(&id);
        }
    }
}

/// The cgroup below `parent` that holds process `pid` (bounded walk): how the daemon finds its
/// own cgroup when it runs in a pod, where a private cgroup namespace makes `/proc/self/cgroup`
/// read `0::/` (with `hostPID`, `cgroup.procs` lists host pids).
fn cgroup_holding(parent: &Path, pid: u32) -> Option<PathBuf> {
    let pid = pid.to_string();
    let mut stack = vec![(parent.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if depth > 0 && procs.lines().any(|l| l.trim() == pid) {
            return Some(dir);
        }
        if depth < 6 {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((e.path(), depth + 1));
                }
            }
        }
    }
    None
}

/// The ids (inode numbers) of every cgroup below `parent`, as deep as the gate looks.
fn cgroup_ids_below(parent: &Path) -> BTreeSet<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut ids = BTreeSet::new();
    let mut stack = vec![(parent.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if let Ok(m) = e.metadata() {
                if m.is_dir() {
                    ids.insert(m.ino());
                    if depth < 16 {
                        stack.push((e.path(), depth + 1));
                    }
                }
            }
        }
    }
    ids
}

/// Every gated parent of the daemon.
#[derive(Default)]
pub struct Gates {
    pub parents: Vec<Gated>,
}

impl Gates {
    /// The gate `cg` lives under, if any (the innermost, should gates nest).
    fn covering(&mut self, cg: &Cgroup) -> Option<&mut Gated> {
        self.parents
            .iter_mut()
            .filter(|g| g.covers(cg))
            .max_by_key(|g| g.gate.parent.path.as_os_str().len())
    }

    /// The last step of an attach: `cg` may use the network its programs redirect.
    pub fn adopt(&mut self, cg: &Cgroup, cfg: &EgressConfig) -> Result<(), BpfError> {
        match self.covering(cg) {
            Some(g) => g.gate.adopt(cg.id, cfg),
            None => Ok(()),
        }
    }

    /// The first step of a detach: `cg` has no network under its gate any more.
    pub fn release(&mut self, cg: &Cgroup) {
        if let Some(g) = self.covering(cg) {
            if let Err(e) = g.gate.release(cg.id) {
                tracing::error!(cgroup_id = cg.id, error = %e, "releasing from the gate");
            }
        }
    }

    /// Exempts the daemon's own cgroup if a gate covers it (the DaemonSet's pod is below the
    /// kubepods parent): its listeners' sockets and upstream dials are its own, and a gate
    /// would refuse them. Before anything is restored or attached.
    pub fn exempt_self(&mut self) {
        let me = std::process::id();
        for g in self.parents.iter_mut() {
            let Some(dir) = cgroup_holding(&g.gate.parent.path, me) else {
                continue;
            };
            match Cgroup::open(&dir).map(|cg| (g.gate.exempt(cg.id), cg)) {
                Ok((Ok(()), cg)) => {
                    tracing::info!(cgroup = %cg.path.display(), cgroup_id = cg.id, "the daemon's own cgroup is below the gate: exempt")
                }
                Ok((Err(e), _)) => {
                    tracing::error!(cgroup = %dir.display(), error = %e, "exempting the daemon's own cgroup")
                }
                Err(e) => {
                    tracing::error!(cgroup = %dir.display(), error = %e, "exempting the daemon's own cgroup")
                }
            }
        }
    }

    /// Exempts `cg` (a pod the operator exempted) in the gate covering it: false if none does.
    /// Not one of the configured `exempt` paths, so [`Gated::refresh_exempt`] leaves it alone.
    pub fn exempt(&mut self, cg: &Cgroup) -> Result<bool, BpfError> {
        match self.covering(cg) {
            Some(g) => g.gate.exempt(cg.id).map(|()| true),
            None => Ok(false),
        }
    }

    /// Removes the entry of cgroup `id` (an exemption whose pod ended) from every gate.
    pub fn unexempt(&mut self, id: u64) {
        for g in self.parents.iter_mut() {
            if let Err(e) = g.gate.release(id) {
                tracing::error!(cgroup_id = id, error = %e, "removing an exemption from the gate");
            }
        }
    }

    /// Whether `cg` is under a gated parent (then an unadopted `cg` has no network).
    pub fn gated(&self, cg: &Cgroup) -> bool {
        self.parents.iter().any(|g| g.covers(cg))
    }

    pub fn describe(&self) -> Vec<serde_json::Value> {
        self.parents
            .iter()
            .map(|g| {
                let entries = g.gate.entries().map(|e| e.len()).unwrap_or(0);
                serde_json::json!({
                    "cgroup": g.gate.parent.path,
                    "cgroup_id": g.gate.parent.id,
                    "entries": entries,
                    "exempt": g.exempt,
                })
            })
            .collect()
    }
}

/// A gate pinned by an earlier daemon whose parent is no longer configured: it stays (fail
/// closed) until removed on purpose; say so once at start.
pub fn warn_unconfigured(configured: &[Gated]) {
    let Ok(pinned) = gate::installed() else {
        return;
    };
    for id in pinned {
        if !configured.iter().any(|g| g.gate.parent.id == id) {
            tracing::warn!(
                parent_cgroup_id = id,
                "a gate pinned by an earlier daemon is not in daemon.toml: it stays in force; remove it with `egress-agent gate remove --cgroup PATH`"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup_holding_a_pid_and_the_ids_below_a_parent() {
        let root = std::env::temp_dir().join(format!("egress-gates-{}", std::process::id()));
        let pod =
            root.join("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podA.slice");
        let mine = pod.join("cri-containerd-agent.scope");
        std::fs::create_dir_all(&mine).unwrap();
        std::fs::create_dir_all(pod.join("cri-containerd-other.scope")).unwrap();
        std::fs::write(mine.join("cgroup.procs"), "12\n4242\n").unwrap();
        std::fs::write(pod.join("cri-containerd-other.scope/cgroup.procs"), "7\n").unwrap();
        let parent = root.join("kubepods.slice");
        assert_eq!(cgroup_holding(&parent, 4242), Some(mine.clone()));
        assert_eq!(cgroup_holding(&parent, 424), None);
        // The parent itself never counts: it is not below the gate.
        std::fs::write(parent.join("cgroup.procs"), "99\n").unwrap();
        assert_eq!(cgroup_holding(&parent, 99), None);
        let ids = cgroup_ids_below(&parent);
        use std::os::unix::fs::MetadataExt;
        assert!(ids.contains(&std::fs::metadata(&mine).unwrap().ino()));
        assert!(!ids.contains(&std::fs::metadata(&parent).unwrap().ino()));
        assert_eq!(ids.len(), 4);
        let _ = std::fs::remove_dir_all(&root);
    }
}
