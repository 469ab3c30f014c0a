//! fakenet: the fake internet, run inside a test topology's `up-*` namespace.
//!
//! HTTP/HTTPS JSON echo, TCP echo, a banner-first server, UDP echo, DNS (UDP+TCP) for the test zone,
//! a fake metadata server and a "private" server; every query and connection is logged as JSONL.
//! Prints `READY` once every listener is bound; exits when stdin closes or on SIGTERM.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use egress_tests::addrs::*;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

#[derive(Parser, Debug)]
#[command(about = "The fake internet of the egress-agent test topology")]
struct Args {
    /// Write the test CA certificate (PEM) here.
    #[arg(long)]
    ca_out: Option<PathBuf>,
    /// Write the test CA's private key (PEM, mode 0600) here, so that other servers of the fake
    /// internet (tests/src/lab) can hold certificates from the same CA.
    #[arg(long)]
    ca_key_out: Option<PathBuf>,
    /// Append one JSON line per DNS query here.
    #[arg(long)]
    query_log: Option<PathBuf>,
    /// Append one JSON line per accepted TCP connection / UDP datagram here.
    #[arg(long)]
    conn_log: Option<PathBuf>,
    /// Additional addresses to serve DNS on (e.g. the host's resolv.conf nameserver).
    #[arg(long)]
    dns_extra: Vec<IpAddr>,
    /// Extra zone records `NAME=IP` (repeatable; A or AAAA by the address family; replaces the
    /// built-in answer for NAME).
    #[arg(long)]
    record: Vec<String>,
    /// Extra zone records from a JSON file `{"name": ["ip", ...], ...}`.
    #[arg(long)]
    zone: Option<PathBuf>,
    /// Do not bind the built-in server addresses (only DNS on --dns-extra; for local experiments).
    #[arg(long)]
    dns_only: bool,
    /// Benchmark upstream (see /work/shared/BENCH.md): TLS 1.3 with AES-128-GCM and X25519 only, and
    /// no per-connection log line for the HTTP/HTTPS servers (DNS and other services still log).
    #[arg(long)]
    bench: bool,
    /// Rewrite this file every 100 ms with the HTTP/HTTPS servers' counters (JSON: accepted,
    /// tls_ok, tls_failed, requests, conn_errors, bytes_sent) — the upstream side of "zero errors".
    #[arg(long)]
    stats_out: Option<PathBuf>,
}

/// Counters of the HTTP/HTTPS servers, for `--stats-out`.
#[derive(Default)]
struct HttpStats {
    accepted: AtomicU64,
    tls_ok: AtomicU64,
    tls_failed: AtomicU64,
    requests: AtomicU64,
    /// hyper's serve_connection ended with an error (reset mid-message, malformed request, ...).
    conn_errors: AtomicU64,
    /// Connections the client reset or closed abruptly with nothing in flight: every request
    /// it sent had its whole response produced. Not an error (load generators close that way).
    closed_abruptly: AtomicU64,
    /// Body bytes of `/bytes/N` responses.
    bytes_sent: AtomicU64,
}

static STATS: HttpStats = HttpStats {
    accepted: AtomicU64::new(0),
    tls_ok: AtomicU64::new(0),
    tls_failed: AtomicU64::new(0),
    requests: AtomicU64::new(0),
    conn_errors: AtomicU64::new(0),
    closed_abruptly: AtomicU64::new(0),
    bytes_sent: AtomicU64::new(0),
};

impl HttpStats {
    fn json(&self) -> Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "accepted": g(&self.accepted),
            "tls_ok": g(&self.tls_ok),
            "tls_failed": g(&self.tls_failed),
            "requests": g(&self.requests),
            "conn_errors": g(&self.conn_errors),
            "closed_abruptly": g(&self.closed_abruptly),
            "bytes_sent": g(&self.bytes_sent),
        })
    }
}

