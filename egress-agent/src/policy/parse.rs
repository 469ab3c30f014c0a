//! The policy file (TOML) and its rendering back (`policy show`).
//!
//! ```toml
//! version = "2026-11-22.1"          # optional label reported as "policy" in denials
//! mode = "enforce"                  # or "monitor" (report, do not deny)
//! resolver = "203.0.113.53:53"      # optional; default: first nameserver of /etc/resolv.conf
//! allow_ranges = ["203.0.113.0/24"] # exemptions from the deny set (never metadata, loopback)
//! upstream_ca = "/path/ca.pem"      # optional extra CA for inspected upstreams
//! dns_deny = "explain"              # or "nxdomain": how the sandbox's DNS answers a denied name
//! upstream_proxy = "http://proxy.corp:3128"                 # optional; see `proxy.rs`
//! upstream_proxy_auth = { file = "/etc/egress-agent/proxy" } # `user:password`
//! no_upstream_proxy = ["*.internal.corp"]                   # dialed directly
//! ask_max_pending = 1024            # decisions pending at once (ask mode), agent-wide
//!
//! [profile.default]
//! mode = "ask"                      # or "enforce" (default): hold what is denied for a decision
//! ask_timeout = "30s"               # how long (1s to 10m); then the normal denial
//! local = ["otel-collector:4317 -> 127.0.0.1:4317"]  # a name for one service on the host
//!                                   # (`-> sandbox:ADDR:PORT`: in the sandbox's own netns)
//! allow = ["example.com", "*.example.org", "db.example.net:5432"]  # no port = 80 and 443
//! inspect = ["api.example.com"]          # TLS-inspect (implies allow)
//! passthrough = ["pinned.example.com"]   # allowed, never intercepted, even if inspect matches
//!
//! allow_revocation = true                # the OCSP/CRL/CA-issuers URLs in inspected hosts' chains
//!
//! [[profile.default.http]]               # per-request rules of an inspected host
//! host = "api.example.com"               # name or *.suffix, no port; must be in inspect
//! methods = ["GET", "POST"]              # optional, default any
//! paths = ["/v1/*", "/health"]           # optional: `*` = any chars but `/`, `**` = any
//! inject = { header = "Authorization", env = "API_TOKEN" }  # or file = "/abs/path"
//! ```
//!
//! Unknown keys are errors. Every error names its place: `FILE:LINE:COL: key `K`: what`.
//! Values validated after deserialising are `Spanned` so they name their own line.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{
    DnsDeny, HostPattern, HttpRule, Inject, Mode, NameError, PathGlob, Pattern, Policy,
    PolicyError, Profile, Rule, RuleKind, RuleRef, SecretSource,
};
use crate::addr::{AddrError, AddrPolicy};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    resolver: Option<Spanned<String>>,
    #[serde(default)]
    allow_ranges: Vec<Spanned<String>>,
    upstream_ca: Option<Spanned<String>>,
    dns_deny: Option<Spanned<String>>,
    // The upstream proxy: validated and shown by `proxy.rs`.
    upstream_proxy: Option<Spanned<String>>,
    upstream_proxy_auth: Option<Spanned<super::proxy::RawProxyAuth>>,
    #[serde(default)]
    no_upstream_proxy: Vec<Spanned<String>>,
    ask_max_pending: Option<Spanned<i64>>,
    #[serde(default)]
    profile: BTreeMap<String, Spanned<RawProfile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    mode: Option<Spanned<String>>,
    ask_timeout: Option<Spanned<String>>,
    #[serde(default)]
    local: Vec<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    inspect: Vec<Spanned<String>>,
    #[serde(default)]
    passthrough: Vec<Spanned<String>>,
    #[serde(default)]
    http: Vec<Spanned<RawHttp>>,
    /// See `crate::revocation`.
    allow_revocation: Option<Spanned<bool>>,
    /// See `budget.rs`.
    #[serde(default)]
    budget: Vec<Spanned<super::budget::RawBudget>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    host: Spanned<String>,
    methods: Option<Spanned<Vec<Spanned<String>>>>,
    paths: Option<Spanned<Vec<Spanned<String>>>>,
    inject: Option<Spanned<RawInject>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInject {
    header: Spanned<String>,
    env: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
}

