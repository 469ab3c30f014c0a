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
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec '{}' --control '{}' runtime --profile '{profile}' -- \"$@\"\n",
            bin_path("egress-agent").display(),
            control.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
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
    let agent = Agent::daemon_control(&topo, &test_policy(&[]), &[]);
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
    }
    print_latency("podman", &adoption_times(&agent));
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
            let pin = bpffs().join("egress-agent").join(id.to_string());
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

fn bpffs() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            if right.split_whitespace().next()? != "bpf" {
                return None;
            }
            Some(PathBuf::from(left.split_whitespace().nth(4)?))
        })
        .expect("bpffs mounted")
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
