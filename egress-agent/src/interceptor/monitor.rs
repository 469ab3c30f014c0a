//! Monitor mode for connections the agent cannot name (opaque TCP to an
//! address that did not come from its DNS, TLS without SNI, HTTP without
//! Host, cleartext h2): enforce mode refuses them; monitor mode records
//! `would_deny` and forwards to the address the client asked for, after the
//! same address screening every dial gets (the kernel deny set already held).

use std::{net::SocketAddr, time::Instant};

use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::{agent::Attachment, deny::DenyCode, policy::Policy, record::Record};

use super::finish;

/// Forward a nameless connection to `dst` (monitor mode only). `rec` is
/// already marked `would_deny` by the caller.
pub(super) async fn pass_nameless(
    mut client: TcpStream,
    buf: Vec<u8>,
    dst: SocketAddr,
    att: &Attachment,
    policy: &Policy,
    mut rec: Record,
    started: Instant,
) {
    let (ok, refused) = crate::resolve::screen(policy, vec![dst.ip()]);
    let dialed = match ok.first() {
        Some(ip) => TcpStream::connect(SocketAddr::new(*ip, dst.port()))
            .await
            .map_err(|e| {
                (
                    DenyCode::UpstreamUnreachable,
                    format!("could not reach {dst}: {e}"),
                )
            }),
        None => Err((
            DenyCode::DestinationIpProhibited,
            format!("{dst} is prohibited: {}", refused.join(", ")),
        )),
    };
    let mut upstream = match dialed {
        Ok(u) => u,
        Err((code, reason)) => {
            rec.decision = "deny";
            rec.code = Some(code.as_str().into());
            rec.reason = Some(reason);
            finish(att, rec, started);
            super::respond::reset(client);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    rec.upstream = upstream.peer_addr().ok().map(|a| a.to_string());
    if !buf.is_empty() && upstream.write_all(&buf).await.is_err() {
        let _ = client.shutdown().await;
        finish(att, rec, started);
        return;
    }
    let (t, _err) = crate::copy::bidirectional(client, upstream).await;
    rec.bytes_up = t.up;
    rec.bytes_down = t.down;
    finish(att, rec, started);
}
