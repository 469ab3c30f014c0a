//! Step 5 of the engine: the upstream connections of one client connection (all to the same
//! decided name and port) — the seed the interceptor dialed, a shared or own HTTP/2
//! connection, a few idle HTTP/1.1 ones — and the rewriting of each request for them. An
//! HTTP/1.1 client gets HTTP/1.1 upstream (HTTP/2 only from an upstream that refuses
//! HTTP/1.1), an HTTP/2 client HTTP/2 where the upstream offers it (see [`crate::pool`] for
//! why).

use std::sync::Mutex;

use http::{header, HeaderValue, Request, Response};
use hyper::{body::Incoming, client::conn::TrySendError, upgrade::OnUpgrade};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use super::{metered::UpBody, response::strip_hop_by_hop, Conn};
pub use crate::pool::H2;
use crate::pool::{IdleH1, H1};

/// Idle upstream HTTP/1.1 connections kept per client connection (an h2 client multiplexing
/// over an h1-only upstream needs several).
const H1_IDLE_MAX: usize = 8;

/// After an allowed WebSocket upgrade both sides are spliced as they are (charged to the
/// connection's budgets when it has any).
pub fn splice_upgrade(
    client: OnUpgrade,
    upstream: OnUpgrade,
    meter: Option<std::sync::Arc<crate::budget::Meter>>,
) {
    tokio::spawn(async move {
        let (Ok(c), Ok(u)) = tokio::join!(client, upstream) else {
            return;
        };
        let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
        match meter {
            Some(m) => crate::copy::metered_streams(c, u, &m).await,
            None => {
                let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
            }
        }
    });
}

/// A new upstream connection, with the upstream's address (for sharing).
enum Sender {
    H1(H1, Option<std::net::SocketAddr>),
    H2(H2, Option<std::net::SocketAddr>),
}

/// What a new inspected upstream connection offers in ALPN.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Offer {
    /// `h2` and `http/1.1`: an HTTP/2 client's request.
    Any,
    /// `http/1.1`, then both on a new connection if the upstream refuses it with the
    /// `no_application_protocol` alert: an HTTP/1.1 client's request.
    H1First,
    /// `http/1.1` alone: a WebSocket upgrade, which HTTP/2 cannot carry here.
    H1Only,
}

impl Offer {
    fn of(req: &Request<UpBody>, websocket: bool) -> Self {
        if websocket {
            Offer::H1Only
        } else if req.version() == http::Version::HTTP_2 {
            Offer::Any
        } else {
            Offer::H1First
        }
    }
}

pub struct Pool {
    /// The connection the interceptor dialed while deciding (used by the first request).
    seed: Mutex<Option<TcpStream>>,
    h2: Mutex<Option<H2>>,
    h1: Mutex<Vec<IdleH1>>,
}

impl Pool {
    pub fn new(seed: Option<TcpStream>) -> Self {
        Self {
            seed: Mutex::new(seed),
            h2: Mutex::new(None),
            h1: Mutex::new(Vec::new()),
        }
    }

    /// Starts with a shared upstream HTTP/2 connection instead of dialing one.
    pub fn adopt_h2(&self, h2: H2) {
        *self.h2.lock().unwrap_or_else(|e| e.into_inner()) = Some(h2);
    }

    /// Starts with an idle HTTP/1.1 connection another client connection left.
    pub fn adopt_h1(&self, idle: IdleH1) {
        self.h1.lock().unwrap_or_else(|e| e.into_inner()).push(idle);
    }

