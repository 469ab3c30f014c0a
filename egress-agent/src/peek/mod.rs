//! Peek stage of the interceptor (DESIGN.md §5 step 2): read the first bytes of a redirected
//! connection, with a timeout and a size cap, and say what they are — a TLS ClientHello, an
//! HTTP/1.x request head, an HTTP/2 prior-knowledge preface, or something opaque.
//!
//! The bytes are consumed, not `MSG_PEEK`ed: the caller replays `buf` upstream once the
//! connection is allowed. The parsers in [`tls`] and [`http`] are pure; only [`peek`] does IO.

pub mod http;
pub mod tls;

use std::time::Duration;

use bytes::BufMut as _;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{timeout_at, Instant};

pub use http::{parse_request_head, HttpPeekError, RequestHead, Target};
pub use tls::{alert, parse_client_hello, AlertDescription, ClientHello, Ech, TlsPeekError};

const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// First buffer allocation: one read holds a typical ClientHello or request head.
const INITIAL_CAPACITY: usize = 4 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeekLimits {
    /// How long to wait for the client's first byte before deciding the protocol is
    /// server-first (SMTP, MySQL, SSH banners...) and therefore opaque.
    pub first_byte_timeout: Duration,
    /// Deadline for the whole peek, so a client trickling bytes (slowloris) cannot hold a
    /// connection and its buffer forever.
    pub total_timeout: Duration,
    /// Largest number of bytes buffered while classifying.
    pub max_bytes: usize,
}

