//! The cgroup gate (issue 12, items 1 and 5; THREATS F "running first", "getting out from
//! under the enforcement"): under a gated parent, a cgroup the agent has not adopted has no
//! network from its first syscall, an adopted one is served by its own agent, and a detach of an
//! adopted container's links fails closed, is noticed by the link check and repaired.
//!
//! The library is used directly: the gate (`egress_agent::bpf::gate::Gate`) and the adopted
//! container's enforcement (`egress_agent::agent::Running`, run in-process on a tokio runtime whose
//! threads live in the topology's agent namespace, so its upstream dials reach only the fake
//! internet). The gated parent is the topology's container cgroup; the "containers" are child
//! cgroups of it, in the container's network namespace. Every attack is run once without the gate
//! (it must work) and once with it.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use egress_agent::{
    addr::Reason,
    agent::Running,
    attachment::Shared,
    audit::Audit,
    bpf::{
        gate::{self, Gate},
        maps::EgressEvent,
    },
    cgroup::Cgroup,
    netns::Netns,
};
use egress_tests::{
    addrs::*,
    agent::test_policy,
    bin_path, require_root, threat,
    topology::{run_probe_in, Topology},
};
use serde_json::Value;

const EPERM: i64 = 1;

fn target(ip: impl Into<std::net::IpAddr>, port: u16) -> String {
    SocketAddr::new(ip.into(), port).to_string()
}

fn eperm(v: &Value) -> bool {
    v["errno"].as_i64() == Some(EPERM)
}

/// An attack: (name, probe arguments).
type Attack = (&'static str, Vec<String>);

/// The attacks an unadopted container tries first.
fn first_syscalls() -> Vec<Attack> {
    vec![
        (
            "TCP connect to the internet",
            vec![
                "tcp".into(),
                target(WEB1, TCP_ECHO_PORT),
                "--send".into(),
                "hi".into(),
                "--read".into(),
            ],
        ),
        (
            "TCP connect to the metadata server",
            vec!["tcp".into(), target(METADATA, 80)],
        ),
        (
            "UDP sendto port 53 (DNS)",
            vec!["dns".into(), DNS.to_string(), "allowed.test".into()],
        ),
        (
            "connected UDP (DNS)",
            vec![
                "dns".into(),
                DNS.to_string(),
                "allowed.test".into(),
                "--connected".into(),
            ],
        ),
        (
            "UDP sendto another port",
            vec![
                "udp-sendto".into(),
                target(WEB1, UDP_ECHO_PORTS[0]),
                "--expect-reply".into(),
            ],
        ),
        (
            "IPv6 TCP connect",
            vec![
                "tcp".into(),
                target(WEB1_V6, TCP_ECHO_PORT),
                "--send".into(),
                "hi".into(),
                "--read".into(),
            ],
        ),
    ]
}

/// Operations on a socket created in another cgroup (under the gate) before the task moved in.
fn moved_ops(to: &Path) -> Vec<Attack> {
    let to = to.display().to_string();
    let moved = |t: String, op: &str| {
        vec![
            "gate".into(),
            "moved".into(),
            t,
            "--to".into(),
            to.clone(),
            "--op".into(),
            op.into(),
        ]
    };
    vec![
        (
            "socket made elsewhere, then TCP connect",
            moved(target(WEB1, TCP_ECHO_PORT), "tcp"),
        ),
        (
            "socket made elsewhere, then UDP sendto",
            moved(target(WEB1, UDP_ECHO_PORTS[0]), "udp-sendto"),
        ),
        (
            "socket made elsewhere, then connected UDP",
            moved(target(WEB1, UDP_ECHO_PORTS[0]), "udp-connect-send"),
        ),
    ]
}

fn probe(topo: &Topology, cg: &Path, args: &[String]) -> Value {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    run_probe_in(topo, cg, &a)
}

fn mkdir_cgroup(path: &Path) -> Cgroup {
    std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    Cgroup::open(path).unwrap()
}

/// An in-process agent for one child cgroup: tokio threads in ag-*, listeners in ctr-*.
struct InProcessAgent {
    running: Option<Running>,
    rt: tokio::runtime::Runtime,
}

impl InProcessAgent {
    fn start(topo: &Topology, cg: &Cgroup) -> InProcessAgent {
        let policy = topo.workdir().join("policy.toml");
        std::fs::write(&policy, test_policy(&[])).unwrap();
        let ag = std::fs::File::open(topo.ag_netns_path()).unwrap();
        // setns only moves the calling thread; the runtime's threads inherit it from the thread that
        // builds the runtime (workers) or from the workers (blocking pool).
        let rt = std::thread::spawn(move || {
            egress_tests::sys::setns_net(std::os::fd::AsFd::as_fd(&ag)).expect("setns ag-*");
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
        })
        .join()
        .unwrap();
        let shared = {
            let _g = rt.enter();
            let policy = egress_agent::policy::Policy::load(&policy).unwrap();
            let audit =
                Audit::open(Some(&topo.workdir().join(format!("audit-{}.jsonl", cg.id)))).unwrap();
            Shared::new(policy, audit).unwrap()
        };
        let netns = Netns::open(&topo.ctr_netns_path()).unwrap();
        let running = {
            let _g = rt.enter();
            Running::start(Arc::clone(&shared), cg.clone(), netns, "default".into()).unwrap()
        };
        InProcessAgent {
            running: Some(running),
            rt,
        }
    }

    fn running(&mut self) -> &mut Running {
        self.running.as_mut().unwrap()
    }

    /// What a crashed and restarted agent does: stop serving (pins stay), start again,
    /// adopting the pins.
    fn restart(&mut self, topo: &Topology, cg: &Cgroup) {
        {
            let _g = self.rt.enter();
            drop(self.running.take());
        }
        let fresh = InProcessAgent::start(topo, cg);
        *self = fresh;
    }
}

impl Drop for InProcessAgent {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            let _g = self.rt.enter();
            let _ = r.detach();
        }
    }
}

