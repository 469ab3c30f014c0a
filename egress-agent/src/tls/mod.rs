//! TLS inspection (DESIGN.md §7): the CA ([`ca`]), leaf certificates per SNI ([`mint`]), and
//! termination of an allowed, inspected connection, after which every request goes through
//! the per-request engine ([`crate::http_proxy`]).

pub mod ca;
pub mod mint;

use std::{
    path::PathBuf,
    sync::{atomic::AtomicBool, Arc, OnceLock},
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{pem::PemObject, CertificateDer};
use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::{
    agent::Attachment,
    http_proxy::Conn,
    peek::tls::{alert, AlertDescription},
    policy::Policy,
    record::Record,
    rewind::Rewind,
};

/// The client must finish its handshake within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
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

/// Client configurations for inspected upstreams: webpki roots plus the policy's
/// `upstream_ca`.
pub struct UpstreamTls {
    ca_file: Option<PathBuf>,
    /// ALPN h2 + http/1.1.
    pub any: Arc<ClientConfig>,
    /// ALPN http/1.1 only (WebSocket upgrades).
    pub h1: Arc<ClientConfig>,
}

static INSPECTOR: OnceLock<Result<Arc<Inspector>, String>> = OnceLock::new();

/// Everything inspection needs, created once per agent on first use.
pub struct Inspector {
    pub ca: Arc<ca::Ca>,
    pub minter: Arc<mint::Minter>,
    pub server: Arc<ServerConfig>,
    upstream: ArcSwapOption<UpstreamTls>,
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
            upstream: ArcSwapOption::empty(),
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

    /// Client configs for this policy's `upstream_ca` (rebuilt when it changes).
    pub fn upstream_tls(&self, policy: &Policy) -> Result<Arc<UpstreamTls>, String> {
        let want = policy.upstream_ca();
        if let Some(u) = &*self.upstream.load() {
            if u.ca_file.as_deref() == want {
                return Ok(u.clone());
            }
        }
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = want {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("upstream_ca {}: {e}", path.display()))?;
            for c in certs {
                let c = c.map_err(|e| format!("upstream_ca {}: {e}", path.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("upstream_ca {}: {e}", path.display()))?;
            }
        }
        let mut any = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut h1 = any.clone();
        any.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        let u = Arc::new(UpstreamTls {
            ca_file: want.map(|p| p.to_path_buf()),
            any: Arc::new(any),
            h1: Arc::new(h1),
        });
        self.upstream.store(Some(u.clone()));
        Ok(u)
    }
}

/// Terminates TLS on an allowed, inspected connection (the ClientHello in `peeked` is
/// replayed into rustls) and serves its requests with the per-request engine. `conn.base` is
/// the connection's record; per-request records are cloned from it.
pub async fn inspect(client: TcpStream, peeked: Vec<u8>, mut conn: Conn) {
    let started = Instant::now();
    conn.base.protocol = "https";
    let conn_note = conn.base.reason.clone();
    let (att, name) = (conn.att.clone(), conn.name.clone());
    let setup =
        Inspector::get(&conn.policy).and_then(|i| i.upstream_tls(&conn.policy).map(|u| (i, u)));
    let (inspector, upstream) = match setup {
        Ok(x) => x,
        Err(reason) => {
            tracing::error!(%reason, "TLS inspection unavailable");
            let mut rec = conn.base;
            rec.decision = "deny";
            rec.code = Some("inspection_unavailable".into());
            rec.reason = Some(format!("TLS inspection is not available: {reason}"));
            finish(&att, rec, started);
            let mut client = client;
            let _ = client
                .write_all(&alert(AlertDescription::InternalError))
                .await;
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(inspector.server.clone());
    let accepted = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        acceptor.accept(Rewind::new(peeked, client)),
    )
    .await;
    let tls = match accepted {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let mut rec = conn.base;
            rec.decision = "deny";
            let rejected = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .and_then(|r| match r {
                    rustls::Error::AlertReceived(a) => Some(*a),
                    _ => None,
                })
                .filter(|a| {
                    matches!(
                        a,
                        rustls::AlertDescription::UnknownCA
                            | rustls::AlertDescription::BadCertificate
                            | rustls::AlertDescription::CertificateUnknown
                    )
                });
            match rejected {
                Some(a) => {
                    rec.code = Some("client_rejected_ca".into());
                    rec.reason = Some(format!(
                        "the client does not trust the agent's CA (it sent {a:?}) for inspected host {name}: \
                         trust it in the sandbox (`egress-agent ca env`, or `exec --trust-ca`), \
                         or mark the host `passthrough` if the client pins certificates"
                    ));
                }
                None => {
                    rec.code = Some("tls_handshake_failed".into());
                    rec.reason = Some(format!("TLS handshake with the client failed: {e}"));
                }
            }
            keep_note(&mut rec, &conn_note);
            tracing::info!(target: "egress::deny", name = name.as_str(), code = rec.code.as_deref().unwrap_or(""), reason = rec.reason.as_deref().unwrap_or(""), "inspection handshake failed");
            finish(&att, rec, started);
            return;
        }
        Err(_) => {
            let mut rec = conn.base;
            rec.decision = "deny";
            rec.code = Some("tls_handshake_failed".into());
            rec.reason = Some(format!(
                "the client did not finish the TLS handshake within {HANDSHAKE_TIMEOUT:?}"
            ));
            keep_note(&mut rec, &conn_note);
            finish(&att, rec, started);
            return;
        }
    };
    conn.tls = Some(upstream);
    // ALPN chose h2 or http/1.1 (or nothing); the server detects which from the preface.
    crate::http_proxy::serve(tls, Arc::new(conn), true).await;
}

fn finish(att: &Attachment, mut rec: Record, started: Instant) {
    rec.duration_ms = started.elapsed().as_millis() as u64;
    att.shared.audit.record(rec);
}

/// A handshake failure's reason replaces the connection's, but a note the
/// interceptor made earlier (e.g. ECH stripped) must stay visible next to it.
fn keep_note(rec: &mut Record, note: &Option<String>) {
    if let (Some(note), Some(reason)) = (note, rec.reason.as_mut()) {
        reason.push_str(" (");
        reason.push_str(note);
        reason.push(')');
    }
}
