//! Monitor mode for connections the agent cannot name (opaque TCP to an address that did not
//! come from its DNS, TLS without SNI, HTTP without Host, cleartext h2): enforce mode refuses
//! them; monitor mode records `would_deny` and forwards to the address the client asked for,
//! after the same address screening every dial gets (the kernel deny set already held).

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::session::Session;
use crate::{deny::DenyCode, policy::Policy};

/// Forwards a nameless connection to the address it asked for (monitor mode only). The
/// session's record is already marked `would_deny`.
pub(super) async fn pass_nameless(s: Session, policy: &Policy) {
    match dial_as_asked(s.dst, policy).await {
        Ok(upstream) => s.splice(upstream, None).await,
        Err((code, reason)) => s.reset(code.as_str(), reason),
    }
}

async fn dial_as_asked(dst: SocketAddr, policy: &Policy) -> Result<TcpStream, (DenyCode, String)> {
    let (ok, refused) = crate::resolve::screen(policy, vec![dst.ip()]);
    let Some(ip) = ok.first() else {
        return Err((
            DenyCode::DestinationIpProhibited,
            format!("{dst} is prohibited: {}", refused.join(", ")),
        ));
    };
    let upstream = TcpStream::connect(SocketAddr::new(*ip, dst.port()))
        .await
        .map_err(|e| {
            (
                DenyCode::UpstreamUnreachable,
                format!("could not reach {dst}: {e}"),
            )
        })?;
    let _ = upstream.set_nodelay(true);
    Ok(upstream)
}
