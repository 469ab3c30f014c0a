//! Enforced from the container's first instruction (issue "first instruction", DESIGN §12),
//! in real runtimes: podman through the OCI hook (hooks.d), Docker through the runtime
//! wrapper (`--add-runtime`), and a gated parent under which an unadopted container has no
//! network at all.
//!
//! Every container's entrypoint first connects to the fake metadata server, then to a
//! denied host, then to an allowed one ([`RunSpec::first_instruction`]). Without the hook or
//! wrapper the first two reach their servers (the race is real); with them, the metadata
//! connect is EPERM, the denied host gets the deny contract (403) and the allowed one 200.
//!
//! Printed (`--nocapture`): adoption latency (hook start → enforced) per runtime.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use egress_tests::agent::{test_policy, Agent};
use egress_tests::bin_path;
use egress_tests::runtimes::docker::{Docker, DockerOpts};
use egress_tests::runtimes::podman::Podman;
use egress_tests::runtimes::{percentile, FirstReport, RunSpec, Runtime, Started};
use egress_tests::{require_root, threat, topology::Topology};

const REPORT_TIMEOUT: Duration = Duration::from_secs(30);
const PROFILE: &str = "egress-agent.io/profile";

/// One runtime at a time: on 2 shared cores, overlapping daemons distort everything.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The hooks.d file `xtask install` writes, pointed at the test binary and the test daemon.
fn install_hook(hooks_dir: &Path, control: &Path) {
    let hook = serde_json::json!({
        "version": "1.0.0",
        "hook": {
            "path": bin_path("egress-agent"),
            "args": ["egress-agent", "--control", control, "oci-hook"],
        },
        "when": {"annotations": {"^egress-agent\\.io/profile$": ".+"}},
        "stages": ["createRuntime"],
    });
    std::fs::write(hooks_dir.join("egress-agent.json"), hook.to_string()).unwrap();
}

/// A runtime wrapper for a daemon on a non-default socket: what an operator writes when the
/// control socket is not `/run/egress-agent/control.sock` (the installed `egress-agent-runc`
/// symlink covers the default one).
fn wrapper_script(dir: &Path, control: &Path, profile: &str) -> PathBuf {
    let script = dir.join(format!("egress-runc-{profile}"));
    egress_tests::runtimes::write_wrapper(&script, control, &format!("--profile '{profile}'"))
}

/// The denied host's answer is the agent's deny contract, not the server's page.
fn denied_by_agent(r: &FirstReport) -> bool {
    let reply = r.denied["reply"].as_str().unwrap_or("");
    reply.starts_with("HTTP/1.1 403") && reply.contains("host_not_allowed")
}

fn assert_enforced(kind: &str, r: &FirstReport) {
    let blocked = !r.metadata_leaked() && r.metadata_errno() == Some(libc::EPERM);
    threat(
        "F",
        &format!("{kind}: first instruction reaches the metadata server"),
        blocked,
    );
    assert!(blocked, "{kind}: {:?}", r.metadata);
    let blocked = !r.denied_reached() && denied_by_agent(r);
    threat(
        "F",
        &format!("{kind}: first instruction reaches a denied host"),
        blocked,
    );
    assert!(blocked, "{kind}: {:?}", r.denied);
    assert!(r.allowed_ok(), "{kind}: allowed request: {:?}", r.allowed);
}

fn assert_open(kind: &str, r: &FirstReport) {
    assert!(
        r.metadata_leaked(),
        "{kind} without enforcement: {:?}",
        r.metadata
    );
    assert!(
        r.denied_reached(),
        "{kind} without enforcement: {:?}",
        r.denied
    );
    assert!(
        r.allowed_ok(),
        "{kind} without enforcement: {:?}",
        r.allowed
    );
}

/// The `adopted … took_ms=N` lines of the daemon's log: how long each adoption took.
fn adoption_times(agent: &Agent) -> Vec<Duration> {
    agent
        .log_lines()
        .iter()
        .map(|l| strip_ansi(l))
        .filter(|l| l.contains("adopted"))
        .filter_map(|l| {
            let v = l.split("took_us=").nth(1)?;
            let n: u64 = v
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()?;
            Some(Duration::from_micros(n))
        })
        .collect()
}

