//! Proves the harness itself, with NO enforcer: every server of the fake internet is reachable from the
//! container by every client the attack tests use (so an attack that fails under the enforcer failed
//! because of it), and a topology leaves nothing behind, even when the test panics.
//!
//! Privileged: skipped when not root, a failure under `CI=true`. Every test builds its own topology,
//! so they run in parallel.

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Output, Stdio};

use egress_tests::addrs::*;
use egress_tests::{bin_path, cleanup_stale, require_root, Topology};
use serde_json::Value;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn curl(topo: &Topology, args: &[&str]) -> Output {
    topo.ctr_command("curl")
        .args(["-sS", "--max-time", "5", "--noproxy", "*"])
        .args(args)
        .output()
        .expect("run curl (apt-get install curl)")
}

/// An HTTP/1.0 request: the server closes after answering, so `--read` ends at EOF.
fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.0\\r\\nHost: allowed.test\\r\\n\\r\\n")
}

fn assert_ok(v: &Value) {
    assert_eq!(v["ok"], true, "probe failed: {v}");
}

/// The JSON body of an HTTP response held in a probe's `reply`.
fn http_body(v: &Value) -> Value {
    let reply = v["reply"].as_str().unwrap_or_default();
    assert!(reply.starts_with("HTTP/1."), "not an HTTP reply: {v}");
    let body = reply.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {reply}"))
}

fn netns_names() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    stdout(&out)
}

fn assert_gone(id: &str, cgroup: &Path, pids: &[u32]) {
    let names = netns_names();
    for p in ["ctr-", "up-", "ag-"] {
        assert!(
            !names.contains(&format!("{p}{id}")),
            "netns {p}{id} left behind: {names}"
        );
    }
    assert!(!cgroup.exists(), "cgroup {} left behind", cgroup.display());
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for its parent (this test) to reap it.
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "process {pid} survived the topology: {stat}"
        );
    }
    assert!(!std::path::Path::new(&format!("/run/egress-tests/{id}")).exists());
}

#[test]
fn http_reaches_fake_internet_with_keepalive() {
    require_root!();
    let topo = Topology::new("http_keepalive");
    let fake = topo.start_fakenet();
    let out = curl(
        &topo,
        &[
            "http://198.51.100.10/hello?x=1",
            "http://198.51.100.10:80/second",
            "-H",
            "Host: allowed.test",
            "-H",
            "X-Test: 1",
        ],
    );
    assert!(out.status.success(), "curl failed: {out:?}");
    let text = stdout(&out);
    let bodies: Vec<Value> = serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .map(|v| v.unwrap())
        .collect();
    assert_eq!(bodies.len(), 2, "{text}");
    assert_eq!(bodies[0]["path"], "/hello?x=1");
    assert_eq!(bodies[0]["host"], "allowed.test");
    assert_eq!(bodies[0]["method"], "GET");
    assert_eq!(bodies[0]["server"], "198.51.100.10:80");
    assert_eq!(bodies[0]["tls"], false);
    assert!(bodies[0]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h[0] == "x-test" && h[1] == "1"));
    let peer = bodies[0]["peer"].as_str().unwrap();
    assert!(peer.starts_with(&format!("{CTR_LINK}:")), "{peer}");
    // Keep-alive: both requests on one connection.
    assert_eq!(bodies[1]["path"], "/second");
    assert_eq!(bodies[1]["peer"], bodies[0]["peer"]);
    assert_eq!(fake.connections_to(WEB1.into()).len(), 1);

    // The other servers, and IPv6.
    for url in [
        "http://198.51.100.11:8080/",
        "http://198.51.100.12/",
        "http://203.0.113.10/",
        "http://[2001:db8:100::10]/v6",
    ] {
        let out = curl(&topo, &[url]);
        assert!(out.status.success(), "{url}: {out:?}");
        let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(v["service"], "echo", "{url}");
    }
    // h2c with prior knowledge.
    let out = curl(
        &topo,
        &["--http2-prior-knowledge", "http://198.51.100.10/h2c"],
    );
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["version"], "HTTP/2.0");
}