/// The gate, removed (pins and all) when dropped, also when the test panics.
struct GateGuard {
    gate: Option<Gate>,
    parent: Cgroup,
}

impl GateGuard {
    fn install(parent: &Cgroup) -> GateGuard {
        GateGuard {
            gate: Some(Gate::install(parent).expect("install the gate")),
            parent: parent.clone(),
        }
    }
    fn gate(&mut self) -> &mut Gate {
        self.gate.as_mut().unwrap()
    }
    fn remove(mut self) {
        drop(self.gate.take());
        Gate::remove(&self.parent).expect("remove the gate");
    }
}

impl Drop for GateGuard {
    fn drop(&mut self) {
        // Also when the gate was taken out (a re-install that panicked): the pins may exist.
        drop(self.gate.take());
        let _ = Gate::remove(&self.parent);
    }
}

fn events_with(events: &[EgressEvent], reason: Reason, cgroup_id: u64) -> usize {
    events
        .iter()
        .filter(|e| e.reason as u32 == reason.as_u32() && e.cgroup_id == cgroup_id)
        .count()
}

/// An HTTP request to an allowed name, through whatever the container's connect does.
fn allowed_http(topo: &Topology, cg: &Path) -> Value {
    run_probe_in(
        topo,
        cg,
        &[
            "tcp",
            &target(WEB1, 80),
            "--send",
            "GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\nConnection: close\\r\\n\\r\\n",
            "--read",
        ],
    )
}

fn http_ok(v: &Value) -> bool {
    v["ok"] == true
        && v["reply"]
            .as_str()
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
}

fn dns_ok(v: &Value) -> bool {
    v["ok"] == true && v["rcode_num"] == 0 && v["answers"].to_string().contains("198.51.100.10")
}

/// `probe gate wait-send` in `cg`: a connected UDP socket made now, its datagram sent later.
struct WaitingSender {
    child: std::process::Child,
    stdout: BufReader<std::process::ChildStdout>,
}

impl WaitingSender {
    fn start(topo: &Topology, cg: &Path, dst: &str) -> WaitingSender {
        let mut child = topo
            .ctr_command_in(cg, bin_path("probe"))
            .args(["--timeout-ms", "2000", "gate", "wait-send", dst])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn probe");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "READY", "probe gate wait-send: {line}");
        WaitingSender { child, stdout }
    }
    fn send(mut self) -> Value {
        writeln!(self.child.stdin.take().unwrap()).unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let _ = self.child.wait();
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("probe printed {line:?}"))
    }
}