async fn write_stats(path: PathBuf) {
    let tmp = path.with_extension("tmp");
    loop {
        if std::fs::write(&tmp, STATS.json().to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Append-only JSONL log shared by every server task.
struct Log(Option<Mutex<File>>);

impl Log {
    fn open(path: &Option<PathBuf>) -> Result<Log> {
        Ok(Log(match path {
            Some(p) => Some(Mutex::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("open {}", p.display()))?,
            )),
            None => None,
        }))
    }
    fn write(&self, mut v: Value) {
        if let Some(f) = &self.0 {
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            v["ts"] = json!(ts);
            let mut line = v.to_string();
            line.push('\n');
            let _ = f.lock().unwrap().write_all(line.as_bytes());
        }
    }
}

struct State {
    conns: Log,
    /// `--bench`: HTTP/HTTPS connections are counted (STATS), not logged.
    quiet_http: bool,
    queries: Log,
    zone: Zone,
}

// ---------------------------------------------------------------------------------------------
// DNS

struct Zone {
    static_v4: HashMap<String, Vec<Ipv4Addr>>,
    static_v6: HashMap<String, Vec<Ipv6Addr>>,
    rebind_count: AtomicUsize,
}

enum Answer {
    NxDomain,
    Records(Vec<(IpAddr, u32)>),
}

impl Zone {
    fn new(extra: &[(String, IpAddr)]) -> Zone {
        let mut static_v4: HashMap<String, Vec<Ipv4Addr>> = HashMap::new();
        let mut static_v6: HashMap<String, Vec<Ipv6Addr>> = HashMap::new();
        for (name, v4, v6) in ZONE {
            static_v4.insert(name.to_string(), v4.to_vec());
            static_v6.insert(name.to_string(), v6.to_vec());
        }
        let mut replaced = Vec::new();
        for (name, ip) in extra {
            let name = canon(name);
            if !replaced.contains(&name) {
                static_v4.insert(name.clone(), vec![]);
                static_v6.insert(name.clone(), vec![]);
                replaced.push(name.clone());
            }
            match ip {
                IpAddr::V4(a) => static_v4.get_mut(&name).unwrap().push(*a),
                IpAddr::V6(a) => static_v6.get_mut(&name).unwrap().push(*a),
            }
        }
        Zone {
            static_v4,
            static_v6,
            rebind_count: AtomicUsize::new(0),
        }
    }

    fn lookup(&self, name: &str, qtype: RecordType) -> Answer {
        const TTL: u32 = 30;
        if name == REBIND_NAME {
            return Answer::Records(match qtype {
                RecordType::A => {
                    let n = self.rebind_count.fetch_add(1, Ordering::Relaxed);
                    let ip = if n.is_multiple_of(2) { WEB1 } else { PRIVATE };
                    vec![(ip.into(), 0)]
                }
                _ => vec![],
            });
        }
        if name == EXFIL_ZONE || name.ends_with(&format!(".{EXFIL_ZONE}")) {
            return Answer::Records(match qtype {
                RecordType::A => vec![(ALT.into(), 0)],
                _ => vec![],
            });
        }
        let (Some(v4), Some(v6)) = (self.static_v4.get(name), self.static_v6.get(name)) else {
            return Answer::NxDomain;
        };
        Answer::Records(match qtype {
            RecordType::A => v4.iter().map(|a| (IpAddr::from(*a), TTL)).collect(),
            RecordType::AAAA => v6.iter().map(|a| (IpAddr::from(*a), TTL)).collect(),
            _ => vec![],
        })
    }
}

fn canon(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Answers one DNS message; None if it cannot even be parsed.
fn dns_answer(
    st: &State,
    buf: &[u8],
    client: SocketAddr,
    server: SocketAddr,
    proto: &str,
) -> Option<Vec<u8>> {
    let req = match Message::from_vec(buf) {
        Ok(m) => m,
        Err(e) => {
            st.queries.write(
                json!({"name": null, "type": null, "client": client.to_string(),
                "server": server.to_string(), "proto": proto, "error": e.to_string()}),
            );
            return None;
        }
    };
    let mut resp = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.authoritative = true;
    if req.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        resp.set_edns(edns);
    }
    let Some(q) = req.queries.first().cloned() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return resp.to_vec().ok();
    };
    let name = canon(&q.name().to_ascii());
    st.queries
        .write(json!({"name": name, "type": q.query_type().to_string(),
        "client": client.to_string(), "server": server.to_string(), "proto": proto}));
    resp.add_query(q.clone());
    match st.zone.lookup(&name, q.query_type()) {
        Answer::NxDomain => resp.metadata.response_code = ResponseCode::NXDomain,
        Answer::Records(recs) => {
            for (ip, ttl) in recs {
                let rdata = match ip {
                    IpAddr::V4(a) => RData::A(A(a)),
                    IpAddr::V6(a) => RData::AAAA(AAAA(a)),
                };
                resp.add_answer(Record::from_rdata(q.name().clone(), ttl, rdata));
            }
        }
    }
    resp.to_vec().ok()
}

