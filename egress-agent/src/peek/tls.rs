//! TLS ClientHello reader: reassembles the first handshake message from the records the client
//! sent so far and extracts what the policy needs (SNI, ALPN, ECH, supported versions).
//!
//! Check-then-parse (mini-redis style): [`TlsPeekError::Incomplete`] means "read more and call
//! again", every other error closes this connection only. The input is hostile: every length is
//! checked before it is used, nothing is indexed without a bound check, and nothing panics.

use std::collections::HashSet;

use thiserror::Error;

/// Largest ClientHello (handshake body plus its 4-byte header) we are willing to buffer.
/// Real ones are well under 2 KiB, 8 KiB with large post-quantum key shares.
pub const MAX_HANDSHAKE_LEN: usize = 64 * 1024;

/// RFC 8446 §5.2 allows 2^14 + 256 for ciphertext and RFC 5246 2^14 + 2048; a ClientHello is
/// plaintext, but we accept the loosest bound any version allows.
const MAX_RECORD_LEN: usize = (1 << 14) + 2048;
const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const CONTENT_TYPE_ALERT: u8 = 21;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;

const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
/// RFC 9849 (draft-ietf-tls-esni-13 and later).
const EXT_ECH: u16 = 0xfe0d;
/// Earlier ECH drafts (-08 .. -12) used 0xfe08 ..= 0xfe0c; draft ESNI used 0xffce.
const EXT_ECH_DRAFTS: std::ops::RangeInclusive<u16> = 0xfe08..=0xfe0c;
const EXT_ESNI: u16 = 0xffce;

const SERVER_NAME_HOST_NAME: u8 = 0;
const TLS13: u16 = 0x0304;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TlsPeekError {
    /// Not an error: the ClientHello is not complete yet, read more bytes and call again.
    #[error("incomplete client hello, need more bytes")]
    Incomplete,
    /// The bytes do not start a TLS handshake (treat the stream as something else).
    #[error("not a tls handshake")]
    NotTls,
    #[error("invalid client hello: {0}")]
    Invalid(&'static str),
    #[error("client hello larger than {MAX_HANDSHAKE_LEN} bytes")]
    TooLarge,
}

/// What the client offered for Encrypted Client Hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ech {
    /// `encrypted_client_hello` (0xfe0d) of type outer: real ECH or GREASE, indistinguishable
    /// on the wire. The SNI is then the public name, not the real destination.
    Outer,
    /// `encrypted_client_hello` of type inner: should only ever appear encrypted.
    Inner,
    /// An extension code point of a pre-RFC ECH draft or of ESNI; the value is the code point.
    Draft(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// `legacy_version` of the ClientHello body (0x0303 for TLS 1.2 and 1.3).
    pub legacy_version: u16,
    /// The single `host_name` of the server_name extension, raw (not canonicalised).
    pub sni: Option<String>,
    /// ALPN protocol names in the client's order of preference (opaque bytes per RFC 7301).
    pub alpn: Vec<Vec<u8>>,
    pub ech: Option<Ech>,
    /// The supported_versions extension, empty when absent.
    pub supported_versions: Vec<u16>,
    /// Bytes of the input that belong to the records carrying the ClientHello.
    pub consumed: usize,
}

impl ClientHello {
    /// TLS 1.3 is offered only through supported_versions (RFC 8446 §4.2.1).
    pub fn offers_tls13(&self) -> bool {
        self.supported_versions.contains(&TLS13)
    }

    pub fn offers_alpn(&self, proto: &[u8]) -> bool {
        self.alpn.iter().any(|p| p == proto)
    }

    pub fn offers_ech(&self) -> bool {
        self.ech.is_some()
    }
}

/// Alerts the agent sends when it refuses a TLS connection it does not intercept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AlertDescription {
    HandshakeFailure = 40,
    AccessDenied = 49,
    InternalError = 80,
    UnrecognizedName = 112,
}

/// A complete fatal alert record. Version 0x0303 is what TLS 1.3 also uses on the record layer.
pub fn alert(desc: AlertDescription) -> [u8; 7] {
    const FATAL: u8 = 2;
    [
        CONTENT_TYPE_ALERT,
        0x03,
        0x03,
        0x00,
        0x02,
        FATAL,
        desc as u8,
    ]
}

/// Parses the ClientHello at the start of `buf` (everything the client sent so far).
pub fn parse_client_hello(buf: &[u8]) -> Result<ClientHello, TlsPeekError> {
    let (handshake, consumed) = reassemble(buf)?;
    let mut hello = parse_handshake(&handshake)?;
    hello.consumed = consumed;
    Ok(hello)
}