#[test]
fn an_unadopted_cgroup_has_no_network_from_its_first_syscall_until_adopted() {
    if !require_root() {
        return;
    }
    let topo = Topology::new("gate_adopt");
    let _net = topo.start_fakenet();
    let parent = Cgroup::open(topo.ctr_cgroup_path()).unwrap();
    let a = mkdir_cgroup(&parent.path.join("a")); // adopted later
    let b = mkdir_cgroup(&parent.path.join("b")); // never adopted
    let x = mkdir_cgroup(&parent.path.join("x")); // exempt

    // Without the gate every attack works: the set-up is sound.
    for (name, args) in first_syscalls().iter().chain(moved_ops(&b.path).iter()) {
        let from = if args[0] == "gate" { &x.path } else { &b.path };
        let v = probe(&topo, from, args);
        let ok = v["ok"] == true && (args[0] != "dns" || dns_ok(&v));
        assert!(ok, "{name} without the gate must work: {v}");
    }
    let early = WaitingSender::start(&topo, &b.path, &target(WEB1, UDP_ECHO_PORTS[0]));
    let v = early.send();
    assert_eq!(
        v["ok"], true,
        "a datagram on an existing socket without the gate: {v}"
    );
    // The socket for the with-gate run exists before the gate does.
    let early = WaitingSender::start(&topo, &b.path, &target(WEB1, UDP_ECHO_PORTS[0]));

    let mut guard = GateGuard::install(&parent);
    assert!(
        !guard.gate().adopted,
        "a fresh gate attaches, it adopts nothing"
    );
    guard.gate().exempt(x.id).unwrap();
    let mut events = guard.gate().take_events().unwrap();

    for (name, args) in first_syscalls() {
        let v = probe(&topo, &b.path, &args);
        // socket() itself is refused: the first network syscall fails.
        let blocked = eperm(&v) && v["stage"] == "socket";
        threat(
            "F",
            &format!("unadopted container under a gate: {name}"),
            blocked,
        );
        assert!(blocked, "{name} from an unadopted cgroup: {v}");
    }
    for (name, args) in moved_ops(&b.path) {
        let v = probe(&topo, &x.path, &args);
        let blocked = eperm(&v) && v["stage"] != "socket" && v["stage"] != "move";
        threat(
            "F",
            &format!("unadopted container under a gate: {name}"),
            blocked,
        );
        assert!(blocked, "{name} into an unadopted cgroup: {v}");
    }
    let v = early.send();
    let blocked = v["ok"] == false;
    threat(
        "F",
        "unadopted container under a gate: socket made before the gate",
        blocked,
    );
    assert!(
        blocked,
        "a datagram on a socket that predates the gate left: {v}"
    );

    let evs = gate::drain_events(&mut events);
    let n = events_with(&evs, Reason::NotAdopted, b.id);
    assert!(
        n >= first_syscalls().len() + moved_ops(&b.path).len(),
        "not_adopted events with cgroup id {} expected, got {n} in {evs:?}",
        b.id
    );
    let skb = evs.iter().any(|e| {
        e.reason as u32 == Reason::NotAdopted.as_u32()
            && e.hook == egress_agent::bpf::maps::Hook::SkbEgress as u8
            && e.cgroup_id == b.id
    });
    assert!(
        skb,
        "the dropped datagram is reported by the egress hook: {evs:?}"
    );
    let counters = guard.gate().counters().unwrap();
    assert!(
        counters
            .iter()
            .any(|(_, r, n)| *r == Reason::NotAdopted.as_u32() && *n > 0),
        "{counters:?}"
    );

    // Exempt: the gate leaves it alone (its own, unenforced, network).
    let v = probe(&topo, &x.path, &first_syscalls()[0].1);
    assert_eq!(v["ok"], true, "exempt cgroup: {v}");
    assert_eq!(v["reply"], "hi", "{v}");

    // Adopted: the container's own enforcement serves it; the gate lets its redirects through.
    let mut agent = InProcessAgent::start(&topo, &a);
    let cfg = agent.running().config;
    guard.gate().adopt(a.id, &cfg).unwrap();
    let v = probe(&topo, &a.path, &first_syscalls()[2].1);
    assert!(dns_ok(&v), "DNS from the adopted container: {v}");
    let v = probe(&topo, &a.path, &first_syscalls()[3].1);
    assert!(
        dns_ok(&v),
        "connected-UDP DNS from the adopted container: {v}"
    );
    let v = allowed_http(&topo, &a.path);
    assert!(http_ok(&v), "allowed HTTP from the adopted container: {v}");
    let v = probe(&topo, &a.path, &first_syscalls()[1].1);
    assert!(eperm(&v), "metadata from the adopted container: {v}");
    // Still nothing for b.
    let v = probe(&topo, &b.path, &first_syscalls()[0].1);
    assert!(eperm(&v), "b after a's adoption: {v}");

    // A child cgroup made inside the adopted container is covered by the container's entry.
    let g = mkdir_cgroup(&a.path.join("grandchild"));
    let v = allowed_http(&topo, &g.path);
    let served = http_ok(&v);
    let v = probe(&topo, &g.path, &first_syscalls()[1].1);
    let blocked = eperm(&v);
    threat(
        "F",
        "child cgroup inside an adopted container: metadata",
        blocked,
    );
    assert!(
        served,
        "allowed HTTP from a grandchild of the adopted container"
    );
    assert!(
        blocked,
        "metadata from a grandchild of the adopted container: {v}"
    );
    let v = probe(&topo, &g.path, &first_syscalls()[0].1);
    let blocked = v["reply"] != "hi"; // the agent resets opaque TCP to a name it never resolved
    threat(
        "F",
        "child cgroup inside an adopted container: opaque TCP",
        blocked,
    );
    assert!(blocked, "opaque TCP from a grandchild: {v}");

    // What the container's own programs refused (metadata) the gate does not report again.
    let evs = gate::drain_events(&mut events);
    assert_eq!(
        events_with(&evs, Reason::NotEnforced, a.id) + events_with(&evs, Reason::NotEnforced, g.id),
        0,
        "the gate reported a refusal of the container's own programs: {evs:?}"
    );

    let entries = guard.gate().entries().unwrap();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(
        entries.iter().any(|(id, e)| *id == a.id && e.is_adopted()),
        "{entries:?}"
    );
    assert!(
        entries.iter().any(|(id, e)| *id == x.id && e.is_exempt()),
        "{entries:?}"
    );

    // Released: a has no network again.
    assert!(guard.gate().release(a.id).unwrap());
    assert!(!guard.gate().release(a.id).unwrap());
    let v = allowed_http(&topo, &a.path);
    assert!(eperm(&v), "allowed HTTP after the release: {v}");

    // A restarted agent adopts the pins and the entries with them.
    drop(guard.gate.take());
    let again = Gate::install(&parent).unwrap();
    assert!(again.adopted, "the second install adopts the pinned links");
    assert_eq!(
        again.entry(x.id).unwrap().map(|e| e.is_exempt()),
        Some(true)
    );
    assert!(again.missing_links().unwrap().is_empty());
    guard.gate = Some(again);

    drop(agent);
    guard.remove();
    assert!(
        !gate::gate_dir(&parent).unwrap().exists(),
        "the gate's pins are gone"
    );
}

