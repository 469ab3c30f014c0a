//! Part of inspect: leaf certificates minted per SNI, signed by the inspection CA.
//!
//! One P-256 leaf key is generated at start and shared by every leaf (signing a new name then
//! costs one CA signature, no key generation). Minted leaves are cached in `SHARDS`
//! `ArcSwap<HashMap>`s: the read path (every handshake) is one atomic load and a hash lookup,
//! no lock; an insert copies one shard (once per new name: at most `CACHE_MAX / SHARDS`
//! entries, so a flood of never-seen names does not make every mint copy the whole cache),
//! and each shard is bounded.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::{CertifiedKey, SigningKey},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::ca::Ca;

/// Leaves are valid 30 days (well under the 398 browsers accept) and re-minted after 7, so a
/// long-running agent never serves an expiring one.
const LEAF_VALIDITY: time::Duration = time::Duration::days(30);
const LEAF_REFRESH: Duration = Duration::from_secs(7 * 24 * 3600);
/// Inspected names are policy names (wildcards can produce many): past this the cache starts
/// over rather than growing without bound.
const CACHE_MAX: usize = 4096;
const SHARDS: usize = 64;

#[derive(Clone)]
struct Entry {
    key: Arc<CertifiedKey>,
    minted: Instant,
}

/// Leaves by name; read with one atomic load, replaced whole on insert.
type Shard = ArcSwap<HashMap<Box<str>, Entry>>;

pub struct Minter {
    ca: Arc<Ca>,
    leaf_key: KeyPair,
    signer: Arc<dyn SigningKey>,
    cache: Box<[Shard]>,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("cached", &self.cached())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("minting a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("loading the leaf key: {0}")]
    Rustls(#[from] rustls::Error),
}

impl Minter {
    pub fn new(ca: Arc<Ca>) -> Result<Self, MintError> {
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let signer = rustls::crypto::ring::sign::any_ecdsa_type(&der)?;
        Ok(Self {
            ca,
            leaf_key,
            signer,
            cache: (0..SHARDS)
                .map(|_| ArcSwap::from_pointee(HashMap::new()))
                .collect(),
        })
    }

    fn shard(&self, name: &str) -> &Shard {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(name);
        &self.cache[h as usize % SHARDS]
    }

    /// The certificate for `name` (canonical: lower case, no trailing dot), minted on first use.
    pub fn get(&self, name: &str) -> Result<Arc<CertifiedKey>, MintError> {
        let shard = self.shard(name);
        if let Some(e) = shard.load().get(name) {
            if e.minted.elapsed() < LEAF_REFRESH {
                return Ok(e.key.clone());
            }
        }
        let key = Arc::new(self.mint(name)?);
        let name: Box<str> = name.into();
        shard.rcu(|m| {
            let mut m = if m.len() >= CACHE_MAX / SHARDS {
                HashMap::new()
            } else {
                HashMap::clone(m)
            };
            m.insert(
                name.clone(),
                Entry {
                    key: key.clone(),
                    minted: Instant::now(),
                },
            );
            m
        });
        Ok(key)
    }

    fn mint(&self, name: &str) -> Result<CertifiedKey, MintError> {
        let mut p = CertificateParams::new(vec![name.to_string()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + LEAF_VALIDITY;
        let cert = p.signed_by(&self.leaf_key, self.ca.issuer())?;
        Ok(CertifiedKey::new(
            vec![
                CertificateDer::from(cert.der().to_vec()),
                self.ca.cert_der.clone(),
            ],
            self.signer.clone(),
        ))
    }

    /// Whether a fresh leaf for `name` is cached.
    pub fn is_cached(&self, name: &str) -> bool {
        self.shard(name)
            .load()
            .get(name)
            .is_some_and(|e| e.minted.elapsed() < LEAF_REFRESH)
    }

    pub fn cached(&self) -> usize {
        self.cache.iter().map(|s| s.load().len()).sum()
    }
}

impl ResolvesServerCert for Minter {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // The interceptor decided on this very ClientHello (replayed), so the SNI is present
        // and valid; rustls hands it over lower-cased.
        let sni = hello.server_name()?;
        let name = sni.strip_suffix('.').unwrap_or(sni);
        match self.get(name) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::error!(name, error = %e, "cannot mint a leaf certificate");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_are_cached_per_name_and_the_cache_stays_bounded() {
        let d = std::env::temp_dir().join(format!("egress-mint-{}", std::process::id()));
        let ca = Arc::new(Ca::load_or_create(&d, None).unwrap());
        let m = Minter::new(ca).unwrap();
        assert!(!m.is_cached("a.example"));
        let a = m.get("a.example").unwrap();
        assert!(m.is_cached("a.example"));
        assert!(
            Arc::ptr_eq(&a, &m.get("a.example").unwrap()),
            "minted twice"
        );
        // Far more names than the cache holds: every one is served, the cache stays bounded
        // (a shard starts over when full), and names just minted are still cached.
        for i in 0..(CACHE_MAX + CACHE_MAX / 2) {
            let name = format!("n{i}.example");
            m.get(&name).unwrap();
            assert!(m.is_cached(&name));
        }
        assert!(m.cached() <= CACHE_MAX, "{} cached", m.cached());
        assert!(m.cached() >= CACHE_MAX / 4, "{} cached", m.cached());
        let _ = std::fs::remove_dir_all(&d);
    }
}
