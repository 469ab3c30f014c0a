//! The client-facing TLS handshake of an inspected connection, and what its failure means.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::Inspector;
use crate::{policy::name::CanonicalName, record::Record, rewind::Rewind};

/// The client must finish its handshake within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub type Terminated = TlsStream<Rewind<TcpStream>>;

/// Why the client's handshake did not complete.
pub enum Failure {
    /// The client refused our certificate with this alert: it does not trust the agent's CA.
    RejectedCa(rustls::AlertDescription),
    Failed(std::io::Error),
    TimedOut,
}

/// Replays the peeked ClientHello into rustls and completes the handshake.
pub async fn terminate(
    inspector: &Inspector,
    client: TcpStream,
    peeked: Vec<u8>,
) -> Result<Terminated, Failure> {
    let acceptor = tokio_rustls::TlsAcceptor::from(inspector.server.clone());
    match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        acceptor.accept(Rewind::new(peeked, client)),
    )
    .await
    {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(match rejected_ca(&e) {
            Some(alert) => Failure::RejectedCa(alert),
            None => Failure::Failed(e),
        }),
        Err(_) => Err(Failure::TimedOut),
    }
}

/// The alert, when the client ended the handshake because it did not trust our certificate.
fn rejected_ca(e: &std::io::Error) -> Option<rustls::AlertDescription> {
    let alert = match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(a) => *a,
        _ => return None,
    };
    matches!(
        alert,
        rustls::AlertDescription::UnknownCA
            | rustls::AlertDescription::BadCertificate
            | rustls::AlertDescription::CertificateUnknown
    )
    .then_some(alert)
}

impl Failure {
    /// Marks the connection's record as the denial this failure is. The reason replaces the
    /// connection's, but a note the interceptor made earlier (e.g. ECH stripped) stays
    /// visible next to it.
    pub fn describe(&self, rec: &mut Record, name: &CanonicalName) {
        let note = rec.reason.take();
        rec.decision = "deny";
        let (code, mut reason) = match self {
            Failure::RejectedCa(a) => (
                "client_rejected_ca",
                format!(
                    "the client does not trust the agent's CA (it sent {a:?}) for inspected host {name}: \
                     trust it in the sandbox (`egress-agent ca env`, or `exec --trust-ca`), \
                     or mark the host `passthrough` if the client pins certificates"
                ),
            ),
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
