//! Revocation and issuer hosts (issue 17 §4): with `allow_revocation = true`, the OCSP,
//! CA-issuers and CRL URLs named in the certificate chain an inspected, allowed host presented to
//! the agent become reachable — plain HTTP GET to exactly those paths — and nothing else on those
//! hosts is.
//!
//! `pki.test` (HTTPS, in the fake internet) presents a leaf whose Authority Information Access
//! names `http://ocsp.pki-ca.test/r1` (OCSP) and `http://ca.pki-ca.test:8080/r1.der` (CA
//! issuers) and whose CRL distribution point is `http://crl.pki-ca.test/r1.crl`; those three
//! names and `other.pki-ca.test` are one HTTP server that answers anything and logs it.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use egress_tests::{
    agent::Agent, bin_path, clients::*, lab::pki::issue_leaf_with, require_root, threat,
    topology::Topology,
};
use rcgen::{CrlDistributionPoint, CustomExtension};
use serde_json::Value;

const TLS_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 30);
const PKI_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 31);
const OCSP: &str = "http://ocsp.pki-ca.test/r1";
const ISSUERS: &str = "http://ca.pki-ca.test:8080/r1.der";
const CRL: &str = "http://crl.pki-ca.test/r1.crl";

/// HTTPS on TLS_IP:443 with the leaf; HTTP on PKI_IP:80 and :8080 answering every method and
/// path with 200 and a JSON line of what it got, also appended to the log.
/// argv: cert key tls_ip pki_ip log.
const SERVERS_PY: &str = r#"
import http.server, json, ssl, sys, threading
cert, key, tls_ip, pki_ip, log = sys.argv[1:6]
class H(http.server.BaseHTTPRequestHandler):
    def any(self):
        n = int(self.headers.get('content-length') or 0)
        if n: self.rfile.read(n)
        seen = {"method": self.command, "host": self.headers.get('host', ''), "path": self.path}
        with open(log, 'a') as f: f.write(json.dumps(seen) + "\n")
        body = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header('content-type', 'application/json')
        self.send_header('content-length', str(len(body)))
        self.end_headers()
        if self.command != 'HEAD': self.wfile.write(body)
    do_GET = do_POST = do_HEAD = do_PUT = any
    def log_message(self, *a): pass
def serve(s): threading.Thread(target=s.serve_forever, daemon=True).start()
tls = http.server.ThreadingHTTPServer((tls_ip, 443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
serve(tls)
for port in (80, 8080): serve(http.server.ThreadingHTTPServer((pki_ip, port), H))
print("READY", flush=True)
sys.stdin.read()
"#;

/// DER of an AuthorityInfoAccess extension value with one OCSP and one CA-issuers URI.
fn aia(ocsp: &str, issuers: &str) -> Vec<u8> {
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        assert!(body.len() < 128, "short forms only");
        let mut v = vec![tag, body.len() as u8];
        v.extend_from_slice(body);
        v
    }
    let desc = |last: u8, uri: &str| {
        let mut b = tlv(0x06, &[0x2b, 6, 1, 5, 5, 7, 48, last]);
        b.extend(tlv(0x86, uri.as_bytes()));
        tlv(0x30, &b)
    };
    let mut body = desc(1, ocsp);
    body.extend(desc(2, issuers));
    tlv(0x30, &body)
}

struct Servers {
    _script: egress_tests::topology::UpScript,
    log: PathBuf,
}

impl Servers {
    fn start(topo: &Topology, ca_key: &Path) -> Servers {
        let dir = topo.workdir();
        let (cert, key, log) = (dir.join("p.pem"), dir.join("p.key"), dir.join("p.log"));
        issue_leaf_with(ca_key, &["pki.test"], &cert, &key, |p| {
            p.custom_extensions = vec![CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 5, 5, 7, 1, 1],
                aia(OCSP, ISSUERS),
            )];
            p.crl_distribution_points = vec![CrlDistributionPoint {
                uris: vec![CRL.into()],
            }];
        });
        topo.add_up_address(TLS_IP);
        topo.add_up_address(PKI_IP);
        let args = [
            cert.into_os_string(),
            key.into_os_string(),
            TLS_IP.to_string().into(),
            PKI_IP.to_string().into(),
            log.clone().into_os_string(),
        ];
        let _script = topo.start_up_script(SERVERS_PY, args, "the servers");
        Servers { _script, log }
    }

    /// Every request the plain HTTP servers (not `pki.test`) received so far, as
    /// `METHOD host path`.
    fn received(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["host"] != "pki.test")
            .map(|v| format!("{} {} {}", v["method"], v["host"], v["path"]).replace('"', ""))
            .collect()
    }
}

