//! Part of inspect: the inspection CA (DESIGN.md §7): ECDSA P-256, created on first use in the agent's state
//! directory, reused across restarts; optionally name-constrained to the inspected names.
//!
//! Layout under the state directory (default `/var/lib/egress-agent`, `EGRESS_STATE_DIR` or
//! `--state-dir` override it):
//!
//! | path | mode | what |
//! | --- | --- | --- |
//! | `ca/ca.key` | 0600 | the CA's private key (PKCS#8 PEM); never leaves this directory |
//! | `ca/ca.pem` | 0644 | the CA certificate |
//! | `ca/constraints` | 0644 | the permitted DNS subtrees baked into it, one a line (empty: none) |
//! | `trust/` | 0755 | what sandboxes may read: `ca.pem`, `bundle.pem`, `truststore.jks` |
//!
//! The `ca/` directory is created whole under a temporary name and renamed into place, so two
//! agents starting at once never end up with a certificate of one key and the key of another:
//! the loser of the rename reads the winner's CA.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::OnceLock,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, GeneralSubtree, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, NameConstraints,
};
use rustls_pki_types::{pem::PemObject, CertificateDer};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/egress-agent";
/// Where tools find the system's roots (Debian, Ubuntu, Alpine, Arch; Fedora links it too).
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The JKS password: a truststore holds only public certificates; Java's default.
pub const JKS_PASSWORD: &str = "changeit";
/// The CA lives ten years; leaves are short-lived (see `mint.rs`).
const CA_VALIDITY_DAYS: i64 = 3650;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("generating the CA: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_owned(),
        source,
    }
}

static STATE_DIR: OnceLock<PathBuf> = OnceLock::new();

/// The `--state-dir` flag; wins over `EGRESS_STATE_DIR`. Only the first call counts.
pub fn set_state_dir(dir: PathBuf) {
    let _ = STATE_DIR.set(dir);
}

/// `--state-dir`, else `EGRESS_STATE_DIR`, else [`DEFAULT_STATE_DIR`].
pub fn state_dir() -> PathBuf {
    if let Some(d) = STATE_DIR.get() {
        return d.clone();
    }
    match std::env::var_os("EGRESS_STATE_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(DEFAULT_STATE_DIR),
    }
}

/// The CA: its certificate and an issuer holding its key.
pub struct Ca {
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub dir: PathBuf,
    /// Permitted DNS subtrees (empty: unconstrained).
    pub constraints: Vec<String>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .field("constraints", &self.constraints)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads the CA of `state_dir`, creating it on first use. With `constraints` given and
    /// different from those of the existing CA, a new CA replaces it (the old one is kept
    /// as `ca.old-<unix time>`): a CA's constraints cannot change after it is issued.
    pub fn load_or_create(state_dir: &Path, constraints: Option<&[String]>) -> Result<Ca, CaError> {
        fs::create_dir_all(state_dir).map_err(io_err(state_dir))?;
        let dir = state_dir.join("ca");
        let want: Vec<String> = constraints.map(<[String]>::to_vec).unwrap_or_default();
        for _ in 0..3 {
            match Self::load(&dir) {
                Ok(ca) if constraints.is_none() || ca.constraints == want => return Ok(ca),
                Ok(_) => {
                    let stamp = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    let old = state_dir.join(format!("ca.old-{stamp}"));
                    tracing::warn!(old = %old.display(), "inspected names changed: issuing a new name-constrained CA; clients must trust the new one");
                    let _ = fs::rename(&dir, &old);
                }
                Err(CaError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            Self::create(state_dir, &dir, &want)?;
        }
        Self::load(&dir)
    }

    fn load(dir: &Path) -> Result<Ca, CaError> {
        let key_path = dir.join("ca.key");
        let cert_path = dir.join("ca.pem");
        let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let constraints = fs::read_to_string(dir.join("constraints"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>();
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Invalid {
            path: key_path.clone(),
            what: e.to_string(),
        })?;
        let cert_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| CaError::Invalid {
                path: cert_path.clone(),
                what: e.to_string(),
            })?;
        // The issuer needs only the subject name, key usages and key id method, all derived
        // from the key the same way as at creation.
        let params = ca_params(&key, &constraints);
        Ok(Ca {
            cert_pem,
            cert_der,
            dir: dir.to_owned(),
            constraints,
            issuer: Issuer::new(params, key),
        })
    }

    fn create(state_dir: &Path, dir: &Path, constraints: &[String]) -> Result<(), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = ca_params(&key, constraints);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key)?;
        let tmp = state_dir.join(format!("ca.tmp-{}", unique_suffix()));
        fs::create_dir(&tmp).map_err(io_err(&tmp))?;
        let result = (|| {
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).map_err(io_err(&tmp))?;
            write_file(&tmp.join("ca.key"), key.serialize_pem().as_bytes(), 0o600)?;
            write_file(&tmp.join("ca.pem"), cert.pem().as_bytes(), 0o644)?;
            let mut c = constraints.join("\n");
            if !c.is_empty() {
                c.push('\n');
            }
            write_file(&tmp.join("constraints"), c.as_bytes(), 0o644)
        })();
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        // rename(2) of a directory onto an existing non-empty one fails: first one wins.
        if fs::rename(&tmp, dir).is_err() {
            let _ = fs::remove_dir_all(&tmp);
        } else {
            tracing::info!(dir = %dir.display(), "created the inspection CA");
        }
        Ok(())
    }

    pub fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Writes what a sandbox may read into `<state>/trust/`: our CA, a bundle of the system
    /// roots plus our CA, and a JKS truststore of the same. Never the key.
    pub fn write_trust(&self, state_dir: &Path) -> Result<Trust, CaError> {
        let dir = state_dir.join("trust");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(io_err(&dir))?;
        let system = fs::read(SYSTEM_BUNDLE).unwrap_or_default();
        let mut bundle = Vec::with_capacity(system.len() + self.cert_pem.len() + 64);
        bundle.extend_from_slice(&system);
        if !bundle.is_empty() && !bundle.ends_with(b"\n") {
            bundle.push(b'\n');
        }
        bundle.extend_from_slice(b"# egress-agent inspection CA\n");
        bundle.extend_from_slice(self.cert_pem.as_bytes());
        let mut certs: Vec<(String, Vec<u8>)> = CertificateDer::pem_slice_iter(&system)
            .filter_map(Result::ok)
            .enumerate()
            .map(|(i, c)| (format!("system-{i}"), c.to_vec()))
            .collect();
        certs.push(("egress-agent-ca".into(), self.cert_der.to_vec()));
        let trust = Trust {
            ca: dir.join("ca.pem"),
            bundle: dir.join("bundle.pem"),
            jks: dir.join("truststore.jks"),
        };
        write_atomic(&trust.ca, self.cert_pem.as_bytes())?;
        write_atomic(&trust.bundle, &bundle)?;
        write_atomic(&trust.jks, &jks_truststore(&certs, JKS_PASSWORD))?;
        Ok(trust)
    }
}

