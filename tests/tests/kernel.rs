//! Kernel layer (issue: C eBPF programs on the container cgroup): every attack is
//! run once WITHOUT the enforcer (it must work: the set-up is sound) and once WITH
//! it (it must fail the documented way: EPERM at the syscall).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use egress_agent::addr::{AddrPolicy, Verdict};
use egress_tests::{
    addrs::*,
    agent::{attached_programs, test_policy, Agent},
    require_root, threat,
    topology::Topology,
};
use serde_json::Value;

const EPERM: i64 = 1;

fn errno(v: &Value) -> Option<i64> {
    v["errno"].as_i64()
}

fn assert_eperm(v: &Value, what: &str) {
    assert_eq!(errno(v), Some(EPERM), "{what}: expected EPERM, got {v}");
}

fn target(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

#[test]
fn tcp_is_redirected_with_the_exact_original_destination_and_getpeername_hides_it() {
    if !require_root() {
        return;
    }
    let topo = Topology::new("kernel_redirect");
    let net = topo.start_fakenet();
    // Without the enforcer the fake internet answers directly.
    let direct = topo.probe(&["tcp", &target(WEB1.into(), 7), "--send", "hi", "--read"]);
    assert_eq!(direct["ok"], true, "{direct}");

    let agent = Agent::attach(&topo, &test_policy(&[]));
    let cases = [
        (target(WEB1.into(), 8080), vec![]),
        (target(WEB2_V6.into(), 8080), vec![]),
        // An AF_INET6 TCP socket to a v4-mapped address goes through connect6.
        (target(WEB2.into(), 9999), vec!["--v6-socket"]),
    ];
    for (dst, extra) in &cases {
        let mut args = vec!["tcp", dst.as_str()];
        args.extend(extra.iter().copied());
        let v = topo.probe(&args);
        // getpeername returns what the client asked for, not 127.0.0.1:P.
        let expect_peer = if extra.contains(&"--v6-socket") {
            let s: std::net::SocketAddrV4 = dst.parse().unwrap();
            format!("[::ffff:{}]:{}", s.ip(), s.port())
        } else {
            dst.clone()
        };
        assert_eq!(
            v["peer"],
            expect_peer.as_str(),
            "getpeername for {dst}: {v}"
        );
    }
    let recs = agent.audit_records(3);
    for (dst, extra) in &cases {
        let want = if extra.contains(&"--v6-socket") {
            let s: std::net::SocketAddrV4 = dst.parse().unwrap();
            format!("[::ffff:{}]:{}", s.ip(), s.port())
        } else {
            dst.clone()
        };
        let rec = recs
            .iter()
            .find(|r| r["orig_dst"] == want.as_str())
            .unwrap_or_else(|| panic!("no audit record with orig_dst {want}: {recs:?}"));
        assert_eq!(rec["comm"], "probe", "{rec}");
        assert!(rec["pid"].as_u64().unwrap() > 0, "{rec}");
    }
    // Opaque TCP with no name never reached the fake internet.
    threat(
        "C",
        "opaque TCP to an address never given by the agent's DNS",
        net.connections_to(WEB2.into()).is_empty(),
    );
    assert!(net.connections_to(WEB2.into()).is_empty());
}

/// Every range of the deny table at its edges: first and last address, and the
/// addresses just outside. The kernel must agree with the Rust classifier
/// (which the interceptor uses after DNS) on every one of them.
#[test]
fn kernel_and_rust_classifier_agree_on_every_range_edge() {
    if !require_root() {
        return;
    }
    let topo = Topology::new("kernel_edges");
    let _net = topo.start_fakenet();
    // No exemptions here: the TEST-NETs are denied like every documentation range.
    let policy = "resolver = \"203.0.113.53:53\"\n[profile.default]\nallow = [\"allowed.test\"]\n";
    let _agent = Agent::attach(&topo, policy);
    let rust = AddrPolicy::new(Vec::<String>::new()).unwrap();

    let mut addrs: Vec<IpAddr> = Vec::new();
    for (net, _, _) in egress_agent::addr::deny_entries() {
        let (first, last) = (net.network(), net.broadcast());
        addrs.extend([first, last]);
        addrs.extend(step(first, -1));
        addrs.extend(step(last, 1));
    }
    // Embedded IPv4 in every IPv6 spelling.
    let embedded = [
        "::ffff:10.0.0.1",
        "::ffff:0:10.0.0.1",
        "::10.0.0.1",
        "64:ff9b::a00:1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1:a00:1::",
        "64:ff9b:1:0:a:1::",
        "2002:a00:1::1",
        "2002:a9fe:a9fe::1",
        "2001:0:a00:1::1",
        "2001:0:c633:640a::f5ff:fffe",
        "::",
        "::1",
        "64:ff9b::c633:640a",
        "2002:c633:640a::1",
    ];
    addrs.extend(embedded.iter().map(|s| s.parse::<IpAddr>().unwrap()));
    addrs.sort();
    addrs.dedup();

    let mut disagreements = Vec::new();
    let mut denied = 0;
    for ip in &addrs {
        let expect_denied = matches!(rust.classify(*ip), Verdict::Denied { .. });
        // Mapped addresses must go through an AF_INET6 socket to be spelled that way.
        let mut args = vec![
            "tcp".to_string(),
            target(*ip, 80),
            "--timeout-ms".into(),
            "300".into(),
        ];
        if ip.is_ipv6() {
            args.push("--v6-socket".into());
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let v = topo.probe(&a);
        let got_denied = errno(&v) == Some(EPERM);
        if got_denied {
            denied += 1;
        }
        if got_denied != expect_denied {
            disagreements.push(format!("{ip}: rust {:?}, kernel {}", rust.classify(*ip), v));
        }
    }
    threat(
        "B",
        "every special-purpose range edge and embedded-IPv4 spelling (kernel = classifier)",
        disagreements.is_empty(),
    );
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    assert!(
        denied > addrs.len() / 2,
        "suspiciously few denials: {denied} of {}",
        addrs.len()
    );
}

fn step(ip: IpAddr, by: i128) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v4) => {
            let n = u32::from(v4) as i128 + by;
            (0..=u32::MAX as i128)
                .contains(&n)
                .then(|| IpAddr::V4(Ipv4Addr::from(n as u32)))
        }
        IpAddr::V6(v6) => {
            let n = u128::from(v6) as i128;
            // i128 cannot hold every u128: step only where it fits, which covers the table.
            let m = n.checked_add(by)?;
            (m >= 0).then(|| IpAddr::V6(Ipv6Addr::from(m as u128)))
        }
    }
}

