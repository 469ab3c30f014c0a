//! HTTP/1.x request head reader: request line, the single Host header and the few headers the
//! interceptor needs later (upgrade, framing).
//!
//! Check-then-parse like the TLS reader: [`HttpPeekError::Incomplete`] asks for more bytes,
//! every other error closes this connection only. Anything that could make the agent and the
//! upstream disagree about the destination (two Hosts, a Host that differs from an
//! absolute-form or CONNECT target, userinfo, folded headers) is rejected, not interpreted.

use thiserror::Error;

/// Largest request head (request line, headers and the blank line) we buffer.
pub const MAX_HEAD_LEN: usize = 64 * 1024;
pub const MAX_HEADERS: usize = 64;

/// The HTTP/2 connection preface (RFC 9113 §3.4), sent first by prior-knowledge h2c clients.
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Methods we recognise from the first bytes. Extension methods (WebDAV and friends) are
/// treated as opaque TCP, which is denied unless a `host:port` rule allows it.
const METHODS: [&[u8]; 10] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
    b"PRI ",
];

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HttpPeekError {
    /// Not an error: the head is not complete yet, read more bytes and call again.
    #[error("incomplete request head, need more bytes")]
    Incomplete,
    #[error("request head larger than {MAX_HEAD_LEN} bytes")]
    TooLarge,
    #[error("more than {MAX_HEADERS} request headers")]
    TooManyHeaders,
    #[error("invalid request head: {0}")]
    Invalid(&'static str),
    #[error("request target host {target_host:?} does not match host header {host_header:?}")]
    HostMismatch {
        target_host: String,
        host_header: String,
    },
}

/// The request-target forms of RFC 9112 §3.2, raw (not canonicalised).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/path?query`
    Origin(String),
    /// `http://authority/path?query`; `path` is `/` when the target had none.
    Absolute {
        scheme: String,
        authority: String,
        path: String,
    },
    /// `host:port`, only for CONNECT.
    Authority(String),
    /// `*`, only for OPTIONS.
    Asterisk,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: Target,
    /// Minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version: u8,
    /// The value of the single Host header, raw (trimmed of surrounding whitespace by httparse).
    pub host: Option<String>,
    /// Length of the head including the terminating blank line; the body (if any) follows.
    pub head_len: usize,
    /// Upgrade header value(s), comma-joined when repeated.
    pub upgrade: Option<String>,
    /// Connection header value(s), comma-joined when repeated.
    pub connection: Option<String>,
    pub content_length: Option<u64>,
    /// Whether a Transfer-Encoding header is present (never together with Content-Length).
    pub transfer_encoding: bool,
}

impl RequestHead {
    /// The authority this request is for: the CONNECT or absolute-form target when there is
    /// one (already checked against Host), else the Host header.
    pub fn authority(&self) -> Option<&str> {
        match &self.target {
            Target::Authority(a) | Target::Absolute { authority: a, .. } => Some(a),
            Target::Origin(_) | Target::Asterisk => self.host.as_deref(),
        }
    }

    pub fn is_connect(&self) -> bool {
        self.method == "CONNECT"
    }
}

/// `Some(true)` when `buf` starts with a known method and a space (including `PRI `, see
/// [`h2_prior_knowledge`]), `Some(false)` when it cannot, `None` when too few bytes to tell.
pub fn looks_like_http(buf: &[u8]) -> Option<bool> {
    if buf.is_empty() {
        return None;
    }
    let mut undecided = false;
    for m in METHODS {
        if buf.starts_with(m) {
            return Some(true);
        }
        if m.starts_with(buf) {
            undecided = true;
        }
    }
    if undecided {
        None
    } else {
        Some(false)
    }
}

/// `Some(true)` when `buf` starts with the HTTP/2 preface, `Some(false)` when it cannot,
/// `None` when it is a proper prefix of it.
pub fn h2_prior_knowledge(buf: &[u8]) -> Option<bool> {
    if buf.starts_with(H2_PREFACE) {
        Some(true)
    } else if H2_PREFACE.starts_with(buf) {
        None
    } else {
        Some(false)
    }
}

