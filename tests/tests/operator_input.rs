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

/// Issue 17 §7: the upstream proxy keys and path globs get the same one-line errors; `policy
/// show` and `explain` print the proxy; a reload to a bad proxy key changes nothing.
#[test]
fn bad_proxy_keys_and_path_globs_are_refused_and_a_reload_changes_nothing() {
    require_root!();
    let topo = Topology::new("op_proxy");
    let net = topo.start_fakenet();
    let dir = topo.workdir();
    let base = test_policy(&[]);
    let p = dir.join("policy.toml");
    let path_rule = "inspect = [\"api.allowed.test\"]\n[[profile.default.http]]\n\
                     host = \"api.allowed.test\"\npaths = [\"/ok/%252e/*\"]\n";
    let cases: &[(&str, String, &[&str])] = &[
        (
            "https proxy",
            format!("upstream_proxy = \"https://proxy.test:3128\"\n{base}"),
            &["policy.toml:1:18:", "key `upstream_proxy`", "only http://"],
        ),
        (
            "credentials in the URL",
            format!("upstream_proxy = \"http://alice:pw@proxy.test:3128\"\n{base}"),
            &["key `upstream_proxy`", "upstream_proxy_auth"],
        ),
        (
            "private proxy address not exempted",
            format!("upstream_proxy = \"http://10.66.0.10:3128\"\n{base}"),
            &["key `upstream_proxy`", "deny set", "allow_ranges"],
        ),
        (
            "relative credentials file",
            format!(
                "upstream_proxy = \"http://proxy.test:3128\"\n\
                 upstream_proxy_auth = {{ file = \"proxy-auth\" }}\n{base}"
            ),
            &[
                "policy.toml:2:",
                "key `upstream_proxy_auth.file`",
                "absolute",
            ],
        ),
        (
            "credentials without a proxy",
            format!("upstream_proxy_auth = {{ file = \"/etc/proxy-auth\" }}\n{base}"),
            &["key `upstream_proxy_auth`", "without `upstream_proxy`"],
        ),
        (
            "bad exception pattern",
            format!(
                "upstream_proxy = \"http://proxy.test:3128\"\n\
                 no_upstream_proxy = [\"ok.test\", \"*\"]\n{base}"
            ),
            &[
                "policy.toml:2:33:",
                "key `no_upstream_proxy[1]`",
                "bare `*`",
            ],
        ),
        (
            "a path glob that can never match",
            format!("{base}{path_rule}"),
            &["key `profile.default.http[0].paths[0]`", "can never match"],
        ),
    ];
    for (what, text, needles) in cases {
        std::fs::write(&p, text).unwrap();
        let out = run(&topo, &["policy", "check", p.to_str().unwrap()], &[]);
        assert_refused(what, &out, needles);
    }

    // A good proxy policy: show prints the keys (never a credential), explain the route.
    let auth = dir.join("proxy-auth");
    std::fs::write(&auth, "alice:s3cr3t-never-shown\n").unwrap();
    let good = format!(
        "upstream_proxy = \"http://Proxy.Test:3128\"\n\
         upstream_proxy_auth = {{ file = \"{}\" }}\n\
         no_upstream_proxy = [\"*.allowed.test\"]\n{base}",
        auth.display()
    );
    std::fs::write(&p, &good).unwrap();
    let ps = p.to_str().unwrap();
    let out = run(&topo, &["policy", "show", ps], &[]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        shown.contains("upstream_proxy = \"http://proxy.test:3128\"")
            && shown.contains(&format!(
                "upstream_proxy_auth = {{ file = \"{}\" }}",
                auth.display()
            ))
            && shown.contains("no_upstream_proxy = [\"*.allowed.test\"]")
            && !shown.contains("s3cr3t"),
        "{shown}"
    );
    let out = run(&topo, &["explain", "allowed.test", "--policy", ps], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("allowed.test:443 route: CONNECT allowed.test:443 through upstream proxy http://proxy.test:3128 with upstream_proxy_auth"),
        "{text}"
    );
    let out = run(
        &topo,
        &["explain", "www.allowed.test:80", "--policy", ps],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("route: direct (no_upstream_proxy[0] \"*.allowed.test\")"),
        "{text}"
    );

    // A running agent asked to reload a bad proxy key keeps its policy: still direct, still
    // working (proxy.test does not even exist in this fake internet).
    let agent = Agent::attach(&topo, &base);
    let get = || {
        raw(
            &topo,
            &WEB1.to_string(),
            80,
            &http_get("allowed.test"),
            0,
            false,
        )
    };
    assert_eq!(get().http_status(), Some(200));
    std::fs::write(
        &agent.policy,
        format!("upstream_proxy = \"http://10.66.0.10:3128\"\n{base}"),
    )
    .unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &agent.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let refused = agent.wait_log("reload refused", std::time::Duration::from_secs(10));
    assert!(
        refused
            .as_deref()
            .is_some_and(|l| l.contains("upstream_proxy")),
        "{refused:?}"
    );
    let r = get();
    assert_eq!(r.http_status(), Some(200), "{r:?}");
    let recs = agent.audit_records(2);
    let last = recs
        .iter()
        .rev()
        .find(|r| r["protocol"] == "http")
        .expect("an http record");
    let direct = [format!("{WEB1}:80"), format!("[{WEB1_V6}]:80")];
    assert!(
        direct.iter().any(|d| last["upstream"] == d.as_str()),
        "still direct: {last}"
    );
    assert_eq!(last["policy"], "test-1");
    drop(net);
}
