//! The upstream proxy (issue 17 §1): `upstream_proxy = "http://proxy.corp:3128"`, optional
//! `upstream_proxy_auth = { file = "/etc/egress-agent/proxy-auth" }` (`user:password`, sent as
//! `Proxy-Authorization: Basic`) and `no_upstream_proxy = [patterns]` (dialed directly).
//!
//! The decision stays the policy's: the proxy only changes how an allowed connection is
//! dialed (`CONNECT name:port`, the proxy resolves). Its own address is screened like any
//! dialed address: a literal here at parse time, a name at dial time.

use std::fmt::{self, Write as _};
use std::io;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use toml::Spanned;

use super::{CanonicalName, NameError, Pattern, Secret, SecretSource};
use crate::addr::{AddrPolicy, Verdict};

/// The proxy's host: a name (resolved by the agent's resolver when dialing) or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyHost {
    Name(CanonicalName),
    Ip(IpAddr),
}

impl fmt::Display for ProxyHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyHost::Name(n) => write!(f, "{n}"),
            ProxyHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            ProxyHost::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A validated `upstream_proxy` with its credentials file and exceptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamProxy {
    host: ProxyHost,
    port: u16,
    /// Always a file: `upstream_proxy_auth = { file = … }`.
    auth: Option<SecretSource>,
    bypass: Vec<Pattern>,
}

/// How an allowed connection is dialed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// No proxy configured: resolved, screened and dialed by the agent.
    Direct,
    /// Direct because `no_upstream_proxy[index]` matches.
    Bypass(usize, &'a Pattern),
    /// `CONNECT name:port` through the proxy.
    Proxy(&'a UpstreamProxy),
}

impl UpstreamProxy {
    pub fn host(&self) -> &ProxyHost {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://host:port`, as `policy show` prints it.
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    /// The credentials file, if any (a secret the sandbox must never read).
    pub fn auth_file(&self) -> Option<&Path> {
        match &self.auth {
            Some(SecretSource::File(f)) => Some(f),
            _ => None,
        }
    }

    /// The credentials file as a secret source.
    pub fn auth_source(&self) -> Option<&SecretSource> {
        self.auth.as_ref()
    }

    pub fn bypass(&self) -> &[Pattern] {
        &self.bypass
    }

    /// The `Proxy-Authorization` value, read from the file now (at dial time, so a rotated
    /// password needs no reload). Never logged: the error names the file, not its content.
    pub fn authorization(&self) -> io::Result<Option<Secret>> {
        let Some(source) = &self.auth else {
            return Ok(None);
        };
        let creds = source.resolve()?;
        match creds.expose().split_once(':') {
            Some((user, _)) if !user.is_empty() => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{source} does not hold `user:password`"),
                ))
            }
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(creds.expose());
        Ok(Some(Secret(format!("Basic {b64}"))))
    }

    /// The route of `name:port`: direct when a `no_upstream_proxy` pattern matches (a
    /// pattern without a port matches every port, as `NO_PROXY` does), else the proxy.
    pub fn route(&self, name: &CanonicalName, port: u16) -> Route<'_> {
        match self
            .bypass
            .iter()
            .enumerate()
            .find(|(_, p)| p.host.matches(name) && p.port.is_none_or(|q| q == port))
        {
            Some((i, p)) => Route::Bypass(i, p),
            None => Route::Proxy(self),
        }
    }
}

/// The raw keys, as deserialised by `parse.rs`.
pub(super) struct RawUpstream<'a> {
    pub url: Option<&'a Spanned<String>>,
    pub auth: Option<&'a Spanned<RawProxyAuth>>,
    pub bypass: &'a [Spanned<String>],
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxyAuth {
    file: Spanned<String>,
}

/// What is wrong with one of the keys, and where (`parse.rs` makes the one-line error).
pub(super) struct Invalid {
    pub span: Range<usize>,
    pub key: String,
    pub message: String,
}

fn invalid(span: Range<usize>, key: &str, message: impl Into<String>) -> Invalid {
    Invalid {
        span,
        key: key.to_string(),
        message: message.into(),
    }
}

/// Validates the three keys together (`addr` screens a literal proxy address).
pub(super) fn build(
    raw: RawUpstream<'_>,
    addr: &AddrPolicy,
) -> Result<Option<UpstreamProxy>, Invalid> {
    let Some(url) = raw.url else {
        if let Some(a) = raw.auth {
            return Err(invalid(
                a.span(),
                "upstream_proxy_auth",
                "credentials without `upstream_proxy`: set the proxy they are for",
            ));
        }
        if let Some(b) = raw.bypass.first() {
            return Err(invalid(
                b.span(),
                "no_upstream_proxy[0]",
                "exceptions without `upstream_proxy`: every connection is already direct",
            ));
        }
        return Ok(None);
    };
    let (host, port) =
        parse_url(url.get_ref()).map_err(|m| invalid(url.span(), "upstream_proxy", m))?;
    if let ProxyHost::Ip(ip) = host {
        if let Verdict::Denied { reason, .. } = addr.classify(ip) {
            return Err(invalid(
                url.span(),
                "upstream_proxy",
                format!("{ip} is in the deny set ({reason}): exempt it with allow_ranges"),
            ));
        }
    }
    let auth = match raw.auth {
        None => None,
        Some(a) => {
            let f = &a.get_ref().file;
            let p = PathBuf::from(f.get_ref());
            if !p.is_absolute() {
                return Err(invalid(
                    f.span(),
                    "upstream_proxy_auth.file",
                    format!("{:?} must be an absolute path", f.get_ref()),
                ));
            }
            Some(SecretSource::File(p))
        }
    };
    let mut bypass: Vec<Pattern> = Vec::with_capacity(raw.bypass.len());
    for (i, s) in raw.bypass.iter().enumerate() {
        let key = format!("no_upstream_proxy[{i}]");
        let p = Pattern::parse(s.get_ref()).map_err(|e| invalid(s.span(), &key, name_err(&e)))?;
        if let Some(j) = bypass.iter().position(|q| *q == p) {
            return Err(invalid(
                s.span(),
                &key,
                format!("\"{p}\" is listed twice (also `no_upstream_proxy[{j}]`)"),
            ));
        }
        bypass.push(p);
    }
    Ok(Some(UpstreamProxy {
        host,
        port,
        auth,
        bypass,
    }))
}