/// Each attack: works without the enforcer, EPERM with it.
#[test]
fn kernel_refuses_the_ways_around_the_hooks() {
    if !require_root() {
        return;
    }
    let topo = Topology::new("kernel_bypass");
    let _net = topo.start_fakenet();
    // The sandbox may ping (the way unprivileged containers usually can).
    let _ = std::process::Command::new("nsenter")
        .arg(format!("--net={}", topo.ctr_netns_path().display()))
        .args(["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"])
        .status();
    let private = target(PRIVATE.into(), 80);
    let metadata = target(METADATA.into(), 80);
    let udp_echo = target(WEB1.into(), 4433);
    let attacks: Vec<(&str, Vec<String>)> = vec![
        ("metadata", vec!["tcp".into(), metadata.clone()]),
        ("private", vec!["tcp".into(), private.clone()]),
        (
            "v4-mapped tcp",
            vec!["tcp".into(), private.clone(), "--v6-socket".into()],
        ),
        (
            "tfo sendto",
            vec![
                "tfo-sendto".into(),
                private.clone(),
                "--send".into(),
                "x".into(),
            ],
        ),
        ("tfo connect", vec!["tfo-connect".into(), private.clone()]),
        (
            "io_uring connect",
            vec!["uring-connect".into(), private.clone()],
        ),
        (
            "udp sendto",
            vec![
                "udp-sendto".into(),
                udp_echo.clone(),
                "--expect-reply".into(),
            ],
        ),
        (
            "udp sendmmsg",
            vec!["udp-sendmmsg".into(), udp_echo.clone()],
        ),
        (
            "udp connect+send",
            vec!["udp-connect-send".into(), udp_echo.clone()],
        ),
        (
            "v4-mapped udp",
            vec![
                "udp-sendto".into(),
                udp_echo.clone(),
                "--v6-socket".into(),
                "--expect-reply".into(),
            ],
        ),
        ("ping socket", vec!["ping-socket".into(), WEB1.to_string()]),
        ("raw socket", vec!["raw-socket".into(), WEB1.to_string()]),
        // Source routes to the private server through an allowed-looking first hop.
        (
            "ip options lsrr",
            vec![
                "ip-options".into(),
                private.clone(),
                "--via".into(),
                WEB2.to_string(),
            ],
        ),
        (
            "ipv6 routing header",
            vec![
                "rthdr".into(),
                "[fd66::10]:80".into(),
                "--via".into(),
                WEB2_V6.to_string(),
            ],
        ),
        (
            "new user+net namespace",
            vec!["unshare-connect".into(), metadata.clone()],
        ),
    ];
    // Without the enforcer.
    let mut baseline = Vec::new();
    for (name, args) in &attacks {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let v = topo.probe(&a);
        baseline.push(v.clone());
        // In a fresh network namespace there is no route at all: the attack is
        // "not EPERM" there, it cannot succeed without the enforcer either.
        if *name != "new user+net namespace" {
            assert_ne!(errno(&v), Some(EPERM), "{name} without the enforcer: {v}");
        }
    }
    for (i, (name, _)) in attacks.iter().enumerate() {
        if [
            "metadata",
            "private",
            "udp sendto",
            "ping socket",
            "tfo sendto",
        ]
        .contains(name)
        {
            assert_eq!(
                baseline[i]["ok"], true,
                "{name} must work without the enforcer: {}",
                baseline[i]
            );
        }
    }
    let _agent = Agent::attach(&topo, &test_policy(&[]));
    for (name, args) in &attacks {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let v = topo.probe(&a);
        let class = if ["metadata", "private"].contains(name) {
            "B"
        } else {
            "A"
        };
        threat(class, name, errno(&v) == Some(EPERM));
        assert_eperm(&v, name);
    }
    // Broadcast and multicast UDP.
    for dst in ["255.255.255.255:9", "224.0.0.251:5353", "[ff02::fb]:5353"] {
        let v = topo.probe(&["udp-sendto", dst]);
        threat(
            "D",
            &format!("broadcast/multicast UDP to {dst}"),
            errno(&v) == Some(EPERM),
        );
        assert_eperm(&v, dst);
    }
}

