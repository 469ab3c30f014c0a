//! Real container runtimes driven by the tests, each with private state that is removed on drop:
//! podman (runc, `--network ns:`), Docker (a `dockerd` started inside a test netns, host-network
//! containers) and containerd (the CRI plugin, CNI bridge, driven over the CRI API like a kubelet).
//!
//! Every runtime instance owns a [`Scratch`]: a directory `$TMPDIR/egress-rt-<id>-<kind><n>` (roots,
//! state, sockets, logs) and a cgroup subtree `<cg2>/egress-runtimes/<id>/<kind><n>/` with `daemon/`
//! (the runtime's own processes: dockerd, containerd, shims, podman's CLI and conmon) and
//! `containers/` (the cgroup parent of every container: the place a gate goes). On drop the runtime
//! first removes its containers the polite way, then the scratch kills whatever is left in the
//! subtree, unmounts everything under the directory and removes it, and removes the cgroups from the
//! v2 mount and every v1 hierarchy (runc creates them there too on a hybrid host).
//!
//! The test image ([`image`]) holds busybox and the harness's `probe`; its "first instruction"
//! entrypoint ([`first_instruction_command`]) connects to the fake metadata server, to a denied host
//! and to an allowed one before anything else, and prints one JSON line ([`FirstReport`]).

pub mod containerd;
pub mod cri;
pub mod docker;
pub mod image;
pub mod podman;

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::addrs::{METADATA, METADATA_SECRET, WEB1, WEB2};
use crate::topology::{FakeNet, Topology};
use crate::{cgroup2_root, is_ci};

/// Parent of every runtime cgroup subtree, under the cgroup2 mount (and mirrored in v1 hierarchies).
const CGROUP_TOP: &str = "egress-runtimes";
/// Topology owner records (see `topology.rs`): a runtime scratch whose id has no live owner is stale.
const OWNER_DIR: &str = "/run/egress-tests";
/// Prefix of the scratch directories under `$TMPDIR`.
const SCRATCH_PREFIX: &str = "egress-rt-";
/// In a scratch: the host directories its runtime created ([`Scratch::note_host_dirs`]).
const HOST_DIRS_NOTE: &str = "host-dirs-created";
/// libcni's result cache (containerd 1.6 has no setting for it).
const CNI_CACHE: &str = "/var/lib/cni/results";

/// Returns true when every program in `tools` exists. Otherwise prints `SKIPPED: <what> needs ...`
/// and returns false, except under `CI=true`, where it panics: CI installs them (xtask's APT list).
pub fn tools_present(what: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !Path::new(t).is_file())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        !is_ci(),
        "CI=true: {what} needs {missing:?} (cargo xtask deps installs them)"
    );
    eprintln!("SKIPPED: {what} needs {missing:?}");
    false
}

/// Whether this host mounts cgroup v1 hierarchies next to the v2 one (hybrid, as here).
pub fn is_hybrid_cgroups() -> bool {
    !v1_hierarchies().is_empty()
}

/// Mount points of the cgroup v1 hierarchies (`/sys/fs/cgroup/memory`, ...; none on a v2-only host).
fn v1_hierarchies() -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup" {
                return None;
            }
            Some(PathBuf::from(left.split_whitespace().nth(4)?))
        })
        .collect()
}

/// How a container is networked. Never a route to the real network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    /// No network at all (`--network none`); not offered by the CRI harness (a pod always has one).
    None,
    /// Reaches the fake internet (up-*) and nothing else: podman `--network ns:<ctr netns>`, Docker
    /// `--network host` (dockerd runs in the ctr netns), containerd a CNI bridge on a private subnet
    /// routed through the node (the ctr netns) to up-*.
    Test,
    /// The runtime daemon's own netns (ctr-*): podman/Docker as `Test`, CRI `hostNetwork` pods.
    Node,
}

