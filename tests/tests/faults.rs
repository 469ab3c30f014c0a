//! Faults (THREATS E, issue: Hardening): the agent killed under load, upstreams that refuse,
//! reset or never answer, a resolver that is down or slow, a full disk under the audit log.
//! Each must give the client a clear error (the deny contract `upstream_unreachable` /
//! `dns_error` with a reason, a reset, SERVFAIL + EDE), a log line, no crash, no hang (every
//! wait here is bounded) and no open egress.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use egress_tests::procstat::alive;
use egress_tests::{
    addrs::*,
    agent::{test_policy, Agent},
    clients::*,
    require_root, threat,
    topology::Topology,
};
use serde_json::Value;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// ~`rate` connections per second for `secs` seconds from the container, each a GET to
/// allowed.test on WEB1:80 (1 s timeout); prints `[[start, end, ok], ...]`.
const PY_LOAD: &str = r#"
import json, socket, sys, threading, time
secs, rate = float(sys.argv[1]), int(sys.argv[2])
req = b"GET / HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n"
res, lock = [], threading.Lock()
def one():
    t0, ok = time.time(), False
    try:
        s = socket.create_connection(("198.51.100.10", 80), timeout=1)
        s.sendall(req)
        ok = s.recv(12).startswith(b"HTTP/1.1 200")
        s.close()
    except OSError:
        pass
    with lock:
        res.append([t0, time.time(), ok])
start = time.time(); n = 0; threads = []
while time.time() < start + secs:
    t = threading.Thread(target=one); t.start(); threads.append(t)
    n += 1
    time.sleep(max(0.0, start + n / rate - time.time()))
for t in threads:
    t.join()
print(json.dumps(res))
"#;

#[test]
fn kill_9_under_load_lets_nothing_out_and_a_restart_resumes() {
    require_root!();
    let topo = Topology::new("fault_kill9");
    let net = topo.start_fakenet();
    let mut agent = Agent::attach(&topo, &test_policy(&[]));
    let load = {
        let mut cmd = topo.ctr_command(PYTHON);
        cmd.args(["-c", PY_LOAD, "9", "200"]);
        std::thread::spawn(move || cmd.output().unwrap())
    };
    std::thread::sleep(Duration::from_secs(2));
    agent.kill9();
    let killed = now();
    std::thread::sleep(Duration::from_secs(3));
    let restarting = now();
    agent.restart_attach(&topo);
    let resumed = now();
    assert!(
        agent.banner.contains("adopted pins: true"),
        "{}",
        agent.banner
    );
    let out = load.join().unwrap();
    let attempts: Vec<(f64, f64, bool)> = serde_json::from_slice::<Vec<Value>>(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("[]")
            .as_bytes(),
    )
    .unwrap_or_else(|e| panic!("load script: {e}: {}", String::from_utf8_lossy(&out.stderr)))
    .iter()
    .map(|a| {
        (
            a[0].as_f64().unwrap(),
            a[1].as_f64().unwrap(),
            a[2].as_bool().unwrap(),
        )
    })
    .collect();

    // The agent is gone from `killed` (kill9 waited for it) until the restart.
    let down: Vec<_> = attempts
        .iter()
        .filter(|a| a.0 > killed + 0.05 && a.1 < restarting)
        .collect();
    let leaked_clients = down.iter().filter(|a| a.2).count();
    let reached: Vec<Value> = net
        .connections_to(WEB1.into())
        .into_iter()
        .filter(|c| {
            let ts = c["ts"].as_f64().unwrap_or(0.0);
            ts > killed + 0.2 && ts < restarting
        })
        .collect();
    let before = attempts
        .iter()
        .filter(|a| a.1 < killed - 0.2)
        .collect::<Vec<_>>();
    let after = attempts
        .iter()
        .filter(|a| a.0 > resumed + 0.3)
        .collect::<Vec<_>>();
    let ok = |v: &[&(f64, f64, bool)]| v.iter().filter(|a| a.2).count();
    eprintln!(
        "kill -9 under load: {} attempts; before {}/{} ok, while down {} attempts {} ok and {} reached \
         the fake internet, after restart {}/{} ok (restart took {:.0} ms)",
        attempts.len(),
        ok(&before),
        before.len(),
        down.len(),
        leaked_clients,
        reached.len(),
        ok(&after),
        after.len(),
        (resumed - restarting) * 1000.0
    );
    threat(
        "E",
        "kill -9 under load: fail closed",
        down.len() > 200 && leaked_clients == 0 && reached.is_empty(),
    );
    assert!(
        down.len() > 200,
        "too few attempts while down: {}",
        down.len()
    );
    assert_eq!(
        leaked_clients, 0,
        "connections succeeded with the agent down"
    );
    assert!(
        reached.is_empty(),
        "reached the fake internet while down: {reached:?}"
    );
    assert!(ok(&before) * 10 >= before.len() * 9, "before the kill");
    threat(
        "E",
        "restart resumes without double attachment",
        !after.is_empty() && ok(&after) * 10 >= after.len() * 9,
    );
    assert!(
        !after.is_empty() && ok(&after) * 10 >= after.len() * 9,
        "after the restart: {}/{}",
        ok(&after),
        after.len()
    );
    assert_eq!(
        egress_tests::agent::attached_programs(topo.ctr_cgroup_path()).len(),
        egress_agent::bpf::PROGRAMS.len(),
        "attached twice?"
    );
}