#[test]
fn https_trusting_the_test_ca() {
    require_root!();
    let topo = Topology::new("https_test_ca");
    let fake = topo.start_fakenet();
    let ca = fake.ca_pem.to_str().unwrap();
    for (flag, alpn) in [("--http1.1", "http/1.1"), ("--http2", "h2")] {
        let out = curl(
            &topo,
            &[
                flag,
                "--cacert",
                ca,
                "--resolve",
                "www.allowed.test:443:198.51.100.10",
                "https://www.allowed.test/secure",
            ],
        );
        assert!(out.status.success(), "curl {flag}: {out:?}");
        let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(v["tls"], true);
        assert_eq!(v["sni"], "www.allowed.test");
        assert_eq!(v["alpn"], alpn);
        assert_eq!(v["host"], "www.allowed.test");
        assert_eq!(v["path"], "/secure");
        assert_eq!(v["server"], "198.51.100.10:443");
    }
    // Any SNI gets a certificate (SNI-based minting), on :8443 and over IPv6 too.
    let out = curl(
        &topo,
        &[
            "--cacert",
            ca,
            "--resolve",
            "anything.example:8443:[2001:db8:100::11]",
            "https://anything.example:8443/",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["sni"], "anything.example");
    // Without the CA, verification fails: the CA is really what makes it work.
    let out = curl(
        &topo,
        &[
            "--resolve",
            "www.allowed.test:443:198.51.100.10",
            "https://www.allowed.test/",
        ],
    );
    assert!(!out.status.success());
}

#[test]
fn metadata_and_private_servers_reachable() {
    require_root!();
    let topo = Topology::new("metadata_private");
    let fake = topo.start_fakenet();
    let v = topo.probe(&[
        "tcp",
        "169.254.169.254:80",
        "--send",
        &get("/latest/meta-data/iam/security-credentials/role"),
        "--read",
    ]);
    assert_ok(&v);
    let body = http_body(&v);
    assert_eq!(body["SecretAccessKey"], METADATA_SECRET);
    assert_eq!(
        body["request"]["path"],
        "/latest/meta-data/iam/security-credentials/role"
    );

    let v = topo.probe(&["tcp", "10.66.0.10:80", "--send", &get("/"), "--read"]);
    assert_ok(&v);
    assert!(v["reply"].as_str().unwrap().ends_with(PRIVATE_BODY), "{v}");
    assert_eq!(v["peer"], "10.66.0.10:80");
    assert!(v["local"].as_str().unwrap().starts_with("10.200.0.2:"));

    // IPv6 flavours.
    let v = topo.probe(&["tcp", "[fd00:ec2::254]:80", "--send", &get("/"), "--read"]);
    assert_ok(&v);
    assert_eq!(http_body(&v)["SecretAccessKey"], METADATA_SECRET);
    let v = topo.probe(&["tcp", "[fd66::10]:80", "--send", &get("/"), "--read"]);
    assert_ok(&v);

    assert_eq!(fake.connections_to(METADATA.into()).len(), 1);
    assert_eq!(fake.connections_to(PRIVATE.into()).len(), 1);
}

#[test]
fn v4_mapped_through_v6_socket() {
    require_root!();
    let topo = Topology::new("v4_mapped");
    let _fake = topo.start_fakenet();
    let v = topo.probe(&[
        "tcp",
        "10.66.0.10:80",
        "--v6-socket",
        "--send",
        &get("/"),
        "--read",
    ]);
    assert_ok(&v);
    assert_eq!(v["target"], "[::ffff:10.66.0.10]:80");
    assert_eq!(v["peer"], "[::ffff:10.66.0.10]:80");
    assert!(v["reply"].as_str().unwrap().ends_with(PRIVATE_BODY));
    // The explicit spelling parses the same way.
    let v = topo.probe(&[
        "tcp",
        "[::ffff:198.51.100.10]:80",
        "--send",
        &get("/m"),
        "--read",
    ]);
    assert_ok(&v);
    assert_eq!(http_body(&v)["path"], "/m");
    // UDP from an AF_INET6 socket to a mapped address.
    let v = topo.probe(&[
        "udp-sendto",
        "198.51.100.10:4433",
        "--v6-socket",
        "--expect-reply",
    ]);
    assert_ok(&v);
    assert_eq!(v["reply"], "ping");
    assert_eq!(v["from"], "[::ffff:198.51.100.10]:4433");
}

#[test]
fn dns_fake_server_and_resolv_conf_address() {
    require_root!();
    let topo = Topology::new("dns");
    let fake = topo.start_fakenet();
    let dns = DNS.to_string();

    let v = topo.probe(&["dns", &dns, "allowed.test"]);
    assert_ok(&v);
    assert_eq!(v["rcode"], "No Error");
    assert_eq!(v["ips"], serde_json::json!(["198.51.100.10"]));
    assert_eq!(v["from"], "203.0.113.53:53");
    assert_eq!(v["id_match"], true);
    assert_eq!(v["ede"], serde_json::json!([]));

    let v = topo.probe(&["dns", &dns, "www.allowed.test", "--type", "AAAA", "--tcp"]);
    assert_ok(&v);
    assert_eq!(v["ips"], serde_json::json!(["2001:db8:100::10"]));
    let v = topo.probe(&["dns", &dns, "other.test", "--connected"]);
    assert_eq!(v["ips"], serde_json::json!(["198.51.100.11"]), "{v}");
    let v = topo.probe(&["dns", &dns, "cdn.test", "--v6-socket"]);
    assert_eq!(v["ips"], serde_json::json!(["198.51.100.12"]), "{v}");
    assert_eq!(v["from"], "[::ffff:203.0.113.53]:53");
    let v = topo.probe(&["dns", &dns, "internal.test"]);
    assert_eq!(v["ips"], serde_json::json!(["10.66.0.10"]));
    let v = topo.probe(&["dns", &dns, "metadata.test"]);
    assert_eq!(v["ips"], serde_json::json!(["169.254.169.254"]));
    let v = topo.probe(&["dns", &dns, "nope.invalid"]);
    assert_ok(&v);
    assert_eq!(v["rcode_num"], 3, "{v}");
    // Rebinding: alternates public / private, TTL 0.
    let a = topo.probe(&["dns", &dns, "rebind.test"]);
    let b = topo.probe(&["dns", &dns, "rebind.test"]);
    let mut seen = vec![a["ips"][0].clone(), b["ips"][0].clone()];
    seen.sort_by_key(|x| x.to_string());
    assert_eq!(
        seen,
        vec![
            serde_json::json!("10.66.0.10"),
            serde_json::json!("198.51.100.10")
        ]
    );
    assert_eq!(a["answers"][0]["ttl"], 0);
    // Tunnelling zone: any label is answered.
    let v = topo.probe(&["dns", &dns, "c2VjcmV0.deadbeef.exfil.test"]);
    assert_eq!(v["ips"], serde_json::json!(["203.0.113.10"]), "{v}");

    // The query log saw every name, with the client's address.
    assert!(fake.was_queried("c2vjcmv0.deadbeef.exfil.test"));
    assert!(fake.was_queried("exfil.test"));
    assert!(!fake.was_queried("never-asked.test"));
    let q = fake.queries();
    assert!(q.iter().any(|q| q["name"] == "allowed.test"
        && q["type"] == "A"
        && q["client"].as_str().unwrap().starts_with("10.200.0.2:")));
    assert!(q.iter().any(|q| q["proto"] == "tcp"));

    // Unmodified tools resolve through the fake DNS via /etc/resolv.conf.
    if topo.resolv_nameservers().is_empty() {
        eprintln!("resolv.conf has only loopback nameservers: skipping the resolv.conf part");
        return;
    }
    let ns = topo.resolv_nameservers()[0].to_string();
    let v = topo.probe(&["dns", &ns, "api.allowed.test"]);
    assert_ok(&v);
    assert_eq!(v["ips"], serde_json::json!(["198.51.100.10"]));
    let out = topo
        .ctr_command("getent")
        .args(["ahostsv4", "other.test"])
        .output()
        .unwrap();
    assert!(stdout(&out).contains("198.51.100.11"), "getent: {out:?}");
    let out = topo
        .ctr_command("dig")
        .args(["+short", "+time=2", "+tries=1", "cdn.test"])
        .output()
        .expect("run dig (apt-get install dnsutils)");
    assert_eq!(stdout(&out).trim(), "198.51.100.12", "dig: {out:?}");
    let out = curl(&topo, &["http://allowed.test/by-name"]);
    assert!(out.status.success(), "{out:?}");
    let q = fake.queries();
    assert!(q.iter().any(|q| q["server"] == format!("{ns}:53")));
}

#[test]
fn udp_echo_all_send_paths() {
    require_root!();
    let topo = Topology::new("udp_echo");
    let fake = topo.start_fakenet();
    let v = topo.probe(&[
        "udp-sendto",
        "198.51.100.10:4433",
        "--send",
        "quic?",
        "--expect-reply",
    ]);
    assert_ok(&v);
    assert_eq!(v["reply"], "quic?");
    assert_eq!(v["from"], "198.51.100.10:4433");
    let v = topo.probe(&["udp-connect-send", "198.51.100.10:443", "--expect-reply"]);
    assert_ok(&v);
    assert_eq!(v["peer"], "198.51.100.10:443");
    let v = topo.probe(&[
        "udp-sendmmsg",
        "198.51.100.10:4433",
        "--count",
        "3",
        "--expect-reply",
    ]);
    assert_ok(&v);
    assert_eq!(v["sent"], 3);
    let v = topo.probe(&["udp-sendto", "[2001:db8:100::10]:4433", "--expect-reply"]);
    assert_ok(&v);
    let udp = fake
        .connections()
        .into_iter()
        .filter(|c| c["service"] == "udp-echo")
        .count();
    assert_eq!(udp, 1 + 1 + 3 + 1);
}

#[test]
fn icmp_ping_and_raw_sockets() {
    require_root!();
    let topo = Topology::new("icmp");
    for addr in ["198.51.100.10", "2001:db8:100::10", "10.66.0.10"] {
        let v = topo.probe(&["ping-socket", addr]);
        assert_ok(&v);
        assert_eq!(v["reply"], true);
        assert_eq!(v["from"], addr);
    }
    let v = topo.probe(&["raw-socket"]);
    assert_ok(&v);
    let v = topo.probe(&["raw-socket", "198.51.100.11"]);
    assert_ok(&v);
    assert_eq!(v["reply"], true);
    let v = topo.probe(&["raw-socket", "--v6"]);
    assert_ok(&v);
}

#[test]
fn tcp_fast_open_and_io_uring_connect() {
    require_root!();
    let topo = Topology::new("tfo_uring");
    let _fake = topo.start_fakenet();
    let v = topo.probe(&[
        "tfo-sendto",
        "198.51.100.10:80",
        "--send",
        &get("/tfo-sendto"),
        "--read",
    ]);
    assert_ok(&v);
    assert_eq!(http_body(&v)["path"], "/tfo-sendto");
    let v = topo.probe(&[
        "tfo-connect",
        "198.51.100.11:80",
        "--send",
        &get("/tfo-connect"),
        "--read",
    ]);
    assert_ok(&v);
    assert_eq!(http_body(&v)["path"], "/tfo-connect");
    assert_eq!(v["peer"], "198.51.100.11:80");
    let v = topo.probe(&[
        "uring-connect",
        "10.66.0.10:80",
        "--send",
        &get("/"),
        "--read",
    ]);
    assert_ok(&v);
    assert!(v["reply"].as_str().unwrap().ends_with(PRIVATE_BODY));
    let v = topo.probe(&[
        "uring-connect",
        "[2001:db8:100::10]:80",
        "--send",
        &get("/u6"),
        "--read",
    ]);
    assert_ok(&v);
    // A refused io_uring connect reports its errno.
    let v = topo.probe(&["uring-connect", "198.51.100.10:9"]);
    assert_eq!(v["ok"], false);
    assert_eq!(v["errno"], libc::ECONNREFUSED);
    assert_eq!(v["stage"], "connect");
}

#[test]
fn tcp_echo_banner_and_unroutable() {
    require_root!();
    let topo = Topology::new("tcp_misc");
    let _fake = topo.start_fakenet();
    let v = topo.probe(&[
        "tcp",
        "198.51.100.10:7",
        "--send",
        "echo me",
        "--shut-wr",
        "--read",
    ]);
    assert_ok(&v);
    assert_eq!(v["reply"], "echo me");
    assert_eq!(v["eof"], true);
    let v = topo.probe(&["tcp", "198.51.100.10:25", "--read"]);
    assert_ok(&v);
    assert_eq!(v["reply"], BANNER);
    // Nothing beyond the island: the real internet is unreachable, fast.
    let v = topo.probe(&["--timeout-ms", "2000", "tcp", "192.0.2.1:80"]);
    assert_eq!(v["ok"], false);
    assert!(
        [libc::EHOSTUNREACH, libc::ENETUNREACH].contains(&(v["errno"].as_i64().unwrap() as i32)),
        "{v}"
    );
}

#[test]
fn source_routing_options_work_without_enforcer() {
    require_root!();
    let topo = Topology::new("source_route");
    let _fake = topo.start_fakenet();
    // LSRR: first hop 198.51.100.11, final destination the private server.
    let v = topo.probe(&[
        "ip-options",
        "10.66.0.10:80",
        "--via",
        "198.51.100.11",
        "--send",
        &get("/"),
        "--read",
    ]);
    assert_ok(&v);
    assert!(v["reply"].as_str().unwrap().ends_with(PRIVATE_BODY), "{v}");
    // IPv6 segment routing header through 2001:db8:100::11 to the private v6 server.
    let v = topo.probe(&[
        "rthdr",
        "[fd66::10]:80",
        "--via",
        "2001:db8:100::11",
        "--send",
        &get("/"),
        "--read",
    ]);
    assert_ok(&v);
    assert!(v["reply"].as_str().unwrap().ends_with(PRIVATE_BODY), "{v}");
    // RH0 is refused by the kernel itself.
    let v = topo.probe(&["rthdr", "[fd66::10]:80", "--type", "0"]);
    assert_eq!(v["ok"], false);
    assert_eq!(v["stage"], "setsockopt");
}

#[test]
fn unshare_connect_reports_errno() {
    require_root!();
    let topo = Topology::new("unshare");
    let v = topo.probe(&[
        "--timeout-ms",
        "1000",
        "unshare-connect",
        "198.51.100.10:80",
    ]);
    // A fresh netns has only lo: the fake internet is unreachable from it.
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["stage"], "connect");
    assert_eq!(v["errno"], libc::ENETUNREACH);
}

