//! `attach` honesty (issue 11 §6): what a container holds that breaks the guarantees the
//! enforcement gives. `attach` enforces anyway (the operator decided), and warns with one
//! line per finding.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::mountinfo::{self, MountEntry};

/// Capabilities that undo the guarantees, and why (one clause each).
const DANGEROUS: &[(u32, &str, &str)] = &[
    (
        21,
        "SYS_ADMIN",
        "it can unshare, mount and remount its way around its cgroup and mounts",
    ),
    (
        13,
        "NET_RAW",
        "its AF_PACKET sockets bypass every cgroup hook",
    ),
    (
        19,
        "SYS_PTRACE",
        "it can trace processes outside and connect through them",
    ),
    (
        12,
        "NET_ADMIN",
        "it can change routes and detach programs of its network namespace",
    ),
    (39, "BPF", "it can load and detach BPF programs"),
    (
        2,
        "DAC_READ_SEARCH",
        "open_by_handle_at reaches any file of the host",
    ),
];

/// What the agent holds that a container must not reach.
#[derive(Debug, Clone)]
pub struct Sensitive {
    pub control_socket: PathBuf,
    pub state_dir: PathBuf,
    pub pin_root: Option<PathBuf>,
}

impl Sensitive {
    /// This agent's: the control socket given, the state directory, the pin root (under the
    /// bpffs of `host_mountinfo`; found, never mounted).
    pub fn of_agent(control_socket: &Path, host_mountinfo: &str) -> Sensitive {
        Sensitive {
            control_socket: control_socket.to_path_buf(),
            state_dir: crate::inspect::ca::state_dir(),
            pin_root: mountinfo::parse(host_mountinfo)
                .into_iter()
                .find(|m| m.fstype == "bpf")
                .map(|m| m.mount_point.join("egress-agent")),
        }
    }
}

/// Warnings for the container whose process is `pid` (empty: nothing found). What cannot
/// be read (a process that exited) yields no warning: `attach` reports that itself.
pub fn boundary_warnings(pid: u32, control_socket: &Path) -> Vec<String> {
    let host = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let sensitive = Sensitive::of_agent(control_socket, &host);
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let ns = |p: &Path| fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let host_pidns = match (ns(&proc.join("ns/pid")), ns(Path::new("/proc/self/ns/pid"))) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    };
    let status = fs::read_to_string(proc.join("status")).unwrap_or_default();
    let ctr = fs::read_to_string(proc.join("mountinfo")).unwrap_or_default();
    let own = fs::read_to_string(proc.join("cgroup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(PathBuf::from));
    warnings(&Inspected {
        pid,
        host_pidns,
        status: &status,
        host_mountinfo: &host,
        mountinfo: &ctr,
        own_cgroup: own.as_deref(),
        sensitive: &sensitive,
        exists: &|p: &Path| p.exists(),
    })
}

/// Everything [`warnings`] looks at, read from /proc.
pub struct Inspected<'a> {
    pub pid: u32,
    pub host_pidns: bool,
    /// /proc/PID/status.
    pub status: &'a str,
    /// The agent's own mountinfo (the host's view).
    pub host_mountinfo: &'a str,
    /// /proc/PID/mountinfo.
    pub mountinfo: &'a str,
    /// Its cgroup v2 path (`0::` of /proc/PID/cgroup).
    pub own_cgroup: Option<&'a Path>,
    pub sensitive: &'a Sensitive,
    /// Whether a host path exists (the filesystem, or a test's stand-in).
    pub exists: &'a dyn Fn(&Path) -> bool,
}

