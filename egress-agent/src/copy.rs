//! The passthrough copy loop (after ztunnel's `copy.rs`).
//!
//! Each direction waits for readability *before* it owns a buffer, so an idle
//! connection costs no buffer at all; a buffer starts small and grows with the
//! traffic it carries. Both directions are joined: one side finishing (EOF)
//! half-closes the other side's write and the other direction carries on.

use std::io;

use tokio::{
    io::AsyncWriteExt,
    net::tcp::{OwnedReadHalf, OwnedWriteHalf},
    net::TcpStream,
};

/// First buffer: enough for a request line or a TLS record header without
/// wasting memory on the many connections that only exchange a few bytes.
const INITIAL: usize = 1024;
/// Grown to after a read fills the buffer: a TLS record is at most 16 KiB + 256.
const MEDIUM: usize = 16 * 1024 + 256;
/// Bulk transfer: large enough to amortise syscalls on a 10 Gbit/s stream.
const LARGE: usize = 256 * 1024;
/// How many full reads at a size before growing to the next one.
const FULL_READS_TO_GROW: u32 = 4;

/// Why a direction stopped, named so the audit log can say it.
#[derive(Debug, thiserror::Error)]
pub enum Disconnect {
    #[error("client reset the connection: {0}")]
    ClientReset(io::Error),
    #[error("upstream reset the connection: {0}")]
    UpstreamReset(io::Error),
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Transferred {
    pub up: u64,
    pub down: u64,
}

/// Copy client <-> upstream until both directions are done.
pub async fn bidirectional(
    client: TcpStream,
    upstream: TcpStream,
) -> (Transferred, Option<Disconnect>) {
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let (up, down) = tokio::join!(one_way(cr, uw), one_way(ur, cw));
    let t = Transferred {
        up: up.as_ref().map_or_else(|(n, _)| *n, |n| *n),
        down: down.as_ref().map_or_else(|(n, _)| *n, |n| *n),
    };
    let err = match (up, down) {
        (Err((_, e)), _) => Some(Disconnect::ClientReset(e)),
        (_, Err((_, e))) => Some(Disconnect::UpstreamReset(e)),
        _ => None,
    };
    (t, err)
}

async fn one_way(from: OwnedReadHalf, mut to: OwnedWriteHalf) -> Result<u64, (u64, io::Error)> {
    let mut buf: Vec<u8> = Vec::new();
    let mut total = 0u64;
    let mut full_reads = 0u32;
    loop {
        if let Err(e) = from.readable().await {
            return Err((total, e));
        }
        if buf.is_empty() {
            buf.resize(INITIAL, 0);
        }
        let n = match from.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err((total, e)),
        };
        if let Err(e) = to.write_all(&buf[..n]).await {
            return Err((total, e));
        }
        total += n as u64;
        if n == buf.len() && buf.len() < LARGE {
            full_reads += 1;
            if full_reads >= FULL_READS_TO_GROW {
                let next = if buf.len() < MEDIUM { MEDIUM } else { LARGE };
                buf.resize(next, 0);
                full_reads = 0;
            }
        }
    }
    // EOF from this side: pass the half-close on, let the other direction finish.
    let _ = to.shutdown().await;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn copies_both_ways_with_half_close_and_counts_bytes() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut server) = pair().await;
        let relay = tokio::spawn(bidirectional(client_side, upstream_side));

        let payload = vec![7u8; 3 * 1024 * 1024];
        client.write_all(&payload).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), payload.len());
        // The other direction still works after the client's half-close.
        server.write_all(b"reply").await.unwrap();
        server.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply");
        let (t, err) = relay.await.unwrap();
        assert!(err.is_none());
        assert_eq!((t.up, t.down), (payload.len() as u64, 5));
    }
}
