//! Stage: requests — the per-request HTTP engine (DESIGN.md §7, THREATS C). Every request on
//! a connection the interceptor allowed — inspected HTTPS (h1 or h2, after TLS termination by
//! [`crate::inspect`]) and plain HTTP/1.x alike — is judged on its own before it goes
//! upstream:
//!
//! 1. `CONNECT` inside the stream, absolute-form inside TLS, `Upgrade: h2c` and upgrades other
//!    than WebSocket are refused (`protocol_not_allowed`);
//! 2. `Host` / `:authority` (and an absolute-form target) must name the connection's decided
//!    name and port, else 421 `host_mismatch` (fronting, h2 coalescing, a second keep-alive
//!    request for another host);
//! 3. the policy's per-request rules ([`Policy::decide_request`]) — steps 1–3 in [`check`];
//! 4. the credential of the matching rule is injected ([`inject`]: read at request time, never
//!    logged);
//! 5. the request goes upstream as origin-form (h1) or with `:authority` = the decided name
//!    (h2), over connections the agent dialed itself ([`forward`], through
//!    [`crate::upstream`]), TLS-verified when inspecting.
//!
//! One audit record per request, with method, path (without query) and status, written when
//! the response body ends ([`response::Audited`]).

mod check;
mod forward;
mod inject;
mod metered;
mod response;

use std::{
    convert::Infallible, future::Future, pin::Pin, sync::Arc, time::Duration, time::Instant,
};

use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use crate::{
    attachment::Attachment,
    deny::{Denial, DenyCode},
    policy::{name::CanonicalName, Mode, Policy},
    record::Record,
};
use check::Refusal;
pub use forward::H2;
pub use metered::UpBody;
pub use response::{denial_response, is_grpc, Body};

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
    /// `name` again, as the key its upstream HTTP/1.1 connections are parked under in
    /// [`crate::pool`]: cloned for each request without allocating.
    pub shared_name: Arc<str>,
    pub port: u16,
    /// Upstream TLS (inspected HTTPS); `None` for plain HTTP.
    pub tls: Option<Arc<crate::upstream::tls::UpstreamTls>>,
    /// The connection record (identity, name, rule), cloned per request.
    pub base: Record,
    upstream: forward::Pool,
    /// The connection's share of its budgets (every request and byte is charged to it).
    budget: Option<Arc<crate::budget::Meter>>,
}

impl Conn {
    /// `seed`: an upstream TCP connection already dialed for this name (used first).
    pub fn new(
        att: Arc<Attachment>,
        policy: Arc<Policy>,
        name: CanonicalName,
        port: u16,
        base: Record,
        seed: Option<TcpStream>,
    ) -> Self {
        Self {
            att,
            policy,
            shared_name: name.as_str().into(),
            name,
            port,
            tls: None,
            base,
            upstream: forward::Pool::new(seed),
            budget: None,
        }
    }

    /// Charges the connection's requests and bytes to `meter` (see [`crate::budget`]).
    pub fn with_budget(mut self, meter: Option<Arc<crate::budget::Meter>>) -> Self {
        self.budget = meter;
        self
    }

    /// Starts with a shared upstream connection ([`crate::pool`]) instead of dialing one.
    pub fn with_shared(self, shared: crate::pool::Shared) -> Self {
        use crate::pool::Shared;
        match shared {
            Shared::H2(h2, _) => self.upstream.adopt_h2(h2),
            Shared::H1(idle) => self.upstream.adopt_h1(idle),
        }
        self
    }
}

impl Drop for Conn {
    /// An inspected connection that ends before its first request gives back the idle
    /// HTTP/1.1 upstream connection it adopted (the ones it used went back after each
    /// request; plain-HTTP ones close with it, as before).
    fn drop(&mut self) {
        if self.tls.is_none() {
            return;
        }
        let shared = &self.att.upstreams;
        for idle in self.upstream.take_idle_h1() {
            shared.give_h1(&self.policy, &self.shared_name, self.port, idle);
        }
    }
}

/// What a client connection speaks, as far as its TLS handshake said.
#[derive(Clone, Copy)]
pub enum Speaks {
    /// Plain HTTP, or inspected TLS whose ALPN chose http/1.1.
    Http1,
    /// Inspected TLS whose ALPN chose h2.
    Http2,
    /// Inspected TLS without ALPN: told apart by the HTTP/2 preface.
    Either,
}

impl Speaks {
    /// From the protocol ALPN chose (the agent's TLS server offers only h2 and http/1.1).
    pub fn by_alpn(alpn: Option<&[u8]>) -> Self {
        match alpn {
            Some(b"h2") => Speaks::Http2,
            Some(_) => Speaks::Http1,
            None => Speaks::Either,
        }
    }
}