/// The CA's parameters, a function of its key (and constraints) only, so that a reloaded CA
/// issues under exactly the subject it was created with.
fn ca_params(key: &KeyPair, constraints: &[String]) -> CertificateParams {
    let mut p = CertificateParams::default();
    let kid = p.key_identifier(key);
    let short: String = kid.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("egress-agent inspection CA {short}"),
    );
    dn.push(DnType::OrganizationName, "egress-agent");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    if !constraints.is_empty() {
        p.name_constraints = Some(NameConstraints {
            permitted_subtrees: constraints
                .iter()
                .map(|c| GeneralSubtree::DnsName(c.clone()))
                .collect(),
            excluded_subtrees: Vec::new(),
        });
    }
    p
}

/// Permitted DNS subtrees for inspected patterns: `api.example.com` → itself,
/// `*.example.org` → `example.org` (a dNSName subtree covers the name and all below it).
pub fn constraints_for<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut v: Vec<String> = patterns
        .into_iter()
        .map(|p| p.strip_prefix("*.").unwrap_or(p).to_string())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The files of `<state>/trust/`.
#[derive(Debug, Clone)]
pub struct Trust {
    pub ca: PathBuf,
    pub bundle: PathBuf,
    pub jks: PathBuf,
}

impl Trust {
    /// The variables common tools read, pointing at these files.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let bundle = self.bundle.display().to_string();
        let ca = self.ca.display().to_string();
        let mut v: Vec<(&'static str, String)> = [
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "GIT_SSL_CAINFO",
            "PIP_CERT",
            "CARGO_HTTP_CAINFO",
            "AWS_CA_BUNDLE",
            // grpcio (C core) ships its own roots and reads only this.
            "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
            // Nix-built binaries (their OpenSSL has no /etc default).
            "NIX_SSL_CERT_FILE",
            // Elixir's hex, Ruby's bundler, conda: their own bundles, replaced whole.
            "HEX_CACERTS_PATH",
            "BUNDLE_SSL_CA_CERT",
            "CONDA_SSL_VERIFY",
        ]
        .into_iter()
        .map(|k| (k, bundle.clone()))
        .collect();
        // Node and Deno add these to their own built-in roots.
        v.push(("NODE_EXTRA_CA_CERTS", ca.clone()));
        v.push(("DENO_CERT", ca));
        v
    }

    /// JVM options selecting the truststore (appended to `JAVA_TOOL_OPTIONS`).
    pub fn java_options(&self) -> String {
        format!(
            "-Djavax.net.ssl.trustStore={} -Djavax.net.ssl.trustStoreType=JKS -Djavax.net.ssl.trustStorePassword={JKS_PASSWORD}",
            self.jks.display()
        )
    }

    /// `export K='V'` lines for a POSIX shell.
    pub fn shell_exports(&self) -> String {
        let mut s = String::new();
        for (k, v) in self.env() {
            s.push_str(&format!("export {k}={}\n", sh_quote(&v)));
        }
        s.push_str(&format!(
            "export JAVA_TOOL_OPTIONS=\"${{JAVA_TOOL_OPTIONS:+$JAVA_TOOL_OPTIONS }}\"{}\n",
            sh_quote(&self.java_options())
        ));
        s
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(data).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// A name part no other writer uses at the same time: this process's id and a counter (two
/// threads of one process read the same clock tick often enough to collide on a timestamp).
fn unique_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// Write to a temporary file and rename over `path`: readers never see half a bundle.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), CaError> {
    let tmp = path.with_extension(format!("tmp-{}", unique_suffix()));
    let _ = fs::remove_file(&tmp);
    write_file(&tmp, data, 0o644)?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// A JKS keystore of trusted certificate entries (the format every JVM reads):
/// magic, version 2, entries (tag 2, alias, timestamp, "X.509", DER), then
/// SHA-1(password as UTF-16BE ‖ "Mighty Aphrodite" ‖ everything before).
pub fn jks_truststore(certs: &[(String, Vec<u8>)], password: &str) -> Vec<u8> {
    fn utf(out: &mut Vec<u8>, s: &str) {
        // Aliases and "X.509" are ASCII, where modified UTF-8 is plain UTF-8.
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut out = Vec::with_capacity(certs.iter().map(|c| c.1.len() + 48).sum::<usize>() + 32);
    out.extend_from_slice(&0xFEED_FEEDu32.to_be_bytes());
    out.extend_from_slice(&2u32.to_be_bytes());
    out.extend_from_slice(&(certs.len() as u32).to_be_bytes());
    for (alias, der) in certs {
        out.extend_from_slice(&2u32.to_be_bytes());
        utf(&mut out, &alias.to_ascii_lowercase());
        out.extend_from_slice(&now_ms.to_be_bytes());
        utf(&mut out, "X.509");
        out.extend_from_slice(&(der.len() as u32).to_be_bytes());
        out.extend_from_slice(der);
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    let pw: Vec<u8> = password
        .encode_utf16()
        .flat_map(|u| u.to_be_bytes())
        .collect();
    ctx.update(&pw);
    ctx.update(b"Mighty Aphrodite");
    ctx.update(&out);
    out.extend_from_slice(ctx.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("egress-ca-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn created_once_with_modes_and_reused() {
        let d = tmpdir("reuse");
        let a = Ca::load_or_create(&d, None).unwrap();
        let key_mode = fs::metadata(d.join("ca/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        let cert_mode = fs::metadata(d.join("ca/ca.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(cert_mode & 0o777, 0o644);
        let b = Ca::load_or_create(&d, None).unwrap();
        assert_eq!(a.cert_pem, b.cert_pem, "reused across restarts");
        // Constraints requested: a new CA replaces the unconstrained one, then is reused.
        let want = constraints_for(["api.allowed.test", "*.example.org"]);
        let c = Ca::load_or_create(&d, Some(&want)).unwrap();
        assert_ne!(c.cert_pem, a.cert_pem);
        assert_eq!(c.constraints, ["api.allowed.test", "example.org"]);
        let c2 = Ca::load_or_create(&d, Some(&want)).unwrap();
        assert_eq!(c.cert_pem, c2.cert_pem);
        let t = c.write_trust(&d).unwrap();
        let bundle = fs::read_to_string(&t.bundle).unwrap();
        assert!(bundle.ends_with(&c.cert_pem));
        assert!(!bundle.contains("PRIVATE KEY"));
        let jks = fs::read(&t.jks).unwrap();
        assert_eq!(&jks[..4], &[0xfe, 0xed, 0xfe, 0xed]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn concurrent_creation_agrees_on_one_ca() {
        let d = tmpdir("race");
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let d = d.clone();
                std::thread::spawn(move || Ca::load_or_create(&d, None).unwrap().cert_pem)
            })
            .collect();
        let pems: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(pems.windows(2).all(|w| w[0] == w[1]));
        fs::remove_dir_all(&d).unwrap();
    }
}