struct Ctx<'a> {
    src: &'a str,
    origin: &'a str,
}

impl Ctx<'_> {
    fn pos(&self, offset: usize) -> (usize, usize) {
        line_col(self.src, offset)
    }

    fn err(&self, span: Range<usize>, key: &str, message: impl fmt::Display) -> PolicyError {
        let (line, col) = self.pos(span.start);
        PolicyError::Invalid {
            origin: self.origin.to_string(),
            line,
            col,
            key: key.to_string(),
            message: one_line(&message.to_string()),
        }
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        self.pos(span.start).0
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(src.len());
    while !src.is_char_boundary(end) {
        end -= 1;
    }
    let before = &src[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// FNV-1a, 64 bit: the default policy label (no crypto crate needed to tell files apart).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A key segment, quoted when it is not a bare TOML key.
fn seg(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

/// The dotted key of the deepest key or value whose span holds `offset`. Table spans of
/// `[header]` tables do not cover their bodies, so every node is visited.
fn key_at(doc: &DeTable<'_>, offset: usize) -> Option<String> {
    fn table(
        t: &DeTable<'_>,
        off: usize,
        path: &str,
        depth: usize,
        best: &mut Option<(usize, String)>,
    ) {
        for (k, v) in t.iter() {
            let p = if path.is_empty() {
                seg(k.get_ref())
            } else {
                format!("{path}.{}", seg(k.get_ref()))
            };
            if k.span().contains(&off) || v.span().contains(&off) {
                record(best, depth, &p);
            }
            value(v.get_ref(), off, &p, depth + 1, best);
        }
    }
    fn value(
        v: &DeValue<'_>,
        off: usize,
        path: &str,
        depth: usize,
        best: &mut Option<(usize, String)>,
    ) {
        match v {
            DeValue::Table(t) => table(t, off, path, depth, best),
            DeValue::Array(a) => {
                for (i, item) in a.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    if item.span().contains(&off) {
                        record(best, depth, &p);
                    }
                    value(item.get_ref(), off, &p, depth + 1, best);
                }
            }
            _ => {}
        }
    }
    fn record(best: &mut Option<(usize, String)>, depth: usize, p: &str) {
        if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
            *best = Some((depth, p.to_string()));
        }
    }
    let mut best = None;
    table(doc, offset, "", 0, &mut best);
    best.map(|(_, p)| p)
}

pub(super) fn parse(src: &str, origin: &str) -> Result<Policy, PolicyError> {
    let ctx = Ctx { src, origin };
    let doc = DeTable::parse(src).map_err(|e| {
        let (line, col) = ctx.pos(e.span().map_or(0, |s| s.start));
        PolicyError::Syntax {
            origin: origin.to_string(),
            line,
            col,
            message: format!("invalid TOML: {}", one_line(e.message())),
        }
    })?;
    let raw: RawPolicy = toml::from_str(src).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let message = one_line(e.message());
        match key_at(doc.get_ref(), span.start) {
            Some(key) => ctx.err(span, &key, message),
            None => {
                let (line, col) = ctx.pos(span.start);
                PolicyError::Syntax {
                    origin: origin.to_string(),
                    line,
                    col,
                    message,
                }
            }
        }
    })?;
    build(
        &ctx,
        raw,
        format!("fnv1a64:{:016x}", fnv1a64(src.as_bytes())),
    )
}

