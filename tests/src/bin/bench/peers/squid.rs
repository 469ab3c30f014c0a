//! Squid (Debian `squid-openssl`) as a transparent egress proxy in the container's netns: one
//! process (no SMP workers: it is pinned to one CPU like every proxy here), `intercept` ports for
//! HTTP and TLS, `ssl_bump peek` at step 1 then `splice` by SNI for passthrough and `bump` for
//! inspection, its certificates minted by `security_file_certgen` helpers with the peers' CA
//! (Squid reuses the CA's P-256 key for the leaves). No caching, no access log.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use egress_tests::topology::Topology;

use super::{chown_proxy, wait_ready, PeerCa, PeerProc};
use crate::env::{COLD_ZONE, INSPECT_HOST, PASS_HOST, PROXY_CPU};

const CERTGEN: &str = "/usr/lib/squid/security_file_certgen";

pub struct Squid {
    pub proc: PeerProc,
    pub inspect_missing: Option<String>,
}

pub struct SquidSetup<'a> {
    pub bin: &'a Path,
    pub topo: &'a Topology,
    /// The cgroup its clients run in (redirected to it).
    pub client: &'a Path,
    pub cgroup: PathBuf,
    pub ca: &'a PeerCa,
    pub fake_ca: &'a Path,
    pub bundle: &'a Path,
    pub openssl_conf: &'a Path,
    /// Its intercept port for TLS (443 is redirected here); plain HTTP is 100 above.
    pub base_port: u16,
}

fn config(dir: &Path, https_port: u16, http_port: u16) -> String {
    let d = dir.display();
    let ca = dir.join("ca.pem");
    let key = dir.join("ca.key");
    let fake_ca = dir.join("upstream-ca.pem");
    let (ca, key, fake_ca) = (ca.display(), key.display(), fake_ca.display());
    format!(
        "http_port 127.0.0.1:{fwd} \n\
         http_port 127.0.0.1:{http_port} intercept\n\
         https_port 127.0.0.1:{https_port} intercept ssl-bump tls-cert={ca} tls-key={key} \
         generate-host-certificates=on dynamic_cert_mem_cache_size=64MB\n\
         sslcrtd_program {CERTGEN} -s {d}/ssl_db -M 64MB\n\
         sslcrtd_children 8 startup=1 idle=1\n\
         tls_outgoing_options cafile={fake_ca}\n\
         acl step1 at_step SslBump1\n\
         acl pass_sni ssl::server_name {PASS_HOST}\n\
         acl inspect_sni ssl::server_name {INSPECT_HOST} .{COLD_ZONE}\n\
         ssl_bump peek step1\n\
         ssl_bump splice pass_sni\n\
         ssl_bump bump inspect_sni\n\
         ssl_bump terminate all\n\
         # The fake CONNECT of an intercepted TLS connection names the IP the client dialled.\n\
         acl fake_connect method CONNECT\n\
         acl web dst 198.51.100.0/24 203.0.113.0/24\n\
         acl allowed_hosts dstdomain {PASS_HOST} {INSPECT_HOST} .{COLD_ZONE}\n\
         http_access allow fake_connect web\n\
         http_access allow allowed_hosts\n\
         http_access deny all\n\
         dns_nameservers 203.0.113.53\n\
         cache deny all\n\
         cache_mem 0 MB\n\
         access_log none\n\
         cache_log {d}/cache.log\n\
         cache_store_log none\n\
         pid_filename {d}/squid.pid\n\
         coredump_dir {d}\n\
         pinger_enable off\n\
         shutdown_lifetime 0 seconds\n\
         max_filedescriptors 20000\n\
         via off\n\
         forwarded_for transparent\n\
         visible_hostname bench-squid\n\
         cache_effective_user proxy\n",
        fwd = http_port + 1,
    )
}

impl Squid {
    pub fn start(s: SquidSetup) -> Result<Squid, String> {
        let https_port = s.base_port;
        let http_port = https_port + 100;
        // Squid drops to `proxy`: its own directory, files it can read.
        let dir = s.topo.workdir().join("squid");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&s.ca.cert, dir.join("ca.pem")).unwrap();
        std::fs::copy(&s.ca.key, dir.join("ca.key")).unwrap();
        std::fs::copy(s.fake_ca, dir.join("upstream-ca.pem")).unwrap();
        let db = Command::new(CERTGEN)
            .args(["-c", "-s"])
            .arg(dir.join("ssl_db"))
            .args(["-M", "64MB"])
            .output()
            .map_err(|e| format!("{CERTGEN}: {e}"))?;
        if !db.status.success() {
            return Err(format!(
                "{CERTGEN} -c: {}",
                String::from_utf8_lossy(&db.stderr).trim()
            ));
        }
        chown_proxy(&dir)?;
        // The workdir is root's: let `proxy` through to its directory.
        let _ = Command::new("chmod")
            .arg("o+x")
            .arg(s.topo.workdir())
            .status();
        let cfg_path = dir.join("squid.conf");
        std::fs::write(&cfg_path, config(&dir, https_port, http_port)).unwrap();
        let parse = Command::new(s.bin)
            .args(["-k", "parse", "-f"])
            .arg(&cfg_path)
            .env("OPENSSL_CONF", s.openssl_conf)
            .output()
            .map_err(|e| format!("squid: {e}"))?;
        if !parse.status.success() {
            return Err(format!(
                "squid -k parse: {}",
                String::from_utf8_lossy(&parse.stderr)
                    .lines()
                    .filter(|l| l.contains("ERROR") || l.contains("FATAL"))
                    .collect::<Vec<_>>()
                    .join(" / ")
            ));
        }
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", PROXY_CPU])
            .arg(s.bin)
            .args(["-N", "-f"])
            .arg(&cfg_path)
            .env("OPENSSL_CONF", s.openssl_conf)
            .stdout(std::process::Stdio::null());
        let proc = PeerProc::spawn("squid", cmd, &s.topo.ctr_netns_path(), s.cgroup.clone())?;
        wait_ready(
            s.topo,
            s.client,
            "squid",
            &[],
            &format!("http://{PASS_HOST}/bytes/1"),
            Duration::from_secs(20),
        )
        .map_err(|e| format!("{e} (see {}/cache.log)", dir.display()))?;
        wait_ready(
            s.topo,
            s.client,
            "squid (splice)",
            &["--cacert", &s.bundle.to_string_lossy()],
            &format!("https://{PASS_HOST}/bytes/16"),
            Duration::from_secs(10),
        )?;
        let inspect_missing = wait_ready(
            s.topo,
            s.client,
            "squid (bump)",
            &["--cacert", &s.bundle.to_string_lossy()],
            &format!("https://{INSPECT_HOST}/bytes/16"),
            Duration::from_secs(10),
        )
        .err();
        Ok(Squid {
            proc,
            inspect_missing,
        })
    }
}
