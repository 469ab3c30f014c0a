//! Local services (issue 17 §5): `local = ["otel-collector:4317 -> 127.0.0.1:4317"]` gives the
//! sandbox one name for one service on the host's loopback, on one port, without opening
//! loopback (or any range) to it. Two services listen on the loopback of the namespace `exec`
//! runs in (the "host"): 4317, the one the policy names, and 4318, one it does not. Without the
//! agent, a process there reaches both; under `exec`, the sandbox reaches 4317 by the name only,
//! and neither service any other way.

use std::process::{Child, Command, Stdio};

use egress_tests::{
    agent::Agent, bin_path, clients::PYTHON, require_root, threat, topology::Topology,
};
use serde_json::Value;

/// Two TCP servers on 127.0.0.1 that answer `PORT:` and what they received.
const SERVERS_PY: &str = r#"
import socket, sys, threading
def serve(port):
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(('127.0.0.1', port)); l.listen(64)
    while True:
        c, _ = l.accept()
        def one(c=c):
            try:
                c.settimeout(10)
                c.sendall(b'%d:' % port + c.recv(4096))
            except Exception:
                pass
            c.close()
        threading.Thread(target=one, daemon=True).start()
for p in (4317, 4318):
    threading.Thread(target=serve, args=(p,), daemon=True).start()
print('READY', flush=True)
sys.stdin.read()
"#;

/// What a client in the sandbox sees, as one JSON line.
const CLIENT_PY: &str = r#"
import json, socket, sys
def talk(host, port, data=b'ping'):
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(data)
        got = s.recv(4096)
        s.close()
        return got.decode('latin-1') if got else 'closed'
    except Exception as e:
        return 'error: ' + e.__class__.__name__
