//! `exec --trust-ca` through the system store (issue 16 §1, DESIGN.md §14): in the command's
//! mount namespace the distribution bundles, OpenSSL's hashed directory, Java's `cacerts`
//! and the user's NSS database all include the agent's CA, so clients that read no variable
//! (wget/GnuTLS, grpcio, Go with the system pool, Java, Chromium) trust the inspection too.
//! Only certificates are shown; the CA key stays in the hidden state directory.

use std::{
    ffi::{OsStr, OsString},
    fs, io,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use crate::inspect::ca::{Trust, JKS_PASSWORD};

use super::spec::{Credentials, TrustSpec};

/// OpenSSL's hashed directory on Debian, Ubuntu, Alpine, Arch (a link to
/// /etc/pki/tls/certs on Fedora): copied into a tmpfs with the CA's `<hash>.0` added.
pub const CERT_DIR: &str = "/etc/ssl/certs";
/// Where the trust files appear inside the namespace (inside the copy of [`CERT_DIR`],
/// readable by every user wherever the state directory lives).
pub const VIEW_DIR: &str = "/etc/ssl/certs/egress-agent";
/// Where the NSS database is built (as the user) before it is mounted over theirs.
pub const NSS_STAGING: &str = "/etc/ssl/certs/egress-agent/nssdb";

/// Distribution bundles (Go's list in crypto/x509/root_linux.go, plus Debian's and
/// openSUSE's aliases): each that exists shows the system roots + the CA.
pub const BUNDLE_PATHS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/usr/lib/ssl/cert.pem",
    "/var/lib/ca-certificates/ca-bundle.pem",
];

/// Java truststores outside any JDK (the JDKs' own `lib/security/cacerts` are added from
/// `$JAVA_HOME` and /usr/lib/jvm).
const JAVA_PATHS: &[&str] = &[
    "/etc/ssl/certs/java/cacerts",
    "/etc/pki/java/cacerts",
    "/etc/pki/ca-trust/extracted/java/cacerts",
];

/// The trust files as the command sees them: in [`VIEW_DIR`] when the host has a
/// [`CERT_DIR`] to copy, else where `write_trust` put them (the state directory's `trust/`,
/// which stays visible).
pub fn view_paths(trust: &Trust) -> Trust {
    if Path::new(CERT_DIR).is_dir() {
        Trust {
            ca: Path::new(VIEW_DIR).join("ca.pem"),
            bundle: Path::new(VIEW_DIR).join("bundle.pem"),
            jks: Path::new(VIEW_DIR).join("truststore.jks"),
        }
    } else {
        trust.clone()
    }
}

/// The variables `--trust-ca` sets for the command: [`Trust::env`]'s,
/// pointing at `view`, and `JAVA_TOOL_OPTIONS` with the truststore appended to `java_prev`.
pub fn command_env(
    written: &Trust,
    view: &Trust,
    java_prev: Option<&OsStr>,
) -> Vec<(OsString, OsString)> {
    let mut v: Vec<(OsString, OsString)> = written
        .env()
        .into_iter()
        .map(|(k, val)| {
            let is_ca = Path::new(&val) == written.ca;
            let p = if is_ca { &view.ca } else { &view.bundle };
            (OsString::from(k), p.clone().into_os_string())
        })
        .collect();
    let opts = format!(
        "-Djavax.net.ssl.trustStore={} -Djavax.net.ssl.trustStoreType=JKS -Djavax.net.ssl.trustStorePassword={JKS_PASSWORD}",
        view.jks.display()
    );
    let java = match java_prev {
        Some(prev) if !prev.is_empty() => {
            let mut s = prev.to_os_string();
            s.push(" ");
            s.push(&opts);
            s
        }
        _ => OsString::from(opts),
    };
    v.push(("JAVA_TOOL_OPTIONS".into(), java));
    v
}