impl Default for PeekLimits {
    fn default() -> Self {
        Self {
            first_byte_timeout: Duration::from_millis(500),
            total_timeout: Duration::from_secs(10),
            max_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peeked {
    Tls(ClientHello),
    Http(RequestHead),
    /// The client sent the HTTP/2 connection preface (h2c with prior knowledge).
    H2PriorKnowledge,
    /// Neither TLS nor HTTP, or nothing sent before `first_byte_timeout`.
    Opaque,
}

#[derive(Debug, Error)]
pub enum PeekError {
    #[error("peek timed out before the client finished its first message")]
    Timeout,
    #[error("client's first message exceeds the peek size cap")]
    TooLarge,
    #[error("client closed the connection before its first message was complete")]
    Eof,
    #[error("reading from the client: {0}")]
    Io(#[source] std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsPeekError),
    #[error(transparent)]
    Http(#[from] HttpPeekError),
}

/// Reads from `stream` into `buf` until the first bytes classify, and returns what they are.
///
/// Bytes already in `buf` count as read. On return (success or error) `buf` holds everything
/// read so far, for the caller to replay upstream; its capacity never exceeds
/// `limits.max_bytes` (or what it already was).
pub async fn peek<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    limits: PeekLimits,
) -> Result<Peeked, PeekError> {
    let start = Instant::now();
    let deadline = start + limits.total_timeout;
    let first_byte_deadline = start + limits.first_byte_timeout.min(limits.total_timeout);
    loop {
        if !buf.is_empty() {
            if let Some(peeked) = classify(buf)? {
                return Ok(peeked);
            }
        }
        let room = limits.max_bytes.saturating_sub(buf.len());
        if room == 0 {
            return Err(PeekError::TooLarge);
        }
        if buf.capacity() == buf.len() {
            // Double from 4 KiB, never past the cap. `read_buf` below only writes into spare
            // capacity once some exists, so this is the only place the buffer grows.
            let target = (buf.capacity() * 2)
                .max(INITIAL_CAPACITY)
                .min(limits.max_bytes);
            // `room > 0` above makes `target > len`.
            buf.reserve_exact(target - buf.len());
        }
        let spare = buf.capacity() - buf.len();
        let waiting_for_first_byte = buf.is_empty();
        let mut window = (&mut *buf).limit(room.min(spare));
        let read = stream.read_buf(&mut window);
        let n = if waiting_for_first_byte {
            // Nothing at all: a server-first protocol. The caller decides on a rule.
            match timeout_at(first_byte_deadline, read).await {
                Ok(r) => r,
                Err(_) => return Ok(Peeked::Opaque),
            }
        } else {
            timeout_at(deadline, read)
                .await
                .map_err(|_| PeekError::Timeout)?
        }
        .map_err(PeekError::Io)?;
        if n == 0 {
            return Err(PeekError::Eof);
        }
    }
}

/// Decides from the bytes read so far: `Ok(None)` means read more.
fn classify(buf: &[u8]) -> Result<Option<Peeked>, PeekError> {
    if buf.first() == Some(&TLS_HANDSHAKE_RECORD) {
        return match parse_client_hello(buf) {
            Ok(hello) => Ok(Some(Peeked::Tls(hello))),
            Err(TlsPeekError::Incomplete) => Ok(None),
            // 0x16 followed by something that is not a TLS record header.
            Err(TlsPeekError::NotTls) => Ok(Some(Peeked::Opaque)),
            Err(TlsPeekError::TooLarge) => Err(PeekError::TooLarge),
            Err(e @ TlsPeekError::Invalid(_)) => Err(e.into()),
        };
    }
    match http::looks_like_http(buf) {
        None => return Ok(None),
        Some(false) => return Ok(Some(Peeked::Opaque)),
        Some(true) => {}
    }
    if buf.starts_with(b"PRI ") {
        match http::h2_prior_knowledge(buf) {
            None => return Ok(None),
            Some(true) => return Ok(Some(Peeked::H2PriorKnowledge)),
            // Falls through to the HTTP/1 parser, which rejects it.
            Some(false) => {}
        }
    }
    match parse_request_head(buf) {
        Ok(head) => Ok(Some(Peeked::Http(head))),
        Err(HttpPeekError::Incomplete) => Ok(None),
        Err(HttpPeekError::TooLarge) => Err(PeekError::TooLarge),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::tls::tests::{alpn_ext, hello_msg, records, rustls_hello, sni_ext, typical_hello};
    use super::*;
    use tokio::io::{duplex, AsyncWriteExt, DuplexStream};
    use tokio::time::sleep;

    fn limits(first_ms: u64, total_ms: u64, max_bytes: usize) -> PeekLimits {
        PeekLimits {
            first_byte_timeout: Duration::from_millis(first_ms),
            total_timeout: Duration::from_millis(total_ms),
            max_bytes,
        }
    }

    /// Writes `data` in `chunk`-byte writes with `delay` between them, then keeps the stream
    /// open until the reader is gone (so the reader never sees EOF unless it is expected).
    fn trickle(
        mut w: DuplexStream,
        data: Vec<u8>,
        chunk: usize,
        delay: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            for c in data.chunks(chunk) {
                if w.write_all(c).await.is_err() {
                    return;
                }
                if !delay.is_zero() {
                    sleep(delay).await;
                }
            }
            // Hold the write side open until the reader drops its end.
            let _ = w.write_all(&[]).await;
            std::future::pending::<()>().await;
        })
    }

    #[test]
    fn default_limits() {
        let l = PeekLimits::default();
        assert_eq!(l.first_byte_timeout, Duration::from_millis(500));
        assert_eq!(l.total_timeout, Duration::from_secs(10));
        assert_eq!(l.max_bytes, 64 * 1024);
    }

    #[tokio::test]
    async fn client_hello_over_many_delayed_writes() {
        let hello = rustls_hello("many.example.com", &[b"h2"]);
        let (mut r, w) = duplex(1024);
        let task = trickle(w, hello.clone(), 7, Duration::from_millis(2));
        let mut buf = Vec::new();
        let peeked = peek(&mut r, &mut buf, PeekLimits::default()).await.unwrap();
        let Peeked::Tls(ch) = peeked else {
            panic!("{peeked:?}")
        };
        assert_eq!(ch.sni.as_deref(), Some("many.example.com"));
        assert_eq!(buf, hello);
        assert_eq!(ch.consumed, buf.len());
        assert!(buf.capacity() <= 2 * INITIAL_CAPACITY);
        task.abort();
    }

    #[tokio::test]
    async fn client_hello_in_one_byte_records_and_one_byte_writes() {
        let msg = hello_msg(Some(&[sni_ext(&[b"tiny.example"]), alpn_ext(&[b"h2"])]));
        let data = records(&msg, 1);
        let (mut r, w) = duplex(64);
        let task = trickle(w, data.clone(), 1, Duration::ZERO);
        let mut buf = Vec::new();
        let peeked = peek(&mut r, &mut buf, PeekLimits::default()).await.unwrap();
        assert!(matches!(peeked, Peeked::Tls(ref ch) if ch.sni.as_deref() == Some("tiny.example")));
        assert_eq!(buf, data);
        task.abort();
    }

    #[tokio::test]
    async fn http_head_split() {
        let head = b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec();
        let (mut r, w) = duplex(1024);
        let task = trickle(w, head.clone(), 3, Duration::from_millis(1));
        let mut buf = Vec::new();
        let peeked = peek(&mut r, &mut buf, PeekLimits::default()).await.unwrap();
        assert!(matches!(peeked, Peeked::Http(ref h) if h.host.as_deref() == Some("example.com")));
        assert_eq!(buf, head);
        task.abort();
    }

    #[tokio::test]
    async fn h2_prior_knowledge_split() {
        let mut data = http::H2_PREFACE.to_vec();
        data.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let (mut r, w) = duplex(1024);
        let task = trickle(w, data, 5, Duration::from_millis(1));
        let mut buf = Vec::new();
        assert_eq!(
            peek(&mut r, &mut buf, PeekLimits::default()).await.unwrap(),
            Peeked::H2PriorKnowledge
        );
        task.abort();
    }

    #[tokio::test]
    async fn connect_request() {
        let (mut r, mut w) = duplex(1024);
        w.write_all(b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let Peeked::Http(h) = peek(&mut r, &mut buf, PeekLimits::default()).await.unwrap() else {
            panic!()
        };
        assert_eq!(h.target, Target::Authority("api.example.com:443".into()));
    }

    #[tokio::test]
    async fn opaque_client_first() {
        let (mut r, mut w) = duplex(1024);
        w.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await.unwrap();
        let mut buf = Vec::new();
        assert_eq!(
            peek(&mut r, &mut buf, PeekLimits::default()).await.unwrap(),
            Peeked::Opaque
        );
        assert_eq!(buf, b"SSH-2.0-OpenSSH_9.6\r\n");
        // 0x16 followed by something that is not a record header is opaque too.
        let (mut r, mut w) = duplex(1024);
        w.write_all(b"\x16\x00junk").await.unwrap();
        let mut buf = Vec::new();
        assert_eq!(
            peek(&mut r, &mut buf, PeekLimits::default()).await.unwrap(),
            Peeked::Opaque
        );
    }

    #[tokio::test]
    async fn server_first_is_opaque_after_first_byte_timeout() {
        let (mut r, _w) = duplex(1024);
        let mut buf = Vec::new();
        let started = std::time::Instant::now();
        let peeked = peek(&mut r, &mut buf, limits(50, 5_000, 64 * 1024))
            .await
            .unwrap();
        let elapsed = started.elapsed();
        assert_eq!(peeked, Peeked::Opaque);
        assert!(buf.is_empty());
        assert!(
            elapsed >= Duration::from_millis(50) && elapsed < Duration::from_secs(2),
            "{elapsed:?}"
        );
    }

    #[tokio::test]
    async fn slowloris_http_times_out() {
        let (mut r, w) = duplex(1024);
        let task = trickle(
            w,
            b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec(),
            1,
            Duration::from_millis(100),
        );
        let mut buf = Vec::new();
        let started = std::time::Instant::now();
        let err = peek(&mut r, &mut buf, limits(500, 350, 64 * 1024))
            .await
            .unwrap_err();
        assert!(matches!(err, PeekError::Timeout), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!buf.is_empty() && buf.len() <= 5, "{}", buf.len());
        task.abort();
    }

    #[tokio::test]
    async fn slowloris_tls_times_out() {
        let (mut r, w) = duplex(1024);
        let task = trickle(
            w,
            typical_hello("slow.example"),
            1,
            Duration::from_millis(100),
        );
        let mut buf = Vec::new();
        let err = peek(&mut r, &mut buf, limits(500, 350, 64 * 1024))
            .await
            .unwrap_err();
        assert!(matches!(err, PeekError::Timeout), "{err:?}");
        task.abort();
    }

    #[tokio::test]
    async fn huge_header_is_too_large_with_bounded_memory() {
        let mut data = b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Big: ".to_vec();
        data.resize(1 << 20, b'x');
        let (mut r, w) = duplex(64 * 1024);
        let task = trickle(w, data, 16 * 1024, Duration::ZERO);
        let mut buf = Vec::new();
        let l = PeekLimits::default();
        let err = peek(&mut r, &mut buf, l).await.unwrap_err();
        assert!(matches!(err, PeekError::TooLarge), "{err:?}");
        assert!(buf.capacity() <= l.max_bytes, "capacity {}", buf.capacity());
        assert_eq!(buf.len(), l.max_bytes);
        task.abort();
    }

    #[tokio::test]
    async fn smaller_cap_applies_to_tls() {
        // A plausible 20 KiB ClientHello (big padding extension) under an 8 KiB cap.
        let msg = hello_msg(Some(&[
            sni_ext(&[b"big.example"]),
            super::tls::tests::ext(21, &[0; 20_000]),
        ]));
        let (mut r, w) = duplex(64 * 1024);
        let task = trickle(w, records(&msg, 16384), 4096, Duration::ZERO);
        let mut buf = Vec::new();
        let err = peek(&mut r, &mut buf, limits(500, 5_000, 8 * 1024))
            .await
            .unwrap_err();
        assert!(matches!(err, PeekError::TooLarge), "{err:?}");
        assert!(buf.capacity() <= 8 * 1024);
        task.abort();
    }

    #[tokio::test]
    async fn cap_below_initial_capacity() {
        let (mut r, mut w) = duplex(1024);
        w.write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let err = peek(&mut r, &mut buf, limits(500, 5_000, 20))
            .await
            .unwrap_err();
        assert!(matches!(err, PeekError::TooLarge), "{err:?}");
        assert_eq!((buf.len(), buf.capacity()), (20, 20));
        let mut buf = Vec::new();
        let err = peek(&mut r, &mut buf, limits(500, 5_000, 0))
            .await
            .unwrap_err();
        assert!(matches!(err, PeekError::TooLarge), "{err:?}");
    }

    #[tokio::test]
    async fn eof_before_complete() {
        let (mut r, mut w) = duplex(1024);
        w.write_all(b"GET / HT").await.unwrap();
        drop(w);
        let mut buf = Vec::new();
        assert!(matches!(
            peek(&mut r, &mut buf, PeekLimits::default()).await,
            Err(PeekError::Eof)
        ));
        assert_eq!(buf, b"GET / HT");
        // Immediately closed, nothing sent.
        let (mut r, w) = duplex(1024);
        drop(w);
        let mut buf = Vec::new();
        assert!(matches!(
            peek(&mut r, &mut buf, PeekLimits::default()).await,
            Err(PeekError::Eof)
        ));
    }

    #[tokio::test]
    async fn parser_errors_surface() {
        let (mut r, mut w) = duplex(1024);
        w.write_all(b"GET http://evil.example/ HTTP/1.1\r\nHost: allowed.example\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let err = peek(&mut r, &mut buf, PeekLimits::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, PeekError::Http(HttpPeekError::HostMismatch { .. })),
            "{err:?}"
        );

        let (mut r, mut w) = duplex(1024);
        let buf2 = records(
            &hello_msg(Some(&[sni_ext(&[b"a.example", b"b.example"])])),
            16384,
        );
        w.write_all(&buf2).await.unwrap();
        let mut buf = Vec::new();
        let err = peek(&mut r, &mut buf, PeekLimits::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, PeekError::Tls(TlsPeekError::Invalid(_))),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "invalid client hello: more than one host_name"
        );
    }

    #[tokio::test]
    async fn prefilled_buffer_counts() {
        let (mut r, _w) = duplex(1024);
        let mut buf = b"GET / HTTP/1.0\r\n\r\n".to_vec();
        let peeked = peek(&mut r, &mut buf, PeekLimits::default()).await.unwrap();
        assert!(matches!(peeked, Peeked::Http(ref h) if h.version == 0));
    }

    // ---- no panics on hostile input ------------------------------------------------------------

    /// xorshift64*: deterministic, dependency-free.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
        fn byte(&mut self) -> u8 {
            self.next() as u8
        }
    }

    /// Random bytes, or a valid input with random damage: flips, truncation, insertion,
    /// duplicated ranges, and "interesting" values (0x00, 0xff) over length fields.
    fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
        if rng.below(4) == 0 {
            let len = rng.below(600);
            return (0..len).map(|_| rng.byte()).collect();
        }
        let mut v = seeds[rng.below(seeds.len())].clone();
        for _ in 0..=rng.below(4) {
            if v.is_empty() {
                break;
            }
            let i = rng.below(v.len());
            match rng.below(6) {
                0 => v[i] = rng.byte(),
                1 => v[i] = [0x00, 0xff, 0x7f, 0x80, 0x01][rng.below(5)],
                2 => v.truncate(i),
                3 => v.insert(i, rng.byte()),
                4 => {
                    let j = (i + rng.below(16)).min(v.len());
                    let dup = v[i..j].to_vec();
                    v.splice(i..i, dup);
                }
                _ => {
                    v.remove(i);
                }
            }
        }
        v
    }

    #[test]
    fn ten_thousand_hostile_inputs_never_panic() {
        let seeds = vec![
            typical_hello("example.com"),
            rustls_hello("fuzz.example.org", &[b"h2", b"http/1.1"]),
            records(&hello_msg(Some(&[sni_ext(&[b"a.example"]), alpn_ext(&[b"h2"])])), 3),
            b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nUpgrade: h2c\r\n\r\n".to_vec(),
            http::H2_PREFACE.to_vec(),
        ];
        let mut rng = Rng(0x5eed_1234_abcd_ef01);
        let mut counts = [0usize; 4];
        for _ in 0..10_000 {
            let input = mutate(&mut rng, &seeds);
            // The same invariants the fuzz targets assert (fuzz/fuzz_targets/).
            match parse_client_hello(&input) {
                Ok(ch) => {
                    let again = parse_client_hello(&input[..ch.consumed]).unwrap();
                    assert_eq!(again.sni, ch.sni);
                }
                Err(TlsPeekError::Incomplete) => {
                    let half = parse_client_hello(&input[..input.len() / 2]);
                    assert_eq!(half, Err(TlsPeekError::Incomplete), "{input:?}");
                }
                Err(_) => {}
            }
            match parse_request_head(&input) {
                Ok(head) => assert_eq!(parse_request_head(&input[..head.head_len]), Ok(head)),
                Err(HttpPeekError::Incomplete) => assert!(input.len() < http::MAX_HEAD_LEN),
                Err(_) => {}
            }
            let _ = http::looks_like_http(&input);
            match classify(&input) {
                Ok(Some(Peeked::Opaque)) => counts[0] += 1,
                Ok(Some(_)) => counts[1] += 1,
                Ok(None) => counts[2] += 1,
                Err(PeekError::Tls(_) | PeekError::Http(_) | PeekError::TooLarge) => counts[3] += 1,
                Err(e) => panic!("classify cannot fail with {e:?}"),
            }
        }
        // The mutations reach every outcome, so the loop is not testing only one path.
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    }

    #[test]
    fn random_garbage_is_opaque_or_rejected() {
        let mut rng = Rng(42);
        for _ in 0..10_000 {
            let len = 1 + rng.below(300);
            let input: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            match classify(&input) {
                Ok(Some(Peeked::Opaque) | None) | Err(PeekError::Tls(TlsPeekError::Invalid(_))) => {
                }
                other => panic!("{input:?}: {other:?}"),
            }
        }
    }
}