/// The cgroup ids the daemon adopted (its `adopted … cgroup_id=N` lines).
fn adopted_ids(agent: &Agent) -> Vec<u64> {
    agent
        .log_lines()
        .iter()
        .map(|l| strip_ansi(l))
        .filter(|l| l.contains(" adopted "))
        .filter_map(|l| {
            let v = l.split("cgroup_id=").nth(1)?;
            v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        })
        .collect()
}

/// The log line without terminal colour codes (`ESC [ … m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn print_latency(kind: &str, times: &[Duration]) {
    if times.is_empty() {
        return;
    }
    eprintln!(
        "ADOPTION {kind}: hook → enforced p50 {:.1} ms, p99 {:.1} ms ({} containers)",
        percentile(times, 50).as_secs_f64() * 1e3,
        percentile(times, 99).as_secs_f64() * 1e3,
        times.len()
    );
}

fn run(rt: &dyn Runtime, spec: RunSpec) -> (Started, FirstReport) {
    let c = rt
        .start(&spec)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", rt.kind(), rt.diagnostics()));
    let r = rt.wait_report(&c, REPORT_TIMEOUT);
    (c, r)
}

#[test]
fn podman_hook_enforces_the_first_instruction() {
    require_root!();
    if !Podman::tools_present() {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("fi_podman");
    let _fake = topo.start_fakenet();
    let mut agent = Agent::daemon_control(&topo, &test_policy(&[]), &[]);
    let control = agent.control.clone().unwrap();
    let podman = Podman::new(&topo);
    install_hook(&podman.hooks_dir(), &control);

    // Without the annotation the hook does not run: the race is real.
    let (c, r) = run(&podman, RunSpec::first_instruction("plain"));
    assert_open("podman", &r);
    podman.remove(&c);

    for i in 0..3 {
        let spec =
            RunSpec::first_instruction(&format!("hooked-{i}")).annotation(PROFILE, "default");
        let (c, r) = run(&podman, spec);
        assert_enforced("podman", &r);
        podman.remove(&c);
        // runc under podman here can leave the container's cgroup behind, empty: the daemon
        // keeps serving (and pinning) a cgroup that exists, so it goes as a runtime's would.
        remove_cgroup(&c.cgroup);
    }
    print_latency("podman", &adoption_times(&agent));
    // Stopping the daemon before its watcher has seen the last container go would leave that
    // container's pins in place (a daemon keeps the pins of a cgroup that still exists), with
    // no daemon left to remove them once the cgroup is gone.
    let ids = adopted_ids(&agent);
    assert_eq!(ids.len(), 3, "{ids:?}");
    wait_attachments(&agent, 0);
    agent.stop();
    let left: Vec<u64> = ids.into_iter().filter(|id| pin_dir(*id).exists()).collect();
    assert!(left.is_empty(), "pins of exited containers left: {left:?}");
}

#[test]
fn podman_hook_refuses_to_start_without_a_daemon_or_with_an_unknown_profile() {
    require_root!();
    if !Podman::tools_present() {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("fi_refuse");
    let _fake = topo.start_fakenet();
    let mut agent = Agent::daemon_control(&topo, &test_policy(&[]), &[]);
    let control = agent.control.clone().unwrap();
    let podman = Podman::new(&topo);
    install_hook(&podman.hooks_dir(), &control);

    let spec = RunSpec::first_instruction("nope").annotation(PROFILE, "nope");
    let e = podman
        .start(&spec)
        .expect_err("an unknown profile must not start");
    assert!(e.to_string().contains("profile `nope`"), "{e}");
    assert!(
        egress_agent_pins_of(&podman).is_empty(),
        "a refused container left pins behind"
    );

    agent.stop();
    let spec = RunSpec::first_instruction("nodaemon").annotation(PROFILE, "default");
    let e = podman
        .start(&spec)
        .expect_err("no daemon: the container must not start");
    let refused = e.to_string().contains("no egress-agent daemon answers");
    threat(
        "F",
        "podman: annotated container starts while the daemon is down",
        refused,
    );
    assert!(refused, "{e}");
}

/// Pin directories of cgroups below the runtime's parent.
fn egress_agent_pins_of(rt: &dyn Runtime) -> Vec<PathBuf> {
    let parent = rt.cgroup_parent_path();
    let mut out = Vec::new();
    for d in walk(&parent) {
        if let Ok(id) = cgroup_id(&d) {
            let pin = pin_dir(id);
            if pin.exists() {
                out.push(pin);
            }
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            }
        }
    }
    out
}

fn cgroup_id(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(dir)?.ino())
}

