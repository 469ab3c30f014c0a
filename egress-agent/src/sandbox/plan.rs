//! The command's mount namespace as a list of operations: computed from the namespace's
//! mount table and the spec's paths (resolved once, in the new namespace, before anything
//! is mounted), so the whole plan is one pure function with table tests.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use super::{mountinfo::MountEntry, spec::Spec, trust};

/// Which trust file a bind shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Bundle,
    Jks,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Nothing we mount propagates back to the host (and nothing of the host's arrives).
    MakePrivate,
    /// Bind-remount read-only, keeping the mount's other flags.
    ReadOnly {
        target: PathBuf,
        flags: libc::c_ulong,
    },
    /// The host's cgroup2 mount replaced by a fresh read-only one: in the command's cgroup
    /// namespace it shows only the command's own subtree.
    Cgroup2 { target: PathBuf },
    /// A tmpfs copy of the hashed directory with the CA added (`<hash>.N`, [`trust::VIEW_DIR`])
    /// and the files at these relative paths replaced.
    CertDir {
        target: PathBuf,
        replace: Vec<(PathBuf, Content)>,
    },
    /// A trust file bound read-only over a distribution path.
    BindTrust { content: Content, target: PathBuf },
    /// An empty read-only tmpfs over a directory.
    HideDir { target: PathBuf },
    /// The state directory: an empty read-only tmpfs keeping only `trust/`.
    HideStateDir { target: PathBuf },
    /// `/dev/null`, read-only, over a file (or socket).
    HideFile { target: PathBuf },
    /// A minimal /dev: null, zero, full, random, urandom, tty, a private devpts, shm.
    MinimalDev,
    /// pid 1 only: a fresh procfs of the new pid namespace.
    Proc { target: PathBuf },
    /// pid 1 only: bind-remount read-only (kernel knobs under /proc), if it exists.
    ProcReadOnly { target: PathBuf },
    /// pid 1 only: the user's NSS database with the CA.
    Nss { dir: PathBuf },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::MakePrivate => write!(f, "making the mount namespace private"),
            Op::ReadOnly { target, .. } => write!(f, "making {} read-only", target.display()),
            Op::Cgroup2 { target } => {
                write!(f, "mounting the command's cgroup2 at {}", target.display())
            }
            Op::CertDir { target, .. } => write!(f, "showing the CA in {}", target.display()),
            Op::BindTrust { target, .. } => write!(f, "showing the CA in {}", target.display()),
            Op::HideDir { target } | Op::HideStateDir { target } => {
                write!(f, "hiding {}", target.display())
            }
            Op::HideFile { target } => write!(f, "hiding {}", target.display()),
            Op::MinimalDev => write!(f, "mounting a minimal /dev"),
            Op::Proc { target } => {
                write!(f, "mounting the command's /proc at {}", target.display())
            }
            Op::ProcReadOnly { target } => write!(f, "making {} read-only", target.display()),
            Op::Nss { dir } => write!(f, "adding the CA to {}", dir.display()),
        }
    }
}

/// Kernel knobs under /proc made read-only (runc's list): sysctls (core_pattern runs a
/// program outside on the next crash), sysrq, IRQ affinity, bus and fs settings.
pub const PROC_READ_ONLY: &[&str] = &[
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/irq",
    "/proc/bus",
    "/proc/fs",
];

/// What the plan is computed from: the mount table and the spec's paths, each resolved to
/// its canonical form and kept only if it exists with the right kind.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub mounts: Vec<MountEntry>,
    pub state_dirs: Vec<PathBuf>,
    pub hide_dirs: Vec<PathBuf>,
    pub hide_files: Vec<PathBuf>,
    /// `--trust-ca`: the hashed directory, bundle files and Java truststores that exist.
    pub trust: bool,
    pub cert_dir: Option<PathBuf>,
    pub bundle_files: Vec<PathBuf>,
    pub java_files: Vec<PathBuf>,
    pub nssdb: Option<PathBuf>,
    pub private_dev: bool,
}

fn canonical(p: &Path) -> Option<(PathBuf, std::fs::Metadata)> {
    let c = std::fs::canonicalize(p).ok()?;
    let m = std::fs::metadata(&c).ok()?;
    Some((c, m))
}

/// Whether `p` is new to `seen` (and remember it).
fn once(p: &Path, seen: &mut Vec<PathBuf>) -> bool {
    let new = !seen.iter().any(|s| s == p);
    if new {
        seen.push(p.to_path_buf());
    }
    new
}

fn dedup_sorted(mut v: Vec<PathBuf>) -> Vec<PathBuf> {
    v.sort();
    v.dedup();
    v
}

