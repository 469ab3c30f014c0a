//! Stage: inspect (DESIGN.md §7) — TLS termination of an allowed, inspected connection, after
//! which every request goes through the per-request engine ([`crate::requests`]). Also the
//! CA ([`ca`]) and the leaf certificates minted per SNI ([`mint`]).

pub mod ca;
mod handshake;
pub mod mint;

use std::{
    sync::{atomic::AtomicBool, Arc, OnceLock},
    time::Instant,
};

use rustls::ServerConfig;
use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::{
    peek::tls::{alert, AlertDescription},
    policy::Policy,
    requests::Conn,
};

static NAME_CONSTRAINTS: AtomicBool = AtomicBool::new(false);

/// `--ca-name-constraints` (or `EGRESS_CA_NAME_CONSTRAINTS=1`): issue the CA constrained to
/// the policy's inspected names.
pub fn set_name_constraints(on: bool) {
    NAME_CONSTRAINTS.store(on, std::sync::atomic::Ordering::Relaxed);
}

pub fn name_constraints_wanted() -> bool {
    NAME_CONSTRAINTS.load(std::sync::atomic::Ordering::Relaxed)
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
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            ca,
            minter,
            server: Arc::new(server),
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
/// replayed into rustls) and serves its requests with the per-request engine. `conn.base` is
/// the connection's record; per-request records are cloned from it.
pub async fn serve(client: TcpStream, peeked: Vec<u8>, mut conn: Conn) {
    let started = Instant::now();
    conn.base.protocol = "https";
    let setup = Inspector::get(&conn.policy)
        .and_then(|i| crate::upstream::tls::for_policy(&conn.policy).map(|u| (i, u)));
    let (inspector, upstream) = match setup {
        Ok(x) => x,
        Err(reason) => return unavailable(client, conn, &reason, started).await,
    };
    let tls = match handshake::terminate(&inspector, client, peeked).await {
        Ok(tls) => tls,
        Err(failure) => {
            let mut rec = conn.base;
            failure.describe(&mut rec, &conn.name);
            tracing::info!(target: "egress::deny", name = conn.name.as_str(), code = rec.code.as_deref().unwrap_or(""), reason = rec.reason.as_deref().unwrap_or(""), "inspection handshake failed");
            conn.att.finish(rec, started);
            return;
        }
    };
    conn.tls = Some(upstream);
    // ALPN chose h2 or http/1.1 (or nothing); the server detects which from the preface.
    crate::requests::serve(tls, Arc::new(conn), true).await;
}

/// The CA or the upstream trust could not be loaded: refuse with an internal-error alert.
async fn unavailable(mut client: TcpStream, conn: Conn, reason: &str, started: Instant) {
    tracing::error!(%reason, "TLS inspection unavailable");
    let mut rec = conn.base;
    rec.decision = "deny";
    rec.code = Some("inspection_unavailable".into());
    rec.reason = Some(format!("TLS inspection is not available: {reason}"));
    conn.att.finish(rec, started);
    let _ = client
        .write_all(&alert(AlertDescription::InternalError))
        .await;
}