/// What the init needs to show the trust files, for a command whose environment has
/// `java_home` and `home`.
pub fn spec(
    trust: &Trust,
    ca_der: &[u8],
    java_home: Option<&OsStr>,
    home: Option<&OsStr>,
) -> TrustSpec {
    let mut java: Vec<OsString> = JAVA_PATHS.iter().map(OsString::from).collect();
    if let Some(h) = java_home.filter(|h| !h.is_empty()) {
        java.push(Path::new(h).join("lib/security/cacerts").into_os_string());
    }
    for jdk in fs::read_dir("/usr/lib/jvm").into_iter().flatten().flatten() {
        for rel in ["lib/security/cacerts", "jre/lib/security/cacerts"] {
            java.push(jdk.path().join(rel).into_os_string());
        }
    }
    TrustSpec {
        ca: trust.ca.clone().into_os_string(),
        bundle: trust.bundle.clone().into_os_string(),
        jks: trust.jks.clone().into_os_string(),
        ca_hash: subject_hash(ca_der).unwrap_or_default(),
        bundle_paths: BUNDLE_PATHS.iter().map(OsString::from).collect(),
        java_paths: java,
        nssdb: home
            .filter(|h| !h.is_empty())
            .map(|h| Path::new(h).join(".pki/nssdb").into_os_string()),
    }
}

/// Comment lines for `egress-agent ca env`: what the exports cannot do from outside a mount
/// namespace, and how to do it on the host instead.
pub fn ca_env_notes(trust: &Trust) -> String {
    let ca = trust.ca.display();
    format!(
        "# Not done by these variables (exec --trust-ca does it in the command's own mount namespace):\n\
         # - clients that read only the system store (wget/GnuTLS, OpenSSL's hashed directory, Go's\n\
         #   system pool, grpcio without GRPC_DEFAULT_SSL_ROOTS_FILE_PATH). Host-wide instead (Debian):\n\
         #   cp {ca} /usr/local/share/ca-certificates/egress-agent.crt && update-ca-certificates\n\
         # - Java without JAVA_TOOL_OPTIONS: keytool -importcert -cacerts -noprompt -storepass {JKS_PASSWORD} -alias egress-agent -file {ca}\n\
         # - NSS (Chromium, Firefox's profile databases): certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n egress-agent -i {ca}\n"
    )
}

// ---- OpenSSL's subject hash (X509_NAME_hash): the name of a hashed directory's entry ----

/// One DER TLV and what follows it.
struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
    /// Tag, length and content.
    whole: &'a [u8],
    rest: &'a [u8],
}

fn tlv(b: &[u8]) -> Option<Tlv<'_>> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &x| (a << 8) | x as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let header = b.len() - rest.len();
    Some(Tlv {
        tag,
        content: &rest[..len],
        whole: &b[..header + len],
        rest: &rest[len..],
    })
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A string value as UTF-8, for the types OpenSSL canonicalises (ASN1_MASK_CANON).
fn canon_text(tag: u8, v: &[u8]) -> Option<Vec<u8>> {
    let s: String = match tag {
        0x0c | 0x13 | 0x16 | 0x1a => String::from_utf8_lossy(v).into_owned(),
        // T61String: OpenSSL reads it as Latin-1.
        0x14 => v.iter().map(|&b| b as char).collect(),
        0x1e => char::decode_utf16(v.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])))
            .map(|c| c.unwrap_or('\u{fffd}'))
            .collect(),
        0x1c => v
            .chunks_exact(4)
            .map(|c| {
                char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])).unwrap_or('\u{fffd}')
            })
            .collect(),
        _ => return None,
    };
    // asn1_string_canon: trim ASCII space, collapse runs to one space, ASCII lower case.
    let sp = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let b = s.as_bytes();
    let (mut i, mut j) = (0, b.len());
    while i < j && sp(b[i]) {
        i += 1;
    }
    while j > i && sp(b[j - 1]) {
        j -= 1;
    }
    let mut out = Vec::with_capacity(j - i);
    let mut k = i;
    while k < j {
        if sp(b[k]) {
            out.push(b' ');
            while k < j && sp(b[k]) {
                k += 1;
            }
        } else {
            out.push(b[k].to_ascii_lowercase());
            k += 1;
        }
    }
    Some(out)
}

