//! The three-namespace test topology: `ctr-<id>` (the container: netns + cgroup), `up-<id>` (the fake
//! internet) and `ag-<id>` (where the agent runs). See `tests/README.md` for the diagram.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::addrs::*;
use crate::{bin_path, cgroup2_root, sys};

/// Where `ip netns add` puts its bind mounts.
const NETNS_DIR: &str = "/run/netns";
/// One file per live topology, holding the owner's pid (written before anything else is created).
const STATE_DIR: &str = "/run/egress-tests";
/// Parent of every test cgroup, under the cgroup2 mount.
const CGROUP_PARENT: &str = "egress-test";
const NS_PREFIXES: [&str; 3] = ["ctr-", "up-", "ag-"];

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A test's own namespaces and cgroup. Everything is removed on drop, also when the test panics.
pub struct Topology {
    id: String,
    test_name: String,
    cgroup: PathBuf,
    workdir: PathBuf,
    resolv_nameservers: Vec<IpAddr>,
}

fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn is_harness_id(s: &str) -> bool {
    s.len() == 6 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Runs `ip` with `args`; panics with its stderr on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` (install iproute2): {e}"));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip -n NS -batch -` with `script` on stdin.
fn ip_batch(ns: &str, script: &str) {
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run `ip` (install iproute2)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "`ip -n {ns} -batch` failed: {}\nscript:\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes sysctls (paths relative to /proc/sys) inside the network namespace at `netns`.
fn sysctls(netns: &Path, values: &[(&str, &str)]) {
    let values: Vec<(String, String)> = values
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    sys::in_netns(netns, move || {
        for (k, v) in &values {
            fs::write(Path::new("/proc/sys").join(k), v)
                .map_err(|e| std::io::Error::other(format!("sysctl {k}={v}: {e}")))?;
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("sysctl in {}: {e}", netns.display()));
}

/// The non-loopback `nameserver`s of /etc/resolv.conf (unmodified tools in ctr resolve through them).
pub fn resolv_nameservers() -> Vec<IpAddr> {
    let text = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse::<IpAddr>().ok())
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        // Never shadow the harness's own link nets.
        .filter(|a| {
            ![
                IpAddr::from(CTR_LINK),
                UP_CTR_LINK.into(),
                AG_LINK.into(),
                UP_AG_LINK.into(),
            ]
            .contains(a)
        })
        .collect()
}

fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn ns_id(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// SIGKILLs every process (other than this one) whose network namespace is the one at `netns`.
fn kill_netns_processes(netns: &Path) {
    let Some(target) = ns_id(netns) else { return };
    let me = std::process::id() as i32;
    // An `egress-agent exec` killed here cannot clean up after itself: its cgroup
    // (`egress-agent.exec/PID`) and that cgroup's pins are removed below.
    let mut exec_cgroups = Vec::new();
    for _ in 0..50 {
        let mut found = false;
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if pid == me {
                continue;
            }
            if ns_id(&entry.path().join("ns/net")) == Some(target) {
                found = true;
                let _ = sys::kill(pid, libc::SIGKILL);
                if let Some(cg) = cgroup2_root()
                    .map(|r| r.join("egress-agent.exec").join(pid.to_string()))
                    .filter(|cg| cg.exists())
                {
                    exec_cgroups.push(cg);
                }
            }
        }
        if !found {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for cg in exec_cgroups {
        let ids = cgroup_ids(&cg);
        remove_cgroup(&cg);
        remove_pins(&ids);
    }
}

/// Kills everything in the cgroup (cgroup.kill), waits for it to empty and removes it.
fn remove_cgroup(cg: &Path) {
    if !cg.exists() {
        return;
    }
    let _ = fs::write(cg.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let empty = fs::read_to_string(cg.join("cgroup.procs"))
            .map(|s| s.trim().is_empty())
            .unwrap_or(true);
        if empty {
            // Child cgroups a test (or the workload) made go first, depth-first:
            // rmdir of a cgroup with children fails with EBUSY.
            if let Ok(entries) = fs::read_dir(cg) {
                for e in entries.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        remove_cgroup(&e.path());
                    }
                }
            }
        }
        if (empty && fs::remove_dir(cg).is_ok()) || !cg.exists() {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("egress-tests: could not remove cgroup {}", cg.display());
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes everything of topology `id` (idempotent, never panics).
fn teardown(id: &str) {
    if let Some(root) = cgroup2_root() {
        let cgroup = root.join(CGROUP_PARENT).join(id);
        let ids = cgroup_ids(&cgroup);
        remove_cgroup(&cgroup);
        // An agent killed or stopped without `detach` (on purpose, or by a failing test)
        // leaves its pins; their cgroups are gone now, so are they.
        remove_pins(&ids);
    }
    for p in NS_PREFIXES {
        let name = format!("{p}{id}");
        let path = netns_path(&name);
        if path.exists() {
            kill_netns_processes(&path);
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status();
        }
    }
    let _ = fs::remove_dir_all(workdir_for(id));
    let _ = fs::remove_file(Path::new(STATE_DIR).join(id));
}

/// The ids (inode numbers) of a cgroup and every cgroup below it.
pub(crate) fn cgroup_ids(cgroup: &Path) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut todo = vec![cgroup.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(meta) = fs::metadata(&dir) else {
            continue;
        };
        ids.push(meta.ino());
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            }
        }
    }
    ids
}

/// Removes the agent's pins (`<bpffs>/egress-agent/<id>`) of these cgroup ids.
pub(crate) fn remove_pins(ids: &[u64]) {
    let Some(bpffs) = bpffs_root() else {
        return;
    };
    // An enforced cgroup's pins are `egress-agent/ID`; a gated parent's `egress-agent/gate/ID`.
    for id in ids {
        for dir in [
            bpffs.join("egress-agent").join(id.to_string()),
            bpffs.join("egress-agent/gate").join(id.to_string()),
        ] {
            if dir.exists() {
                let _ = fs::remove_dir_all(&dir);
            }
        }
    }
}

/// Where bpffs is mounted (from /proc/self/mountinfo).
fn bpffs_root() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "bpf" {
            return None;
        }
        Some(PathBuf::from(left.split_whitespace().nth(4)?))
    })
}

