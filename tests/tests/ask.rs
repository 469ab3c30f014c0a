//! Ask mode (issue 17 §2): a connection (or DNS question) the policy denies is held while an
//! operator decides with `egress-agent approve ID --once|--session|--save` / `deny ID` on the
//! daemon's control socket. `other.test` is not in the allow list: without the agent the
//! container reaches it; through the agent only an operator's approval lets it through, and
//! a timeout, a denial or a full register gives the normal denial.

use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use egress_tests::{
    agent::Agent, bin_path, clients::*, procstat, require_root, threat, topology::Topology,
};
use serde_json::Value;

const EXEMPT: &str = "resolver = \"203.0.113.53:53\"\n\
allow_ranges = [\"198.51.100.0/24\", \"203.0.113.0/24\", \"2001:db8:100::/48\"]\n";

fn ask_policy(timeout: &str, extra: &str) -> String {
    format!(
        "version = \"ask-1\"\n{EXEMPT}{extra}\n# the team's rules\n[profile.default]\nmode = \"ask\"\nask_timeout = \"{timeout}\"\nallow = [\"allowed.test\"]\n"
    )
}

fn cli(agent: &Agent, args: &[&str]) -> Output {
    agent
        .cli()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("egress-agent cli")
}

fn pending(agent: &Agent) -> Vec<Value> {
    let out = cli(agent, &["pending"]);
    assert!(out.status.success(), "pending: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits until a decision for `name` is pending with an id not in `not` (and at least
/// `waiting` waiters); panics after 30 s.
fn wait_pending(agent: &Agent, name: &str, not: &[u64], waiting: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(p) = pending(agent).into_iter().find(|p| {
            p["name"] == name
                && !not.contains(&p["id"].as_u64().unwrap_or(0))
                && p["waiting"].as_u64().unwrap_or(0) >= waiting
        }) {
            return p;
        }
        assert!(Instant::now() < deadline, "no pending decision for {name}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn id_of(p: &Value) -> String {
    p["id"].as_u64().expect("id").to_string()
}

/// Runs curl in the container while `decide` runs here (curl blocks while it is held).
fn held_curl<T>(topo: &Topology, args: &[&str], decide: impl FnOnce() -> T) -> (Curl, T) {
    std::thread::scope(|s| {
        let h = s.spawn(|| curl(topo, args, &[]));
        let t = decide();
        (h.join().unwrap(), t)
    })
}

const R80: &str = "other.test:80:198.51.100.11";

fn audit_with_ask(agent: &Agent, prefix: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<Value> = agent
            .audit_records(0)
            .into_iter()
            .filter(|r| r["ask"].as_str().is_some_and(|a| a.starts_with(prefix)))
            .collect();
        if !found.is_empty() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn approve_once_lets_the_held_connection_through_and_the_next_is_held_again() {
    require_root!();
    let topo = Topology::new("ask_once");
    let _net = topo.start_fakenet();
    // Without the agent, the container reaches a host its policy does not allow.
    let direct = curl(&topo, &["http://other.test/"], &[]);
    assert_eq!(direct.json()["server"], "198.51.100.11:80", "{direct:?}");

    let agent = Agent::daemon(&[&topo], &ask_policy("60s", ""));
    // The DNS question and the connection that follows wait for the same decision.
    let (c, first) = held_curl(&topo, &["--max-time", "40", "http://other.test/"], || {
        let p = wait_pending(&agent, "other.test", &[], 1);
        assert_eq!(p["profile"], "default", "{p}");
        let out = cli(&agent, &["approve", &id_of(&p), "--once"]);
        assert!(out.status.success(), "approve: {out:?}");
        p["id"].as_u64().unwrap()
    });
    assert_eq!(c.status, 200, "approved once: {c:?}");
    let server = c.json()["server"].as_str().unwrap_or("").to_string();
    assert!(
        server == "198.51.100.11:80" || server == "[2001:db8:100::11]:80",
        "{c:?}"
    );

    // The next one is held again, under a new id; denied, it gets the normal denial.
    let (c, ()) = held_curl(&topo, &["--max-time", "40", "http://other.test/"], || {
        let p2 = wait_pending(&agent, "other.test", &[first], 1);
        let out = cli(&agent, &["deny", &id_of(&p2)]);
        assert!(out.status.success(), "deny: {out:?}");
    });
    let v = c.json();
    let denied = c.status == 403 && v["error"] == "host_not_allowed";
    threat(
        "A",
        "ask mode: a denied approval lets nothing through",
        denied,
    );
    assert!(denied, "{c:?}");
    assert!(
        v["reason"].as_str().unwrap_or("").contains("denied by"),
        "{v}"
    );
    assert!(pending(&agent).is_empty());

    let approved = audit_with_ask(&agent, "approved:once");
    assert!(
        approved.iter().any(|r| r["decision"] == "allow"
            && r["name"] == "other.test"
            && r["protocol"] != "dns"),
        "{approved:?}"
    );
    let denied = audit_with_ask(&agent, "denied");
    assert!(denied.iter().any(|r| r["decision"] == "deny"), "{denied:?}");
    let m = String::from_utf8_lossy(&cli(&agent, &["metrics"]).stdout).into_owned();
    assert!(
        m.contains("egress_ask_decisions_total{profile=\"default\",outcome=\"approved:once\"}"),
        "{m}"
    );
    assert!(
        m.contains("egress_ask_decisions_total{profile=\"default\",outcome=\"denied\"}"),
        "{m}"
    );
}

#[test]
fn a_dns_question_waits_for_the_decision_and_shares_it_with_the_connection() {
    require_root!();
    let topo = Topology::new("ask_dns");
    let net = topo.start_fakenet();
    // Without the agent the name resolves (and is asked upstream at once).
    let d = topo.probe(&["dns", "203.0.113.53", "other.test"]);
    assert_eq!(
        d["ips"],
        serde_json::json!(["198.51.100.11"]),
        "direct: {d}"
    );
    let asked_before = net.queries().len();
    let agent = Agent::daemon(&[&topo], &ask_policy("60s", ""));
    let (d, p) = std::thread::scope(|s| {
        let q =
            s.spawn(|| topo.probe(&["--timeout-ms", "40000", "dns", "203.0.113.53", "other.test"]));
        let p = wait_pending(&agent, "other.test", &[], 1);
        assert_eq!(p["protocol"], "dns", "{p}");
        assert_eq!(
            net.queries().len(),
            asked_before,
            "a held name is never forwarded before the decision"
        );
        let out = cli(&agent, &["approve", &id_of(&p)]);
        assert!(out.status.success(), "approve: {out:?}");
        (q.join().unwrap(), p)
    });
    assert_eq!(d["ips"], serde_json::json!(["198.51.100.11"]), "{d}");
    // The connection that follows the approved question is the one approved: not held.
    let c = curl(&topo, &["--resolve", R80, "http://other.test/"], &[]);
    assert_eq!(c.status, 200, "{c:?}");
    assert!(pending(&agent).is_empty());
    // And only that one.
    let (c, ()) = held_curl(
        &topo,
        &["--max-time", "40", "--resolve", R80, "http://other.test/"],
        || {
            let p2 = wait_pending(&agent, "other.test", &[p["id"].as_u64().unwrap()], 1);
            assert_eq!(p2["protocol"], "http", "{p2}");
            assert!(cli(&agent, &["deny", &id_of(&p2)]).status.success());
        },
    );
    assert_eq!(c.status, 403, "{c:?}");
}

#[test]
fn a_timeout_is_the_normal_denial() {
    require_root!();
    let topo = Topology::new("ask_timeout");
    let _net = topo.start_fakenet();
    let direct = curl(&topo, &["--resolve", R80, "http://other.test/"], &[]);
    assert_eq!(direct.status, 200, "without the agent: {direct:?}");
    let agent = Agent::daemon(&[&topo], &ask_policy("1s", ""));
    let started = Instant::now();
    let c = curl(&topo, &["--resolve", R80, "http://other.test/"], &[]);
    let v = c.json();
    let denied = c.status == 403 && v["error"] == "host_not_allowed";
    threat(
        "A",
        "ask mode: no decision within ask_timeout denies",
        denied,
    );
    assert!(denied, "{c:?}");
    assert!(started.elapsed() >= Duration::from_secs(1), "it was held");
    let reason = v["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("other.test is not in the allow list of profile default")
            && reason.contains("no decision within ask_timeout 1s"),
        "{reason}"
    );
    assert_eq!(v["host"], "other.test");
    assert!(!audit_with_ask(&agent, "timeout#").is_empty());
    assert!(pending(&agent).is_empty(), "nothing is left pending");
}

#[test]
fn approve_save_writes_a_valid_rule_that_survives_a_restart() {
    require_root!();
    let topo = Topology::new("ask_save");
    let _net = topo.start_fakenet();
    let direct = curl(&topo, &["--resolve", R80, "http://other.test/"], &[]);
    assert_eq!(direct.status, 200, "without the agent: {direct:?}");
    let mut agent = Agent::daemon(&[&topo], &ask_policy("60s", ""));
    let before = std::fs::read_to_string(&agent.policy).unwrap();

    // A file made invalid behind the daemon's back: --save refuses, changes nothing.
    let broken = format!("{before}\nbogus_key = 1\n");
    let args = ["--max-time", "40", "--resolve", R80, "http://other.test/"];
    let (c, ()) = held_curl(&topo, &args, || {
        let p = wait_pending(&agent, "other.test", &[], 1);
        assert_eq!(p["rule"], "other.test", "{p}");
        std::fs::write(&agent.policy, &broken).unwrap();
        let out = cli(&agent, &["approve", &id_of(&p), "--save"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains("bogus_key"), "{err}");
        assert_eq!(std::fs::read_to_string(&agent.policy).unwrap(), broken);
        assert_eq!(pending(&agent).len(), 1, "still pending: nothing changed");
        // With the file back, --save writes the rule (commented), reloads, lets it through.
        std::fs::write(&agent.policy, &before).unwrap();
        let out = cli(&agent, &["approve", &id_of(&p), "--save"]);
        assert!(out.status.success(), "{out:?}");
    });
    assert_eq!(c.status, 200, "{c:?}");
    let saved = std::fs::read_to_string(&agent.policy).unwrap();
    assert!(
        saved.contains("# the team's rules"),
        "comments kept: {saved}"
    );
    assert!(
        saved.contains("# approved by") && saved.contains("\"other.test\","),
        "{saved}"
    );
    let check = Command::new(bin_path("egress-agent"))
        .args(["policy", "check"])
        .arg(&agent.policy)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let shown = String::from_utf8_lossy(&cli(&agent, &["policy", "show"]).stdout).into_owned();
    assert!(shown.contains("\"other.test\""), "{shown}");
    let dir = std::fs::read_dir(agent.policy.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("egress-save"))
        .count();
    assert_eq!(dir, 0, "no temporary file left");

    // Restarted on the saved file: allowed without asking.
    agent.stop();
    drop(agent);
    let agent = Agent::daemon(&[&topo], &saved);
    let c = curl(&topo, &["--resolve", R80, "http://other.test/"], &[]);
    assert_eq!(c.status, 200, "{c:?}");
    assert!(pending(&agent).is_empty());
    // Other ports are still asked about (the rule is exactly what was approved).
    let args = [
        "--max-time",
        "40",
        "--resolve",
        "other.test:7:198.51.100.11",
        "http://other.test:7/",
    ];
    let (c, ()) = held_curl(&topo, &args, || {
        let p = wait_pending(&agent, "other.test", &[], 1);
        assert_eq!(p["rule"], "other.test:7", "{p}");
        assert!(cli(&agent, &["deny", &id_of(&p)]).status.success());
    });
    assert_eq!(c.status, 403, "{c:?}");
}

#[test]
fn a_reload_that_allows_a_held_name_releases_it() {
    require_root!();
    let topo = Topology::new("ask_reload");
    let _net = topo.start_fakenet();
    let agent = Agent::daemon(&[&topo], &ask_policy("60s", ""));
    let metric = |agent: &Agent| {
        let m = String::from_utf8_lossy(&cli(agent, &["metrics"]).stdout).into_owned();
        m.lines()
            .find_map(|l| l.strip_prefix("egress_ask_pending ").map(str::to_string))
            .unwrap_or_else(|| panic!("no egress_ask_pending: {m}"))
    };
    let args = ["--max-time", "40", "--resolve", R80, "http://other.test/"];
    let started = Instant::now();
    let (c, ()) = held_curl(&topo, &args, || {
        wait_pending(&agent, "other.test", &[], 1);
        assert_eq!(metric(&agent), "1");
        let allowed = ask_policy("60s", "")
            .replace("ask-1", "ask-2")
            .replace("[\"allowed.test\"]", "[\"allowed.test\", \"other.test\"]");
        std::fs::write(&agent.policy, allowed).unwrap();
        let out = cli(&agent, &["reload"]);
        assert!(out.status.success(), "{out:?}");
    });
    assert_eq!(c.status, 200, "released by the reload: {c:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "released at once, not at the timeout"
    );
    assert!(pending(&agent).is_empty());
    assert_eq!(metric(&agent), "0");
    let released = audit_with_ask(&agent, "approved:once");
    assert!(
        released.iter().any(|r| r["rule"]
            .as_str()
            .is_some_and(|s| s.contains("by policy reload (ask-2)"))),
        "{released:?}"
    );
}

#[test]
fn approve_session_lasts_for_the_agent_and_is_not_written() {
    require_root!();
    let topo = Topology::new("ask_session");
    let _net = topo.start_fakenet();
    let direct = curl(&topo, &["--resolve", R80, "http://other.test/"], &[]);
    assert_eq!(direct.status, 200, "without the agent: {direct:?}");
    let agent = Agent::daemon(&[&topo], &ask_policy("60s", ""));
    let before = std::fs::read_to_string(&agent.policy).unwrap();
    let args = ["--max-time", "40", "--resolve", R80, "http://other.test/"];
    let (c, ()) = held_curl(&topo, &args, || {
        let p = wait_pending(&agent, "other.test", &[], 1);
        assert!(cli(&agent, &["approve", &id_of(&p), "--session"])
            .status
            .success());
    });
    assert_eq!(c.status, 200, "{c:?}");
    for _ in 0..3 {
        let c = curl(&topo, &["--resolve", R80, "http://other.test/"], &[]);
        assert_eq!(c.status, 200, "{c:?}");
    }
    assert!(pending(&agent).is_empty());
    assert_eq!(std::fs::read_to_string(&agent.policy).unwrap(), before);
    // Unknown ids and scopes are one line, exit 2.
    let out = cli(&agent, &["approve", "999999"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );
}

/// Opens `n` connections to exfil.test's address, each naming another host under it, and
/// keeps them open until each is answered; prints the statuses as one JSON line.
const HOLD_MANY_PY: &str = r#"
import json, socket, sys
n = int(sys.argv[1]); tag = sys.argv[2]
socks = []
for i in range(n):
    s = socket.create_connection(('203.0.113.10', 80), timeout=120)
    s.sendall(('GET / HTTP/1.1\r\nHost: h%d-%s.exfil.test\r\nConnection: close\r\n\r\n' % (i, tag)).encode())
    socks.append(s)
print('SENT', flush=True)
out = []
for s in socks:
    data = b''
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    except Exception as e:
        pass
    out.append(data.split(b' ')[1].decode() if data.startswith(b'HTTP/') else 'none')
print(json.dumps(out))
"#;

fn hold_many(topo: &Topology, n: usize, tag: &str) -> std::process::Child {
    let mut c = topo
        .ctr_command(PYTHON)
        .arg("-c")
        .arg(HOLD_MANY_PY)
        .arg(n.to_string())
        .arg(tag)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    let mut r = std::io::BufReader::new(c.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut r, &mut line).unwrap();
    assert_eq!(line.trim(), "SENT");
    c.stdout = Some(r.into_inner());
    c
}

fn statuses(c: std::process::Child) -> Vec<String> {
    let out = c.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    serde_json::from_str(text.lines().last().unwrap_or("[]")).unwrap_or_default()
}

fn wait_count(agent: &Agent, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while pending(agent).len() != n {
        assert!(Instant::now() < deadline, "never {n} pending");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_hundred_pending_decisions_are_bounded() {
    require_root!();
    let topo = Topology::new("ask_many");
    let _net = topo.start_fakenet();
    // Without the agent every one of these names reaches the server.
    let direct = curl(
        &topo,
        &[
            "--resolve",
            "extra.exfil.test:80:203.0.113.10",
            "http://extra.exfil.test/",
        ],
        &[],
    );
    assert_eq!(direct.status, 200, "without the agent: {direct:?}");
    let agent = Agent::daemon(&[&topo], &ask_policy("120s", "ask_max_pending = 100\n"));
    // Warm up (first connection's allocations, the CA, the runtime's threads).
    let c = curl(
        &topo,
        &[
            "--resolve",
            "allowed.test:80:198.51.100.10",
            "http://allowed.test/",
        ],
        &[],
    );
    assert_eq!(c.status, 200);
    let base = procstat::vm_rss_kib(agent.pid());
    let mut peaks = Vec::new();
    for round in ["a", "b"] {
        let many = hold_many(&topo, 100, round);
        wait_count(&agent, 100);
        peaks.push(procstat::vm_rss_kib(agent.pid()));
        // The 101st is denied at once, saying why.
        let started = Instant::now();
        let c = curl(
            &topo,
            &[
                "--resolve",
                "extra.exfil.test:80:203.0.113.10",
                "http://extra.exfil.test/",
            ],
            &[],
        );
        let v = c.json();
        assert!(c.status == 403 && v["error"] == "host_not_allowed", "{c:?}");
        assert!(
            v["reason"]
                .as_str()
                .unwrap_or("")
                .contains("ask_max_pending"),
            "{v}"
        );
        assert!(started.elapsed() < Duration::from_secs(60), "not held");
        for p in pending(&agent) {
            assert!(cli(&agent, &["deny", &id_of(&p)]).status.success());
        }
        let s = statuses(many);
        assert_eq!(s.len(), 100);
        assert!(s.iter().all(|x| x == "403"), "{s:?}");
        wait_count(&agent, 0);
    }
    let after = procstat::vm_rss_kib(agent.pid());
    eprintln!("agent RSS KiB: base {base}, 100 pending {peaks:?}, after {after}");
    assert!(
        peaks[0] < base + 32 * 1024,
        "100 pending cost {} KiB",
        peaks[0] - base
    );
    assert!(
        peaks[1] < peaks[0] + 8 * 1024,
        "a second round of 100 grew RSS from {} to {} KiB",
        peaks[0],
        peaks[1]
    );
    let overflow = audit_with_ask(&agent, "overflow");
    assert!(!overflow.is_empty());
}

#[test]
fn bad_ask_keys_are_one_line_and_leave_the_running_policy_alone() {
    require_root!();
    let topo = Topology::new("ask_bad");
    let _net = topo.start_fakenet();
    let good = ask_policy("30s", "");
    let agent = Agent::daemon(&[&topo], &good);
    let shown = String::from_utf8_lossy(&cli(&agent, &["policy", "show"]).stdout).into_owned();
    assert!(
        shown.contains("mode = \"ask\"") && shown.contains("ask_timeout = \"30s\""),
        "{shown}"
    );
    assert!(shown.contains("ask_max_pending = 1024"), "{shown}");
    let explain = cli(&agent, &["explain", "other.test"]);
    let text = String::from_utf8_lossy(&explain.stdout).into_owned();
    assert!(text.contains("ask mode") && text.contains("30s"), "{text}");
    let cases: &[(&str, &str, &str)] = &[
        ("mode = \"ask\"", "mode = \"asky\"", "profile.default.mode"),
        (
            "ask_timeout = \"30s\"",
            "ask_timeout = \"0s\"",
            "profile.default.ask_timeout",
        ),
        (
            "ask_timeout = \"30s\"",
            "ask_timeout = \"soon\"",
            "profile.default.ask_timeout",
        ),
        (
            "ask_timeout = \"30s\"",
            "ask_timeout = \"11m\"",
            "profile.default.ask_timeout",
        ),
        (
            "mode = \"ask\"\n",
            "mode = \"enforce\"\n",
            "profile.default.ask_timeout",
        ),
        (
            "version = \"ask-1\"",
            "version = \"ask-1\"\nask_max_pending = 0",
            "ask_max_pending",
        ),
        (
            "version = \"ask-1\"",
            "version = \"ask-1\"\nmode = \"monitor\"",
            "profile.default.mode",
        ),
    ];
    for (from, to, key) in cases {
        let bad = good.replacen(from, to, 1);
        assert_ne!(bad, good);
        let f = topo.workdir().join("bad.toml");
        std::fs::write(&f, &bad).unwrap();
        let out = Command::new(bin_path("egress-agent"))
            .args(["policy", "check"])
            .arg(&f)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{to}: {out:?}");
        assert_eq!(err.trim().lines().count(), 1, "{to}: {err}");
        assert!(
            err.contains(&format!("key `{key}`")) && err.contains("bad.toml:"),
            "{to}: {err}"
        );
        // Reloaded into the running daemon: refused, nothing changes.
        std::fs::write(&agent.policy, &bad).unwrap();
        let out = cli(&agent, &["reload"]);
        assert_eq!(out.status.code(), Some(2), "{to}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim().lines().count(),
            1
        );
        let now = String::from_utf8_lossy(&cli(&agent, &["policy", "show"]).stdout).into_owned();
        assert_eq!(now, shown, "{to}: the running policy changed");
    }
    std::fs::write(&agent.policy, &good).unwrap();
}

#[test]
fn a_client_that_goes_away_leaves_nothing_pending() {
    require_root!();
    let topo = Topology::new("ask_gone");
    let _net = topo.start_fakenet();
    let agent = Agent::daemon(&[&topo], &ask_policy("600s", ""));
    let (c, ()) = held_curl(
        &topo,
        &["--max-time", "3", "--resolve", R80, "http://other.test/"],
        || {
            wait_pending(&agent, "other.test", &[], 1);
        },
    );
    assert_eq!(c.exit, 28, "curl gave up while held: {c:?}");
    // Far sooner than ask_timeout (10 minutes): the decision went with its only waiter.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pending(&agent).is_empty() {
        assert!(
            Instant::now() < deadline,
            "still pending after the client left"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!audit_with_ask(&agent, "client_gone").is_empty());
}

#[test]
fn exec_ask_without_a_terminal_prints_the_commands_that_decide() {
    require_root!();
    let topo = Topology::new("ask_exec");
    let _net = topo.start_fakenet();
    let direct = curl(&topo, &["--resolve", R80, "http://other.test/"], &[]);
    assert_eq!(direct.status, 200, "without the agent: {direct:?}");
    // An enforce-mode policy: --ask puts the profile in ask mode for this exec.
    let policy = topo.workdir().join("exec-ask.toml");
    std::fs::write(
        &policy,
        format!("version = \"exec-ask\"\n{EXEMPT}[profile.default]\nallow = [\"allowed.test\"]\n"),
    )
    .unwrap();
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", topo.ctr_netns_path().display()))
        .arg(bin_path("egress-agent"))
        .args(["exec", "--ask", "--quiet", "--policy"])
        .arg(&policy)
        .args([
            "--",
            "curl",
            "-sS",
            "--max-time",
            "40",
            "--resolve",
            R80,
            "http://other.test/",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            eprintln!("[exec] {l}");
            let _ = tx.send(l);
        }
    });
    let line = loop {
        let l = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("exec --ask printed no command to decide with");
        if l.contains("decide with:") {
            break l;
        }
    };
    // "... decide with: egress-agent --control SOCK approve ID [--once|--session|--save] ..."
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == "--control")
        .expect("--control");
    let (sock, id) = (words[at + 1], words[at + 3]);
    assert_eq!(words[at + 2], "approve", "{line}");
    assert!(line.contains("other.test:80"), "{line}");
    let out = Command::new(bin_path("egress-agent"))
        .args(["--control", sock, "approve", id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(v["host"], "other.test", "{out:?}");
    assert!(
        !std::path::Path::new(sock).exists(),
        "the exec's socket is removed"
    );
}

#[test]
fn a_foreground_attach_in_ask_mode_is_decided_on_its_control_socket() {
    require_root!();
    let topo = Topology::new("ask_attach");
    let _net = topo.start_fakenet();
    let agent = Agent::attach(&topo, &ask_policy("60s", ""));
    let args = ["--max-time", "40", "--resolve", R80, "http://other.test/"];
    let (c, ()) = held_curl(&topo, &args, || {
        let p = wait_pending(&agent, "other.test", &[], 1);
        assert!(cli(&agent, &["approve", &id_of(&p)]).status.success());
    });
    assert_eq!(c.status, 200, "{c:?}");
    // Everything else is the daemon's: said so in one line.
    let out = cli(&agent, &["explain", "other.test"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("serves only /v1/pending"));
}

#[test]
fn exec_ask_on_a_terminal_prompts_and_takes_the_answer() {
    require_root!();
    let topo = Topology::new("ask_tty");
    let _net = topo.start_fakenet();
    let policy = topo.workdir().join("exec-tty.toml");
    std::fs::write(
        &policy,
        format!("version = \"exec-tty\"\n{EXEMPT}[profile.default]\nallow = [\"allowed.test\"]\n"),
    )
    .unwrap();
    // `script` gives the exec a terminal (a pty) on stdin; what is written here is typed there.
    let inner = format!(
        "nsenter --net={} {} exec --ask --quiet --policy {} -- curl -sS --max-time 40 --resolve {R80} http://other.test/",
        topo.ctr_netns_path().display(),
        bin_path("egress-agent").display(),
        policy.display()
    );
    let mut child = Command::new("script")
        .args(["-qfec", &inner, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("script (util-linux)");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut r = stdout;
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.contains("[d]eny?") {
        assert!(Instant::now() < deadline, "no prompt: {seen:?}");
        if let Ok(b) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push_str(&String::from_utf8_lossy(&b));
        }
    }
    assert!(seen.contains("other.test:80"), "{seen}");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"o\n").unwrap();
    let status = child.wait().unwrap();
    while let Ok(b) = rx.recv_timeout(Duration::from_secs(2)) {
        seen.push_str(&String::from_utf8_lossy(&b));
    }
    assert!(status.success(), "{seen}");
    assert!(seen.contains("approved (once)"), "{seen}");
    assert!(
        seen.contains("\"host\":\"other.test\""),
        "curl got through: {seen}"
    );
}

#[test]
fn pending_follow_streams_each_decision_as_it_comes_and_goes() {
    require_root!();
    let topo = Topology::new("ask_follow");
    let _net = topo.start_fakenet();
    let agent = Agent::daemon(&[&topo], &ask_policy("60s", ""));
    let mut follow = agent
        .cli()
        .args(["pending", "--follow"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for l in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&l) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    let next_event = |kind: &str| loop {
        let v = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no {kind} event"));
        if v["event"] == kind {
            return v;
        }
    };
    let args = ["--max-time", "40", "--resolve", R80, "http://other.test/"];
    let (c, ()) = held_curl(&topo, &args, || {
        let p = next_event("pending");
        assert_eq!(p["name"], "other.test", "{p}");
        assert_eq!(p["protocol"], "http", "{p}");
        assert!(cli(&agent, &["approve", &id_of(&p)]).status.success());
        let a = next_event("approved");
        assert_eq!(a["id"], p["id"], "{a}");
        assert_eq!(a["scope"], "once", "{a}");
    });
    assert_eq!(c.status, 200, "{c:?}");
    let _ = follow.kill();
    let _ = follow.wait();
}