/// `X509_NAME_hash` of a certificate's subject, as the 8 hex digits of `<hash>.0`: SHA-1 of
/// the canonical encoding (each RDN's SET with string values as lower-cased, space-collapsed
/// UTF8Strings, without the outer SEQUENCE), first four bytes little-endian.
pub fn subject_hash(cert_der: &[u8]) -> Option<String> {
    let cert = tlv(cert_der)?.content;
    let tbs = tlv(cert)?.content;
    let mut rest = tbs;
    let mut fields = Vec::new();
    while !rest.is_empty() && fields.len() < 6 {
        let t = tlv(rest)?;
        rest = t.rest;
        fields.push(t);
    }
    // [0] version is optional: subject is the 5th field after it.
    let skip = usize::from(fields.first()?.tag == 0xa0);
    let subject = fields.get(skip + 4)?.content;
    let mut canon = Vec::new();
    let mut rdns = subject;
    while !rdns.is_empty() {
        let set = tlv(rdns)?;
        rdns = set.rest;
        let mut atvs = Vec::new();
        let mut s = set.content;
        while !s.is_empty() {
            let atv = tlv(s)?;
            s = atv.rest;
            let oid = tlv(atv.content)?;
            let v = tlv(oid.rest)?;
            let value = match canon_text(v.tag, v.content) {
                Some(t) => der(0x0c, &t),
                None => v.whole.to_vec(),
            };
            atvs.push(der(0x30, &[oid.whole, value.as_slice()].concat()));
        }
        // DER SET OF: elements in ascending order of their encodings.
        atvs.sort();
        canon.extend(der(0x31, &atvs.concat()));
    }
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &canon);
    let h = d.as_ref();
    Some(format!(
        "{:08x}",
        u32::from_le_bytes([h[0], h[1], h[2], h[3]])
    ))
}

// ---- the copy of the hashed directory (run by the init, in the command's namespace) ----

/// A directory entry, read before the copy is mounted over the original.
pub(super) enum Node {
    File {
        name: OsString,
        mode: u32,
        data: Vec<u8>,
    },
    Link {
        name: OsString,
        target: PathBuf,
    },
    Dir {
        name: OsString,
        mode: u32,
        children: Vec<Node>,
    },
}

/// Reads `dir` (two levels, at most 64 MiB of files: a certificate directory, not a tree).
pub(super) fn snapshot(dir: &Path, depth: u32, budget: &mut u64) -> io::Result<Vec<Node>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        match snapshot_entry(&e?, depth, budget) {
            Ok(Some(n)) => out.push(n),
            Ok(None) => {}
            // update-ca-certificates replaces entries as we read: one that vanished in
            // between is simply not there.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn snapshot_entry(e: &fs::DirEntry, depth: u32, budget: &mut u64) -> io::Result<Option<Node>> {
    let meta = e.path().symlink_metadata()?;
    let name = e.file_name();
    Ok(if meta.file_type().is_symlink() {
        Some(Node::Link {
            name,
            target: fs::read_link(e.path())?,
        })
    } else if meta.is_file() {
        *budget = budget.checked_sub(meta.len()).ok_or_else(|| {
            io::Error::other(format!("{} holds more than 64 MiB", e.path().display()))
        })?;
        Some(Node::File {
            name,
            mode: meta.mode() & 0o7777,
            data: fs::read(e.path())?,
        })
    } else if meta.is_dir() && depth > 0 {
        Some(Node::Dir {
            name,
            mode: meta.mode() & 0o7777,
            children: snapshot(&e.path(), depth - 1, budget)?,
        })
    } else {
        None
    })
}

/// Writes `nodes` under `dir`; a file whose path relative to the copy's root is in
/// `replace` gets the given bytes instead of its own.
pub(super) fn materialize(
    dir: &Path,
    rel: &Path,
    nodes: &[Node],
    replace: &[(PathBuf, &[u8])],
) -> io::Result<()> {
    for n in nodes {
        match n {
            Node::Link { name, target } => std::os::unix::fs::symlink(target, dir.join(name))?,
            Node::File { name, mode, data } => {
                let r = rel.join(name);
                let bytes = replace
                    .iter()
                    .find(|(p, _)| *p == r)
                    .map(|(_, b)| *b)
                    .unwrap_or(data);
                write_new(&dir.join(name), bytes, *mode)?;
            }
            Node::Dir {
                name,
                mode,
                children,
            } => {
                let d = dir.join(name);
                fs::create_dir(&d)?;
                fs::set_permissions(&d, fs::Permissions::from_mode(*mode))?;
                materialize(&d, &rel.join(name), children, replace)?;
            }
        }
    }
    Ok(())
}

pub(super) fn write_new(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(data)?;
    // The mode asked for, whatever the umask.
    f.set_permissions(fs::Permissions::from_mode(mode))
}

/// The first free `<hash>.N` name in a hashed directory.
pub(super) fn hash_entry(nodes: &[Node], hash: &str) -> OsString {
    let taken = |n: &OsString| {
        nodes.iter().any(|x| match x {
            Node::File { name, .. } | Node::Link { name, .. } | Node::Dir { name, .. } => name == n,
        })
    };
    (0..)
        .map(|i| OsString::from(format!("{hash}.{i}")))
        .find(|n| !taken(n))
        .unwrap_or_default()
}