/// Concatenates the payloads of handshake records until the first handshake message is complete.
/// Returns the message (header included) and the number of bytes of `buf` its records span.
fn reassemble(buf: &[u8]) -> Result<(Vec<u8>, usize), TlsPeekError> {
    let mut handshake: Vec<u8> = Vec::new();
    let mut pos = 0usize;
    loop {
        let rest = buf.get(pos..).unwrap_or_default();
        let first = pos == 0;
        // A bad header on the first record means "this is not TLS"; on a later one it means a
        // broken or hostile TLS client. Each byte is checked as soon as it is there, so junk
        // is rejected without waiting for a full header.
        let bad = |why| {
            if first {
                TlsPeekError::NotTls
            } else {
                TlsPeekError::Invalid(why)
            }
        };
        match rest.first() {
            None => return Err(TlsPeekError::Incomplete),
            Some(&CONTENT_TYPE_HANDSHAKE) => {}
            Some(_) => {
                return Err(bad(
                    "non-handshake record before the end of the client hello",
                ))
            }
        }
        if rest.get(1).is_some_and(|&major| major != 3)
            || rest.get(2).is_some_and(|&minor| minor > 4)
        {
            return Err(bad("bad record version"));
        }
        let Some(&[_, _, _, len_hi, len_lo]) = rest.get(..RECORD_HEADER_LEN) else {
            return Err(TlsPeekError::Incomplete);
        };
        let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
        if len > MAX_RECORD_LEN {
            return Err(bad("record too long"));
        }
        if len == 0 {
            // RFC 8446 §5.1: zero-length handshake fragments MUST NOT be sent.
            return Err(bad("empty handshake record"));
        }
        let body = rest.get(RECORD_HEADER_LEN..).unwrap_or_default();
        let Some(payload) = body.get(..len) else {
            // Look at the partial payload too, so that a wrong message type or an oversized
            // length fails now rather than after the client has sent the rest.
            handshake.extend_from_slice(body);
            handshake_len(&handshake)?;
            return Err(TlsPeekError::Incomplete);
        };
        handshake.extend_from_slice(payload);
        pos += RECORD_HEADER_LEN + len;
        if let Some(total) = handshake_len(&handshake)? {
            match handshake.len().cmp(&total) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => return Ok((handshake, pos)),
                // A client sends nothing else until the server answers; a second message
                // packed behind the hello is not something a server would accept either.
                std::cmp::Ordering::Greater => {
                    return Err(TlsPeekError::Invalid(
                        "trailing data after the client hello",
                    ))
                }
            }
        }
    }
}

/// Checks the handshake header as far as it is present; returns the full message length once
/// the 4-byte header is known.
fn handshake_len(handshake: &[u8]) -> Result<Option<usize>, TlsPeekError> {
    if handshake
        .first()
        .is_some_and(|&t| t != HANDSHAKE_CLIENT_HELLO)
    {
        return Err(TlsPeekError::Invalid(
            "first handshake message is not a client hello",
        ));
    }
    let Some(&[_, a, b, c]) = handshake.get(..HANDSHAKE_HEADER_LEN) else {
        return Ok(None);
    };
    let len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
    let total = HANDSHAKE_HEADER_LEN + len;
    if total > MAX_HANDSHAKE_LEN {
        return Err(TlsPeekError::TooLarge);
    }
    Ok(Some(total))
}

/// RFC 8446 §4.1.2 (and RFC 5246 §7.4.1.2, where extensions may be absent altogether).
fn parse_handshake(handshake: &[u8]) -> Result<ClientHello, TlsPeekError> {
    let mut r = Reader::new(handshake.get(HANDSHAKE_HEADER_LEN..).unwrap_or_default());
    let legacy_version = r.u16("truncated legacy_version")?;
    if legacy_version >> 8 != 3 {
        return Err(TlsPeekError::Invalid("bad client hello version"));
    }
    r.take(32, "truncated random")?;
    let session_id = r.vec_u8("truncated session_id")?;
    if session_id.len() > 32 {
        return Err(TlsPeekError::Invalid("session_id longer than 32 bytes"));
    }
    let suites = r.vec_u16("truncated cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(TlsPeekError::Invalid("bad cipher_suites length"));
    }
    let compression = r.vec_u8("truncated compression_methods")?;
    if compression.is_empty() {
        return Err(TlsPeekError::Invalid("empty compression_methods"));
    }

    let mut hello = ClientHello {
        legacy_version,
        sni: None,
        alpn: Vec::new(),
        ech: None,
        supported_versions: Vec::new(),
        consumed: 0,
    };
    if r.is_empty() {
        return Ok(hello);
    }
    let mut extensions = r.vec_u16("truncated extensions")?;
    r.finish("trailing bytes after extensions")?;

    let mut seen = HashSet::new();
    while !extensions.is_empty() {
        let ty = extensions.u16("truncated extension type")?;
        let data = extensions.vec_u16("truncated extension data")?;
        if !seen.insert(ty) {
            return Err(TlsPeekError::Invalid("duplicate extension"));
        }
        match ty {
            EXT_SERVER_NAME => hello.sni = Some(parse_server_name(data)?),
            EXT_ALPN => hello.alpn = parse_alpn(data)?,
            EXT_SUPPORTED_VERSIONS => hello.supported_versions = parse_supported_versions(data)?,
            EXT_ECH => hello.ech = Some(parse_ech(data)?),
            t if EXT_ECH_DRAFTS.contains(&t) || t == EXT_ESNI => {
                // The RFC code point wins if both are present.
                hello.ech.get_or_insert(Ech::Draft(t));
            }
            _ => {}
        }
    }
    Ok(hello)
}

