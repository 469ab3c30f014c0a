//! Operations: the daemon's control socket driven by the CLI, hot reload under
//! load, metrics against the audit log, and monitor mode → `suggest` → enforce.
//! Every test runs the real binary in its own topology; traffic stays inside
//! the test namespaces.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    process::Output,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use egress_tests::{
    addrs::*,
    agent::{test_policy, Agent},
    require_root,
    topology::Topology,
};
use serde_json::Value;

const RANGES: &str = "resolver = \"203.0.113.53:53\"\n\
    allow_ranges = [\"198.51.100.0/24\", \"203.0.113.0/24\", \"2001:db8:100::/48\"]\n";

fn run(agent: &Agent, args: &[&str]) -> Output {
    agent
        .cli()
        .args(args)
        .output()
        .expect("running egress-agent")
}

fn ok(agent: &Agent, args: &[&str]) -> String {
    let o = run(agent, args);
    assert!(
        o.status.success(),
        "egress-agent {args:?}: {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Exit 2 and exactly one line on stderr; returns that line.
fn refused(agent: &Agent, args: &[&str]) -> String {
    let o = run(agent, args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(2),
        "egress-agent {args:?} should fail with 2: stdout {} stderr {err}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    err
}

fn status(agent: &Agent) -> Value {
    serde_json::from_str(&ok(agent, &["status", "--json"])).unwrap()
}

fn attach(agent: &Agent, topo: &Topology) -> String {
    ok(
        agent,
        &[
            "attach",
            "--cgroup",
            topo.ctr_cgroup_path().to_str().unwrap(),
            "--netns",
            topo.ctr_netns_path().to_str().unwrap(),
        ],
    )
}

fn http_get(ip: std::net::Ipv4Addr, port: u16, host: &str) -> String {
    format!("{ip}:{port}|GET / HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n")
}

/// One HTTP/1.1 request from the container; the status line's code (0: no reply).
fn http_status(topo: &Topology, ip: std::net::Ipv4Addr, host: &str) -> u16 {
    let spec = http_get(ip, 80, host);
    let (target, send) = spec.split_once('|').unwrap();
    let v = topo.probe(&["tcp", target, "--send", send, "--read"]);
    v["reply"]
        .as_str()
        .and_then(|r| r.strip_prefix("HTTP/1.1 "))
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn cgroup_id(topo: &Topology) -> u64 {
    std::fs::metadata(topo.ctr_cgroup_path()).unwrap().ino()
}

#[test]
fn cli_round_trip_over_the_control_socket() {
    if !require_root() {
        return;
    }
    let topo = Topology::new("ops_control");
    let _net = topo.start_fakenet();
    let agent = Agent::daemon_control(&topo, &test_policy(&[]), &[]);
    let id = cgroup_id(&topo);
    assert_eq!(status(&agent)["attachments"], serde_json::json!([]));

    // Bad requests: one line, exit 2, nothing attached.
    let cg = topo.ctr_cgroup_path().to_str().unwrap().to_string();
    let ns = topo.ctr_netns_path().to_str().unwrap().to_string();
    let e = refused(
        &agent,
        &[
            "attach",
            "--cgroup",
            &cg,
            "--netns",
            &ns,
            "--profile",
            "nope",
        ],
    );
    assert!(e.contains("profile `nope`"), "{e}");
    let e = refused(&agent, &["attach", "--pid", "999999999"]);
    assert!(e.contains("does not exist"), "{e}");
    let e = refused(
        &agent,
        &["attach", "--cgroup", &cg, "--policy", "/dev/null"],
    );
    assert!(e.contains("drop --policy"), "{e}");
    let e = refused(&agent, &["detach", "--cgroup", &cg]);
    assert!(e.contains("not attached"), "{e}");
    assert_eq!(status(&agent)["attachments"], serde_json::json!([]));
    assert_eq!(
        http_status(&topo, WEB2, "other.test"),
        200,
        "not enforced yet"
    );

    // Attach through the daemon; a second attach is refused.
    let out = attach(&agent, &topo);
    assert!(out.contains(&format!("(id {id})")), "{out}");
    let e = refused(&agent, &["attach", "--cgroup", &cg, "--netns", &ns]);
    assert!(e.contains("already attached"), "{e}");
    let st = status(&agent);
    let atts = st["attachments"].as_array().unwrap();
    assert_eq!(atts.len(), 1, "{st}");
    assert_eq!(atts[0]["cgroup_id"], id);
    assert_eq!(atts[0]["profile"], "default");
    assert_eq!(st["policy"]["version"], "test-1");
    let text = ok(&agent, &["status"]);
    assert!(text.contains(&format!("cgroup id {id}")), "{text}");

    // Enforced: allowed passes, other is refused with the deny contract.
    assert_eq!(http_status(&topo, WEB1, "allowed.test"), 200);
    assert_eq!(http_status(&topo, WEB2, "other.test"), 403);

    // explain / policy show / decisions with the daemon's policy.
    let ex = ok(&agent, &["explain", "allowed.test"]);
    assert!(ex.contains("allowed.test:443 Tls: allow"), "{ex}");
    let ex = ok(
        &agent,
        &["explain", "other.test:80", "--profile", "default"],
    );
    assert!(ex.contains("deny host_not_allowed"), "{ex}");
    refused(&agent, &["explain", "allowed.test", "--profile", "nope"]);
    let show = ok(&agent, &["policy", "show"]);
    assert!(
        show.contains("version = \"test-1\"") && show.contains("\"allowed.test\""),
        "{show}"
    );
    let decisions = ok(&agent, &["decisions", "--cgroup-id", &id.to_string()]);
    let recs: Vec<Value> = decisions
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        recs.iter()
            .any(|r| r["name"] == "other.test" && r["decision"] == "deny"),
        "{decisions}"
    );

    // Detach: gone from the daemon and from the kernel; a second detach fails.
    let out = ok(&agent, &["detach", "--cgroup", &cg]);
    assert!(out.contains("detached"), "{out}");
    refused(&agent, &["detach", "--cgroup", &cg]);
    assert_eq!(status(&agent)["attachments"], serde_json::json!([]));
    assert_eq!(http_status(&topo, WEB2, "other.test"), 200, "restored");
}

/// Allowed.test is allowed by both policies, other.test by A only; 10 reloads
/// (A/B alternating, twice an invalid file) while the container keeps making
/// requests: none to allowed.test fails, and each audit record's decision is
/// the one the policy it names makes.
#[test]
fn reload_under_load_never_fails_an_allowed_request() {
    if !require_root() {
        return;
    }
    let topo = Topology::new("ops_reload");
    let _net = topo.start_fakenet();
    let policy = |v: &str, allow: &str| {
        format!("version = \"{v}\"\n{RANGES}[profile.default]\nallow = [{allow}]\n")
    };
    let a = policy("A", "\"allowed.test\", \"other.test\"");
    let b = policy("B", "\"allowed.test\"");
    let invalid = "version = \"broken\"\n[profile.default]\nallow = [\"*.\"]\n";
    let agent = Agent::daemon_control(&topo, &a, &[]);
    attach(&agent, &topo);
    let topo = Arc::new(topo);

    let stop = Arc::new(AtomicBool::new(false));
    let load = |host: &'static str, ip: std::net::Ipv4Addr, batch: usize, min: usize| {
        let (topo, stop) = (topo.clone(), stop.clone());
        std::thread::spawn(move || {
            let spec = http_get(ip, 80, host);
            let (target, send) = spec.split_once('|').unwrap();
            let mut codes: BTreeMap<String, usize> = BTreeMap::new();
            let mut total = 0;
            let deadline = Instant::now() + Duration::from_secs(40);
            while (!stop.load(Ordering::Relaxed) || total < min) && Instant::now() < deadline {
                let v = topo.probe(&[
                    "many",
                    target,
                    "--count",
                    &batch.to_string(),
                    "--concurrency",
                    "8",
                    "--send",
                    send,
                    "--reply-max",
                    "12",
                ]);
                for c in v["conns"].as_array().unwrap() {
                    let code = c[2]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("errno {}", c[3]));
                    *codes.entry(code).or_default() += 1;
                    total += 1;
                }
            }
            (total, codes)
        })
    };
    let allowed = load("allowed.test", WEB1, 100, 1000);
    let other = load("other.test", WEB2, 25, 100);

    let sequence = [&b, &a, invalid, &b, &a, &b, invalid, &a, &b, &a];
    let mut expect = "A";
    for (i, text) in sequence.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(250));
        // Written whole, then renamed: the daemon never reads half a file.
        let tmp = agent.policy.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &agent.policy).unwrap();
        if *text == invalid {
            let e = refused(&agent, &["reload"]);
            assert!(e.contains("reload refused"), "{e}");
        } else {
            let out = ok(&agent, &["reload"]);
            expect = if *text == a { "A" } else { "B" };
            assert!(
                out.contains(&format!("policy {expect}")),
                "reload {i}: {out}"
            );
        }
        assert_eq!(
            status(&agent)["policy"]["version"],
            expect,
            "after reload {i}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (n_allowed, allowed_codes) = allowed.join().unwrap();
    let (n_other, other_codes) = other.join().unwrap();
    assert!(n_allowed >= 1000, "only {n_allowed} requests");
    assert_eq!(
        allowed_codes.keys().collect::<Vec<_>>(),
        vec!["HTTP/1.1 200"],
        "requests to allowed.test that failed: {allowed_codes:?}"
    );
    assert!(n_other >= 100);
    // other.test saw both policies.
    assert!(other_codes.contains_key("HTTP/1.1 200"), "{other_codes:?}");
    assert!(other_codes.contains_key("HTTP/1.1 403"), "{other_codes:?}");

    let recs = agent.audit_records(n_allowed + n_other);
    let http: Vec<&Value> = recs.iter().filter(|r| r["protocol"] == "http").collect();
    assert_eq!(http.len(), n_allowed + n_other, "one record per request");
    let mut by = BTreeMap::new();
    for r in &http {
        let (name, version, decision) = (
            r["name"].as_str().unwrap(),
            r["policy"].as_str().unwrap(),
            r["decision"].as_str().unwrap(),
        );
        let want = match (name, version) {
            ("allowed.test", "A" | "B") | ("other.test", "A") => "allow",
            ("other.test", "B") => "deny",
            _ => panic!("unexpected record {r}"),
        };
        assert_eq!(decision, want, "{r}");
        *by.entry((name, version)).or_insert(0) += 1;
    }
    assert_eq!(by.len(), 4, "every (name, policy) pair seen: {by:?}");
    let m = ok(&agent, &["metrics"]);
    assert!(m.contains("egress_reloads_total{result=\"ok\"} 8\n"), "{m}");
    assert!(
        m.contains("egress_reloads_total{result=\"failed\"} 2\n"),
        "{m}"
    );
}