/// What to start: the test image with a command, a network and annotations.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// Container (or pod) name; unique per runtime instance.
    pub name: String,
    pub net: Net,
    /// OCI annotations (podman/Docker: `--annotation`; CRI: the pod's and the container's).
    pub annotations: Vec<(String, String)>,
    /// argv of the container's process.
    pub command: Vec<String>,
    /// podman `--runtime`, Docker `--runtime`, CRI runtime handler (RuntimeClass); None = default.
    pub runtime: Option<String>,
}

impl RunSpec {
    /// The first-instruction probe (see [`first_instruction_command`]), kept running afterwards.
    pub fn first_instruction(name: &str) -> RunSpec {
        RunSpec {
            name: name.to_string(),
            net: Net::Test,
            annotations: Vec::new(),
            command: first_instruction_command(true),
            runtime: None,
        }
    }
    pub fn net(mut self, net: Net) -> RunSpec {
        self.net = net;
        self
    }
    pub fn annotation(mut self, key: &str, value: &str) -> RunSpec {
        self.annotations.push((key.to_string(), value.to_string()));
        self
    }
    pub fn runtime(mut self, runtime: &str) -> RunSpec {
        self.runtime = Some(runtime.to_string());
        self
    }
    pub fn command(mut self, argv: &[&str]) -> RunSpec {
        self.command = argv.iter().map(|s| s.to_string()).collect();
        self
    }
}

/// A started container.
#[derive(Clone, Debug)]
pub struct Started {
    pub name: String,
    /// The runtime's container id.
    pub id: String,
    /// CRI only: the pod sandbox id.
    pub sandbox_id: Option<String>,
    /// The container's init process, as the host sees it.
    pub pid: u32,
    /// The container's cgroup v2 directory (absolute, under the cgroup2 mount).
    pub cgroup: PathBuf,
    /// When the start began (`podman run` / `docker run` spawned, RunPodSandbox sent).
    pub t0: SystemTime,
    /// How long the start call took (run -d returned / StartContainer answered).
    pub start_took: Duration,
    /// CRI only: the pod's IP on the CNI bridge.
    pub ip: Option<IpAddr>,
}

impl Started {
    /// `/proc/<pid>/ns/net` of the container.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }
}

/// What the three harnesses have in common, for table-driven tests.
pub trait Runtime {
    /// `podman`, `docker`, `containerd`.
    fn kind(&self) -> &'static str;
    /// Starts the container; Err carries the runtime's own message (a refusing hook, a bad handler).
    fn start(&self, spec: &RunSpec) -> anyhow::Result<Started>;
    /// Everything the container wrote to stdout/stderr so far.
    fn output(&self, c: &Started) -> String;
    /// Stops and removes the container (and its pod); idempotent.
    fn remove(&self, c: &Started);
    /// The cgroup v2 directory every container of this instance is created under.
    fn cgroup_parent_path(&self) -> PathBuf;
    /// The tail of the runtime daemon's own log, for failure messages (empty for podman).
    fn diagnostics(&self) -> String {
        String::new()
    }