fn workdir_for(id: &str) -> PathBuf {
    std::env::temp_dir().join(format!("egress-test-{id}"))
}

fn pid_alive(pid: i32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes leftovers of crashed runs: topologies whose owner process is gone, and harness-named
/// namespaces / cgroups with no owner record at all. Returns the ids removed.
pub fn cleanup_stale() -> Vec<String> {
    // Namespaces and cgroups first, owner records second: a topology being created writes its owner
    // record before anything else, so whatever exists at the first scan has a record at the second.
    let mut orphans = Vec::new();
    for entry in fs::read_dir(NETNS_DIR).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        for p in NS_PREFIXES {
            if let Some(id) = name.strip_prefix(p) {
                if is_harness_id(id) {
                    orphans.push(id.to_string());
                }
            }
        }
    }
    if let Some(root) = cgroup2_root() {
        for entry in fs::read_dir(root.join(CGROUP_PARENT))
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = entry.file_name().to_string_lossy().into_owned();
            if is_harness_id(&id) {
                orphans.push(id);
            }
        }
    }
    let mut stale = Vec::new();
    let mut owned = Vec::new();
    for entry in fs::read_dir(STATE_DIR).into_iter().flatten().flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        if !is_harness_id(&id) {
            continue;
        }
        let owner = fs::read_to_string(entry.path())
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<i32>().ok());
        // An owner record being written right now is still empty: young records count as owned.
        let young = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < Duration::from_secs(60));
        match owner {
            Some(pid) if pid_alive(pid) => owned.push(id),
            None if young => owned.push(id),
            _ => stale.push(id),
        }
    }
    for id in orphans {
        if !owned.contains(&id) && !stale.contains(&id) {
            stale.push(id);
        }
    }
    for id in &stale {
        teardown(id);
    }
    stale
}

