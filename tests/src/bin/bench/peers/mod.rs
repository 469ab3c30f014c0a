//! The peers of BENCH.md, each started the way its operator would deploy it for this job, with the
//! benchmarks' one TLS profile and upstream verification on:
//!
//! - `haproxy`: passthrough by SNI (`mode tcp`) and inspection (`mode http`, `generate-certificates`),
//!   reached by address from a plain cgroup (`--connect-to`), its listeners in the container's netns;
//! - `squid`: transparent (`intercept`), `ssl_bump peek` + `splice` by SNI, `bump` with
//!   `security_file_certgen` for inspection;
//! - `mitmproxy`: transparent mode, no addons, `stream_large_bodies` (a reference, not a competitor).
//!
//! The transparent peers get their clients' connections from an iptables `REDIRECT` keyed by the
//! client's cgroup (see [`Intercept`]): the client dials 198.51.100.10 exactly as `direct` does.
//! Every peer runs in a cgroup of its own, so dropping it kills everything it forked (helpers).

pub mod haproxy;
pub mod mitmproxy;
pub mod squid;

use std::{
    fs::File,
    io::{BufRead, BufReader},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use egress_tests::topology::Topology;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose,
};

/// The peers' inspection CA (ECDSA P-256, like the agent's) and HAProxy's default leaf, whose key
/// HAProxy reuses for every certificate it generates.
pub struct PeerCa {
    /// The CA certificate (PEM): the clients trust it.
    pub cert: PathBuf,
    /// The CA key alone (PKCS#8 PEM).
    pub key: PathBuf,
    /// Certificate and key in one file (HAProxy `ca-sign-file`, mitmproxy's `mitmproxy-ca.pem`).
    pub cert_and_key: PathBuf,
    /// A leaf for `peer-default.invalid` with its key (HAProxy `crt`).
    pub default_leaf: PathBuf,
}

impl PeerCa {
    pub fn create(dir: &Path) -> PeerCa {
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = KeyPair::generate().expect("P-256 key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(DnType::CommonName, "egress-agent bench peers CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // RFC 5280's method 1 (SHA-1 of the public key): mitmproxy derives its leaves' authority
        // key id that way, and OpenSSL rejects an issuer whose subject key id differs.
        let skid = ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            ca_key.public_key_raw(),
        );
        ca.key_identifier_method = KeyIdMethod::PreSpecified(skid.as_ref().to_vec());
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["peer-default.invalid".to_string()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "peer-default.invalid");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let ca_pem = ca_cert.pem();
        let ca_key_pem = ca_key.serialize_pem();
        let leaf_cert = leaf.signed_by(&leaf_key, &Issuer::new(ca, ca_key)).unwrap();
        let p = PeerCa {
            cert: dir.join("peers-ca.pem"),
            key: dir.join("peers-ca.key"),
            cert_and_key: dir.join("peers-ca-cert-key.pem"),
            default_leaf: dir.join("peer-default.pem"),
        };
        std::fs::write(&p.cert, &ca_pem).unwrap();
        std::fs::write(&p.key, &ca_key_pem).unwrap();
        std::fs::write(&p.cert_and_key, format!("{ca_pem}{ca_key_pem}")).unwrap();
        std::fs::write(
            &p.default_leaf,
            format!("{}{ca_pem}{}", leaf_cert.pem(), leaf_key.serialize_pem()),
        )
        .unwrap();
        p
    }
}

/// An OpenSSL configuration that holds every OpenSSL-based peer (both of its legs) to the
/// benchmarks' TLS profile: TLS 1.3 only, TLS_AES_128_GCM_SHA256, X25519. Squid and mitmproxy
/// have no TLS 1.3 suite or group setting of their own; `OPENSSL_CONF` reaches all three.
pub fn openssl_conf(dir: &Path) -> PathBuf {
    let path = dir.join("peers-openssl.cnf");
    std::fs::write(
        &path,
        "openssl_conf = bench_conf\n\n[bench_conf]\nssl_conf = bench_ssl\n\n\
         [bench_ssl]\nsystem_default = bench_tls\n\n\
         [bench_tls]\nMinProtocol = TLSv1.3\nCiphersuites = TLS_AES_128_GCM_SHA256\nGroups = X25519\n",
    )
    .unwrap();
    path
}

/// A peer process in a cgroup of its own. Dropping it sends SIGTERM, then kills the whole cgroup
/// (`cgroup.kill`: every helper it forked) and removes it.
pub struct PeerProc {
    pub name: &'static str,
    child: Child,
    cgroup: PathBuf,
}

impl PeerProc {
    /// Spawns `cmd` (already set up for its netns) into `cgroup` (created here), forwarding its
    /// stderr lines as `[name] ...`.
    pub fn spawn(
        name: &'static str,
        mut cmd: Command,
        netns: &Path,
        cgroup: PathBuf,
    ) -> Result<PeerProc, String> {
        std::fs::create_dir_all(&cgroup).map_err(|e| format!("{}: {e}", cgroup.display()))?;
        let ns: OwnedFd = File::open(netns)
            .map_err(|e| format!("{}: {e}", netns.display()))?
            .into();
        let procs: OwnedFd = std::fs::OpenOptions::new()
            .write(true)
            .open(cgroup.join("cgroup.procs"))
            .map_err(|e| format!("{}/cgroup.procs: {e}", cgroup.display()))?
            .into();
        egress_tests::sys::pre_exec_enter(&mut cmd, ns, Some(procs));
        cmd.stdin(Stdio::null()).stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir(&cgroup);
                return Err(format!("{name}: {e}"));
            }
        };
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{name}] {line}");
            }
        });
        Ok(PeerProc {
            name,
            child,
            cgroup,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the main process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for PeerProc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        kill_cgroup(&self.cgroup);
        let _ = self.child.wait();
    }
}

