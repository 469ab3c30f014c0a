//! Below the rooms: revocation and issuer URLs learned from the certificate chains the agent
//! saw (`allow_revocation = true`, per profile). When the agent's own TLS handshake with an
//! inspected upstream completes, the OCSP responder, CA-issuers (Authority Information Access)
//! and CRL distribution point URLs named in the chain are remembered for the profile; from then
//! on, plain HTTP to exactly those hosts and ports is allowed, `GET` (and `HEAD`) only, to those
//! paths only (an OCSP responder's URL is a prefix: RFC 6960 appendix A.1 puts the request
//! after it). Everything else on those hosts stays denied, and nothing is learned from a
//! passthrough connection (the agent never sees its certificates; in TLS 1.3 they are
//! encrypted).
//!
//! Without this, a client that checks revocation (or fetches a missing intermediate) fails or
//! stalls on an allowed host, and the operator's only fix is to allow whole CA hosts.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use rustls_pki_types::CertificateDer;
use x509_parser::{
    extensions::{DistributionPointName, GeneralName, ParsedExtension},
    oid_registry::{OID_PKIX_ACCESS_DESCRIPTOR_CA_ISSUERS, OID_PKIX_ACCESS_DESCRIPTOR_OCSP},
    prelude::FromDer,
};

use crate::{
    deny::DenyCode,
    policy::{name::CanonicalName, path::Readings, Decision, Denied, Policy, Protocol, RuleRef},
};

/// What a URL in a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ocsp,
    CaIssuers,
    Crl,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Ocsp => "OCSP responder",
            Kind::CaIssuers => "CA issuers",
            Kind::Crl => "CRL distribution point",
        }
    }
}

/// One `http://` URL named in a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: CanonicalName,
    pub port: u16,
    pub path: String,
    pub kind: Kind,
}