fn build(ctx: &Ctx<'_>, raw: RawPolicy, default_version: String) -> Result<Policy, PolicyError> {
    let (version, version_explicit) = match &raw.version {
        Some(v) => {
            let s = v.get_ref();
            if s.is_empty() || s.len() > 64 || !s.chars().all(|c| (' '..='~').contains(&c)) {
                return Err(ctx.err(
                    v.span(),
                    "version",
                    "expected 1 to 64 printable ASCII characters",
                ));
            }
            (s.clone(), true)
        }
        None => (default_version, false),
    };
    let mode = match &raw.mode {
        None => Mode::Enforce,
        Some(m) => match m.get_ref().as_str() {
            "enforce" => Mode::Enforce,
            "monitor" => Mode::Monitor,
            other => {
                return Err(ctx.err(
                    m.span(),
                    "mode",
                    format!("unknown mode {other:?}: expected \"enforce\" or \"monitor\""),
                ))
            }
        },
    };
    let dns_deny = match &raw.dns_deny {
        None => DnsDeny::default(),
        Some(d) => DnsDeny::parse(d.get_ref()).ok_or_else(|| {
            ctx.err(
                d.span(),
                "dns_deny",
                format!(
                    "unknown value {:?}: expected \"explain\" or \"nxdomain\"",
                    d.get_ref()
                ),
            )
        })?,
    };
    let resolver = match &raw.resolver {
        None => None,
        Some(r) => Some(parse_resolver(r.get_ref()).ok_or_else(|| {
            ctx.err(
                r.span(),
                "resolver",
                format!(
                    "invalid resolver {:?}: expected an address with optional port, e.g. 203.0.113.53:53 or [2001:db8::53]:53",
                    r.get_ref()
                ),
            )
        })?),
    };
    let mut nets = Vec::with_capacity(raw.allow_ranges.len());
    for (i, r) in raw.allow_ranges.iter().enumerate() {
        let net = AddrPolicy::new([r.get_ref()])
            .map_err(|e: AddrError| ctx.err(r.span(), &format!("allow_ranges[{i}]"), e))?;
        nets.extend_from_slice(net.exempt_nets());
    }
    let addr = AddrPolicy::from_nets(nets);
    let upstream_ca = match &raw.upstream_ca {
        None => None,
        Some(p) if p.get_ref().is_empty() => {
            return Err(ctx.err(p.span(), "upstream_ca", "empty path"));
        }
        Some(p) => Some(PathBuf::from(p.get_ref())),
    };
    let upstream_proxy = super::proxy::build(
        super::proxy::RawUpstream {
            url: raw.upstream_proxy.as_ref(),
            auth: raw.upstream_proxy_auth.as_ref(),
            bypass: &raw.no_upstream_proxy,
        },
        &addr,
    )
    .map_err(|e| ctx.err(e.span, &e.key, e.message))?;
    let mut profiles = BTreeMap::new();
    for (name, prof) in &raw.profile {
        let key = format!("profile.{}", seg(name));
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ctx.err(
                prof.span(),
                &key,
                "profile names are 1 to 64 letters, digits, `_` or `-`",
            ));
        }
        let mut built = build_profile(ctx, name, prof.get_ref())?;
        built.ask = ask_of(ctx, name, prof.get_ref(), mode)?;
        built.local = locals_of(ctx, name, prof.get_ref(), &built.rules)?;
        built.budgets = budgets_of(ctx, name, prof.get_ref(), &built)?;
        profiles.insert(name.clone(), built);
    }
    let ask_max_pending = ask_max_pending(ctx, raw.ask_max_pending.as_ref())?;
    Ok(Policy {
        origin: ctx.origin.to_string(),
        version,
        version_explicit,
        mode,
        dns_deny,
        resolver,
        addr,
        upstream_ca,
        upstream_proxy,
        ask_max_pending,
        profiles,
    })
}

/// `mode` and `ask_timeout` of a profile: `Some(timeout)` for `mode = "ask"`.
fn ask_of(
    ctx: &Ctx<'_>,
    name: &str,
    raw: &RawProfile,
    global: Mode,
) -> Result<Option<std::time::Duration>, PolicyError> {
    let key = |k: &str| format!("profile.{name}.{k}");
    let asks = match &raw.mode {
        None => false,
        Some(m) => match m.get_ref().as_str() {
            "enforce" => false,
            "ask" if global == Mode::Monitor => {
                return Err(ctx.err(
                    m.span(),
                    &key("mode"),
                    "\"ask\" has no effect under the top-level mode = \"monitor\" (nothing is denied there)",
                ))
            }
            "ask" => true,
            other => {
                return Err(ctx.err(
                    m.span(),
                    &key("mode"),
                    format!("unknown profile mode {other:?}: expected \"enforce\" or \"ask\""),
                ))
            }
        },
    };
    let timeout = match &raw.ask_timeout {
        None => super::DEFAULT_ASK_TIMEOUT,
        Some(t) if !asks => {
            return Err(ctx.err(
                t.span(),
                &key("ask_timeout"),
                "ask_timeout applies only with mode = \"ask\" in this profile",
            ))
        }
        Some(t) => {
            parse_ask_timeout(t.get_ref()).map_err(|e| ctx.err(t.span(), &key("ask_timeout"), e))?
        }
    };
    Ok(asks.then_some(timeout))
}

