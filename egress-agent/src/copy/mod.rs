//! Below passthrough: the passthrough copy loop (after ztunnel's `copy.rs`).
//!
//! Each direction waits for readability *before* it owns a buffer and gives a
//! small one back once the socket is drained, so an idle connection costs no
//! buffer at all; a buffer starts small and grows with the traffic it carries. A direction
//! that fills its medium buffer again and again is bulk: without budgets to charge it moves
//! on to splice(2) through a pipe ([`pipe`]) instead of the large buffer. Both directions are
//! joined: one side finishing (EOF) half-closes the other side's write and the other
//! direction carries on.

mod pipe;

use std::{
    io,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::tcp::{ReadHalf, WriteHalf},
    net::TcpStream,
};

use crate::budget::{Dir, Exceeded, Meter};

/// First buffer: enough for a request line or a TLS record header without
/// wasting memory on the many connections that only exchange a few bytes.
const INITIAL: usize = 1024;
/// Grown to after a read fills the buffer: a TLS record is at most 16 KiB + 256.
const MEDIUM: usize = 16 * 1024 + 256;
/// Bulk transfer when no pipe is to be had (or under a budget): large enough to amortise
/// syscalls on a 10 Gbit/s stream.
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
    /// A budget's limit: both sides were reset after the bytes that fitted.
    #[error("{}", .0.reason)]
    OverBudget(Exceeded),
}

/// Why one direction stopped early.
pub enum Stop {
    Io(io::Error),
    Budget(Exceeded),
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Transferred {
    pub up: u64,
    pub down: u64,
}

/// Copy client <-> upstream until both directions are done, or until either
/// side resets: then the other side is reset too (SO_LINGER 0), instead of the
/// surviving direction waiting forever for a peer that is gone, and instead of
/// a clean FIN that would make a truncated reply look complete. Every byte is
/// charged to `meter`; over a budget, the bytes that fit are delivered and both
/// sides are reset.
pub async fn bidirectional(
    mut client: TcpStream,
    mut upstream: TcpStream,
    meter: Option<&Meter>,
) -> (Transferred, Option<Disconnect>) {
    let mut t = Transferred::default();
    let (up, down) = {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        let up = one_way(cr, uw, &mut t.up, meter.map(|m| (m, Dir::Up)));
        let down = one_way(ur, cw, &mut t.down, meter.map(|m| (m, Dir::Down)));
        tokio::pin!(up, down);
        let (mut a, mut b) = (None, None);
        loop {
            tokio::select! {
                r = &mut up, if a.is_none() => a = Some(r),
                r = &mut down, if b.is_none() => b = Some(r),
            }
            let failed = matches!(a, Some(Err(_))) || matches!(b, Some(Err(_)));
            if failed || (a.is_some() && b.is_some()) {
                break (a, b);
            }
        }
    };
    let err = match (up, down) {
        (Some(Err(Stop::Budget(x))), _) => {
            cut(client, upstream, Dir::Up).await;
            return (t, Some(Disconnect::OverBudget(x)));
        }
        (_, Some(Err(Stop::Budget(x)))) => {
            cut(client, upstream, Dir::Down).await;
            return (t, Some(Disconnect::OverBudget(x)));
        }
        (Some(Err(Stop::Io(e))), _) => Some(Disconnect::ClientReset(e)),
        (_, Some(Err(Stop::Io(e)))) => Some(Disconnect::UpstreamReset(e)),
        _ => None,
    };
    match &err {
        Some(Disconnect::ClientReset(_)) => reset(upstream),
        Some(Disconnect::UpstreamReset(_)) => reset(client),
        _ => {}
    }
    (t, err)
}

/// How long a cut connection waits for the bytes that fitted to reach their receiver.
const CUT_DRAIN: Duration = Duration::from_secs(1);

/// Ends a connection a budget cut: the side that was sent the bytes that fitted gets them
/// (its send queue drains, for up to [`CUT_DRAIN`]), then both sides are reset — the
/// upstream must not take a cut upload for a complete one.
pub async fn cut(client: TcpStream, upstream: TcpStream, dir: Dir) {
    let receiver = match dir {
        Dir::Up => &upstream,
        Dir::Down => &client,
    };
    let deadline = Instant::now() + CUT_DRAIN;
    while crate::sys::unsent_bytes(receiver.as_raw_fd()).is_ok_and(|n| n > 0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    reset(client);
    reset(upstream);
}

/// Close with RST (linger 0 never blocks).
fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(std::time::Duration::ZERO));
    drop(s);
}

