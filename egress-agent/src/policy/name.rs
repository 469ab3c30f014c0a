//! Host names and host patterns, canonicalised once (DESIGN.md §5.3).
//!
//! A name from SNI, Host, CONNECT or the policy file becomes a [`CanonicalName`]: IDNA
//! UTS-46 to ASCII (so Unicode that maps to ASCII, e.g. fullwidth letters, becomes that
//! ASCII), lowercase, one trailing dot stripped, no IP literals in any spelling the C
//! resolver accepts. Matching then compares plain ASCII strings.

use std::fmt;
use std::net::IpAddr;

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

use crate::addr::parse_ip_lenient;

/// Ports a pattern without an explicit port covers.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

/// Errors canonicalising a name, a pattern or a `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("name {name:?} contains the forbidden character {ch:?}")]
    ForbiddenChar { name: String, ch: char },
    #[error("{0} is an IP address literal, not a name")]
    IpLiteral(IpAddr),
    #[error("name {0:?} is not a valid internationalised name (IDNA)")]
    Idna(String),
    #[error("name is {0} bytes long: at most 253 are allowed")]
    TooLong(usize),
    #[error("label {label:?} is {len} bytes long: at most 63 are allowed")]
    LabelTooLong { label: String, len: usize },
    #[error("name {0:?} has an empty label")]
    EmptyLabel(String),
    #[error("name {0:?} ends in a numeric label, which resolvers read as an address")]
    NumericLast(String),
    #[error("invalid port {port:?} in {input:?}: expected a number from 1 to 65535")]
    InvalidPort { input: String, port: String },
    #[error("port `*` in {0:?} is not supported: list each port, e.g. host:443")]
    WildcardPort(String),
    #[error("a bare `*` would allow every name: use a suffix such as `*.example.com`")]
    BareWildcard,
    #[error("wildcard in {0:?} must be a whole leading label, as in `*.example.com`")]
    BadWildcard(String),
    #[error("unbalanced brackets in {0:?}")]
    Brackets(String),
}

/// A host name in canonical form: ASCII, lowercase, no trailing dot, not an IP literal.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CanonicalName(String);

impl CanonicalName {
    /// Canonicalises a name (see the module documentation). Ports and brackets are not
    /// accepted here: split them first with [`split_host_port`].
    pub fn parse(input: &str) -> Result<Self, NameError> {
        if input.is_empty() {
            return Err(NameError::Empty);
        }
        if let Some(ip) = parse_ip_lenient(input) {
            return Err(NameError::IpLiteral(ip));
        }
        if let Some(ch) = input.chars().find(|c| forbidden(*c)) {
            return Err(NameError::ForbiddenChar {
                name: input.to_string(),
                ch,
            });
        }
        let ascii = Uts46::new()
            .to_ascii(
                input.as_bytes(),
                AsciiDenyList::URL,
                Hyphens::Allow,
                DnsLength::Ignore,
            )
            .map_err(|_| NameError::Idna(input.to_string()))?;
        let mut s = ascii.into_owned();
        // One trailing dot (the root) is the same name; after IDNA, so that a fullwidth or
        // ideographic full stop counts as one too.
        if s.ends_with('.') {
            s.pop();
        }
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if let Some(ip) = parse_ip_lenient(&s) {
            return Err(NameError::IpLiteral(ip));
        }
        validate_ascii(&s)?;
        Ok(Self(s))
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn forbidden(c: char) -> bool {
    c.is_control() || c.is_whitespace() || matches!(c, '@' | '/' | '\\' | ':' | '%')
}

/// Post-IDNA check: letters, digits, `-` and `_` in labels of 1..=63 bytes, 253 in all.
fn validate_ascii(s: &str) -> Result<(), NameError> {
    if s.len() > 253 {
        return Err(NameError::TooLong(s.len()));
    }
    if let Some(ch) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')))
    {
        return Err(NameError::ForbiddenChar {
            name: s.to_string(),
            ch,
        });
    }
    let mut last = "";
    for label in s.split('.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel(s.to_string()));
        }
        if label.len() > 63 {
            return Err(NameError::LabelTooLong {
                label: label.to_string(),
                len: label.len(),
            });
        }
        last = label;
    }
    // No top-level domain is numeric; a resolver may treat `foo.0x7f` or `a.123` as an
    // address (WHATWG "ends in a number"), so refuse rather than guess.
    let hex = last
        .strip_prefix("0x")
        .is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit()));
    if hex || last.chars().all(|c| c.is_ascii_digit()) {
        return Err(NameError::NumericLast(s.to_string()));
    }
    Ok(())
}

