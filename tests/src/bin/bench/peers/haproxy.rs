//! HAProxy (Debian): one process, three frontends. It runs in the agent's netns and binds its
//! listeners in the container's (`bind ... namespace ctr-…`), so the client-side hop is the same
//! loopback hop as the agent's redirected connections; clients reach it by address.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use egress_tests::{addrs::WEB1, topology::Topology};

use super::{wait_ready, PeerCa, PeerProc};
use crate::env::{COLD_ZONE, INSPECT_HOST, PASS_HOST, PROXY_CPU};

pub struct Haproxy {
    pub proc: PeerProc,
    /// `mode tcp`, SNI routing (passthrough).
    pub https_port: u16,
    /// `mode http`, Host routing (plain HTTP).
    pub http_port: u16,
    /// `mode http` over TLS with `generate-certificates` (inspection).
    pub inspect_port: u16,
    /// Why inspection is not measured (None: it is).
    pub inspect_missing: Option<String>,
}

pub struct HaproxySetup<'a> {
    pub bin: &'a Path,
    pub topo: &'a Topology,
    pub plain: &'a Path,
    pub cgroup: PathBuf,
    pub ca: &'a PeerCa,
    pub fake_ca: &'a Path,
    pub bundle: &'a Path,
    pub openssl_conf: &'a Path,
    pub threads: usize,
    pub base_port: u16,
}

fn config(s: &HaproxySetup, https_port: u16, http_port: u16, inspect_port: u16) -> String {
    let ns = s.topo.ctr_netns();
    let threads = s.threads;
    let crt = s.ca.default_leaf.display();
    let ca_sign = s.ca.cert_and_key.display();
    let fake_ca = s.fake_ca.display();
    format!(
        "global\n  nbthread {threads}\n  maxconn 9100\n  maxpipes 500\n  ulimit-n 20000\n  tune.bufsize 65536\n\
         \x20 ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256\n  ssl-default-bind-curves X25519\n\
         \x20 ssl-default-bind-options ssl-min-ver TLSv1.3\n\
         \x20 ssl-default-server-ciphersuites TLS_AES_128_GCM_SHA256\n\
         \x20 ssl-default-server-options ssl-min-ver TLSv1.3\n\
         \x20 tune.ssl.ssl-ctx-cache-size 20000\n\
         \x20 tune.h2.initial-window-size 1048576\n\n\
         defaults\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n\
         \x20 option splice-auto\n\n\
         frontend tls\n  mode tcp\n  bind 127.0.0.1:{https_port} namespace {ns}\n\
         \x20 tcp-request inspect-delay 5s\n\
         \x20 tcp-request content accept if {{ req_ssl_hello_type 1 }}\n\
         \x20 use_backend up_tls if {{ req_ssl_sni -i {PASS_HOST} }}\n\n\
         backend up_tls\n  mode tcp\n  server s1 {WEB1}:443\n\n\
         frontend plain\n  mode http\n  option http-keep-alive\n\
         \x20 bind 127.0.0.1:{http_port} namespace {ns}\n\
         \x20 use_backend up_http if {{ hdr(host) -i {PASS_HOST} }}\n\n\
         backend up_http\n  mode http\n  server s1 {WEB1}:80\n\n\
         # Inspection: a certificate generated per SNI (signed with the peers' CA, the default\n\
         # leaf's P-256 key), each request allowed by SNI and its Host held to the SNI (as the\n\
         # agent does), re-originated over verified TLS (HTTP/2 when offered, idle connections\n\
         # reused across clients as the agent shares its upstream). Its HTTP/2 window is raised\n\
         # from 2.6's 64 KiB default (one setting for both sides), so bulk is not window-bound.\n\
         frontend tls_inspect\n  mode http\n  option http-keep-alive\n\
         \x20 bind 127.0.0.1:{inspect_port} namespace {ns} ssl crt {crt} generate-certificates ca-sign-file {ca_sign} alpn h2,http/1.1\n\
         \x20 acl sni_allowed ssl_fc_sni -i {INSPECT_HOST}\n\
         \x20 acl sni_allowed ssl_fc_sni -m end .{COLD_ZONE}\n\
         \x20 http-request set-var(txn.sni) ssl_fc_sni,lower\n\
         \x20 acl host_is_sni req.hdr(host),field(1,:),lower,strcmp(txn.sni) eq 0\n\
         \x20 http-request deny status 403 unless sni_allowed host_is_sni\n\
         \x20 default_backend up_inspect\n\n\
         backend up_inspect\n  mode http\n  http-reuse always\n\
         \x20 server s1 {WEB1}:443 ssl verify required ca-file {fake_ca} sni ssl_fc_sni alpn h2,http/1.1\n"
    )
}

impl Haproxy {
    pub fn start(s: HaproxySetup) -> Result<Haproxy, String> {
        let https_port = s.base_port;
        let http_port = https_port + 100;
        let inspect_port = https_port + 200;
        let cfg = config(&s, https_port, http_port, inspect_port);
        let path = s.topo.workdir().join("haproxy.cfg");
        std::fs::write(&path, &cfg).unwrap();
        let check = Command::new(s.bin)
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .env("OPENSSL_CONF", s.openssl_conf)
            .output()
            .map_err(|e| format!("haproxy: {e}"))?;
        if !check.status.success() {
            return Err(format!(
                "haproxy -c: {}",
                String::from_utf8_lossy(&check.stderr).trim()
            ));
        }
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", PROXY_CPU])
            .arg(s.bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .env("OPENSSL_CONF", s.openssl_conf)
            .stdout(std::process::Stdio::null());
        let proc = PeerProc::spawn("haproxy", cmd, &s.topo.ag_netns_path(), s.cgroup.clone())?;
        wait_ready(
            s.topo,
            s.plain,
            "haproxy",
            &["-H", &format!("Host: {PASS_HOST}")],
            &format!("http://127.0.0.1:{http_port}/bytes/1"),
            Duration::from_secs(10),
        )?;
        let inspect_missing = wait_ready(
            s.topo,
            s.plain,
            "haproxy (inspection)",
            &[
                "--cacert",
                &s.bundle.to_string_lossy(),
                "--connect-to",
                &format!("{INSPECT_HOST}:443:127.0.0.1:{inspect_port}"),
            ],
            &format!("https://{INSPECT_HOST}/bytes/16"),
            Duration::from_secs(10),
        )
        .err();
        Ok(Haproxy {
            proc,
            https_port,
            http_port,
            inspect_port,
            inspect_missing,
        })
    }
}