// ---- NSS (run by pid 1: it needs a helper process) ----

/// Directories certutil is taken from: root's, never the command's PATH.
const CERTUTIL: &[&str] = &[
    "/usr/bin/certutil",
    "/bin/certutil",
    "/usr/local/bin/certutil",
];

/// Shows the user's NSS database with the CA added: a copy is built in [`NSS_STAGING`] by a
/// child running as the user (so it reads and writes only what the user may), then mounted
/// over the database directory, which stays untouched on disk. Returns a warning for stderr
/// when it cannot be done; nothing to do (no database) is Ok(None).
pub(super) fn install_nss(
    nssdb: &Path,
    ca_pem: &Path,
    creds: &Credentials,
) -> io::Result<Option<String>> {
    use crate::sys;
    // O_NOFOLLOW on the last component and an owner check on what was opened: the mount
    // goes exactly onto the user's own directory, whatever they rename meanwhile.
    let dir = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(nssdb)
    {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Ok(Some(format!(
                "{}: {e}: NSS clients will not trust the inspection CA",
                nssdb.display()
            )))
        }
    };
    if dir.metadata()?.uid() != creds.uid {
        return Ok(Some(format!(
            "{} does not belong to uid {}: left alone, NSS clients will not trust the inspection CA",
            nssdb.display(),
            creds.uid
        )));
    }
    let Some(certutil) = CERTUTIL.iter().map(Path::new).find(|p| p.is_file()) else {
        return Ok(Some(format!(
            "{} exists but certutil is not installed (Debian: libnss3-tools): NSS clients (Chromium) will not trust the inspection CA",
            nssdb.display()
        )));
    };
    let staging = Path::new(NSS_STAGING);
    sys::mount(
        Some(Path::new("tmpfs")),
        staging,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(&format!("mode=0700,uid={},gid={}", creds.uid, creds.gid)),
    )?;
    let built = build_nss_as_user(nssdb, staging, certutil, ca_pem, creds);
    let result = match built {
        Ok(()) => {
            let target = PathBuf::from(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&dir)
            ));
            sys::mount(Some(staging), &target, None, libc::MS_BIND, None).map(|_| None)
        }
        Err(why) => Ok(Some(format!(
            "{}: {why}: NSS clients will not trust the inspection CA",
            nssdb.display()
        ))),
    };
    sys::umount_detach(staging)?;
    result
}

