//! Stage: upstream — the last room of the data path. The agent resolves the name itself,
//! drops every address the classifier denies (and the host's own addresses), and dials
//! exactly one of the addresses it checked — never the address the client chose, so SNI
//! spoofing and DNS rebinding reach nothing the policy did not allow. Also: the TLS client
//! configurations of inspected upstreams ([`tls`]) and the lingering close of upstream
//! sockets an HTTP engine owns ([`Lingering`]).

mod lingering;
mod proxy;
pub mod tls;

pub use lingering::Lingering;

use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpStream;

use crate::{
    deny::DenyCode,
    policy::{name::CanonicalName, Policy, Route},
    resolve::Resolver,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolve `name`, screen its addresses with `policy`, dial one that passed — or, with an
/// `upstream_proxy` for this name, a tunnel through the proxy (which resolves the name).
pub async fn connect(
    resolver: &Resolver,
    policy: &Policy,
    name: &CanonicalName,
    port: u16,
) -> Result<TcpStream, (DenyCode, String)> {
    if let Route::Proxy(p) = policy.route(name, port) {
        return proxy::connect(resolver, policy, p, name, port).await;
    }
    let (addrs, _ttl) = resolver
        .lookup(name.as_str())
        .await
        .map_err(|e| (DenyCode::DnsError, e.to_string()))?;
    let (ok, refused) = crate::resolve::screen(policy, addrs);
    let allowed: Vec<SocketAddr> = ok.into_iter().map(|ip| SocketAddr::new(ip, port)).collect();
    if allowed.is_empty() {
        let reason = if refused.is_empty() {
            format!("{name} has no addresses")
        } else {
            format!(
                "{name} resolves only to prohibited addresses: {}",
                refused.join(", ")
            )
        };
        let code = if refused.is_empty() {
            DenyCode::DnsError
        } else {
            DenyCode::DestinationIpProhibited
        };
        return Err((code, reason));
    }
    // One budget for all addresses, shared out among those left: a name with
    // many blackholed addresses must not keep the client waiting N x the timeout.
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let mut last = String::new();
    let n = allowed.len();
    for (i, addr) in allowed.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let slot = left / (n - i) as u32;
        match tokio::time::timeout(slot, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: connect timed out after {}ms", slot.as_millis()),
        }
    }
    Err((
        DenyCode::UpstreamUnreachable,
        format!("could not reach {name}:{port}: {last}"),
    ))
}
