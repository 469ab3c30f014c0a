//! `bench idle-client`: run by W5 in the client's cgroup. Opens `--count` TLS connections to
//! `--connect` (SNI and Host `--host`), does one `GET /bytes/16` on each, prints one JSON line and
//! holds every connection open until stdin closes (or says anything), then closes them cleanly.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Semaphore,
};

struct Args {
    count: usize,
    connect: SocketAddr,
    host: String,
    ca: PathBuf,
}

fn parse(args: &[String]) -> Args {
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .unwrap_or_else(|| panic!("idle-client: missing {k}"))
            .clone()
    };
    Args {
        count: get("--count").parse().expect("--count"),
        connect: get("--connect").parse().expect("--connect"),
        host: get("--host"),
        ca: get("--ca").into(),
    }
}

fn tls_config(ca: &PathBuf) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).expect("read --ca");
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.expect("a PEM certificate")).unwrap();
    }
    // The benchmarks' one TLS profile (BENCH.md): TLS 1.3, AES-128-GCM, X25519.
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    provider.kx_groups = vec![rustls::crypto::ring::kx_group::X25519];
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

async fn one(
    connector: tokio_rustls::TlsConnector,
    addr: SocketAddr,
    host: String,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    tls.write_all(format!("GET /bytes/16 HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("write: {}", e.kind()))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tls
            .read(&mut buf)
            .await
            .map_err(|e| format!("read: {}", e.kind()))?;
        if n == 0 {
            return Err("eof".into());
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            if !got.starts_with(b"HTTP/1.1 200") {
                return Err("status".into());
            }
            if got.len() >= end + 4 + 16 {
                return Ok(tls);
            }
        }
    }
}

pub fn main(args: &[String]) {
    let a = parse(args);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let connector = tokio_rustls::TlsConnector::from(tls_config(&a.ca));
        let sem = Arc::new(Semaphore::new(64));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..a.count {
            let (c, host, sem) = (connector.clone(), a.host.clone(), sem.clone());
            let addr = a.connect;
            set.spawn(async move {
                let _permit = sem.acquire_owned().await.unwrap();
                tokio::time::timeout(Duration::from_secs(10), one(c, addr, host))
                    .await
                    .unwrap_or_else(|_| Err("timeout".into()))
            });
        }
        let mut held = Vec::new();
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        while let Some(r) = set.join_next().await {
            match r.unwrap() {
                Ok(s) => held.push(s),
                Err(e) => *errors.entry(e).or_default() += 1,
            }
        }
        let failed: u64 = errors.values().sum();
        println!(
            "{}",
            serde_json::json!({"ok": held.len(), "failed": failed, "errors": errors})
        );
        let mut stdin = tokio::io::stdin();
        let mut b = [0u8; 16];
        // Bounded: W5 closes stdin right after measuring; never hold connections past 5 minutes.
        let _ = tokio::time::timeout(Duration::from_secs(300), stdin.read(&mut b)).await;
        // Close like a well-behaved client (TLS close_notify, then FIN), all at once: dropping
        // the streams would close them without close_notify, and a proxy that mirrors that on
        // its upstream leg would show as upstream errors at the fake internet.
        let mut closing = tokio::task::JoinSet::new();
        for mut s in held {
            closing.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), s.shutdown()).await;
            });
        }
        while closing.join_next().await.is_some() {}
    });
}
