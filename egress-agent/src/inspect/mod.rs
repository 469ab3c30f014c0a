//! Stage: inspect (DESIGN.md §7) — TLS termination of an allowed, inspected connection, after
//! which every request goes through the per-request engine ([`crate::requests`]); and of a
//! refused one, when the sandbox trusts the agent's CA, so that the refusal reaches the
//! client as a 403 it shows (DESIGN.md §13). Also the CA ([`ca`]) and the leaf certificates
//! minted per SNI ([`mint`]).

pub mod ca;
mod handshake;
pub mod mint;

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    task::{Context, Poll},
    time::Instant,
};

use rustls::ServerConfig;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};

use crate::{
    peek::tls::{alert, AlertDescription},
    policy::Policy,
    requests::Conn,
};

static NAME_CONSTRAINTS: AtomicBool = AtomicBool::new(false);

/// `--ca-name-constraints` (or `EGRESS_CA_NAME_CONSTRAINTS=1`): issue the CA constrained to
/// the policy's inspected names.
pub fn set_name_constraints(on: bool) {
    NAME_CONSTRAINTS.store(on, Ordering::Relaxed);
}

pub fn name_constraints_wanted() -> bool {
    NAME_CONSTRAINTS.load(Ordering::Relaxed)
        || std::env::var("EGRESS_CA_NAME_CONSTRAINTS").is_ok_and(|v| v == "1" || v == "true")
}

/// The client-facing side picks AES-128-GCM when the client offers it, whatever the client's
/// order: as strong as the sandbox needs (the upstream leg is what leaves the host) and the
/// cheapest bulk cipher on CPUs with AES-NI; ChaCha20 stays for clients without AES.
fn server_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as cs;
    Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

static INSPECTOR: OnceLock<Result<Arc<Inspector>, String>> = OnceLock::new();