pub fn warnings(i: &Inspected<'_>) -> Vec<String> {
    let mut out = Vec::new();
    let pid = i.pid;
    if i.host_pidns {
        out.push(format!(
            "process {pid} shares the host's pid namespace: it can see, signal and ptrace processes outside its cgroup (run it with its own pid namespace)"
        ));
    }
    let caps = |key: &str| {
        i.status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let (eff, bnd) = (caps("CapEff:"), caps("CapBnd:"));
    for (bit, name, why) in DANGEROUS {
        let m = 1u64 << bit;
        if eff & m != 0 {
            out.push(format!(
                "process {pid} holds CAP_{name}: {why} (drop it: --cap-drop={name})"
            ));
        } else if bnd & m != 0 {
            out.push(format!(
                "process {pid} has CAP_{name} in its bounding set: a setuid or file-capability binary gives it back, and {why} (drop it: --cap-drop={name})"
            ));
        }
    }
    let host = mountinfo::parse(i.host_mountinfo);
    let ctr = mountinfo::parse(i.mountinfo);
    let s = i.sensitive;
    let mut targets = vec![
        (s.control_socket.as_path(), "the agent's control socket"),
        (
            s.state_dir.as_path(),
            "the agent's state directory (CA key)",
        ),
    ];
    if let Some(p) = &s.pin_root {
        targets.push((p.as_path(), "the agent's pins (bpffs)"));
    }
    // A path that does not exist holds nothing yet (the state directory of an agent that
    // never made a CA): no warning.
    for (path, what) in targets.into_iter().filter(|(p, _)| (i.exists)(p)) {
        if let Some(at) = visible_at(&host, &ctr, path) {
            out.push(format!(
                "process {pid} can reach {what} ({}) at {}: do not mount it into the container",
                path.display(),
                at.display()
            ));
        }
    }
    if let Some(own) = i.own_cgroup {
        for m in ctr
            .iter()
            .filter(|m| m.fstype == "cgroup2" && !m.read_only())
        {
            if !m.root.starts_with(own) {
                out.push(format!(
                    "process {pid} has cgroup2 mounted read-write at {} showing {}, above its own cgroup {}: it can move itself out (mount it read-only, or give it a cgroup namespace)",
                    m.mount_point.display(),
                    m.root.display(),
                    own.display()
                ));
            }
        }
    }
    out
}

/// Where, in the container's mount table, the host path `path` can be reached (the first
/// place found), if anywhere: a container mount of the same filesystem whose root is at or
/// above the path, not covered by another mount there.
pub fn visible_at(host: &[MountEntry], ctr: &[MountEntry], path: &Path) -> Option<PathBuf> {
    let hm = mountinfo::serving(host, path)?;
    let rel = hm.root.join(path.strip_prefix(&hm.mount_point).ok()?);
    for m in ctr.iter().filter(|m| m.dev == hm.dev) {
        let Ok(below) = rel.strip_prefix(&m.root) else {
            continue;
        };
        let at = m.mount_point.join(below);
        // Shadowed when another (later) mount serves that path.
        if mountinfo::serving(ctr, &at).map(|s| s.id) == Some(m.id) {
            return Some(at);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 27 0:25 / /run rw,nosuid - tmpfs tmpfs rw
46 23 0:49 / /sys/fs/bpf rw,relatime - bpf bpf rw
";

    fn sensitive() -> Sensitive {
        Sensitive {
            control_socket: "/run/egress-agent/control.sock".into(),
            state_dir: "/var/lib/egress-agent".into(),
            pin_root: Some("/sys/fs/bpf/egress-agent".into()),
        }
    }

    fn run(ctr: &str, status: &str, host_pidns: bool) -> Vec<String> {
        let s = sensitive();
        warnings(&Inspected {
            pid: 7,
            host_pidns,
            status,
            host_mountinfo: HOST,
            mountinfo: ctr,
            own_cgroup: Some(Path::new("/libpod_parent/libpod-abc")),
            sensitive: &s,
            exists: &|_| true,
        })
    }

    #[test]
    fn a_well_confined_container_has_no_warning() {
        // Its own rootfs (overlay), its own cgroup (read-only), the host's /var/lib/data.
        let ctr = "\
100 90 0:60 / / rw - overlay overlay rw
101 100 0:61 / /proc rw - proc proc rw
102 100 0:62 /libpod_parent/libpod-abc /sys/fs/cgroup ro - cgroup2 cgroup2 rw
103 100 254:0 /srv/data /data rw - ext4 /dev/vda rw
";
        let status = "CapEff:\t00000000a80405fb\nCapBnd:\t00000000a80405fb\n";
        // a80405fb: Docker's default set minus NET_RAW.
        assert_eq!(run(ctr, status, false), Vec::<String>::new());
    }

    #[test]
    fn everything_that_breaks_the_guarantees_is_named() {
        let ctr = "\
100 90 0:60 / / rw - overlay overlay rw
103 100 254:0 /var/lib /host-lib rw - ext4 /dev/vda rw
104 100 0:25 /egress-agent /agent-run rw - tmpfs tmpfs rw
105 100 0:49 / /sys/fs/bpf rw - bpf bpf rw
106 100 0:62 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
";
        // SYS_ADMIN effective; NET_RAW only in the bounding set.
        let status = "CapEff:\t0000000000200000\nCapBnd:\t0000000000202000\n";
        let w = run(ctr, status, true).join("\n");
        for want in [
            "shares the host's pid namespace",
            "holds CAP_SYS_ADMIN",
            "CAP_NET_RAW in its bounding set",
            "control socket (/run/egress-agent/control.sock) at /agent-run/control.sock",
            "state directory (CA key) (/var/lib/egress-agent) at /host-lib/egress-agent",
            "pins (bpffs) (/sys/fs/bpf/egress-agent) at /sys/fs/bpf/egress-agent",
            "cgroup2 mounted read-write at /sys/fs/cgroup showing /",
        ] {
            assert!(w.contains(want), "{want}\n{w}");
        }
    }

    #[test]
    fn a_covered_path_is_not_visible() {
        // The host's / is shared (exec's layout) but the state directory is covered.
        let ctr = "\
27 1 254:0 / / rw - ext4 /dev/vda rw
200 27 0:70 / /var/lib/egress-agent ro - tmpfs tmpfs ro
";
        let host = mountinfo::parse(HOST);
        let c = mountinfo::parse(ctr);
        assert_eq!(
            visible_at(&host, &c, Path::new("/var/lib/egress-agent")),
            None
        );
        assert_eq!(
            visible_at(&host, &c, Path::new("/var/lib/other")),
            Some(PathBuf::from("/var/lib/other"))
        );
    }
}