async fn dns_udp(st: Arc<State>, sock: UdpSocket) {
    let local = sock.local_addr().unwrap();
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        st.conns.write(
            json!({"proto": "udp", "server": local.to_string(), "peer": peer.to_string(),
            "service": "dns", "len": n}),
        );
        if let Some(out) = dns_answer(&st, &buf[..n], peer, local, "udp") {
            let _ = sock.send_to(&out, peer).await;
        }
    }
}

async fn dns_tcp_conn(
    st: Arc<State>,
    mut s: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<()> {
    loop {
        let len = match s.read_u16().await {
            Ok(l) => l as usize,
            Err(_) => return Ok(()),
        };
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await?;
        if let Some(out) = dns_answer(&st, &buf, peer, local, "tcp") {
            s.write_u16(out.len() as u16).await?;
            s.write_all(&out).await?;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TLS

/// Mints a leaf certificate per SNI (cached), signed by the test CA; IP SANs when there is no SNI.
struct Certs {
    issuer: Issuer<'static, KeyPair>,
    leaf_key: KeyPair,
    signer: Arc<dyn rustls::sign::SigningKey>,
    cache: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Certs")
    }
}

impl Certs {
    /// The CA and its certificate (PEM) and key (PEM).
    fn new() -> Result<(Certs, String, String)> {
        let ca_key = KeyPair::generate()?;
        let ca_key_pem = ca_key.serialize_pem();
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        // The lab (tests/src/lab/pki.rs) issues its servers' leaves under this same name.
        ca.distinguished_name
            .push(DnType::CommonName, egress_tests::lab::pki::TEST_CA_NAME);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = egress_tests::lab::pki::test_ca_key_usages();
        let ca_cert = ca.self_signed(&ca_key)?;
        let leaf_key = KeyPair::generate()?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let signer = rustls::crypto::ring::sign::any_ecdsa_type(&der)?;
        Ok((
            Certs {
                issuer: Issuer::new(ca, ca_key),
                leaf_key,
                signer,
                cache: Mutex::new(HashMap::new()),
            },
            ca_cert.pem(),
            ca_key_pem,
        ))
    }

    fn mint(&self, key: &str, sans: Vec<String>) -> Option<Arc<CertifiedKey>> {
        if let Some(c) = self.cache.lock().unwrap().get(key) {
            return Some(c.clone());
        }
        let mut p = CertificateParams::new(sans).ok()?;
        p.distinguished_name.push(DnType::CommonName, key);
        p.is_ca = IsCa::NoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&self.leaf_key, &self.issuer).ok()?;
        let ck = Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(cert.der().to_vec())],
            self.signer.clone(),
        ));
        self.cache
            .lock()
            .unwrap()
            .insert(key.to_string(), ck.clone());
        Some(ck)
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name() {
            Some(name) => {
                let name = canon(name);
                self.mint(&name, vec![name.clone()])
            }
            None => {
                let mut sans: Vec<String> = WEB_V4.iter().map(|a| a.to_string()).collect();
                sans.extend(WEB_V6.iter().map(|a| a.to_string()));
                sans.push(ALT.to_string());
                self.mint("(no sni)", sans)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Echo,
    Metadata,
    Private,
}

#[derive(Clone)]
struct ConnInfo {
    kind: Kind,
    server: SocketAddr,
    peer: SocketAddr,
    tls: bool,
    sni: Option<String>,
    alpn: Option<String>,
}

/// `GET /ws` with `Upgrade: websocket`: a minimal RFC 6455 echo (text, binary, ping → pong,
/// close), enough to prove upgrades pass through the agent.
fn websocket_echo(req: &mut Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let upgrade = req.headers().get(http::header::UPGRADE)?.to_str().ok()?;
    if req.uri().path() != "/ws" || !upgrade.eq_ignore_ascii_case("websocket") {
        return None;
    }
    let key = req.headers().get("sec-websocket-key")?.as_bytes().to_vec();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(&key);
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64(ctx.finish().as_ref());
    let on = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(up) = on.await {
            let _ = ws_echo(TokioIo::new(up)).await;
        }
    });
    Some(
        Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
}

async fn ws_echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<()> {
    loop {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).await?;
        let opcode = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        let len = match h[1] & 0x7f {
            126 => s.read_u16().await? as u64,
            127 => s.read_u64().await?,
            n => n as u64,
        };
        if len > 1 << 20 {
            return Ok(());
        }
        let mut mask = [0u8; 4];
        if masked {
            s.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).await?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        let reply_op = match opcode {
            0x9 => 0xA,
            0xA => continue,
            op => op,
        };
        let mut out = vec![0x80 | reply_op];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n < 65536 => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&payload);
        s.write_all(&out).await?;
        if opcode == 0x8 {
            return Ok(());
        }
    }
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn respond(mut req: Request<Incoming>, info: ConnInfo) -> Response<Full<Bytes>> {
    if info.kind == Kind::Echo {
        if let Some(r) = websocket_echo(&mut req) {
            return r;
        }
    }
    let (parts, body) = req.into_parts();
    let body_len = body
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let headers: Vec<Value> = parts
        .headers
        .iter()
        .map(|(k, v)| json!([k.as_str(), String::from_utf8_lossy(v.as_bytes())]))
        .collect();
    let host = parts
        .headers
        .get(http::header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| parts.uri.authority().map(|a| a.to_string()));
    let echo = json!({
        "service": match info.kind { Kind::Echo => "echo", Kind::Metadata => "metadata", Kind::Private => "private" },
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "uri": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "host": host,
        "headers": headers,
        "body_len": body_len,
        "server": info.server.to_string(),
        "peer": info.peer.to_string(),
        "tls": info.tls,
        "sni": info.sni,
        "alpn": info.alpn,
    });
    let (ctype, body) = match info.kind {
        Kind::Echo => ("application/json", echo.to_string()),
        Kind::Metadata => (
            "application/json",
            json!({
                "Code": "Success",
                "Type": "AWS-HMAC",
                "AccessKeyId": "ASIAFAKEFAKEFAKEFAKE",
                "SecretAccessKey": METADATA_SECRET,
                "Token": "fake-session-token",
                "Expiration": "2099-01-01T00:00:00Z",
                "request": echo,
            })
            .to_string(),
        ),
        Kind::Private => ("text/plain", PRIVATE_BODY.to_string()),
    };
    Response::builder()
        .status(200)
        .header("content-type", ctype)
        .header("x-fakenet-server", info.server.to_string())
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn serve_http<S>(io: S, info: ConnInfo)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let flight = InFlight::default();
    let conn_flight = flight.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let info = info.clone();
        let flight = flight.clone();
        async move {
            STATS.requests.fetch_add(1, Ordering::Relaxed);
            flight.0.fetch_add(1, Ordering::Relaxed);
            let bytes = match info.kind {
                Kind::Echo => bytes_len(req.uri().path()),
                _ => None,
            };
            let resp = match bytes {
                Some(n) => bytes_response(req, n).await,
                None => respond(req, info).await.map(Either::Left),
            };
            Ok::<_, Infallible>(resp.map(|inner| Tracked {
                inner,
                flight,
                done: std::sync::atomic::AtomicBool::new(false),
            }))
        }
    });
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1().half_close(true);
    if let Err(e) = b
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .await
    {
        let abrupt = matches!(
            io_kind(&*e),
            Some(
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        );
        if abrupt && conn_flight.0.load(Ordering::Relaxed) == 0 {
            STATS.closed_abruptly.fetch_add(1, Ordering::Relaxed);
        } else {
            STATS.conn_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The io::Error kind somewhere in an error's source chain.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = err.source();
    }
    None
}

/// Requests of one connection whose response body has not been produced to its end.
#[derive(Clone, Default)]
struct InFlight(Arc<AtomicUsize>);

/// A response body that takes its request out of [`InFlight`] once it has been produced
/// whole (a body dropped before its end leaves it in: a reset then is a real error).
struct Tracked<B> {
    inner: B,
    flight: InFlight,
    done: std::sync::atomic::AtomicBool,
}

impl<B> Tracked<B> {
    fn finish(&self) {
        if !self.done.swap(true, Ordering::Relaxed) {
            self.flight.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        let p = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(p, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.finish();
        }
        p
    }
    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.finish();
        }
        end
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// `/bytes/N`: N bytes (N ≤ 64 GiB), for the benchmarks' bulk and 1 KiB workloads.
fn bytes_len(path: &str) -> Option<u64> {
    path.strip_prefix("/bytes/")?
        .parse()
        .ok()
        .filter(|n| *n <= 64 << 30)
}

async fn bytes_response(req: Request<Incoming>, n: u64) -> Response<Either<Full<Bytes>, Zeros>> {
    // Read the request body (W1 posts 1 KiB) before answering.
    let _ = req.into_body().collect().await;
    STATS.bytes_sent.fetch_add(n, Ordering::Relaxed);
    Response::builder()
        .status(200)
        .header("content-type", "application/octet-stream")
        .body(Either::Right(Zeros { left: n }))
        .unwrap()
}

/// A body of `left` zero bytes, sent in 64 KiB frames of one static buffer (no allocation per frame).
struct Zeros {
    left: u64,
}

static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

impl hyper::body::Body for Zeros {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(ZEROS.len() as u64) as usize;
        self.left -= n as u64;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
            &ZEROS[..n],
        )))))
    }
    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

