//! Real clients run inside the container: curl, python3 (`urllib`, `http.client`, `ssl`, raw
//! sockets), and a hand-built TLS ClientHello. Shared by the integration tests and the demo.
//!
//! Every helper returns what the client saw (status, headers, body, error text, errno), never
//! what the agent says it did: the tests assert on the client's view, then on the audit log.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

use crate::topology::Topology;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The interpreter every python helper uses (not a pyenv shim: it must behave the same on every
/// machine the tests run on).
pub const PYTHON: &str = "/usr/bin/python3";

/// Proxy variables of the test process are never inherited by a client: each test says which
/// ones it sets.
const PROXY_VARS: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
];

fn clean_env(cmd: &mut Command, env: &[(&str, &str)]) {
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
}

/// What curl saw.
#[derive(Debug, Clone)]
pub struct Curl {
    /// curl's exit status (0 = transfer done, 6 = could not resolve, 7 = could not connect,
    /// 35 = TLS handshake failed, 56 = receive failure / CONNECT refused, ...).
    pub exit: i32,
    /// The final HTTP status (0 when none).
    pub status: u16,
    /// Every header block curl received (CONNECT responses included), as text.
    pub headers: String,
    pub body: String,
    pub stderr: String,
}

impl Curl {
    /// The body as JSON (fakenet's echo or the agent's denial).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    /// A header of the LAST response, case-insensitive.
    pub fn header(&self, name: &str) -> Option<String> {
        let last = self
            .headers
            .split("\r\n\r\n")
            .filter(|b| !b.trim().is_empty())
            .last()?;
        last.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Runs `curl -sS --max-time 10 ARGS` in the container with exactly the proxy variables in `env`.
pub fn curl(topo: &Topology, args: &[&str], env: &[(&str, &str)]) -> Curl {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let hdr = topo.workdir().join(format!("curl-{n}.headers"));
    let body = topo.workdir().join(format!("curl-{n}.body"));
    let mut cmd = topo.ctr_command("curl");
    cmd.args(["-sS", "--max-time", "10", "-D"])
        .arg(&hdr)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .args(args);
    clean_env(&mut cmd, env);
    let out = cmd.stdin(Stdio::null()).output().expect("running curl");
    let status = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let c = Curl {
        exit: out.status.code().unwrap_or(-1),
        status,
        headers: std::fs::read_to_string(&hdr).unwrap_or_default(),
        body: std::fs::read_to_string(&body).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let _ = std::fs::remove_file(&hdr);
    let _ = std::fs::remove_file(&body);
    c
}

/// Runs a python3 script in the container; its last stdout line must be JSON.
pub fn python(topo: &Topology, script: &str, args: &[&str], env: &[(&str, &str)]) -> Value {
    python_stdin(topo, script, args, env, &[])
}

/// Like [`python`], with `stdin` fed to the script.
pub fn python_stdin(
    topo: &Topology,
    script: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &[u8],
) -> Value {
    let mut cmd = topo.ctr_command(PYTHON);
    cmd.arg("-c").arg(script).args(args);
    clean_env(&mut cmd, env);
    let out = run_with_stdin(&mut cmd, stdin);
    last_json(&out)
}

fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut w = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    // A writer thread: the client may stop reading (reset) before it took everything.
    let t = std::thread::spawn(move || {
        let _ = w.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait");
    let _ = t.join();
    out
}

fn last_json(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "client printed no JSON (status {}): stdout={stdout:?} stderr={:?}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// `urllib.request.urlopen(URL)` honouring the proxy variables in `env`, with `cafile`.
/// Output: `{"status", "body", "headers", "error", "reason"}` (HTTPError bodies are read).
pub const PY_URLLIB: &str = r#"
import json, ssl, sys, urllib.request, urllib.error
url, cafile = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(cafile=cafile)
out = {"status": 0, "body": "", "headers": {}, "error": None}
try:
    r = urllib.request.urlopen(url, timeout=10, context=ctx)
    out["status"] = r.status; out["headers"] = dict(r.headers); out["body"] = r.read().decode("utf-8", "replace")
except urllib.error.HTTPError as e:
    out["status"] = e.code; out["headers"] = dict(e.headers); out["body"] = e.read().decode("utf-8", "replace")
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
    out["reason"] = str(getattr(e, "reason", ""))
print(json.dumps(out))
"#;

/// `http.client.HTTPConnection(addr, port)` with a chosen Host header (plain HTTP).
pub const PY_HTTP_CLIENT: &str = r#"
import json, sys, http.client
addr, port, host = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = {"status": 0, "body": "", "headers": {}, "error": None}
try:
    c = http.client.HTTPConnection(addr, port, timeout=10)
    c.putrequest("GET", "/", skip_host=True); c.putheader("Host", host); c.putheader("Connection", "close"); c.endheaders()
    r = c.getresponse()
    out["status"] = r.status; out["headers"] = dict(r.getheaders()); out["body"] = r.read().decode("utf-8", "replace")
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out))
"#;

/// `ssl` over a socket to ADDR:PORT with SNI = argv[3] ("" = none), CA file argv[4]; one
/// `GET / HTTP/1.1` with `Host: <sni or addr>`. Output `{"ok", "body", "error", "errno"}`.
pub const PY_TLS: &str = r#"
import json, socket, ssl, sys
addr, port, sni, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
out = {"ok": False, "body": "", "error": None}
try:
    ctx = ssl.create_default_context(cafile=cafile)
    if not sni:
        ctx.check_hostname = False
    s = socket.create_connection((addr, port), timeout=10)
    t = ctx.wrap_socket(s, server_hostname=sni or None)
    t.sendall(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (sni or addr)).encode())
    data = b""
    while True:
        b = t.recv(65536)
        if not b: break
        data += b
    out["ok"] = True; out["body"] = data.decode("utf-8", "replace")
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e); out["errno"] = getattr(e, "errno", None)
print(json.dumps(out))
"#;

/// Raw TCP: connect to ADDR:PORT, send stdin's bytes (in CHUNK-byte writes, DELAY seconds apart,
/// when CHUNK > 0), half-close if SHUT=1, read until EOF (or 1.5 s of silence after data).
/// Output: `{"ok", "reply" (hex), "errno", "error", "stage", "eof"}`.
pub const PY_RAW: &str = r#"
import json, socket, sys, time
addr, port, chunk, delay, shut = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5] == "1"
data = sys.stdin.buffer.read()
out = {"ok": False, "errno": None, "error": None, "eof": False}
buf = b""; stage = "connect"
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
s.settimeout(8)
try:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.connect((addr, port))
    stage = "send"
    if chunk > 0:
        for i in range(0, len(data), chunk):
            s.sendall(data[i:i + chunk]); time.sleep(delay)
    else:
        s.sendall(data)
    if shut:
        s.shutdown(socket.SHUT_WR)
    stage = "recv"
    while True:
        try:
            b = s.recv(65536)
        except socket.timeout:
            if buf: break
            raise
        if not b:
            out["eof"] = True; break
        buf += b; s.settimeout(1.5)
    out["ok"] = True
