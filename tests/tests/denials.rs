//! Denials people can read (DESIGN.md §13, issue 16): a denied name is answered with the
//! agent's own address and the connection that follows explains the denial; `dns_deny =
//! "nxdomain"` keeps NXDOMAIN + EDE; a denied name is never forwarded; one record per
//! decision; DNS records carry the sender's pid and comm; a service-label lookup under an
//! allowed name is no denial; a UDP connect() that sends nothing is no denial while a datagram
//! still is; `exec` prints one rate-limited line per denial (`--quiet`: none), and under
//! `--trust-ca` a denied HTTPS name gets a minted certificate and the 403 with the JSON body.
//! Each attack also runs without the enforcer, where it must succeed.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use egress_tests::{
    addrs::*, agent::test_policy, agent::Agent, bin_path, clients::*, require_root,
    topology::Topology, FakeNet,
};
use serde_json::Value;

fn ca(net: &FakeNet) -> String {
    net.ca_pem.to_str().unwrap().to_string()
}

/// `probe ARGS` in the container, with the pid it ran as.
fn probe_pid(topo: &Topology, args: &[&str]) -> (Value, u32) {
    let child = topo
        .ctr_command(bin_path("probe"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("probe");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    (serde_json::from_str(line).unwrap(), pid)
}

/// Audit records about `name` (waits up to 5 s for at least `min`).
fn records_of(agent: &Agent, name: &str, min: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let recs: Vec<Value> = agent
            .audit_records(0)
            .into_iter()
            .filter(|r| r["name"] == name)
            .collect();
        if recs.len() >= min || Instant::now() > deadline {
            return recs;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn queries_for(net: &FakeNet, name: &str) -> usize {
    net.queries().iter().filter(|q| q["name"] == name).count()
}

#[test]
fn a_denied_name_resolves_to_the_agent_and_the_connection_explains_it() {
    require_root!();
    let topo = Topology::new("deny_steer");
    let net = topo.start_fakenet();
    let ca = ca(&net);
    // Without the enforcer the name resolves and both schemes reach other.test's server.
    let d = topo.probe(&["dns", "203.0.113.53", "other.test"]);
    assert_eq!(
        d["ips"],
        serde_json::json!(["198.51.100.11"]),
        "direct: {d}"
    );
    let c = curl(&topo, &["http://other.test/"], &[]);
    assert_eq!(c.json()["server"], "198.51.100.11:80", "direct http: {c:?}");
    let c = curl(&topo, &["--cacert", &ca, "https://other.test/"], &[]);
    assert_eq!(
        c.json()["server"],
        "198.51.100.11:443",
        "direct https: {c:?}"
    );
    let asked = queries_for(&net, "other.test");

    let agent = Agent::attach(&topo, &test_policy(&[]));
    let _t = egress_tests::threat_guard("D", "denied name steered to the agent, never forwarded");
    // A: egress.internal's address, EDE 4 with the reason; AAAA: NODATA (clients use v4).
    let d = topo.probe(&["dns", "203.0.113.53", "other.test"]);
    assert_eq!(d["rcode_num"], 0, "{d}");
    assert_eq!(d["ips"], serde_json::json!(["192.0.2.1"]), "{d}");
    assert_eq!(d["ede"][0]["info_code"], 4, "{d}");
    assert!(d["ede"][0]["extra_text"]
        .as_str()
        .unwrap()
        .contains("other.test is not in"));
    let d6 = topo.probe(&["dns", "203.0.113.53", "other.test", "--type", "AAAA"]);
    assert!(
        d6["rcode_num"] == 0 && d6["answers"] == serde_json::json!([]),
        "{d6}"
    );
    // Plain HTTP through the system resolver: the 403 with Proxy-Status and the JSON body.
    let c = curl(&topo, &["http://other.test/"], &[]);
    assert_eq!(c.status, 403, "{c:?}");
    assert!(c
        .header("proxy-status")
        .unwrap_or_default()
        .starts_with("egress-agent"));
    assert_eq!(c.json()["error"], "host_not_allowed", "{c:?}");
    assert_eq!(c.json()["host"], "other.test", "{c:?}");
    // The same from an AF_INET6 socket (every JVM's): ::ffff:192.0.2.1 reaches the agent too.
    let p = topo.probe(&[
        "tcp",
        "192.0.2.1:80",
        "--v6-socket",
        "--send",
        "GET / HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
        "--shut-wr",
        "--read",
    ]);
    let reply = p["reply"].as_str().unwrap_or("");
    assert!(
        reply.starts_with("HTTP/1.1 403") && reply.contains("host_not_allowed"),
        "{p}"
    );
    // TLS from a sandbox not known to trust the CA: the alert that means "denied".
    let c = curl(&topo, &["--cacert", &ca, "https://other.test/"], &[]);
    assert_eq!(c.exit, 35, "{c:?}");
    assert!(c.stderr.contains("alert access denied"), "{c:?}");
    // The service address is no way out: opaque bytes to it are reset, whatever its port.
    for port in ["7", "9418"] {
        let p = topo.probe(&[
            "tcp",
            &format!("192.0.2.1:{port}"),
            "--send",
            "hi",
            "--read",
        ]);
        assert_eq!(p["errno"], ECONNRESET, "opaque to the service address: {p}");
    }
    // Never forwarded, nothing reached other.test's server.
    assert_eq!(
        queries_for(&net, "other.test"),
        asked,
        "{:?}",
        net.queries()
    );
    assert!(net
        .connections_to(WEB2.into())
        .iter()
        .all(|c| c["peer"].as_str().unwrap_or("").starts_with("10.200.")));
    // One record per decision: the probe's 2 questions, curl's A + AAAA twice, 3 connections;
    // each denial names its fix.
    let recs = records_of(&agent, "other.test", 9);
    std::thread::sleep(Duration::from_millis(300));
    let recs2 = records_of(&agent, "other.test", 9);
    assert_eq!(recs.len(), 9, "{recs:#?}");
    assert_eq!(recs2.len(), 9, "late records: {recs2:#?}");
    for r in &recs {
        assert_eq!(r["decision"], "deny", "{r}");
        assert_eq!(r["code"], "host_not_allowed", "{r}");
        let hint = r["hint"].as_str().unwrap_or("");
        assert!(hint.contains("add \"other.test\""), "{r}");
    }
    let count = |p: &str| recs.iter().filter(|r| r["protocol"] == p).count();
    assert_eq!(
        (count("dns"), count("http"), count("tls")),
        (6, 2, 1),
        "{recs:#?}"
    );
}

#[test]
fn nxdomain_mode_keeps_nxdomain_with_the_reason() {
    require_root!();
    let topo = Topology::new("deny_nxdomain");
    let net = topo.start_fakenet();
    let c = curl(&topo, &["http://other.test/"], &[]);
    assert_eq!(c.status, 200, "direct: {c:?}");
    let asked = queries_for(&net, "other.test");

    let policy = format!("dns_deny = \"nxdomain\"\n{}", test_policy(&[]));
    let agent = Agent::attach(&topo, &policy);
    for qtype in ["A", "AAAA"] {
        let d = topo.probe(&["dns", "203.0.113.53", "other.test", "--type", qtype]);
        assert_eq!(d["rcode_num"], 3, "{qtype}: {d}");
        assert_eq!(d["ede"][0]["info_code"], 15, "{qtype}: {d}");
    }
    let c = curl(&topo, &["http://other.test/"], &[]);
    assert_eq!(c.exit, 6, "could not resolve: {c:?}");
    assert_eq!(queries_for(&net, "other.test"), asked, "forwarded");
    let recs = records_of(&agent, "other.test", 3);
    assert!(
        recs.iter().all(|r| r["code"] == "host_not_allowed"),
        "{recs:#?}"
    );
    // An allowed name is still answered.
    let d = topo.probe(&["dns", "203.0.113.53", "allowed.test"]);
    assert_eq!(d["ips"], serde_json::json!(["198.51.100.10"]), "{d}");
}

#[test]
fn dns_records_carry_the_senders_pid_and_comm() {
    require_root!();
    let topo = Topology::new("deny_dns_pid");
    let _net = topo.start_fakenet();
    let agent = Agent::attach(&topo, &test_policy(&[]));
    let ways: &[(&str, &[&str])] = &[
        ("udp", &[]),
        ("connected udp", &["--connected"]),
        ("tcp", &["--tcp"]),
        ("v6 socket, v4-mapped", &["--v6-socket"]),
    ];
    for (i, (way, extra)) in ways.iter().enumerate() {
        let name = format!("q{i}.allowed.test");
        let mut args = vec!["dns", "203.0.113.53", name.as_str()];
        args.extend_from_slice(extra);
        let (d, pid) = probe_pid(&topo, &args);
        assert_eq!(d["ok"], true, "{way}: {d}");
        let recs = records_of(&agent, &name, 1);
        assert_eq!(recs.len(), 1, "{way}: {recs:#?}");
        assert_eq!(recs[0]["comm"], "probe", "{way}: {}", recs[0]);
        assert_eq!(recs[0]["pid"], pid, "{way}: {}", recs[0]);
    }
    // getaddrinfo (glibc: A and AAAA at once on one connected socket), a denied name too.
    let script = "import os,socket,json\ntry: socket.getaddrinfo('pid.allowed.test',80)\nexcept OSError: pass\ntry: socket.getaddrinfo('pid-denied.test',80)\nexcept OSError: pass\nprint(json.dumps({'pid':os.getpid()}))";
    let v = python(&topo, script, &[], &[]);
    for name in ["pid.allowed.test", "pid-denied.test"] {
        let recs = records_of(&agent, name, 2);
        assert!(!recs.is_empty(), "{name}");
        for r in &recs {
            assert_eq!(r["pid"], v["pid"], "{name}: {r}");
            assert_eq!(r["comm"], "python3", "{name}: {r}");
        }
    }
}

#[test]
fn a_service_label_under_an_allowed_name_is_nodata_and_no_denial() {
    require_root!();
    let topo = Topology::new("deny_srv");
    let net = topo.start_fakenet();
    // Without the agent the question reaches the resolver.
    topo.probe(&[
        "dns",
        "203.0.113.53",
        "_https._tcp.www.allowed.test",
        "--type",
        "SRV",
    ]);
    assert!(net.was_queried("_https._tcp.www.allowed.test"));

    let agent = Agent::attach(&topo, &test_policy(&[]));
    let names = [
        ("_https._tcp.allowed.test", "SRV"),
        ("_443._tcp.api.allowed.test", "SRV"),
        ("_dns.allowed.test", "SVCB"),
    ];
    for (name, qtype) in names {
        let d = topo.probe(&["dns", "203.0.113.53", name, "--type", qtype]);
        assert!(
            d["rcode_num"] == 0 && d["answers"] == serde_json::json!([]),
            "{name}: {d}"
        );
        assert!(
            d["ede"].as_array().is_none_or(|e| e.is_empty()),
            "{name}: {d}"
        );
    }
    // Under a denied name it is a denial of that name like any other.
    topo.probe(&[
        "dns",
        "203.0.113.53",
        "_https._tcp.other.test",
        "--type",
        "SRV",
    ]);
    let denied = records_of(&agent, "_https._tcp.other.test", 1);
    assert_eq!(denied.len(), 1, "{denied:#?}");
    assert_eq!(denied[0]["decision"], "deny");
    // Nothing recorded, nothing on the status page, nothing forwarded.
    for (name, _) in names {
        assert!(records_of(&agent, name, 0).is_empty(), "{name} recorded");
    }
    let c = curl(&topo, &["http://egress.internal/status"], &[]);
    assert!(!c.body.contains("_https._tcp.allowed.test"), "{}", c.body);
    assert!(c.body.contains("_https._tcp.other.test"), "{}", c.body);
    let after: Vec<String> = net
        .queries()
        .iter()
        .map(|q| q["name"].to_string())
        .collect();
    assert!(
        !after
            .iter()
            .any(|n| n.contains("_443") || n.contains("_dns") || n.contains("other.test")),
        "{after:?}"
    );
}

#[test]
fn a_udp_connect_that_sends_nothing_is_no_denial_but_a_datagram_is() {
    require_root!();
    let topo = Topology::new("deny_udp_connect");
    let _net = topo.start_fakenet();
    let targets = ["198.51.100.10:443", "[2001:db8:100::10]:443"];
    for t in targets {
        let p = topo.probe(&["udp-connect-send", t, "--expect-reply"]);
        assert_eq!(p["ok"], true, "direct {t}: {p}");
    }
    let agent = Agent::attach(&topo, &test_policy(&[]));
    let _t = egress_tests::threat_guard("D", "UDP connect() then a datagram (QUIC)");
    for t in targets {
        // connect() only: the source address is picked, nothing is sent, nothing recorded.
        let p = topo.probe(&["udp-connect", t]);
        assert_eq!(p["ok"], true, "connect only {t}: {p}");
        assert!(p["local"].as_str().is_some_and(|l| !l.is_empty()), "{p}");
        // The first datagram: EPERM at once (QUIC falls back to TCP).
        let started = Instant::now();
        let (p, pid) = probe_pid(&topo, &["udp-connect-send", t, "--expect-reply"]);
        assert_eq!(p["errno"], EPERM, "{t}: {p}");
        assert_eq!(p["stage"], "send", "{t}: {p}");
        assert!(started.elapsed() < Duration::from_secs(2), "slow failure");
        // One kernel record for the datagram, with its sender and destination.
        let deadline = Instant::now() + Duration::from_secs(5);
        let recs = loop {
            let r: Vec<Value> = agent
                .audit_records(0)
                .into_iter()
                .filter(|r| r["protocol"] == "kernel" && r["code"] == "udp_not_dns")
                .collect();
            if r.iter().any(|r| r["pid"] == pid) || Instant::now() > deadline {
                break r;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mine: Vec<&Value> = recs.iter().filter(|r| r["pid"] == pid).collect();
        assert_eq!(mine.len(), 1, "{t}: {recs:#?}");
        assert_eq!(mine[0]["comm"], "probe");
        let dst = mine[0]["orig_dst"].as_str().unwrap();
        assert!(
            dst.ends_with(":443") && dst.contains(&t[1..6]),
            "{t}: {}",
            mine[0]
        );
    }
    // The connect-only runs left no record at all: every udp_not_dns record is a datagram's.
    std::thread::sleep(Duration::from_millis(300));
    let n = agent
        .audit_records(0)
        .iter()
        .filter(|r| r["code"] == "udp_not_dns")
        .count();
    assert_eq!(n, targets.len(), "{:#?}", agent.audit_records(0));
}

/// `nsenter --net=<ctr> egress-agent exec ARGS` with its own state directory.
fn exec(topo: &Topology, args: &[&str]) -> std::process::Output {
    let policy = topo.workdir().join("denials-policy.toml");
    std::fs::write(&policy, test_policy(&[])).unwrap();
    Command::new("nsenter")
        .arg(format!("--net={}", topo.ctr_netns_path().display()))
        .arg(bin_path("egress-agent"))
        .arg("exec")
        .arg("--policy")
        .arg(&policy)
        .args(args)
        .env("EGRESS_STATE_DIR", topo.workdir().join("state"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn denial_lines(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.starts_with("egress-agent: denied") || l.contains("denial(s) of"))
        .map(String::from)
        .collect()
}

#[test]
fn exec_prints_one_line_per_denial_and_trust_ca_gets_the_403_inside_tls() {
    require_root!();
    let topo = Topology::new("deny_exec");
    let net = topo.start_fakenet();
    let ca = ca(&net);
    let loop3 = "for i in 1 2 3; do curl -sS --max-time 10 https://other.test/lab; echo; done; \
                 curl -sS --max-time 10 http://never.test/ >/dev/null";
    // Without enforcement other.test answers (never.test does not exist anywhere).
    let direct = topo
        .ctr_command("curl")
        .args(["-sS", "--cacert", &ca, "https://other.test/lab"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&direct.stdout).contains("198.51.100.11:443"));

    let _t = egress_tests::threat_guard("C", "denied HTTPS name under exec --trust-ca");
    let out = exec(&topo, &["--trust-ca", "--", "sh", "-c", loop3]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The client got as far as HTTP: the 403's JSON body, three times.
    assert_eq!(
        stdout.matches("\"error\":\"host_not_allowed\"").count(),
        3,
        "{stdout}"
    );
    assert!(stdout.contains("\"host\":\"other.test\""), "{stdout}");
    // exec's stderr: one line for other.test (its DNS answers and connections are one
    // denial, rate-limited), one for never.test, and at exit the count left out.
    let lines = denial_lines(&out.stderr);
    let about = |n: &str| lines.iter().filter(|l| l.contains(n)).count();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("egress-agent: denied other.test")
                && l.contains("host_not_allowed")
                && l.contains("to allow: add \"other.test\" to [profile.default] allow")),
        "{lines:#?}"
    );
    assert_eq!(about("denied other.test"), 1, "{lines:#?}");
    assert_eq!(about("denied never.test"), 1, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("more host_not_allowed denial(s) of other.test were not shown")),
        "{lines:#?}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("egress::deny"),
        "one line per denial, not two"
    );
    // Not under --trust-ca: the alert that means denied; --quiet: no line at all.
    let out = exec(
        &topo,
        &["--quiet", "--", "curl", "-sS", "https://other.test/"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("alert access denied"));
    assert!(denial_lines(&out.stderr).is_empty(), "{out:?}");
    assert!(!net.was_queried("never.test"));
}

/// The kernel's cost of DNS attribution (eg_dns_src), measured with `BPF_ENABLE_STATS`: ns per
/// run of the egress backstop and of sendmsg4 over 3,000 DNS datagrams. Not a check (timings
/// on a shared machine): run it by hand, with `EGRESS_BIN_DIR` pointing at a build without the
/// map for the figure before (`cargo test -p egress-tests --test denials -- --ignored cost`).
#[test]
#[ignore]
fn dns_attribution_cost_in_the_kernel() {
    require_root!();
    let topo = Topology::new("deny_cost");
    let _net = topo.start_fakenet();
    let _agent = Agent::attach(&topo, &test_policy(&[]));
    let _stats = egress_agent::bpf::enable_run_time_stats().expect("BPF_ENABLE_STATS");
    let script = "import socket,struct\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(2)\nq=struct.pack('>HHHHHH',1,0x100,1,0,0,0)+b'\\x06egress\\x08internal\\x00\\x00\\x01\\x00\\x01'\nfor i in range(3000):\n  s.sendto(q,('203.0.113.53',53)); s.recv(512)\nprint('{}')";
    let before = cgroup_prog_stats(topo.ctr_cgroup_path());
    python(&topo, script, &[], &[]);
    let after = cgroup_prog_stats(topo.ctr_cgroup_path());
    for (ty, (t1, n1)) in &after {
        let (t0, n0) = before.get(ty).copied().unwrap_or((0, 0));
        if n1 > &n0 {
            println!(
                "{ty}: {} runs, {:.0} ns per run",
                n1 - n0,
                (t1 - t0) as f64 / (n1 - n0) as f64
            );
        }
    }
}

/// attach type -> (run_time_ns, run_cnt) of the programs attached to `cg`.
fn cgroup_prog_stats(cg: &std::path::Path) -> std::collections::BTreeMap<String, (u64, u64)> {
    let out = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(cg)
        .arg("--json")
        .output()
        .unwrap();
    let progs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut m = std::collections::BTreeMap::new();
    for p in progs {
        let id = p["id"].to_string();
        let out = Command::new("bpftool")
            .args(["prog", "show", "id", &id, "--json"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        m.insert(
            p["attach_type"].as_str().unwrap_or("?").to_string(),
            (
                v["run_time_ns"].as_u64().unwrap_or(0),
                v["run_cnt"].as_u64().unwrap_or(0),
            ),
        );
    }
    m
}

/// A client that sends its ClientHello late (a cold JVM on a loaded machine: > 500 ms after
/// connecting) to a destination no opaque rule could allow is waited for, not taken for a
/// server-first protocol and reset.
#[test]
fn a_slow_client_hello_is_waited_for() {
    require_root!();
    let topo = Topology::new("deny_slow_hello");
    let net = topo.start_fakenet();
    let ca = ca(&net);
    let script = "import socket,ssl,sys,time,json\ns=socket.create_connection(('198.51.100.10',443),timeout=10)\ntime.sleep(1.5)\nc=ssl.create_default_context(cafile=sys.argv[1])\nt=c.wrap_socket(s,server_hostname='allowed.test')\nt.sendall(b'GET /slow HTTP/1.1\\r\\nHost: allowed.test\\r\\nConnection: close\\r\\n\\r\\n')\nprint(json.dumps({'reply':t.recv(100).decode(errors='replace')}))";
    let v = python(&topo, script, &[&ca], &[]);
    assert!(
        v["reply"].as_str().unwrap().starts_with("HTTP/1.1 200"),
        "direct: {v}"
    );
    let _agent = Agent::attach(&topo, &test_policy(&[]));
    let v = python(&topo, script, &[&ca], &[]);
    assert!(
        v["reply"].as_str().unwrap().starts_with("HTTP/1.1 200"),
        "{v}"
    );
}

/// Under `exec --trust-ca` a client that still rejects the agent's CA reads a store of its
/// own (here Python with an explicit cafile): the record's hint says so, and does not send it
/// back to `--trust-ca`. The same client trusting the server's CA succeeds without exec.
#[test]
fn a_client_with_its_own_store_under_trust_ca_is_told_to_use_the_bundle() {
    require_root!();
    let topo = Topology::new("deny_own_store");
    let net = topo.start_fakenet();
    let ca = ca(&net);
    let script = "import socket,ssl,sys,json\nc=ssl.create_default_context(cafile=sys.argv[1])\ntry:\n t=c.wrap_socket(socket.create_connection(('allowed.test',443),timeout=10),server_hostname='allowed.test'); print(json.dumps({'ok':True}))\nexcept Exception as e: print(json.dumps({'ok':False,'error':str(e)}))";
    let v = python(&topo, script, &[&ca], &[]);
    assert_eq!(v["ok"], true, "direct: {v}");
    let policy = topo.workdir().join("inspect.toml");
    let upstream = format!("upstream_ca = {:?}\n", ca);
    std::fs::write(
        &policy,
        test_policy(&[]).replace(
            "[profile.default]\n",
            &format!("{upstream}[profile.default]\ninspect = [\"allowed.test\"]\n"),
        ),
    )
    .unwrap();
    let audit = topo.workdir().join("own-store.jsonl");
    let out = Command::new("nsenter")
        .arg(format!("--net={}", topo.ctr_netns_path().display()))
        .arg(bin_path("egress-agent"))
        .args(["exec", "--trust-ca", "--policy"])
        .arg(&policy)
        .arg("--audit-log")
        .arg(&audit)
        .args(["--", "python3", "-c", script, &ca])
        .env("EGRESS_STATE_DIR", topo.workdir().join("state"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"ok\": false"),
        "{out:?}"
    );
    let recs = egress_tests::agent::read_jsonl(&audit);
    let rec = recs
        .iter()
        .find(|r| r["code"] == "client_rejected_ca")
        .unwrap_or_else(|| panic!("{recs:#?}"));
    let hint = rec["hint"].as_str().unwrap();
    assert!(
        hint.contains("a store of its own") && hint.contains("trust/bundle.pem"),
        "{rec}"
    );
    assert!(!hint.contains("--trust-ca"), "{rec}");
    let lines = denial_lines(&out.stderr);
    assert!(
        lines.iter().any(|l| l.contains("client_rejected_ca")),
        "{out:?}"
    );
}