    /// The idle HTTP/1.1 connections, taken out (to be left for other client connections).
    pub fn take_idle_h1(&self) -> Vec<IdleH1> {
        std::mem::take(&mut *self.h1.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub async fn send(
        &self,
        conn: &Conn,
        req: Request<UpBody>,
        websocket: bool,
    ) -> Result<Response<Incoming>, String> {
        // A pooled connection first; a request it did not take (closed meanwhile) goes on a
        // fresh one. An HTTP/1.1 client's requests stay HTTP/1.1: its pool holds an HTTP/2
        // connection only from an upstream that refused HTTP/1.1.
        let mut req = req;
        let offer = Offer::of(&req, websocket);
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
            while let Some((mut h1, peer)) = self.pooled_h1(conn, offer) {
                match h1_send(&mut h1, conn, req, false).await {
                    Ok(r) => {
                        self.park_h1(conn, offer, (h1, peer));
                        return Ok(r);
                    }
                    Err(mut e) => match e.take_message() {
                        Some(r) => req = r,
                        None => return Err(format!("upstream {}: {}", conn.name, e.into_error())),
                    },
                }
            }
        }
        match self.dial(conn, offer).await? {
            Sender::H2(h2, peer) => {
                *self.h2.lock().unwrap_or_else(|e| e.into_inner()) = Some(h2.clone());
                let refuses_h1 = offer == Offer::H1First;
                let (name, port) = (conn.name.as_str(), conn.port);
                let shared = &conn.att.upstreams;
                shared.put(&conn.policy, name, port, (&h2, peer), refuses_h1);
                h2_send(&h2, conn, req)
                    .await
                    .map_err(|e| format!("upstream {}: {}", conn.name, e.into_error()))
            }
            Sender::H1(mut h1, peer) => {
                let r = h1_send(&mut h1, conn, req, websocket)
                    .await
                    .map_err(|e| format!("upstream {}: {}", conn.name, e.into_error()))?;
                if !websocket {
                    self.park_h1(conn, offer, (h1, peer));
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

    /// An HTTP/1.1 connection ready for a request: this client connection's own, else (an
    /// inspected HTTP/1.1 request) one the container's client connections left.
    fn pooled_h1(&self, conn: &Conn, offer: Offer) -> Option<IdleH1> {
        let own = {
            let mut g = self.h1.lock().unwrap_or_else(|e| e.into_inner());
            g.retain(|(h, _)| !h.is_closed());
            g.iter()
                .position(|(h, _)| h.is_ready())
                .map(|i| g.swap_remove(i))
        };
        own.or_else(|| {
            // The interceptor's seed goes first: left unused, it would close before its TLS
            // handshake, which the upstream sees as a failed connection.
            if !shares_h1(conn, offer) || self.has_seed() {
                return None;
            }
            let shared = &conn.att.upstreams;
            shared.take_h1(&conn.policy, conn.name.as_str(), conn.port)
        })
    }

    fn has_seed(&self) -> bool {
        self.seed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// A connection that took a request goes back: an inspected HTTP/1.1 request's to the
    /// container's shared ones at once (an idle client connection then holds no upstream
    /// connection, and the container's other client connections can use it), others (plain
    /// HTTP; an HTTP/2 client's over an upstream without HTTP/2) to this client connection's.
    fn park_h1(&self, conn: &Conn, offer: Offer, h: IdleH1) {
        if shares_h1(conn, offer) {
            let shared = &conn.att.upstreams;
            return shared.give_h1(&conn.policy, &conn.shared_name, conn.port, h);
        }
        let mut g = self.h1.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() < H1_IDLE_MAX {
            g.push(h);
        }
    }

    /// A new upstream connection, offering what `offer` says.
    async fn dial(&self, conn: &Conn, offer: Offer) -> Result<Sender, String> {
        let seed = self.seed.lock().unwrap_or_else(|e| e.into_inner()).take();
        let tcp = match seed {
            Some(s) => crate::upstream::Lingering::new(s),
            None => connect(conn).await?,
        };
        let peer = tcp.peer_addr();
        let Some(tls) = &conn.tls else {
            return h1_handshake(tcp, peer).await;
        };
        let config = if offer == Offer::Any {
            &tls.any
        } else {
            &tls.h1
        };
        let (stream, peer) = match tls_connect(conn, config, tcp).await {
            // An HTTP/2-only upstream: the request goes over HTTP/2 on a new connection
            // (h2_send rewrites it; hyper's server answers the client in HTTP/1.1).
            Err(e) if offer == Offer::H1First && refuses_alpn(&e) => {
                let tcp = connect(conn).await?;
                let peer = tcp.peer_addr();
                (tls_connect(conn, &tls.any, tcp).await, peer)
            }
            r => (r, peer),
        };
        let stream = stream.map_err(|e| format!("TLS to upstream {}: {e}", conn.name))?;
        if conn.policy.allows_revocation(&conn.att.profile) {
            if let Some(chain) = stream.get_ref().1.peer_certificates() {
                let learned = &conn.att.shared.revocation;
                learned.learn(&conn.att.profile, conn.name.as_str(), chain);
            }
        }
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
            h1_handshake(stream, peer).await
        }
    }
}

/// Whether this request's HTTP/1.1 upstream connections are the container's shared ones: an
/// inspected HTTP/1.1 request's (an HTTP/2 client's stay its own, and the shared ones are
/// only ever taken for HTTP/1.1 clients).
fn shares_h1(conn: &Conn, offer: Offer) -> bool {
    conn.tls.is_some() && offer != Offer::Any
}

/// A new TCP connection to the decided name (resolved, screened, dialed).
async fn connect(conn: &Conn) -> Result<crate::upstream::Lingering, String> {
    let resolver = conn.att.shared.resolver.load();
    crate::upstream::connect(&resolver, &conn.policy, &conn.name, conn.port)
        .await
        .map(crate::upstream::Lingering::new)
        .map_err(|(_, reason)| reason)
}

async fn tls_connect(
    conn: &Conn,
    config: &std::sync::Arc<rustls::ClientConfig>,
    tcp: crate::upstream::Lingering,
) -> std::io::Result<tokio_rustls::client::TlsStream<crate::upstream::Lingering>> {
    let server_name = rustls_pki_types::ServerName::try_from(conn.name.as_str().to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(server_name, tcp)
        .await
}

/// The upstream answered our ALPN offer with the `no_application_protocol` alert.
fn refuses_alpn(e: &std::io::Error) -> bool {
    let alert = rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol);
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| *r == alert)
}

async fn h1_handshake<S>(io: S, peer: Option<std::net::SocketAddr>) -> Result<Sender, String>
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
    Ok(Sender::H1(send, peer))
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
    mut req: Request<UpBody>,
    websocket: bool,
) -> Result<Response<Incoming>, TrySendError<Request<UpBody>>> {
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
    mut req: Request<UpBody>,
) -> Result<Response<Incoming>, TrySendError<Request<UpBody>>> {
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