except OSError as e:
    out["errno"] = e.errno; out["error"] = "%s: %s" % (type(e).__name__, e); out["stage"] = stage
out["reply"] = buf.hex()
print(json.dumps(out))
"#;

/// What a raw TCP exchange saw.
#[derive(Debug, Clone)]
pub struct Raw {
    pub ok: bool,
    pub reply: Vec<u8>,
    pub errno: Option<i64>,
    pub error: Option<String>,
    pub stage: Option<String>,
    pub eof: bool,
}

impl Raw {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.reply).into_owned()
    }
    /// The HTTP status of the reply, if it is one.
    pub fn http_status(&self) -> Option<u16> {
        let t = self.text();
        let line = t.lines().next()?;
        line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
    }
    /// The body of an HTTP reply, as JSON.
    pub fn http_json(&self) -> Value {
        let t = self.text();
        t.split_once("\r\n\r\n")
            .and_then(|(_, b)| serde_json::from_str(b.trim()).ok())
            .unwrap_or(Value::Null)
    }
    /// A header of an HTTP reply.
    pub fn http_header(&self, name: &str) -> Option<String> {
        let t = self.text();
        let head = t.split_once("\r\n\r\n")?.0.to_string();
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
    /// A TLS alert record (content type 21) as (level, description), if the reply starts with one.
    pub fn tls_alert(&self) -> Option<(u8, u8)> {
        match self.reply.as_slice() {
            [21, 3, _, 0, 2, level, desc, ..] => Some((*level, *desc)),
            _ => None,
        }
    }
    /// Whether the reply starts with a TLS handshake record carrying a ServerHello.
    pub fn server_hello(&self) -> bool {
        matches!(self.reply.as_slice(), [22, 3, _, _, _, 2, ..])
    }
}

/// TLS alert descriptions (RFC 8446 §6).
pub const ALERT_ACCESS_DENIED: u8 = 49;
pub const ALERT_UNRECOGNIZED_NAME: u8 = 112;
pub const ECONNRESET: i64 = 104;
pub const EPERM: i64 = 1;

