//! The per-request HTTP engine (DESIGN.md §7, THREATS C): every request on a connection the
//! interceptor allowed — inspected HTTPS (h1 or h2, after TLS termination) and plain HTTP/1.x
//! alike — is checked on its own before it goes upstream:
//!
//! 1. `CONNECT` inside the stream, absolute-form inside TLS, `Upgrade: h2c` and upgrades other
//!    than WebSocket are refused (`protocol_not_allowed`);
//! 2. `Host` / `:authority` (and an absolute-form target) must name the connection's decided
//!    name and port, else 421 `host_mismatch` (fronting, h2 coalescing, a second keep-alive
//!    request for another host);
//! 3. the policy's per-request rules ([`Policy::decide_request`]);
//! 4. the credential of the matching rule is injected (read at request time, never logged);
//! 5. the request goes upstream as origin-form (h1) or with `:authority` = the decided name
//!    (h2), over connections the agent dialed itself ([`crate::interceptor::upstream`]),
//!    TLS-verified against webpki roots plus the policy's `upstream_ca` when inspecting.
//!
//! One audit record per request, with method, path (without query) and status.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{body::Incoming, client::conn::TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use crate::{
    agent::Attachment,
    deny::{Denial, DenyCode},
    policy::{name::CanonicalName, Mode, Policy},
    record::Record,
};

pub type Body = BoxBody<Bytes, hyper::Error>;

/// Idle upstream HTTP/1.1 connections kept per client connection (an h2 client multiplexing
/// over an h1-only upstream needs several).
const H1_IDLE_MAX: usize = 8;
/// Longest time a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest path kept in audit records.
const AUDIT_PATH_MAX: usize = 256;

/// One allowed client connection: what was decided, and how to reach upstream.
pub struct Conn {
    pub att: Arc<Attachment>,
    /// The snapshot the connection was decided with.
    pub policy: Arc<Policy>,
    pub name: CanonicalName,
    pub port: u16,
    /// Upstream TLS (inspected HTTPS); `None` for plain HTTP.
    pub tls: Option<Arc<crate::tls::UpstreamTls>>,
    /// The connection record (identity, name, rule), cloned per request.
    pub base: Record,
    upstream: Pool,
}

impl Conn {
    /// `seed`: an upstream TCP connection already dialed for this name (used first).
    pub fn new(
        att: Arc<Attachment>,
        policy: Arc<Policy>,
        name: CanonicalName,
        port: u16,
        tls: Option<Arc<crate::tls::UpstreamTls>>,
        base: Record,
        seed: Option<TcpStream>,
    ) -> Self {
        Self {
            att,
            policy,
            name,
            port,
            tls,
            base,
            upstream: Pool {
                seed: Mutex::new(seed),
                h2: Mutex::new(None),
                h1: Mutex::new(Vec::new()),
            },
        }
    }

    /// Starts with a shared upstream HTTP/2 connection ([`crate::shared_upstreams`]) instead of
    /// dialing one.
    pub fn with_shared_h2(self, h2: H2) -> Self {
        *self.upstream.h2.lock().unwrap_or_else(|e| e.into_inner()) = Some(h2);
        self
    }
}

/// Serves `io` (the client, after TLS termination if any) request by request until it closes.
/// `h2`: offer HTTP/2 (inspected TLS with ALPN); plain HTTP is HTTP/1.x only.
pub async fn serve<I>(io: I, conn: Arc<Conn>, h2: bool)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(conn.handle(req).await) }
    });
    let io = TokioIo::new(io);
    let res = if h2 {
        let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // half_close: a client that shuts down writing after its request still gets the
        // answer (HTTP/1.0-style clients, `printf | nc`).
        b.http1()
            .half_close(true)
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        b.http2().timer(TokioTimer::new());
        b.serve_connection_with_upgrades(io, svc).await
    } else {
        hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(io, svc)
            .with_upgrades()
            .await
            .map_err(Into::into)
    };
    if let Err(e) = res {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

/// Why a request is not forwarded.
struct Refusal {
    code: DenyCode,
    reason: String,
    rule: Option<String>,
    hint: String,
}

impl Refusal {
    fn new(code: DenyCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
            rule: None,
            hint: String::new(),
        }
    }
}

