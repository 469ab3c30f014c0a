//! Host layer: cgroup v2 and bpffs discovery, and the rules for which cgroups may be enforced.
//!
//! Mount points are read from /proc/self/mountinfo: cgroup v2 is at
//! `/sys/fs/cgroup` on unified hosts and `/sys/fs/cgroup/unified` on hybrid ones,
//! so neither is ever assumed.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 (cgroup2) filesystem is mounted: egress-agent needs the unified hierarchy"
    )]
    NoCgroup2,
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a cgroup v2 directory under {1}")]
    NotUnderMount(PathBuf, PathBuf),
    #[error("refusing to enforce the root cgroup {0}: that would govern the whole host")]
    Root(PathBuf),
    #[error("refusing to enforce {target}: it holds egress-agent itself ({own}); the agent must run outside every enforced cgroup")]
    HoldsAgent { target: PathBuf, own: PathBuf },
    #[error("process {0} has no cgroup v2 membership (0::/...) in /proc/{0}/cgroup")]
    NoV2Membership(u32),
    #[error("refusing to enforce {path}: it also holds process {other} ({comm}) from another pid namespace than process {pid}; this is not a dedicated container cgroup (does the runtime give the container its own cgroup v2?)")]
    Shared {
        path: PathBuf,
        pid: u32,
        other: u32,
        comm: String,
    },
    #[error("refusing to enforce pod cgroup {path}: it holds process {other} ({comm}) in the agent's (host's) pid namespace; this is not a dedicated pod cgroup (hostPID pods cannot be enforced)")]
    PodShared {
        path: PathBuf,
        other: u32,
        comm: String,
    },
    #[error("{path}: still not {state} after {waited:?} (cgroup.events)")]
    FreezeTimeout {
        path: PathBuf,
        state: &'static str,
        waited: std::time::Duration,
    },
    #[error("{path}: cgroup.freeze needs a non-root cgroup v2 on Linux 5.2 or later")]
    NoFreezer { path: PathBuf },
    #[error("mounting bpffs at {path}: {source}")]
    MountBpffs {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Mount points of a filesystem type, from a mountinfo text (field 5 is the mount
/// point, the type follows the " - " separator).
fn mounts_of_type(mountinfo: &str, fstype: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let ty = right.split_whitespace().next()?;
            if ty != fstype {
                return None;
            }
            let mount_point = left.split_whitespace().nth(4)?;
            Some(PathBuf::from(unescape_mountinfo(mount_point)))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v as char);
            i += 4;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The cgroup v2 mount point of this host.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let p = Path::new("/proc/self/mountinfo");
    let info = fs::read_to_string(p).map_err(io_err(p))?;
    mounts_of_type(&info, "cgroup2")
        .into_iter()
        .next()
        .ok_or(CgroupError::NoCgroup2)
}

/// The bpffs mount point, mounting one at /sys/fs/bpf when none exists (as
/// systemd would): pinned links must outlive the agent process.
pub fn bpffs_mount() -> Result<PathBuf, CgroupError> {
    let p = Path::new("/proc/self/mountinfo");
    let info = fs::read_to_string(p).map_err(io_err(p))?;
    if let Some(m) = mounts_of_type(&info, "bpf").into_iter().next() {
        return Ok(m);
    }
    let target = PathBuf::from("/sys/fs/bpf");
    crate::sys::mount_bpffs(&target).map_err(|source| CgroupError::MountBpffs {
        path: target.clone(),
        source,
    })?;
    Ok(target)
}

/// A cgroup v2 directory, with the id the kernel reports for it
/// (`bpf_get_current_cgroup_id()` is the kernfs inode number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub path: PathBuf,
    pub id: u64,
}

impl Cgroup {
    pub fn open(path: &Path) -> Result<Self, CgroupError> {
        let mount = cgroup2_mount()?;
        let path = fs::canonicalize(path).map_err(io_err(path))?;
        if !path.starts_with(&mount) || !path.join("cgroup.procs").exists() {
            return Err(CgroupError::NotUnderMount(path, mount));
        }
        let id = fs::metadata(&path).map_err(io_err(&path))?.ino();
        Ok(Self { path, id })
    }