/// A client connection's request engine, to be awaited until the client closes.
pub type Serving = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves `io` (the client, after TLS termination if any) request by request until it closes,
/// with the HTTP server for what it speaks. Each is boxed on its own, sized for that
/// protocol's connection state alone: an idle HTTP/1.1 connection does not carry room for
/// an HTTP/2 one.
pub fn serve<I>(io: I, conn: Arc<Conn>, speaks: Speaks) -> Serving
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match speaks {
        Speaks::Http1 => Box::pin(serve_http1(TokioIo::new(io), conn)),
        Speaks::Http2 => Box::pin(serve_http2(TokioIo::new(io), conn)),
        Speaks::Either => Box::pin(serve_either(TokioIo::new(io), conn)),
    }
}

/// The per-request service of `conn`. Each request's future is boxed while it runs:
/// hyper's HTTP/1.1 server keeps a slot the size of the service's future for the whole
/// connection, idle or not.
fn service(
    conn: Arc<Conn>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
       + Send {
    hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(Box::pin(conn.handle(req)).await) }
    })
}

async fn serve_http1<I>(io: TokioIo<I>, conn: Arc<Conn>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // half_close: a client that shuts down writing after its request still gets the
    // answer (HTTP/1.0-style clients, `printf | nc`).
    let res = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, service(conn))
        .with_upgrades()
        .await;
    log_end(res);
}

async fn serve_http2<I>(io: TokioIo<I>, conn: Arc<Conn>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let res = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .serve_connection(io, service(conn))
        .await;
    log_end(res);
}

async fn serve_either<I>(io: TokioIo<I>, conn: Arc<Conn>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1()
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    b.http2().timer(TokioTimer::new());
    log_end(b.serve_connection_with_upgrades(io, service(conn)).await);
}

fn log_end<E: std::fmt::Display>(res: Result<(), E>) {
    if let Err(e) = res {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

impl Conn {
    /// One request: check, inject, forward, relay (the record is written by the body).
    async fn handle(&self, mut req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let mut rec = self.request_record(&req);
        let grpc = is_grpc(req.headers());
        let (rule, websocket) = match self.check(&req) {
            Ok(x) => x,
            Err(r) if self.policy.mode() == Mode::Monitor && check::monitorable(r.code) => {
                rec.would_deny(r.code, r.reason);
                (None, false)
            }
            Err(r) => return self.refuse(rec, r, started, grpc),
        };
        if let Some(rule) = rule {
            rec.rule = Some(rule.rule().to_string());
            // Credentials go only over TLS (inspected HTTPS), never over cleartext HTTP.
            if self.tls.is_some() {
                if let Err(reason) = inject::credential(rule, req.headers_mut()) {
                    return self.failed(rec, "credential_unavailable", reason, started);
                }
            }
        }
        let request_length = req.headers().get(header::CONTENT_LENGTH).cloned();
        if let Some(Err(x)) = self
            .budget
            .as_ref()
            .map(|m| m.request(response::content_length(&request_length)))
        {
            return self.refuse(rec, Refusal::over_budget(x), started, grpc);
        }
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let cut = self.budget.as_ref().map(|_| metered::Cut::default());
        let meter = self
            .budget
            .clone()
            .zip(cut.clone())
            .map(|(m, cut)| (m, crate::budget::Dir::Up, cut));
        let req = req.map(|b| UpBody::new(b, meter));
        let mut resp = match self.upstream.send(self, req, websocket).await {
            Ok(r) => r,
            Err(reason) => {
                let r = match cut.as_ref().and_then(|c| c.get()) {
                    Some(x) => Refusal::over_budget(x.clone()),
                    None => Refusal::new(DenyCode::UpstreamUnreachable, reason),
                };
                return self.refuse(rec, r, started, grpc);
            }
        };
        match client_upgrade {
            Some(client) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                forward::splice_upgrade(client, hyper::upgrade::on(&mut resp), self.budget.clone());
            }
            Some(_) => {}
            None => response::strip_hop_by_hop(resp.headers_mut(), false),
        }
        rec.status = Some(resp.status().as_u16());
        rec.bytes_up = response::content_length(&request_length);
        response::audited(resp, self.att.clone(), rec, started, self.budget.clone())
    }

    /// The connection's record, stamped now, with this request's method and path.
    fn request_record(&self, req: &Request<Incoming>) -> Record {
        let mut rec = self.base.clone();
        rec.time = Record::now();
        rec.method = Some(check::clip(req.method().as_str(), 32).to_string());
        rec.path = Some(check::clip(req.uri().path(), AUDIT_PATH_MAX).to_string());
        rec
    }

    /// The deny contract's response to one request, in gRPC's form for a gRPC call.
    fn refuse(&self, mut rec: Record, r: Refusal, started: Instant, grpc: bool) -> Response<Body> {
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
        // Told to people by `notify` (exec) and the status page, from the record.
        tracing::debug!(
            target: "egress::deny",
            cgroup_id = rec.cgroup_id,
            comm = %rec.comm,
            name = self.name.as_str(),
            method = rec.method.as_deref().unwrap_or(""),
            code = denial.code.as_str(),
            reason = %denial.reason,
            "request denied"
        );
        self.att.finish(rec, started);
        denial_response(&denial, grpc)
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
        self.att.finish(rec, started);
        response::bad_gateway(code, self.name.as_str(), self.port, &reason)
    }
}