impl Conn {
    async fn handle(&self, mut req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let mut rec = self.base.clone();
        rec.time = Record::now();
        rec.method = Some(clip(req.method().as_str(), 32).to_string());
        rec.path = Some(clip(req.uri().path(), AUDIT_PATH_MAX).to_string());

        let checked = self.check(&req);
        let (rule, websocket) = match checked {
            Ok(x) => x,
            Err(r) if self.policy.mode() == Mode::Monitor && monitorable(r.code) => {
                rec.decision = "would_deny";
                rec.code = Some(r.code.as_str().into());
                rec.reason = Some(r.reason);
                (None, false)
            }
            Err(r) => return self.refuse(rec, r, started),
        };
        if let Some(rule) = &rule {
            rec.rule = Some(rule.rule().to_string());
            // Credentials go only over TLS (inspected HTTPS), never over cleartext HTTP.
            if let Some((name, source)) = rule.inject().filter(|_| self.tls.is_some()) {
                match source.resolve() {
                    Ok(secret) => {
                        let (Ok(name), Ok(mut value)) = (
                            HeaderName::from_bytes(name.as_bytes()),
                            HeaderValue::from_str(secret.expose()),
                        ) else {
                            return self.failed(rec, "credential_unavailable", format!("the credential {source} is not a valid value for header {name}"), started);
                        };
                        value.set_sensitive(true);
                        // The sandbox's own value (if any) never goes upstream.
                        req.headers_mut().remove(&name);
                        req.headers_mut().insert(name, value);
                    }
                    Err(e) => {
                        return self.failed(
                            rec,
                            "credential_unavailable",
                            format!("the credential for {} is not available: {e}", rule.rule()),
                            started,
                        )
                    }
                }
            }
        }

        let request_length = req.headers().get(header::CONTENT_LENGTH).cloned();
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let resp = match self.upstream.send(self, req, websocket).await {
            Ok(r) => r,
            Err(reason) => {
                return self.refuse(
                    rec,
                    Refusal::new(DenyCode::UpstreamUnreachable, reason),
                    started,
                )
            }
        };
        let mut resp = resp;
        if let Some(client_upgrade) = client_upgrade {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    let (Ok(c), Ok(u)) = tokio::join!(client_upgrade, upstream_upgrade) else {
                        return;
                    };
                    let _ =
                        tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(u))
                            .await;
                });
            }
        } else {
            strip_hop_by_hop(resp.headers_mut(), false);
        }
        rec.status = Some(resp.status().as_u16());
        rec.bytes_up = content_length(&request_length);
        // The record is written when the response body ends (or the client goes away), with
        // the bytes actually relayed.
        let att = self.att.clone();
        resp.map(|inner| {
            Audited {
                inner,
                done: Some((att, rec, started)),
            }
            .boxed()
        })
    }

    /// Steps 1–3. Returns the per-request rule (if the host has rules) and whether the
    /// request is a WebSocket upgrade.
    fn check(
        &self,
        req: &Request<Incoming>,
    ) -> Result<(Option<&crate::policy::HttpRule>, bool), Refusal> {
        let inspected = self.tls.is_some();
        if req.method() == Method::CONNECT {
            return Err(Refusal::new(
                DenyCode::ProtocolNotAllowed,
                format!(
                    "CONNECT inside {} connection to {} is not allowed",
                    if inspected { "an inspected" } else { "an HTTP" },
                    self.name
                ),
            ));
        }
        let h2 = req.version() == http::Version::HTTP_2;
        let uri = req.uri();
        if let Some(authority) = uri.authority() {
            if !h2 && inspected {
                return Err(Refusal::new(
                    DenyCode::ProtocolNotAllowed,
                    format!("absolute-form request target {uri} inside TLS is not allowed"),
                ));
            }
            if !h2
                && uri
                    .scheme_str()
                    .is_some_and(|s| !s.eq_ignore_ascii_case("http"))
            {
                return Err(Refusal::new(
                    DenyCode::ProtocolNotAllowed,
                    format!(
                        "proxy requests for scheme {:?} are not supported; use CONNECT for https",
                        uri.scheme_str().unwrap_or("")
                    ),
                ));
            }
            self.check_host(
                authority.as_str(),
                if h2 { ":authority" } else { "request target" },
            )?;
        } else if h2 {
            return Err(Refusal::new(
                DenyCode::HostMismatch,
                "HTTP/2 request without :authority",
            ));
        }
        // Bytes, not `to_str`: a UTF-8 Host (fullwidth letters, IDN) is canonicalised like SNI.
        match req
            .headers()
            .get(header::HOST)
            .map(|v| std::str::from_utf8(v.as_bytes()))
        {
            Some(Ok(h)) => self.check_host(h, "Host")?,
            Some(Err(_)) => {
                return Err(Refusal::new(
                    DenyCode::HostMismatch,
                    "Host header is not UTF-8",
                ))
            }
            None if uri.authority().is_none() => {
                return Err(Refusal::new(
                    DenyCode::HostMismatch,
                    "request without a Host header",
                ))
            }
            None => {}
        }
        if req.headers().get_all(header::HOST).iter().count() > 1 {
            return Err(Refusal::new(
                DenyCode::HostMismatch,
                "more than one Host header",
            ));
        }

        let mut websocket = false;
        for v in req.headers().get_all(header::UPGRADE) {
            for token in v.to_str().unwrap_or("?").split(',').map(str::trim) {
                let proto = token.split('/').next().unwrap_or("");
                if proto.eq_ignore_ascii_case("websocket") && !h2 {
                    websocket = true;
                } else {
                    return Err(Refusal::new(
                        DenyCode::ProtocolNotAllowed,
                        format!(
                            "Upgrade to {:?} is not allowed{}",
                            clip(token, 32),
                            if proto.eq_ignore_ascii_case("h2c") {
                                ": cleartext HTTP/2 would hide later requests from the agent"
                            } else {
                                " (only WebSocket upgrades pass)"
                            }
                        ),
                    ));
                }
            }
        }
        if req.headers().contains_key("http2-settings") {
            return Err(Refusal::new(
                DenyCode::ProtocolNotAllowed,
                "HTTP2-Settings (h2c upgrade) is not allowed",
            ));
        }

        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        match self
            .policy
            .decide_request(&self.att.profile, &self.name, req.method().as_str(), path)
        {
            Ok(rule) => Ok((rule, websocket)),
            Err(d) => Err(Refusal {
                code: d.code,
                reason: d.reason,
                rule: d.rule.map(|r| r.to_string()),
                hint: d.hint,
            }),
        }
    }

    fn check_host(&self, raw: &str, what: &str) -> Result<(), Refusal> {
        let ok = crate::policy::name::split_host_port(raw, self.port)
            .ok()
            .filter(|(_, p)| *p == self.port)
            .and_then(|(h, _)| CanonicalName::parse(&h).ok())
            .is_some_and(|n| n == self.name);
        if ok {
            return Ok(());
        }
        let shown = clip(raw, 100);
        Err(Refusal {
            code: DenyCode::HostMismatch,
            reason: format!(
                "{what} {shown:?} differs from {}:{} that this connection was allowed for",
                self.name, self.port
            ),
            rule: None,
            hint: "open a new connection for each host (no domain fronting or connection reuse across hosts)".into(),
        })
    }

    fn refuse(&self, mut rec: Record, r: Refusal, started: Instant) -> Response<Body> {
        let denial = Denial {
            code: r.code,
            host: self.name.as_str().to_string(),
            port: self.port,
            reason: r.reason,
            rule: r.rule.or_else(|| self.base.rule.clone()),
            policy: self.policy.version().to_string(),
            hint: r.hint,
        };
        rec.decision = "deny";
        rec.code = Some(denial.code.as_str().into());
        rec.reason = Some(denial.reason.clone());
        rec.rule = denial.rule.clone();
        rec.status = Some(denial.status());
        tracing::info!(
            target: "egress::deny",
            cgroup_id = rec.cgroup_id,
            comm = %rec.comm,
            name = self.name.as_str(),
            method = rec.method.as_deref().unwrap_or(""),
            code = denial.code.as_str(),
            reason = %denial.reason,
            "request denied"
        );
        self.finish(rec, started);
        denial_response(&denial)
    }

    /// The agent could not do its part (not a policy refusal): 502.
    fn failed(
        &self,
        mut rec: Record,
        code: &str,
        reason: String,
        started: Instant,
    ) -> Response<Body> {
        tracing::warn!(name = self.name.as_str(), code, %reason, "request failed");
        rec.decision = "deny";
        rec.code = Some(code.into());
        rec.reason = Some(reason.clone());
        rec.status = Some(502);
        self.finish(rec, started);
        let body = serde_json::json!({"error": code, "host": self.name.as_str(), "port": self.port, "reason": reason}).to_string();
        Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .header(
                "proxy-status",
                format!(
                    "egress-agent; error=proxy_internal_error; details={:?}",
                    code
                ),
            )
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-store")
            .body(full(body))
            .unwrap_or_else(|_| Response::new(full(String::new())))
    }

    fn finish(&self, mut rec: Record, started: Instant) {
        rec.duration_ms = started.elapsed().as_millis() as u64;
        self.att.shared.audit.record(rec);
    }
}