#[test]
fn the_gate_refuses_the_root_cgroup_and_the_agents_own() {
    if !require_root() {
        return;
    }
    let root = Cgroup::open(&egress_tests::cgroup2_root().unwrap()).unwrap();
    let err = Gate::install(&root)
        .err()
        .expect("gating the root cgroup must be refused");
    assert!(err.to_string().contains("root cgroup"), "{err}");
    assert!(!gate::gate_dir(&root).unwrap().exists());
    // Where the test itself runs in a cgroup of its own, gating it (or a parent) is refused too.
    let own = Cgroup::of_pid(std::process::id()).unwrap();
    if own != root {
        let err = Gate::install(&own)
            .err()
            .expect("gating the agent's own cgroup must be refused");
        assert!(err.to_string().contains("holds egress-agent"), "{err}");
        assert!(!gate::gate_dir(&own).unwrap().exists());
    }
}

/// `bpftool link detach` of the link pinned at `pin`.
fn detach_from_outside(pin: &Path) {
    let id = egress_agent::sys::pinned_cgroup_link(pin)
        .unwrap_or_else(|e| panic!("{}: {e}", pin.display()))
        .link_id;
    let out = std::process::Command::new("bpftool")
        .args(["link", "detach", "id", &id.to_string()])
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "bpftool link detach id {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn links_dir(running: &Running) -> PathBuf {
    running.enforcement.pin_dir.join("links")
}

