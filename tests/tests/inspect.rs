//! TLS inspection and the per-request HTTP engine (issue 4): real clients (curl, python,
//! node) in the container trust the agent's CA through the `ca env` variables, talk to
//! `api.allowed.test` (inspected, with per-request rules and an injected credential), and
//! every refusal is first shown to work without the enforcer.

use std::{path::PathBuf, process::Output};

use egress_tests::{agent::Agent, require_root, topology::Topology, FakeNet};
use serde_json::Value;

const SECRET: &str = "s3cr3t-inj3cted-t0ken-4242";
const API: &str = "https://api.allowed.test";

struct Setup {
    topo: Topology,
    net: FakeNet,
    /// `ca env` as (name, value) pairs (without JAVA_TOOL_OPTIONS).
    trust: Vec<(String, String)>,
    state: PathBuf,
}

fn setup(name: &str) -> Setup {
    let topo = Topology::new(name);
    let net = topo.start_fakenet();
    let state = topo.workdir().join("state");
    // The CA and trust files exist before the agent starts; the agent loads the same CA.
    let trust = egress_tests::clients::agent_ca_env(&state);
    assert!(trust.iter().any(|(k, _)| k == "SSL_CERT_FILE"), "{trust:?}");
    Setup {
        topo,
        net,
        trust,
        state,
    }
}

impl Setup {
    fn policy(&self) -> String {
        format!(
            r#"version = "inspect-1"
resolver = "203.0.113.53:53"
allow_ranges = ["198.51.100.0/24", "203.0.113.0/24", "2001:db8:100::/48"]
upstream_ca = "{}"
[profile.default]
allow = ["allowed.test", "other.test"]
inspect = ["api.allowed.test"]
[[profile.default.http]]
host = "api.allowed.test"
methods = ["GET", "POST"]
paths = ["/v1/**", "/ws"]
inject = {{ header = "X-Api-Key", env = "TEST_API_TOKEN" }}
"#,
            self.net.ca_pem.display()
        )
    }

    fn agent(&self) -> Agent {
        self.agent_with(&self.policy())
    }

    fn agent_with(&self, policy: &str) -> Agent {
        let state = self.state.display().to_string();
        Agent::attach_with_env(
            &self.topo,
            policy,
            &[("EGRESS_STATE_DIR", &state), ("TEST_API_TOKEN", SECRET)],
        )
    }

    fn env(&self, key: &str) -> String {
        self.trust
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{key} not in ca env"))
    }