    /// The cgroup v2 of a process, from the `0::/…` line of /proc/PID/cgroup.
    pub fn of_pid(pid: u32) -> Result<Self, CgroupError> {
        let p = PathBuf::from(format!("/proc/{pid}/cgroup"));
        let text = fs::read_to_string(&p).map_err(io_err(&p))?;
        let rel = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or(CgroupError::NoV2Membership(pid))?;
        let mount = cgroup2_mount()?;
        Self::open(&mount.join(rel.trim_start_matches('/')))
    }

    /// Refuse the root cgroup and any cgroup that contains the agent itself:
    /// enforcing either would redirect the agent's own connections to itself.
    pub fn check_enforceable(&self) -> Result<(), CgroupError> {
        let mount = cgroup2_mount()?;
        if self.path == mount {
            return Err(CgroupError::Root(self.path.clone()));
        }
        let own = Self::of_pid(std::process::id())?;
        if own.path.starts_with(&self.path) {
            return Err(CgroupError::HoldsAgent {
                target: self.path.clone(),
                own: own.path,
            });
        }
        Ok(())
    }

    /// Refuse a cgroup that is not dedicated to one container: every process
    /// in it and below it must share the pid namespace of `pid` (the
    /// container's process; default: the first process found). A container
    /// without a cgroup v2 of its own shows up here as a cgroup shared with
    /// host processes, which live in the host's pid namespace. (A container
    /// run with the host's pid namespace cannot be told apart this way.)
    pub fn check_dedicated(&self, pid: Option<u32>) -> Result<(), CgroupError> {
        let pids = self.pids_recursive()?;
        let Some(reference) = pid.or_else(|| pids.first().copied()) else {
            return Ok(());
        };
        let ns_of = |p: u32| {
            fs::metadata(format!("/proc/{p}/ns/pid"))
                .ok()
                .map(|m| (m.dev(), m.ino()))
        };
        let Some(want) = ns_of(reference) else {
            return Ok(());
        };
        for p in pids {
            // A process that exited meanwhile is no evidence either way.
            if let Some(ns) = ns_of(p) {
                if ns != want {
                    let comm = fs::read_to_string(format!("/proc/{p}/comm"))
                        .unwrap_or_default()
                        .trim()
                        .to_string();
                    return Err(CgroupError::Shared {
                        path: self.path.clone(),
                        pid: reference,
                        other: p,
                        comm,
                    });
                }
            }
        }
        Ok(())
    }

    /// Refuse a pod cgroup that is not dedicated to the pod. A pod's containers
    /// normally each have their own pid namespace (and the sandbox's pause
    /// process yet another), so `check_dedicated`'s "one pid namespace" rule
    /// does not fit; instead no process in it or below it may live in the
    /// agent's own pid namespace, which on a node (hostPID) is the host's.
    pub fn check_dedicated_pod(&self) -> Result<(), CgroupError> {
        let ns_of = |p: &str| {
            fs::metadata(format!("/proc/{p}/ns/pid"))
                .ok()
                .map(|m| (m.dev(), m.ino()))
        };
        let Some(host) = ns_of("self") else {
            return Ok(());
        };
        for p in self.pids_recursive()? {
            if ns_of(&p.to_string()) == Some(host) {
                let comm = fs::read_to_string(format!("/proc/{p}/comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                return Err(CgroupError::PodShared {
                    path: self.path.clone(),
                    other: p,
                    comm,
                });
            }
        }
        Ok(())
    }