fn parse_ask_timeout(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration such as \"30s\" or \"2m\": {e}"))?;
    let range = std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(600);
    if !range.contains(&d) {
        return Err(format!("{s:?}: expected 1s to 10m"));
    }
    Ok(d)
}

fn ask_max_pending(
    ctx: &Ctx<'_>,
    raw: Option<&Spanned<i64>>,
) -> Result<Option<usize>, PolicyError> {
    let Some(n) = raw else { return Ok(None) };
    match usize::try_from(*n.get_ref()) {
        Ok(v) if (1..=65_536).contains(&v) => Ok(Some(v)),
        _ => Err(ctx.err(
            n.span(),
            "ask_max_pending",
            format!("{} is out of range: expected 1 to 65536", n.get_ref()),
        )),
    }
}

/// The profile's `local` entries, each checked on its own and against the profile's rules.
fn locals_of(
    ctx: &Ctx<'_>,
    name: &str,
    raw: &RawProfile,
    rules: &[Rule],
) -> Result<Vec<super::LocalService>, PolicyError> {
    let mut out: Vec<super::LocalService> = Vec::new();
    for (i, s) in raw.local.iter().enumerate() {
        let key = format!("profile.{name}.local[{i}]");
        let svc = super::local::parse(s.get_ref(), RuleRef::new(key.clone()))
            .map_err(|e| ctx.err(s.span(), &key, e))?;
        if let Some(why) = super::local::conflict(&svc, rules.iter().map(|r| (&r.pattern, &r.id))) {
            return Err(ctx.err(s.span(), &key, why));
        }
        if let Some(prev) = out.iter().find(|o| o.name == svc.name) {
            return Err(ctx.err(
                s.span(),
                &key,
                format!(
                    "\"{}\" is already a local service (`{}`): one name, one service",
                    svc.name, prev.rule
                ),
            ));
        }
        out.push(svc);
    }
    Ok(out)
}

/// The profile's budgets, each checked on its own; one per host pattern.
fn budgets_of(
    ctx: &Ctx<'_>,
    name: &str,
    raw: &RawProfile,
    prof: &Profile,
) -> Result<Vec<std::sync::Arc<super::budget::Budget>>, PolicyError> {
    let reachable = |h: &HostPattern| {
        prof.rules
            .iter()
            .any(|r| h.covered_by(&r.pattern.host) || r.pattern.host.covered_by(h))
            || prof.local.iter().any(|l| h.matches(&l.name))
    };
    let mut out: Vec<std::sync::Arc<super::budget::Budget>> = Vec::new();
    for (i, b) in raw.budget.iter().enumerate() {
        let built = super::budget::build(name, i, b, reachable)
            .map_err(|e| ctx.err(e.span, &e.key, e.message))?;
        if let Some(prev) = out.iter().find(|o| o.host == built.host) {
            return Err(ctx.err(
                b.span(),
                built.id.as_str(),
                format!(
                    "{} already has a budget for \"{}\": one budget per host pattern, merge them",
                    prev.id,
                    built.key()
                ),
            ));
        }
        out.push(std::sync::Arc::new(built));
    }
    Ok(out)
}

fn parse_resolver(s: &str) -> Option<SocketAddr> {
    let sa = match s.parse::<SocketAddr>() {
        Ok(sa) => sa,
        Err(_) => SocketAddr::new(s.parse::<IpAddr>().ok()?, 53),
    };
    (sa.port() != 0).then_some(sa)
}

fn name_err(e: &NameError) -> String {
    match e {
        NameError::IpLiteral(ip) => {
            format!(
                "{ip} is an IP address: patterns name hosts (exempt addresses with allow_ranges)"
            )
        }
        other => other.to_string(),
    }
}

