//! TLS to inspected upstreams: webpki roots plus the policy's `upstream_ca`, certificate
//! verification always on; ALPN h2 + http/1.1 (http/1.1 only for WebSocket upgrades).

use std::{path::PathBuf, sync::Arc};

use arc_swap::ArcSwapOption;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{pem::PemObject, CertificateDer};

use crate::policy::Policy;

/// Client configurations for inspected upstreams: webpki roots plus the policy's
/// `upstream_ca`.
pub struct UpstreamTls {
    ca_file: Option<PathBuf>,
    /// ALPN h2 + http/1.1.
    pub any: Arc<ClientConfig>,
    /// ALPN http/1.1 only (WebSocket upgrades).
    pub h1: Arc<ClientConfig>,
}

/// The configs built for the policy in force (one `upstream_ca` at a time).
static CURRENT: ArcSwapOption<UpstreamTls> = ArcSwapOption::const_empty();

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Client configs for this policy's `upstream_ca` (rebuilt when it changes).
pub fn for_policy(policy: &Policy) -> Result<Arc<UpstreamTls>, String> {
    let want = policy.upstream_ca();
    if let Some(u) = &*CURRENT.load() {
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
    CURRENT.store(Some(u.clone()));
    Ok(u)
}