/// Kills every process of `cgroup` and removes it (waits up to 3 s for the processes to go).
pub fn kill_cgroup(cgroup: &Path) {
    if !cgroup.exists() {
        return;
    }
    let _ = std::fs::write(cgroup.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
        if procs.trim().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir(cgroup);
}

/// The transparent peers' interception, in the container's netns: a client in cgroup C dialling
/// port 443 (80) is redirected to its peer's listener on 127.0.0.1. Everything else in that netns
/// is `NOTRACK`ed (raw table), so conntrack — which the nat table turns on for the whole netns —
/// costs the other configurations nothing; the redirected flows and the peers' replies on them
/// stay tracked (REDIRECT needs it). The rules go with the netns.
pub struct Intercept {
    /// (client cgroup relative to the cgroup2 root, peer listener ports).
    tracked: Vec<(String, Vec<u16>)>,
}

impl Intercept {
    pub fn new() -> Intercept {
        Intercept {
            tracked: Vec::new(),
        }
    }

    /// Redirects TCP from `client` (a cgroup path) to `(destination port, peer port)` pairs.
    pub fn redirect(
        &mut self,
        topo: &Topology,
        client: &Path,
        ports: &[(u16, u16)],
    ) -> Result<(), String> {
        let rel = cgroup_rel(client)?;
        for (dport, to) in ports {
            iptables(
                topo,
                &[
                    "-t",
                    "nat",
                    "-A",
                    "OUTPUT",
                    "-p",
                    "tcp",
                    "-m",
                    "cgroup",
                    "--path",
                    &rel,
                    "--dport",
                    &dport.to_string(),
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    &to.to_string(),
                ],
            )?;
        }
        self.tracked
            .push((rel, ports.iter().map(|(_, to)| *to).collect()));
        self.write_notrack(topo)
    }

    /// (Re)writes the raw table: RETURN (tracked) for the redirected clients and for the peers'
    /// listener ports, NOTRACK for everything else.
    fn write_notrack(&self, topo: &Topology) -> Result<(), String> {
        let _ = iptables(topo, &["-t", "raw", "-F", "OUTPUT"]);
        let _ = iptables(topo, &["-t", "raw", "-F", "PREROUTING"]);
        for (rel, ports) in &self.tracked {
            iptables(
                topo,
                &[
                    "-t", "raw", "-A", "OUTPUT", "-m", "cgroup", "--path", rel, "-j", "RETURN",
                ],
            )?;
            for p in ports {
                iptables(
                    topo,
                    &[
                        "-t",
                        "raw",
                        "-A",
                        "OUTPUT",
                        "-p",
                        "tcp",
                        "--sport",
                        &p.to_string(),
                        "-j",
                        "RETURN",
                    ],
                )?;
            }
        }
        iptables(
            topo,
            &["-t", "raw", "-A", "OUTPUT", "-j", "CT", "--notrack"],
        )?;
        // Loopback packets keep the verdict they got on the way out; this only reaches what
        // arrives from the fake internet (replies to un-NATed dials).
        iptables(
            topo,
            &["-t", "raw", "-A", "PREROUTING", "-j", "CT", "--notrack"],
        )
    }
}

fn iptables(topo: &Topology, args: &[&str]) -> Result<(), String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", topo.ctr_netns_path().display()))
        .arg("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .map_err(|e| format!("iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A cgroup's path relative to the cgroup2 root (what `-m cgroup --path` takes).
fn cgroup_rel(cgroup: &Path) -> Result<String, String> {
    let root = egress_tests::cgroup2_root().ok_or("no cgroup2 mount")?;
    cgroup
        .strip_prefix(&root)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|_| format!("{} is not under {}", cgroup.display(), root.display()))
}

/// Waits until `curl` in `cgroup` (container netns) gets a 200 for `url` with `extra` arguments.
pub fn wait_ready(
    topo: &Topology,
    cgroup: &Path,
    what: &str,
    extra: &[&str],
    url: &str,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = topo
            .ctr_command_in(cgroup, "curl")
            .args([
                "-sS",
                "--max-time",
                "3",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .args(extra)
            .arg(url)
            .output()
            .map_err(|e| format!("curl: {e}"))?;
        if String::from_utf8_lossy(&out.stdout).trim() == "200" {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{what} did not answer {url}: {} {}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A chown to the `proxy` user (Squid drops to it and must own its files).
pub fn chown_proxy(path: &Path) -> Result<(), String> {
    let ok = Command::new("chown")
        .args(["-R", "proxy:proxy"])
        .arg(path)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then_some(())
        .ok_or_else(|| format!("chown -R proxy:proxy {} failed", path.display()))
}