/// `name{labels} value` lines of one metric.
fn samples(text: &str, metric: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (head, ""),
            };
            if name != metric {
                return None;
            }
            let labels = labels
                .split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((k.to_string(), v.trim_matches('"').to_string()))
                })
                .collect();
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

fn sum(text: &str, metric: &str, want: &[(&str, &str)]) -> f64 {
    samples(text, metric)
        .iter()
        .filter(|(l, _)| {
            want.iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn metrics_match_the_audit_log() {
    if !require_root() {
        return;
    }
    let topo = Topology::new("ops_metrics");
    let _net = topo.start_fakenet();
    let agent = Agent::daemon_control(&topo, &test_policy(&[]), &["--metrics", "127.0.0.1:9464"]);
    attach(&agent, &topo);
    for _ in 0..5 {
        assert_eq!(http_status(&topo, WEB1, "allowed.test"), 200);
    }
    for _ in 0..3 {
        assert_eq!(http_status(&topo, WEB2, "other.test"), 403);
    }
    let dns = DNS.to_string();
    let v = topo.probe(&["dns", &dns, "allowed.test"]);
    assert_eq!(v["rcode_num"], 0, "{v}");
    // A denied name: egress.internal's address (dns_deny = "explain"), a refusal all the same.
    let v = topo.probe(&["dns", &dns, "other.test"]);
    assert_eq!(v["ips"], serde_json::json!(["192.0.2.1"]), "{v}");
    let v = topo.probe(&["tcp", &format!("{METADATA}:80")]);
    assert_eq!(v["errno"], 1, "kernel EPERM: {v}");

    // The unix socket and the TCP port serve the same text.
    let text = ok(&agent, &["metrics"]);
    let tcp = topo
        .ag_command("curl")
        .args(["-sf", "--max-time", "5", "http://127.0.0.1:9464/metrics"])
        .output()
        .unwrap();
    assert!(tcp.status.success(), "curl: {tcp:?}");
    let tcp = String::from_utf8_lossy(&tcp.stdout).into_owned();
    assert!(
        tcp.contains("# TYPE egress_decisions_total counter"),
        "{tcp}"
    );

    // Every userspace decision is an audit record and a counter: same counts.
    let decided = sum(&text, "egress_decisions_total", &[]) as usize;
    let deadline = Instant::now() + Duration::from_secs(10);
    let recs = loop {
        let recs: Vec<Value> = agent
            .audit_records(decided)
            .into_iter()
            .filter(|r| r["protocol"] != "kernel")
            .collect();
        if recs.len() >= decided || Instant::now() > deadline {
            break recs;
        }
    };
    assert_eq!(recs.len(), decided, "{text}");
    let mut audit: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in &recs {
        let code = if r["decision"] == "allow" {
            "none".to_string()
        } else {
            r["code"].as_str().unwrap_or("").to_string()
        };
        *audit
            .entry((r["decision"].as_str().unwrap().to_string(), code))
            .or_default() += 1;
    }
    for ((decision, code), n) in &audit {
        assert_eq!(
            sum(
                &text,
                "egress_decisions_total",
                &[
                    ("profile", "default"),
                    ("decision", decision),
                    ("code", code)
                ]
            ) as usize,
            *n,
            "{decision}/{code}\n{text}"
        );
    }
    assert_eq!(audit[&("allow".into(), "none".into())], 6, "{audit:?}");
    assert_eq!(
        audit[&("deny".into(), "host_not_allowed".into())],
        4,
        "{audit:?}"
    );
    let dns_recs = |deny: bool| {
        recs.iter()
            .filter(|r| r["protocol"] == "dns" && (r["decision"] == "deny") == deny)
            .count() as f64
    };
    assert_eq!(sum(&text, "egress_dns_answers_total", &[]), dns_recs(false));
    assert_eq!(sum(&text, "egress_dns_refusals_total", &[]), dns_recs(true));
    assert_eq!(dns_recs(true), 1.0);
    let up: u64 = recs.iter().map(|r| r["bytes_up"].as_u64().unwrap()).sum();
    let down: u64 = recs.iter().map(|r| r["bytes_down"].as_u64().unwrap()).sum();
    assert!(down > 0);
    assert_eq!(
        sum(&text, "egress_bytes_total", &[("direction", "up")]),
        up as f64
    );
    assert_eq!(
        sum(&text, "egress_bytes_total", &[("direction", "down")]),
        down as f64
    );
    assert!(
        sum(
            &text,
            "egress_kernel_denials_total",
            &[("hook", "connect4")]
        ) >= 1.0,
        "{text}"
    );
    assert_eq!(sum(&text, "egress_active_connections", &[]), 0.0);
    assert_eq!(sum(&text, "egress_reloads_total", &[]), 0.0);
    // A reload by SIGHUP is counted too.
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &agent.pid().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while sum(
        &ok(&agent, &["metrics"]),
        "egress_reloads_total",
        &[("result", "ok")],
    ) < 1.0
    {
        assert!(Instant::now() < deadline, "SIGHUP reload not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn curl_code(topo: &Topology, url: &str) -> String {
    let o = topo
        .ctr_command("curl")
        .args([
            "-sk",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Monitor mode blocks nothing a policy would deny (only the kernel deny set)
/// and logs would_deny; `suggest` turns the session into a policy that allows
/// exactly that traffic when enforced.
#[test]
fn monitor_session_becomes_a_policy_with_suggest() {
    if !require_root() {
        return;
    }
    let topo = Topology::new("ops_suggest");
    // cdn.test on the address with the TCP echo (opaque TCP, port 7).
    let _net = topo.start_fakenet_with(&["--record", "cdn.test=198.51.100.10"]);
    let monitor = format!(
        "version = \"monitor\"\nmode = \"monitor\"\n{RANGES}[profile.default]\nallow = []\n"
    );
    let agent = Agent::daemon_control(&topo, &monitor, &[]);
    attach(&agent, &topo);
    let dns = DNS.to_string();
    let audit_path = agent.audit.clone();
    let session = |topo: &Topology| {
        assert_eq!(http_status(topo, WEB1, "allowed.test"), 200);
        assert_eq!(curl_code(topo, "https://other.test:8443/"), "200");
        let v = topo.probe(&["dns", &dns, "cdn.test"]);
        assert_eq!(v["rcode_num"], 0, "{v}");
        let v = topo.probe(&[
            "tcp",
            &format!("{WEB1}:7"),
            "--send",
            "ping",
            "--shut-wr",
            "--read",
        ]);
        assert_eq!(
            v["reply"],
            "ping",
            "opaque echo: {v}\n{:?}",
            std::fs::read_to_string(&audit_path)
        );
    };
    // A connection with no name at all (before any DNS answer for its
    // address) passes in monitor mode too.
    let banner = format!("{WEB1}:25");
    let v = topo.probe(&["tcp", &banner, "--read"]);
    assert!(v["reply"].as_str().unwrap_or("").starts_with("220"), "{v}");
    session(&topo);
    // The kernel deny set holds in monitor mode too.
    let v = topo.probe(&["tcp", &format!("{METADATA}:80")]);
    assert_eq!(v["errno"], 1, "{v}");
    let recs = agent.audit_records(5);
    assert!(
        recs.iter()
            .any(|r| r["decision"] == "would_deny" && r["protocol"] == "dns"),
        "{recs:?}"
    );
    assert!(
        recs.iter()
            .filter(|r| r["protocol"] != "kernel")
            .all(|r| r["decision"] != "deny"),
        "nothing denied in monitor mode: {recs:?}"
    );

    let out = ok(
        &agent,
        &[
            "suggest",
            "--from",
            agent.audit.to_str().unwrap(),
            "--profile",
            "default",
        ],
    );
    assert!(
        out.contains(r#"allow = ["allowed.test", "cdn.test:7", "other.test:8443"]"#),
        "{out}"
    );
    assert!(
        out.contains(&format!("no rule can allow them): {banner}\n")),
        "{out}"
    );
    let suggested = format!("version = \"suggested\"\n{RANGES}{out}");
    let file = topo.workdir().join("suggested.toml");
    std::fs::write(&file, &suggested).unwrap();
    ok(&agent, &["policy", "check", file.to_str().unwrap()]);
    std::fs::write(&agent.policy, &suggested).unwrap();
    assert!(ok(&agent, &["reload"]).contains("policy suggested"));

    // Enforced: what was seen still works, allowed by the new policy ...
    let before = agent.audit_records(0).len();
    session(&topo);
    let after: Vec<Value> = agent.audit_records(before + 5)[before..].to_vec();
    // (Kernel records are not decisions of the policy.)
    for r in after.iter().filter(|r| r["protocol"] != "kernel") {
        assert_eq!(r["decision"], "allow", "{r}");
        assert_eq!(r["policy"], "suggested", "{r}");
    }
    // ... and what was not seen is refused.
    assert_eq!(http_status(&topo, WEB1, "www.allowed.test"), 403);
    assert_ne!(curl_code(&topo, "https://other.test/"), "200");
    let v = topo.probe(&["dns", &dns, "alt.test"]);
    assert_eq!(v["ips"], serde_json::json!(["192.0.2.1"]), "{v}");
    // The nameless connection is refused once enforced (it had no name to allow).
    let v = topo.probe(&["tcp", &banner, "--read"]);
    assert!(!v["reply"].as_str().unwrap_or("").starts_with("220"), "{v}");
}