fn content_length(v: &Option<HeaderValue>) -> u64 {
    v.as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A response body that counts what it relays and writes the request's audit record when it
/// is done or dropped.
struct Audited {
    inner: Incoming,
    done: Option<(Arc<Attachment>, Record, Instant)>,
}

impl hyper::body::Body for Audited {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let p = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(f))) = &p {
            if let (Some(d), Some((_, rec, _))) = (f.data_ref(), self.done.as_mut()) {
                rec.bytes_down += d.len() as u64;
            }
        }
        p
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Audited {
    fn drop(&mut self) {
        if let Some((att, mut rec, started)) = self.done.take() {
            rec.duration_ms = started.elapsed().as_millis() as u64;
            att.shared.audit.record(rec);
        }
    }
}

/// Denials that monitor mode lets through (the rest cannot be forwarded meaningfully).
fn monitorable(code: DenyCode) -> bool {
    matches!(
        code,
        DenyCode::HostMismatch | DenyCode::MethodNotAllowed | DenyCode::PathNotAllowed
    )
}

fn full(s: String) -> Body {
    Full::new(Bytes::from(s))
        .map_err(|never| match never {})
        .boxed()
}

/// The deny contract (DESIGN.md §6) as a hyper response: the same status, `Proxy-Status`
/// and JSON body as [`Denial::http_response`], without `Connection: close` (each later
/// request on the connection is judged on its own; HTTP/2 forbids the header anyway).
pub fn denial_response(d: &Denial) -> Response<Body> {
    let mut body = d.json_body();
    body.push('\n');
    let status = StatusCode::from_u16(d.status()).unwrap_or(StatusCode::FORBIDDEN);
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&d.proxy_status()) {
        h.insert("proxy-status", v);
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Connection-specific headers (RFC 9110 §7.6.1) and those the Connection header names.
/// `keep_upgrade`: a WebSocket request keeps `Connection: upgrade` and `Upgrade`.
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        h.remove(n);
    }
    // `TE: trailers` is the one TE value HTTP/2 allows, and gRPC needs it end to end.
    let te_trailers = h
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for n in [
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
    ] {
        h.remove(n);
    }
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
}

