//! mitmproxy (PyPI, installed by `cargo xtask bench` into its own venv) in transparent mode in the
//! container's netns: no addons, `stream_large_bodies`, the peers' CA (P-256; mitmproxy signs every
//! leaf with it and reuses its key), upstream verification against fakenet's CA. A reference for a
//! single-core Python inspector, not a competitor to match.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use egress_tests::topology::Topology;

use super::{wait_ready, PeerCa, PeerProc};
use crate::env::{INSPECT_HOST, PROXY_CPU};

/// Where `cargo xtask bench` installs it.
pub const VENV: &str = "/opt/egress-agent-tools/mitmproxy";

pub struct Mitmproxy {
    pub proc: PeerProc,
}

pub struct MitmSetup<'a> {
    pub bin: &'a Path,
    pub topo: &'a Topology,
    pub client: &'a Path,
    pub cgroup: PathBuf,
    pub ca: &'a PeerCa,
    pub fake_ca: &'a Path,
    pub bundle: &'a Path,
    pub openssl_conf: &'a Path,
    /// Its transparent listener (443 and 80 are redirected here).
    pub port: u16,
}

impl Mitmproxy {
    pub fn start(s: MitmSetup) -> Result<Mitmproxy, String> {
        let confdir = s.topo.workdir().join("mitmproxy");
        std::fs::create_dir_all(&confdir).unwrap();
        std::fs::copy(&s.ca.cert_and_key, confdir.join("mitmproxy-ca.pem")).unwrap();
        let set = |k: &str, v: &str| ["--set".to_string(), format!("{k}={v}")];
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", PROXY_CPU])
            .arg(s.bin)
            .args(["--mode", "transparent", "--listen-host", "127.0.0.1"])
            .args(["--listen-port", &s.port.to_string(), "-q"])
            .args(set("confdir", &confdir.to_string_lossy()))
            .args(set(
                "ssl_verify_upstream_trusted_ca",
                &s.fake_ca.to_string_lossy(),
            ))
            .args(set("stream_large_bodies", "1m"))
            .args(set("tls_version_client_min", "TLS1_3"))
            .args(set("tls_version_server_min", "TLS1_3"))
            .args(set("flow_detail", "0"))
            .args(set("termlog_verbosity", "warn"))
            .env("OPENSSL_CONF", s.openssl_conf)
            .env("HOME", &confdir)
            .stdout(std::process::Stdio::null());
        let proc = PeerProc::spawn("mitmproxy", cmd, &s.topo.ctr_netns_path(), s.cgroup)?;
        wait_ready(
            s.topo,
            s.client,
            "mitmproxy",
            &["--cacert", &s.bundle.to_string_lossy()],
            &format!("https://{INSPECT_HOST}/bytes/16"),
            Duration::from_secs(30),
        )?;
        Ok(Mitmproxy { proc })
    }
}
