//! Kubernetes on a real node runtime (issue 13): a real containerd 1.6 with its CRI plugin
//! (`tests/src/runtimes/containerd.rs`), pods created over the CRI exactly as a kubelet does,
//! and the daemon with a `[[gate]]` on the pods' cgroup parent and `[kubernetes]` discovery
//! on containerd's socket. Two ways in: the runtime wrapper as a RuntimeClass handler
//! (`BinaryName`, synchronous), and discovery (CRI listing; containerd 1.6 has no event
//! stream). No kubelet: the test is the kubelet (cgroupfs driver, `cgroup_parent`
//! `<containers>/pod<uid>`, removed with the pod).
//!
//! "Nothing was ever open" is checked at the fake internet: the agent dials upstream from
//! ag-*, so a connection whose peer is an enforced pod's own IP got past the enforcement.
//!
//! Printed (`--nocapture`): the scenario table and the adoption latency (RunPodSandbox sent →
//! pod enforced, from the daemon's log timestamps) per path.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use egress_tests::agent::{policy_with_profiles, Agent};
use egress_tests::runtimes::containerd::{Containerd, ContainerdOpts, Handler, PodOpts};
use egress_tests::runtimes::cri::CriClient;
use egress_tests::runtimes::{percentile, wait_for, FirstReport, Net, RunSpec, Runtime, Started};
use egress_tests::topology::{FakeNet, Topology};
use egress_tests::{bin_path, require_root, threat};

const PROFILE: &str = "egress-agent.io/profile";
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);
/// Discovery lists every second here: a pod is adopted within about one interval.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(15);

/// One containerd at a time: on 2 shared cores, overlapping runtimes distort every figure.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn policy() -> String {
    policy_with_profiles(&[("default", &["allowed.test"]), ("strict", &[])])
}

/// The runtime wrapper as containerd's `BinaryName` for handler `egress`: the profile comes
/// from the pod's `egress-agent.io/profile` annotation (passed by `pod_annotations`).
/// With `profile`, the handler names it (`egress-agent runtime --profile`, as the installed
/// `egress-agent-runc.PROFILE` link does).
fn wrapper_script(dir: &Path, control: &Path, profile: Option<&str>) -> PathBuf {
    let script = dir.join(format!(
        "egress-agent-runc{}",
        profile.map(|p| format!(".{p}")).unwrap_or_default()
    ));
    let flag = profile
        .map(|p| format!("--profile {p}"))
        .unwrap_or_default();
    egress_tests::runtimes::write_wrapper(&script, control, &flag)
}

/// containerd with the handlers `egress` (the wrapper, talking to `<workdir>/control.sock`) and
/// `egress-strict` (the same, its profile named by the handler).
fn containerd(topo: &Topology) -> Containerd<'_> {
    let control = topo.workdir().join("control.sock");
    let wrapper = wrapper_script(topo.workdir(), &control, None);
    let strict = wrapper_script(topo.workdir(), &control, Some("strict"));
    Containerd::start_with(
        topo,
        ContainerdOpts {
            handlers: vec![
                Handler::wrapper("egress", &wrapper),
                Handler::wrapper("egress-strict", &strict),
            ],
        },
    )
}

/// daemon.toml: a gate on containerd's cgroup parent, discovery on its socket.
fn daemon_config(ctd: &Containerd, kube_extra: &str) -> String {
    format!(
        "watch_interval_ms = 200\n[[gate]]\ncgroup = {:?}\n[kubernetes]\nruntime_endpoint = \"unix://{}\"\n\
         interval_secs = 1\nexempt_namespaces = [\"kube-system\"]\n{kube_extra}",
        ctd.cgroup_parent_path(),
        ctd.socket().display()
    )
}