fn clip(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream connections of one client connection (all to the same decided name and port).

type H1 = hyper::client::conn::http1::SendRequest<Incoming>;
use crate::shared_upstreams::H2;

enum Sender {
    H1(H1),
    /// With the upstream's address, for sharing.
    H2(H2, Option<std::net::SocketAddr>),
}

struct Pool {
    /// The connection the interceptor dialed while deciding (used by the first request).
    seed: Mutex<Option<TcpStream>>,
    h2: Mutex<Option<H2>>,
    h1: Mutex<Vec<H1>>,
}

impl Pool {
    async fn send(
        &self,
        conn: &Conn,
        req: Request<Incoming>,
        websocket: bool,
    ) -> Result<Response<Incoming>, String> {
        // A pooled connection first; a request it did not take (closed meanwhile) goes on a
        // fresh one.
        let mut req = req;
        if !websocket {
            if let Some(h2) = self.pooled_h2() {
                match h2_send(&h2, conn, req).await {
                    Ok(r) => return Ok(r),
                    Err(mut e) => match e.take_message() {
                        Some(r) => req = r,
                        None => return Err(format!("upstream {}: {}", conn.name, e.into_error())),
                    },
                }
            }
            while let Some(mut h1) = self.pooled_h1() {
                match h1_send(&mut h1, conn, req, false).await {
                    Ok(r) => {
                        self.park_h1(h1);
                        return Ok(r);
                    }
                    Err(mut e) => match e.take_message() {
                        Some(r) => req = r,
                        None => return Err(format!("upstream {}: {}", conn.name, e.into_error())),
                    },
                }
            }
        }
        match self.dial(conn, websocket).await? {
            Sender::H2(h2, peer) => {
                *self.h2.lock().unwrap_or_else(|e| e.into_inner()) = Some(h2.clone());
                conn.att
                    .upstreams
                    .put(&conn.policy, conn.name.as_str(), conn.port, &h2, peer);
                h2_send(&h2, conn, req)
                    .await
                    .map_err(|e| format!("upstream {}: {}", conn.name, e.into_error()))
            }
            Sender::H1(mut h1) => {
                let r = h1_send(&mut h1, conn, req, websocket)
                    .await
                    .map_err(|e| format!("upstream {}: {}", conn.name, e.into_error()))?;
                if !websocket {
                    self.park_h1(h1);
                }
                Ok(r)
            }
        }
    }

    fn pooled_h2(&self) -> Option<H2> {
        let mut g = self.h2.lock().unwrap_or_else(|e| e.into_inner());
        match &*g {
            Some(h) if !h.is_closed() => Some(h.clone()),
            Some(_) => {
                *g = None;
                None
            }
            None => None,
        }
    }

    fn pooled_h1(&self) -> Option<H1> {
        let mut g = self.h1.lock().unwrap_or_else(|e| e.into_inner());
        g.retain(|h| !h.is_closed());
        let i = g.iter().position(H1::is_ready)?;
        Some(g.swap_remove(i))
    }

    fn park_h1(&self, h: H1) {
        let mut g = self.h1.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() < H1_IDLE_MAX {
            g.push(h);
        }
    }

    async fn dial(&self, conn: &Conn, websocket: bool) -> Result<Sender, String> {
        let seed = self.seed.lock().unwrap_or_else(|e| e.into_inner()).take();
        let tcp = match seed {
            Some(s) => s,
            None => crate::interceptor::upstream::connect(
                &conn.att,
                &conn.policy,
                &conn.name,
                conn.port,
            )
            .await
            .map_err(|(_, reason)| reason)?,
        };
        let tcp = crate::interceptor::upstream::Lingering::new(tcp);
        let Some(tls) = &conn.tls else {
            return h1_handshake(tcp).await;
        };
        let peer = tcp.peer_addr();
        let config = if websocket { &tls.h1 } else { &tls.any };
        let server_name = rustls_pki_types::ServerName::try_from(conn.name.as_str().to_string())
            .map_err(|e| format!("{}: {e}", conn.name))?;
        let stream = tokio_rustls::TlsConnector::from(config.clone())
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("TLS to upstream {}: {e}", conn.name))?;
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            let (send, c) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP/2 to upstream {}: {e}", conn.name))?;
            tokio::spawn(async move {
                let _ = c.await;
            });
            Ok(Sender::H2(send, peer))
        } else {
            h1_handshake(stream).await
        }
    }
}

