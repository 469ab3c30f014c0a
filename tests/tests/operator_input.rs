//! Bad operator input (DESIGN §9: "a one-line reason on stderr, exit 2, nothing half-applied"),
//! with the real binary: invalid and unknown policy keys, a missing cgroup, a pid that is gone,
//! a second agent for an enforced cgroup, detach of something not attached, a corrupt CA key.
//! A running agent is never disturbed: its traffic keeps working and its programs stay as they
//! were.

use std::process::{Command, Output};

use egress_tests::{
    addrs::*,
    agent::{attached_programs, test_policy, Agent},
    bin_path,
    clients::*,
    require_root, threat,
    topology::Topology,
};

/// Runs the binary (standalone: a control socket path nobody serves) and returns its output.
fn run(topo: &Topology, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin_path("egress-agent"));
    cmd.args(args)
        .env("EGRESS_CONTROL", topo.workdir().join("nobody.sock"))
        .env("EGRESS_LOG", "warn")
        .envs(env.iter().copied());
    let out = cmd.output().unwrap();
    eprintln!(
        "egress-agent {}: {} stderr={:?}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Exit 2, exactly one line on stderr, containing every `needle`.
fn assert_refused(what: &str, out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: exit status; stderr {stderr:?}"
    );
    assert_eq!(lines.len(), 1, "{what}: one line expected: {stderr:?}");
    for n in needles {
        assert!(
            lines[0].to_lowercase().contains(&n.to_lowercase()),
            "{what}: {:?} should mention {n:?}",
            lines[0]
        );
    }
}