fn build_profile(ctx: &Ctx<'_>, name: &str, raw: &RawProfile) -> Result<Profile, PolicyError> {
    let mut rules: Vec<Rule> = Vec::new();
    // (pattern, key, span) for conflict messages.
    let mut seen: Vec<(RuleKind, Pattern, String, Range<usize>)> = Vec::new();
    for (kind, list) in [
        (RuleKind::Allow, &raw.allow),
        (RuleKind::Inspect, &raw.inspect),
        (RuleKind::Passthrough, &raw.passthrough),
    ] {
        for (i, s) in list.iter().enumerate() {
            let key = format!("profile.{name}.{}[{i}]", kind.key());
            let pattern =
                Pattern::parse(s.get_ref()).map_err(|e| ctx.err(s.span(), &key, name_err(&e)))?;
            for (k2, p2, key2, span2) in &seen {
                if *k2 == kind && *p2 == pattern {
                    return Err(ctx.err(
                        s.span(),
                        &key,
                        format!(
                            "\"{pattern}\" is listed twice (also `{key2}`, line {})",
                            ctx.line_of(span2)
                        ),
                    ));
                }
                let pair = [*k2, kind];
                if pair.contains(&RuleKind::Inspect)
                    && pair.contains(&RuleKind::Passthrough)
                    && p2.host == pattern.host
                {
                    return Err(ctx.err(
                        s.span(),
                        &key,
                        format!(
                            "\"{}\" is both in `{key2}` (line {}) and `{key}`: a host is either inspected or passed through, remove one",
                            pattern.host,
                            ctx.line_of(span2)
                        ),
                    ));
                }
            }
            seen.push((kind, pattern.clone(), key.clone(), s.span()));
            rules.push(Rule {
                kind,
                pattern,
                id: RuleRef::new(key),
            });
        }
    }
    let mut http = Vec::new();
    for (i, h) in raw.http.iter().enumerate() {
        http.push(build_http(ctx, name, i, h.get_ref(), &rules)?);
    }
    let mut profile = Profile::new(rules, http);
    if let Some(on) = &raw.allow_revocation {
        if *on.get_ref() && profile.patterns(RuleKind::Inspect).next().is_none() {
            return Err(ctx.err(
                on.span(),
                &format!("profile.{name}.allow_revocation"),
                "revocation URLs are learned from the certificates of inspected hosts, and this profile inspects none: add hosts to `inspect` or remove the key",
            ));
        }
        profile.allow_revocation = *on.get_ref();
    }
    Ok(profile)
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Headers the agent must own: framing, routing and hop-by-hop.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
];

