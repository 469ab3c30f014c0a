//! Below the copy loop: a direction that has turned into bulk moves its bytes socket → pipe →
//! socket with splice(2), as HAProxy does (`option splice-auto`). The kernel hands page
//! references from one socket to the other, so the two copies through user space (and the
//! direction's 256 KiB buffer) are gone. Small exchanges never get here: a pipe costs two
//! descriptors and two syscalls per transfer, which only pays off on large reads.

use std::{
    io,
    os::fd::OwnedFd,
    sync::atomic::{AtomicUsize, Ordering},
};

use rustix::pipe::{fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::{
    io::Interest,
    net::tcp::{ReadHalf, WriteHalf},
};

/// Pipes open at once, agent-wide. Each holds two descriptors taken from the reserve the
/// connection cap leaves ([`crate::interceptor::connection_cap`]); beyond this, bulk
/// directions copy through their buffer as before.
const MAX_PIPES: usize = 64;
/// Asked for with F_SETPIPE_SZ (the default is 64 KiB): as much per splice as the copy
/// loop's largest buffer reads.
const PIPE_SIZE: usize = 256 * 1024;

static OPEN: AtomicUsize = AtomicUsize::new(0);

pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
}

impl Pipe {
    /// A new pipe, unless [`MAX_PIPES`] are open or the kernel refuses one.
    pub fn new() -> Option<Pipe> {
        if OPEN.fetch_add(1, Ordering::Relaxed) >= MAX_PIPES {
            OPEN.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let Ok((read, write)) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK) else {
            OPEN.fetch_sub(1, Ordering::Relaxed);
            return None;
        };
        // The kernel rounds up to pages; a smaller limit (pipe-max-size) leaves the default.
        let size = fcntl_setpipe_size(&write, PIPE_SIZE).unwrap_or(64 * 1024);
        Some(Pipe { read, write, size })
    }

    /// Moves what `from` has (at most a pipe's worth) into the empty pipe: the byte count,
    /// 0 at EOF.
    pub async fn fill(&self, from: &ReadHalf<'_>) -> io::Result<usize> {
        let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
        loop {
            from.readable().await?;
            // EAGAIN can only be the socket's (the pipe is empty): readiness is cleared and
            // the next readable() waits in epoll.
            let socket = from.as_ref();
            match socket.try_io(Interest::READABLE, || {
                Ok(splice(socket, None, &self.write, None, self.size, flags)?)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    /// Moves the `n` bytes in the pipe into `to`.
    pub async fn drain(&self, to: &WriteHalf<'_>, mut n: usize) -> io::Result<()> {
        let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
        while n > 0 {
            to.writable().await?;
            let socket = to.as_ref();
            match socket.try_io(Interest::WRITABLE, || {
                Ok(splice(&self.read, None, socket, None, n, flags)?)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => n -= k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    use super::Pipe;

    /// A connected pair: the connecting side and the accepted side.
    async fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
        let (c, a) = tokio::join!(TcpStream::connect(l.local_addr().unwrap()), l.accept());
        (c.unwrap(), a.unwrap().0)
    }

    /// 8 MiB through a pipe between two socket pairs arrive whole and in order, then EOF.
    #[tokio::test]
    async fn moves_a_stream_between_sockets_and_sees_eof() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut src, mut a) = pair(&l).await;
        let (mut b, mut dst) = pair(&l).await;
        let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            src.write_all(&sent).await.unwrap();
            src.shutdown().await.unwrap();
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            dst.read_to_end(&mut got).await.unwrap();
            got
        });
        let pipe = Pipe::new().expect("a pipe");
        {
            let (from, _) = a.split();
            let (_, to) = b.split();
            loop {
                let n = pipe.fill(&from).await.unwrap();
                if n == 0 {
                    break;
                }
                pipe.drain(&to, n).await.unwrap();
            }
        }
        b.shutdown().await.unwrap();
        writer.await.unwrap();
        assert!(
            reader.await.unwrap() == data,
            "the bytes arrived whole, in order"
        );
    }
}