/// Sends `data` from the container to `addr:port` over raw TCP (see [`PY_RAW`]); `chunk` > 0
/// splits the writes (TCP_NODELAY, 20 ms apart: separate segments).
pub fn raw(topo: &Topology, addr: &str, port: u16, data: &[u8], chunk: usize, shut: bool) -> Raw {
    let port = port.to_string();
    let chunk_s = chunk.to_string();
    let v = python_stdin(
        topo,
        PY_RAW,
        &[addr, &port, &chunk_s, "0.02", if shut { "1" } else { "0" }],
        &[],
        data,
    );
    Raw {
        ok: v["ok"] == true,
        reply: hex_decode(v["reply"].as_str().unwrap_or("")),
        errno: v["errno"].as_i64(),
        error: v["error"].as_str().map(str::to_string),
        stage: v["stage"].as_str().map(str::to_string),
        eof: v["eof"] == true,
    }
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// A plain `GET / HTTP/1.1` with `Host: host` and `Connection: close`.
pub fn http_get(host: &str) -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: egress-tests\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// A TLS 1.3-capable ClientHello (TLS 1.2 record framing), SNI `sni` (raw bytes: may be an IP
/// literal or garbage; `None` = no SNI extension), ALPN http/1.1. Split into records of at most
/// `record_max` bytes of handshake data each (`0` = one record).
pub fn client_hello(sni: Option<&[u8]>, record_max: usize) -> Vec<u8> {
    client_hello_with(sni, record_max, &[])
}

/// A GREASE-style `encrypted_client_hello` (0xfe0d) outer extension, as every
/// Chromium sends: outer type, HPKE suite, config id, a 32-byte enc, a payload.
pub fn grease_ech_extension() -> Vec<u8> {
    let mut body = vec![0u8, 0, 1, 0, 1, 0x42, 0, 32];
    body.extend_from_slice(&[0x11u8; 32]);
    body.extend_from_slice(&[0, 144]);
    body.extend_from_slice(&[0x22u8; 144]);
    let mut ext = vec![0xfe, 0x0d];
    ext.extend_from_slice(&(body.len() as u16).to_be_bytes());
    ext.extend_from_slice(&body);
    ext
}

/// [`client_hello`] with extra raw extensions appended (type, length, body each).
pub fn client_hello_with(sni: Option<&[u8]>, record_max: usize, extra: &[u8]) -> Vec<u8> {
    fn u16b(n: usize) -> [u8; 2] {
        (n as u16).to_be_bytes()
    }
    let mut ext = Vec::new();
    if let Some(name) = sni {
        let mut list = vec![0u8];
        list.extend_from_slice(&u16b(name.len()));
        list.extend_from_slice(name);
        ext.extend_from_slice(&[0, 0]);
        ext.extend_from_slice(&u16b(list.len() + 2));
        ext.extend_from_slice(&u16b(list.len()));
        ext.extend_from_slice(&list);
    }
    // supported_groups: x25519, secp256r1
    ext.extend_from_slice(&[0, 10, 0, 6, 0, 4, 0, 0x1d, 0, 0x17]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256, ed25519
    ext.extend_from_slice(&[0, 13, 0, 10, 0, 8, 4, 3, 8, 4, 4, 1, 8, 7]);
    // ec_point_formats: uncompressed
    ext.extend_from_slice(&[0, 11, 0, 2, 1, 0]);
    // ALPN: http/1.1
    ext.extend_from_slice(&[0, 16, 0, 11, 0, 9, 8]);
    ext.extend_from_slice(b"http/1.1");
    // supported_versions: TLS 1.3, 1.2
    ext.extend_from_slice(&[0, 43, 0, 5, 4, 3, 4, 3, 3]);
    // key_share: x25519 with a fixed (valid-length) public key
    ext.extend_from_slice(&[0, 51, 0, 38, 0, 36, 0, 0x1d, 0, 32]);
    ext.extend_from_slice(&[9u8; 32]);
    ext.extend_from_slice(extra);

    let mut body = vec![3, 3];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(32);
    body.extend_from_slice(&[5u8; 32]); // legacy session id
                                        // cipher suites: TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256,
                                        // ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256
    body.extend_from_slice(&[0, 10, 0x13, 1, 0x13, 2, 0x13, 3, 0xc0, 0x2b, 0xc0, 0x2f]);
    body.extend_from_slice(&[1, 0]); // compression: null
    body.extend_from_slice(&u16b(ext.len()));
    body.extend_from_slice(&ext);

    let mut hs = vec![1u8];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);

    let max = if record_max == 0 {
        hs.len()
    } else {
        record_max
    };
    let mut out = Vec::new();
    for piece in hs.chunks(max) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&u16b(piece.len()));
        out.extend_from_slice(piece);
    }
    out
}

/// The fields of the deny contract's JSON body (DESIGN.md §6), in order.
pub const DENY_FIELDS: [&str; 7] = ["error", "host", "port", "reason", "rule", "policy", "hint"];

/// The agent's inspection CA in `state` (made now if missing, as the agent will load it), as
/// `egress-agent ca env` exports it for clients: (variable, value) pairs, without
/// JAVA_TOOL_OPTIONS.
pub fn agent_ca_env(state: &std::path::Path) -> Vec<(String, String)> {
    let out = Command::new(crate::bin_path("egress-agent"))
        .args(["ca", "env"])
        .env("EGRESS_STATE_DIR", state)
        .output()
        .expect("egress-agent ca env");
    assert!(out.status.success(), "ca env: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter(|l| !l.starts_with("JAVA_TOOL_OPTIONS"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}