    /// Waits (up to `timeout`) for the first-instruction report in the container's output.
    fn wait_report(&self, c: &Started, timeout: Duration) -> FirstReport {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output(c);
            if let Some(r) = FirstReport::parse(&out) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{} {}: no first-instruction report within {timeout:?}; output: {out:?}",
                self.kind(),
                c.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The HTTP request the first-instruction probe sends (probe expands `\r\n`).
fn http_get(host: &str, path: &str) -> String {
    format!("GET {path} HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n")
}

/// The container's entrypoint whose first network operation is a connect to the fake metadata
/// server (169.254.169.254:80, an IAM-credential request), then a denied host (`other.test` on
/// 198.51.100.11:80) and an allowed one (`allowed.test` on 198.51.100.10:80), each one `probe tcp`
/// run; one JSON line `{"first_instruction": {"metadata": P, "denied": P, "allowed": P}}` on stdout
/// (P = probe's own line). `keep_running`: then sleeps, so the container stays up to be inspected.
pub fn first_instruction_command(keep_running: bool) -> Vec<String> {
    let probe = |target: String, host: &str, path: &str| {
        format!(
            "/bin/probe --timeout-ms 3000 tcp {target} --send '{}' --read",
            http_get(host, path)
        )
    };
    let then = if keep_running {
        "exec /bin/sleep 3600"
    } else {
        "exit 0"
    };
    let script = format!(
        "M=$({}); D=$({}); A=$({}); \
         echo \"{{\\\"first_instruction\\\":{{\\\"metadata\\\":$M,\\\"denied\\\":$D,\\\"allowed\\\":$A}}}}\"; {then}",
        probe(
            format!("{METADATA}:80"),
            &METADATA.to_string(),
            "/latest/meta-data/iam/security-credentials/"
        ),
        probe(format!("{WEB2}:80"), "other.test", "/"),
        probe(format!("{WEB1}:80"), "allowed.test", "/"),
    );
    vec!["/bin/sh".into(), "-c".into(), script]
}

/// The parsed first-instruction line: each field is the probe's JSON (`ok`, `errno`, `reply`, ...).
#[derive(Clone, Debug)]
pub struct FirstReport {
    pub metadata: serde_json::Value,
    pub denied: serde_json::Value,
    pub allowed: serde_json::Value,
}

impl FirstReport {
    /// The last `{"first_instruction": ...}` line in `output` (CRI log lines carry a prefix).
    pub fn parse(output: &str) -> Option<FirstReport> {
        output.lines().rev().find_map(|line| {
            let start = line.find("{\"first_instruction\"")?;
            let v: serde_json::Value = serde_json::from_str(line[start..].trim()).ok()?;
            let f = &v["first_instruction"];
            Some(FirstReport {
                metadata: f["metadata"].clone(),
                denied: f["denied"].clone(),
                allowed: f["allowed"].clone(),
            })
        })
    }
    /// The metadata server answered with its fake credential.
    pub fn metadata_leaked(&self) -> bool {
        reply(&self.metadata).contains(METADATA_SECRET)
    }
    /// The denied host's own server answered (200 from fakenet's echo, not the agent's 403).
    pub fn denied_reached(&self) -> bool {
        let r = reply(&self.denied);
        r.starts_with("HTTP/1.1 200") && r.contains("other.test")
    }
    /// The allowed request got a 200 for allowed.test.
    pub fn allowed_ok(&self) -> bool {
        let r = reply(&self.allowed);
        r.starts_with("HTTP/1.1 200") && r.contains("allowed.test")
    }
    /// errno of the metadata connect (e.g. `EPERM` when a gate or the programs refused it).
    pub fn metadata_errno(&self) -> Option<i32> {
        self.metadata["errno"].as_i64().map(|e| e as i32)
    }
}

fn reply(probe: &serde_json::Value) -> &str {
    probe["reply"].as_str().unwrap_or("")
}

/// The first connection fakenet logged to the metadata server (`METADATA:80`) at or after `since`
/// (from `peer`, when given): how long after `since` it arrived.
pub fn metadata_arrival(
    fake: &FakeNet,
    since: SystemTime,
    peer: Option<IpAddr>,
) -> Option<Duration> {
    let t0 = since.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    fake.connections_to(IpAddr::from(METADATA))
        .iter()
        .filter(|c| {
            peer.is_none_or(|p| {
                c["peer"]
                    .as_str()
                    .and_then(|s| s.parse::<std::net::SocketAddr>().ok())
                    .is_some_and(|s| s.ip() == p)
            })
        })
        .filter_map(|c| c["ts"].as_f64())
        .filter(|ts| *ts >= t0)
        .fold(None, |min: Option<f64>, ts| {
            Some(min.map_or(ts, |m| m.min(ts)))
        })
        .map(|ts| Duration::from_secs_f64(ts - t0))
}

/// `usage_usec` of a cgroup v2 directory's `cpu.stat` (the subtree's CPU time; present without the
/// cpu controller).
pub fn cpu_usage(cgroup: &Path) -> Duration {
    let text = fs::read_to_string(cgroup.join("cpu.stat")).unwrap_or_default();
    let usec = text
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Duration::from_micros(usec)
}

/// The cgroup v2 path (`0::/...` in `/proc/PID/cgroup`) of `pid`, absolute under the cgroup2 mount.
pub fn cgroup_of(pid: u32) -> Option<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(cgroup2_root()?.join(rel.trim_start_matches('/')))
}

/// Percentile (0..=100) of a sample, by nearest rank.
pub fn percentile(samples: &[Duration], p: u32) -> Duration {
    let mut v = samples.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p as usize * v.len()).div_ceil(100).max(1);
    v[rank.min(v.len()) - 1]
}