#[test]
fn dns_to_any_resolver_reaches_the_agent_and_the_reply_comes_from_the_resolver_asked() {
    if !require_root() {
        return;
    }
    let topo = Topology::new("kernel_dns");
    let net = topo.start_fakenet();
    let _agent = Agent::attach(&topo, &test_policy(&[]));
    let cases: [(&str, &[&str]); 6] = [
        ("8.8.8.8", &[]),
        ("8.8.8.8", &["--connected"]),
        ("10.255.255.53", &[]),
        ("2001:4860:4860::8888", &[]),
        ("2001:4860:4860::8888", &["--connected"]),
        ("8.8.8.8", &["--tcp"]),
    ];
    for (server, extra) in cases {
        let mut args = vec!["dns", server, "allowed.test", "--type", "A"];
        args.extend_from_slice(extra);
        let v = topo.probe(&args);
        assert_eq!(v["ok"], true, "{server} {extra:?}: {v}");
        assert_eq!(v["rcode_num"], 0, "{v}");
        assert!(v["answers"].to_string().contains("198.51.100.10"), "{v}");
        if !extra.contains(&"--tcp") {
            let ip: IpAddr = server.parse().unwrap();
            assert_eq!(
                v["from"],
                target(ip, 53).as_str(),
                "reply source for {server} {extra:?}: {v}"
            );
        }
    }
    // A name outside the policy: egress.internal's address + EDE 4 "Forged Answer" (the
    // default `dns_deny = "explain"`), never forwarded upstream.
    let v = topo.probe(&["dns", "8.8.8.8", "secret-data.exfil.test", "--type", "A"]);
    threat(
        "D",
        "DNS to an outside resolver for a tunnelling name",
        v["ips"] == serde_json::json!(["192.0.2.1"])
            && v["ede"][0]["info_code"] == 4
            && !net.was_queried("secret-data.exfil.test"),
    );
    assert_eq!(v["ips"], serde_json::json!(["192.0.2.1"]), "steered: {v}");
    assert_eq!(v["ede"][0]["info_code"], 4, "{v}");
    assert!(
        !net.was_queried("secret-data.exfil.test"),
        "a denied name reached the upstream resolver"
    );
}

