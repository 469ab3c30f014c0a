//! Dialing upstream: the agent resolves the name itself, drops every address
//! the classifier denies (and the host's own addresses), and dials exactly one
//! of the addresses it checked — never the address the client chose, so SNI
//! spoofing and DNS rebinding reach nothing the policy did not allow.

use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpStream;

use crate::{
    agent::Attachment,
    deny::DenyCode,
    policy::{name::CanonicalName, Policy},
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn connect(
    att: &Attachment,
    policy: &Policy,
    name: &CanonicalName,
    port: u16,
) -> Result<TcpStream, (DenyCode, String)> {
    let resolver = att.shared.resolver.load();
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

/// How long a closed upstream connection is drained before the socket goes.
const LINGER: Duration = Duration::from_secs(2);

/// An upstream connection the request engine (hyper, through TLS) owns. When hyper is done
/// with it the socket is not simply closed: closing a socket with unread bytes in it (the
/// server's answer to our GOAWAY, its close_notify, a late session ticket) makes the kernel
/// send a reset, and the server logs a broken connection for what was a clean close. So the
/// write side is shut and whatever the server still sends is read and discarded until it
/// closes too, for at most [`LINGER`] — the lingering close web servers do for the same
/// reason.
pub struct Lingering(Option<TcpStream>);

impl Lingering {
    pub fn new(s: TcpStream) -> Self {
        Self(Some(s))
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.0.as_ref().and_then(|s| s.peer_addr().ok())
    }

    fn inner(self: std::pin::Pin<&mut Self>) -> std::pin::Pin<&mut TcpStream> {
        // The stream is only taken in Drop.
        std::pin::Pin::new(
            self.get_mut()
                .0
                .as_mut()
                .expect("stream present until drop"),
        )
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let (Some(mut s), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        rt.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s.shutdown().await;
            let mut sink = [0u8; 2048];
            let _ = tokio::time::timeout(LINGER, async {
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        });
    }
}

impl tokio::io::AsyncRead for Lingering {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.inner().poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Lingering {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.inner().poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.inner().poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.inner().poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.inner().poll_shutdown(cx)
    }
}