/// An HTTP GET for `host` to WEB1:`port`, and how long it took.
fn timed_get(topo: &Topology, host: &str, port: u16) -> (Raw, Duration) {
    let t = Instant::now();
    let r = raw(topo, &WEB1.to_string(), port, &http_get(host), 0, false);
    (r, t.elapsed())
}

/// The same with probe and a 30 s client timeout (longer than any of the agent's bounds):
/// (HTTP status, JSON body, time taken).
fn slow_get(topo: &Topology, host: &str, port: u16) -> (Option<u16>, Value, Duration) {
    let t = Instant::now();
    let send = format!("GET / HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n");
    let v = topo.probe(&[
        "tcp",
        &format!("{WEB1}:{port}"),
        "--send",
        &send,
        "--read",
        "--timeout-ms",
        "30000",
    ]);
    let took = t.elapsed();
    let reply = v["reply"].as_str().unwrap_or("");
    let status = reply
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok());
    let body = reply
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, body, took)
}

fn assert_denied(what: &str, got: &(Option<u16>, Value, Duration), code: &str, reason_has: &str) {
    let (status, body, _) = got;
    assert_eq!(*status, Some(403), "{what}: {body}");
    assert_eq!(body["error"], code, "{what}: {body}");
    let reason = body["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains(reason_has),
        "{what}: reason {reason:?} should mention {reason_has:?}"
    );
}