impl fmt::Display for CanonicalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CanonicalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for CanonicalName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The host part of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Exactly this name.
    Exact(CanonicalName),
    /// `*.suffix`: one or more labels under `suffix`, never `suffix` itself.
    Wildcard(CanonicalName),
}

impl HostPattern {
    /// Parses `example.com` or `*.example.org` (no port).
    pub fn parse(input: &str) -> Result<Self, NameError> {
        if input == "*" || input == "*." {
            return Err(NameError::BareWildcard);
        }
        if let Some(rest) = input.strip_prefix("*.") {
            if rest.contains('*') {
                return Err(NameError::BadWildcard(input.to_string()));
            }
            return Ok(HostPattern::Wildcard(CanonicalName::parse(rest)?));
        }
        if input.contains('*') {
            return Err(NameError::BadWildcard(input.to_string()));
        }
        Ok(HostPattern::Exact(CanonicalName::parse(input)?))
    }

    /// Whether `name` is matched (string operations; the policy uses an index instead).
    pub fn matches(&self, name: &CanonicalName) -> bool {
        match self {
            HostPattern::Exact(h) => h == name,
            HostPattern::Wildcard(suffix) => {
                let (n, s) = (name.as_str(), suffix.as_str());
                n.len() > s.len() + 1
                    && n.ends_with(s)
                    && n.as_bytes()[n.len() - s.len() - 1] == b'.'
            }
        }
    }

    /// Whether every name this pattern matches is also matched by `other`.
    pub fn covered_by(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Exact(n), o) => o.matches(n),
            (HostPattern::Wildcard(_), HostPattern::Exact(_)) => false,
            (HostPattern::Wildcard(a), HostPattern::Wildcard(b)) => {
                a == b || HostPattern::Wildcard(b.clone()).matches(a)
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => write!(f, "{n}"),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// An allow/inspect/passthrough pattern: a host pattern and either the default ports
/// (80 and 443) or one explicit port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    pub host: HostPattern,
    /// `None`: ports 80 and 443 ([`DEFAULT_PORTS`]).
    pub port: Option<u16>,
}

impl Pattern {
    /// Parses `example.com`, `*.example.org`, `db.example.net:5432`.
    pub fn parse(input: &str) -> Result<Self, NameError> {
        if input.is_empty() {
            return Err(NameError::Empty);
        }
        let (host, port) = split_port(input)?;
        Ok(Self {
            host: HostPattern::parse(host)?,
            port,
        })
    }