fn build_http(
    ctx: &Ctx<'_>,
    profile: &str,
    i: usize,
    raw: &RawHttp,
    rules: &[Rule],
) -> Result<HttpRule, PolicyError> {
    let base = format!("profile.{profile}.http[{i}]");
    let hkey = format!("{base}.host");
    let h = raw.host.get_ref();
    if h.contains(':') && !h.starts_with('[') {
        return Err(ctx.err(
            raw.host.span(),
            &hkey,
            format!("{h:?}: http rules apply to every port of a host, remove the port"),
        ));
    }
    let host = HostPattern::parse(h).map_err(|e| ctx.err(raw.host.span(), &hkey, name_err(&e)))?;
    let covering = |kind: RuleKind| {
        rules
            .iter()
            .find(|r| r.kind == kind && host.covered_by(&r.pattern.host))
    };
    let allowed = rules.iter().any(|r| host.covered_by(&r.pattern.host));
    if !allowed {
        return Err(ctx.err(
            raw.host.span(),
            &hkey,
            format!("http rule for \"{host}\", which [profile.{profile}] does not allow: add it to inspect"),
        ));
    }
    // A passthrough pattern matching the name wins over inspect: the rules could never apply.
    // (A passthrough carve-out inside a wildcard rule is fine: the others are inspected.)
    let pass = covering(RuleKind::Passthrough);
    if let Some(p) = pass {
        return Err(ctx.err(
            raw.host.span(),
            &hkey,
            format!(
                "\"{host}\" is passed through by `{}` (never intercepted), so http rules cannot apply",
                p.id
            ),
        ));
    }
    if covering(RuleKind::Inspect).is_none() {
        return Err(ctx.err(
            raw.host.span(),
            &hkey,
            format!("\"{host}\" is allowed but not inspected, so HTTPS would bypass these rules: add it to [profile.{profile}] inspect"),
        ));
    }
    let methods = match &raw.methods {
        None => None,
        Some(list) => {
            if list.get_ref().is_empty() {
                return Err(ctx.err(
                    list.span(),
                    &format!("{base}.methods"),
                    "an empty list would refuse every request: remove the key to allow any method",
                ));
            }
            let mut out = Vec::new();
            for (j, m) in list.get_ref().iter().enumerate() {
                let s = m.get_ref();
                if s.is_empty() || s.len() > 32 || !s.chars().all(is_tchar) {
                    return Err(ctx.err(
                        m.span(),
                        &format!("{base}.methods[{j}]"),
                        format!("{s:?} is not an HTTP method"),
                    ));
                }
                out.push(s.to_ascii_uppercase());
            }
            Some(out)
        }
    };
    let paths = match &raw.paths {
        None => None,
        Some(list) => {
            if list.get_ref().is_empty() {
                return Err(ctx.err(
                    list.span(),
                    &format!("{base}.paths"),
                    "an empty list would refuse every request: remove the key to allow any path",
                ));
            }
            let mut out = Vec::new();
            for (j, p) in list.get_ref().iter().enumerate() {
                out.push(
                    PathGlob::parse(p.get_ref())
                        .map_err(|e| ctx.err(p.span(), &format!("{base}.paths[{j}]"), e))?,
                );
            }
            Some(out)
        }
    };
    let inject = match &raw.inject {
        None => None,
        Some(inj) => Some(build_inject(ctx, &format!("{base}.inject"), inj)?),
    };
    Ok(HttpRule {
        host,
        methods,
        paths,
        inject,
        id: RuleRef::new(base),
    })
}

fn build_inject(ctx: &Ctx<'_>, key: &str, inj: &Spanned<RawInject>) -> Result<Inject, PolicyError> {
    let raw = inj.get_ref();
    let header = raw.header.get_ref();
    if header.is_empty() || !header.chars().all(is_tchar) {
        return Err(ctx.err(
            raw.header.span(),
            &format!("{key}.header"),
            format!("{header:?} is not a header name"),
        ));
    }
    let lower = header.to_ascii_lowercase();
    if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("proxy-") {
        return Err(ctx.err(
            raw.header.span(),
            &format!("{key}.header"),
            format!("{header:?} is managed by the agent and cannot be injected"),
        ));
    }
    let source = match (&raw.env, &raw.file) {
        (Some(e), None) => {
            let n = e.get_ref();
            if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ctx.err(
                    e.span(),
                    &format!("{key}.env"),
                    format!("{n:?} is not an environment variable name"),
                ));
            }
            SecretSource::Env(n.clone())
        }
        (None, Some(f)) => {
            let p = PathBuf::from(f.get_ref());
            if !p.is_absolute() {
                return Err(ctx.err(
                    f.span(),
                    &format!("{key}.file"),
                    format!("{:?} must be an absolute path", f.get_ref()),
                ));
            }
            SecretSource::File(p)
        }
        _ => {
            return Err(ctx.err(
                inj.span(),
                key,
                "give exactly one of `env` or `file` as the credential's source",
            ))
        }
    };
    Ok(Inject {
        header: header.clone(),
        source,
    })
}

pub(super) fn from_allow_list(patterns: &[String]) -> Result<Policy, PolicyError> {
    let mut allow = Vec::new();
    let mut joined = String::new();
    for p in patterns {
        // Check each one here so the error names the flag, not a synthetic file.
        Pattern::parse(p).map_err(|e| PolicyError::Arg {
            flag: "--allow".to_string(),
            value: p.clone(),
            message: name_err(&e),
        })?;
        allow.push(Spanned::new(0..0, p.clone()));
        joined.push_str(p);
        joined.push('\n');
    }
    let mut profile = BTreeMap::new();
    profile.insert(
        "default".to_string(),
        Spanned::new(
            0..0,
            RawProfile {
                mode: None,
                ask_timeout: None,
                local: Vec::new(),
                allow,
                inspect: Vec::new(),
                passthrough: Vec::new(),
                http: Vec::new(),
                allow_revocation: None,
                budget: Vec::new(),
            },
        ),
    );
    let raw = RawPolicy {
        profile,
        ..RawPolicy::default()
    };
    let ctx = Ctx {
        src: "",
        origin: "--allow",
    };
    build(
        &ctx,
        raw,
        format!("cli:fnv1a64:{:016x}", fnv1a64(joined.as_bytes())),
    )
}

fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn list<T: fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let v: Vec<String> = items.map(|i| q(&i.to_string())).collect();
    format!("[{}]", v.join(", "))
}

pub(super) fn show(p: &Policy) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# effective policy from {}", p.origin);
    if p.version_explicit {
        let _ = writeln!(o, "version = {}", q(&p.version));
    } else {
        let _ = writeln!(o, "# version (default, hash of the file): {}", p.version);
    }
    let _ = writeln!(o, "mode = {}", q(p.mode.as_str()));
    let _ = writeln!(o, "dns_deny = {}", q(p.dns_deny.as_str()));
    match p.resolver {
        Some(r) => {
            let _ = writeln!(o, "resolver = {}", q(&r.to_string()));
        }
        None => {
            let _ = writeln!(o, "# resolver: first nameserver of /etc/resolv.conf");
        }
    }
    let nets = p.addr.exempt_nets();
    if !nets.is_empty() {
        let _ = writeln!(o, "allow_ranges = {}", list(nets.iter()));
    }
    if let Some(ca) = &p.upstream_ca {
        let _ = writeln!(o, "upstream_ca = {}", q(&ca.display().to_string()));
    }
    if let Some(proxy) = &p.upstream_proxy {
        super::proxy::show(&mut o, proxy);
    }
    if p.profiles.values().any(|pr| pr.ask.is_some()) || p.ask_max_pending.is_some() {
        let _ = writeln!(o, "ask_max_pending = {}", p.ask_max_pending());
    }
    for (name, prof) in &p.profiles {
        let _ = writeln!(o, "\n[profile.{name}]");
        if let Some(t) = prof.ask {
            let _ = writeln!(o, "mode = \"ask\"");
            let _ = writeln!(
                o,
                "ask_timeout = {}",
                q(&humantime::format_duration(t).to_string())
            );
        }
        if !prof.local.is_empty() {
            let _ = writeln!(
                o,
                "# local services: the agent's DNS answers each name with {}; the agent dials the target",
                crate::SERVICE_NAME
            );
            let _ = writeln!(o, "local = {}", list(prof.local.iter()));
        }
        for kind in [RuleKind::Allow, RuleKind::Inspect, RuleKind::Passthrough] {
            if prof.patterns(kind).next().is_some() {
                let _ = writeln!(o, "{} = {}", kind.key(), list(prof.patterns(kind)));
            }
        }
        if prof.allow_revocation {
            let _ = writeln!(
                o,
                "allow_revocation = true  # plain HTTP GET to exactly the OCSP, CA-issuers and CRL URLs named in the certificate chains of this profile's inspected hosts, as the agent sees them"
            );
        }
        for h in &prof.http {
            let _ = writeln!(o, "\n[[profile.{name}.http]]");
            let _ = writeln!(o, "host = {}", q(&h.host.to_string()));
            if let Some(m) = &h.methods {
                let _ = writeln!(o, "methods = {}", list(m.iter()));
            }
            if let Some(ps) = &h.paths {
                let _ = writeln!(o, "paths = {}", list(ps.iter().map(PathGlob::as_str)));
            }
            if let Some(i) = &h.inject {
                let src = match &i.source {
                    SecretSource::Env(n) => format!("env = {}", q(n)),
                    SecretSource::File(f) => format!("file = {}", q(&f.display().to_string())),
                };
                let _ = writeln!(o, "inject = {{ header = {}, {src} }}", q(&i.header));
            }
        }
        for b in &prof.budgets {
            super::budget::show(&mut o, name, b);
        }
    }
    o
}