/// The requests tried on the learned hosts: (method, URL, allowed once learned).
const TRIES: &[(&str, &str, bool)] = &[
    (
        "GET",
        "http://ocsp.pki-ca.test/r1/MEkwRzBFMEMwQTAJBgUrDgMCGgUABBQ",
        true,
    ),
    ("GET", "http://crl.pki-ca.test/r1.crl", true),
    ("HEAD", "http://crl.pki-ca.test/r1.crl", true),
    ("GET", "http://ca.pki-ca.test:8080/r1.der", true),
    ("POST", "http://ocsp.pki-ca.test/r1", false),
    ("GET", "http://ocsp.pki-ca.test/admin", false),
    ("GET", "http://ocsp.pki-ca.test/r10", false),
    ("GET", "http://crl.pki-ca.test/r1.crl/../admin", false),
    ("GET", "http://crl.pki-ca.test/r1.crl;/../../admin", false),
    ("PUT", "http://crl.pki-ca.test/r1.crl", false),
    ("GET", "http://crl.pki-ca.test:8080/r1.crl", false),
    ("GET", "http://ca.pki-ca.test/r1.der", false),
    ("GET", "http://other.pki-ca.test/r1.crl", false),
];

/// One request from the container; `resolve`: straight to the servers (without the agent).
fn request(topo: &Topology, method: &str, url: &str, resolve: bool) -> Curl {
    let mut args = vec!["--path-as-is", "-X", method];
    if method == "HEAD" {
        args = vec!["--path-as-is", "--head"];
    }
    let host_port = url.trim_start_matches("http://").split('/').next().unwrap();
    let (host, port) = host_port.split_once(':').unwrap_or((host_port, "80"));
    let pin = format!("{host}:{port}:{PKI_IP}");
    if resolve {
        args.extend(["--resolve", &pin]);
    }
    args.push(url);
    curl(topo, &args, &[])
}