fn start_agent(topo: &Topology, config: &str) -> Agent {
    Agent::daemon_with_config(topo, &policy(), config, vec![])
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

/// containerd, then the daemon: on drop the pods go first (the daemon detaches them), then the
/// daemon, then the gate, and last containerd with its cgroups (a gate is removed by path).
struct Node<'t> {
    ctd: Option<Containerd<'t>>,
    agent: Option<Agent>,
    gate: Option<GateGuard>,
}

impl<'t> Node<'t> {
    fn new(topo: &'t Topology, kube_extra: &str) -> Node<'t> {
        let ctd = containerd(topo);
        let gate = GateGuard(ctd.cgroup_parent_path());
        let agent = start_agent(topo, &daemon_config(&ctd, kube_extra));
        Node {
            ctd: Some(ctd),
            agent: Some(agent),
            gate: Some(gate),
        }
    }
    fn ctd(&self) -> &Containerd<'t> {
        self.ctd.as_ref().unwrap()
    }
    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("the daemon is running")
    }
}

impl Drop for Node<'_> {
    fn drop(&mut self) {
        if let Some(ctd) = &self.ctd {
            for p in ctd.cri().list_pod_sandbox().unwrap_or_default() {
                ctd.remove_sandbox_on(ctd.cri(), &p.id);
            }
        }
        if let Some(a) = &self.agent {
            let _ = wait_for(Duration::from_secs(10), || {
                attachments(a).is_empty().then_some(())
            });
        }
        drop(self.agent.take());
        drop(self.gate.take());
        drop(self.ctd.take());
    }
}