fn name_err(e: &NameError) -> String {
    match e {
        NameError::IpLiteral(ip) => {
            format!("{ip} is an IP address: patterns name hosts, as in `allow`")
        }
        other => other.to_string(),
    }
}

/// `http://host[:port][/]`: an address or a name, port 80 by default.
fn parse_url(s: &str) -> Result<(ProxyHost, u16), String> {
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(format!(
            "{s:?} is not a URL: expected http://HOST:PORT, e.g. http://proxy.corp:3128"
        ));
    };
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(format!(
            "scheme {scheme:?}: only http:// proxies are supported (CONNECT over plain TCP)"
        ));
    }
    if rest.contains('@') {
        return Err("credentials do not belong in the URL (`policy show` prints it): put `user:password` in a file named by upstream_proxy_auth".into());
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#']) {
        return Err(format!("{s:?}: a proxy URL has no path, query or fragment"));
    }
    let (host, port) = super::split_host_port(rest, 80).map_err(|e| format!("{s:?}: {e}"))?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((ProxyHost::Ip(ip), port));
    }
    match CanonicalName::parse(&host) {
        Ok(n) => Ok((ProxyHost::Name(n), port)),
        Err(NameError::IpLiteral(ip)) => Err(format!(
            "{host:?} is a non-canonical spelling of {ip}: write {ip}"
        )),
        Err(e) => Err(format!("{s:?}: {e}")),
    }
}

/// The keys as `policy show` prints them (re-parsed to the same proxy).
pub(super) fn show(o: &mut String, p: &UpstreamProxy) {
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    let _ = writeln!(o, "upstream_proxy = {}", q(&p.url()));
    if let Some(f) = p.auth_file() {
        let _ = writeln!(
            o,
            "upstream_proxy_auth = {{ file = {} }}",
            q(&f.display().to_string())
        );
    }
    if !p.bypass.is_empty() {
        let items: Vec<String> = p.bypass.iter().map(|b| q(&b.to_string())).collect();
        let _ = writeln!(o, "no_upstream_proxy = [{}]", items.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let ok = [
            ("http://proxy.corp:3128", "http://proxy.corp:3128"),
            ("HTTP://Proxy.Corp:3128/", "http://proxy.corp:3128"),
            ("http://proxy.corp", "http://proxy.corp:80"),
            ("http://203.0.113.7:8080", "http://203.0.113.7:8080"),
            ("http://[2001:db8::7]:3128", "http://[2001:db8::7]:3128"),
        ];
        for (s, want) in ok {
            let (host, port) = parse_url(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            let p = UpstreamProxy {
                host,
                port,
                auth: None,
                bypass: vec![],
            };
            assert_eq!(p.url(), want);
        }
        let bad = [
            ("proxy.corp:3128", "not a URL"),
            ("https://proxy.corp:3128", "only http://"),
            ("socks5://proxy.corp:1080", "only http://"),
            ("http://user:pw@proxy.corp:3128", "upstream_proxy_auth"),
            ("http://proxy.corp:3128/path", "no path"),
            ("http://proxy.corp:0", "invalid port \"0\""),
            ("http://proxy.corp:99999", "99999"),
            ("http://0x7f.1:3128", "non-canonical spelling of 127.0.0.1"),
            ("http://exa mple:3128", "exa mple"),
            ("http://:3128", "empty"),
        ];
        for (s, why) in bad {
            let e = parse_url(s).expect_err(s);
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    fn n(s: &str) -> CanonicalName {
        CanonicalName::parse(s).expect("name")
    }

    #[test]
    fn routes_and_credentials() {
        let dir = std::env::temp_dir().join(format!("egress-proxy-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("auth");
        let p = UpstreamProxy {
            host: ProxyHost::Name(n("proxy.corp")),
            port: 3128,
            auth: Some(SecretSource::File(file.clone())),
            bypass: vec![
                Pattern::parse("*.internal.corp").expect("p"),
                Pattern::parse("db.corp:5432").expect("p"),
            ],
        };
        assert!(matches!(
            p.route(&n("a.internal.corp"), 8443),
            Route::Bypass(0, _)
        ));
        assert!(matches!(p.route(&n("internal.corp"), 443), Route::Proxy(_)));
        assert!(matches!(p.route(&n("db.corp"), 5432), Route::Bypass(1, _)));
        assert!(matches!(p.route(&n("db.corp"), 443), Route::Proxy(_)));
        assert!(p.authorization().is_err(), "missing file");
        std::fs::write(&file, "alice:s3cr3t:with:colons\n").expect("write");
        let v = p.authorization().expect("read").expect("some");
        // base64("alice:s3cr3t:with:colons")
        assert_eq!(v.expose(), "Basic YWxpY2U6czNjcjN0OndpdGg6Y29sb25z");
        assert_eq!(format!("{v:?}"), "Secret(<redacted>)");
        for bad in ["no-colon", ":nouser", "a:b\r\nX: y"] {
            std::fs::write(&file, bad).expect("write");
            let e = p.authorization().expect_err(bad).to_string();
            assert!(!e.contains("nouser") && !e.contains("no-colon"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