#[test]
fn two_thousand_concurrent_connections() {
    require_root!();
    let topo = Topology::new("many");
    let fake = topo.start_fakenet();
    let v = topo.probe(&[
        "--timeout-ms",
        "30000",
        "many",
        "198.51.100.10:7",
        "--count",
        "2000",
        "--concurrency",
        "2000",
        "--send",
        "conn {i}\\n",
    ]);
    assert_ok(&v);
    assert_eq!(v["succeeded"], 2000);
    let conns = v["conns"].as_array().unwrap();
    let mut ports = std::collections::HashSet::new();
    for c in conns {
        let i = c[0].as_u64().unwrap();
        assert_eq!(
            c[2],
            format!("conn {i}\n"),
            "connection {i} got another's reply"
        );
        assert!(ports.insert(c[1].as_u64().unwrap()));
    }
    assert_eq!(fake.connections_to(WEB1.into()).len(), 2000);
}

#[test]
fn ctr_command_runs_in_ctr_netns_and_cgroup() {
    require_root!();
    let topo = Topology::new("ctr_command");
    let out = topo
        .ctr_command("cat")
        .arg("/proc/self/cgroup")
        .output()
        .unwrap();
    let rel = topo
        .ctr_cgroup_path()
        .strip_prefix(egress_tests::cgroup2_root().unwrap())
        .unwrap()
        .to_path_buf();
    assert!(
        stdout(&out).contains(&format!("0::/{}", rel.display())),
        "{}",
        stdout(&out)
    );
    for (mut cmd, path) in [
        (topo.ctr_command("stat"), topo.ctr_netns_path()),
        (topo.up_command("stat"), topo.up_netns_path()),
        (topo.ag_command("stat"), topo.ag_netns_path()),
    ] {
        let out = cmd
            .args(["-L", "-c", "%i", "/proc/self/ns/net"])
            .output()
            .unwrap();
        let ino = std::fs::metadata(&path).unwrap().ino();
        assert_eq!(stdout(&out).trim(), ino.to_string());
    }
    // The agent's side reaches the fake internet too (its upstream dials).
    let _fake = topo.start_fakenet();
    let out = topo
        .ag_command(bin_path("probe"))
        .args([
            "tcp",
            "198.51.100.10:80",
            "--send",
            &get("/from-ag"),
            "--read",
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_ok(&v);
    assert!(v["local"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{AG_LINK}:")));
}

#[test]
fn topology_leaves_nothing_behind() {
    require_root!();
    let topo = Topology::new("leaves_nothing");
    let id = topo.id().to_string();
    let cgroup = topo.ctr_cgroup_path().to_path_buf();
    let fake = topo.start_fakenet();
    let mut pids = Vec::new();
    for mut cmd in [
        topo.ctr_command("sleep"),
        topo.ag_command("sleep"),
        topo.up_command("sleep"),
    ] {
        let child = cmd.arg("1000").stdin(Stdio::null()).spawn().unwrap();
        pids.push(child.id());
        std::mem::forget(child);
    }
    assert!(topo.ctr_pids().contains(&(pids[0] as i32)));
    assert!(netns_names().contains(&format!("ctr-{id}")));
    let workdir = topo.workdir().to_path_buf();
    assert!(workdir.exists());
    std::mem::forget(fake); // even an un-stopped fakenet is killed with the namespace
    drop(topo);
    assert_gone(&id, &cgroup, &pids);
    assert!(!workdir.exists());
}

#[test]
fn topology_cleans_up_when_the_test_panics() {
    require_root!();
    let seen = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(|| {
        let topo = Topology::new("panics");
        let child = topo.ctr_command("sleep").arg("1000").spawn().unwrap();
        *seen.lock().unwrap() = Some((
            topo.id().to_string(),
            topo.ctr_cgroup_path().to_path_buf(),
            child,
        ));
        panic!("test body fails");
    });
    assert!(r.is_err());
    let (id, cgroup, mut child) = seen.into_inner().unwrap().unwrap();
    assert_gone(&id, &cgroup, &[child.id()]);
    assert!(!child.wait().unwrap().success(), "killed, not exited");
}

#[test]
fn cleanup_stale_removes_leftovers_of_dead_runs() {
    require_root!();
    // A live topology of this process, which must survive.
    let live = Topology::new("cleanup_stale_live");
    // Fake a crashed run: an owner record with a dead pid, a namespace and a cgroup.
    let dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    let _ = dead.wait_with_output();
    let id = format!("{:06x}", (std::process::id() ^ 0xdead) & 0xff_ffff);
    std::fs::create_dir_all("/run/egress-tests").unwrap();
    std::fs::write(
        format!("/run/egress-tests/{id}"),
        format!("{dead_pid} crashed"),
    )
    .unwrap();
    let status = std::process::Command::new("ip")
        .args(["netns", "add", &format!("up-{id}")])
        .status()
        .unwrap();
    assert!(status.success());
    let cgroup = egress_tests::cgroup2_root()
        .unwrap()
        .join("egress-test")
        .join(&id);
    std::fs::create_dir_all(&cgroup).unwrap();
    let removed = cleanup_stale();
    // A test running in parallel may have called cleanup_stale (from Topology::new) first.
    assert!(
        removed.contains(&id) || !netns_names().contains(&format!("up-{id}")),
        "{removed:?}"
    );
    assert!(!removed.contains(&live.id().to_string()));
    assert_gone(&id, &cgroup, &[]);
    assert!(netns_names().contains(&format!("ctr-{}", live.id())));
    assert!(live.ctr_cgroup_path().exists());
}

#[test]
fn parallel_topologies_do_not_interfere() {
    require_root!();
    let handles: Vec<_> = (0..4)
        .map(|n| {
            std::thread::spawn(move || {
                let topo = Topology::new(&format!("parallel_{n}"));
                let fake = topo.start_fakenet();
                let path = format!("/from-topology-{n}");
                let v = topo.probe(&["tcp", "198.51.100.10:80", "--send", &get(&path), "--read"]);
                assert_ok(&v);
                assert_eq!(http_body(&v)["path"], path);
                // Each fake internet saw exactly its own container.
                let conns = fake.connections_to(IpAddr::from(WEB1));
                assert_eq!(conns.len(), 1, "{conns:?}");
                topo.id().to_string()
            })
        })
        .collect();
    let ids: std::collections::HashSet<String> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(ids.len(), 4);
}