/// Private state of one runtime instance: `$TMPDIR/egress-rt-<id>-<kind><n>` and the cgroup
/// subtree `/egress-runtimes/<id>/<kind><n>` (`daemon/`, `containers/`), `<n>` numbering the
/// instances of this process (two harnesses of one topology never share state). Removed on drop,
/// mounts and all.
pub struct Scratch {
    id: String,
    kind: String,
    dir: PathBuf,
}

static INSTANCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Scratch {
    /// Creates the directory and the cgroups of an instance of runtime `kind` for topology `topo`.
    /// Removes the leftovers of crashed runs first ([`cleanup_stale`]).
    pub fn new(topo: &Topology, kind: &str) -> Scratch {
        cleanup_stale();
        let n = INSTANCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let kind = format!("{kind}{n}");
        let s = Scratch {
            id: topo.id().to_string(),
            dir: scratch_dir(topo.id(), &kind),
            kind,
        };
        // A dead process's instance with the same number (its owner record reused).
        teardown(&s.id, &s.kind);
        fs::create_dir_all(&s.dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", s.dir.display()));
        for cg in [s.daemon_cgroup(), s.cgroup_parent_path()] {
            fs::create_dir_all(&cg).unwrap_or_else(|e| panic!("mkdir {}: {e}", cg.display()));
        }
        s
    }

    /// The scratch directory (everything of this runtime instance lives below it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// `/egress-runtimes/<id>/<kind><n>` (cgroupfs syntax, relative to the cgroup mounts).
    pub fn cgroup_rel(&self) -> String {
        format!("/{CGROUP_TOP}/{}/{}", self.id, self.kind)
    }
    /// The containers' parent in cgroupfs syntax (`--cgroup-parent`, CRI `cgroup_parent` prefix).
    pub fn cgroup_parent(&self) -> String {
        format!("{}/containers", self.cgroup_rel())
    }
    /// The containers' parent on the cgroup v2 mount.
    pub fn cgroup_parent_path(&self) -> PathBuf {
        cg2().join(self.cgroup_parent().trim_start_matches('/'))
    }
    /// Where the runtime's own processes run (daemon, shims, CLI, conmon), on the v2 mount.
    pub fn daemon_cgroup(&self) -> PathBuf {
        cg2().join(format!("{}/daemon", self.cgroup_rel()).trim_start_matches('/'))
    }
    /// The whole subtree (daemon + containers) on the v2 mount: its `cpu.stat` is the runtime's cost.
    pub fn subtree(&self) -> PathBuf {
        cg2().join(self.cgroup_rel().trim_start_matches('/'))
    }

    /// Host directories the runtime creates as a side effect wherever its state lives (dockerd's
    /// `/run/docker/plugins`, the shims' `/run/containerd/s`, libcni's `/var/lib/cni/results`),
    /// deepest first: those missing now are noted in the scratch and removed at teardown if empty
    /// (rmdir: never anyone else's content), also by [`cleanup_stale`] after a SIGKILL.
    pub fn note_host_dirs(&self, paths: &[&str]) {
        let missing: Vec<&str> = paths
            .iter()
            .copied()
            .filter(|p| !Path::new(p).exists())
            .collect();
        fs::write(self.dir.join(HOST_DIRS_NOTE), missing.join("\n")).unwrap();
    }

    /// `program` in the runtime's daemon cgroup, optionally inside network namespace `netns`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>, netns: Option<&Path>) -> Command {
        let mut cmd = Command::new(program);
        let procs: std::os::fd::OwnedFd = fs::OpenOptions::new()
            .write(true)
            .open(self.daemon_cgroup().join("cgroup.procs"))
            .expect("open the runtime's cgroup.procs")
            .into();
        let ns: std::os::fd::OwnedFd = match netns {
            Some(p) => fs::File::open(p)
                .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
                .into(),
            // Our own netns: setns to it is a no-op.
            None => fs::File::open("/proc/self/ns/net").unwrap().into(),
        };
        crate::sys::pre_exec_enter(&mut cmd, ns, Some(procs));
        cmd.stdin(Stdio::null());
        cmd
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        teardown(&self.id, &self.kind);
    }
}