/// RFC 6066 §3. Strict where servers differ: only host_name entries, exactly one of them, so
/// that no server can pick a name the agent did not see.
fn parse_server_name(mut data: Reader<'_>) -> Result<String, TlsPeekError> {
    let mut list = data.vec_u16("truncated server_name list")?;
    data.finish("trailing bytes after server_name list")?;
    if list.is_empty() {
        return Err(TlsPeekError::Invalid("empty server_name list"));
    }
    let mut name = None;
    while !list.is_empty() {
        if list.u8("truncated server_name type")? != SERVER_NAME_HOST_NAME {
            return Err(TlsPeekError::Invalid("unknown server_name type"));
        }
        let host = list.vec_u16("truncated host_name")?.rest();
        if name.is_some() {
            return Err(TlsPeekError::Invalid("more than one host_name"));
        }
        if host.is_empty() {
            return Err(TlsPeekError::Invalid("empty host_name"));
        }
        if host.contains(&0) {
            return Err(TlsPeekError::Invalid("NUL in host_name"));
        }
        let host = std::str::from_utf8(host)
            .map_err(|_| TlsPeekError::Invalid("host_name is not utf-8"))?;
        name = Some(host.to_owned());
    }
    name.ok_or(TlsPeekError::Invalid("empty server_name list"))
}

/// RFC 7301 §3.1.
fn parse_alpn(mut data: Reader<'_>) -> Result<Vec<Vec<u8>>, TlsPeekError> {
    let mut list = data.vec_u16("truncated alpn list")?;
    data.finish("trailing bytes after alpn list")?;
    if list.is_empty() {
        return Err(TlsPeekError::Invalid("empty alpn list"));
    }
    let mut protocols = Vec::new();
    while !list.is_empty() {
        let proto = list.vec_u8("truncated alpn protocol")?.rest();
        if proto.is_empty() {
            return Err(TlsPeekError::Invalid("empty alpn protocol"));
        }
        protocols.push(proto.to_vec());
    }
    Ok(protocols)
}

/// RFC 8446 §4.2.1, ClientHello form.
fn parse_supported_versions(mut data: Reader<'_>) -> Result<Vec<u16>, TlsPeekError> {
    let mut list = data.vec_u8("truncated supported_versions")?;
    data.finish("trailing bytes after supported_versions")?;
    if list.is_empty() || list.len() % 2 != 0 {
        return Err(TlsPeekError::Invalid("bad supported_versions length"));
    }
    let mut versions = Vec::with_capacity(list.len() / 2);
    while !list.is_empty() {
        versions.push(list.u16("truncated supported_versions")?);
    }
    Ok(versions)
}

/// RFC 9849 §5: `ECHClientHello`.
fn parse_ech(mut data: Reader<'_>) -> Result<Ech, TlsPeekError> {
    match data.u8("empty encrypted_client_hello")? {
        0 => {
            data.take(4, "truncated ech cipher_suite")?;
            data.u8("truncated ech config_id")?;
            data.vec_u16("truncated ech enc")?;
            if data.vec_u16("truncated ech payload")?.is_empty() {
                return Err(TlsPeekError::Invalid("empty ech payload"));
            }
            data.finish("trailing bytes after ech")?;
            Ok(Ech::Outer)
        }
        1 => {
            data.finish("trailing bytes after inner ech")?;
            Ok(Ech::Inner)
        }
        _ => Err(TlsPeekError::Invalid("unknown ech type")),
    }
}