/// Parses the request head at the start of `buf` (everything the client sent so far).
pub fn parse_request_head(buf: &[u8]) -> Result<RequestHead, HttpPeekError> {
    // Never let httparse scan more than the cap, however much the caller buffered.
    let window = buf.get(..MAX_HEAD_LEN).unwrap_or(buf);

    // httparse rejects NUL too, but with a vaguer error, and only once it reaches it.
    let line_end = window
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(window.len());
    if window.get(..line_end).unwrap_or_default().contains(&0) {
        return Err(HttpPeekError::Invalid("NUL in request line"));
    }

    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_LEN => {
            return Err(HttpPeekError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Err(HttpPeekError::Incomplete),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpPeekError::TooManyHeaders),
        Err(e) => return Err(HttpPeekError::Invalid(describe(e, window))),
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HttpPeekError::Invalid("incomplete request line"));
    };

    // RFC 9113 §3.4: PRI belongs to the HTTP/2 preface, which the caller recognises first.
    if method == "PRI" {
        return Err(HttpPeekError::Invalid(
            "PRI method outside the HTTP/2 preface",
        ));
    }

    let mut host: Option<&str> = None;
    let mut upgrade: Option<String> = None;
    let mut connection: Option<String> = None;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Err(HttpPeekError::Invalid("more than one Host header"));
            }
            host = Some(check_host_header(h.value)?);
        } else if name.eq_ignore_ascii_case("upgrade") {
            append_list(&mut upgrade, h.value)?;
        } else if name.eq_ignore_ascii_case("connection") {
            append_list(&mut connection, h.value)?;
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value)?;
            // Repeated identical values are tolerated (RFC 9112 §6.3), differing ones are the
            // classic request-smuggling shape.
            if content_length.is_some_and(|prev| prev != n) {
                return Err(HttpPeekError::Invalid("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
        }
    }
    if transfer_encoding && content_length.is_some() {
        return Err(HttpPeekError::Invalid(
            "both Content-Length and Transfer-Encoding",
        ));
    }

    let is_connect = method == "CONNECT";
    let target = parse_target(method, path)?;
    match &target {
        Target::Absolute {
            scheme, authority, ..
        } => {
            if let Some(h) = host {
                check_same_authority(authority, h, default_port(scheme))?;
            }
        }
        Target::Authority(authority) => {
            if let Some(h) = host {
                check_same_authority(authority, h, None)?;
            }
        }
        Target::Origin(_) | Target::Asterisk => {}
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400. CONNECT names its
    // destination in the request line, so a missing Host there is harmless.
    if version == 1 && host.is_none() && !is_connect {
        return Err(HttpPeekError::Invalid("HTTP/1.1 request without Host"));
    }

    Ok(RequestHead {
        method: method.to_owned(),
        target,
        version,
        host: host.map(str::to_owned),
        head_len,
        upgrade,
        connection,
        content_length,
        transfer_encoding,
    })
}

fn describe(e: httparse::Error, head: &[u8]) -> &'static str {
    match e {
        // httparse reports a folded line as a bad header name (it starts with whitespace).
        httparse::Error::HeaderName
            if head.windows(2).any(|w| matches!(w, [b'\n', b' ' | b'\t'])) =>
        {
            "obsolete line folding"
        }
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid method or request target",
        httparse::Error::Version => "invalid http version",
        httparse::Error::TooManyHeaders => "too many headers",
    }
}

fn check_host_header(value: &[u8]) -> Result<&str, HttpPeekError> {
    if value.is_empty() {
        return Err(HttpPeekError::Invalid("empty Host header"));
    }
    if value.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(HttpPeekError::Invalid(
            "whitespace or control character in Host header",
        ));
    }
    // Characters that end or precede an authority: a Host such as `allowed@evil` or
    // `allowed/x` means different things to different parsers.
    if value
        .iter()
        .any(|b| matches!(b, b'/' | b'\\' | b'@' | b'?' | b'#'))
    {
        return Err(HttpPeekError::Invalid("Host header is not an authority"));
    }
    let host = std::str::from_utf8(value)
        .map_err(|_| HttpPeekError::Invalid("Host header is not utf-8"))?;
    if split_host_port(host).is_none() {
        return Err(HttpPeekError::Invalid("malformed Host header"));
    }
    Ok(host)
}

fn append_list(slot: &mut Option<String>, value: &[u8]) -> Result<(), HttpPeekError> {
    let value = std::str::from_utf8(value)
        .map_err(|_| HttpPeekError::Invalid("header value is not utf-8"))?;
    match slot {
        Some(prev) => {
            prev.push_str(", ");
            prev.push_str(value);
        }
        None => *slot = Some(value.to_owned()),
    }
    Ok(())
}