    /// Processes in this cgroup and every cgroup below it.
    pub fn pids_recursive(&self) -> Result<Vec<u32>, CgroupError> {
        let mut out = self.pids()?;
        let mut stack = vec![self.path.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    let p = e.path().join("cgroup.procs");
                    if let Ok(text) = fs::read_to_string(&p) {
                        out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
                    }
                    stack.push(e.path());
                }
            }
        }
        Ok(out)
    }

    /// Create `<cgroup2 mount>/<parent>/<name>` (parents included).
    pub fn create(parent: &str, name: &str) -> Result<Self, CgroupError> {
        let path = cgroup2_mount()?.join(parent).join(name);
        fs::create_dir_all(&path).map_err(io_err(&path))?;
        Self::open(&path)
    }

    /// Kill every process left in the cgroup (and its children), then remove it.
    pub fn kill_and_remove(&self) -> Result<(), CgroupError> {
        let kill = self.path.join("cgroup.kill");
        if kill.exists() {
            let _ = fs::write(&kill, "1");
        } else {
            for pid in self.pids().unwrap_or_default() {
                let _ = crate::sys::kill(pid, libc::SIGKILL);
            }
        }
        // Children first (a process may have made some), then this one; rmdir
        // fails with EBUSY until the killed processes are reaped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let res = remove_tree(&self.path);
            match res {
                Ok(()) => return Ok(()),
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Depth in the cgroup v2 hierarchy (the mount's root is 0), as the kernel's
    /// `bpf_get_current_ancestor_cgroup_id(level)` counts it. Read from the path,
    /// which is right for an agent in the host's cgroup namespace (where the
    /// mount shows the whole hierarchy).
    /// Whether this cgroup still exists: its directory is there and is the same cgroup (a
    /// removed cgroup's path may be reused by a new one, with a new id). Links pinned on a
    /// removed cgroup keep reporting it as attached: this is how its removal shows.
    pub fn exists(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.id)
    }

    pub fn level(&self) -> Result<u32, CgroupError> {
        let mount = cgroup2_mount()?;
        let rel = self
            .path
            .strip_prefix(&mount)
            .map_err(|_| CgroupError::NotUnderMount(self.path.clone(), mount.clone()))?;
        Ok(rel.components().count() as u32)
    }

    /// Freeze every process in this cgroup and below (`cgroup.freeze`), and
    /// return once the kernel reports them all stopped (`frozen 1` in
    /// `cgroup.events`): from then on none of them runs a single instruction,
    /// whatever its enforcement looks like.
    pub fn freeze(&self, timeout: std::time::Duration) -> Result<(), CgroupError> {
        self.set_frozen(true, timeout)
    }

    /// Undo [`Cgroup::freeze`] and wait until `cgroup.events` says `frozen 0`.
    pub fn thaw(&self, timeout: std::time::Duration) -> Result<(), CgroupError> {
        self.set_frozen(false, timeout)
    }

    /// `frozen` of `cgroup.events`: every process below is stopped.
    pub fn is_frozen(&self) -> Result<bool, CgroupError> {
        let p = self.path.join("cgroup.events");
        let text = fs::read_to_string(&p).map_err(io_err(&p))?;
        Ok(text.lines().any(|l| l.trim() == "frozen 1"))
    }

    fn set_frozen(&self, frozen: bool, timeout: std::time::Duration) -> Result<(), CgroupError> {
        let p = self.path.join("cgroup.freeze");
        if !p.exists() {
            return Err(CgroupError::NoFreezer {
                path: self.path.clone(),
            });
        }
        fs::write(&p, if frozen { "1" } else { "0" }).map_err(io_err(&p))?;
        // The kernel flips `frozen` once the last task has stopped (or, thawing,
        // at once); cgroup.events could be poll()ed for it, but a freeze is rare
        // and short, so a fine-grained sleep loop is simpler and as fast.
        let start = std::time::Instant::now();
        loop {
            if self.is_frozen()? == frozen {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(CgroupError::FreezeTimeout {
                    path: self.path.clone(),
                    state: if frozen { "frozen" } else { "thawed" },
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
    }

    /// Processes currently in this cgroup (not its children).
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        let p = self.path.join("cgroup.procs");
        let text = fs::read_to_string(&p).map_err(io_err(&p))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }
}

fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    if !dir.exists() {
        return Ok(());
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path())?;
            }
        }
    }
    fs::remove_dir(dir).map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 22 0:44 / /sys/fs/bpf rw,relatime - bpf bpf rw
60 22 0:45 / /mnt/with\\040space rw - cgroup2 cgroup2 rw";

    #[test]
    fn finds_cgroup2_on_a_hybrid_layout() {
        let m = mounts_of_type(HYBRID, "cgroup2");
        assert_eq!(m[0], PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(m[1], PathBuf::from("/mnt/with space"));
        assert_eq!(
            mounts_of_type(HYBRID, "bpf"),
            vec![PathBuf::from("/sys/fs/bpf")]
        );
        assert!(mounts_of_type(HYBRID, "tmpfs").is_empty());
    }
}