/// What a container can do once every one of its links is gone (each works without the gate).
fn attacks_without_programs() -> Vec<Attack> {
    vec![
        (
            "TCP to the metadata server",
            vec!["tcp".into(), target(METADATA, 80)],
        ),
        (
            "UDP sendto another port",
            vec![
                "udp-sendto".into(),
                target(WEB1, UDP_ECHO_PORTS[0]),
                "--expect-reply".into(),
            ],
        ),
        (
            "connected UDP to another port",
            vec![
                "udp-connect-send".into(),
                target(WEB1, UDP_ECHO_PORTS[0]),
                "--expect-reply".into(),
            ],
        ),
        (
            "DNS to an outside resolver, unredirected",
            vec!["dns".into(), DNS.to_string(), "allowed.test".into()],
        ),
        (
            "ICMP ping socket",
            vec!["ping-socket".into(), WEB1.to_string()],
        ),
    ]
}

/// Per-run cost of one program between two `program_stats` snapshots: (ns per run, runs).
fn per_run(
    before: &[egress_agent::bpf::ProgramStats],
    after: &[egress_agent::bpf::ProgramStats],
    name: &str,
) -> (u64, u64) {
    let b = before.iter().find(|s| s.name == name).unwrap();
    let a = after.iter().find(|s| s.name == name).unwrap();
    let runs = a.run_cnt - b.run_cnt;
    ((a.run_time_ns - b.run_time_ns) / runs.max(1), runs)
}

