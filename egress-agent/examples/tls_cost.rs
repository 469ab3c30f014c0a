//! What inspection costs per certificate: minting a leaf for a new name (cold) and a full
//! TLS 1.3 handshake served with a cached leaf (warm), in memory, no network.
//!
//! `cargo run --release -p egress-agent --example tls_cost` (figures only; nothing asserted).

use std::{sync::Arc, time::Instant};

use egress_agent::inspect::{ca::Ca, mint::Minter};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

fn main() {
    let dir = std::env::temp_dir().join(format!("egress-tls-cost-{}", std::process::id()));
    let ca = Arc::new(Ca::load_or_create(&dir, None).expect("CA"));
    let minter = Arc::new(Minter::new(ca.clone()).expect("minter"));

    const NAMES: usize = 500;
    let t = Instant::now();
    for i in 0..NAMES {
        minter.get(&format!("host{i}.example.test")).expect("mint");
    }
    let cold = t.elapsed().as_secs_f64() * 1e6 / NAMES as f64;

    const LOOKUPS: usize = 200_000;
    let t = Instant::now();
    for i in 0..LOOKUPS {
        std::hint::black_box(minter.get(&format!("host{}.example.test", i % NAMES)).ok());
    }
    let lookup = t.elapsed().as_secs_f64() * 1e6 / LOOKUPS as f64;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(minter.clone());
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let server = Arc::new(server);
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der.clone()).unwrap();
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Full handshakes only: no resumption on the client side.
    client.resumption = rustls::client::Resumption::disabled();
    let client = Arc::new(client);

    const HANDSHAKES: usize = 1000;
    let t = Instant::now();
    for _ in 0..HANDSHAKES {
        let name = "host7.example.test".try_into().unwrap();
        let mut c = ClientConnection::new(client.clone(), name).unwrap();
        let mut s = ServerConnection::new(server.clone()).unwrap();
        while c.is_handshaking() || s.is_handshaking() {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets().unwrap();
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets().unwrap();
        }
    }
    let warm = t.elapsed().as_secs_f64() * 1e6 / HANDSHAKES as f64;
    println!("cold: {cold:.1} µs per new name minted (P-256 CA signature + DER), {NAMES} names");
    println!("cache hit: {lookup:.3} µs per lookup (incl. format!), {LOOKUPS} lookups");
    println!("warm: {warm:.1} µs per full TLS 1.3 handshake with a cached leaf (client + server side, in memory), {HANDSHAKES} handshakes");
    let _ = std::fs::remove_dir_all(&dir);
}