impl Topology {
    /// Builds the three namespaces, their links and routes, and the container's cgroup. Panics (with
    /// everything created so far removed) if any step fails.
    pub fn new(test_name: &str) -> Topology {
        cleanup_stale();
        let cg_root = cgroup2_root().expect("no cgroup2 mount in /proc/self/mountinfo");
        fs::create_dir_all(STATE_DIR).expect("create /run/egress-tests");
        let pid = std::process::id();
        let id = loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let h = fnv1a(format!("{test_name}/{pid}/{n}").as_bytes());
            let id = format!("{:06x}", h & 0xff_ffff);
            let state = Path::new(STATE_DIR).join(&id);
            let taken = state.exists()
                || NS_PREFIXES
                    .iter()
                    .any(|p| netns_path(&format!("{p}{id}")).exists());
            if taken {
                continue;
            }
            // create_new: two test threads cannot claim the same id.
            if let Ok(mut f) = OpenOptions::new().write(true).create_new(true).open(&state) {
                writeln!(f, "{pid} {test_name}").unwrap();
                break id;
            }
        };
        let topo = Topology {
            cgroup: cg_root.join(CGROUP_PARENT).join(&id),
            workdir: workdir_for(&id),
            id,
            test_name: test_name.to_string(),
            resolv_nameservers: resolv_nameservers(),
        };
        // From here on, a panic drops `topo`, which tears down whatever exists.
        topo.build();
        topo
    }

    fn build(&self) {
        fs::create_dir_all(&self.workdir).unwrap();
        fs::create_dir_all(&self.cgroup)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", self.cgroup.display()));
        let (ctr, up, ag) = (self.ctr_netns(), self.up_netns(), self.ag_netns());
        for ns in [&ctr, &up, &ag] {
            ip(&["netns", "add", ns]);
            // Before the veths exist, so they are born without DAD (addresses usable at once).
            sysctls(
                &netns_path(ns),
                &[
                    ("net/ipv6/conf/default/accept_dad", "0"),
                    ("net/ipv6/conf/all/accept_dad", "0"),
                ],
            );
        }
        // The fake internet honours source routes (IPv4 LSRR/SSRR, IPv6 SRH), so that the
        // IP_OPTIONS / IPV6_RTHDR attacks succeed without the enforcer.
        sysctls(
            &netns_path(&up),
            &[
                ("net/ipv4/conf/all/accept_source_route", "1"),
                ("net/ipv4/conf/default/accept_source_route", "1"),
                ("net/ipv6/conf/all/seg6_enabled", "1"),
                ("net/ipv6/conf/default/seg6_enabled", "1"),
            ],
        );
        let (up_c, up_a) = (format!("c-{}", self.id), format!("a-{}", self.id));
        // Created directly inside the namespaces: no name is ever visible in the root namespace.
        ip(&[
            "link", "add", "eth0", "netns", &ctr, "type", "veth", "peer", "name", &up_c, "netns",
            &up,
        ]);
        ip(&[
            "link", "add", "eth0", "netns", &ag, "type", "veth", "peer", "name", &up_a, "netns",
            &up,
        ]);
        ip_batch(
            &ctr,
            &format!(
                "link set lo up\nlink set eth0 up\n\
                 addr add {CTR_LINK}/30 dev eth0\naddr add {CTR_LINK_V6}/64 dev eth0 nodad\n\
                 route add default via {UP_CTR_LINK}\nroute add ::/0 via {UP_CTR_LINK_V6}\n"
            ),
        );
        ip_batch(
            &ag,
            &format!(
                "link set lo up\nlink set eth0 up\n\
                 addr add {AG_LINK}/30 dev eth0\naddr add {AG_LINK_V6}/64 dev eth0 nodad\n\
                 route add default via {UP_AG_LINK}\nroute add ::/0 via {UP_AG_LINK_V6}\n"
            ),
        );
        let mut script = format!(
            "link set lo up\n\
             link set {up_c} up\naddr add {UP_CTR_LINK}/30 dev {up_c}\n\
             addr add {UP_CTR_LINK_V6}/64 dev {up_c} nodad\n\
             link set {up_a} up\naddr add {UP_AG_LINK}/30 dev {up_a}\n\
             addr add {UP_AG_LINK_V6}/64 dev {up_a} nodad\n"
        );
        // Connections to BLACKHOLE vanish without an answer (a connect that times out).
        script.push_str(&format!("route add blackhole {BLACKHOLE}/32\n"));
        for a in self.server_addrs() {
            let plen = if a.is_ipv4() { 32 } else { 128 };
            script.push_str(&format!("addr add {a}/{plen} dev lo\n"));
        }
        ip_batch(&up, &script);
        sysctls(
            &self.up_netns_path(),
            &[
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv6/conf/all/forwarding", "1"),
                ("net/ipv4/tcp_fastopen", "3"),
            ],
        );
        sysctls(
            &self.ctr_netns_path(),
            &[
                ("net/ipv4/ping_group_range", "0 2147483647"),
                ("net/ipv4/tcp_fastopen", "1"),
            ],
        );
    }

    /// Puts `ip` on up-*'s loopback: an address of the fake internet for a server the test runs.
    pub fn add_up_address(&self, ip: std::net::Ipv4Addr) {
        let ok = Command::new("ip")
            .args(["-n", &self.up_netns(), "addr", "add"])
            .arg(format!("{ip}/32"))
            .args(["dev", "lo"])
            .status()
            .expect("ip addr add");
        assert!(ok.success(), "ip -n {} addr add {ip}/32", self.up_netns());
    }

    /// Every address the fake internet serves on (held on up-*'s loopback).
    pub fn server_addrs(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = WEB_V4.iter().map(|a| (*a).into()).collect();
        v.extend(WEB_V6.iter().map(|a| IpAddr::from(*a)));
        v.extend([
            IpAddr::from(ALT),
            DNS.into(),
            METADATA.into(),
            METADATA_V6.into(),
            PRIVATE.into(),
            PRIVATE_V6.into(),
        ]);
        for a in &self.resolv_nameservers {
            if !v.contains(a) {
                v.push(*a);
            }
        }
        v
    }

    /// The non-loopback resolv.conf nameservers that up-* answers DNS on.
    pub fn resolv_nameservers(&self) -> &[IpAddr] {
        &self.resolv_nameservers
    }

    /// The 6-hex id shared by every name of this topology.
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn test_name(&self) -> &str {
        &self.test_name
    }
    /// A scratch directory removed with the topology.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    pub fn ctr_netns(&self) -> String {
        format!("ctr-{}", self.id)
    }
    pub fn up_netns(&self) -> String {
        format!("up-{}", self.id)
    }
    pub fn ag_netns(&self) -> String {
        format!("ag-{}", self.id)
    }
    /// `/run/netns/ctr-<id>` (for `nsenter --net=` and the agent's CLI).
    pub fn ctr_netns_path(&self) -> PathBuf {
        netns_path(&self.ctr_netns())
    }
    pub fn up_netns_path(&self) -> PathBuf {
        netns_path(&self.up_netns())
    }
    pub fn ag_netns_path(&self) -> PathBuf {
        netns_path(&self.ag_netns())
    }
    /// `<cgroup2 root>/egress-test/<id>`: the container's cgroup.
    pub fn ctr_cgroup_path(&self) -> &Path {
        &self.cgroup
    }
    /// Pids currently in the container's cgroup.
    pub fn ctr_pids(&self) -> Vec<i32> {
        fs::read_to_string(self.cgroup.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn command_in(netns: &Path, cgroup: Option<&Path>, program: &OsStr) -> Command {
        let mut cmd = Command::new(program);
        let ns: OwnedFd = File::open(netns)
            .unwrap_or_else(|e| panic!("open {}: {e}", netns.display()))
            .into();
        let procs: Option<OwnedFd> = cgroup.map(|cg| {
            OpenOptions::new()
                .write(true)
                .open(cg.join("cgroup.procs"))
                .unwrap_or_else(|e| panic!("open {}/cgroup.procs: {e}", cg.display()))
                .into()
        });
        sys::pre_exec_enter(&mut cmd, ns, procs);
        cmd
    }

    /// A command that runs `program` inside the container: ctr's netns and ctr's cgroup.
    pub fn ctr_command(&self, program: impl AsRef<OsStr>) -> Command {
        Self::command_in(&self.ctr_netns_path(), Some(&self.cgroup), program.as_ref())
    }
    /// A command in the container's netns but in `cgroup` (e.g. a plain sibling cgroup without the
    /// programs, for baselines).
    pub fn ctr_command_in(&self, cgroup: &Path, program: impl AsRef<OsStr>) -> Command {
        Self::command_in(&self.ctr_netns_path(), Some(cgroup), program.as_ref())
    }
    /// A command in the fake internet's netns (no cgroup change).
    pub fn up_command(&self, program: impl AsRef<OsStr>) -> Command {
        Self::command_in(&self.up_netns_path(), None, program.as_ref())
    }
    /// A command in the agent's netns (no cgroup change).
    pub fn ag_command(&self, program: impl AsRef<OsStr>) -> Command {
        Self::command_in(&self.ag_netns_path(), None, program.as_ref())
    }

    /// Runs the `probe` binary in the container with `args` and returns its JSON line.
    pub fn probe(&self, args: &[&str]) -> serde_json::Value {
        run_probe(self.ctr_command(bin_path("probe")).args(args))
    }
    /// Runs the `probe` binary in up-* (the fake internet itself) with `args`.
    pub fn probe_up(&self, args: &[&str]) -> serde_json::Value {
        run_probe(self.up_command(bin_path("probe")).args(args))
    }

    /// Runs a python3 `script` with `args` in up-* (a server the test needs in the fake
    /// internet) and waits for the `READY` it prints; it is killed when the handle drops.
    pub fn start_up_script<S: AsRef<OsStr>>(
        &self,
        script: &str,
        args: impl IntoIterator<Item = S>,
        what: &str,
    ) -> UpScript {
        let mut child = self
            .up_command(crate::clients::PYTHON)
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        crate::wait_ready(&mut child, what);
        UpScript(child)
    }

    /// Starts `fakenet` in up-* and waits for `READY`.
    pub fn start_fakenet(&self) -> FakeNet {
        self.start_fakenet_with(&[])
    }

    /// Like `start_fakenet`, with extra fakenet flags (e.g. `--record name=1.2.3.4`).
    pub fn start_fakenet_with(&self, extra: &[&str]) -> FakeNet {
        let dir = self.workdir.join(format!(
            "fakenet-{}",
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        let ca_pem = dir.join("ca.pem");
        let query_log = dir.join("queries.jsonl");
        let conn_log = dir.join("connections.jsonl");
        let mut cmd = self.up_command(bin_path("fakenet"));
        cmd.arg("--ca-out")
            .arg(&ca_pem)
            .arg("--query-log")
            .arg(&query_log)
            .arg("--conn-log")
            .arg(&conn_log);
        for a in &self.resolv_nameservers {
            cmd.arg("--dns-extra").arg(a.to_string());
        }
        cmd.args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn fakenet");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let ready = lines.any(|l| l.map(|l| l.trim() == "READY").unwrap_or(false));
            let _ = tx.send(ready);
            // Keep draining so fakenet never blocks on a full pipe.
            for _ in lines {}
        });
        let ready = rx.recv_timeout(Duration::from_secs(20)).unwrap_or(false);
        let mut fake = FakeNet {
            child: Some(child),
            ca_pem,
            query_log,
            conn_log,
        };
        if !ready {
            fake.stop();
            panic!("fakenet did not print READY (see its stderr above)");
        }
        fake
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        teardown(&self.id);
    }
}

/// Runs `probe` in the container's netns but in another cgroup (e.g. a child of
/// the container's).
pub fn run_probe_in(topo: &Topology, cgroup: &Path, args: &[&str]) -> serde_json::Value {
    run_probe(
        Topology::command_in(
            &topo.ctr_netns_path(),
            Some(cgroup),
            bin_path("probe").as_os_str(),
        )
        .args(args),
    )
}

fn run_probe(cmd: &mut Command) -> serde_json::Value {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run probe: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty());
    match line.and_then(|l| serde_json::from_str(l).ok()) {
        Some(v) => v,
        None => panic!(
            "probe printed no JSON (status {}): stdout={stdout:?} stderr={:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A running `fakenet`. Stops it on drop (closes its stdin, then kills it).
pub struct FakeNet {
    child: Option<Child>,
    /// PEM of the test CA that signed every fakenet certificate.
    pub ca_pem: PathBuf,
    /// JSONL: one line per DNS query received (`name`, `type`, `client`, `server`, `proto`).
    pub query_log: PathBuf,
    /// JSONL: one line per accepted TCP connection / received UDP datagram (`proto`, `server`, `peer`, `service`).
    pub conn_log: PathBuf,
}

fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

impl FakeNet {
    /// Every DNS query received so far.
    pub fn queries(&self) -> Vec<serde_json::Value> {
        read_jsonl(&self.query_log)
    }
    /// Whether any query for `name` (case-insensitive, trailing dot ignored), or a name under it, arrived.
    pub fn was_queried(&self, name: &str) -> bool {
        let want = name.trim_end_matches('.').to_ascii_lowercase();
        self.queries().iter().any(|q| {
            let n = q["name"].as_str().unwrap_or("").to_ascii_lowercase();
            n == want || n.ends_with(&format!(".{want}"))
        })
    }
    /// Every connection / datagram logged so far.
    pub fn connections(&self) -> Vec<serde_json::Value> {
        read_jsonl(&self.conn_log)
    }
    /// Connections / datagrams that arrived on server address `ip` (any port).
    pub fn connections_to(&self, ip: IpAddr) -> Vec<serde_json::Value> {
        self.connections()
            .into_iter()
            .filter(|c| {
                c["server"]
                    .as_str()
                    .and_then(|s| s.parse::<std::net::SocketAddr>().ok())
                    .map(|s| s.ip() == ip)
                    .unwrap_or(false)
            })
            .collect()
    }
    /// Whether fakenet is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
    /// Stops fakenet now.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for FakeNet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A script started by [`Topology::start_up_script`], killed on drop.
pub struct UpScript(Child);

impl Drop for UpScript {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