out = {}
if sys.argv[1] == 'sandbox':
    try:
        out['resolved'] = socket.gethostbyname('otel-collector')
    except Exception as e:
        out['resolved'] = 'error: ' + e.__class__.__name__
    out['by_name'] = talk('otel-collector', 4317)
    out['h2c_by_name'] = talk('otel-collector', 4317, b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')
    out['other_port_by_name'] = talk('otel-collector', 4318)
    out['service_addr_other_port'] = talk('192.0.2.1', 4318)
out['loopback_other'] = talk('127.0.0.1', 4318)
out['loopback_named_port'] = talk('127.0.0.1', 4317)
print(json.dumps(out))
"#;

const POLICY: &str = r#"version = "local-1"
resolver = "203.0.113.53:53"
allow_ranges = ["198.51.100.0/24", "203.0.113.0/24", "2001:db8:100::/48"]
[profile.default]
allow = ["allowed.test"]
local = ["otel-collector:4317 -> 127.0.0.1:4317"]
"#;

struct Servers(Child);

impl Servers {
    fn start(topo: &Topology) -> Servers {
        let mut c = Command::new("nsenter")
            .arg(format!("--net={}", topo.ctr_netns_path().display()))
            .args([PYTHON, "-c", SERVERS_PY])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        egress_tests::wait_ready(&mut c, "the local services");
        Servers(c)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn last_json(out: &std::process::Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    serde_json::from_str(text.lines().last().unwrap_or(""))
        .unwrap_or_else(|_| panic!("no JSON: {text} / {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn a_local_service_is_reachable_by_its_name_and_nothing_else_on_loopback_is() {
    require_root!();
    let topo = Topology::new("local_svc");
    let _net = topo.start_fakenet();
    let _servers = Servers::start(&topo);

    // Without the agent, a process in that namespace reaches both services.
    let out = Command::new("nsenter")
        .arg(format!("--net={}", topo.ctr_netns_path().display()))
        .args([PYTHON, "-c", CLIENT_PY, "host"])
        .output()
        .unwrap();
    let v = last_json(&out);
    assert_eq!(v["loopback_other"], "4318:ping", "{v}");
    assert_eq!(v["loopback_named_port"], "4317:ping", "{v}");

    let policy = topo.workdir().join("local.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let audit = topo.workdir().join("local-audit.jsonl");
    let out = Command::new("nsenter")
        .arg(format!("--net={}", topo.ctr_netns_path().display()))
        .arg(bin_path("egress-agent"))
        .arg("exec")
        .arg("--quiet")
        .arg("--policy")
        .arg(&policy)
        .arg("--audit-log")
        .arg(&audit)
        .args(["--", PYTHON, "-c", CLIENT_PY, "sandbox"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v = last_json(&out);
    assert_eq!(
        v["resolved"], "192.0.2.1",
        "the agent's DNS answers the name: {v}"
    );
    assert_eq!(v["by_name"], "4317:ping", "{v}");
    assert_eq!(
        v["h2c_by_name"], "4317:PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "cleartext HTTP/2 (gRPC, OTLP) passes too: {v}"
    );
    for key in [
        "other_port_by_name",
        "service_addr_other_port",
        "loopback_other",
        "loopback_named_port",
    ] {
        let got = v[key].as_str().unwrap_or("");
        let blocked = !got.starts_with("4317:") && !got.starts_with("4318:");
        threat("B", &format!("local service: {key}"), blocked);
        assert!(blocked, "{key} reached a loopback service: {v}");
    }
    let recs = egress_tests::agent::read_jsonl(&audit);
    assert!(
        recs.iter().any(|r| r["decision"] == "allow"
            && r["rule"] == "profile.default.local[0]"
            && r["upstream"] == "127.0.0.1:4317"),
        "{recs:?}"
    );
    assert!(
        recs.iter().any(|r| r["decision"] == "deny"
            && r["code"] == "port_not_allowed"
            && r["name"] == "otel-collector"),
        "the other port by name is refused by the entry: {recs:?}"
    );
}

#[test]
fn local_entries_are_shown_explained_and_checked() {
    require_root!();
    let topo = Topology::new("local_bad");
    let _net = topo.start_fakenet();
    let agent = Agent::daemon(&[&topo], POLICY);
    let cli = |args: &[&str]| agent.cli().args(args).output().unwrap();
    let shown = String::from_utf8_lossy(&cli(&["policy", "show"]).stdout).into_owned();
    assert!(
        shown.contains("local = [\"otel-collector:4317 -> 127.0.0.1:4317\"]"),
        "{shown}"
    );
    assert!(
        !shown.contains("127.0.0.0"),
        "loopback is never a range: {shown}"
    );
    let text =
        String::from_utf8_lossy(&cli(&["explain", "otel-collector:4317"]).stdout).into_owned();
    assert!(
        text.contains("allow (passthrough) by profile.default.local[0]")
            && text.contains("local service otel-collector:4317 -> 127.0.0.1:4317"),
        "{text}"
    );
    let text =
        String::from_utf8_lossy(&cli(&["explain", "otel-collector:4318"]).stdout).into_owned();
    assert!(text.contains("deny port_not_allowed"), "{text}");

    let cases: &[(&str, &str)] = &[
        (
            "\"otel-collector:4317\"",
            "expected \"NAME:PORT -> [sandbox:]ADDRESS:PORT\"",
        ),
        ("\"otel-collector -> 127.0.0.1:4317\"", "has no port"),
        ("\"*.otel:4317 -> 127.0.0.1:4317\"", "wildcard"),
        ("\"otel:4317 -> localhost:4317\"", "never resolved"),
        ("\"otel:4317 -> 169.254.169.254:80\"", "link-local"),
        ("\"otel:4317 -> 0.0.0.0:4317\"", "unicast"),
        (
            "\"allowed.test:4317 -> 127.0.0.1:4317\"",
            "also matched by `profile.default.allow[0]`",
        ),
        (
            "\"otel:4317 -> 127.0.0.1:4317\", \"otel:4318 -> 127.0.0.1:4318\"",
            "already a local service",
        ),
        ("\"egress.internal:81 -> 127.0.0.1:81\"", "agent's own name"),
        ("4317", "invalid type"),
    ];
    for (entry, says) in cases {
        let bad = POLICY.replace(
            "[\"otel-collector:4317 -> 127.0.0.1:4317\"]",
            &format!("[{entry}]"),
        );
        let f = topo.workdir().join("bad.toml");
        std::fs::write(&f, &bad).unwrap();
        let out = Command::new(bin_path("egress-agent"))
            .args(["policy", "check"])
            .arg(&f)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{entry}: {out:?}");
        assert_eq!(err.trim().lines().count(), 1, "{entry}: {err}");
        assert!(
            err.contains("key `profile.default.local") && err.contains(says),
            "{entry}: {err}"
        );
        std::fs::write(&agent.policy, &bad).unwrap();
        let out = cli(&["reload"]);
        assert_eq!(out.status.code(), Some(2), "{entry}: {out:?}");
        let now = String::from_utf8_lossy(&cli(&["policy", "show"]).stdout).into_owned();
        assert_eq!(now, shown, "{entry}: the running policy changed");
    }
    std::fs::write(&agent.policy, POLICY).unwrap();
    assert!(
        cli(&["reload"]).status.success(),
        "the good file reloads again"
    );
}

/// A sidecar on the sandbox's own loopback (4317, named by the policy; 4318, not), then what
/// the sandbox's client sees, as one JSON line.
const SIDECAR_PY: &str = r#"
import json, socket, sys, threading
def serve(l, port):
    while True:
        c, _ = l.accept()
        c.settimeout(10)
        try:
            c.sendall(b'%d:' % port + c.recv(4096))
        except Exception:
            pass
        c.close()
for port in (4317, 4318):
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(('127.0.0.1', port)); l.listen(16)
    threading.Thread(target=serve, args=(l, port), daemon=True).start()
def talk(host, port):
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b'ping')
        got = s.recv(4096)
        s.close()
        return got.decode('latin-1') if got else 'closed'
    except Exception as e:
        return 'error: ' + e.__class__.__name__
out = {}
if sys.argv[1] == 'sandbox':
    out['by_name'] = talk('sidecar', 4317)
    out['other_port_by_name'] = talk('sidecar', 4318)
out['loopback_other'] = talk('127.0.0.1', 4318)
out['loopback_named_port'] = talk('127.0.0.1', 4317)
print(json.dumps(out))
"#;

#[test]
fn a_sandbox_local_service_is_dialed_in_the_sandboxs_own_namespace() {
    require_root!();
    let topo = Topology::new("local_sandbox");
    let _net = topo.start_fakenet();
    // Without the agent, in a namespace of its own, the program reaches both of its loopback
    // services directly.
    let out = Command::new("unshare")
        .args([
            "-n",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" -c \"$1\" host",
        ])
        .args([PYTHON, SIDECAR_PY])
        .output()
        .unwrap();
    let v = last_json(&out);
    assert_eq!(v["loopback_other"], "4318:ping", "{v}");
    assert_eq!(v["loopback_named_port"], "4317:ping", "{v}");

    let policy = topo.workdir().join("sidecar.toml");
    std::fs::write(
        &policy,
        POLICY.replace(
            "otel-collector:4317 -> 127.0.0.1:4317",
            "sidecar:4317 -> sandbox:127.0.0.1:4317",
        ),
    )
    .unwrap();
    let audit = topo.workdir().join("sidecar-audit.jsonl");
    let out = Command::new("nsenter")
        .arg(format!("--net={}", topo.ctr_netns_path().display()))
        .arg(bin_path("egress-agent"))
        .args(["exec", "--netns", "--quiet", "--policy"])
        .arg(&policy)
        .arg("--audit-log")
        .arg(&audit)
        .args(["--", PYTHON, "-c", SIDECAR_PY, "sandbox"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v = last_json(&out);
    assert_eq!(v["by_name"], "4317:ping", "{v}");
    for key in [
        "other_port_by_name",
        "loopback_other",
        "loopback_named_port",
    ] {
        let got = v[key].as_str().unwrap_or("");
        let blocked = !got.starts_with("4317:") && !got.starts_with("4318:");
        threat("B", &format!("sandbox local service: {key}"), blocked);
        assert!(blocked, "{key} reached a loopback service: {v}");
    }
    let recs = egress_tests::agent::read_jsonl(&audit);
    assert!(
        recs.iter()
            .any(|r| r["rule"] == "profile.default.local[0]" && r["upstream"] == "127.0.0.1:4317"),
        "{recs:?}"
    );
}
