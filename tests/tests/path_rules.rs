//! Path rules that cannot be talked around (issue 17 §6), against a real server that
//! normalises the way lenient servers do. `tomcat.test` (in the fake internet) answers every
//! request with the path it would act on: `;` parameters stripped per segment (Tomcat, Jetty,
//! Spring), escapes decoded twice (an application behind a decoding proxy), overlong UTF-8 and
//! IIS `%uXXXX` decoded, the path ended at NUL (C), `\` read as `/`, dot segments removed — and
//! the first segment as a router that matches the raw path sees it.
//!
//! Without the agent, each spelling below reaches something outside `/ok/`; through the agent,
//! with a rule allowing only `/ok/**` on the inspected host, each is `path_not_allowed` and never
//! arrives, while every legitimate path under `/ok/` still does, unchanged.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use egress_tests::{
    agent::Agent, bin_path, clients::*, lab::pki::issue_leaf, require_root, threat,
    topology::Topology,
};
use serde_json::Value;

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);

/// The lenient server (python3 standard library only). argv: cert key addr port log.
const LENIENT_PY: &str = r#"
import http.server, json, re, ssl, sys
cert, key, addr, port, log = sys.argv[1:6]

def unescape(b):
    b = re.sub(rb'%u([0-9a-fA-F]{4})', lambda m: chr(int(m.group(1), 16)).encode('utf-8'), b)
    return re.sub(rb'%([0-9a-fA-F]{2})', lambda m: bytes([int(m.group(1), 16)]), b)

def lenient_utf8(b):
    out, i = [], 0
    while i < len(b):
        c = b[i]
        if 0xc0 <= c < 0xe0 and i + 1 < len(b):
            out.append(chr(((c & 0x1f) << 6) | (b[i + 1] & 0x3f))); i += 2
        elif 0xe0 <= c < 0xf0 and i + 2 < len(b):
            out.append(chr(((c & 0x0f) << 12) | ((b[i + 1] & 0x3f) << 6) | (b[i + 2] & 0x3f))); i += 3
        else:
            out.append(chr(c)); i += 1
    return ''.join(out)

def acts_on(raw):
    segs = raw.split('?')[0].split('/')
    p = '/'.join(s.split(';')[0] for s in segs).encode('latin-1')
    p = unescape(unescape(p)).split(b'\0')[0]
    p = lenient_utf8(p).replace('\\', '/')
    out = []
    for s in re.sub('/+', '/', p).split('/')[1:]:
        if s == '..':
            out = out[:-1]
        elif s != '.':
            out.append(s)
    if p.endswith(('/.', '/..')):
        out.append('')
    return '/' + '/'.join(out)

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_GET(self):
        raw = self.path
        with open(log, 'a') as f:
            f.write(json.dumps(raw) + '\n')
        body = json.dumps({'raw': raw, 'acts_on': acts_on(raw),
                           'routed': raw.split('?')[0].split('/')[1]}).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