async fn http_listener(
    st: Arc<State>,
    l: TcpListener,
    kind: Kind,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let server = l.local_addr().unwrap();
    loop {
        let Ok((s, peer)) = l.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let service = match (kind, tls.is_some()) {
            (Kind::Metadata, _) => "metadata",
            (Kind::Private, _) => "private",
            (Kind::Echo, true) => "https",
            (Kind::Echo, false) => "http",
        };
        STATS.accepted.fetch_add(1, Ordering::Relaxed);
        if !st.quiet_http {
            st.conns.write(json!({"proto": "tcp", "server": server.to_string(), "peer": peer.to_string(), "service": service}));
        }
        let tls = tls.clone();
        tokio::spawn(async move {
            let mut info = ConnInfo {
                kind,
                server,
                peer,
                tls: false,
                sni: None,
                alpn: None,
            };
            match tls {
                None => serve_http(s, info).await,
                Some(acc) => {
                    let Ok(Ok(ts)) =
                        tokio::time::timeout(std::time::Duration::from_secs(10), acc.accept(s))
                            .await
                    else {
                        STATS.tls_failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    };
                    STATS.tls_ok.fetch_add(1, Ordering::Relaxed);
                    let conn = ts.get_ref().1;
                    info.tls = true;
                    info.sni = conn.server_name().map(str::to_string);
                    info.alpn = conn
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned());
                    serve_http(ts, info).await
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Plain TCP / UDP

async fn tcp_echo(st: Arc<State>, l: TcpListener) {
    let server = l.local_addr().unwrap();
    loop {
        let Ok((mut s, peer)) = l.accept().await else {
            continue;
        };
        st.conns.write(json!({"proto": "tcp", "server": server.to_string(), "peer": peer.to_string(), "service": "echo"}));
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
    }
}

async fn banner(st: Arc<State>, l: TcpListener) {
    let server = l.local_addr().unwrap();
    loop {
        let Ok((s, peer)) = l.accept().await else {
            continue;
        };
        st.conns.write(json!({"proto": "tcp", "server": server.to_string(), "peer": peer.to_string(), "service": "banner"}));
        tokio::spawn(async move {
            let (r, mut w) = s.into_split();
            if w.write_all(BANNER.as_bytes()).await.is_err() {
                return;
            }
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let quit = line.trim().eq_ignore_ascii_case("quit");
                let reply: &[u8] = if quit { b"221 bye\r\n" } else { b"250 ok\r\n" };
                if w.write_all(reply).await.is_err() || quit {
                    break;
                }
            }
            let _ = w.shutdown().await;
        });
    }
}

/// Reads the client's first bytes, then closes with SO_LINGER 0: an RST instead of a reply.
async fn reset(st: Arc<State>, l: TcpListener) {
    let server = l.local_addr().unwrap();
    loop {
        let Ok((mut s, peer)) = l.accept().await else {
            continue;
        };
        st.conns.write(json!({"proto": "tcp", "server": server.to_string(), "peer": peer.to_string(), "service": "reset"}));
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await;
            let _ = socket2::SockRef::from(&s).set_linger(Some(std::time::Duration::ZERO));
            drop(s);
        });
    }
}

/// Reads and never answers, until the peer closes (or a minute passes).
async fn silent(st: Arc<State>, l: TcpListener) {
    let server = l.local_addr().unwrap();
    loop {
        let Ok((mut s, peer)) = l.accept().await else {
            continue;
        };
        st.conns.write(json!({"proto": "tcp", "server": server.to_string(), "peer": peer.to_string(), "service": "silent"}));
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(60), async {
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            })
            .await;
        });
    }
}