/// The daemon's status (`status --json`).
fn status(agent: &Agent) -> serde_json::Value {
    let out = agent.cli().args(["status", "--json"]).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn attachments(agent: &Agent) -> Vec<serde_json::Value> {
    status(agent)["attachments"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn gate_entries(agent: &Agent) -> u64 {
    status(agent)["gates"][0]["entries"].as_u64().unwrap_or(0)
}

fn served_ids(agent: &Agent) -> Vec<u64> {
    attachments(agent)
        .iter()
        .filter_map(|a| a["cgroup_id"].as_u64())
        .collect()
}

/// `probe` in a running container, through the CRI (`ExecSync`, as `kubectl exec`).
fn probe_on(cri: &CriClient, c: &Started, args: &[&str]) -> serde_json::Value {
    let mut cmd = vec!["/bin/probe", "--timeout-ms", "3000"];
    cmd.extend_from_slice(args);
    let (_, out) = cri
        .exec_sync(&c.id, &cmd, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("exec in {}: {e}", c.name));
    serde_json::from_str(out.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("probe in {}: {e}: {out:?}", c.name))
}

fn probe(ctd: &Containerd, c: &Started, args: &[&str]) -> serde_json::Value {
    probe_on(ctd.cri(), c, args)
}

const METADATA: &str = "169.254.169.254:80";

fn get(ip: &str, host: &str) -> Vec<String> {
    vec![
        "tcp".into(),
        format!("{ip}:80"),
        "--send".into(),
        format!("GET / HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n"),
        "--read".into(),
    ]
}

fn allowed() -> Vec<String> {
    get("198.51.100.10", "allowed.test")
}

fn denied() -> Vec<String> {
    get("198.51.100.11", "other.test")
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn reply(v: &serde_json::Value) -> &str {
    v["reply"].as_str().unwrap_or("")
}

fn eperm(v: &serde_json::Value) -> bool {
    v["errno"].as_i64() == Some(libc::EPERM as i64)
}

fn ok_200(v: &serde_json::Value) -> bool {
    reply(v).starts_with("HTTP/1.1 200")
}

fn deny_contract(v: &serde_json::Value) -> bool {
    reply(v).starts_with("HTTP/1.1 403") && reply(v).contains("host_not_allowed")
}

/// Waits until the pod's allowed request succeeds (it is adopted): how long it took.
fn wait_adopted(ctd: &Containerd, c: &Started) -> Duration {
    let t = Instant::now();
    wait_for(ADOPT_TIMEOUT, || {
        ok_200(&probe(ctd, c, &strs(&allowed()))).then_some(())
    })
    .unwrap_or_else(|| panic!("{} was never adopted", c.name));
    t.elapsed()
}

fn assert_enforced_now(ctd: &Containerd, c: &Started, what: &str) {
    let m = probe(ctd, c, &["tcp", METADATA]);
    let blocked = eperm(&m);
    threat(
        "F",
        &format!("{what}: pod reaches the metadata server"),
        blocked,
    );
    assert!(blocked, "{what}: metadata {m}");
    let d = probe(ctd, c, &strs(&denied()));
    let blocked = deny_contract(&d);
    threat("F", &format!("{what}: pod reaches a denied host"), blocked);
    assert!(blocked, "{what}: denied host {d}");
    let a = probe(ctd, c, &strs(&allowed()));
    assert!(ok_200(&a), "{what}: allowed {a}");
}

fn assert_open(r: &FirstReport, what: &str) {
    assert!(r.metadata_leaked(), "{what}: {:?}", r.metadata);
    assert!(r.denied_reached(), "{what}: {:?}", r.denied);
    assert!(r.allowed_ok(), "{what}: {:?}", r.allowed);
}

/// No network at all: every one of the three connects refused.
fn assert_no_network(r: &FirstReport, what: &str) {
    let none = [&r.metadata, &r.denied, &r.allowed]
        .iter()
        .all(|p| eperm(p));
    threat(
        "F",
        &format!("{what}: a gated pod reaches the network"),
        none,
    );
    assert!(none, "{what}: {r:?}");
}

/// Never open: no network at all (gated, returns true) or enforced (metadata EPERM, the denied
/// host refused or given the deny contract, the allowed one 200).
fn assert_never_open(r: &FirstReport, what: &str) -> bool {
    let gated = [&r.metadata, &r.denied, &r.allowed]
        .iter()
        .all(|p| eperm(p));
    if !gated {
        assert_enforced_first(r, what);
    }
    threat(
        "F",
        &format!("{what}: first action of a new pod gets out"),
        true,
    );
    gated
}

/// The first instruction enforced: metadata EPERM, the denied host the deny contract, 200.
fn assert_enforced_first(r: &FirstReport, what: &str) {
    let blocked = !r.metadata_leaked() && r.metadata_errno() == Some(libc::EPERM);
    threat(
        "F",
        &format!("{what}: first instruction reaches metadata"),
        blocked,
    );
    assert!(blocked, "{what}: {:?}", r.metadata);
    let blocked = !r.denied_reached() && deny_contract(&r.denied);
    threat(
        "F",
        &format!("{what}: first instruction reaches a denied host"),
        blocked,
    );
    assert!(blocked, "{what}: {:?}", r.denied);
    assert!(r.allowed_ok(), "{what}: {:?}", r.allowed);
}

/// Connections fakenet saw from any of `ips` at or after `since`: the pod got out past the agent.
fn direct_from(fake: &FakeNet, ips: &[IpAddr], since: SystemTime) -> Vec<serde_json::Value> {
    let t0 = since.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    fake.connections()
        .into_iter()
        .filter(|c| c["ts"].as_f64().is_some_and(|t| t >= t0))
        .filter(|c| {
            c["peer"]
                .as_str()
                .and_then(|p| p.parse::<std::net::SocketAddr>().ok())
                .is_some_and(|p| ips.contains(&p.ip()))
        })
        .collect()
}

/// The time of a daemon log line (`2026-12-02T02:55:01.123456Z  INFO …`, UTC).
fn log_time(line: &str) -> Option<SystemTime> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, s) = (t.next()??, t.next()??, t.next()??);
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400 + h * 3_600 + mi * 60 + s;
    let nanos: u32 = format!("{frac:0<9}")[..9].parse().ok()?;
    Some(UNIX_EPOCH + Duration::new(u64::try_from(secs).ok()?, nanos))
}

/// When the daemon logged a line containing every one of `needles` (the first such line).
fn logged_at(agent: &Agent, needles: &[&str]) -> Option<SystemTime> {
    agent
        .log_lines()
        .iter()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .and_then(|l| log_time(l))
}

/// Adoption latency of a pod: RunPodSandbox sent (`c.t0`) → the daemon's log line.
fn latency(agent: &Agent, c: &Started, needles: &[&str]) -> Duration {
    let at = wait_for(Duration::from_secs(5), || logged_at(agent, needles))
        .unwrap_or_else(|| panic!("no log line {needles:?} for {}", c.name));
    at.duration_since(c.t0).unwrap_or_default()
}

fn print_latency(path: &str, v: &[Duration]) {
    eprintln!(
        "ADOPTION {path}: RunPodSandbox → enforced p50 {:.0} ms, p99 {:.0} ms ({} pods)",
        percentile(v, 50).as_secs_f64() * 1e3,
        percentile(v, 99).as_secs_f64() * 1e3,
        v.len()
    );
}

fn row(scenario: &str, without: &str, with: &str) {
    eprintln!("SCENARIO | {scenario} | {without} | {with}");
}

fn pod_ip(c: &Started) -> IpAddr {
    c.ip.unwrap_or_else(|| panic!("{} has no pod IP", c.name))
}

/// The pin directory of cgroup `id` under bpffs.
fn pin_dir(id: u64) -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let bpffs = info
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "bpf")
                .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap_or("")))
        })
        .expect("bpffs mounted");
    bpffs.join("egress-agent").join(id.to_string())
}