/// Everything inspection needs, created once per agent on first use.
pub struct Inspector {
    pub ca: Arc<ca::Ca>,
    pub minter: Arc<mint::Minter>,
    pub server: Arc<ServerConfig>,
    /// For refused connections: the same leaves, ALPN HTTP/1.1 first (the server's order
    /// decides), so that the 403's status line (which names egress-agent and the code)
    /// reaches clients that print it; h2 for clients that offer nothing else (gRPC).
    pub refusal: Arc<ServerConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    #[error(transparent)]
    Mint(#[from] mint::MintError),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

impl Inspector {
    /// Loads (or creates) the CA of the state directory, constrained to the policy's
    /// inspected names when asked to.
    pub fn new(policy: &Policy) -> Result<Self, InspectError> {
        let constraints = name_constraints_wanted()
            .then(|| ca::constraints_for(policy.inspect_hosts().iter().map(String::as_str)));
        let ca = Arc::new(ca::Ca::load_or_create(
            &ca::state_dir(),
            constraints.as_deref(),
        )?);
        let minter = Arc::new(mint::Minter::new(ca.clone())?);
        let mut server = ServerConfig::builder_with_provider(server_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(minter.clone());
        server.ignore_client_order = true;
        let mut refusal = server.clone();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        refusal.alpn_protocols = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
        Ok(Self {
            ca,
            minter,
            server: Arc::new(server),
            refusal: Arc::new(refusal),
        })
    }

    /// The agent-wide inspector, created on first use; an error is kept (and reported on
    /// every inspected connection) rather than retried on each.
    pub fn get(policy: &Policy) -> Result<Arc<Inspector>, String> {
        INSPECTOR
            .get_or_init(|| {
                Inspector::new(policy)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }

    /// Mints (and caches) the leaf for `name` off the connection's path, if inspection is
    /// already running: called when the agent's DNS answers for an inspected name, so the
    /// connection that follows finds its certificate ready instead of waiting for a CA
    /// signature in the middle of the handshake.
    pub fn premint(name: &str) {
        if let Some(Ok(i)) = INSPECTOR.get() {
            if !i.minter.is_cached(name) {
                let (i, name) = (i.clone(), name.to_string());
                tokio::spawn(async move {
                    let _ = i.minter.get(&name);
                });
            }
        }
    }
}

/// Terminates TLS on an allowed, inspected connection (the ClientHello in `peeked` is
/// replayed into rustls) and returns what serves its requests with the per-request engine
/// for the rest of the connection (the request engine's own box, awaited inside one that
/// records a silent close); `None` when it ended in the handshake (recorded).
/// `conn.base` is the connection's record; per-request records are cloned from it. A
/// connection that ends without any request gets a record of its own (every accepted
/// connection has one).
pub async fn serve(
    client: TcpStream,
    peeked: Vec<u8>,
    mut conn: Conn,
) -> Option<crate::requests::Serving> {
    let started = Instant::now();
    conn.base.protocol = "https";
    let setup = Inspector::get(&conn.policy)
        .and_then(|i| crate::upstream::tls::for_policy(&conn.policy).map(|u| (i, u)));
    let (inspector, upstream) = match setup {
        Ok(x) => x,
        Err(reason) => {
            unavailable(client, conn, &reason, started).await;
            return None;
        }
    };
    let tls = match handshake::terminate(inspector.server.clone(), client, peeked).await {
        Ok(tls) => tls,
        Err(failure) => {
            let mut rec = std::mem::take(&mut conn.base);
            failure.describe(&mut rec, &conn.name, conn.att.trusts_ca());
            tracing::debug!(
                name = conn.name.as_str(),
                code = rec.code.as_deref().unwrap_or(""),
                reason = rec.reason.as_deref().unwrap_or(""),
                "inspection handshake failed"
            );
            conn.att.finish(rec, started);
            return None;
        }
    };
    conn.tls = Some(upstream);
    let handshaken = Instant::now();
    let speaks = crate::requests::Speaks::by_alpn(tls.get_ref().1.alpn_protocol());
    let (tls, spoke) = Watched::new(tls);
    let conn = Arc::new(conn);
    let serving = crate::requests::serve(tls, conn.clone(), speaks);
    Some(Box::pin(async move {
        serving.await;
        if !spoke.load(Ordering::Relaxed) {
            silent_close(&conn, handshaken.elapsed(), started);
        }
    }))
}

/// Closed right after the handshake: taken as a client that checks the certificate after
/// the handshake and refused ours (GnuTLS); after a while: an idle connection, allowed.
const REJECTED_AFTER_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(2);

fn silent_close(conn: &Conn, after: std::time::Duration, started: Instant) {
    let mut rec = conn.base.clone();
    if after < REJECTED_AFTER_HANDSHAKE {
        handshake::Failure::RejectedCa(handshake::Rejection::AfterHandshake).describe(
            &mut rec,
            &conn.name,
            conn.att.trusts_ca(),
        );
    } else {
        rec.reason = Some("the client closed the connection without sending a request".into());
    }
    conn.att.finish(rec, started);
}

/// A refused TLS connection from a sandbox that trusts the agent's CA: the handshake with a
/// certificate minted for the refused name (so the client gets as far as HTTP), or why not.
pub async fn terminate_refused(
    client: TcpStream,
    peeked: Vec<u8>,
    policy: &Policy,
) -> Result<handshake::Terminated, String> {
    let inspector = Inspector::get(policy)?;
    handshake::terminate(inspector.refusal.clone(), client, peeked)
        .await
        .map_err(|f| match f {
            handshake::Failure::RejectedCa(how) => {
                format!("the client does not trust the agent's certificate ({how})")
            }
            handshake::Failure::Failed(e) => format!("the TLS handshake failed: {e}"),
            handshake::Failure::TimedOut => "the TLS handshake timed out".into(),
        })
}

/// Whether a refusal may be told inside TLS with a minted certificate: not when the CA is
/// name-constrained to the inspected names (a leaf for another name would be rejected).
pub fn can_mint_refusals() -> bool {
    !name_constraints_wanted()
}

/// Answers every request on `tls` with the denial (the deny contract's response, see
/// [`crate::requests::denial_response`]), until the client closes. The denial was recorded
/// once already.
pub async fn answer_refused(tls: handshake::Terminated, denial: crate::deny::Denial) {
    let denial = Arc::new(denial);
    let svc = hyper::service::service_fn(move |req| {
        let d = denial.clone();
        let grpc = crate::requests::is_grpc(req.headers());
        async move { Ok::<_, std::convert::Infallible>(crate::requests::denial_response(&d, grpc)) }
    });
    let mut b = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    b.http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(REFUSED_IDLE);
    b.http2().timer(hyper_util::rt::TokioTimer::new());
    let io = hyper_util::rt::TokioIo::new(tls);
    let _ = tokio::time::timeout(REFUSED_IDLE * 4, b.serve_connection(io, svc)).await;
}

/// How long a refused connection may wait for a request (and, times four, live at all).
const REFUSED_IDLE: std::time::Duration = std::time::Duration::from_secs(15);

/// An IO that notes whether the client sent any application data at all.
struct Watched<T> {
    inner: T,
    spoke: Arc<AtomicBool>,
}

impl<T> Watched<T> {
    fn new(inner: T) -> (Self, Arc<AtomicBool>) {
        let spoke = Arc::new(AtomicBool::new(false));
        (
            Self {
                inner,
                spoke: spoke.clone(),
            },
            spoke,
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.spoke.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The CA or the upstream trust could not be loaded: refuse with an internal-error alert.
async fn unavailable(mut client: TcpStream, mut conn: Conn, reason: &str, started: Instant) {
    tracing::error!(%reason, "TLS inspection unavailable");
    let mut rec = std::mem::take(&mut conn.base);
    rec.decision = "deny";
    rec.code = Some("inspection_unavailable".into());
    rec.reason = Some(format!("TLS inspection is not available: {reason}"));
    conn.att.finish(rec, started);
    let _ = client
        .write_all(&alert(AlertDescription::InternalError))
        .await;
}