#[test]
fn upstreams_that_refuse_reset_or_never_answer_give_clear_errors() {
    require_root!();
    let topo = Topology::new("fault_upstream");
    let net = topo.start_fakenet();
    // Without the enforcer: port 9 refuses, RESET_PORT resets, BLACKHOLE never answers.
    let v = topo.probe(&["tcp", "198.51.100.10:9"]);
    assert_eq!(v["errno"], 111, "{v}");
    let v = topo.probe(&["tcp", "198.51.100.10:81", "--send", "x", "--read"]);
    assert_eq!(v["errno"], 104, "{v}");
    let v = topo.probe(&["tcp", "198.51.100.99:80", "--timeout-ms", "500"]);
    assert_eq!(v["ok"], false, "{v}");

    let agent = Agent::attach(
        &topo,
        &test_policy(&[
            "allowed.test:9",
            "allowed.test:81",
            "allowed.test:82",
            BLACKHOLE_NAME,
        ]),
    );
    let pid = agent.pid();
    let _threat = egress_tests::threat_guard(
        "E",
        "upstream refuses, resets, never answers: clear error, bounded time, no hang",
    );

    // Refused: the deny contract at once.
    let got = slow_get(&topo, "allowed.test", 9);
    assert_denied("refused", &got, "upstream_unreachable", "refused");
    assert!(got.2 < Duration::from_secs(3), "refused took {:?}", got.2);

    // Never answers (SYNs vanish): the deny contract after the connect budget (10 s), not later.
    let got = slow_get(&topo, BLACKHOLE_NAME, 80);
    let took = got.2;
    assert_denied("blackhole", &got, "upstream_unreachable", "timed out");
    assert!(took < Duration::from_secs(13), "blackhole took {took:?}");
    eprintln!("blackholed upstream: 403 upstream_unreachable after {took:?}");

    // Reset after the request. Plain HTTP is served request by request: the client gets the
    // deny contract (or, had bytes already flowed, a reset), at once, not left waiting.
    let got = slow_get(&topo, "allowed.test", 81);
    assert_denied("reset (http)", &got, "upstream_unreachable", "allowed.test");
    assert!(got.2 < Duration::from_secs(3), "reset took {:?}", got.2);
    // Passthrough (TLS not inspected): bytes may have flowed, so the reset is passed on as one.
    let t = Instant::now();
    let r = raw(
        &topo,
        &WEB1.to_string(),
        RESET_PORT,
        &client_hello(Some(b"allowed.test"), 0),
        0,
        false,
    );
    let took = t.elapsed();
    assert_eq!(
        r.errno,
        Some(ECONNRESET),
        "upstream reset must reach the client as a reset: {r:?}"
    );
    assert!(took < Duration::from_secs(3), "reset took {took:?}");
    assert!(
        agent
            .wait_log("upstream reset", Duration::from_secs(5))
            .is_some(),
        "no log line for the upstream reset"
    );

    // An upstream that accepts and never answers holds only its own connection: the agent
    // serves others meanwhile, and the client's own timeout ends it.
    let silent = {
        let mut cmd = topo.ctr_command(egress_tests::bin_path("probe"));
        cmd.args([
            "--timeout-ms",
            "3000",
            "many",
            "198.51.100.10:82",
            "--count",
            "50",
            "--concurrency",
            "50",
            "--send",
            "GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n",
            "--no-shutdown",
        ]);
        std::thread::spawn(move || cmd.output().unwrap())
    };
    std::thread::sleep(Duration::from_millis(500));
    let (r, took) = timed_get(&topo, "allowed.test", 80);
    assert_eq!(r.http_status(), Some(200), "{r:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let out = silent.join().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["errors"]["110"], 50,
        "the silent upstream timed out the clients: {v}"
    );

    assert!(alive(pid), "the agent died");
    // Nothing but the allowed upstreams was reached.
    for c in net.connections() {
        let server: std::net::SocketAddr = c["server"].as_str().unwrap().parse().unwrap();
        assert!(
            server.ip() == IpAddr::from(WEB1)
                || server.ip() == IpAddr::from(WEB1_V6)
                || server.port() == 53,
            "unexpected connection {c}"
        );
    }
    let recs = agent.audit_records(3);
    assert!(
        recs.iter().any(|r| r["code"] == "upstream_unreachable"
            && r["reason"]
                .as_str()
                .is_some_and(|s| s.contains("timed out"))),
        "{recs:?}"
    );
}