/// One direction. A read error is the reading side's reset; a write error is
/// the writing side's — both count as "this direction failed". With a meter,
/// a read that goes over a budget is written up to the limit, then the
/// direction stops.
async fn one_way(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    total: &mut u64,
    meter: Option<(&Meter, Dir)>,
) -> Result<(), Stop> {
    let mut buf: Vec<u8> = Vec::new();
    let mut full_reads = 0u32;
    loop {
        from.readable().await.map_err(Stop::Io)?;
        if buf.is_empty() {
            buf.resize(INITIAL, 0);
        }
        // read(), not try_read(): a short read tells tokio the socket is drained, so the next
        // readable() waits in epoll instead of costing a read() that fails with EAGAIN.
        let n = from.read(&mut buf).await.map_err(Stop::Io)?;
        if n == 0 {
            break;
        }
        if let Err(e) = write_charged(&mut to, &buf[..n], meter).await {
            if let Stop::Budget(x) = &e {
                *total += x.allowed;
            }
            return Err(e);
        }
        *total += n as u64;
        if n < buf.len() {
            // Drained: a connection that has gone quiet gives its small buffer back, so
            // thousands of idle keep-alive connections hold no buffers at all. A grown
            // (bulk) buffer is kept: reallocating it on every drain would cost more.
            if buf.len() <= INITIAL {
                buf = Vec::new();
            }
            continue;
        }
        if buf.len() < LARGE {
            full_reads += 1;
            if full_reads >= FULL_READS_TO_GROW {
                if buf.len() >= MEDIUM && meter.is_none() {
                    if let Some(pipe) = pipe::Pipe::new() {
                        drop(buf);
                        return spliced(from, to, pipe, total).await;
                    }
                }
                let next = if buf.len() < MEDIUM { MEDIUM } else { LARGE };
                buf.resize(next, 0);
                full_reads = 0;
            }
        }
    }
    // EOF from this side: pass the half-close on, let the other direction finish.
    let _ = to.shutdown().await;
    Ok(())
}

/// The rest of a bulk direction, through `pipe` (never with a meter: a budget's cut needs
/// the bytes in hand).
async fn spliced(
    from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    pipe: pipe::Pipe,
    total: &mut u64,
) -> Result<(), Stop> {
    loop {
        let n = pipe.fill(&from).await.map_err(Stop::Io)?;
        if n == 0 {
            break;
        }
        pipe.drain(&to, n).await.map_err(Stop::Io)?;
        *total += n as u64;
    }
    let _ = to.shutdown().await;
    Ok(())
}

/// Copies both ways between two streams that are not sockets (an upgraded WebSocket, inside
/// TLS on one side or both), every byte charged to `meter`. Over a budget, the bytes that fit
/// are written and both streams are dropped (closed).
pub async fn metered_streams<C, U>(client: C, upstream: U, meter: &Meter)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let _ = tokio::try_join!(
        metered_one_way(&mut cr, &mut uw, meter, Dir::Up),
        metered_one_way(&mut ur, &mut cw, meter, Dir::Down),
    );
}

async fn metered_one_way<R, W>(
    from: &mut R,
    to: &mut W,
    meter: &Meter,
    dir: Dir,
) -> Result<(), Stop>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; MEDIUM];
    loop {
        let n = from.read(&mut buf).await.map_err(Stop::Io)?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        if let Err(e) = write_charged(to, &buf[..n], Some((meter, dir))).await {
            let _ = to.flush().await;
            return Err(e);
        }
    }
}

/// Writes `bytes` to `to`, charged to the meter first: over a budget only the bytes that fit
/// are written, and the budget is the error.
pub async fn write_charged<W>(
    to: &mut W,
    bytes: &[u8],
    meter: Option<(&Meter, Dir)>,
) -> Result<(), Stop>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let over = match meter.map(|(m, dir)| m.charge(dir, bytes.len() as u64)) {
        Some(Err(x)) => Some(x),
        _ => None,
    };
    let fits = over.as_ref().map_or(bytes.len(), |x| x.allowed as usize);
    to.write_all(&bytes[..fits]).await.map_err(Stop::Io)?;
    over.map_or(Ok(()), |x| Err(Stop::Budget(x)))
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let relay = tokio::spawn(bidirectional(client_side, upstream_side, None));

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

    #[tokio::test]
    async fn an_upstream_reset_resets_the_client_instead_of_hanging() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, server) = pair().await;
        let relay = tokio::spawn(bidirectional(client_side, upstream_side, None));
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        // The client keeps its side open, waiting for a reply; the upstream resets.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        reset(server);
        let mut got = Vec::new();
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_to_end(&mut got),
        )
        .await
        .expect("the client was left hanging");
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
        let (_, err) = relay.await.unwrap();
        assert!(matches!(err, Some(Disconnect::UpstreamReset(_))), "{err:?}");
    }

    #[tokio::test]
    async fn a_budget_cuts_the_upload_at_its_limit_and_resets_both_sides() {
        let policy = crate::policy::Policy::parse(
            "[profile.default]\nallow = [\"a.test:9\"]\n[[profile.default.budget]]\nconnection_bytes_up = 100000\n",
            "t.toml",
        )
        .unwrap();
        let budgets = crate::budget::Budgets::default();
        let name = crate::policy::CanonicalName::parse("a.test").unwrap();
        let meter = budgets
            .admit(&policy, "default", &name)
            .unwrap()
            .expect("a meter");
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut server) = pair().await;
        let relay =
            tokio::spawn(
                async move { bidirectional(client_side, upstream_side, Some(&meter)).await },
            );
        let writer = tokio::spawn(async move {
            let chunk = vec![1u8; 64 * 1024];
            let mut r = Ok(());
            for _ in 0..16 {
                r = client.write_all(&chunk).await;
                if r.is_err() {
                    break;
                }
            }
            let mut sink = Vec::new();
            (r, client.read_to_end(&mut sink).await.map(|_| ()))
        });
        let mut got = Vec::new();
        let read = server.read_to_end(&mut got).await;
        assert_eq!(got.len(), 100_000, "exactly the bytes that fit arrive");
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
        let (t, err) = relay.await.unwrap();
        assert_eq!(t.up, 100_000);
        assert!(matches!(err, Some(Disconnect::OverBudget(_))), "{err:?}");
        let (w, r) = writer.await.unwrap();
        assert!(w.is_err() || r.is_err(), "the client saw the reset");
    }
}