#[test]
fn bad_policies_are_refused_with_one_line_and_exit_2() {
    require_root!();
    let topo = Topology::new("op_policy");
    let dir = topo.workdir();
    let cases: &[(&str, &str, &[&str])] = &[
        ("not toml", "this is [ not toml", &["policy.toml"]),
        (
            "unknown top-level key",
            "resolvr = \"1.1.1.1:53\"\n[profile.default]\nallow = [\"a.test\"]\n",
            &["resolvr"],
        ),
        (
            "unknown profile key",
            "[profile.default]\nallow = [\"a.test\"]\nalow = [\"b.test\"]\n",
            &["alow"],
        ),
        (
            "wrong type",
            "[profile.default]\nallow = \"a.test\"\n",
            &["allow"],
        ),
        (
            "bad pattern",
            "[profile.default]\nallow = [\"exa mple.com\"]\n",
            &["exa mple.com"],
        ),
        (
            "bad port",
            "[profile.default]\nallow = [\"a.test:99999\"]\n",
            &["99999"],
        ),
        (
            "bad range",
            "allow_ranges = [\"10.0.0.0/33\"]\n[profile.default]\nallow = [\"a.test\"]\n",
            &["10.0.0.0/33"],
        ),
        (
            "bad resolver",
            "resolver = \"not-an-address\"\n[profile.default]\nallow = [\"a.test\"]\n",
            &["resolver"],
        ),
        (
            "duplicate key",
            "[profile.default]\nallow = [\"a.test\"]\nallow = [\"b.test\"]\n",
            &["duplicate"],
        ),
    ];
    for (what, text, needles) in cases {
        let p = dir.join("policy.toml");
        std::fs::write(&p, text).unwrap();
        let out = run(&topo, &["policy", "check", p.to_str().unwrap()], &[]);
        assert_refused(what, &out, needles);
    }
    let out = run(&topo, &["policy", "check", "/nonexistent/policy.toml"], &[]);
    assert_refused("missing file", &out, &["/nonexistent/policy.toml"]);
    // A good one passes, for contrast.
    std::fs::write(dir.join("policy.toml"), test_policy(&[])).unwrap();
    let out = run(
        &topo,
        &["policy", "check", dir.join("policy.toml").to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn bad_attach_and_detach_targets_change_nothing() {
    require_root!();
    let topo = Topology::new("op_attach");
    let net = topo.start_fakenet();
    let policy = topo.workdir().join("p.toml");
    std::fs::write(&policy, test_policy(&[])).unwrap();
    let p = policy.to_str().unwrap();
    let cg = topo.ctr_cgroup_path().to_str().unwrap().to_string();
    let missing = format!("{cg}/no-such-child");

    let out = run(&topo, &["attach", "--cgroup", &missing, "--policy", p], &[]);
    assert_refused("missing cgroup", &out, &["no-such-child"]);
    let out = run(&topo, &["detach", "--cgroup", &missing], &[]);
    assert_refused("detach missing cgroup", &out, &["no-such-child"]);
    // A pid that has exited (and was reaped) by the time attach looks at it.
    let mut gone = topo.ctr_command("true").spawn().unwrap();
    let pid = gone.id().to_string();
    gone.wait().unwrap();
    let out = run(&topo, &["attach", "--pid", &pid, "--policy", p], &[]);
    assert_refused("exited pid", &out, &[&pid]);
    // Detach of a cgroup nothing enforces.
    let out = run(&topo, &["detach", "--cgroup", &cg], &[]);
    assert_refused("detach of a cgroup not attached", &out, &["not enforced"]);
    // An unknown profile: refused before anything is attached.
    let out = run(
        &topo,
        &[
            "attach",
            "--cgroup",
            &cg,
            "--netns",
            topo.ctr_netns_path().to_str().unwrap(),
            "--policy",
            p,
            "--profile",
            "nope",
        ],
        &[],
    );
    assert_refused("unknown profile", &out, &["nope"]);
    assert!(
        attached_programs(topo.ctr_cgroup_path()).is_empty(),
        "a refused attach left programs behind"
    );
    // Nothing happened to the container's traffic: still unenforced, reaches the fake internet.
    let v = topo.probe(&["tcp", &format!("{WEB1}:7"), "--send", "hi", "--read"]);
    assert_eq!(v["ok"], true, "{v}");
    drop(net);
}

#[test]
fn a_second_agent_for_an_enforced_cgroup_is_refused_and_the_first_keeps_working() {
    require_root!();
    let topo = Topology::new("op_double");
    let net = topo.start_fakenet();
    let agent = Agent::attach(&topo, &test_policy(&[]));
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
        let r = raw(
            &topo,
            &WEB2.to_string(),
            80,
            &http_get("other.test"),
            0,
            false,
        );
        assert_eq!(r.http_status(), Some(403), "{what}: {r:?}");
    };
    ok("first agent");
    let programs = attached_programs(topo.ctr_cgroup_path());
    let policy = topo.workdir().join("p2.toml");
    // A second agent that would allow everything the first denies.
    std::fs::write(&policy, test_policy(&["other.test"])).unwrap();
    let mut cmd = topo.ag_command(bin_path("egress-agent"));
    cmd.args(["attach", "--cgroup"])
        .arg(topo.ctr_cgroup_path())
        .arg("--netns")
        .arg(topo.ctr_netns_path())
        .arg("--policy")
        .arg(&policy)
        .env("EGRESS_CONTROL", topo.workdir().join("nobody.sock"))
        .env("EGRESS_LOG", "warn");
    let out = cmd.output().unwrap();
    eprintln!("second attach: {out:?}");
    threat(
        "E",
        "a second agent for an enforced cgroup (double attachment)",
        out.status.code() == Some(2),
    );
    assert_refused("second agent", &out, &["already enforced"]);
    ok("first agent after the refused second");
    assert_eq!(attached_programs(topo.ctr_cgroup_path()), programs);
    assert!(net.connections_to(WEB2.into()).is_empty());
    assert!(std::path::Path::new(&format!("/proc/{}", agent.pid())).exists());
    // `exec` is refused the same way? Not applicable: it makes its own cgroup.
}

#[test]
fn a_corrupt_ca_key_is_refused_with_one_line() {
    require_root!();
    let topo = Topology::new("op_ca");
    let state = topo.workdir().join("state");
    let env = [("EGRESS_STATE_DIR", state.to_str().unwrap())];
    let out = run(&topo, &["ca", "export"], &env);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let key = state.join("ca/ca.key");
    assert!(key.is_file(), "no CA key at {}", key.display());
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let out = run(&topo, &["ca", "export"], &env);
    assert_refused("corrupt CA key", &out, &["ca.key"]);
    // The operator's key is left for them to inspect, never silently replaced.
    assert!(std::fs::read_to_string(&key).unwrap().contains("garbage"));
}