fn cg2() -> PathBuf {
    cgroup2_root().expect("no cgroup2 mount in /proc/self/mountinfo")
}

fn scratch_dir(id: &str, kind: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{SCRATCH_PREFIX}{id}-{kind}"))
}

/// Removes everything of runtime `kind` of topology `id` (idempotent, never panics): kills the
/// cgroup subtree, unmounts and removes the scratch directory, removes the cgroups everywhere.
fn teardown(id: &str, kind: &str) {
    let rel = format!("{CGROUP_TOP}/{id}/{kind}");
    let mut ids = Vec::new();
    if let Some(root) = cgroup2_root() {
        ids = crate::topology::cgroup_ids(&root.join(&rel));
        kill_cgroup(&root.join(&rel));
    }
    let dir = scratch_dir(id, kind);
    let host_dirs = fs::read_to_string(dir.join(HOST_DIRS_NOTE)).unwrap_or_default();
    if kind.starts_with("containerd") {
        remove_cni_cache(id);
    }
    // Shims killed above never removed their sockets (/run/containerd/s/<hash>, named in the
    // task's `address` file).
    for sock in shim_sockets(&dir) {
        let _ = fs::remove_file(sock);
    }
    unmount_under(&dir);
    if dir.exists() {
        if let Err(e) = fs::remove_dir_all(&dir) {
            eprintln!("egress-tests: could not remove {}: {e}", dir.display());
        }
    }
    let mut mounts: Vec<PathBuf> = v1_hierarchies();
    mounts.extend(cgroup2_root());
    for m in &mounts {
        remove_cgroup_tree(&m.join(&rel));
        // The per-topology and top directories go once empty (rmdir fails while others use them).
        let _ = fs::remove_dir(m.join(format!("{CGROUP_TOP}/{id}")));
        let _ = fs::remove_dir(m.join(CGROUP_TOP));
    }
    // Pins of containers whose daemon stopped before it saw them exit.
    crate::topology::remove_pins(&ids);
    for d in host_dirs.lines().filter(|l| !l.is_empty()) {
        let _ = fs::remove_dir(d);
    }
}

/// The shim sockets named by the `address` files of containerd's v2 tasks under `dir`
/// (`…/io.containerd.runtime.v2.task/<namespace>/<id>/address`, `unix:///run/containerd/s/<hash>`).
fn shim_sockets(dir: &Path) -> Vec<PathBuf> {
    fn find_task_dirs(d: &Path, depth: u32, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(d).into_iter().flatten().flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name() == "io.containerd.runtime.v2.task" {
                out.push(e.path());
            } else if depth > 0 {
                find_task_dirs(&e.path(), depth - 1, out);
            }
        }
    }
    let mut task_dirs = Vec::new();
    find_task_dirs(dir, 4, &mut task_dirs);
    let children = |d: &Path| -> Vec<PathBuf> {
        fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect()
    };
    task_dirs
        .iter()
        .flat_map(|t| children(t))
        .flat_map(|ns| children(&ns))
        .filter_map(|task| fs::read_to_string(task.join("address")).ok())
        .filter_map(|a| a.trim().strip_prefix("unix://").map(PathBuf::from))
        .filter(|p| p.starts_with("/run/containerd/s/"))
        .collect()
}