fn cgroup_id(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).map(|m| m.ino()).unwrap_or(0)
}

/// What an attachment leaves on the host: pin directory, lock file, saved record.
fn leftovers(topo: &Topology, ids: &[u64]) -> (usize, usize, usize) {
    let pins = ids.iter().filter(|id| pin_dir(**id).exists()).count();
    let locks = ids
        .iter()
        .filter(|id| Path::new(&format!("/run/egress-agent/locks/{id}.lock")).exists())
        .count();
    let records = ids
        .iter()
        .filter(|id| {
            topo.workdir()
                .join(format!("attachments/{id}.json"))
                .exists()
        })
        .count();
    (pins, locks, records)
}

#[test]
fn annotated_pods_are_enforced_from_their_first_action_through_the_wrapper_and_discovery() {
    require_root!();
    if !Containerd::tools_present() {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("k8s_first");
    let fake = topo.start_fakenet();
    let mut node = Node {
        ctd: Some(containerd(&topo)),
        agent: None,
        gate: None,
    };
    let ctd = node.ctd();

    // Without the agent: the same annotated pod reaches both; the wrapper refuses to start it.
    let spec = |name: &str| RunSpec::first_instruction(name).annotation(PROFILE, "default");
    let c = ctd.start(&spec("open")).unwrap();
    assert_open(&ctd.wait_report(&c, REPORT_TIMEOUT), "no agent");
    ctd.remove(&c);
    let e = ctd
        .start(&spec("open-wrapped").runtime("egress"))
        .expect_err("the wrapper started a pod with no daemon");
    let refused = e.to_string().contains("no egress-agent daemon answers");
    threat(
        "F",
        "wrapper: a pod starts while the daemon is down",
        refused,
    );
    assert!(refused, "{e}");
    row(
        "annotated pod, first action",
        "metadata 200, denied host 200, allowed 200",
        "see below",
    );
    row(
        "wrapper RuntimeClass, daemon down",
        "-",
        "RunPodSandbox fails: pod not started",
    );

    let (parent, config) = (ctd.cgroup_parent_path(), daemon_config(ctd, ""));
    node.gate = Some(GateGuard(parent));
    node.agent = Some(start_agent(&topo, &config));
    let (ctd, agent) = (node.ctd(), node.agent());
    // containerd 1.6 has no CRI event stream: discovery says so once and lists.
    let version = ctd.cri().version().unwrap().runtime_version;
    let said = if version.starts_with("1.6") {
        "the runtime has no CRI event stream"
    } else {
        "following the runtime's container events"
    };
    assert!(
        agent.wait_log(said, Duration::from_secs(5)).is_some(),
        "containerd {version}: no {said:?}"
    );
    let since = SystemTime::now();
    let mut enforced_ips = Vec::new();

    // The wrapper path: adopted before the first instruction.
    let mut wrapper_lat = Vec::new();
    for i in 0..8 {
        let c = ctd
            .start(&spec(&format!("wrapped-{i}")).runtime("egress"))
            .unwrap();
        assert_enforced_first(&ctd.wait_report(&c, REPORT_TIMEOUT), "wrapper");
        let sid = c.sandbox_id.clone().unwrap();
        wrapper_lat.push(latency(agent, &c, &[" adopted ", &sid]));
        enforced_ips.push(pod_ip(&c));
        ctd.remove(&c);
    }
    row(
        "annotated pod, RuntimeClass egress (wrapper)",
        "metadata 200, denied 200",
        "first action: metadata EPERM, denied 403 deny contract, allowed 200",
    );

    // The discovery path: gated (no network at all) until adopted, then enforced.
    let (mut discovery_lat, mut gated_first) = (Vec::new(), 0);
    for i in 0..8 {
        let c = ctd.start(&spec(&format!("found-{i}"))).unwrap();
        // Gated until a listing finds it; one that lands between RunPodSandbox and the
        // container's start adopts it before its first action. Never open either way.
        gated_first += usize::from(assert_never_open(
            &ctd.wait_report(&c, REPORT_TIMEOUT),
            "discovery",
        ));
        wait_adopted(ctd, &c);
        assert_enforced_now(ctd, &c, "discovery");
        discovery_lat.push(latency(
            agent,
            &c,
            &["pod attached", &format!("pod=default/found-{i}")],
        ));
        enforced_ips.push(pod_ip(&c));
        ctd.remove(&c);
    }
    row(
        "annotated pod, default handler (discovery)",
        "metadata 200, denied 200",
        &format!("first action: no network (gate EPERM) in {gated_first}/8, enforced in the rest; adopted: metadata EPERM, denied 403, allowed 200"),
    );

    // hostNetwork, enforced (the default): in the node's namespace, listeners on its loopback.
    let c = ctd.start(&spec("hostnet").net(Net::Node)).unwrap();
    assert_never_open(&ctd.wait_report(&c, REPORT_TIMEOUT), "hostNetwork");
    wait_adopted(ctd, &c);
    assert_enforced_now(ctd, &c, "hostNetwork");
    ctd.remove(&c);
    row(
        "hostNetwork pod (host_network = enforce)",
        "metadata 200",
        "gated, then enforced on the node's loopback",
    );

    // Not annotated, not exempt: stays without network, said once. Exempt namespace: open.
    let c = ctd.start(&RunSpec::first_instruction("plain")).unwrap();
    assert_no_network(&ctd.wait_report(&c, REPORT_TIMEOUT), "unannotated");
    agent
        .wait_log(
            "pod stays without network under the gate",
            Duration::from_secs(5),
        )
        .expect("the gated pod is logged");
    std::thread::sleep(Duration::from_secs(2));
    assert!(eperm(&probe(ctd, &c, &strs(&allowed()))));
    enforced_ips.push(pod_ip(&c));
    let sys = ctd
        .start_pod(
            &RunSpec::first_instruction("dns"),
            &PodOpts {
                namespace: Some("kube-system".into()),
                ..Default::default()
            },
        )
        .unwrap();
    wait_for(ADOPT_TIMEOUT, || {
        ok_200(&probe(ctd, &sys, &strs(&allowed()))).then_some(())
    })
    .expect("the exempt pod never got its network");
    agent
        .wait_log("pod exempt", Duration::from_secs(5))
        .expect("the exemption is logged");
    row(
        "unannotated pod / kube-system (exempt)",
        "open / open",
        "no network, logged / open (exempt, logged)",
    );

    // An unknown profile: the wrapper refuses the pod; discovery leaves it gated, one line.
    let e = ctd
        .start(
            &RunSpec::first_instruction("typo-w")
                .annotation(PROFILE, "nope")
                .runtime("egress"),
        )
        .expect_err("a pod with an unknown profile started through the wrapper");
    assert!(e.to_string().contains("nope"), "{e}");
    let refused: Vec<String> = agent
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("refused to adopt"))
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].contains("pod=default/typo-w") && refused[0].contains("profile=nope"),
        "{}",
        refused[0]
    );
    let c2 = ctd
        .start(&RunSpec::first_instruction("typo-d").annotation(PROFILE, "nope"))
        .unwrap();
    assert_no_network(&ctd.wait_report(&c2, REPORT_TIMEOUT), "unknown profile");
    std::thread::sleep(Duration::from_secs(3)); // three listings
    let lines: Vec<String> = agent
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("profile the policy does not have"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("pod=default/typo-d") && lines[0].contains("profile=nope"),
        "{}",
        lines[0]
    );
    enforced_ips.push(pod_ip(&c2));
    row(
        "unknown profile",
        "-",
        "wrapper: pod not started, one line (pod, profile); discovery: stays gated, one line (pod, profile)",
    );

    let direct = direct_from(&fake, &enforced_ips, since);
    threat(
        "F",
        "kubernetes: an enforced or gated pod got out directly",
        direct.is_empty(),
    );
    assert!(direct.is_empty(), "{direct:?}");

    // Deletion: detached, pins, locks, records and gate entries gone.
    let ids = served_ids(agent);
    for p in [&c, &sys, &c2] {
        ctd.remove(p);
    }
    wait_for(Duration::from_secs(10), || {
        attachments(agent).is_empty().then_some(())
    })
    .unwrap_or_else(|| panic!("still served: {:?}", attachments(agent)));
    wait_for(Duration::from_secs(5), || {
        (gate_entries(agent) == 0).then_some(())
    })
    .unwrap_or_else(|| panic!("gate entries left: {}", status(agent)["gates"]));
    assert_eq!(leftovers(&topo, &ids), (0, 0, 0));
    print_latency("wrapper (RuntimeClass)", &wrapper_lat);
    print_latency("discovery (CRI list, 1 s)", &discovery_lat);
}