    /// curl in the container with the trust variables; `-i` output parsed.
    fn curl(&self, args: &[&str]) -> Resp {
        let out = self
            .topo
            .ctr_command("curl")
            .args(["-sS", "-i", "--max-time", "10", "--noproxy", "*"])
            .args(args)
            .envs(self.trust.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("curl");
        Resp::parse(&out)
    }

    /// curl straight to the fake internet (no agent), trusting its CA.
    fn curl_direct(&self, args: &[&str]) -> Resp {
        let ca = self.net.ca_pem.display().to_string();
        let out = self
            .topo
            .ctr_command("curl")
            .args([
                "-sS",
                "-i",
                "--max-time",
                "10",
                "--noproxy",
                "*",
                "--cacert",
                &ca,
            ])
            .args(args)
            .output()
            .expect("curl");
        Resp::parse(&out)
    }

    /// python3 in the container; `ca` = the bundle to trust (None: the `ca env` variables).
    fn python(&self, script: &str, ca: Option<&str>) -> Output {
        let mut cmd = self.topo.ctr_command("python3");
        cmd.args(["-c", script]);
        match ca {
            Some(ca) => {
                cmd.env("SSL_CERT_FILE", ca).env("REQUESTS_CA_BUNDLE", ca);
            }
            None => {
                cmd.envs(self.trust.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            }
        }
        cmd.output().expect("python3")
    }
}

/// Waits (up to 10 s) for an audit record matching `pred`; all records on failure.
fn wait_record(agent: &Agent, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let recs = egress_tests::agent::read_jsonl(&agent.audit);
        if let Some(r) = recs.iter().find(|r| pred(r)) {
            return r.clone();
        }
        if std::time::Instant::now() > deadline {
            panic!("no matching audit record in {recs:#?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[derive(Debug)]
struct Resp {
    ok: bool,
    status: u16,
    version: String,
    headers: Vec<(String, String)>,
    body: String,
    stderr: String,
}

impl Resp {
    fn parse(out: &Output) -> Resp {
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // With -i, interim responses (100 Continue) may precede; take the last head.
        let mut rest = text.as_str();
        let mut head = "";
        while let Some((h, b)) = rest.split_once("\r\n\r\n") {
            head = h;
            rest = b;
            if !b.starts_with("HTTP/") {
                break;
            }
        }
        let mut lines = head.lines();
        let first = lines.next().unwrap_or("");
        let mut parts = first.split_whitespace();
        let version = parts.next().unwrap_or("").to_string();
        let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Resp {
            ok: out.status.success(),
            status,
            version,
            headers,
            body: rest.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }

    fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(self.body.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// The echo's value of request header `k` as it arrived upstream.
    fn echoed_header(&self, k: &str) -> Option<String> {
        self.json()["headers"]
            .as_array()?
            .iter()
            .find(|h| h[0] == k)
            .and_then(|h| h[1].as_str().map(str::to_string))
    }

    /// The deny contract: status, Proxy-Status, JSON fields.
    fn assert_denied(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        let ps = self
            .header("proxy-status")
            .unwrap_or_else(|| panic!("no Proxy-Status: {self:?}"));
        assert!(ps.starts_with("egress-agent; error="), "{ps}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        let v = self.json();
        assert_eq!(v["error"], code, "{v}");
        for k in ["host", "port", "reason", "rule", "policy", "hint"] {
            assert!(v.get(k).is_some(), "field {k} missing: {v}");
        }
        assert_eq!(v["policy"], "inspect-1");
    }
}

#[test]
fn inspected_requests_are_checked_and_credentials_injected() {
    require_root!();
    let s = setup("inspect_rules");
    // Without the enforcer: every request reaches the fake internet, no credential is added.
    for path in ["/v1/items", "/admin"] {
        let d = s.curl_direct(&[
            "--resolve",
            "api.allowed.test:443:198.51.100.10",
            &format!("{API}{path}"),
        ]);
        assert_eq!(d.status, 200, "{d:?}");
        assert_eq!(d.echoed_header("x-api-key"), None);
    }
    let d = s.curl_direct(&[
        "-X",
        "DELETE",
        "--resolve",
        "api.allowed.test:443:198.51.100.10",
        &format!("{API}/v1/items"),
    ]);
    assert_eq!(d.status, 200, "{d:?}");

    let agent = s.agent();
    for flag in ["--http1.1", "--http2"] {
        let r = s.curl(&[
            flag,
            "-H",
            "X-Api-Key: sandbox-forgery",
            &format!("{API}/v1/items?q=1"),
        ]);
        assert!(r.ok, "{flag}: {r:?}");
        assert_eq!(r.status, 200, "{flag}: {r:?}");
        let want_version = if flag == "--http2" {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        };
        assert_eq!(r.version, want_version, "{r:?}");
        let v = r.json();
        assert_eq!(v["sni"], "api.allowed.test", "{v}");
        assert_eq!(v["path"], "/v1/items?q=1", "{v}");
        // The agent's credential replaced the sandbox's.
        assert_eq!(r.echoed_header("x-api-key").as_deref(), Some(SECRET), "{v}");

        let r = s.curl(&[flag, "-X", "DELETE", &format!("{API}/v1/items")]);
        r.assert_denied(403, "method_not_allowed");
        let r = s.curl(&[flag, &format!("{API}/admin")]);
        r.assert_denied(403, "path_not_allowed");
        let r = s.curl(&[flag, "--path-as-is", &format!("{API}/v1/../admin")]);
        assert_ne!(r.status, 200, "{r:?}");
    }

    // An explicit CONNECT to an inspected host is inspected inside the tunnel.
    let r = s.curl(&[
        "--proxy",
        "http://egress.internal:3128",
        &format!("{API}/v1/via-connect"),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.echoed_header("x-api-key").as_deref(), Some(SECRET));
    let r = s.curl(&[
        "--proxy",
        "http://egress.internal:3128",
        &format!("{API}/admin"),
    ]);
    r.assert_denied(403, "path_not_allowed");

    // python: urllib (SSL_CERT_FILE) and requests (REQUESTS_CA_BUNDLE).
    let out = s.python(
        "import urllib.request,json;r=urllib.request.urlopen('https://api.allowed.test/v1/py');print(r.status);print(r.read().decode())",
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.starts_with("200"), "{out:?}");
    assert!(text.contains(SECRET), "credential arrived upstream: {text}");
    let out = s.python(
        "import requests;r=requests.get('https://api.allowed.test/v1/req');print(r.status_code);r2=requests.post('https://api.allowed.test/admin');print(r2.status_code, r2.json()['error'], r2.headers['proxy-status'])",
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("200"), "{text}");
    assert!(
        lines
            .next()
            .unwrap_or("")
            .starts_with("403 path_not_allowed egress-agent;"),
        "{text}"
    );

    // node: fetch honours NODE_EXTRA_CA_CERTS.
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok()
    {
        let out = s
            .topo
            .ctr_command("node")
            .args([
                "-e",
                "fetch('https://api.allowed.test/v1/node').then(async r=>{console.log(r.status);const j=await r.json();console.log(JSON.stringify(j.headers))}).catch(e=>{console.error(e);process.exit(1)})",
            ])
            .env("NODE_EXTRA_CA_CERTS", s.env("NODE_EXTRA_CA_CERTS"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.starts_with("200"), "{out:?}");
        assert!(text.contains(SECRET), "{text}");
    } else {
        eprintln!("node not installed: node client skipped");
    }

    // Through the agent, a host that is allowed but not inspected is never intercepted:
    // the client verifies fakenet's own certificate.
    let r = s.curl_direct(&["https://allowed.test/plain"]);
    assert_eq!(r.status, 200, "passthrough with fakenet's CA: {r:?}");

    // The secret is nowhere the sandbox can read: not in its environment, not in the
    // trust files; and not in the audit log.
    let bundle_dir = PathBuf::from(s.env("SSL_CERT_FILE"));
    let out = s
        .topo
        .ctr_command("sh")
        .args([
            "-c",
            "env; cat \"$0\"/*",
            bundle_dir.parent().unwrap().to_str().unwrap(),
        ])
        .envs(s.trust.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(SECRET));
    wait_record(&agent, |r| {
        r["path"] == "/v1/node" || r["path"] == "/v1/req"
    });
    let recs = agent.audit_records(12);
    let audit = std::fs::read_to_string(&agent.audit).unwrap();
    assert!(!audit.contains(SECRET), "secret in the audit log");
    let https: Vec<&Value> = recs.iter().filter(|r| r["protocol"] == "https").collect();
    assert!(
        https.iter().any(|r| r["method"] == "GET"
            && r["path"] == "/v1/items"
            && r["status"] == 200
            && r["decision"] == "allow"),
        "{https:?}"
    );
    assert!(
        https.iter().any(|r| r["method"] == "DELETE"
            && r["code"] == "method_not_allowed"
            && r["decision"] == "deny"),
        "{https:?}"
    );
}

/// Python's http.client over one connection: one line "STATUS ERROR" per request.
const KEEPALIVE_PY: &str = r#"
import http.client, json, ssl, sys
tls, host, port = sys.argv[1] == "tls", sys.argv[2], int(sys.argv[3])
if tls:
    c = http.client.HTTPSConnection(host, port, context=ssl.create_default_context(), timeout=10)
else:
    c = http.client.HTTPConnection(host, port, timeout=10)
for spec in sys.argv[4:]:
    method, path, h = spec.split(" ")
    c.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    c.putheader("Host", h)
    c.endheaders()
    r = c.getresponse()
    if method == "CONNECT" and r.status == 200:
        print(r.status, "-", flush=True)
        break
    body = r.read()
    try:
        err = json.loads(body).get("error", "-")
    except Exception:
        err = "-"
    print(r.status, err, flush=True)
"#;

fn keepalive(s: &Setup, ca: Option<&str>, args: &[&str]) -> Vec<String> {
    let mut cmd = s.topo.ctr_command("python3");
    cmd.args(["-c", KEEPALIVE_PY]).args(args);
    match ca {
        Some(ca) => {
            cmd.env("SSL_CERT_FILE", ca);
        }
        None => {
            cmd.envs(s.trust.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
    }
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn fronting_second_host_and_connect_inside_are_refused() {
    require_root!();
    let s = setup("inspect_fronting");
    let fake_ca = s.net.ca_pem.display().to_string();
    let tls_reqs = [
        "tls",
        "api.allowed.test",
        "443",
        "GET /v1/a api.allowed.test",
        "GET /v1/b other.test",
    ];
    let plain_reqs = [
        "plain",
        "allowed.test",
        "80",
        "GET /a allowed.test",
        "GET /b other.test",
    ];
    // Without the enforcer: fronting works (the set-up is sound).
    let d = s.curl_direct(&["-H", "Host: other.test", &format!("{API}/v1/x")]);
    assert_eq!(d.status, 200, "{d:?}");
    assert_eq!(d.json()["host"], "other.test");
    assert_eq!(keepalive(&s, Some(&fake_ca), &tls_reqs), ["200 -", "200 -"]);
    assert_eq!(
        keepalive(&s, Some(&fake_ca), &plain_reqs),
        ["200 -", "200 -"]
    );
    let connect = [
        "tls",
        "api.allowed.test",
        "443",
        "CONNECT other.test:443 other.test",
    ];
    let direct_connect = keepalive(&s, Some(&fake_ca), &connect);
    assert_eq!(
        direct_connect.first().map(String::as_str),
        Some("200 -"),
        "{direct_connect:?}"
    );

    let d = s.curl_direct(&["--http2", "http://allowed.test/h2c"]);
    assert_eq!(d.status, 200, "{d:?}");

    let agent = s.agent();
    for flag in ["--http1.1", "--http2"] {
        let r = s.curl(&[flag, "-H", "Host: other.test", &format!("{API}/v1/x")]);
        r.assert_denied(421, "host_mismatch");
    }
    // Second request on the same keep-alive connection, for another host.
    assert_eq!(
        keepalive(&s, None, &tls_reqs),
        ["200 -", "421 host_mismatch"]
    );
    assert_eq!(
        keepalive(&s, None, &plain_reqs),
        ["200 -", "421 host_mismatch"]
    );
    // CONNECT inside the inspected stream.
    assert_eq!(keepalive(&s, None, &connect), ["403 protocol_not_allowed"]);
    // h2c upgrade on plain HTTP (curl --http2 on http:// asks for it).
    let r = s.curl(&["--http2", "http://allowed.test/h2c"]);
    r.assert_denied(403, "protocol_not_allowed");

    wait_record(&agent, |r| {
        r["protocol"] == "http" && r["code"] == "host_mismatch" && r["path"] == "/b"
    });
}

const WS_PY: &str = r#"
import os, socket, ssl, sys, base64
host = sys.argv[1]
ctx = ssl.create_default_context(cafile=sys.argv[2])
s = ctx.wrap_socket(socket.create_connection((host, 443), timeout=10), server_hostname=host)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(("GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (host, key)).encode())
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
print(head.split(b"\r\n")[0].decode())
def frame(op, data):
    mask = os.urandom(4)
    return bytes([0x80 | op, 0x80 | len(data)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))
def read_exact(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c: raise SystemExit("eof")
        b += c
    return b
for msg in [b"hello through the agent", b"second"]:
    s.sendall(frame(1, msg))
    h = read_exact(2)
    print(read_exact(h[1] & 0x7f).decode())
"#;

#[test]
fn websocket_passes_through_an_inspected_host() {
    require_root!();
    let s = setup("inspect_ws");
    let fake_ca = s.net.ca_pem.display().to_string();
    let run = |ca: &str| {
        let out = s
            .topo
            .ctr_command("python3")
            .args(["-c", WS_PY, "api.allowed.test", ca])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    };
    let want = "HTTP/1.1 101 Switching Protocols\nhello through the agent\nsecond\n";
    assert_eq!(run(&fake_ca), want, "direct");
    let agent = s.agent();
    assert_eq!(run(&s.env("SSL_CERT_FILE")), want, "through the agent");
    wait_record(&agent, |r| r["path"] == "/ws" && r["status"] == 101);
}

#[test]
fn untrusted_ca_is_reported_with_the_fix() {
    require_root!();
    let s = setup("inspect_untrusted");
    let agent = s.agent();
    // No trust variables: curl rejects the agent's certificate.
    let out = s
        .topo
        .ctr_command("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--noproxy",
            "*",
            &format!("{API}/v1/x"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let rec = wait_record(&agent, |r| r["code"] == "client_rejected_ca");
    assert!(
        rec["reason"].as_str().unwrap().contains("UnknownCA"),
        "{rec}"
    );
    // Not known to trust the CA (no `exec --trust-ca`): the fix is to trust it.
    let hint = rec["hint"].as_str().unwrap();
    assert!(
        hint.contains("ca env") && hint.contains("--trust-ca"),
        "{rec}"
    );
    // The status page shows it to the sandbox.
    let r = s.curl(&["http://egress.internal/status"]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("client_rejected_ca"), "{}", r.body);
}

/// GnuTLS (wget) checks the certificate after the handshake and then closes with
/// close_notify, before any request: recorded as client_rejected_ca all the same (it used to
/// leave no record at all). Without the agent the same wget, trusting the test CA, succeeds.
#[test]
fn a_client_that_rejects_the_ca_after_the_handshake_is_recorded() {
    require_root!();
    let s = setup("inspect_gnutls");
    let ca = s.net.ca_pem.display().to_string();
    let wget = |extra: &[&str]| {
        s.topo
            .ctr_command("wget")
            .args(["-q", "-O", "-", "--tries=1", "--timeout=10"])
            .args(extra)
            .arg(format!("{API}/v1/x"))
            .output()
            .unwrap()
    };
    assert!(
        wget(&[&format!("--ca-certificate={ca}")]).status.success(),
        "direct"
    );
    let agent = s.agent();
    let started = std::time::Instant::now();
    let out = wget(&[]);
    assert!(!out.status.success(), "{out:?}");
    let rec = wait_record(&agent, |r| r["code"] == "client_rejected_ca");
    let reason = rec["reason"].as_str().unwrap();
    assert!(reason.contains("right after the handshake"), "{rec}");
    assert!(
        rec["hint"].as_str().unwrap().contains("--trust-ca"),
        "{rec}"
    );
    // Exactly one record for the connection.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let recs = egress_tests::agent::read_jsonl(&agent.audit);
    assert_eq!(
        recs.iter()
            .filter(|r| r["name"] == "api.allowed.test" && r["protocol"] != "dns")
            .count(),
        1,
        "{recs:#?} ({:?})",
        started.elapsed()
    );
}

/// ECH under inspection is stripped, not refused: a ClientHello carrying a
/// GREASE ECH extension (as every Chromium sends) to an inspected host gets the
/// agent's ServerHello; the same hello without the agent reaches fakenet.
#[test]
fn grease_ech_to_an_inspected_host_is_stripped_not_refused() {
    if !require_root() {
        return;
    }
    use egress_tests::clients::{client_hello_with, grease_ech_extension, raw};
    let s = setup("inspect_ech");
    let hello = client_hello_with(Some(b"api.allowed.test"), 16384, &grease_ech_extension());
    let direct = raw(&s.topo, "198.51.100.10", 443, &hello, 0, false);
    assert!(
        direct.server_hello(),
        "fakenet answers the hello directly: {:?}",
        direct.reply
    );
    let agent = s.agent();
    let r = raw(&s.topo, "198.51.100.10", 443, &hello, 0, false);
    assert!(
        r.server_hello(),
        "expected a ServerHello, got {:?} (alert {:?})",
        r.reply,
        r.tls_alert()
    );
    let rec = wait_record(&agent, |r| {
        r["name"] == "api.allowed.test" && r["reason"].as_str().is_some_and(|x| x.contains("ECH"))
    });
    assert!(
        rec["reason"].as_str().unwrap().contains("stripped"),
        "{rec}"
    );
}

/// Inspected connections of one container to the same name share verified upstream
/// connections (one TLS handshake upstream instead of one per client connection): HTTP/2
/// clients one HTTP/2 connection, HTTP/1.1 clients the HTTP/1.1 connection the previous one
/// left idle. Each client's HTTP version is the one the upstream sees; every request is still
/// checked on its own; a policy reload starts afresh.
#[test]
fn inspected_connections_share_an_upstream_until_the_policy_changes() {
    require_root!();
    let s = setup("inspect_share");
    let upstream_https = |net: &FakeNet| {
        net.connections()
            .iter()
            .filter(|c| c["service"] == "https")
            .count()
    };
    // Without the enforcer every client connection is an upstream connection.
    let before = upstream_https(&s.net);
    for _ in 0..3 {
        let d = s.curl_direct(&[
            "--resolve",
            "api.allowed.test:443:198.51.100.10",
            &format!("{API}/v1/items"),
        ]);
        assert_eq!(d.status, 200, "{d:?}");
    }
    assert_eq!(upstream_https(&s.net) - before, 3);

    let agent = s.agent();
    let before = upstream_https(&s.net);
    let mut peers: [Vec<String>; 2] = Default::default();
    for i in 0..6 {
        // Separate curl processes: separate client connections (h1 and h2 clients alike).
        let (flag, upstream_version) = if i % 2 == 0 {
            ("--http1.1", "HTTP/1.1")
        } else {
            ("--http2", "HTTP/2.0")
        };
        let r = s.curl(&[flag, &format!("{API}/v1/items/{i}")]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.echoed_header("x-api-key").as_deref(), Some(SECRET));
        let v = r.json();
        assert_eq!(v["version"], upstream_version, "{flag}: {v}");
        peers[i % 2].push(v["peer"].as_str().unwrap_or_default().to_string());
    }
    // Per-request rules still apply on the shared connections.
    s.curl(&[&format!("{API}/admin")])
        .assert_denied(403, "path_not_allowed");
    assert_eq!(
        upstream_https(&s.net) - before,
        2,
        "one upstream connection per HTTP version for 6 inspected client connections"
    );
    for p in &peers {
        assert!(
            p.iter().all(|x| x == &p[0]),
            "one upstream per version: {peers:?}"
        );
    }
    let shared = wait_record(&agent, |r| r["path"] == "/v1/items/3");
    assert!(
        shared["upstream"]
            .as_str()
            .is_some_and(|u| u.ends_with(":443")),
        "the audit record names the shared upstream: {shared}"
    );

    // A reload (even to equal rules) is a new snapshot: its connections dial afresh.
    std::fs::write(&agent.policy, s.policy().replace("inspect-1", "inspect-2")).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &agent.pid().to_string()])
        .status();
    let mut fresh = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !fresh && std::time::Instant::now() < deadline {
        let n = upstream_https(&s.net);
        let r = s.curl(&[&format!("{API}/v1/after-reload")]);
        assert_eq!(r.status, 200, "{r:?}");
        fresh = upstream_https(&s.net) > n;
        if fresh {
            let rec = wait_record(&agent, |r| {
                r["path"] == "/v1/after-reload" && r["policy"] == "inspect-2"
            });
            assert_eq!(rec["decision"], "allow", "{rec}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        fresh,
        "a request after the reload used the old snapshot's connection"
    );
    // Nor does an HTTP/1.1 client take the idle connection left under the old snapshot.
    let n = upstream_https(&s.net);
    let r = s.curl(&["--http1.1", &format!("{API}/v1/after-reload-h1")]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        upstream_https(&s.net),
        n + 1,
        "an HTTP/1.1 request after the reload used the old snapshot's idle connection"
    );
}

/// An inspected HTTP/1.1 upstream connection goes back to the container's shared ones as soon
/// as its request is answered: a client connection that stays open after its request holds
/// none, and the next client connection to the name uses it.
#[test]
fn an_idle_client_connection_holds_no_upstream_connection() {
    require_root!();
    use std::io::BufRead;
    let s = setup("inspect_idle_up");
    let _agent = s.agent();
    // Client A: one request, then it stays connected, idle, until its stdin closes.
    let script = r#"
import http.client, json, ssl, sys
c = http.client.HTTPSConnection("api.allowed.test", context=ssl.create_default_context())
c.request("GET", "/v1/items/a")
print(json.loads(c.getresponse().read())["peer"], flush=True)
sys.stdin.read()
c.close()
"#;
    let mut a = s
        .topo
        .ctr_command("python3")
        .args(["-c", script])
        .envs(s.trust.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufReader::new(a.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let a_peer = line.trim().to_string();
    assert!(a_peer.contains(':'), "client A's request: {line:?}");
    // Client B, while A is still connected: A's upstream connection serves it.
    let r = s.curl(&["--http1.1", &format!("{API}/v1/items/b")]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json()["peer"].as_str(),
        Some(a_peer.as_str()),
        "the idle client connection A kept its upstream connection"
    );
    drop(a.stdin.take());
    assert!(a.wait().unwrap().success());
}

/// An upstream that speaks HTTP/2 alone answers an offer of `http/1.1` alone with the
/// `no_application_protocol` alert. An HTTP/1.1 client's requests then go over HTTP/2, and
/// that connection serves the name's next HTTP/1.1 client connections too.
#[test]
fn http1_clients_reach_an_upstream_that_speaks_http2_alone() {
    require_root!();
    use egress_tests::addrs::H2_ONLY_PORT;
    let s = setup("inspect_h2only");
    let url = format!("{API}:{H2_ONLY_PORT}/v1/items");
    let resolve = format!("api.allowed.test:{H2_ONLY_PORT}:198.51.100.10");
    // Without the enforcer: the server refuses a client that offers HTTP/1.1 alone.
    let d = s.curl_direct(&["--http1.1", "--resolve", &resolve, &url]);
    assert!(
        !d.ok && d.stderr.contains("no application protocol"),
        "{d:?}"
    );
    let d = s.curl_direct(&["--http2", "--resolve", &resolve, &url]);
    assert_eq!(d.status, 200, "{d:?}");

    let policy = s.policy().replace(
        r#"inspect = ["api.allowed.test"]"#,
        &format!(r#"inspect = ["api.allowed.test", "api.allowed.test:{H2_ONLY_PORT}"]"#),
    );
    let agent = s.agent_with(&policy);
    let mut peers = Vec::new();
    for i in 0..3 {
        let r = s.curl(&["--http1.1", &format!("{url}/{i}")]);
        assert_eq!((r.status, r.version.as_str()), (200, "HTTP/1.1"), "{r:?}");
        let v = r.json();
        assert_eq!(v["version"], "HTTP/2.0", "{v}");
        assert_eq!(v["alpn"], "h2", "{v}");
        assert_eq!(r.echoed_header("x-api-key").as_deref(), Some(SECRET));
        peers.push(v["peer"].as_str().unwrap_or_default().to_string());
    }
    assert!(
        peers.iter().all(|p| p == &peers[0]),
        "the HTTP/1.1 clients after the first share its HTTP/2 connection: {peers:?}"
    );
    s.curl(&["--http1.1", &format!("{API}:{H2_ONLY_PORT}/admin")])
        .assert_denied(403, "path_not_allowed");
    let rec = wait_record(&agent, |r| r["path"] == "/v1/items/2");
    assert_eq!(rec["decision"], "allow", "{rec}");
}

#[test]
fn a_client_without_alpn_is_served_as_its_first_bytes_speak() {
    require_root!();
    let s = setup("inspect_no_alpn");
    let url = format!("{API}/v1/plain");
    // Without the enforcer: the fake internet answers a client that offers no ALPN.
    let d = s.curl_direct(&[
        "--no-alpn",
        "--resolve",
        "api.allowed.test:443:198.51.100.10",
        &url,
    ]);
    assert_eq!((d.status, d.version.as_str()), (200, "HTTP/1.1"), "{d:?}");

    let _agent = s.agent();
    // The agent's TLS server chose no protocol, so it tells HTTP/1.1 from HTTP/2 by the
    // client's first bytes; an ALPN-negotiated client gets the server of its protocol alone.
    let r = s.curl(&["--no-alpn", &url]);
    assert_eq!((r.status, r.version.as_str()), (200, "HTTP/1.1"), "{r:?}");
    assert_eq!(r.echoed_header("x-api-key").as_deref(), Some(SECRET));
    for (flag, version) in [("--http1.1", "HTTP/1.1"), ("--http2", "HTTP/2")] {
        let r = s.curl(&[flag, &url]);
        assert_eq!((r.status, r.version.as_str()), (200, version), "{r:?}");
    }
    s.curl(&["--no-alpn", &format!("{API}/admin")])
        .assert_denied(403, "path_not_allowed");
}