async fn udp_echo(st: Arc<State>, sock: UdpSocket) {
    let local = sock.local_addr().unwrap();
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        st.conns.write(
            json!({"proto": "udp", "server": local.to_string(), "peer": peer.to_string(),
            "service": "udp-echo", "len": n}),
        );
        let _ = sock.send_to(&buf[..n], peer).await;
    }
}

async fn dns_tcp(st: Arc<State>, l: TcpListener) {
    let local = l.local_addr().unwrap();
    loop {
        let Ok((s, peer)) = l.accept().await else {
            continue;
        };
        st.conns.write(json!({"proto": "tcp", "server": local.to_string(), "peer": peer.to_string(), "service": "dns"}));
        let st = st.clone();
        tokio::spawn(async move {
            let _ = dns_tcp_conn(st, s, peer, local).await;
        });
    }
}

// ---------------------------------------------------------------------------------------------

/// An address just added to the namespace can be briefly unusable
/// (EADDRNOTAVAIL) on a loaded machine: retry for a bounded time.
const BIND_SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

fn not_yet(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EADDRNOTAVAIL)
}

async fn tcp(addr: SocketAddr) -> Result<TcpListener> {
    let deadline = tokio::time::Instant::now() + BIND_SETTLE;
    loop {
        let sock = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        sock.set_reuseaddr(true)?;
        match sock.bind(addr) {
            Ok(()) => return Ok(sock.listen(1024)?),
            Err(e) if not_yet(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => return Err(e).with_context(|| format!("bind tcp {addr}")),
        }
    }
}

async fn udp(addr: SocketAddr) -> Result<UdpSocket> {
    let deadline = tokio::time::Instant::now() + BIND_SETTLE;
    loop {
        match UdpSocket::bind(addr).await {
            Ok(s) => return Ok(s),
            Err(e) if not_yet(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => return Err(e).with_context(|| format!("bind udp {addr}")),
        }
    }
}

/// Writes `text` to a new file readable by its owner only.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

fn parse_records(args: &Args) -> Result<Vec<(String, IpAddr)>> {
    let mut out = Vec::new();
    for r in &args.record {
        let (name, ip) = r
            .split_once('=')
            .with_context(|| format!("--record {r}: want NAME=IP"))?;
        out.push((
            name.to_string(),
            ip.parse().with_context(|| format!("--record {r}"))?,
        ));
    }
    if let Some(p) = &args.zone {
        let v: HashMap<String, Vec<IpAddr>> = serde_json::from_slice(&std::fs::read(p)?)
            .with_context(|| format!("parse {}", p.display()))?;
        for (name, ips) in v {
            for ip in ips {
                out.push((name.clone(), ip));
            }
        }
    }
    Ok(out)
}

async fn run(args: Args) -> Result<()> {
    let st = Arc::new(State {
        conns: Log::open(&args.conn_log)?,
        quiet_http: args.bench,
        queries: Log::open(&args.query_log)?,
        zone: Zone::new(&parse_records(&args)?),
    });

    let mut dns_addrs: Vec<IpAddr> = Vec::new();
    if !args.dns_only {
        dns_addrs.push(DNS.into());
    }
    for a in &args.dns_extra {
        if !dns_addrs.contains(a) {
            dns_addrs.push(*a);
        }
    }
    for ip in dns_addrs {
        let sa = SocketAddr::new(ip, 53);
        tokio::spawn(dns_udp(st.clone(), udp(sa).await?));
        tokio::spawn(dns_tcp(st.clone(), tcp(sa).await?));
    }

    if !args.dns_only {
        let (certs, ca_pem, ca_key_pem) = Certs::new()?;
        if let Some(p) = &args.ca_out {
            std::fs::write(p, &ca_pem).with_context(|| format!("write {}", p.display()))?;
        }
        if let Some(p) = &args.ca_key_out {
            write_private(p, &ca_key_pem).with_context(|| format!("write {}", p.display()))?;
        }
        let mut provider = rustls::crypto::ring::default_provider();
        if args.bench {
            // The benchmarks' one TLS profile: TLS 1.3, AES-128-GCM, X25519 (P-256 certificates).
            provider.cipher_suites =
                vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
            provider.kx_groups = vec![rustls::crypto::ring::kx_group::X25519];
        }
        let versions: &[&rustls::SupportedProtocolVersion] = if args.bench {
            &[&rustls::version::TLS13]
        } else {
            rustls::DEFAULT_VERSIONS
        };
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(certs));
        let mut h2_only = cfg.clone();
        h2_only.alpn_protocols = vec![b"h2".to_vec()];
        let h2_only = tokio_rustls::TlsAcceptor::from(Arc::new(h2_only));
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));

        let mut web: Vec<IpAddr> = WEB_V4.iter().map(|a| IpAddr::from(*a)).collect();
        web.push(ALT.into());
        web.extend(WEB_V6.iter().map(|a| IpAddr::from(*a)));
        for ip in &web {
            for port in HTTP_PORTS {
                let l = tcp(SocketAddr::new(*ip, port)).await?;
                tokio::spawn(http_listener(st.clone(), l, Kind::Echo, None));
            }
            for port in HTTPS_PORTS {
                let l = tcp(SocketAddr::new(*ip, port)).await?;
                tokio::spawn(http_listener(
                    st.clone(),
                    l,
                    Kind::Echo,
                    Some(acceptor.clone()),
                ));
            }
        }
        for ip in [IpAddr::from(METADATA), METADATA_V6.into()] {
            let l = tcp(SocketAddr::new(ip, 80)).await?;
            tokio::spawn(http_listener(st.clone(), l, Kind::Metadata, None));
        }
        for ip in [IpAddr::from(PRIVATE), PRIVATE_V6.into()] {
            let l = tcp(SocketAddr::new(ip, 80)).await?;
            tokio::spawn(http_listener(st.clone(), l, Kind::Private, None));
        }
        for ip in [IpAddr::from(WEB1), WEB1_V6.into()] {
            tokio::spawn(tcp_echo(
                st.clone(),
                tcp(SocketAddr::new(ip, TCP_ECHO_PORT)).await?,
            ));
            tokio::spawn(banner(
                st.clone(),
                tcp(SocketAddr::new(ip, BANNER_PORT)).await?,
            ));
            tokio::spawn(reset(
                st.clone(),
                tcp(SocketAddr::new(ip, RESET_PORT)).await?,
            ));
            tokio::spawn(silent(
                st.clone(),
                tcp(SocketAddr::new(ip, SILENT_PORT)).await?,
            ));
            tokio::spawn(http_listener(
                st.clone(),
                tcp(SocketAddr::new(ip, H2_ONLY_PORT)).await?,
                Kind::Echo,
                Some(h2_only.clone()),
            ));
            for port in UDP_ECHO_PORTS {
                tokio::spawn(udp_echo(st.clone(), udp(SocketAddr::new(ip, port)).await?));
            }
        }
    }

    if let Some(p) = &args.stats_out {
        tokio::spawn(write_stats(p.clone()));
    }
    println!("READY");
    std::io::stdout().flush()?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    loop {
        tokio::select! {
            _ = term.recv() => break,
            r = stdin.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
        }
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(args)) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("fakenet: {e:#}");
            std::process::exit(1);
        }
    }
}