#[test]
fn a_detached_link_fails_closed_under_the_gate_is_noticed_and_repaired() {
    if !require_root() {
        return;
    }
    let topo = Topology::new("gate_tamper");
    let _net = topo.start_fakenet();
    let parent = Cgroup::open(topo.ctr_cgroup_path()).unwrap();
    let a = mkdir_cgroup(&parent.path.join("a"));
    let mut agent = InProcessAgent::start(&topo, &a);
    let metadata = vec!["tcp".to_string(), target(METADATA, 80)];
    let dns = vec!["dns".to_string(), DNS.to_string(), "allowed.test".into()];
    let links = links_dir(agent.running());
    assert!(eperm(&probe(&topo, &a.path, &metadata)));
    assert!(agent
        .running()
        .enforcement
        .missing_links()
        .unwrap()
        .is_empty());

    // The tamper check's cost, with every link in place.
    let n = 2000;
    let t0 = Instant::now();
    for _ in 0..n {
        assert!(agent
            .running()
            .enforcement
            .missing_links()
            .unwrap()
            .is_empty());
    }
    eprintln!(
        "tamper check: {:?} per check of {} links",
        t0.elapsed() / n,
        egress_agent::bpf::PROGRAMS.len()
    );

    // Detached from outside: connect4 alone is still caught by the container's own egress
    // backstop, so the first attack detaches both; the second, every link at once. Each runs
    // without the gate (the way out opens: the set-up is sound), then under it.
    let scenarios: [(&str, Vec<&'static str>, Vec<Attack>); 2] = [
        (
            "connect4 + egress",
            vec!["egress_connect4", "egress_skb"],
            vec![("TCP to the metadata server", metadata.clone())],
        ),
        (
            "every link",
            egress_agent::bpf::PROGRAMS.to_vec(),
            attacks_without_programs(),
        ),
    ];
    let mut guard: Option<GateGuard> = None;
    let mut events = None;
    for gated in [false, true] {
        if gated {
            let mut g = GateGuard::install(&parent);
            events = Some(g.gate().take_events().unwrap());
            let cfg = agent.running().config;
            g.gate().adopt(a.id, &cfg).unwrap();
            assert!(
                http_ok(&allowed_http(&topo, &a.path)),
                "served under the gate"
            );
            assert!(dns_ok(&probe(&topo, &a.path, &dns)), "DNS under the gate");

            // The cost of a gated connect, from the kernel's own statistics.
            let _stats = egress_agent::bpf::enable_run_time_stats().unwrap();
            let before_gate = g.gate().program_stats().unwrap();
            let before_own = agent.running().enforcement.program_stats().unwrap();
            let v = run_probe_in(
                &topo,
                &a.path,
                &["connect-loop", &target(WEB1, 80), "--count", "500"],
            );
            assert_eq!(v["ok"], true, "{v}");
            let (gate_ns, gate_runs) = per_run(
                &before_gate,
                &g.gate().program_stats().unwrap(),
                "gate_connect4",
            );
            let (own_ns, own_runs) = per_run(
                &before_own,
                &agent.running().enforcement.program_stats().unwrap(),
                "egress_connect4",
            );
            eprintln!(
                "connect4 run time: gate {gate_ns} ns/run ({gate_runs} runs), container's own {own_ns} ns/run ({own_runs} runs); probe connect median {} us",
                v["median_us"]
            );
            assert!(
                gate_runs >= 500 && own_runs >= 500,
                "{gate_runs} {own_runs}"
            );
            guard = Some(g);
        }
        for (label, detached, attacks) in &scenarios {
            for l in detached {
                detach_from_outside(&links.join(l));
            }
            for (what, args) in attacks {
                let v = probe(&topo, &a.path, args);
                if gated {
                    let blocked = eperm(&v);
                    threat(
                        "F",
                        &format!("{label} of an adopted container detached under a gate: {what}"),
                        blocked,
                    );
                    assert!(blocked, "{what} with {label} detached, under the gate: {v}");
                } else {
                    let ok = v["ok"] == true && (args[0] != "dns" || dns_ok(&v));
                    assert!(
                        ok,
                        "{what} with {label} detached and no gate must work: {v}"
                    );
                }
            }
            if let Some(ring) = events.as_mut() {
                let evs = gate::drain_events(ring);
                assert!(
                    events_with(&evs, Reason::NotEnforced, a.id) >= attacks.len(),
                    "not_enforced events for cgroup {}: {evs:?}",
                    a.id
                );
            }
            // The watcher's sequence: notice, freeze, re-attach, thaw.
            let t0 = Instant::now();
            let mut missing = agent.running().enforcement.missing_links().unwrap();
            let noticed = t0.elapsed();
            missing.sort();
            let mut want = detached.clone();
            want.sort();
            assert_eq!(missing, want, "the check names exactly the detached links");
            a.freeze(Duration::from_secs(5)).unwrap();
            assert!(a.is_frozen().unwrap());
            agent.running().enforcement.reattach(&missing).unwrap();
            a.thaw(Duration::from_secs(5)).unwrap();
            eprintln!(
                "{label} detached (gate: {gated}): noticed in {noticed:?}; notice + freeze + re-attach + thaw {:?}",
                t0.elapsed()
            );
            assert!(!a.is_frozen().unwrap());
            assert!(agent
                .running()
                .enforcement
                .missing_links()
                .unwrap()
                .is_empty());
            assert!(
                http_ok(&allowed_http(&topo, &a.path)),
                "served again after the re-attach"
            );
            assert!(
                dns_ok(&probe(&topo, &a.path, &dns)),
                "DNS again after the re-attach"
            );
            assert!(eperm(&probe(&topo, &a.path, &metadata)), "enforced again");
        }
    }
    let mut guard = guard.unwrap();

    // A removed pin is noticed too (the link lives on only through the agent's fd until then).
    std::fs::remove_file(links.join("egress_sockops")).unwrap();
    assert_eq!(
        agent.running().enforcement.missing_links().unwrap(),
        vec!["egress_sockops"]
    );
    agent
        .running()
        .enforcement
        .reattach(&["egress_sockops"])
        .unwrap();
    assert!(agent
        .running()
        .enforcement
        .missing_links()
        .unwrap()
        .is_empty());
    assert!(
        http_ok(&allowed_http(&topo, &a.path)),
        "served after the pin came back"
    );

    // A link detached while the agent is down is repaired by the restart's adoption, which
    // must then adopt the container in the gate again: its listeners moved.
    detach_from_outside(&links.join("egress_connect4"));
    agent.restart(&topo, &a);
    assert!(
        !agent.running().enforcement.adopted,
        "the dead link is replaced, not adopted"
    );
    assert!(agent
        .running()
        .enforcement
        .missing_links()
        .unwrap()
        .is_empty());
    let cfg = agent.running().config;
    guard.gate().adopt(a.id, &cfg).unwrap();
    assert!(
        http_ok(&allowed_http(&topo, &a.path)),
        "served after the restart"
    );
    assert!(
        eperm(&probe(&topo, &a.path, &metadata)),
        "enforced after the restart"
    );

    // The gate's own links are checked the same way.
    assert!(guard.gate().missing_links().unwrap().is_empty());
    let gate_links = guard.gate().pin_dir.join("links");
    detach_from_outside(&gate_links.join("gate_sock_create"));
    assert_eq!(
        guard.gate().missing_links().unwrap(),
        vec!["gate_sock_create"]
    );
    guard.gate().reattach(&["gate_sock_create"]).unwrap();
    assert!(guard.gate().missing_links().unwrap().is_empty());

    drop(agent);
    guard.remove();
}