/// The `http://` revocation and issuer URLs of a chain (other schemes — ldap, https — are not
/// reachable this way and are left out; so is anything that does not parse).
pub fn urls_in_chain(chain: &[CertificateDer<'_>]) -> Vec<Url> {
    let mut out = Vec::new();
    for der in chain {
        let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(der) else {
            continue;
        };
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::AuthorityInfoAccess(aia) => {
                    for d in &aia.accessdescs {
                        let kind = if d.access_method == OID_PKIX_ACCESS_DESCRIPTOR_OCSP {
                            Kind::Ocsp
                        } else if d.access_method == OID_PKIX_ACCESS_DESCRIPTOR_CA_ISSUERS {
                            Kind::CaIssuers
                        } else {
                            continue;
                        };
                        out.extend(http_url(&d.access_location, kind));
                    }
                }
                ParsedExtension::CRLDistributionPoints(points) => {
                    for p in points.iter() {
                        if let Some(DistributionPointName::FullName(names)) = &p.distribution_point
                        {
                            out.extend(names.iter().filter_map(|n| http_url(n, Kind::Crl)));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    out.dedup();
    out
}

fn http_url(name: &GeneralName<'_>, kind: Kind) -> Option<Url> {
    let GeneralName::URI(uri) = name else {
        return None;
    };
    let uri: http::Uri = uri.parse().ok()?;
    if !uri.scheme_str()?.eq_ignore_ascii_case("http") {
        return None;
    }
    let host = CanonicalName::parse(uri.host()?).ok()?;
    let path = uri.path();
    Some(Url {
        host,
        port: uri.port_u16().unwrap_or(80),
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
        kind,
    })
}

/// Hosts remembered per profile, and paths per host: a chain names a handful; a bound keeps a
/// hostile upstream's certificate from growing the agent.
const MAX_HOSTS: usize = 512;
const MAX_PATHS: usize = 16;
/// A host's chain is read again at most this often (a shared upstream sees it once anyway).
const RELEARN: Duration = Duration::from_secs(300);

/// A learned URL and the allowed host whose certificate named it.
#[derive(Debug, Clone)]
struct Learned {
    path: String,
    kind: Kind,
    from: String,
}

#[derive(Default)]
struct Profiles {
    /// (profile, host, port) → the URLs there.
    urls: HashMap<(String, String, u16), Vec<Learned>>,
    /// (profile, inspected host) → when its chain was last read.
    read: HashMap<(String, String), Instant>,
}

/// The learned URLs of every profile (lives in [`crate::attachment::Shared`], across reloads:
/// whether they are used is the policy's `allow_revocation` at each decision).
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Profiles>,
}

impl Registry {
    /// Remembers the URLs in `chain`, the certificates `from` (an allowed, inspected host)
    /// presented to the agent.
    pub fn learn(&self, profile: &str, from: &str, chain: &[CertificateDer<'_>]) {
        let now = Instant::now();
        let key = (profile.to_string(), from.to_string());
        {
            let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if g.read
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < RELEARN)
            {
                return;
            }
        }
        let urls = urls_in_chain(chain);
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.read.len() >= MAX_HOSTS * 4 {
            g.read.retain(|_, t| now.duration_since(*t) < RELEARN);
        }
        g.read.insert(key, now);
        for u in urls {
            let k = (profile.to_string(), u.host.as_str().to_string(), u.port);
            if !g.urls.contains_key(&k) && g.urls.len() >= MAX_HOSTS {
                tracing::warn!(host = %u.host, from, "revocation URLs: {MAX_HOSTS} hosts remembered already; not learned");
                continue;
            }
            let paths = g.urls.entry(k).or_default();
            if paths.len() < MAX_PATHS
                && !paths.iter().any(|l| l.path == u.path && l.kind == u.kind)
            {
                tracing::debug!(host = %u.host, path = %u.path, kind = u.kind.label(), from, "learned a revocation URL");
                paths.push(Learned {
                    path: u.path,
                    kind: u.kind,
                    from: from.to_string(),
                });
            }
        }
    }

    /// The allowed host whose certificate named a URL on `host:port`, if any.
    fn named_by(&self, profile: &str, host: &str, port: u16) -> Option<String> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let k = (profile.to_string(), host.to_string(), port);
        g.urls
            .get(&k)
            .and_then(|v| v.first())
            .map(|l| l.from.clone())
    }

    /// Whether any port of `host` has a learned URL (its DNS lookups are then answered).
    fn knows_name(&self, profile: &str, host: &str) -> bool {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.urls.keys().any(|(p, h, _)| p == profile && h == host)
    }

    /// One request on a connection allowed as a revocation URL: `GET`/`HEAD` to a learned path.
    pub fn judge(
        &self,
        profile: &str,
        host: &CanonicalName,
        port: u16,
        method: &str,
        path_and_query: &str,
    ) -> Result<(), Denied> {
        if !matches!(method, "GET" | "HEAD") {
            return Err(denied(
                DenyCode::MethodNotAllowed,
                format!("method {method} is not allowed for {host}: a revocation URL is fetched with GET only"),
            ));
        }
        let path = path_and_query.split(['?', '#']).next().unwrap_or("/");
        // Every reading a server may act on must be a learned URL (see `policy::path`).
        let readings = Readings::of(path).map_err(|why| {
            denied(
                DenyCode::PathNotAllowed,
                format!("path {path:?} on {host} has no reliable meaning: {why}"),
            )
        })?;
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let k = (profile.to_string(), host.as_str().to_string(), port);
        let fits_one = |p: &str| {
            g.urls.get(&k).is_some_and(|v| {
                v.iter().any(|l| match l.kind {
                    Kind::Ocsp => under(p, &l.path),
                    Kind::CaIssuers | Kind::Crl => p == l.path,
                })
            })
        };
        let fits = readings.each().iter().all(|(_, p)| fits_one(p));
        if fits {
            Ok(())
        } else {
            Err(denied(
                DenyCode::PathNotAllowed,
                format!("path {path:?} on {host} is not a revocation or issuer URL named by an allowed host's certificate"),
            ))
        }
    }
}

/// An OCSP GET is the responder's URL, a `/`, and the request.
fn under(path: &str, base: &str) -> bool {
    let base = base.trim_end_matches('/');
    path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn denied(code: DenyCode, reason: String) -> Denied {
    Denied {
        code,
        reason,
        rule: None,
        hint: "a revocation host allows only the URLs an allowed host's certificate names; allow the host to reach more".into(),
    }
}

/// The rule label of a connection allowed as a revocation URL (its requests are then judged by
/// [`Registry::judge`], see [`is_revocation_rule`]).
const RULE_PREFIX: &str = "revocation URL named by the certificate of ";

/// Whether a connection's rule is a revocation URL's.
pub fn is_revocation_rule(rule: &str) -> bool {
    rule.starts_with(RULE_PREFIX)
}

/// The policy's decision, widened by what was learned: plain HTTP to a learned host and port is
/// allowed when the profile has `allow_revocation` and the policy would refuse the host.
pub fn decide(
    learned: &Registry,
    policy: &Policy,
    profile: &str,
    name: &CanonicalName,
    port: u16,
    protocol: Protocol,
) -> Decision {
    let d = policy.decide(profile, name, port, protocol);
    match d {
        Decision::Deny(ref denied)
            if protocol == Protocol::Http
                && matches!(
                    denied.code,
                    DenyCode::HostNotAllowed | DenyCode::PortNotAllowed
                )
                && policy.allows_revocation(profile) =>
        {
            match learned.named_by(profile, name.as_str(), port) {
                Some(from) => Decision::Allow {
                    rule: RuleRef::labelled(format!("{RULE_PREFIX}{from}")),
                    inspect: false,
                },
                None => d,
            }
        }
        _ => d,
    }
}

/// Whether the sandbox's DNS may answer `name` although the policy denies it: some port of it
/// is a learned revocation URL of this profile.
pub fn answers_name(learned: &Registry, policy: &Policy, profile: &str, name: &str) -> bool {
    policy.allows_revocation(profile) && learned.knows_name(profile, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, CrlDistributionPoint, CustomExtension, KeyPair};

    /// DER of an AuthorityInfoAccess with one OCSP and one CA-issuers URI (RFC 5280 4.2.2.1).
    fn aia(ocsp: &str, issuers: &str) -> Vec<u8> {
        fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
            assert!(body.len() < 128);
            let mut v = vec![tag, body.len() as u8];
            v.extend_from_slice(body);
            v
        }
        let desc = |last: u8, uri: &str| {
            let mut b = tlv(0x06, &[0x2b, 6, 1, 5, 5, 7, 48, last]);
            b.extend(tlv(0x86, uri.as_bytes()));
            tlv(0x30, &b)
        };
        let mut body = desc(1, ocsp);
        body.extend(desc(2, issuers));
        tlv(0x30, &body)
    }

    fn chain() -> Vec<CertificateDer<'static>> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["api.test".into()]).unwrap();
        p.custom_extensions = vec![CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 5, 5, 7, 1, 1],
            aia("http://ocsp.ca.test/r1", "http://ca.test:8080/r1.der"),
        )];
        p.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![
                "http://crl.ca.test/r1.crl".into(),
                "ldap://crl.ca.test/cn=r1".into(),
            ],
        }];
        vec![p.self_signed(&key).unwrap().der().clone()]
    }

    #[test]
    fn finds_the_http_urls_of_a_chain() {
        let urls = urls_in_chain(&chain());
        let got: Vec<_> = urls
            .iter()
            .map(|u| (u.kind, u.host.as_str().to_string(), u.port, u.path.clone()))
            .collect();
        assert!(got.contains(&(Kind::Ocsp, "ocsp.ca.test".into(), 80, "/r1".into())));
        assert!(got.contains(&(Kind::CaIssuers, "ca.test".into(), 8080, "/r1.der".into())));
        assert!(got.contains(&(Kind::Crl, "crl.ca.test".into(), 80, "/r1.crl".into())));
        assert_eq!(got.len(), 3, "ldap is left out: {got:?}");
        assert!(urls_in_chain(&[CertificateDer::from(vec![1, 2, 3])]).is_empty());
    }

    #[test]
    fn only_get_to_the_named_paths() {
        let r = Registry::default();
        r.learn("default", "api.test", &chain());
        let ocsp = CanonicalName::parse("ocsp.ca.test").unwrap();
        let crl = CanonicalName::parse("crl.ca.test").unwrap();
        assert!(r.judge("default", &ocsp, 80, "GET", "/r1/MEkwRzBF").is_ok());
        assert!(r.judge("default", &ocsp, 80, "GET", "/r1").is_ok());
        assert!(r.judge("default", &crl, 80, "GET", "/r1.crl").is_ok());
        assert!(r.judge("default", &crl, 80, "HEAD", "/r1.crl?x=1").is_ok());
        for (host, port, method, path) in [
            (&ocsp, 80, "POST", "/r1"),
            (&ocsp, 80, "GET", "/r10"),
            (&ocsp, 80, "GET", "/admin"),
            (&ocsp, 8080, "GET", "/r1/x"),
            (&crl, 80, "GET", "/r1.crl/x"),
            (&crl, 80, "GET", "/x/../r1.crl/../admin"),
            (&crl, 80, "GET", "/r1.crl;/../admin"),
        ] {
            assert!(
                r.judge("default", host, port, method, path).is_err(),
                "{method} {host}:{port}{path}"
            );
        }
        assert!(r.judge("other", &crl, 80, "GET", "/r1.crl").is_err());
        assert!(r.knows_name("default", "ca.test") && !r.knows_name("default", "api.test"));
    }

    #[test]
    fn a_flood_of_names_is_bounded() {
        let r = Registry::default();
        let key = KeyPair::generate().unwrap();
        for i in 0..(MAX_HOSTS + 20) {
            let mut p = CertificateParams::new(vec!["x.test".into()]).unwrap();
            p.crl_distribution_points = vec![CrlDistributionPoint {
                uris: vec![format!("http://crl{i}.test/a.crl")],
            }];
            let der = p.self_signed(&key).unwrap().der().clone();
            r.learn("default", &format!("h{i}.test"), &[der]);
        }
        assert_eq!(r.inner.lock().unwrap().urls.len(), MAX_HOSTS);
    }
}