impl Facts {
    /// Resolve the spec's paths in the calling process's mount namespace.
    pub fn gather(spec: &Spec, mountinfo: &str) -> Facts {
        let mut f = Facts {
            mounts: super::mountinfo::parse(mountinfo),
            private_dev: spec.private_dev,
            ..Facts::default()
        };
        f.state_dirs = dedup_sorted(
            spec.hide
                .state_dirs
                .iter()
                .filter_map(|p| canonical(Path::new(p)))
                .filter(|(_, m)| m.is_dir())
                .map(|(c, _)| c)
                .collect(),
        );
        let (mut dirs, mut files) = (Vec::new(), Vec::new());
        for p in spec.hide.dirs.iter().chain(&spec.hide.files) {
            if let Some((c, m)) = canonical(Path::new(p)) {
                if m.is_dir() {
                    dirs.push(c);
                } else {
                    files.push(c);
                }
            }
        }
        f.hide_dirs = dedup_sorted(dirs);
        f.hide_files = dedup_sorted(files);
        if let Some(t) = &spec.trust {
            f.trust = true;
            f.cert_dir = canonical(Path::new(trust::CERT_DIR))
                .filter(|(_, m)| m.is_dir())
                .map(|(c, _)| c);
            let regular = |ps: &[std::ffi::OsString]| {
                dedup_sorted(
                    ps.iter()
                        .filter_map(|p| canonical(Path::new(p)))
                        .filter(|(_, m)| m.is_file())
                        .map(|(c, _)| c)
                        .collect(),
                )
            };
            f.bundle_files = regular(&t.bundle_paths);
            f.java_files = regular(&t.java_paths);
            f.nssdb = t.nssdb.as_ref().map(PathBuf::from);
        }
        f
    }
}

/// The operations, in order: those the init runs, then those pid 1 runs (they need the new
/// pid namespace: /proc, or a helper process).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub init: Vec<Op>,
    pub pid1: Vec<Op>,
}