/// Bounds-checked cursor over a complete handshake message: running short here is `Invalid`
/// (the whole message is already there), never `Incomplete`.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn len(&self) -> usize {
        self.buf.len()
    }

    fn rest(self) -> &'a [u8] {
        self.buf
    }

    fn finish(&self, why: &'static str) -> Result<(), TlsPeekError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(TlsPeekError::Invalid(why))
        }
    }

    fn take(&mut self, n: usize, why: &'static str) -> Result<&'a [u8], TlsPeekError> {
        let (head, tail) = self
            .buf
            .split_at_checked(n)
            .ok_or(TlsPeekError::Invalid(why))?;
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self, why: &'static str) -> Result<u8, TlsPeekError> {
        match self.take(1, why)? {
            &[b] => Ok(b),
            _ => Err(TlsPeekError::Invalid(why)),
        }
    }

    fn u16(&mut self, why: &'static str) -> Result<u16, TlsPeekError> {
        match self.take(2, why)? {
            &[a, b] => Ok(u16::from_be_bytes([a, b])),
            _ => Err(TlsPeekError::Invalid(why)),
        }
    }

    /// A vector with a one-byte length prefix.
    fn vec_u8(&mut self, why: &'static str) -> Result<Reader<'a>, TlsPeekError> {
        let n = usize::from(self.u8(why)?);
        Ok(Reader::new(self.take(n, why)?))
    }

    /// A vector with a two-byte length prefix.
    fn vec_u16(&mut self, why: &'static str) -> Result<Reader<'a>, TlsPeekError> {
        let n = usize::from(self.u16(why)?);
        Ok(Reader::new(self.take(n, why)?))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    // ---- a small ClientHello builder -------------------------------------------------------

    fn u16be(v: usize) -> [u8; 2] {
        u16::try_from(v)
            .expect("test length fits u16")
            .to_be_bytes()
    }

    pub(crate) fn ext(ty: u16, data: &[u8]) -> Vec<u8> {
        let mut out = ty.to_be_bytes().to_vec();
        out.extend_from_slice(&u16be(data.len()));
        out.extend_from_slice(data);
        out
    }

    pub(crate) fn sni_ext(names: &[&[u8]]) -> Vec<u8> {
        let mut list = Vec::new();
        for n in names {
            list.push(SERVER_NAME_HOST_NAME);
            list.extend_from_slice(&u16be(n.len()));
            list.extend_from_slice(n);
        }
        let mut data = u16be(list.len()).to_vec();
        data.extend_from_slice(&list);
        ext(EXT_SERVER_NAME, &data)
    }

    pub(crate) fn alpn_ext(protos: &[&[u8]]) -> Vec<u8> {
        let mut list = Vec::new();
        for p in protos {
            list.push(u8::try_from(p.len()).unwrap());
            list.extend_from_slice(p);
        }
        let mut data = u16be(list.len()).to_vec();
        data.extend_from_slice(&list);
        ext(EXT_ALPN, &data)
    }

    pub(crate) fn versions_ext(versions: &[u16]) -> Vec<u8> {
        let mut data = vec![u8::try_from(versions.len() * 2).unwrap()];
        for v in versions {
            data.extend_from_slice(&v.to_be_bytes());
        }
        ext(EXT_SUPPORTED_VERSIONS, &data)
    }

    pub(crate) fn ech_outer_ext() -> Vec<u8> {
        let mut data = vec![0, 0x00, 0x01, 0x00, 0x01, 0x42];
        data.extend_from_slice(&u16be(32));
        data.extend_from_slice(&[0xaa; 32]);
        data.extend_from_slice(&u16be(144));
        data.extend_from_slice(&[0xbb; 144]);
        ext(EXT_ECH, &data)
    }

    /// The handshake message (header included) for the given extension blocks;
    /// `None` omits the extensions field entirely (pre-TLS 1.2 style).
    pub(crate) fn hello_msg(exts: Option<&[Vec<u8>]>) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0x11; 32]);
        body.push(32);
        body.extend_from_slice(&[0x22; 32]);
        body.extend_from_slice(&[0x00, 0x04, 0x13, 0x01, 0xc0, 0x2f]);
        body.extend_from_slice(&[0x01, 0x00]);
        if let Some(exts) = exts {
            let all: Vec<u8> = exts.concat();
            body.extend_from_slice(&u16be(all.len()));
            body.extend_from_slice(&all);
        }
        let mut msg = vec![HANDSHAKE_CLIENT_HELLO];
        msg.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    /// Wraps a handshake message in records of at most `size` payload bytes.
    pub(crate) fn records(msg: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in msg.chunks(size) {
            out.extend_from_slice(&[CONTENT_TYPE_HANDSHAKE, 0x03, 0x01]);
            out.extend_from_slice(&u16be(chunk.len()));
            out.extend_from_slice(chunk);
        }
        out
    }

    pub(crate) fn typical_hello(sni: &str) -> Vec<u8> {
        records(
            &hello_msg(Some(&[
                sni_ext(&[sni.as_bytes()]),
                alpn_ext(&[b"h2", b"http/1.1"]),
                versions_ext(&[0x0304, 0x0303]),
                ext(10, &[0x00, 0x02, 0x00, 0x1d]),
            ])),
            16384,
        )
    }

    /// A ClientHello produced by a real TLS client (rustls) for `sni`.
    pub(crate) fn rustls_hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
        use std::sync::Arc;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    fn invalid(buf: &[u8]) -> &'static str {
        match parse_client_hello(buf) {
            Err(TlsPeekError::Invalid(why)) => why,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    // ---- happy paths -------------------------------------------------------------------------

    #[test]
    fn typical_hello_is_parsed() {
        let buf = typical_hello("example.com");
        let ch = parse_client_hello(&buf).unwrap();
        assert_eq!(ch.sni.as_deref(), Some("example.com"));
        assert_eq!(ch.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(ch.offers_alpn(b"h2") && ch.offers_alpn(b"http/1.1") && !ch.offers_alpn(b"h3"));
        assert!(ch.offers_tls13());
        assert_eq!(ch.ech, None);
        assert_eq!(ch.legacy_version, 0x0303);
        assert_eq!(ch.consumed, buf.len());
    }

    #[test]
    fn rustls_hello_is_parsed() {
        let buf = rustls_hello("api.example.org", &[b"h2", b"http/1.1"]);
        let ch = parse_client_hello(&buf).unwrap();
        assert_eq!(ch.sni.as_deref(), Some("api.example.org"));
        assert_eq!(ch.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(ch.offers_tls13());
        assert!(!ch.offers_ech());
        assert_eq!(ch.consumed, buf.len());
    }

    #[test]
    fn rustls_hello_without_alpn() {
        let buf = rustls_hello("example.com", &[]);
        let ch = parse_client_hello(&buf).unwrap();
        assert!(ch.alpn.is_empty());
    }

    #[test]
    fn rustls_hello_in_one_byte_records_and_every_split() {
        let whole = rustls_hello("split.example.net", &[b"http/1.1"]);
        let msg = whole.get(RECORD_HEADER_LEN..).unwrap();
        let tiny = records(msg, 1);
        let ch = parse_client_hello(&tiny).unwrap();
        assert_eq!(ch.sni.as_deref(), Some("split.example.net"));
        assert_eq!(ch.consumed, tiny.len());
        for cut in 0..whole.len() {
            assert_eq!(
                parse_client_hello(&whole[..cut]),
                Err(TlsPeekError::Incomplete),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn every_two_way_split_is_incomplete_until_complete() {
        let buf = typical_hello("example.com");
        for cut in 0..buf.len() {
            assert_eq!(
                parse_client_hello(&buf[..cut]),
                Err(TlsPeekError::Incomplete),
                "cut {cut}"
            );
        }
        assert!(parse_client_hello(&buf).is_ok());
    }

    #[test]
    fn one_byte_records() {
        let msg = hello_msg(Some(&[sni_ext(&[b"tiny.example"]), alpn_ext(&[b"h2"])]));
        let buf = records(&msg, 1);
        assert_eq!(buf.len(), msg.len() * 6);
        let ch = parse_client_hello(&buf).unwrap();
        assert_eq!(ch.sni.as_deref(), Some("tiny.example"));
        assert_eq!(ch.consumed, buf.len());
        for cut in 0..buf.len() {
            assert_eq!(
                parse_client_hello(&buf[..cut]),
                Err(TlsPeekError::Incomplete),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn odd_record_sizes() {
        let msg = hello_msg(Some(&[sni_ext(&[b"odd.example"])]));
        for size in [2, 3, 5, 7, 13, 64, 100] {
            let ch = parse_client_hello(&records(&msg, size)).unwrap();
            assert_eq!(ch.sni.as_deref(), Some("odd.example"), "size {size}");
        }
    }

    #[test]
    fn consumed_stops_at_the_hello_records() {
        let mut buf = typical_hello("example.com");
        let hello_len = buf.len();
        // Early data or anything else the client pipelines after the hello is not ours.
        buf.extend_from_slice(&[23, 3, 3, 0, 3, 1, 2, 3]);
        let ch = parse_client_hello(&buf).unwrap();
        assert_eq!(ch.consumed, hello_len);
    }

    #[test]
    fn no_sni() {
        let buf = records(&hello_msg(Some(&[alpn_ext(&[b"h2"])])), 16384);
        let ch = parse_client_hello(&buf).unwrap();
        assert_eq!(ch.sni, None);
        assert!(!ch.offers_tls13());
    }

    #[test]
    fn no_extensions_at_all() {
        let ch = parse_client_hello(&records(&hello_msg(None), 16384)).unwrap();
        assert_eq!(ch.sni, None);
        assert!(ch.alpn.is_empty() && ch.supported_versions.is_empty());
    }

    #[test]
    fn ip_literal_sni_is_returned_as_is() {
        for ip in ["192.0.2.1", "::1", "[2001:db8::1]", "0x7f.1"] {
            let ch = parse_client_hello(&typical_hello(ip)).unwrap();
            assert_eq!(ch.sni.as_deref(), Some(ip));
        }
    }

    #[test]
    fn sni_is_raw_not_canonicalised() {
        let ch = parse_client_hello(&typical_hello("ExAmple.COM.")).unwrap();
        assert_eq!(ch.sni.as_deref(), Some("ExAmple.COM."));
        let ch = parse_client_hello(&typical_hello("bücher.example")).unwrap();
        assert_eq!(ch.sni.as_deref(), Some("bücher.example"));
    }

    #[test]
    fn ech_outer() {
        let buf = records(
            &hello_msg(Some(&[sni_ext(&[b"public.example"]), ech_outer_ext()])),
            16384,
        );
        let ch = parse_client_hello(&buf).unwrap();
        assert_eq!(ch.ech, Some(Ech::Outer));
        assert!(ch.offers_ech());
        assert_eq!(ch.sni.as_deref(), Some("public.example"));
    }

    #[test]
    fn ech_inner_and_drafts() {
        let buf = records(&hello_msg(Some(&[ext(EXT_ECH, &[1])])), 16384);
        assert_eq!(parse_client_hello(&buf).unwrap().ech, Some(Ech::Inner));
        let buf = records(&hello_msg(Some(&[ext(0xfe0a, &[0, 1, 2])])), 16384);
        assert_eq!(
            parse_client_hello(&buf).unwrap().ech,
            Some(Ech::Draft(0xfe0a))
        );
        let buf = records(&hello_msg(Some(&[ext(EXT_ESNI, &[9])])), 16384);
        assert_eq!(
            parse_client_hello(&buf).unwrap().ech,
            Some(Ech::Draft(EXT_ESNI))
        );
        let buf = records(
            &hello_msg(Some(&[ext(0xfe0a, &[0]), ech_outer_ext()])),
            16384,
        );
        assert_eq!(parse_client_hello(&buf).unwrap().ech, Some(Ech::Outer));
    }

    #[test]
    fn malformed_ech() {
        for data in [&[][..], &[2], &[1, 0], &[0, 0, 1, 0, 1]] {
            let buf = records(&hello_msg(Some(&[ext(EXT_ECH, data)])), 16384);
            invalid(&buf);
        }
        // Outer with an empty payload.
        let buf = records(
            &hello_msg(Some(&[ext(EXT_ECH, &[0, 0, 1, 0, 1, 7, 0, 0, 0, 0])])),
            16384,
        );
        assert_eq!(invalid(&buf), "empty ech payload");
    }

    #[test]
    fn alpn_variants() {
        let buf = records(&hello_msg(Some(&[alpn_ext(&[b"http/1.1"])])), 16384);
        let ch = parse_client_hello(&buf).unwrap();
        assert!(ch.offers_alpn(b"http/1.1") && !ch.offers_alpn(b"h2"));
        // Empty list, empty protocol, list length beyond the extension.
        invalid(&records(&hello_msg(Some(&[ext(EXT_ALPN, &[0, 0])])), 16384));
        invalid(&records(
            &hello_msg(Some(&[ext(EXT_ALPN, &[0, 1, 0])])),
            16384,
        ));
        invalid(&records(
            &hello_msg(Some(&[ext(EXT_ALPN, &[0, 9, 2, b'h', b'2'])])),
            16384,
        ));
        invalid(&records(
            &hello_msg(Some(&[ext(EXT_ALPN, &[0, 3, 2, b'h', b'2', 0])])),
            16384,
        ));
    }

    #[test]
    fn supported_versions_variants() {
        let buf = records(&hello_msg(Some(&[versions_ext(&[0x0303])])), 16384);
        assert!(!parse_client_hello(&buf).unwrap().offers_tls13());
        invalid(&records(
            &hello_msg(Some(&[ext(EXT_SUPPORTED_VERSIONS, &[0])])),
            16384,
        ));
        invalid(&records(
            &hello_msg(Some(&[ext(EXT_SUPPORTED_VERSIONS, &[3, 3, 4, 3])])),
            16384,
        ));
        invalid(&records(
            &hello_msg(Some(&[ext(EXT_SUPPORTED_VERSIONS, &[4, 3, 4])])),
            16384,
        ));
    }

    // ---- SNI rejections ----------------------------------------------------------------------

    #[test]
    fn two_host_names_rejected() {
        let buf = records(
            &hello_msg(Some(&[sni_ext(&[b"allowed.example", b"evil.example"])])),
            16384,
        );
        assert_eq!(invalid(&buf), "more than one host_name");
    }

    #[test]
    fn duplicate_server_name_extension_rejected() {
        let buf = records(
            &hello_msg(Some(&[
                sni_ext(&[b"allowed.example"]),
                sni_ext(&[b"evil.example"]),
            ])),
            16384,
        );
        assert_eq!(invalid(&buf), "duplicate extension");
        let buf = records(
            &hello_msg(Some(&[alpn_ext(&[b"h2"]), alpn_ext(&[b"h2"])])),
            16384,
        );
        assert_eq!(invalid(&buf), "duplicate extension");
    }

    #[test]
    fn bad_host_names_rejected() {
        let buf = records(&hello_msg(Some(&[sni_ext(&[b""])])), 16384);
        assert_eq!(invalid(&buf), "empty host_name");
        let buf = records(
            &hello_msg(Some(&[sni_ext(&[b"allowed.example\0.evil"])])),
            16384,
        );
        assert_eq!(invalid(&buf), "NUL in host_name");
        let buf = records(&hello_msg(Some(&[sni_ext(&[b"\xff\xfe.example"])])), 16384);
        assert_eq!(invalid(&buf), "host_name is not utf-8");
        // Empty list; empty extension (the ServerHello form); unknown name type.
        invalid(&records(
            &hello_msg(Some(&[ext(EXT_SERVER_NAME, &[0, 0])])),
            16384,
        ));
        invalid(&records(
            &hello_msg(Some(&[ext(EXT_SERVER_NAME, &[])])),
            16384,
        ));
        let buf = records(
            &hello_msg(Some(&[ext(EXT_SERVER_NAME, &[0, 4, 1, 0, 1, b'a'])])),
            16384,
        );
        assert_eq!(invalid(&buf), "unknown server_name type");
        // Trailing bytes after the list; a host_name longer than the list.
        invalid(&records(
            &hello_msg(Some(&[ext(EXT_SERVER_NAME, &[0, 4, 0, 0, 1, b'a', 9])])),
            16384,
        ));
        invalid(&records(
            &hello_msg(Some(&[ext(EXT_SERVER_NAME, &[0, 4, 0, 0, 9, b'a'])])),
            16384,
        ));
    }

    // ---- record layer ------------------------------------------------------------------------

    #[test]
    fn not_tls() {
        for buf in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x80\x2e\x01\x03\x01",
            b"SSH-2.0-",
            b"\x15\x03\x03\x00\x02",
        ] {
            assert_eq!(
                parse_client_hello(buf),
                Err(TlsPeekError::NotTls),
                "{buf:?}"
            );
        }
        assert_eq!(parse_client_hello(b"\x16\x02"), Err(TlsPeekError::NotTls));
        assert_eq!(
            parse_client_hello(b"\x16\x03\x05"),
            Err(TlsPeekError::NotTls)
        );
        assert_eq!(
            parse_client_hello(b"\x16\x03\x03\xff\xff"),
            Err(TlsPeekError::NotTls)
        );
        assert_eq!(parse_client_hello(b""), Err(TlsPeekError::Incomplete));
        assert_eq!(parse_client_hello(b"\x16"), Err(TlsPeekError::Incomplete));
    }

    #[test]
    fn non_handshake_record_in_the_middle_is_invalid() {
        let msg = hello_msg(Some(&[sni_ext(&[b"example.com"])]));
        let (a, b) = msg.split_at(10);
        let mut buf = records(a, 16384);
        buf.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
        buf.extend_from_slice(&records(b, 16384));
        assert_eq!(
            invalid(&buf),
            "non-handshake record before the end of the client hello"
        );
        // Change cipher spec (TLS 1.3 middlebox compatibility) is no exception before the hello.
        let mut buf = records(a, 16384);
        buf.extend_from_slice(&[20, 3, 3, 0, 1, 1]);
        invalid(&buf);
    }

    #[test]
    fn bad_later_record_header_is_invalid() {
        let msg = hello_msg(Some(&[sni_ext(&[b"example.com"])]));
        let mut buf = records(&msg[..10], 16384);
        buf.extend_from_slice(&[22, 2, 1]);
        assert_eq!(invalid(&buf), "bad record version");
        let mut buf = records(&msg[..10], 16384);
        buf.extend_from_slice(&[22, 3, 1, 0, 0]);
        assert_eq!(invalid(&buf), "empty handshake record");
    }

    #[test]
    fn empty_and_oversized_records() {
        assert_eq!(
            parse_client_hello(b"\x16\x03\x01\x00\x00"),
            Err(TlsPeekError::NotTls)
        );
        let len = MAX_RECORD_LEN + 1;
        let buf = [22, 3, 1, (len >> 8) as u8, len as u8];
        assert_eq!(parse_client_hello(&buf), Err(TlsPeekError::NotTls));
        // The largest allowed record is fine (and incomplete here).
        let len = MAX_RECORD_LEN;
        let buf = [22, 3, 1, (len >> 8) as u8, len as u8, 1, 0, 0x40];
        assert_eq!(parse_client_hello(&buf), Err(TlsPeekError::Incomplete));
    }

    #[test]
    fn huge_handshake_length_is_too_large_early() {
        // Known from the first 4 payload bytes, without waiting for 16 MiB.
        assert_eq!(
            parse_client_hello(&[22, 3, 1, 0x40, 0, 1, 0xff, 0xff, 0xff]),
            Err(TlsPeekError::TooLarge)
        );
        let just_over = MAX_HANDSHAKE_LEN - HANDSHAKE_HEADER_LEN + 1;
        let buf = [
            22,
            3,
            1,
            0,
            4,
            1,
            (just_over >> 16) as u8,
            (just_over >> 8) as u8,
            just_over as u8,
        ];
        assert_eq!(parse_client_hello(&buf), Err(TlsPeekError::TooLarge));
        let at_cap = just_over - 1;
        let buf = [
            22,
            3,
            1,
            0,
            4,
            1,
            (at_cap >> 16) as u8,
            (at_cap >> 8) as u8,
            at_cap as u8,
        ];
        assert_eq!(parse_client_hello(&buf), Err(TlsPeekError::Incomplete));
        // Header split over 1-byte records.
        let buf = records(&[1, 0xff, 0xff, 0xff], 1);
        assert_eq!(parse_client_hello(&buf), Err(TlsPeekError::TooLarge));
    }

    #[test]
    fn wrong_handshake_type_is_invalid_early() {
        assert_eq!(
            invalid(&[22, 3, 1, 0, 50, 2]),
            "first handshake message is not a client hello"
        );
    }

    #[test]
    fn trailing_message_in_the_same_record_is_invalid() {
        let mut msg = hello_msg(Some(&[sni_ext(&[b"example.com"])]));
        msg.extend_from_slice(&[1, 0, 0, 0]);
        assert_eq!(
            invalid(&records(&msg, 16384)),
            "trailing data after the client hello"
        );
    }

    // ---- body truncation and garbage ---------------------------------------------------------

    /// Re-frames `body` as a ClientHello whose lengths agree with the body, so that only the
    /// body's own structure is under test.
    fn framed(body: &[u8]) -> Vec<u8> {
        let mut msg = vec![HANDSHAKE_CLIENT_HELLO];
        msg.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        msg.extend_from_slice(body);
        records(&msg, 16384)
    }

    #[test]
    fn every_truncated_body_is_invalid_not_panic() {
        let msg = hello_msg(Some(&[
            sni_ext(&[b"example.com"]),
            alpn_ext(&[b"h2"]),
            ech_outer_ext(),
        ]));
        let body = &msg[HANDSHAKE_HEADER_LEN..];
        for cut in 0..body.len() {
            let r = parse_client_hello(&framed(&body[..cut]));
            assert!(
                matches!(r, Err(TlsPeekError::Invalid(_)) | Ok(_)),
                "cut {cut}: {r:?}"
            );
        }
    }

    #[test]
    fn body_field_checks() {
        let good = hello_msg(Some(&[sni_ext(&[b"example.com"])]));
        let body = good[HANDSHAKE_HEADER_LEN..].to_vec();
        let mut b = body.clone();
        b[0] = 2;
        assert_eq!(invalid(&framed(&b)), "bad client hello version");
        let mut b = body.clone();
        b[34] = 33; // session_id length
        invalid(&framed(&b));
        let mut b = body.clone();
        b[34 + 33 + 1] = 3; // odd cipher_suites length
        invalid(&framed(&b));
        let mut b = body.clone();
        b.push(0);
        invalid(&framed(&b));
    }

    #[test]
    fn huge_inner_lengths_are_invalid() {
        let good = hello_msg(Some(&[sni_ext(&[b"example.com"])]));
        let body = good[HANDSHAKE_HEADER_LEN..].to_vec();
        // Overwrite every 2-byte window with 0xffff in turn: every length becomes huge somewhere.
        for i in 0..body.len() - 1 {
            let mut b = body.clone();
            b[i] = 0xff;
            b[i + 1] = 0xff;
            let _ = parse_client_hello(&framed(&b));
        }
    }

    #[test]
    fn alert_records() {
        assert_eq!(
            alert(AlertDescription::AccessDenied),
            [21, 3, 3, 0, 2, 2, 49]
        );
        assert_eq!(
            alert(AlertDescription::UnrecognizedName),
            [21, 3, 3, 0, 2, 2, 112]
        );
        assert_eq!(
            alert(AlertDescription::InternalError),
            [21, 3, 3, 0, 2, 2, 80]
        );
        assert_eq!(
            alert(AlertDescription::HandshakeFailure),
            [21, 3, 3, 0, 2, 2, 40]
        );
    }
}