/// The agent's pin directory of the cgroup with id `id`.
fn pin_dir(id: u64) -> PathBuf {
    egress_agent::bpf::pin_root()
        .expect("bpffs mounted")
        .join(id.to_string())
}

#[test]
fn docker_runtime_wrapper_enforces_the_first_instruction() {
    require_root!();
    if !Docker::tools_present() {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("fi_docker");
    let _fake = topo.start_fakenet();
    let agent = Agent::daemon_control(&topo, &test_policy(&[]), &[]);
    let control = agent.control.clone().unwrap();
    let wrapper = wrapper_script(topo.workdir(), &control, "default");
    let docker = Docker::start_with(
        &topo,
        DockerOpts {
            runtimes: vec![("egress".into(), wrapper)],
            ..Default::default()
        },
    );

    let (c, r) = run(&docker, RunSpec::first_instruction("plain"));
    assert_open("docker", &r);
    docker.remove(&c);

    for i in 0..3 {
        let spec = RunSpec::first_instruction(&format!("wrapped-{i}")).runtime("egress");
        let (c, r) = run(&docker, spec);
        assert_enforced("docker", &r);
        docker.remove(&c);
    }
    print_latency("docker", &adoption_times(&agent));
}

/// The daemon's attachments, from `status --json`.
fn attachments(agent: &Agent) -> Vec<serde_json::Value> {
    let out = agent.cli().args(["status", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["attachments"].as_array().cloned().unwrap_or_default()
}

/// Waits until the daemon serves exactly `n` attachments (its watcher detaches containers
/// that went away within a tick).
fn wait_attachments(agent: &Agent, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while attachments(agent).len() != n {
        let now = attachments(agent);
        let exist: Vec<String> = now
            .iter()
            .map(|a| {
                let p = Path::new(a["cgroup"].as_str().unwrap_or(""));
                let kids: Vec<String> = std::fs::read_dir(p)
                    .map(|d| {
                        d.flatten()
                            .filter(|e| e.path().is_dir())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                format!(
                    "{}: exists {} children {kids:?} events {:?}",
                    p.display(),
                    p.exists(),
                    std::fs::read_to_string(p.join("cgroup.events")).unwrap_or_default(),
                )
            })
            .collect();
        assert!(
            std::time::Instant::now() < deadline,
            "still {} attachments, want {n} (cgroup dirs exist: {exist:?}): {now:?}",
            now.len(),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `probe` in a running container (`podman exec`).
fn probe_in(podman: &Podman, c: &Started, args: &[&str]) -> serde_json::Value {
    let out = podman
        .cli()
        .arg("exec")
        .arg(&c.id)
        .arg("/bin/probe")
        .args(["--timeout-ms", "3000"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("probe in {}: {e}: {text:?} {out:?}", c.name))
}

fn metadata_probe() -> Vec<String> {
    let m = egress_tests::addrs::METADATA;
    vec!["tcp".into(), format!("{m}:80")]
}

fn allowed_get() -> Vec<String> {
    let w = egress_tests::addrs::WEB1;
    vec![
        "tcp".into(),
        format!("{w}:80"),
        "--send".into(),
        "GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\nConnection: close\\r\\n\\r\\n".into(),
        "--read".into(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Removes a gate left pinned by a test's daemon (gates outlive their daemon: fail closed).
struct GateGuard(PathBuf);

impl Drop for GateGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new(bin_path("egress-agent"))
            .args(["gate", "remove", "--cgroup"])
            .arg(&self.0)
            .output();
    }
}

#[test]
fn a_gated_parent_leaves_unadopted_containers_without_network() {
    require_root!();
    if !Podman::tools_present() {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("fi_gate");
    let fake = topo.start_fakenet();
    let podman = Podman::new(&topo);
    let parent = podman.cgroup_parent_path();
    let _gate = GateGuard(parent.clone());
    let config =
        format!("watch_interval_ms = 200\n[[gate]]\ncgroup = {parent:?}\nexempt = [\"infra\"]\n");
    let mut agent = Agent::daemon_with_config(&topo, &test_policy(&[]), &config, vec![]);
    install_hook(&podman.hooks_dir(), agent.control.as_ref().unwrap());

    // Adopted through the hook: enforced, as without a gate.
    let (a, r) = run(
        &podman,
        RunSpec::first_instruction("adopted").annotation(PROFILE, "default"),
    );
    assert_enforced("podman under a gate", &r);

    // Not adopted: nothing at all, from its first syscall.
    let before = fake
        .connections_to(egress_tests::addrs::METADATA.into())
        .len();
    let (b, r) = run(&podman, RunSpec::first_instruction("unadopted"));
    let none = [&r.metadata, &r.denied, &r.allowed]
        .iter()
        .all(|p| p["errno"].as_i64() == Some(libc::EPERM as i64));
    threat(
        "F",
        "gate: an unadopted container reaches the network",
        none,
    );
    assert!(none, "unadopted container: {r:?}");
    assert_eq!(
        fake.connections_to(egress_tests::addrs::METADATA.into())
            .len(),
        before,
        "the metadata server saw the unadopted container"
    );

    // Adopted later (by pid, through the daemon): it gains its network, enforced.
    let out = agent
        .cli()
        .args(["attach", "--pid", &b.pid.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let ok = probe_in(&podman, &b, &strs(&allowed_get()));
    assert!(
        ok["reply"]
            .as_str()
            .unwrap_or("")
            .starts_with("HTTP/1.1 200"),
        "{ok}"
    );
    let m = probe_in(&podman, &b, &strs(&metadata_probe()));
    assert_eq!(m["errno"], libc::EPERM, "{m}");

    // A cgroup created inside an adopted container stays enforced.
    let sub = a.cgroup.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let m = egress_tests::topology::run_probe_in(&topo, &sub, &strs(&metadata_probe()));
    let blocked = m["errno"] == libc::EPERM;
    threat(
        "F",
        "gate: a child cgroup of an adopted container leaves the enforcement",
        blocked,
    );
    assert!(blocked, "{m}");
    let ok = egress_tests::topology::run_probe_in(&topo, &sub, &strs(&allowed_get()));
    assert!(
        ok["reply"]
            .as_str()
            .unwrap_or("")
            .starts_with("HTTP/1.1 200"),
        "{ok}"
    );
    remove_cgroup(&sub);

    // An exempt cgroup (it appears after the daemon started) is left alone.
    let infra = parent.join("infra");
    std::fs::create_dir(&infra).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let reached = loop {
        let m = egress_tests::topology::run_probe_in(&topo, &infra, &strs(&allowed_get()));
        if m["reply"]
            .as_str()
            .unwrap_or("")
            .starts_with("HTTP/1.1 200")
        {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(reached, "the exempt cgroup never got its network");
    remove_cgroup(&infra);

    // The daemon down: a new container under the gate has no network; a restarted daemon
    // serves what it served and adopts the newcomer on request.
    agent.stop();
    let (c, r) = run(&podman, RunSpec::first_instruction("while-down"));
    assert_eq!(r.metadata_errno(), Some(libc::EPERM), "{r:?}");
    assert_eq!(r.allowed["errno"], libc::EPERM, "{r:?}");
    let agent = Agent::daemon_with_config(&topo, &test_policy(&[]), &config, vec![]);
    assert_eq!(
        attachments(&agent).len(),
        2,
        "restored: {:?}",
        attachments(&agent)
    );
    let ok = probe_in(&podman, &a, &strs(&allowed_get()));
    assert!(
        ok["reply"]
            .as_str()
            .unwrap_or("")
            .starts_with("HTTP/1.1 200"),
        "restored a: {ok}"
    );
    let out = agent
        .cli()
        .args(["attach", "--pid", &c.pid.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let ok = probe_in(&podman, &c, &strs(&allowed_get()));
    assert!(
        ok["reply"]
            .as_str()
            .unwrap_or("")
            .starts_with("HTTP/1.1 200"),
        "{ok}"
    );

    // podman rm leaves some containers' (empty) cgroups behind here; removing them is what
    // the daemon watches for.
    for x in [&a, &b, &c] {
        podman.remove(x);
        remove_cgroup(&x.cgroup);
    }
    wait_attachments(&agent, 0);
}

/// rmdir of a cgroup whose last process just exited: the kernel may still count it for a
/// moment (EBUSY).
fn remove_cgroup(dir: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while let Err(e) = std::fs::remove_dir(dir) {
        if e.kind() == std::io::ErrorKind::NotFound {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rmdir {}: {e}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `bpftool link detach` of every link pinned under `links`: what another root process can
/// do to an attachment.
fn detach_all_from_outside(links: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(links).unwrap().flatten() {
        let id = egress_agent::sys::pinned_cgroup_link(&e.path())
            .unwrap_or_else(|err| panic!("{}: {err}", e.path().display()))
            .link_id;
        let out = std::process::Command::new("bpftool")
            .args(["link", "detach", "id", &id.to_string()])
            .output()
            .expect("bpftool");
        assert!(out.status.success(), "bpftool link detach id {id}: {out:?}");
        n += 1;
    }
    n
}

/// Sets the flag when dropped, also while unwinding.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn metric(agent: &Agent, name: &str) -> u64 {
    let out = agent.cli().arg("metrics").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn links_detached_from_outside_are_repaired_and_nothing_gets_out() {
    require_root!();
    if !Podman::tools_present() {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("fi_tamper");
    let fake = topo.start_fakenet();
    let podman = Podman::new(&topo);
    let parent = podman.cgroup_parent_path();
    let _gate = GateGuard(parent.clone());
    let config = format!("watch_interval_ms = 200\n[[gate]]\ncgroup = {parent:?}\n");
    let agent = Agent::daemon_with_config(&topo, &test_policy(&[]), &config, vec![]);
    install_hook(&podman.hooks_dir(), agent.control.as_ref().unwrap());
    let (a, r) = run(
        &podman,
        RunSpec::first_instruction("tampered").annotation(PROFILE, "default"),
    );
    assert_enforced("podman", &r);
    let id = cgroup_id(&a.cgroup).unwrap();
    let links = pin_dir(id).join("links");

    // Under traffic: a loop of metadata connects from the container while every link of its
    // attachment is detached from outside.
    let seen_before = fake
        .connections_to(egress_tests::addrs::METADATA.into())
        .len();
    // Every program of the attachment has its pinned link (one per hook).
    let pinned = std::fs::read_dir(&links).unwrap().count();
    assert!(pinned >= 12, "{pinned} links pinned");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let outcomes = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let mut v = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                v.push(probe_in(&podman, &a, &strs(&metadata_probe())));
            }
            v
        });
        // The traffic loop stops however this ends (a failed assertion would otherwise leave
        // the scope waiting for it forever).
        let _stop = StopOnDrop(&stop);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(detach_all_from_outside(&links), pinned);
        let noticed = agent.wait_log("links detached by someone else", Duration::from_secs(3));
        let repaired = agent.wait_log("links re-attached", Duration::from_secs(3));
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(noticed.is_some(), "the daemon did not notice the detach");
        assert!(repaired.is_some(), "the daemon did not re-attach");
        h.join().unwrap()
    });
    let leaked = fake
        .connections_to(egress_tests::addrs::METADATA.into())
        .len()
        - seen_before;
    threat(
        "F",
        "links detached from outside under traffic",
        leaked == 0,
    );
    assert_eq!(leaked, 0, "metadata connections got out: {outcomes:?}");
    assert!(
        outcomes.iter().all(|o| o["errno"] == libc::EPERM),
        "{outcomes:?}"
    );
    // Resumed enforced: the allowed request works, the metadata is refused, it was counted.
    let ok = probe_in(&podman, &a, &strs(&allowed_get()));
    assert!(
        ok["reply"]
            .as_str()
            .unwrap_or("")
            .starts_with("HTTP/1.1 200"),
        "{ok}"
    );
    assert!(metric(&agent, "egress_tamper_repairs_total") >= 1);
    assert_eq!(std::fs::read_dir(&links).unwrap().count(), pinned);
    podman.remove(&a);
    remove_cgroup(&a.cgroup);
    wait_attachments(&agent, 0);
}

/// A runc bundle running `/bin/true` from a busybox rootfs, in new namespaces (a network
/// namespace of its own each time) and the cgroup `cgroups_path` (cgroupfs syntax).
fn runc_bundle(dir: &Path, rootfs: &Path, cgroups_path: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let out = std::process::Command::new(egress_tests::runtimes::podman::RUNC)
        .arg("spec")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "runc spec: {out:?}");
    let path = dir.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/true"]);
    spec["root"]["path"] = rootfs.display().to_string().into();
    spec["root"]["readonly"] = true.into();
    spec["linux"]["cgroupsPath"] = cgroups_path.into();
    std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
}

/// Open descriptors and resident memory of a process.
fn fds_and_rss(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0);
    (fds, rss)
}

/// Containers started and removed through the runtime wrapper and the hook (runc directly:
/// the cost of a container is then little more than the adoption itself).
const CHURN: usize = 1000;
const CHURN_WORKERS: usize = 4;

#[test]
fn a_thousand_containers_through_the_hook_leave_nothing_behind() {
    require_root!();
    if !egress_tests::runtimes::tools_present(
        "runc churn",
        &[
            egress_tests::runtimes::podman::RUNC,
            egress_tests::runtimes::image::BUSYBOX,
        ],
    ) {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("fi_churn");
    let agent = Agent::daemon_with_config(
        &topo,
        &test_policy(&[]),
        "watch_interval_ms = 200\n",
        vec![],
    );
    let control = agent.control.clone().unwrap();
    let wrapper = wrapper_script(topo.workdir(), &control, "default");
    let rootfs_tar = egress_tests::runtimes::image::ImageFiles::busybox()
        .write_rootfs_tar(&topo.workdir().join("busybox.tar"));
    let rootfs = topo.workdir().join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let out = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&rootfs_tar)
        .arg("-C")
        .arg(&rootfs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let cg2 = egress_tests::cgroup2_root().unwrap();
    let parent = cg2.join(format!("egress-churn-{}", topo.id()));
    std::fs::create_dir_all(&parent).unwrap();
    let state = topo.workdir().join("runc-state");

    // Warm-up (the first attach loads more than the steady state), then the idle figures.
    let once = |w: usize, n: usize| {
        let bundle = topo.workdir().join(format!("bundle-{w}"));
        if !bundle.join("config.json").exists() {
            let rel = parent.strip_prefix(&cg2).unwrap().join(format!("w{w}"));
            runc_bundle(&bundle, &rootfs, &format!("/{}", rel.display()));
        }
        let out = std::process::Command::new(&wrapper)
            .arg("--root")
            .arg(&state)
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(format!("churn-{w}-{n}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "runc run {w}/{n}: {out:?}");
    };
    once(0, 0);
    let settled = || {
        wait_attachments(&agent, 0);
        // The last `status` call's control connection closes a moment after the answer.
        std::thread::sleep(Duration::from_millis(500));
        fds_and_rss(agent.pid())
    };
    let (fds0, rss0) = settled();
    let t = std::time::Instant::now();
    let half = |first: usize| {
        std::thread::scope(|s| {
            for w in 0..CHURN_WORKERS {
                let once = &once;
                s.spawn(move || {
                    for n in 0..CHURN / CHURN_WORKERS / 2 {
                        once(w, first + n);
                    }
                });
            }
        })
    };
    half(1);
    let (_, rss_half) = settled();
    eprintln!("CHURN half: RSS {rss0} -> {rss_half} KiB");
    half(1 + CHURN / CHURN_WORKERS / 2);
    let took = t.elapsed();
    let (fds1, rss1) = settled();
    let times = adoption_times(&agent);
    // What the churn's cgroups left: their pins, lock files and saved records.
    let ids = adopted_ids(&agent);
    let pins_left = ids.iter().filter(|id| pin_dir(**id).exists()).count();
    let locks_left = ids
        .iter()
        .filter(|id| Path::new(&format!("/run/egress-agent/locks/{id}.lock")).exists())
        .count();
    let records_left = std::fs::read_dir(topo.workdir().join("attachments"))
        .map(|d| d.count())
        .unwrap_or(0);
    eprintln!(
        "CHURN {CHURN} containers in {:.0} s: daemon fds {fds0} -> {fds1}, RSS {rss0} -> {rss_half} (half) -> {rss1} KiB; left: {pins_left} pin dirs, {locks_left} lock files, {records_left} records",
        took.as_secs_f64()
    );
    print_latency("runc (wrapper + hook)", &times);
    assert!(
        times.len() > CHURN,
        "every container was adopted: {}",
        times.len()
    );
    assert_eq!(fds1, fds0, "descriptors leaked");
    assert_eq!((pins_left, locks_left, records_left), (0, 0, 0));
    // The first containers may grow the allocator's arenas; the second half must not.
    assert!(
        rss1 < rss_half + 8 * 1024,
        "RSS grew by {} KiB over the second {} containers",
        rss1.saturating_sub(rss_half),
        CHURN / 2
    );
    // cgroups go with rmdir, children first (remove_dir_all would try their files).
    for w in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
        if w.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir(w.path());
        }
    }
    let _ = std::fs::remove_dir(&parent);
}

/// A wrapper that also asks for the agent's CA in the container's system store.
fn trusting_wrapper_script(dir: &Path, control: &Path) -> PathBuf {
    let script = dir.join("egress-runc-trust");
    egress_tests::runtimes::write_wrapper(&script, control, "--profile default --trust-ca")
}

#[test]
fn the_runtime_wrapper_puts_the_ca_in_the_containers_system_store() {
    require_root!();
    if !Docker::tools_present() {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("fi_trust");
    let fake = topo.start_fakenet();
    let state = topo.workdir().join("state");
    let policy = format!(
        "version = \"trust-1\"\nresolver = \"203.0.113.53:53\"\n\
         allow_ranges = [\"198.51.100.0/24\", \"203.0.113.0/24\", \"2001:db8:100::/48\"]\n\
         upstream_ca = {:?}\n[profile.default]\nallow = []\ninspect = [\"allowed.test\"]\n",
        fake.ca_pem
    );
    let state_arg = state.display().to_string();
    let agent = Agent::daemon_control(&topo, &policy, &["--state-dir", &state_arg]);
    let control = agent.control.clone().unwrap();
    let docker = Docker::start_with(
        &topo,
        DockerOpts {
            runtimes: vec![
                (
                    "egress".into(),
                    wrapper_script(topo.workdir(), &control, "default"),
                ),
                (
                    "egress-trust".into(),
                    trusting_wrapper_script(topo.workdir(), &control),
                ),
            ],
            ..Default::default()
        },
    );
    let https = |name: &str, ip: std::net::Ipv4Addr| -> Vec<String> {
        [
            "/bin/probe",
            "--timeout-ms",
            "5000",
            "https",
            &format!("{ip}:443"),
            "--name",
            name,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let script = format!(
        "A=$({}); D=$({}); echo \"{{\\\"first_instruction\\\":{{\\\"metadata\\\":{{}},\\\"allowed\\\":$A,\\\"denied\\\":$D}}}}\"; exec /bin/sleep 3600",
        https("allowed.test", egress_tests::addrs::WEB1).join(" "),
        https("other.test", egress_tests::addrs::WEB2).join(" "),
    );
    let spec = |name: &str, runtime: &str| {
        RunSpec::first_instruction(name)
            .runtime(runtime)
            .command(&["/bin/sh", "-c", &script])
    };

    // Without the trust store: the inspected connection is refused by the client itself.
    let (c, r) = run(&docker, spec("plain", "egress"));
    assert!(
        !r.allowed["ok"].as_bool().unwrap_or(false),
        "{:?}",
        r.allowed
    );
    docker.remove(&c);

    // With it: the client verifies the agent's certificate through its system store, and a
    // denied name is explained inside TLS (a minted certificate, then the 403 with its code).
    let (c, r) = run(&docker, spec("trusting", "egress-trust"));
    let reply = r.allowed["reply"].as_str().unwrap_or("");
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains("allowed.test"),
        "{:?}",
        r.allowed
    );
    let denied = r.denied["reply"].as_str().unwrap_or("");
    assert!(
        denied.starts_with("HTTP/1.1 403") && denied.contains("host_not_allowed"),
        "{:?}",
        r.denied
    );
    assert!(
        !fake.was_queried("other.test"),
        "the denied name reached the resolver"
    );
    docker.remove(&c);
    wait_attachments(&agent, 0);
}
