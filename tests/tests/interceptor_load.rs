//! The interceptor under load and under hostile input (THREATS E): 1,000 parallel connections
//! from two containers with different profiles, each decided by its own profile; garbage on the
//! listener without a panic, with the agent serving on and its memory bounded.

use egress_tests::procstat::vm_rss_kib;
use egress_tests::{
    addrs::*,
    agent::{policy_with_profiles, Agent},
    clients::*,
    require_root,
    topology::Topology,
};
use serde_json::Value;

#[test]
fn a_thousand_parallel_connections_from_two_profiles_are_each_decided_by_their_own() {
    require_root!();
    let alpha = Topology::new("load_alpha");
    let beta = Topology::new("load_beta");
    // The daemon runs in alpha's agent namespace: every upstream dial reaches alpha's fakenet.
    let _net = alpha.start_fakenet();
    let policy = policy_with_profiles(&[("alpha", &["allowed.test"]), ("beta", &["other.test"])]);
    let agent = Agent::daemon_profiles(&[(&alpha, "alpha"), (&beta, "beta")], &policy);

    // (container, Host, expected status): 4 x 250 connections, 4 x 50 at a time, all to the
    // same address and port from two namespaces (colliding client ports are likely).
    let runs = [
        (&alpha, "allowed.test", 200),
        (&alpha, "other.test", 403),
        (&beta, "allowed.test", 403),
        (&beta, "other.test", 200),
    ];
    let results: Vec<(String, u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = runs
            .iter()
            .map(|(topo, host, want)| {
                s.spawn(move || {
                    let send = format!(
                        "GET /{{i}} HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n"
                    );
                    let v = topo.probe(&[
                        "many",
                        "198.51.100.12:80",
                        "--count",
                        "250",
                        "--concurrency",
                        "50",
                        "--send",
                        &send,
                        "--reply-max",
                        "4000",
                        "--timeout-ms",
                        "20000",
                    ]);
                    (format!("{} {host}", topo.test_name()), *want, v)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut total = 0;
    for (what, want, v) in &results {
        assert_eq!(v["succeeded"], 250, "{what}: {}", v["errors"]);
        for c in v["conns"].as_array().unwrap() {
            let (i, reply) = (c[0].as_u64().unwrap(), c[2].as_str().unwrap_or(""));
            let status = format!("HTTP/1.1 {want} ");
            assert!(reply.starts_with(&status), "{what} #{i}: {reply:?}");
            if *want == 200 {
                // Each reply is the echo of this connection's own request.
                assert!(
                    reply.contains(&format!("\"uri\":\"/{i}\"")),
                    "{what} #{i}: {reply}"
                );
            } else {
                assert!(reply.contains("host_not_allowed"), "{what} #{i}: {reply}");
            }
            total += 1;
        }
    }
    assert_eq!(total, 1000);
    let recs = agent.audit_records(1000);
    let by = |profile: &str, name: &str, decision: &str| {
        recs.iter()
            .filter(|r| r["profile"] == profile && r["name"] == name && r["decision"] == decision)
            .count()
    };
    assert_eq!(by("alpha", "allowed.test", "allow"), 250);
    assert_eq!(by("alpha", "other.test", "deny"), 250);
    assert_eq!(by("beta", "allowed.test", "deny"), 250);
    assert_eq!(by("beta", "other.test", "allow"), 250);

    // Each container's status page shows its own denials only.
    let a = curl(&alpha, &["http://egress.internal/status"], &[]).json();
    let b = curl(&beta, &["http://egress.internal/status"], &[]).json();
    let names = |v: &Value| -> Vec<String> {
        v["recent_denials"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|r| r["name"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert!(
        !names(&a).is_empty() && names(&a).iter().all(|n| n == "other.test"),
        "{a}"
    );
    assert!(
        !names(&b).is_empty() && names(&b).iter().all(|n| n == "allowed.test"),
        "{b}"
    );
    assert_eq!(a["profile"], "alpha");
    assert_eq!(b["profile"], "beta");
}

/// Garbage of every kind in one python process: random bytes, truncated and oversized
/// ClientHellos, a 1 MiB header, an endless request line, random DNS datagrams.
const PY_GARBAGE: &str = r#"
import json, os, socket, sys
hello = bytes.fromhex(sys.argv[1])
out = {"tcp": 0, "udp": 0}
def tcp(data, shut=True):
    s = socket.socket(); s.settimeout(5)
    try:
        s.connect(("198.51.100.10", 443 if data[:1] == b"\x16" else 80))
        s.sendall(data)
        if shut: s.shutdown(socket.SHUT_WR)
        while s.recv(65536): pass
    except OSError:
        pass
    finally:
        s.close()
    out["tcp"] += 1
for i in range(60):
    tcp(os.urandom(1 + (i * 997) % 9000))
for cut in range(1, len(hello), max(1, len(hello) // 40)):
    tcp(hello[:cut])
tcp(b"\x16\x03\x01\xff\xff" + os.urandom(4000))
tcp(b"\x16\x03\x01\x00\x10\x01\xff\xff\xff" + os.urandom(100))
for _ in range(3):
    tcp(b"GET / HTTP/1.1\r\nHost: allowed.test\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
    tcp(b"GET /" + b"b" * (1 << 20))
    tcp(b"CONNECT " + b"c" * 70000 + b":443 HTTP/1.1\r\n\r\n")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(200):
    try:
        u.sendto(os.urandom(1 + i * 7 % 1400), ("8.8.8.8", 53)); out["udp"] += 1
    except OSError:
        pass
print(json.dumps(out))
"#;

#[test]
fn garbage_on_the_listener_keeps_the_agent_serving_with_bounded_memory() {
    require_root!();
    let topo = Topology::new("load_garbage");
    let _net = topo.start_fakenet();
    let agent = Agent::attach(&topo, &egress_tests::agent::test_policy(&[]));
    let pid = agent.pid();
    let ok = |what: &str| {
        let r = raw(
            &topo,
            &WEB1.to_string(),
            80,
            &http_get("allowed.test"),
            0,
            false,
        );
        assert_eq!(r.http_status(), Some(200), "{what}: {r:?}");
    };
    ok("before");
    let before = vm_rss_kib(pid);
    let hello: String = client_hello(Some(b"allowed.test"), 0)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for round in 0..2 {
        let v = python(&topo, PY_GARBAGE, &[&hello], &[]);
        assert!(v["tcp"].as_u64().unwrap() > 100, "round {round}: {v}");
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "the agent died in round {round}"
        );
        ok(&format!("after garbage round {round}"));
    }
    let after = vm_rss_kib(pid);
    eprintln!("agent VmRSS: {before} KiB before, {after} KiB after two rounds of garbage");
    assert!(
        after < before + 64 * 1024,
        "memory grew from {before} KiB to {after} KiB"
    );
    let d = topo.probe(&["dns", "8.8.8.8", "allowed.test"]);
    assert_eq!(
        d["ips"],
        serde_json::json!(["198.51.100.10"]),
        "DNS after garbage: {d}"
    );
}