/// In a child with the user's credentials: copy the database files into `staging`, then
/// exec certutil to add the CA. Returns why it failed.
fn build_nss_as_user(
    nssdb: &Path,
    staging: &Path,
    certutil: &Path,
    ca_pem: &Path,
    creds: &Credentials,
) -> Result<(), String> {
    use crate::sys;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |s: &OsStr| CString::new(s.as_bytes()).unwrap_or_default();
    let mut db = OsString::from("sql:");
    db.push(staging);
    let argv: Vec<CString> = [
        OsStr::new("certutil"),
        OsStr::new("-d"),
        &db,
        OsStr::new("-A"),
        OsStr::new("-t"),
        OsStr::new("C,,"),
        OsStr::new("-n"),
        OsStr::new("egress-agent inspection CA"),
        OsStr::new("-i"),
        ca_pem.as_os_str(),
    ]
    .iter()
    .map(|s| c(s))
    .collect();
    let prog = c(certutil.as_os_str());
    match sys::fork_single_threaded().map_err(|e| format!("fork: {e}"))? {
        sys::Forked::Child => {
            let copy_and_exec = || -> io::Result<()> {
                sys::reset_signals()?;
                sys::set_groups(&creds.groups)?;
                sys::set_gid(creds.gid)?;
                sys::set_uid(creds.uid)?;
                sys::set_no_new_privs()?;
                for e in fs::read_dir(nssdb)? {
                    let e = e?;
                    if e.file_type()?.is_file() {
                        let data = fs::read(e.path())?;
                        write_new(&staging.join(e.file_name()), &data, 0o600)?;
                    }
                }
                sys::quiet_stdio()?;
                Err(sys::execve(
                    &prog,
                    &argv,
                    &[c(OsStr::new("PATH=/usr/bin:/bin"))],
                ))
            };
            // Returns only when something failed (exec included).
            let _ = copy_and_exec();
            sys::exit_now(111)
        }
        sys::Forked::Parent(pid) => match sys::wait_blocking(pid) {
            Ok(st) if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0 => Ok(()),
            Ok(st) if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 111 => {
                Err("copying it or starting certutil failed".into())
            }
            Ok(st) => Err(format!("certutil failed (wait status {st})")),
            Err(e) => Err(format!("waiting for certutil: {e}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `<hash>.N` link of the host's hashed directory names its certificate's subject
    /// hash: ours must agree with OpenSSL's on all of them (ASCII, UTF-8, BMP, T61 names).
    #[test]
    fn subject_hash_agrees_with_the_hosts_hashed_directory() {
        use rustls_pki_types::{pem::PemObject, CertificateDer};
        let Ok(entries) = fs::read_dir(CERT_DIR) else {
            eprintln!("no {CERT_DIR}: skipped");
            return;
        };
        let mut checked = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((hash, n)) = name.split_once('.') else {
                continue;
            };
            if hash.len() != 8 || n.parse::<u32>().is_err() {
                continue;
            }
            let Ok(pem) = fs::read(e.path()) else {
                continue;
            };
            let Ok(cert) = CertificateDer::from_pem_slice(&pem) else {
                continue;
            };
            assert_eq!(subject_hash(&cert).as_deref(), Some(hash), "{name}");
            checked += 1;
        }
        eprintln!("{checked} hashed entries checked");
    }

    #[test]
    fn the_copy_keeps_links_and_modes_and_swaps_the_bundles() {
        let base = std::env::temp_dir().join(format!("egress-certdir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let (src, dst) = (base.join("src"), base.join("dst"));
        fs::create_dir_all(src.join("java")).unwrap();
        fs::create_dir_all(&dst).unwrap();
        write_new(&src.join("ca-certificates.crt"), b"system roots", 0o644).unwrap();
        write_new(&src.join("java/cacerts"), b"jks", 0o640).unwrap();
        std::os::unix::fs::symlink("ca-certificates.crt", src.join("0123abcd.0")).unwrap();
        let mut budget = 1 << 20;
        let nodes = snapshot(&src, 2, &mut budget).unwrap();
        assert_eq!(hash_entry(&nodes, "0123abcd"), OsString::from("0123abcd.1"));
        assert_eq!(hash_entry(&nodes, "ffffffff"), OsString::from("ffffffff.0"));
        let replace: Vec<(PathBuf, &[u8])> = vec![
            ("ca-certificates.crt".into(), b"roots + CA"),
            ("java/cacerts".into(), b"jks + CA"),
        ];
        materialize(&dst, Path::new(""), &nodes, &replace).unwrap();
        assert_eq!(fs::read(dst.join("0123abcd.0")).unwrap(), b"roots + CA");
        assert_eq!(
            fs::read_link(dst.join("0123abcd.0")).unwrap(),
            PathBuf::from("ca-certificates.crt")
        );
        assert_eq!(fs::read(dst.join("java/cacerts")).unwrap(), b"jks + CA");
        let mode = fs::metadata(dst.join("java/cacerts")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o640);
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn env_points_at_the_view_and_keeps_java_options() {
        let written = Trust {
            ca: "/s/trust/ca.pem".into(),
            bundle: "/s/trust/bundle.pem".into(),
            jks: "/s/trust/truststore.jks".into(),
        };
        let view = Trust {
            ca: "/v/ca.pem".into(),
            bundle: "/v/bundle.pem".into(),
            jks: "/v/truststore.jks".into(),
        };
        let env = command_env(&written, &view, Some(OsStr::new("-Xmx1g")));
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.to_str().unwrap().to_string())
        };
        assert_eq!(get("SSL_CERT_FILE").as_deref(), Some("/v/bundle.pem"));
        assert_eq!(get("NODE_EXTRA_CA_CERTS").as_deref(), Some("/v/ca.pem"));
        assert_eq!(
            get("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH").as_deref(),
            Some("/v/bundle.pem")
        );
        let java = get("JAVA_TOOL_OPTIONS").unwrap();
        assert!(
            java.starts_with("-Xmx1g -Djavax.net.ssl.trustStore=/v/truststore.jks"),
            "{java}"
        );
        assert!(ca_env_notes(&written).lines().all(|l| l.starts_with('#')));
    }
}