#[test]
fn pods_started_while_the_daemon_is_down_are_gated_then_adopted_and_a_profile_change_has_no_gap() {
    require_root!();
    if !Containerd::tools_present() {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("k8s_down");
    let fake = topo.start_fakenet();
    let team = |p: &str| {
        format!("namespace_profiles = {{ team = \"{p}\" }}\ndefault_profile = \"default\"\n")
    };
    let mut node = Node::new(&topo, &team("default"));
    let since = SystemTime::now();
    let ctd = node.ctd();
    let in_team = PodOpts {
        namespace: Some("team".into()),
        ..Default::default()
    };
    let p = ctd
        .start_pod(&RunSpec::first_instruction("team-pod"), &in_team)
        .unwrap();
    wait_adopted(ctd, &p);
    assert_enforced_now(ctd, &p, "namespace profile");
    // An exempt pod that ends while the daemon is down: its gate entry must not outlive it.
    let sys = ctd
        .start_pod(
            &RunSpec::first_instruction("sys"),
            &PodOpts {
                namespace: Some("kube-system".into()),
                ..Default::default()
            },
        )
        .unwrap();
    wait_for(ADOPT_TIMEOUT, || {
        (gate_entries(node.agent()) == 2).then_some(())
    })
    .expect("the exempt pod's gate entry");

    // A loop in the running pod: the metadata server, the whole time the daemon is down,
    // restarted, and switches the pod's profile.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let cri = ctd.connect_cri();
    let (q, took, outcomes) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let mut v = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                v.push(probe_on(&cri, &p, &["tcp", METADATA]));
            }
            v
        });
        node.agent.as_mut().unwrap().stop();
        let ctd = node.ctd();
        let q = ctd
            .start(&RunSpec::first_instruction("while-down").annotation(PROFILE, "default"))
            .unwrap();
        assert_no_network(&ctd.wait_report(&q, REPORT_TIMEOUT), "daemon down");
        assert!(eperm(&probe(ctd, &q, &strs(&allowed()))));
        ctd.remove(&sys);
        // The operator changes the namespace's profile and the DaemonSet rolls.
        let started = SystemTime::now();
        node.agent = Some(start_agent(&topo, &daemon_config(ctd, &team("strict"))));
        let ctd = node.ctd();
        wait_adopted(ctd, &q);
        let took = latency(
            node.agent(),
            &q,
            &["pod attached", "pod=default/while-down"],
        );
        let took = took.saturating_sub(started.duration_since(q.t0).unwrap_or_default());
        wait_for(ADOPT_TIMEOUT, || {
            deny_contract(&probe(ctd, &p, &strs(&allowed()))).then_some(())
        })
        .expect("the namespace's new profile never took effect");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (q, took, h.join().unwrap())
    });
    let (ctd, agent) = (node.ctd(), node.agent());
    assert!(agent
        .wait_log("profile change", Duration::from_secs(1))
        .is_some());
    // The ended pod's exemption went at the restart; the two pods' adoptions are what is left.
    assert!(agent
        .wait_log(
            "gate entries of cgroups that are gone removed",
            Duration::from_secs(1)
        )
        .is_some());
    assert_eq!(gate_entries(agent), 2, "{}", status(agent)["gates"]);
    assert_enforced_now(ctd, &q, "adopted after the restart");
    let m = probe(ctd, &p, &["tcp", METADATA]);
    assert!(eperm(&m), "{m}");
    let all_refused = !outcomes.is_empty() && outcomes.iter().all(eperm);
    threat(
        "F",
        "kubernetes: a pod during a daemon restart and profile change",
        all_refused,
    );
    assert!(all_refused, "{outcomes:?}");
    // A handler that names its profile: default_profile does not override it.
    let r = ctd
        .start(&RunSpec::first_instruction("handler-strict").runtime("egress-strict"))
        .unwrap();
    agent
        .wait_log("default_profile does not override it", ADOPT_TIMEOUT)
        .expect("discovery saw the wrapper's pod");
    let a = probe(ctd, &r, &strs(&allowed()));
    assert!(deny_contract(&a), "still strict: {a}");
    let direct = direct_from(&fake, &[pod_ip(&p), pod_ip(&q), pod_ip(&r)], since);
    assert!(direct.is_empty(), "got out directly: {direct:?}");
    eprintln!(
        "DAEMON DOWN: pod gated (no network); daemon start → pod adopted in {:.0} ms; {} metadata probes in the running pod over restart + profile change, all EPERM",
        took.as_secs_f64() * 1e3,
        outcomes.len()
    );
    row(
        "daemon down, new pod under the gate",
        "metadata 200",
        &format!(
            "no network; adopted {:.0} ms after the daemon starts",
            took.as_secs_f64() * 1e3
        ),
    );
    row(
        "profile change (namespace_profiles, rollout)",
        "-",
        &format!(
            "default → strict, {} probes during it all EPERM",
            outcomes.len()
        ),
    );
}