srv = http.server.ThreadingHTTPServer((addr, int(port)), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print('READY', flush=True)
srv.serve_forever()
"#;

/// (class, spelling, what the denial's reason says). Each is sent as is (`--path-as-is`).
const TALKED_AROUND: &[(&str, &str, &str)] = &[
    ("dot segments", "/ok/../admin", "act on \"/admin\""),
    (
        "encoded dot segments",
        "/ok/%2e%2e/admin",
        "act on \"/admin\"",
    ),
    (
        "dot segments before the prefix",
        "/admin/../ok/x",
        "as sent act on",
    ),
    ("path parameters on a dot segment", "/ok/..;/admin", "`..;`"),
    (
        "path parameters on a dot segment",
        "/ok/..;jsessionid=1/admin",
        "`..;`",
    ),
    ("double encoding", "/ok/%252e%252e/admin", "encoded `%`"),
    ("overlong UTF-8", "/ok/%c0%ae%c0%ae/admin", "UTF-8"),
    ("NUL", "/ok/..%00/admin", "NUL"),
    ("encoded separator", "/ok/..%2fadmin", "encoded `/`"),
    ("encoded backslash", "/ok/..%5cadmin", "encoded `/`"),
    ("IIS %u escape", "/ok/%u002e%u002e/admin", "two hex digits"),
];

/// Legitimate paths under `/ok/`: allowed, forwarded unchanged, acted on under `/ok/`.
const LEGITIMATE: &[&str] = &[
    "/ok/",
    "/ok/a",
    "/ok/a/b/c.json",
    "/ok/%7Euser",
    "/ok/%41bc",
    "/ok/a-b_c.d~e",
    "/ok/caf%C3%A9",
    "/ok/a%20b",
    "/ok/a;v=1",
    "/ok/.well-known/x",
    "/ok/a/./b",
    "/ok/x?next=/../admin&q=%252e",
];

/// The lenient server in up-*, killed on drop.
struct Lenient {
    _script: egress_tests::topology::UpScript,
    log: PathBuf,
}

impl Lenient {
    fn start(topo: &Topology, ca_key: &std::path::Path) -> Lenient {
        let dir = topo.workdir();
        let (cert, key, log) = (dir.join("t.pem"), dir.join("t.key"), dir.join("t.log"));
        issue_leaf(ca_key, &["tomcat.test"], &cert, &key);
        topo.add_up_address(SERVER_IP);
        let args = [
            cert.into_os_string(),
            key.into_os_string(),
            SERVER_IP.to_string().into(),
            "443".into(),
            log.clone().into_os_string(),
        ];
        let _script = topo.start_up_script(LENIENT_PY, args, "the lenient server");
        Lenient { _script, log }
    }

    /// Every raw path it received so far.
    fn received(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

fn get(topo: &Topology, ca: &str, path: &str, extra: &[&str]) -> Curl {
    let url = format!("https://tomcat.test{path}");
    let mut args = vec!["--path-as-is", "--cacert", ca];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(topo, &args, &[])
}

#[test]
fn path_spellings_that_servers_normalise_elsewhere_are_refused() {
    require_root!();
    let topo = Topology::new("path_rules");
    let ca_key = topo.workdir().join("fakenet-ca.key");
    let ca_key_arg = ca_key.display().to_string();
    let net = topo.start_fakenet_with(&[
        "--ca-key-out",
        &ca_key_arg,
        "--record",
        &format!("tomcat.test={SERVER_IP}"),
    ]);
    let server = Lenient::start(&topo, &ca_key);
    let net_ca = net.ca_pem.display().to_string();
    let direct = ["--resolve", "tomcat.test:443:203.0.113.20"];

    // Without the agent: every spelling reaches the server, which acts outside /ok/.
    for (class, path, _) in TALKED_AROUND {
        let c = get(&topo, &net_ca, path, &direct);
        assert_eq!(c.status, 200, "{class} {path}: {c:?}");
        let v = c.json();
        let acts = v["acts_on"].as_str().unwrap_or("");
        assert!(
            !acts.starts_with("/ok/") || v["routed"] != "ok",
            "{class} {path} stays under /ok/ even without the agent: {v}"
        );
    }

    let state = topo.workdir().join("state");
    let out = Command::new(bin_path("egress-agent"))
        .args(["ca", "export"])
        .env("EGRESS_STATE_DIR", &state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let agent_ca = topo.workdir().join("agent-ca.pem");
    std::fs::write(&agent_ca, &out.stdout).unwrap();
    let agent_ca = agent_ca.display().to_string();
    let policy = format!(
        r#"version = "paths-1"
resolver = "203.0.113.53:53"
allow_ranges = ["198.51.100.0/24", "203.0.113.0/24", "2001:db8:100::/48"]
upstream_ca = "{net_ca}"
[profile.default]
inspect = ["tomcat.test"]
[[profile.default.http]]
host = "tomcat.test"
paths = ["/ok/**"]
"#
    );
    let state = state.display().to_string();
    let _agent = Agent::attach_with_env(&topo, &policy, &[("EGRESS_STATE_DIR", &state)]);
    let before = server.received().len();

    // Through the agent (HTTP/2 and HTTP/1.1 to it): refused with the reason, never forwarded.
    for version in ["--http2", "--http1.1"] {
        for (class, path, why) in TALKED_AROUND {
            let c = get(&topo, &agent_ca, path, &[version]);
            let v = c.json();
            let refused = c.status == 403 && v["error"] == "path_not_allowed";
            threat("C", &format!("path rule talked around: {class}"), refused);
            assert!(refused, "{class} {path} {version}: {c:?}");
            let reason = v["reason"].as_str().unwrap_or("");
            assert!(reason.contains(why), "{class} {path}: {reason}");
            assert_eq!(v["rule"], "profile.default.http[0]", "{v}");
        }
    }
    let arrived = &server.received()[before..];
    assert!(
        arrived.is_empty(),
        "refused paths reached the server: {arrived:?}"
    );

    // Every legitimate path under /ok/ passes, unchanged, and is acted on under /ok/.
    for path in LEGITIMATE {
        let c = get(&topo, &agent_ca, path, &[]);
        assert_eq!(c.status, 200, "{path}: {c:?}");
        let v = c.json();
        assert_eq!(v["raw"], *path, "forwarded unchanged: {v}");
        let acts = v["acts_on"].as_str().unwrap_or("");
        assert!(
            acts.starts_with("/ok/") && v["routed"] == "ok",
            "{path}: {v}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.received().len() < before + LEGITIMATE.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let got: Vec<Value> = server.received()[before..]
        .iter()
        .map(|p| Value::from(p.as_str()))
        .collect();
    assert_eq!(got.len(), LEGITIMATE.len(), "{got:?}");
}