async fn h1_handshake<S>(io: S) -> Result<Sender, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, c) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP/1.1 to upstream: {e}"))?;
    tokio::spawn(async move {
        let _ = c.with_upgrades().await;
    });
    Ok(Sender::H1(send))
}

/// The authority the upstream sees: the decided name, with the port when not the default.
fn authority(conn: &Conn) -> String {
    let default = if conn.tls.is_some() { 443 } else { 80 };
    if conn.port == default {
        conn.name.as_str().to_string()
    } else {
        format!("{}:{}", conn.name, conn.port)
    }
}

async fn h1_send(
    h1: &mut H1,
    conn: &Conn,
    mut req: Request<Incoming>,
    websocket: bool,
) -> Result<Response<Incoming>, TrySendError<Request<Incoming>>> {
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    if let Ok(uri) = pq.parse() {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = http::Version::HTTP_11;
    strip_hop_by_hop(req.headers_mut(), websocket);
    if let Ok(v) = HeaderValue::from_str(&authority(conn)) {
        req.headers_mut().insert(header::HOST, v);
    }
    let _ = h1.ready().await;
    h1.try_send_request(req).await
}

async fn h2_send(
    h2: &H2,
    conn: &Conn,
    mut req: Request<Incoming>,
) -> Result<Response<Incoming>, TrySendError<Request<Incoming>>> {
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    if let Ok(uri) = format!("https://{}{pq}", authority(conn)).parse() {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = http::Version::HTTP_2;
    strip_hop_by_hop(req.headers_mut(), false);
    req.headers_mut().remove(header::HOST);
    let mut h2 = h2.clone();
    h2.try_send_request(req).await
}