#[test]
fn a_resolver_that_is_down_or_slow_gives_dns_error_and_servfail() {
    require_root!();
    let topo = Topology::new("fault_dns");
    let net = topo.start_fakenet();
    for (what, resolver) in [
        ("down", format!("{DEAD_RESOLVER}:53")),
        ("slow", format!("{BLACKHOLE}:53")),
    ] {
        let policy = test_policy(&[]).replace("203.0.113.53:53", &resolver);
        let mut agent = Agent::attach(&topo, &policy);
        let pid = agent.pid();
        let _threat = egress_tests::threat_guard(
            "E",
            if what == "down" {
                "resolver down: dns_error and SERVFAIL within the lookup bound"
            } else {
                "resolver slow: dns_error and SERVFAIL within the lookup bound"
            },
        );
        // HTTP to an allowed name: the agent cannot resolve it.
        let got = slow_get(&topo, "allowed.test", 80);
        let took = got.2;
        eprintln!(
            "resolver {what}: HTTP {:?} {} after {took:?}",
            got.0, got.1["error"]
        );
        assert_denied(what, &got, "dns_error", "allowed.test");
        assert!(took < Duration::from_secs(8), "{what}: {took:?}");
        // DNS from the container: SERVFAIL with an EDE saying why.
        let t = Instant::now();
        let d = topo.probe(&[
            "dns",
            "8.8.8.8",
            "www.allowed.test",
            "--timeout-ms",
            "20000",
        ]);
        let took = t.elapsed();
        eprintln!("resolver {what}: DNS {} after {took:?}", d["rcode"]);
        assert_eq!(d["rcode_num"], 2, "{what}: SERVFAIL expected: {d}");
        assert_eq!(d["ede"][0]["info_code"], 23, "{what}: {d}");
        assert!(
            d["ede"][0]["extra_text"]
                .as_str()
                .is_some_and(|t| t.contains("www.allowed.test")),
            "{what}: {d}"
        );
        assert!(alive(pid), "{what}: the agent died");
        agent.stop();
        drop(agent);
    }
    // Nothing at all reached the fake internet's servers.
    assert!(net.connections_to(WEB1.into()).is_empty());
    assert!(net.connections_to(WEB1_V6.into()).is_empty());
}

/// A tiny tmpfs mounted for the test, unmounted (lazily) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }
    /// Fills the file system with a filler file; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let p = self.0.join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = [0u8; 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_under_the_audit_log_never_stops_enforcement() {
    require_root!();
    let topo = Topology::new("fault_diskfull");
    let net = topo.start_fakenet();
    let fs = Tmpfs::mount(&topo.workdir().join("auditfs"), "64k");
    let audit = fs.0.join("audit.jsonl");
    let agent = Agent::attach_with_audit(&topo, &test_policy(&[]), &audit);
    let pid = agent.pid();
    let (r, _) = timed_get(&topo, "allowed.test", 80);
    assert_eq!(r.http_status(), Some(200));
    let filler = fs.fill();
    let lines_before = agent.audit_records(1).len();

    for i in 0..30 {
        let (r, took) = timed_get(&topo, "allowed.test", 80);
        assert_eq!(
            r.http_status(),
            Some(200),
            "allowed #{i} with the disk full: {r:?}"
        );
        assert!(took < Duration::from_secs(3));
        let r = http_get_to(&topo, WEB2, "other.test");
        threat(
            "E",
            "denials stay enforced with the audit disk full",
            r.http_status() == Some(403),
        );
        assert_eq!(
            r.http_status(),
            Some(403),
            "denied #{i} with the disk full: {r:?}"
        );
        let v = topo.probe(&["tcp", &format!("{METADATA}:80")]);
        assert_eq!(v["errno"], 1, "{v}");
    }
    assert!(alive(pid), "the agent died with the disk full");
    assert!(
        agent
            .wait_log("audit log write failed", Duration::from_secs(5))
            .is_some(),
        "no log line about the failing audit log"
    );
    // One line when it starts failing, not one per record.
    let n = agent
        .log_lines()
        .iter()
        .filter(|l| l.contains("audit log write failed"))
        .count();
    assert_eq!(n, 1, "log flood: {n} lines");
    assert!(net.connections_to(WEB2.into()).is_empty());

    // Space again: records are written again, and the agent says so.
    std::fs::remove_file(filler).unwrap();
    let (r, _) = timed_get(&topo, "allowed.test", 80);
    assert_eq!(r.http_status(), Some(200));
    assert!(
        agent
            .wait_log("audit log writable again", Duration::from_secs(5))
            .is_some(),
        "no recovery line"
    );
    let recs = agent.audit_records(lines_before + 1);
    assert!(recs.len() > lines_before, "no record after recovery");
    drop(agent);
}

fn http_get_to(topo: &Topology, ip: std::net::Ipv4Addr, host: &str) -> Raw {
    raw(topo, &ip.to_string(), 80, &http_get(host), 0, false)
}
