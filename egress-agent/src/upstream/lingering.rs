//! The lingering close of upstream sockets an HTTP engine owns.

use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpStream;

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