fn agent_ca(topo: &Topology, state: &Path) -> String {
    let out = Command::new(bin_path("egress-agent"))
        .args(["ca", "export"])
        .env("EGRESS_STATE_DIR", state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let path = topo.workdir().join("agent-ca.pem");
    std::fs::write(&path, &out.stdout).unwrap();
    path.display().to_string()
}

fn policy(net_ca: &str, allow_revocation: bool) -> String {
    format!(
        r#"version = "revocation-1"
resolver = "203.0.113.53:53"
allow_ranges = ["203.0.113.0/24"]
upstream_ca = "{net_ca}"
[profile.default]
inspect = ["pki.test"]
allow_revocation = {allow_revocation}
"#
    )
}

fn wait_for(servers: &Servers, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while servers.received().len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    servers.received()
}

#[test]
fn the_urls_an_allowed_hosts_certificate_names_and_nothing_else() {
    require_root!();
    let topo = Topology::new("revocation");
    let ca_key = topo.workdir().join("fakenet-ca.key");
    let records: Vec<String> = ["pki.test", "ocsp.pki-ca.test", "crl.pki-ca.test"]
        .iter()
        .zip([TLS_IP, PKI_IP, PKI_IP])
        .chain(
            [("ca.pki-ca.test", PKI_IP), ("other.pki-ca.test", PKI_IP)]
                .iter()
                .map(|(n, ip)| (n, *ip)),
        )
        .flat_map(|(n, ip)| ["--record".to_string(), format!("{n}={ip}")])
        .collect();
    let mut args = vec!["--ca-key-out", ca_key.to_str().unwrap()];
    args.extend(records.iter().map(String::as_str));
    let net = topo.start_fakenet_with(&args);
    let servers = Servers::start(&topo, &ca_key);
    let net_ca = net.ca_pem.display().to_string();

    // Without the agent: every one of them reaches the server.
    for (method, url, _) in TRIES {
        let c = request(&topo, method, url, true);
        assert_eq!(c.status, 200, "without the agent {method} {url}: {c:?}");
    }
    let mut seen = wait_for(&servers, TRIES.len()).len();
    assert_eq!(seen, TRIES.len());

    let state = topo.workdir().join("state");
    let ca = agent_ca(&topo, &state);
    let state_arg = state.display().to_string();
    let env = [("EGRESS_STATE_DIR", state_arg.as_str())];
    {
        // allow_revocation = false: what the certificate names stays denied.
        let _agent = Agent::attach_with_env(&topo, &policy(&net_ca, false), &env);
        let c = curl(&topo, &["--cacert", &ca, "https://pki.test/"], &[]);
        assert_eq!(c.status, 200, "{c:?}");
        let c = request(&topo, "GET", CRL, false);
        let refused = c.status == 403 && c.json()["error"] == "host_not_allowed";
        threat("C", "revocation host without allow_revocation", refused);
        assert!(refused, "{c:?}");
    }
    let agent = Agent::attach_with_env(&topo, &policy(&net_ca, true), &env);
    // Before the agent has seen the chain: nothing is learned, so nothing is open.
    let c = request(&topo, "GET", CRL, false);
    assert_eq!(c.status, 403, "before any TLS to pki.test: {c:?}");
    assert_eq!(c.json()["error"], "host_not_allowed", "{c:?}");

    let c = curl(&topo, &["--cacert", &ca, "https://pki.test/"], &[]);
    assert_eq!(c.status, 200, "the inspected host: {c:?}");
    for (method, url, allowed) in TRIES {
        let c = request(&topo, method, url, false);
        if *allowed {
            assert_eq!(c.status, 200, "{method} {url}: {c:?}");
            seen += 1;
        } else {
            let refused = c.status == 403 || c.status == 421;
            threat("C", &format!("revocation host: {method} {url}"), refused);
            assert!(refused, "{method} {url} must be refused: {c:?}");
            if c.status == 403 && *method != "HEAD" {
                let why = c.json()["error"].as_str().unwrap_or("").to_string();
                assert!(
                    ["method_not_allowed", "path_not_allowed", "host_not_allowed"]
                        .contains(&why.as_str()),
                    "{method} {url}: {c:?}"
                );
            }
        }
    }
    let got = wait_for(&servers, seen);
    let arrived = &got[TRIES.len()..];
    let wanted: Vec<String> = TRIES
        .iter()
        .filter(|t| t.2)
        .map(|(m, u, _)| {
            let rest = u.trim_start_matches("http://");
            let (hp, path) = rest.split_at(rest.find('/').unwrap());
            format!("{m} {hp} {path}")
        })
        .collect();
    assert_eq!(arrived, wanted.as_slice(), "only the learned URLs arrive");

    // Audit: the allowed ones name the host whose certificate named them.
    let is_crl = |r: &Value| {
        r["decision"] == "allow" && r["name"] == "crl.pki-ca.test" && r["protocol"] == "http"
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut records = agent.audit_records(1);
    while !records.iter().any(is_crl) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        records = agent.audit_records(1);
    }
    let learned: Vec<&Value> = records.iter().filter(|r| is_crl(r)).collect();
    assert!(!learned.is_empty(), "{records:?}");
    for r in learned {
        let rule = r["rule"].as_str().unwrap_or("");
        assert!(rule.contains("certificate of pki.test"), "{r}");
    }
}

#[test]
fn allow_revocation_is_checked_like_every_key() {
    require_root!();
    let dir = tempdir();
    for (text, want) in [
        (
            "[profile.default]\ninspect = [\"a.test\"]\nallow_revocation = \"yes\"\n",
            "allow_revocation",
        ),
        (
            "[profile.default]\nallow = [\"a.test\"]\nallow_revocation = true\n",
            "inspects none",
        ),
    ] {
        let p = dir.join("p.toml");
        std::fs::write(&p, text).unwrap();
        let out = Command::new(bin_path("egress-agent"))
            .args(["policy", "check"])
            .arg(&p)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(&format!("{}:3:", p.display())), "{err}");
        assert!(err.contains(want), "{err}");
    }
    let p = dir.join("ok.toml");
    std::fs::write(
        &p,
        "[profile.default]\ninspect = [\"a.test\"]\nallow_revocation = true\n",
    )
    .unwrap();
    let out = Command::new(bin_path("egress-agent"))
        .args(["policy", "show"])
        .arg(&p)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        shown.contains("allow_revocation = true  # plain HTTP GET"),
        "{shown}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("egress-revocation-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
