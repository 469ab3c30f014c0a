//! The client-facing TLS handshake of an inspected connection, and what its failure means.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use std::sync::Arc;

use crate::{policy::name::CanonicalName, record::Record, rewind::Rewind};

/// The client must finish its handshake within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub type Terminated = TlsStream<Rewind<TcpStream>>;

/// Why the client's handshake did not complete.
pub enum Failure {
    /// The client gave up on our certificate: it does not trust the agent's CA.
    RejectedCa(Rejection),
    Failed(std::io::Error),
    TimedOut,
}

/// How a client says it does not trust the certificate it was shown.
pub enum Rejection {
    /// An alert: `unknown_ca`, `bad_certificate`, `certificate_unknown` (OpenSSL, rustls, Java).
    Alert(rustls::AlertDescription),
    /// The connection closed in the middle of the handshake, after our certificate was sent
    /// (BoringSSL in gRPC: "tls handshake eof").
    Eof,
    /// `close_notify` in the middle of the handshake.
    CloseNotify,
    /// The handshake completed, then the client closed at once without a request: it checks
    /// the certificate after the handshake (GnuTLS in wget, which then sends `close_notify`).
    AfterHandshake,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Alert(a) => write!(f, "it sent the alert {a:?}"),
            Rejection::Eof => f.write_str("it closed the connection during the handshake"),
            Rejection::CloseNotify => f.write_str("it sent close_notify during the handshake"),
            Rejection::AfterHandshake => {
                f.write_str("it closed the connection right after the handshake without a request")
            }
        }
    }
}

/// Replays the peeked ClientHello into rustls and completes the handshake.
pub async fn terminate(
    config: Arc<rustls::ServerConfig>,
    client: TcpStream,
    peeked: Vec<u8>,
) -> Result<Terminated, Failure> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        acceptor.accept(Rewind::new(peeked, client)),
    )
    .await
    {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(match rejected_ca(&e) {
            Some(how) => Failure::RejectedCa(how),
            None => Failure::Failed(e),
        }),
        Err(_) => Err(Failure::TimedOut),
    }
}

/// How the client ended the handshake, when that means it did not trust our certificate.
/// The ClientHello was already read and was valid (the peek parsed it), so a client that
/// closes now has seen our first flight — the certificate — and turned it down.
fn rejected_ca(e: &std::io::Error) -> Option<Rejection> {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return Some(Rejection::Eof);
    }
    let alert = match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(a) => *a,
        _ => return None,
    };
    match alert {
        rustls::AlertDescription::CloseNotify => Some(Rejection::CloseNotify),
        rustls::AlertDescription::UnknownCA
        | rustls::AlertDescription::BadCertificate
        | rustls::AlertDescription::CertificateUnknown => Some(Rejection::Alert(alert)),
        _ => None,
    }
}

/// What a client that rejects our CA should do. `trusts_ca`: the sandbox already trusts it
/// by the system store and the usual variables (`exec --trust-ca`), so this client reads a
/// store of its own.
pub fn trust_hint(trusts_ca: bool) -> String {
    let bundle = super::ca::state_dir().join("trust/bundle.pem");
    if trusts_ca {
        format!(
            "the sandbox already trusts the agent's CA through its system store, but this \
             client reads a store of its own: point that store at {} (e.g. \
             GRPC_DEFAULT_SSL_ROOTS_FILE_PATH for grpcio, a JVM -Djavax.net.ssl.trustStore, \
             the tool's --cacert/--ca-certificate option), or mark the host `passthrough` if \
             it pins certificates",
            bundle.display()
        )
    } else {
        "trust the agent's CA in the sandbox (`egress-agent exec --trust-ca`, or \
         `egress-agent ca env` and mount the state directory's trust/), \
         or mark the host `passthrough` if the client pins certificates"
            .into()
    }
}

impl Failure {
    /// Marks the connection's record as the denial this failure is. The reason replaces the
    /// connection's, but a note the interceptor made earlier (e.g. ECH stripped) stays
    /// visible next to it.
    pub fn describe(&self, rec: &mut Record, name: &CanonicalName, trusts_ca: bool) {
        let note = rec.reason.take();
        rec.decision = "deny";
        let (code, mut reason) = match self {
            Failure::RejectedCa(how) => {
                rec.hint = Some(trust_hint(trusts_ca));
                (
                    "client_rejected_ca",
                    format!(
                        "the client does not trust the agent's CA for inspected host {name} ({how})"
                    ),
                )
            }
            Failure::Failed(e) => (
                "tls_handshake_failed",
                format!("TLS handshake with the client failed: {e}"),
            ),
            Failure::TimedOut => (
                "tls_handshake_failed",
                format!("the client did not finish the TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
            ),
        };
        if let Some(note) = note {
            reason = format!("{reason} ({note})");
        }
        rec.code = Some(code.into());
        rec.reason = Some(reason);
    }
}