fn parse_content_length(value: &[u8]) -> Result<u64, HttpPeekError> {
    const BAD: HttpPeekError = HttpPeekError::Invalid("invalid Content-Length");
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(BAD);
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(BAD)
}

fn parse_target(method: &str, path: &str) -> Result<Target, HttpPeekError> {
    if method == "CONNECT" {
        // RFC 9110 §9.3.6: authority-form with a port, nothing else.
        let valid = !path.is_empty()
            && !path.contains(['/', '@', '\\', '?', '#'])
            && split_host_port(path).is_some_and(|(_, port)| port.is_some());
        return if valid {
            Ok(Target::Authority(path.to_owned()))
        } else {
            Err(HttpPeekError::Invalid(
                "CONNECT without authority-form target",
            ))
        };
    }
    if path == "*" {
        return if method == "OPTIONS" {
            Ok(Target::Asterisk)
        } else {
            Err(HttpPeekError::Invalid(
                "asterisk-form target outside OPTIONS",
            ))
        };
    }
    if path.starts_with('/') {
        return Ok(Target::Origin(path.to_owned()));
    }
    let Some((scheme, rest)) = path.split_once("://") else {
        return Err(HttpPeekError::Invalid("unrecognised request target"));
    };
    let scheme = scheme.to_ascii_lowercase();
    if default_port(&scheme).is_none() {
        return Err(HttpPeekError::Invalid(
            "unsupported scheme in absolute-form target",
        ));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.contains('@') {
        // `http://allowed.example@evil.example/`: RFC 9110 §4.2.4 says treat it as an error.
        return Err(HttpPeekError::Invalid("userinfo in request target"));
    }
    if authority.contains('\\') || split_host_port(authority).is_none() {
        return Err(HttpPeekError::Invalid(
            "malformed authority in request target",
        ));
    }
    let path = match path.chars().next() {
        None => "/".to_owned(),
        Some('/') => path.to_owned(),
        Some(_) => format!("/{path}"),
    };
    Ok(Target::Absolute {
        scheme,
        authority: authority.to_owned(),
        path,
    })
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Target and Host must name the same host (case-insensitively) and the same port, where a
/// missing port means `default` (for CONNECT there is no default: ports are compared only when
/// the Host header carries one).
fn check_same_authority(
    target: &str,
    host_header: &str,
    default: Option<u16>,
) -> Result<(), HttpPeekError> {
    let mismatch = || HttpPeekError::HostMismatch {
        target_host: target.to_owned(),
        host_header: host_header.to_owned(),
    };
    let (th, tp) = split_host_port(target).ok_or_else(mismatch)?;
    let (hh, hp) = split_host_port(host_header).ok_or_else(mismatch)?;
    let same_port = match (tp.or(default), hp.or(default)) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    if th.eq_ignore_ascii_case(hh) && same_port {
        Ok(())
    } else {
        Err(mismatch())
    }
}

/// Splits `host[:port]` or `[v6][:port]`. The returned host keeps its brackets. `None` when
/// the port is not a decimal u16 or the shape is not an authority (e.g. a bare IPv6 address).
pub fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let close = authority.find(']')?;
        let (host, rest) = authority.split_at(close + 1);
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            None => (authority, None),
            Some((h, p)) => (h, Some(p)),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse().ok()?)
        }
        Some(_) => return None,
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(buf: &[u8]) -> RequestHead {
        parse_request_head(buf)
            .unwrap_or_else(|e| panic!("{:?}: {e:?}", String::from_utf8_lossy(buf)))
    }

    fn invalid(buf: &[u8]) -> &'static str {
        match parse_request_head(buf) {
            Err(HttpPeekError::Invalid(why)) => why,
            other => panic!(
                "{:?}: expected Invalid, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    #[test]
    fn simple_get() {
        let buf = b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\nbody";
        let h = ok(buf);
        assert_eq!(h.method, "GET");
        assert_eq!(h.target, Target::Origin("/a?b=c".into()));
        assert_eq!(h.version, 1);
        assert_eq!(h.host.as_deref(), Some("example.com"));
        assert_eq!(h.head_len, buf.len() - 4);
        assert_eq!(h.authority(), Some("example.com"));
        assert_eq!(
            (
                h.upgrade,
                h.connection,
                h.content_length,
                h.transfer_encoding
            ),
            (None, None, None, false)
        );
    }

    #[test]
    fn every_split_is_incomplete_until_complete() {
        let buf = b"POST /upload HTTP/1.1\r\nHost: example.com:8080\r\nContent-Length: 5\r\n\r\n";
        for cut in 0..buf.len() {
            assert_eq!(
                parse_request_head(&buf[..cut]),
                Err(HttpPeekError::Incomplete),
                "cut {cut}"
            );
        }
        let h = ok(buf);
        assert_eq!(h.content_length, Some(5));
        assert_eq!(h.host.as_deref(), Some("example.com:8080"));
    }

    #[test]
    fn bare_lf_line_endings() {
        let h = ok(b"GET / HTTP/1.1\nHost: example.com\n\n");
        assert_eq!(h.host.as_deref(), Some("example.com"));
    }

    #[test]
    fn host_is_trimmed_and_raw() {
        let h = ok(b"GET / HTTP/1.1\r\nhOsT:   ExAmple.COM.  \r\n\r\n");
        assert_eq!(h.host.as_deref(), Some("ExAmple.COM."));
    }

    #[test]
    fn http10_without_host() {
        let h = ok(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!((h.version, h.host), (0, None));
        assert_eq!(
            invalid(b"GET / HTTP/1.1\r\n\r\n"),
            "HTTP/1.1 request without Host"
        );
    }

    #[test]
    fn two_hosts_rejected() {
        assert_eq!(
            invalid(b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n"),
            "more than one Host header"
        );
        assert_eq!(
            invalid(b"GET / HTTP/1.1\r\nHost: a.example\r\nhost: a.example\r\n\r\n"),
            "more than one Host header"
        );
    }

    #[test]
    fn bad_host_values_rejected() {
        for value in [
            &b"a b.example"[..],
            b"a\tb",
            b"allowed.example@evil.example",
            b"allowed.example/x",
            b"a\\b",
            b"a?b",
            b"a#b",
            b"a:b:c",
            b"a:99999",
            b"a:",
            b"[::1",
            b"[::1]x",
        ] {
            let mut buf = b"GET / HTTP/1.1\r\nHost: ".to_vec();
            buf.extend_from_slice(value);
            buf.extend_from_slice(b"\r\n\r\n");
            assert!(
                matches!(parse_request_head(&buf), Err(HttpPeekError::Invalid(_))),
                "{value:?}"
            );
        }
        assert_eq!(
            invalid(b"GET / HTTP/1.1\r\nHost:\r\n\r\n"),
            "empty Host header"
        );
        // Control characters other than HTAB are already refused by httparse.
        invalid(b"GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n");
        invalid(b"GET / HTTP/1.1\r\nHost: a\x7fb\r\n\r\n");
        invalid(b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n");
        invalid(b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n");
        invalid(b"GET / HTTP/1.1\r\nHost: \xff\r\n\r\n");
    }

    #[test]
    fn ipv6_host() {
        let h = ok(b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n\r\n");
        assert_eq!(h.host.as_deref(), Some("[2001:db8::1]:8080"));
    }

    #[test]
    fn nul_and_junk_in_request_line() {
        assert_eq!(
            invalid(b"GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n"),
            "NUL in request line"
        );
        assert_eq!(invalid(b"GET /\0"), "NUL in request line");
        invalid(b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n");
        invalid(b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n");
        invalid(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n");
        invalid(b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n");
        invalid(b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    #[test]
    fn obs_fold_rejected() {
        assert_eq!(
            invalid(b"GET / HTTP/1.1\r\nHost: a.example\r\n  evil.example\r\n\r\n"),
            "obsolete line folding"
        );
        assert_eq!(
            invalid(b"GET / HTTP/1.1\r\nX: y\r\n\tz\r\nHost: a\r\n\r\n"),
            "obsolete line folding"
        );
        // Whitespace before the first header is the same trick.
        invalid(b"GET / HTTP/1.1\r\n Host: a\r\n\r\n");
    }

    #[test]
    fn absolute_form() {
        let h = ok(b"GET http://Example.com/x?y HTTP/1.1\r\nHost: example.com\r\n\r\n");
        assert_eq!(
            h.target,
            Target::Absolute {
                scheme: "http".into(),
                authority: "Example.com".into(),
                path: "/x?y".into()
            }
        );
        assert_eq!(h.authority(), Some("Example.com"));
        let h = ok(b"GET HTTP://example.com HTTP/1.1\r\nHost: example.com:80\r\n\r\n");
        assert_eq!(
            h.target,
            Target::Absolute {
                scheme: "http".into(),
                authority: "example.com".into(),
                path: "/".into()
            }
        );
        let h = ok(b"GET https://example.com:443?q HTTP/1.1\r\nHost: EXAMPLE.com\r\n\r\n");
        assert!(matches!(h.target, Target::Absolute { ref path, .. } if path == "/?q"));
        // HTTP/1.0 absolute-form without Host: the target names the destination.
        let h = ok(b"GET http://example.com/ HTTP/1.0\r\n\r\n");
        assert_eq!(
            (h.host.as_deref(), h.authority()),
            (None, Some("example.com"))
        );
    }

    #[test]
    fn absolute_form_host_mismatch() {
        let cases: [(&[u8], &str, &str); 5] = [
            (
                b"GET http://evil.example/ HTTP/1.1\r\nHost: allowed.example\r\n\r\n",
                "evil.example",
                "allowed.example",
            ),
            (
                b"GET http://allowed.example:8080/ HTTP/1.1\r\nHost: allowed.example\r\n\r\n",
                "allowed.example:8080",
                "allowed.example",
            ),
            (
                b"GET https://allowed.example/ HTTP/1.1\r\nHost: allowed.example:80\r\n\r\n",
                "allowed.example",
                "allowed.example:80",
            ),
            (
                b"GET http://allowed.example/ HTTP/1.1\r\nHost: allowed.example.\r\n\r\n",
                "allowed.example",
                "allowed.example.",
            ),
            (
                b"GET http://[::1]/ HTTP/1.1\r\nHost: [::2]\r\n\r\n",
                "[::1]",
                "[::2]",
            ),
        ];
        for (buf, t, h) in cases {
            assert_eq!(
                parse_request_head(buf),
                Err(HttpPeekError::HostMismatch {
                    target_host: t.into(),
                    host_header: h.into()
                })
            );
        }
    }

    #[test]
    fn absolute_form_rejections() {
        assert_eq!(
            invalid(
                b"GET http://allowed.example@evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n"
            ),
            "userinfo in request target"
        );
        assert_eq!(
            invalid(b"GET ftp://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"),
            "unsupported scheme in absolute-form target"
        );
        invalid(b"GET http:///x HTTP/1.1\r\nHost: example.com\r\n\r\n");
        invalid(b"GET http://a:b:c/ HTTP/1.1\r\nHost: a\r\n\r\n");
        invalid(b"GET http://a\\b/ HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            invalid(b"GET example.com HTTP/1.1\r\nHost: example.com\r\n\r\n"),
            "unrecognised request target"
        );
        assert_eq!(
            invalid(b"GET example.com:80 HTTP/1.1\r\nHost: example.com\r\n\r\n"),
            "unrecognised request target"
        );
    }

    #[test]
    fn connect() {
        let h = ok(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
        assert_eq!(h.target, Target::Authority("example.com:443".into()));
        assert!(h.is_connect());
        assert_eq!(h.authority(), Some("example.com:443"));
        // Host without a port, or no Host at all: fine.
        ok(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n");
        ok(b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n");
        for target in [
            "example.com",
            "/",
            "http://example.com:443/",
            "*",
            "example.com:",
            ":443",
            "a@b:443",
            "[::1]",
            "a:b:443",
        ] {
            let buf = format!("CONNECT {target} HTTP/1.1\r\nHost: example.com\r\n\r\n");
            assert_eq!(
                invalid(buf.as_bytes()),
                "CONNECT without authority-form target",
                "{target}"
            );
        }
        assert_eq!(
            parse_request_head(
                b"CONNECT allowed.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"
            ),
            Err(HttpPeekError::HostMismatch {
                target_host: "allowed.example:443".into(),
                host_header: "evil.example:443".into()
            })
        );
        assert!(matches!(
            parse_request_head(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:8443\r\n\r\n"),
            Err(HttpPeekError::HostMismatch { .. })
        ));
    }

    #[test]
    fn asterisk() {
        assert_eq!(
            ok(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").target,
            Target::Asterisk
        );
        assert_eq!(
            invalid(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"),
            "asterisk-form target outside OPTIONS"
        );
    }

    #[test]
    fn upgrade_and_connection() {
        let h = ok(b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nConnection: Upgrade\r\n\r\n");
        assert_eq!(h.upgrade.as_deref(), Some("websocket"));
        assert_eq!(h.connection.as_deref(), Some("keep-alive, Upgrade"));
        let h = ok(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n");
        assert_eq!(h.upgrade.as_deref(), Some("h2c"));
    }

    #[test]
    fn body_framing() {
        let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(h.transfer_encoding);
        assert_eq!(
            ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n")
                .content_length,
            Some(3)
        );
        invalid(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n");
        invalid(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        invalid(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n");
        invalid(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n");
        invalid(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n");
        invalid(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n");
    }

    #[test]
    fn too_many_headers() {
        let mut buf = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            buf.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        assert_eq!(parse_request_head(&buf), Err(HttpPeekError::TooManyHeaders));
    }

    #[test]
    fn head_size_cap() {
        let mut buf = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
        buf.resize(MAX_HEAD_LEN - 4, b'x');
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(ok(&buf).head_len, MAX_HEAD_LEN);
        buf.insert(30, b'x');
        assert_eq!(parse_request_head(&buf), Err(HttpPeekError::TooLarge));
        // A never-ending header is TooLarge once the cap is reached, Incomplete before.
        let mut buf = b"GET / HTTP/1.1\r\nX: ".to_vec();
        buf.resize(MAX_HEAD_LEN - 1, b'x');
        assert_eq!(parse_request_head(&buf), Err(HttpPeekError::Incomplete));
        buf.resize(1 << 20, b'x');
        assert_eq!(parse_request_head(&buf), Err(HttpPeekError::TooLarge));
    }

    #[test]
    fn looks_like_http_cases() {
        for m in [
            "GET ", "POST ", "PUT ", "DELETE ", "HEAD ", "OPTIONS ", "PATCH ", "CONNECT ",
            "TRACE ", "PRI ",
        ] {
            assert_eq!(looks_like_http(m.as_bytes()), Some(true), "{m}");
            for cut in 1..m.len() {
                assert_eq!(looks_like_http(&m.as_bytes()[..cut]), None, "{m} cut {cut}");
            }
        }
        assert_eq!(looks_like_http(b""), None);
        assert_eq!(looks_like_http(b"GET /"), Some(true));
        assert_eq!(looks_like_http(b"GETX"), Some(false));
        assert_eq!(looks_like_http(b"get / HTTP/1.1"), Some(false));
        assert_eq!(looks_like_http(b"PROPFIND / HTTP/1.1"), Some(false));
        assert_eq!(looks_like_http(b"\x16\x03\x01"), Some(false));
        assert_eq!(looks_like_http(b"SSH-2.0"), Some(false));
        assert_eq!(looks_like_http(b"\0"), Some(false));
    }

    #[test]
    fn h2_preface() {
        assert_eq!(h2_prior_knowledge(H2_PREFACE), Some(true));
        for cut in 0..H2_PREFACE.len() {
            assert_eq!(h2_prior_knowledge(&H2_PREFACE[..cut]), None);
        }
        assert_eq!(h2_prior_knowledge(b"PRI / HTTP/1.1\r\n"), Some(false));
        assert_eq!(
            invalid(b"PRI / HTTP/1.1\r\nHost: a\r\n\r\n"),
            "PRI method outside the HTTP/2 preface"
        );
        // The preface is not a valid HTTP/1.x head.
        assert!(parse_request_head(H2_PREFACE).is_err());
    }

    #[test]
    fn split_host_port_cases() {
        assert_eq!(split_host_port("a.example"), Some(("a.example", None)));
        assert_eq!(split_host_port("a.example:0"), Some(("a.example", Some(0))));
        assert_eq!(
            split_host_port("a.example:65535"),
            Some(("a.example", Some(65535)))
        );
        assert_eq!(split_host_port("[::1]:80"), Some(("[::1]", Some(80))));
        assert_eq!(split_host_port("[::1]"), Some(("[::1]", None)));
        for bad in [
            "", ":80", "a:65536", "a:+80", "a:080000", "::1", "[::1]:", "[::1]80", "[::1", "a:",
        ] {
            assert_eq!(split_host_port(bad), None, "{bad}");
        }
    }
}