/// libcni's cached results of the network `egress-rt-<id>` and of containerd's loopback for the
/// same sandboxes: removed by CNI DEL, left behind when the pods were never stopped (SIGKILL).
fn remove_cni_cache(id: &str) {
    let prefix = format!("{SCRATCH_PREFIX}{id}-");
    for e in fs::read_dir(CNI_CACHE).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // `<network>-<sandbox id>-<ifname>`
        let Some(sandbox) = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix("-eth0"))
        else {
            continue;
        };
        let _ = fs::remove_file(e.path());
        let _ = fs::remove_file(Path::new(CNI_CACHE).join(format!("cni-loopback-{sandbox}-lo")));
    }
}

/// `cgroup.kill` on a v2 subtree, then waits (≤ 5 s) until no process is left in it.
fn kill_cgroup(cg: &Path) {
    if !cg.exists() {
        return;
    }
    let _ = fs::write(cg.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while populated(cg) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn populated(cg: &Path) -> bool {
    fs::read_to_string(cg.join("cgroup.events"))
        .map(|s| s.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// Removes a cgroup directory and its children, depth first (v1 or v2; processes must be gone).
fn remove_cgroup_tree(cg: &Path) {
    let Ok(entries) = fs::read_dir(cg) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_cgroup_tree(&e.path());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    // rmdir is EBUSY for a moment after the last process of a v1 cgroup exits.
    while let Err(e) = fs::remove_dir(cg) {
        if e.kind() == std::io::ErrorKind::NotFound || Instant::now() > deadline {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!(
                    "egress-tests: could not remove cgroup {}: {e}",
                    cg.display()
                );
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every mount point at or below `dir`, from /proc/self/mountinfo, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    v.dedup();
    v
}

/// Lazily unmounts every mount at or below `dir` (overlay rootfs, shm, nsfs, the runtimes' private
/// bind mounts of their roots), deepest first; repeats while a stacked mount is left.
fn unmount_under(dir: &Path) {
    for _ in 0..5 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for m in mounts {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&m)
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn owner_alive(id: &str) -> bool {
    let record = Path::new(OWNER_DIR).join(id);
    let Ok(text) = fs::read_to_string(&record) else {
        return false;
    };
    match text
        .split_whitespace()
        .next()
        .and_then(|p| p.parse::<u32>().ok())
    {
        Some(pid) => Path::new(&format!("/proc/{pid}")).exists(),
        // Being written right now.
        None => true,
    }
}

/// Removes runtime leftovers of crashed runs: scratch directories and cgroup subtrees whose topology
/// owner is gone. Returns the `<id>-<kind>` names removed.
pub fn cleanup_stale() -> Vec<String> {
    let mut found: Vec<(String, String)> = Vec::new();
    for e in fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some((id, kind)) = name
            .strip_prefix(SCRATCH_PREFIX)
            .and_then(|r| r.split_once('-'))
        {
            found.push((id.to_string(), kind.to_string()));
        }
    }
    if let Some(root) = cgroup2_root() {
        let dirs = |p: &Path| {
            fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .collect::<Vec<_>>()
        };
        for e in dirs(&root.join(CGROUP_TOP)) {
            let id = e.file_name().to_string_lossy().into_owned();
            for k in dirs(&e.path()) {
                found.push((id.clone(), k.file_name().to_string_lossy().into_owned()));
            }
        }
    }
    found.sort();
    found.dedup();
    let mut removed = Vec::new();
    for (id, kind) in found {
        if !owner_alive(&id) {
            teardown(&id, &kind);
            removed.push(format!("{id}-{kind}"));
        }
    }
    removed
}

/// An OCI runtime wrapper script for tests (Docker `--add-runtime`, containerd `BinaryName`): it
/// appends its argv to `<dir>/<name>.argv`, copies the bundle's `config.json` to
/// `<dir>/<name>.<bundle basename>.json` when called with `--bundle` (create), then execs `real`.
pub struct LoggingWrapper {
    dir: PathBuf,
    name: String,
}

impl LoggingWrapper {
    pub fn create(dir: &Path, name: &str, real: &Path) -> LoggingWrapper {
        let w = LoggingWrapper {
            dir: dir.to_path_buf(),
            name: name.to_string(),
        };
        let script = format!(
            "#!/bin/sh\n\
             printf '%s\\n' \"$*\" >> '{log}'\n\
             bundle=''; prev=''\n\
             for a in \"$@\"; do\n\
             \x20 if [ \"$prev\" = --bundle ] || [ \"$prev\" = -b ]; then bundle=$a; fi\n\
             \x20 case $a in --bundle=*) bundle=${{a#--bundle=}};; esac\n\
             \x20 prev=$a\n\
             done\n\
             if [ -n \"$bundle\" ] && [ -f \"$bundle/config.json\" ]; then\n\
             \x20 cp \"$bundle/config.json\" '{dir}/{name}.'\"$(basename \"$bundle\")\".json\n\
             fi\n\
             exec '{real}' \"$@\"\n",
            log = w.argv_log().display(),
            dir = dir.display(),
            real = real.display(),
        );
        let path = w.path();
        fs::write(&path, script).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        w
    }
    /// The script to register as the runtime.
    pub fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.sh", self.name))
    }
    fn argv_log(&self) -> PathBuf {
        self.dir.join(format!("{}.argv", self.name))
    }
    /// One line per invocation: the arguments it was called with.
    pub fn invocations(&self) -> Vec<String> {
        fs::read_to_string(self.argv_log())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
    /// The `config.json` of every bundle it created, by bundle name (the container id).
    pub fn configs(&self) -> Vec<(String, serde_json::Value)> {
        let prefix = format!("{}.", self.name);
        let mut v: Vec<(String, serde_json::Value)> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                let id = n.strip_prefix(&prefix)?.strip_suffix(".json")?.to_string();
                let text = fs::read_to_string(e.path()).ok()?;
                Some((id, serde_json::from_str(&text).ok()?))
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// Waits until `f` returns Some (polling every 20 ms) or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// stdout + stderr of a finished command, lossily decoded.
pub fn output_text(o: &std::process::Output) -> String {
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    s
}

/// Writes `path`: a runtime wrapper script, what an operator writes for a daemon on a
/// non-default control socket: `egress-agent --control CONTROL runtime ARGS -- "$@"`.
pub fn write_wrapper(path: &Path, control: &Path, args: &str) -> PathBuf {
    fs::write(
        path,
        format!(
            "#!/bin/sh\nexec '{}' --control '{}' runtime {args} -- \"$@\"\n",
            crate::bin_path("egress-agent").display(),
            control.display()
        ),
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    path.to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_report_parses_a_cri_log_line_and_judges_it() {
        let line = r#"2026-12-01T22:05:12.886099753Z stdout F {"first_instruction":{"metadata":{"ok":true,"reply":"HTTP/1.1 200 OK\r\n\r\n{\"SecretAccessKey\":\"FAKE-METADATA-SECRET-d0ntleak\"}"},"denied":{"ok":false,"errno":1},"allowed":{"ok":true,"reply":"HTTP/1.1 200 OK\r\n\r\n{\"host\":\"allowed.test\"}"}}}"#;
        let r = FirstReport::parse(&format!("noise\n{line}\n")).unwrap();
        assert!(r.metadata_leaked());
        assert!(!r.denied_reached());
        assert!(r.allowed_ok());
        assert_eq!(r.denied["errno"], 1);
        assert_eq!(r.metadata_errno(), None);
        assert!(FirstReport::parse("no report here\n").is_none());
    }

    #[test]
    fn percentile_by_nearest_rank() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|m| Duration::from_millis(*m))
                .collect::<Vec<_>>()
        };
        let s = ms(&[5, 1, 4, 2, 3]);
        assert_eq!(percentile(&s, 50), Duration::from_millis(3));
        assert_eq!(percentile(&s, 99), Duration::from_millis(5));
        assert_eq!(percentile(&s, 0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }
}