    /// Whether this pattern covers `port`.
    pub fn covers_port(&self, port: u16) -> bool {
        match self.port {
            Some(p) => p == port,
            None => DEFAULT_PORTS.contains(&port),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

/// Splits `host`, `host:port`, `[v6]`, `[v6]:port`; an unbracketed string with several
/// colons is an IPv6 literal without a port. Returns the host text as written.
fn split_port(input: &str) -> Result<(&str, Option<u16>), NameError> {
    if let Some(rest) = input.strip_prefix('[') {
        let Some(end) = rest.find(']') else {
            return Err(NameError::Brackets(input.to_string()));
        };
        let (host, after) = (&rest[..end], &rest[end + 1..]);
        if after.is_empty() {
            return Ok((host, None));
        }
        let Some(port) = after.strip_prefix(':') else {
            return Err(NameError::Brackets(input.to_string()));
        };
        return Ok((host, Some(parse_port(input, port)?)));
    }
    if input.contains(']') {
        return Err(NameError::Brackets(input.to_string()));
    }
    match input.matches(':').count() {
        0 => Ok((input, None)),
        1 => {
            let (host, port) = input.split_once(':').unwrap_or((input, ""));
            Ok((host, Some(parse_port(input, port)?)))
        }
        _ => Ok((input, None)),
    }
}

fn parse_port(input: &str, port: &str) -> Result<u16, NameError> {
    if port == "*" {
        return Err(NameError::WildcardPort(input.to_string()));
    }
    let bad = || NameError::InvalidPort {
        input: input.to_string(),
        port: port.to_string(),
    };
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(bad()),
    }
}

/// Splits `host[:port]` (brackets for IPv6 allowed) and returns the host text without
/// brackets and the port, `default_port` when none is given. The host is not canonicalised.
pub fn split_host_port(input: &str, default_port: u16) -> Result<(String, u16), NameError> {
    if input.is_empty() {
        return Err(NameError::Empty);
    }
    let (host, port) = split_port(input)?;
    if host.is_empty() {
        return Err(NameError::Empty);
    }
    Ok((host.to_string(), port.unwrap_or(default_port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Result<String, NameError> {
        CanonicalName::parse(s).map(|n| n.as_str().to_string())
    }

    #[test]
    fn canonical_forms() {
        let ok = [
            ("example.com", "example.com"),
            ("EXAMPLE.Com", "example.com"),
            ("example.com.", "example.com"),
            ("ＥＸＡＭＰＬＥ．ｃｏｍ", "example.com"),
            ("example。com", "example.com"),
            ("bücher.example", "xn--bcher-kva.example"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
            ("_dmarc.example.com", "_dmarc.example.com"),
            ("a-b.example", "a-b.example"),
            ("localhost", "localhost"),
            ("1.2.3.4.com", "1.2.3.4.com"),
            ("ex\u{00AD}ample.com", "example.com"), // soft hyphen is ignored by UTS-46
        ];
        for (i, o) in ok {
            assert_eq!(name(i).as_deref(), Ok(o), "{i:?}");
        }
    }

    #[test]
    fn rejected_names() {
        use NameError::*;
        let ip = |s: &str| IpLiteral(s.parse().expect("ip"));
        let cases: Vec<(&str, NameError)> = vec![
            ("", Empty),
            (".", Empty),
            ("127.0.0.1", ip("127.0.0.1")),
            ("127.1", ip("127.0.0.1")),
            ("0x7f000001", ip("127.0.0.1")),
            ("2130706433", ip("127.0.0.1")),
            ("127.0.0.1.", ip("127.0.0.1")),
            ("１２７.０.０.１", ip("127.0.0.1")),
            ("[::1]", ip("::1")),
            ("::1", ip("::1")),
            ("fe80::1%eth0", ip("fe80::1")),
            ("example.com..", EmptyLabel("example.com.".into())),
            ("a..b", EmptyLabel("a..b".into())),
            (".a", EmptyLabel(".a".into())),
            ("1.2.3.4.5", NumericLast("1.2.3.4.5".into())),
            ("foo.0x7f", NumericLast("foo.0x7f".into())),
            ("foo.123", NumericLast("foo.123".into())),
        ];
        for (i, e) in cases {
            assert_eq!(CanonicalName::parse(i), Err(e), "{i:?}");
        }
        for bad in [
            "exa mple.com",
            "example.com\0",
            "example.com\r\nX: y",
            "a\tb",
            "user@example.com",
            "example.com/path",
            "example.com\\x",
            "example.com:443",
            "*.example.com",
            "exa%2ecom",
            "a\u{7f}b",
        ] {
            assert!(
                matches!(
                    CanonicalName::parse(bad),
                    Err(NameError::ForbiddenChar { .. })
                ),
                "{bad:?}: {:?}",
                CanonicalName::parse(bad)
            );
        }
        assert!(matches!(name("xn--a.example"), Err(Idna(_))));
        assert!(matches!(name("xn--zz-"), Err(Idna(_))));
        let long_label = "a".repeat(64);
        assert!(matches!(
            name(&format!("{long_label}.com")),
            Err(LabelTooLong { len: 64, .. })
        ));
        assert!(name(&format!("{}.com", "a".repeat(63))).is_ok());
        let long = vec!["abcdefghi"; 26].join(".");
        assert_eq!(long.len(), 259);
        assert_eq!(name(&long), Err(TooLong(259)));
        let max = format!("{}.{}", vec!["a".repeat(63); 3].join("."), "b".repeat(61));
        assert_eq!(max.len(), 253);
        assert!(name(&max).is_ok());
        assert!(name(&format!("{max}.")).is_ok());
    }

    #[test]
    fn patterns() {
        let p = |s: &str| Pattern::parse(s).map(|p| p.to_string());
        assert_eq!(p("example.com").as_deref(), Ok("example.com"));
        assert_eq!(p("*.EXAMPLE.org.").as_deref(), Ok("*.example.org"));
        assert_eq!(
            p("db.example.net:5432").as_deref(),
            Ok("db.example.net:5432")
        );
        assert_eq!(p("*.example.net:8443").as_deref(), Ok("*.example.net:8443"));
        assert_eq!(
            p("Bücher.example:443").as_deref(),
            Ok("xn--bcher-kva.example:443")
        );
        assert_eq!(Pattern::parse("*"), Err(NameError::BareWildcard));
        assert_eq!(Pattern::parse("*:443"), Err(NameError::BareWildcard));
        assert!(Pattern::parse("*")
            .expect_err("bare")
            .to_string()
            .contains("every name"));
        assert_eq!(
            Pattern::parse("host:*"),
            Err(NameError::WildcardPort("host:*".into()))
        );
        for bad in ["foo*.com", "*example.com", "a.*.com", "*.*.com", "**.com"] {
            assert_eq!(
                Pattern::parse(bad),
                Err(NameError::BadWildcard(bad.into())),
                "{bad}"
            );
        }
        for bad in [
            "host:",
            "host:0",
            "host:65536",
            "host:+1",
            "host:-1",
            "host:44a",
            "host:000443",
        ] {
            assert!(
                matches!(Pattern::parse(bad), Err(NameError::InvalidPort { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            Pattern::parse("10.0.0.1:80"),
            Err(NameError::IpLiteral(_))
        ));
        assert!(matches!(
            Pattern::parse("[::1]:80"),
            Err(NameError::IpLiteral(_))
        ));
        assert_eq!(Pattern::parse(""), Err(NameError::Empty));
        let pat = Pattern::parse("example.com").expect("ok");
        assert!(pat.covers_port(80) && pat.covers_port(443) && !pat.covers_port(8443));
        let pat = Pattern::parse("example.com:8443").expect("ok");
        assert!(!pat.covers_port(443) && pat.covers_port(8443));
    }

    #[test]
    fn wildcard_boundaries() {
        let w = HostPattern::parse("*.example.com").expect("ok");
        let m = |s: &str| w.matches(&CanonicalName::parse(s).expect("name"));
        assert!(m("a.example.com"));
        assert!(m("A.EXAMPLE.COM."));
        assert!(m("a.b.c.example.com"));
        assert!(!m("example.com"));
        assert!(!m("evilexample.com"));
        assert!(!m("example.com.evil"));
        assert!(!m("a.example.co"));
        assert!(!m("xexample.com"));
        let e = HostPattern::parse("example.com").expect("ok");
        assert!(e.matches(&CanonicalName::parse("Example.COM.").expect("n")));
        assert!(!e.matches(&CanonicalName::parse("a.example.com").expect("n")));
        // Coverage, for http rules.
        let hp = |s: &str| HostPattern::parse(s).expect("ok");
        assert!(hp("a.example.com").covered_by(&w));
        assert!(hp("*.a.example.com").covered_by(&w));
        assert!(hp("*.example.com").covered_by(&w));
        assert!(!hp("*.com").covered_by(&w));
        assert!(!hp("example.com").covered_by(&w));
        assert!(!w.covered_by(&hp("a.example.com")));
    }

    #[test]
    fn host_port_splitting() {
        let s = |i: &str| split_host_port(i, 443);
        assert_eq!(s("example.com"), Ok(("example.com".into(), 443)));
        assert_eq!(s("example.com:8080"), Ok(("example.com".into(), 8080)));
        assert_eq!(s("[::1]:80"), Ok(("::1".into(), 80)));
        assert_eq!(s("[::1]"), Ok(("::1".into(), 443)));
        assert_eq!(s("::1"), Ok(("::1".into(), 443)));
        assert_eq!(s("[fe80::1%eth0]:22"), Ok(("fe80::1%eth0".into(), 22)));
        assert!(matches!(s("[::1"), Err(NameError::Brackets(_))));
        assert!(matches!(s("[::1]x"), Err(NameError::Brackets(_))));
        assert!(matches!(s("a]:1"), Err(NameError::Brackets(_))));
        assert!(matches!(
            s("example.com:"),
            Err(NameError::InvalidPort { .. })
        ));
        assert!(matches!(
            s("example.com:99999"),
            Err(NameError::InvalidPort { .. })
        ));
        assert_eq!(s(""), Err(NameError::Empty));
        assert_eq!(s(":80"), Err(NameError::Empty));
        assert_eq!(s("[]:80"), Err(NameError::Empty));
    }
}