pub fn plan(f: &Facts) -> Plan {
    let mut init = vec![Op::MakePrivate];
    // /sys and every cgroup v1 hierarchy read-only (release_agent, uevent_helper, ...);
    // cgroup2 and bpffs are replaced below.
    let mut done = Vec::new();
    for m in &f.mounts {
        let under_sys = m.mount_point.starts_with("/sys");
        let replaced = matches!(m.fstype.as_str(), "cgroup2" | "bpf");
        if (under_sys || m.fstype == "cgroup") && !replaced && once(&m.mount_point, &mut done) {
            init.push(Op::ReadOnly {
                target: m.mount_point.clone(),
                flags: m.kept_flags(),
            });
        }
    }
    for m in f.mounts.iter().filter(|m| m.fstype == "cgroup2") {
        if once(&m.mount_point, &mut done) {
            init.push(Op::Cgroup2 {
                target: m.mount_point.clone(),
            });
        }
    }
    // Trust before hiding: the binds read the trust files from the state directory.
    if let Some(dir) = &f.cert_dir {
        let mut replace = Vec::new();
        for b in f.bundle_files.iter().filter(|b| b.starts_with(dir)) {
            replace.push((
                b.strip_prefix(dir).unwrap_or(b).to_path_buf(),
                Content::Bundle,
            ));
        }
        for j in f.java_files.iter().filter(|j| j.starts_with(dir)) {
            replace.push((j.strip_prefix(dir).unwrap_or(j).to_path_buf(), Content::Jks));
        }
        init.push(Op::CertDir {
            target: dir.clone(),
            replace,
        });
    }
    let outside = |p: &&PathBuf| f.cert_dir.as_ref().is_none_or(|d| !p.starts_with(d));
    for b in f.bundle_files.iter().filter(outside) {
        init.push(Op::BindTrust {
            content: Content::Bundle,
            target: b.clone(),
        });
    }
    for j in f.java_files.iter().filter(outside) {
        init.push(Op::BindTrust {
            content: Content::Jks,
            target: j.clone(),
        });
    }
    // Hiding, outermost first; anything below a hidden directory is already unreachable.
    let mut hide: Vec<Op> = Vec::new();
    for m in f.mounts.iter().filter(|m| m.fstype == "bpf") {
        hide.push(Op::HideDir {
            target: m.mount_point.clone(),
        });
    }
    hide.extend(
        f.state_dirs
            .iter()
            .map(|s| Op::HideStateDir { target: s.clone() }),
    );
    hide.extend(
        f.hide_dirs
            .iter()
            .map(|d| Op::HideDir { target: d.clone() }),
    );
    hide.extend(
        f.hide_files
            .iter()
            .map(|p| Op::HideFile { target: p.clone() }),
    );
    let target = |o: &Op| match o {
        Op::HideDir { target } | Op::HideStateDir { target } | Op::HideFile { target } => {
            target.clone()
        }
        _ => PathBuf::new(),
    };
    // Path order is component-wise: a directory sorts before everything below it.
    hide.sort_by_key(target);
    let mut hidden: Vec<PathBuf> = Vec::new();
    for o in hide {
        let t = target(&o);
        if hidden.iter().any(|h| t.starts_with(h)) {
            continue;
        }
        if !matches!(o, Op::HideFile { .. }) {
            hidden.push(t);
        }
        init.push(o);
    }
    if f.private_dev {
        init.push(Op::MinimalDev);
    }

    let mut pid1 = vec![Op::Proc {
        target: "/proc".into(),
    }];
    let mut procs = vec![PathBuf::from("/proc")];
    for m in f.mounts.iter().filter(|m| m.fstype == "proc") {
        if once(&m.mount_point, &mut procs) {
            pid1.push(Op::Proc {
                target: m.mount_point.clone(),
            });
        }
    }
    pid1.extend(
        PROC_READ_ONLY
            .iter()
            .map(|p| Op::ProcReadOnly { target: p.into() }),
    );
    if let (Some(dir), Some(_)) = (&f.nssdb, &f.cert_dir) {
        pid1.push(Op::Nss { dir: dir.clone() });
    }
    Plan { init, pid1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
22 27 0:21 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
23 27 0:22 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,relatime - cgroup2 cgroup2 rw
46 23 0:49 / /sys/fs/bpf rw,relatime - bpf bpf rw
47 27 0:50 / /srv/chroot/proc rw - proc proc rw
";

    fn facts() -> Facts {
        Facts {
            mounts: super::super::mountinfo::parse(HYBRID),
            state_dirs: vec!["/var/lib/egress-agent".into()],
            hide_dirs: vec![
                "/run/egress-agent".into(),
                "/var/lib/egress-agent/ca".into(),
            ],
            hide_files: vec![
                "/etc/egress-agent/key".into(),
                "/run/egress-agent/control.sock".into(),
                "/run/user/1000/bus".into(),
            ],
            ..Facts::default()
        }
    }

    #[test]
    fn hybrid_host_without_trust() {
        let p = plan(&facts());
        let ro = |t: &str, flags| Op::ReadOnly {
            target: t.into(),
            flags,
        };
        assert_eq!(
            p.init,
            vec![
                Op::MakePrivate,
                ro(
                    "/sys",
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RELATIME
                ),
                ro("/sys/fs/cgroup", libc::MS_RELATIME),
                ro("/sys/fs/cgroup/cpu", libc::MS_RELATIME),
                ro("/sys/fs/cgroup/systemd", libc::MS_RELATIME),
                Op::Cgroup2 {
                    target: "/sys/fs/cgroup/unified".into()
                },
                Op::HideFile {
                    target: "/etc/egress-agent/key".into()
                },
                Op::HideDir {
                    target: "/run/egress-agent".into()
                },
                Op::HideFile {
                    target: "/run/user/1000/bus".into()
                },
                Op::HideDir {
                    target: "/sys/fs/bpf".into()
                },
                Op::HideStateDir {
                    target: "/var/lib/egress-agent".into()
                },
            ]
        );
        // The control socket and ca/ are below hidden directories: not hidden twice.
        assert_eq!(
            p.pid1,
            [
                vec![
                    Op::Proc {
                        target: "/proc".into()
                    },
                    Op::Proc {
                        target: "/srv/chroot/proc".into()
                    }
                ],
                PROC_READ_ONLY
                    .iter()
                    .map(|t| Op::ProcReadOnly { target: t.into() })
                    .collect()
            ]
            .concat()
        );
    }

    #[test]
    fn trust_replaces_inside_the_hashed_dir_and_binds_outside_it() {
        let mut f = facts();
        f.trust = true;
        f.private_dev = true;
        f.cert_dir = Some("/etc/ssl/certs".into());
        f.bundle_files = vec![
            "/etc/pki/tls/certs/ca-bundle.crt".into(),
            "/etc/ssl/certs/ca-certificates.crt".into(),
        ];
        f.java_files = vec![
            "/etc/ssl/certs/java/cacerts".into(),
            "/opt/jdk/lib/security/cacerts".into(),
        ];
        f.nssdb = Some("/home/u/.pki/nssdb".into());
        let p = plan(&f);
        let i = p
            .init
            .iter()
            .position(|o| matches!(o, Op::CertDir { .. }))
            .unwrap();
        assert_eq!(
            p.init[i..i + 3],
            [
                Op::CertDir {
                    target: "/etc/ssl/certs".into(),
                    replace: vec![
                        ("ca-certificates.crt".into(), Content::Bundle),
                        ("java/cacerts".into(), Content::Jks)
                    ],
                },
                Op::BindTrust {
                    content: Content::Bundle,
                    target: "/etc/pki/tls/certs/ca-bundle.crt".into()
                },
                Op::BindTrust {
                    content: Content::Jks,
                    target: "/opt/jdk/lib/security/cacerts".into()
                },
            ]
        );
        // Trust binds come before the state directory (their source) is hidden.
        let hide = p
            .init
            .iter()
            .position(|o| matches!(o, Op::HideStateDir { .. }))
            .unwrap();
        assert!(hide > i + 2);
        assert_eq!(p.init.last(), Some(&Op::MinimalDev));
        assert_eq!(
            p.pid1.last(),
            Some(&Op::Nss {
                dir: "/home/u/.pki/nssdb".into()
            })
        );
    }
}