#[test]
fn fail_closed_when_the_agent_dies_and_adopted_on_restart() {
    if !require_root() {
        return;
    }
    let topo = Topology::new("kernel_failclosed");
    let net = topo.start_fakenet();
    let mut agent = Agent::attach(&topo, &test_policy(&[]));
    assert!(
        agent.banner.contains("adopted pins: false"),
        "{}",
        agent.banner
    );
    let url = "http://allowed.test/";
    let curl = |topo: &Topology| {
        topo.ctr_command("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-m",
                "5",
                url,
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap()
    };
    assert_eq!(curl(&topo), "200");
    let programs = attached_programs(topo.ctr_cgroup_path());
    assert_eq!(
        programs.len(),
        egress_agent::bpf::PROGRAMS.len(),
        "{programs:?}"
    );

    agent.kill9();
    let before = net.connections_to(WEB1.into()).len();
    for _ in 0..5 {
        let v = topo.probe(&["tcp", &target(WEB1.into(), 80), "--timeout-ms", "500"]);
        threat(
            "E",
            "agent killed: redirected connection refused",
            v["ok"] == false,
        );
        assert_eq!(
            v["ok"], false,
            "a connection succeeded with the agent down: {v}"
        );
        let v = topo.probe(&["tcp", &target(METADATA.into(), 80)]);
        threat(
            "E",
            "agent killed: metadata still EPERM",
            errno(&v) == Some(EPERM),
        );
        assert_eperm(&v, "metadata with the agent down");
    }
    assert_eq!(
        net.connections_to(WEB1.into()).len(),
        before,
        "traffic reached the fake internet while the agent was down"
    );
    assert_eq!(
        attached_programs(topo.ctr_cgroup_path()).len(),
        egress_agent::bpf::PROGRAMS.len()
    );

    agent.restart_attach(&topo);
    assert!(
        agent.banner.contains("adopted pins: true"),
        "{}",
        agent.banner
    );
    let programs = attached_programs(topo.ctr_cgroup_path());
    threat(
        "E",
        "restart adopts the pins (no gap, no double attachment)",
        programs.len() == egress_agent::bpf::PROGRAMS.len(),
    );
    assert_eq!(
        programs.len(),
        egress_agent::bpf::PROGRAMS.len(),
        "attached twice? {programs:?}"
    );
    assert_eq!(curl(&topo), "200");
}

#[test]
fn a_child_cgroup_cannot_detach_or_override_the_programs() {
    if !require_root() {
        return;
    }
    let topo = Topology::new("kernel_child");
    let _net = topo.start_fakenet();
    let _agent = Agent::attach(&topo, &test_policy(&[]));
    let child = topo.ctr_cgroup_path().join("child");
    std::fs::create_dir_all(&child).unwrap();

    // An allow-everything connect4 program, attached to the child cgroup.
    let dir = topo.workdir();
    let src = dir.join("allow_all.c");
    std::fs::write(
        &src,
        "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n\
         SEC(\"cgroup/connect4\") int allow_all(struct bpf_sock_addr *ctx) { return 1; }\n\
         char LICENSE[] SEC(\"license\") = \"GPL\";\n",
    )
    .unwrap();
    let obj = dir.join("allow_all.o");
    let ok = std::process::Command::new("clang-19")
        .args([
            "-target",
            "bpf",
            "-O2",
            "-c",
            "-I/usr/include/x86_64-linux-gnu",
        ])
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .status()
        .unwrap()
        .success();
    assert!(ok, "compiling the test program");
    let pin = format!("/sys/fs/bpf/egress-test-allow-{}", topo.id());
    let run = |args: &[&str]| {
        std::process::Command::new("bpftool")
            .args(args)
            .output()
            .unwrap()
    };
    assert!(run(&[
        "prog",
        "load",
        obj.to_str().unwrap(),
        &pin,
        "type",
        "cgroup/connect4"
    ])
    .status
    .success());
    let child_s = child.to_str().unwrap();
    let attached = run(&[
        "cgroup", "attach", child_s, "connect4", "pinned", &pin, "multi",
    ]);
    // Override mode must be refused below our programs.
    let overridden = run(&[
        "cgroup", "attach", child_s, "connect4", "pinned", &pin, "override",
    ]);
    threat(
        "A",
        "child cgroup attaches an override program",
        !overridden.status.success(),
    );
    assert!(
        !overridden.status.success(),
        "override attach in a child succeeded"
    );

    // A process in the child still cannot reach the metadata service.
    let v =
        egress_tests::topology::run_probe_in(&topo, &child, &["tcp", &target(METADATA.into(), 80)]);
    threat(
        "A",
        "child cgroup with its own allow-all connect4",
        errno(&v) == Some(EPERM),
    );
    assert_eperm(
        &v,
        "metadata from a child cgroup with its own allow-all program",
    );
    // Our programs cannot be detached from the child.
    let ours = run(&["cgroup", "show", topo.ctr_cgroup_path().to_str().unwrap()]);
    let id = String::from_utf8_lossy(&ours.stdout)
        .lines()
        .find(|l| l.contains("egress_connect4"))
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .expect("our connect4 program id");
    let detach = run(&["cgroup", "detach", child_s, "connect4", "id", &id]);
    threat(
        "A",
        "child cgroup detaches the enforcer's program",
        !detach.status.success(),
    );
    assert!(
        !detach.status.success(),
        "detached our program from a child"
    );
    let _ = std::fs::remove_file(&pin);
    if attached.status.success() {
        let _ = run(&["cgroup", "detach", child_s, "connect4", "pinned", &pin]);
    }
}

/// 2,000 concurrent connections from two containers (two cgroups, two network
/// namespaces, so their source ports collide) through one agent: every one is
/// attributed to its own cgroup and its own original destination.
#[test]
fn two_thousand_concurrent_connections_from_two_cgroups_map_exactly() {
    if !require_root() {
        return;
    }
    let a = Topology::new("kernel_many_a");
    let b = Topology::new("kernel_many_b");
    let _net_a = a.start_fakenet();
    let agent = Agent::daemon(&[&a, &b], &test_policy(&[]));
    let dst_a = target(WEB1.into(), 1000);
    let dst_b = target(WEB2.into(), 2000);
    let run = |t: &Topology, dst: String| {
        let mut cmd = t.ctr_command(egress_tests::bin_path("probe"));
        cmd.args([
            "--timeout-ms",
            "30000",
            "many",
            &dst,
            "--count",
            "1000",
            "--concurrency",
            "1000",
            "--send",
            "x",
        ]);
        std::thread::spawn(move || cmd.output().unwrap())
    };
    let (ha, hb) = (run(&a, dst_a.clone()), run(&b, dst_b.clone()));
    let (oa, ob) = (ha.join().unwrap(), hb.join().unwrap());
    let parse = |o: std::process::Output| -> Value {
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|_| panic!("probe many: {}", String::from_utf8_lossy(&o.stderr)))
    };
    let (va, vb) = (parse(oa), parse(ob));
    let ports = |v: &Value| -> std::collections::BTreeSet<u64> {
        v["conns"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c[1].as_u64())
            .collect()
    };
    let (pa, pb) = (ports(&va), ports(&vb));
    assert_eq!(
        pa.len() + pb.len(),
        2000,
        "every connection was established: {} + {}",
        pa.len(),
        pb.len()
    );
    let collisions = pa.intersection(&pb).count();

    let recs = agent.audit_records(2000);
    let cg_a = std::fs::metadata(a.ctr_cgroup_path())
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let mut seen = std::collections::HashMap::new();
    for r in recs
        .iter()
        .filter(|r| r["protocol"] != "kernel" && r["protocol"] != "dns")
    {
        let port: u64 = r["client"]
            .as_str()
            .and_then(|c| c.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap();
        let (want_dst, ports) = if r["cgroup_id"] == cg_a {
            (&dst_a, &pa)
        } else {
            (&dst_b, &pb)
        };
        let exact = r["orig_dst"] == want_dst.as_str() && ports.contains(&port);
        if !exact {
            threat(
                "E",
                "original destination under load, colliding ports",
                false,
            );
        }
        assert_eq!(
            r["orig_dst"],
            want_dst.as_str(),
            "wrong original destination: {r}"
        );
        assert!(
            ports.contains(&port),
            "client port {port} not one of this container's: {r}"
        );
        *seen.entry(r["cgroup_id"].to_string()).or_insert(0) += 1;
    }
    threat(
        "E",
        "original destination under load, colliding ports",
        seen.values().sum::<i32>() == 2000,
    );
    assert_eq!(seen.values().sum::<i32>(), 2000, "{seen:?}");
    eprintln!("{collisions} source ports were used by both containers at once");
}