/// Pods created and deleted (`EGRESS_K8S_PODS`, default 200; 4 at a time; every other one with
/// an app container), through the wrapper: adopted in RunPodSandbox; discovery runs too and
/// detaches them when they end.
fn churn_count() -> usize {
    std::env::var("EGRESS_K8S_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}
/// How many pods are started at once (`EGRESS_K8S_WORKERS`, default 4).
fn churn_workers() -> usize {
    std::env::var("EGRESS_K8S_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|w| *w > 0)
        .unwrap_or(4)
}

/// The daemon's open descriptors by kind (`socket`, `bpf-map`, `bpf-prog`, `bpf_link`, …).
fn fd_kinds(pid: u32) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let t = std::fs::read_link(e.path())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let kind = if let Some(r) = t.strip_prefix("anon_inode:") {
            r.trim_matches(|c| c == '[' || c == ']').to_string()
        } else if t.starts_with("socket:") {
            "socket".into()
        } else {
            "file".into()
        };
        *m.entry(kind).or_insert(0) += 1;
    }
    m
}

#[test]
fn two_hundred_pods_created_and_deleted_leave_nothing_behind() {
    require_root!();
    if !Containerd::tools_present() {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("k8s_churn");
    let _fake = topo.start_fakenet();
    let node = Node::new(&topo, "");
    let (ctd, agent) = (node.ctd(), node.agent());
    let spec = |name: String| {
        RunSpec::first_instruction(&name)
            .annotation(PROFILE, "default")
            .runtime("egress")
            .command(&["/bin/sleep", "3600"])
    };
    // Warm-up, then the idle figures.
    let c = ctd.start(&spec("warm".into())).unwrap();
    ctd.remove(&c);
    let settle = || {
        wait_for(Duration::from_secs(10), || {
            attachments(agent).is_empty().then_some(())
        })
        .unwrap_or_else(|| panic!("still served: {:?}", attachments(agent)));
        std::thread::sleep(Duration::from_millis(500));
        (fd_kinds(agent.pid()), gate_entries(agent))
    };
    let (fds0, entries0) = settle();
    let (n, workers) = (churn_count(), churn_workers());
    let t = Instant::now();
    let ids = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for w in 0..workers {
            let ids = &ids;
            s.spawn(move || {
                let cri = ctd.connect_cri();
                for i in (w..n).step_by(workers) {
                    // Every other pod without an app container: the pod-level attachment is
                    // made at its sandbox either way, and the CPU goes to the runtime.
                    let opts = PodOpts {
                        sandbox_only: i % 2 == 1,
                        ..Default::default()
                    };
                    let c = ctd
                        .start_pod_on(&cri, &spec(format!("churn-{i}")), &opts)
                        .unwrap_or_else(|e| panic!("pod {i}: {e}\n{}", ctd.diagnostics()));
                    ids.lock()
                        .unwrap()
                        .push(cgroup_id(c.cgroup.parent().unwrap()));
                    ctd.remove_on(&cri, &c);
                }
            });
        }
    });
    let took = t.elapsed();
    let (fds1, entries1) = settle();
    let ids = ids.into_inner().unwrap();
    let adopted = agent
        .log_lines()
        .iter()
        .filter(|l| l.contains(" adopted") && l.contains("container="))
        .count();
    let left = leftovers(&topo, &ids);
    let pod_cgroups = std::fs::read_dir(ctd.cgroup_parent_path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pod"))
        .count();
    eprintln!(
        "CHURN {n} pods in {:.0} s ({workers} at a time): daemon fds {fds0:?} -> {fds1:?}, gate entries {entries0} -> {entries1}; left: {left:?} (pins, locks, records), {pod_cgroups} pod cgroups",
        took.as_secs_f64()
    );
    assert_eq!(ids.len(), n);
    assert!(adopted >= n, "every pod was adopted: {adopted} adoptions");
    assert_eq!(
        fds1, fds0,
        "descriptors leaked (maps, programs, links, listeners)"
    );
    assert_eq!(entries1, entries0, "gate entries leaked");
    assert_eq!(left, (0, 0, 0));
    assert_eq!(pod_cgroups, 0);
    row(
        &format!("{n} pods created and deleted"),
        "-",
        "no pins, locks, records, gate entries or daemon fds left",
    );
}
