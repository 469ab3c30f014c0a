//! Below every room: the policy: which names a workload may reach, on which ports, how (passthrough or
//! inspected), with which per-request rules; plus the address exemptions.
//!
//! The file format is TOML (DESIGN.md §8; keys documented in `parse.rs`). A parsed
//! [`Policy`] is immutable and indexed: [`Policy::decide`] and [`Policy::decide_request`]
//! do not allocate on the allow path (hash lookups of the name and its label suffixes).

pub mod budget;
pub mod local;
pub mod name;
mod parse;
pub mod path;
pub mod proxy;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::addr::AddrPolicy;
use crate::deny::{Denial, DenyCode};

pub use budget::Budget;
pub use local::LocalService;
pub use name::{split_host_port, CanonicalName, HostPattern, NameError, Pattern, DEFAULT_PORTS};
pub use path::{PathGlob, Reading, Readings, Unjudgeable};
pub use proxy::{ProxyHost, Route, UpstreamProxy};

/// Errors loading a policy. Every error about the file's content renders as one line
/// `FILE:LINE:COL: key `KEY`: WHAT` (or `FILE:LINE:COL: WHAT` for TOML syntax errors).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{origin}: cannot read the policy file: {source}")]
    Io {
        origin: String,
        #[source]
        source: io::Error,
    },
    #[error("{origin}:{line}:{col}: {message}")]
    Syntax {
        origin: String,
        line: usize,
        col: usize,
        message: String,
    },
    #[error("{origin}:{line}:{col}: key `{key}`: {message}")]
    Invalid {
        origin: String,
        line: usize,
        col: usize,
        key: String,
        message: String,
    },
    #[error("{flag} {value:?}: {message}")]
    Arg {
        flag: String,
        value: String,
        message: String,
    },
}

impl PolicyError {
    /// (line, column), 1-based, when the error is about a place in the file.
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            PolicyError::Syntax { line, col, .. } | PolicyError::Invalid { line, col, .. } => {
                Some((*line, *col))
            }
            _ => None,
        }
    }

    /// The dotted key the error is about (`profile.default.allow[2]`).
    pub fn key(&self) -> Option<&str> {
        match self {
            PolicyError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// `enforce` denies; `monitor` only reports what would have been denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Enforce,
    Monitor,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }
}

/// How the sandbox's DNS answers a name the policy denies (`dns_deny`). Either way the name is
/// never forwarded upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DnsDeny {
    /// With the agent's own service address (`egress.internal`) for A and NODATA for
    /// AAAA: the client connects, and its connection is refused at a layer it shows (HTTP
    /// 403 + JSON, a minted certificate and a 403 when it trusts the agent's CA, TLS
    /// `access_denied` otherwise). A client that never connects sees a working lookup.
    #[default]
    Explain,
    /// `NXDOMAIN` with Extended DNS Error 15 (Blocked) and the reason as text: the client
    /// reports a name that does not exist (no client shows the EDE text).
    Nxdomain,
}

impl DnsDeny {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "explain" => Some(DnsDeny::Explain),
            "nxdomain" => Some(DnsDeny::Nxdomain),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DnsDeny::Explain => "explain",
            DnsDeny::Nxdomain => "nxdomain",
        }
    }
}

/// What the interceptor recognised on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A TLS ClientHello with SNI.
    Tls,
    /// A plain HTTP/1.x request head (or CONNECT).
    Http,
    /// Anything else: allowed only by a pattern with an explicit port.
    Opaque,
}

/// Identifies the rule that decided, e.g. `profile.default.allow[1]`; the JSON `rule` field.
/// Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RuleRef(Arc<str>);

impl RuleRef {
    fn new(s: String) -> Self {
        Self(Arc::from(s))
    }

    /// A rule that is not a line of the file (a learned revocation URL, see `crate::revocation`).
    pub fn labelled(s: String) -> Self {
        Self::new(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// The outcome of [`Policy::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow { rule: RuleRef, inspect: bool },
    Deny(Denied),
}

/// A policy refusal, before it is tied to a host and port (see [`Denied::to_denial`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub code: DenyCode,
    /// One sentence for people.
    pub reason: String,
    pub rule: Option<RuleRef>,
    /// What an operator would add to allow it.
    pub hint: String,
}

impl Denied {
    /// The full denial record for the deny contract.
    pub fn to_denial(&self, host: &str, port: u16, policy: &Policy) -> Denial {
        Denial {
            code: self.code,
            host: host.to_string(),
            port,
            reason: self.reason.clone(),
            rule: self.rule.as_ref().map(|r| r.as_str().to_string()),
            policy: policy.version().to_string(),
            hint: self.hint.clone(),
        }
    }
}

/// Which list of a profile a pattern comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    Allow,
    Inspect,
    Passthrough,
}

impl RuleKind {
    pub fn key(self) -> &'static str {
        match self {
            RuleKind::Allow => "allow",
            RuleKind::Inspect => "inspect",
            RuleKind::Passthrough => "passthrough",
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    kind: RuleKind,
    pattern: Pattern,
    id: RuleRef,
}

/// Where an injected credential comes from. Shown as `env:NAME` or the file path; the value
/// is read only by [`SecretSource::resolve`] and never printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

impl SecretSource {
    /// Reads the value now (environment of the agent, or the file, trailing newline removed).
    /// Refuses values with CR, LF or NUL, which would break the header.
    pub fn resolve(&self) -> io::Result<Secret> {
        let value = match self {
            SecretSource::Env(name) => std::env::var(name).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("environment variable {name} is not set (or not UTF-8)"),
                )
            })?,
            SecretSource::File(path) => {
                let mut s = std::fs::read_to_string(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
                })?;
                while s.ends_with('\n') || s.ends_with('\r') {
                    s.pop();
                }
                s
            }
        };
        if value.contains(['\r', '\n', '\0']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("credential from {self} contains CR, LF or NUL"),
            ));
        }
        Ok(Secret(value))
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(n) => write!(f, "env:{n}"),
            SecretSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A credential value. Debug and Display never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for writing the header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The credential a rule injects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inject {
    header: String,
    source: SecretSource,
}

/// A per-request rule for an inspected host (`[[profile.X.http]]`).
#[derive(Debug, Clone)]
pub struct HttpRule {
    host: HostPattern,
    /// Upper case; `None` = any method.
    methods: Option<Vec<String>>,
    /// `None` = any path.
    paths: Option<Vec<PathGlob>>,
    inject: Option<Inject>,
    id: RuleRef,
}

impl HttpRule {
    pub fn host(&self) -> &HostPattern {
        &self.host
    }

    pub fn methods(&self) -> Option<&[String]> {
        self.methods.as_deref()
    }

    pub fn paths(&self) -> Option<&[PathGlob]> {
        self.paths.as_deref()
    }

    /// The header to set and where its value comes from.
    pub fn inject(&self) -> Option<(&str, &SecretSource)> {
        self.inject.as_ref().map(|i| (i.header.as_str(), &i.source))
    }

    /// `profile.X.http[i]`.
    pub fn rule(&self) -> &RuleRef {
        &self.id
    }

    /// Methods are compared exactly (HTTP methods are case-sensitive).
    pub fn allows_method(&self, method: &str) -> bool {
        match &self.methods {
            None => true,
            Some(m) => m.iter().any(|x| x == method),
        }
    }

    /// The path without its query; allowed when every reading of it a server may act on
    /// is (see [`path`]); a path without a reliable reading never matches a restriction.
    pub fn allows_path(&self, path: &str) -> bool {
        self.allows_readings(&Readings::of(without_query(path)))
    }

    fn allows_readings(&self, judged: &Result<Readings<'_>, Unjudgeable>) -> bool {
        self.refused_reading(judged).is_none()
    }

    /// The first reading this rule's paths do not allow (`None`: allowed); an unjudgeable
    /// path is refused as a whole (`Some(None)`).
    fn refused_reading<'r>(
        &self,
        judged: &'r Result<Readings<'_>, Unjudgeable>,
    ) -> Option<Option<(Reading, &'r str)>> {
        let globs = self.paths.as_ref()?;
        let Ok(readings) = judged else {
            return Some(None);
        };
        readings
            .each()
            .into_iter()
            .find(|(_, p)| !globs.iter().any(|g| g.matches(p)))
            .map(Some)
    }
}

/// The path of a request target, without its query or fragment.
fn without_query(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or("")
}

/// Exact names and wildcard suffixes, each to rule indices in precedence order.
#[derive(Debug, Clone, Default)]
struct Index {
    exact: HashMap<String, Vec<usize>>,
    wild: HashMap<String, Vec<usize>>,
}

impl Index {
    fn insert(&mut self, host: &HostPattern, i: usize) {
        let (map, key) = match host {
            HostPattern::Exact(n) => (&mut self.exact, n.as_str()),
            HostPattern::Wildcard(s) => (&mut self.wild, s.as_str()),
        };
        map.entry(key.to_string()).or_default().push(i);
    }

    /// Calls `f` for every matching index: exact first, then wildcards from the longest
    /// suffix to the shortest (most specific first), each in file order.
    fn for_each_match(&self, name: &str, mut f: impl FnMut(usize)) {
        if let Some(v) = self.exact.get(name) {
            v.iter().for_each(|i| f(*i));
        }
        if self.wild.is_empty() {
            return;
        }
        for (dot, _) in name.match_indices('.') {
            if let Some(v) = self.wild.get(&name[dot + 1..]) {
                v.iter().for_each(|i| f(*i));
            }
        }
    }

    /// The most specific group only: the exact entry, else the longest matching suffix.
    fn most_specific(&self, name: &str) -> &[usize] {
        if let Some(v) = self.exact.get(name) {
            return v;
        }
        for (dot, _) in name.match_indices('.') {
            if let Some(v) = self.wild.get(&name[dot + 1..]) {
                return v;
            }
        }
        &[]
    }
}

/// `ask_timeout` when a profile sets none.
pub const DEFAULT_ASK_TIMEOUT: Duration = Duration::from_secs(30);
/// `ask_max_pending` when the policy sets none.
pub const DEFAULT_ASK_MAX_PENDING: usize = 1024;

#[derive(Debug, Clone)]
struct Profile {
    rules: Vec<Rule>,
    index: Index,
    http: Vec<HttpRule>,
    http_index: Index,
    /// `mode = "ask"`: how long a connection the policy denies is held for a decision.
    ask: Option<Duration>,
    local: Vec<LocalService>,
    /// `allow_revocation` (see `crate::revocation`).
    allow_revocation: bool,
    /// `[[profile.X.budget]]`, in file order (see `budget.rs`).
    budgets: Vec<Arc<Budget>>,
}

impl Profile {
    fn new(rules: Vec<Rule>, http: Vec<HttpRule>) -> Self {
        let mut index = Index::default();
        for (i, r) in rules.iter().enumerate() {
            index.insert(&r.pattern.host, i);
        }
        let mut http_index = Index::default();
        for (i, r) in http.iter().enumerate() {
            http_index.insert(&r.host, i);
        }
        Self {
            rules,
            index,
            http,
            http_index,
            ask: None,
            local: Vec::new(),
            allow_revocation: false,
            budgets: Vec::new(),
        }
    }

    fn local_named(&self, name: &CanonicalName) -> Option<&LocalService> {
        self.local.iter().find(|l| &l.name == name)
    }

    fn patterns(&self, kind: RuleKind) -> impl Iterator<Item = &Pattern> {
        self.rules
            .iter()
            .filter(move |r| r.kind == kind)
            .map(|r| &r.pattern)
    }
}

/// A parsed, validated, indexed policy.
#[derive(Debug, Clone)]
pub struct Policy {
    origin: String,
    version: String,
    version_explicit: bool,
    mode: Mode,
    dns_deny: DnsDeny,
    resolver: Option<SocketAddr>,
    addr: AddrPolicy,
    upstream_ca: Option<PathBuf>,
    upstream_proxy: Option<UpstreamProxy>,
    /// `ask_max_pending`, when the file sets it.
    ask_max_pending: Option<usize>,
    profiles: BTreeMap<String, Profile>,
}

impl Policy {
    /// Parses a policy file's text; `origin` names it in errors (usually the path).
    pub fn parse(src: &str, origin: &str) -> Result<Policy, PolicyError> {
        parse::parse(src, origin)
    }

    /// Reads and parses a policy file.
    pub fn load(path: impl AsRef<Path>) -> Result<Policy, PolicyError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            origin: origin.clone(),
            source,
        })?;
        Self::parse(&src, &origin)
    }

    /// The policy of `exec --allow P…`: one `default` profile allowing the patterns.
    pub fn from_allow_list(patterns: &[String]) -> Result<Policy, PolicyError> {
        parse::from_allow_list(patterns)
    }

    /// The label reported as `policy` in denials: `version` from the file, else
    /// `fnv1a64:<16 hex>` of the file's bytes (FNV-1a, 64 bit: no crypto needed, it only
    /// tells two policies apart).
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// How the sandbox's DNS answers a denied name.
    pub fn dns_deny(&self) -> DnsDeny {
        self.dns_deny
    }

    /// Where the policy came from (file path, or `--allow`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The configured upstream resolver; `None` means the host's (see
    /// [`Policy::resolver_or_system`]), looked up when needed.
    pub fn resolver(&self) -> Option<SocketAddr> {
        self.resolver
    }

    /// The configured resolver, else the first nameserver of /etc/resolv.conf.
    pub fn resolver_or_system(&self) -> io::Result<SocketAddr> {
        match self.resolver {
            Some(r) => Ok(r),
            None => system_resolver(),
        }
    }

    /// Extra CA for verifying inspected upstreams.
    pub fn upstream_ca(&self) -> Option<&Path> {
        self.upstream_ca.as_deref()
    }

    /// `upstream_proxy`, with its credentials file and `no_upstream_proxy` exceptions.
    pub fn upstream_proxy(&self) -> Option<&UpstreamProxy> {
        self.upstream_proxy.as_ref()
    }

    /// How an allowed connection to `name:port` is dialed: through the upstream proxy
    /// (`CONNECT`, the proxy resolves) unless none is set or `no_upstream_proxy` matches.
    pub fn route(&self, name: &CanonicalName, port: u16) -> Route<'_> {
        match &self.upstream_proxy {
            None => Route::Direct,
            Some(p) => p.route(name, port),
        }
    }

    /// The address classifier with this policy's `allow_ranges`.
    pub fn addr_policy(&self) -> &AddrPolicy {
        &self.addr
    }

    /// Every inspected pattern's host (`api.example.com`, `*.example.org`) across profiles,
    /// sorted, without duplicates: what a name-constrained CA must permit.
    pub fn inspect_hosts(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .profiles
            .values()
            .flat_map(|p| p.patterns(RuleKind::Inspect))
            .map(|p| p.host.to_string())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Every credential source the agent reads — `inject` rules of any profile (environment
    /// variables and files) and `upstream_proxy_auth` — sorted, without duplicates: what the
    /// sandbox must never see.
    pub fn inject_sources(&self) -> Vec<&SecretSource> {
        let mut v: Vec<&SecretSource> = self
            .profiles
            .values()
            .flat_map(|p| p.http.iter())
            .filter_map(|r| r.inject().map(|(_, s)| s))
            .chain(
                self.upstream_proxy
                    .as_ref()
                    .and_then(UpstreamProxy::auth_source),
            )
            .collect();
        v.sort_by_key(|s| s.to_string());
        v.dedup();
        v
    }

    /// `mode = "ask"` profiles: how long a denied connection (or DNS question) is held
    /// for an operator's decision. `None`: the profile denies at once.
    pub fn ask_timeout(&self, profile: &str) -> Option<Duration> {
        if self.mode == Mode::Monitor {
            return None;
        }
        self.profiles.get(profile).and_then(|p| p.ask)
    }

    /// This policy with `profile` in ask mode (`exec --ask`), keeping its `ask_timeout` if
    /// it has one. Monitor mode stays monitor mode (nothing is denied to ask about).
    pub fn asking(mut self, profile: &str) -> Policy {
        if let Some(p) = self.profiles.get_mut(profile) {
            p.ask.get_or_insert(DEFAULT_ASK_TIMEOUT);
        }
        self
    }

    /// How many decisions may be pending at once (agent-wide); past it a connection that
    /// would be held is denied at once.
    pub fn ask_max_pending(&self) -> usize {
        self.ask_max_pending.unwrap_or(DEFAULT_ASK_MAX_PENDING)
    }

    /// The `local` entry for `name:port` of `profile`.
    pub fn local_service(
        &self,
        profile: &str,
        name: &CanonicalName,
        port: u16,
    ) -> Option<&LocalService> {
        self.profiles
            .get(profile)?
            .local_named(name)
            .filter(|l| l.port == port)
    }

    /// Whether `name` is a local service's name in `profile` (on whatever port).
    pub fn is_local_name(&self, profile: &str, name: &CanonicalName) -> bool {
        self.profiles
            .get(profile)
            .is_some_and(|p| p.local_named(name).is_some())
    }

    /// The `local` entries of `profile`, in file order.
    pub fn local_services(&self, profile: &str) -> &[LocalService] {
        self.profiles.get(profile).map_or(&[], |p| &p.local)
    }

    /// Profile names, sorted.
    pub fn profile_names(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }

    /// Whether `profile` allows the revocation URLs its inspected hosts' certificates name.
    pub fn allows_revocation(&self, profile: &str) -> bool {
        self.profiles
            .get(profile)
            .is_some_and(|p| p.allow_revocation)
    }

    /// The budgets of `profile` that cover connections to `name`, in file order.
    pub fn budgets_for<'a>(
        &'a self,
        profile: &str,
        name: &'a CanonicalName,
    ) -> impl Iterator<Item = &'a Arc<Budget>> + 'a {
        self.profiles
            .get(profile)
            .map_or(&[][..], |p| &p.budgets[..])
            .iter()
            .filter(move |b| b.applies_to(name))
    }

    /// Every budget of `profile`.
    pub fn budgets(&self, profile: &str) -> &[Arc<Budget>] {
        self.profiles.get(profile).map_or(&[], |p| &p.budgets)
    }

    pub fn has_profile(&self, profile: &str) -> bool {
        self.profiles.contains_key(profile)
    }

    /// Decides a connection to `name:port` from a workload with `profile`.
    ///
    /// Allowed when a pattern matches the name and covers the port (80 and 443 without an
    /// explicit port); `Opaque` needs a pattern with an explicit port. `inspect` is true
    /// when an inspect pattern allows it and no passthrough pattern matches the name.
    /// The rule reported is the most specific (exact before wildcard, longer suffix
    /// first), preferring the inspect rule when inspecting, else passthrough, then allow.
    pub fn decide(
        &self,
        profile: &str,
        name: &CanonicalName,
        port: u16,
        proto: Protocol,
    ) -> Decision {
        let Some(p) = self.profiles.get(profile) else {
            return Decision::Deny(self.unknown_profile(profile));
        };
        if let Some(l) = p.local_named(name) {
            return local_decision(l, profile, port);
        }
        let mut first: Option<usize> = None;
        let mut port_ok: Option<usize> = None;
        let (mut allow, mut inspect, mut pass) = (None, None, None);
        let mut pass_name = false;
        p.index.for_each_match(name.as_str(), |i| {
            let Some(r) = p.rules.get(i) else {
                return;
            };
            first.get_or_insert(i);
            pass_name |= r.kind == RuleKind::Passthrough;
            if !r.pattern.covers_port(port) {
                return;
            }
            port_ok.get_or_insert(i);
            if proto == Protocol::Opaque && r.pattern.port.is_none() {
                return;
            }
            match r.kind {
                RuleKind::Allow => allow.get_or_insert(i),
                RuleKind::Inspect => inspect.get_or_insert(i),
                RuleKind::Passthrough => pass.get_or_insert(i),
            };
        });
        let id = |i: usize| p.rules.get(i).map(|r| r.id.clone());
        let Some(first) = first else {
            return Decision::Deny(Denied {
                code: DenyCode::HostNotAllowed,
                reason: format!("{name} is not in the allow list of profile {profile}"),
                rule: None,
                hint: format!("add \"{name}\" to [profile.{profile}] allow"),
            });
        };
        let Some(port_ok) = port_ok else {
            let rule = id(first);
            return Decision::Deny(Denied {
                code: DenyCode::PortNotAllowed,
                reason: format!(
                    "{name} is allowed by {} but not on port {port}",
                    rule.as_ref().map(RuleRef::as_str).unwrap_or("a rule")
                ),
                rule,
                hint: format!("add \"{name}:{port}\" to [profile.{profile}] allow"),
            });
        };
        let inspecting = proto != Protocol::Opaque && inspect.is_some() && !pass_name;
        let chosen = if inspecting {
            inspect
        } else {
            pass.or(allow).or(inspect)
        };
        match chosen.and_then(id) {
            Some(rule) => Decision::Allow {
                rule,
                inspect: inspecting,
            },
            None => Decision::Deny(Denied {
                code: DenyCode::ProtocolNotAllowed,
                reason: format!(
                    "traffic to {name}:{port} is neither TLS nor HTTP, which needs a rule with an explicit port"
                ),
                rule: id(port_ok),
                hint: format!("add \"{name}:{port}\" to [profile.{profile}] allow"),
            }),
        }
    }

    /// Applies the per-request rules of `host` (inspected HTTPS and plain HTTP).
    ///
    /// `Ok(None)`: the host has no http rules (any request). `Ok(Some(rule))`: the first
    /// rule (of the most specific host group) allowing the method and path; its credential
    /// is to be injected. Else `MethodNotAllowed` when some rule allows the path, otherwise
    /// `PathNotAllowed`.
    pub fn decide_request(
        &self,
        profile: &str,
        host: &CanonicalName,
        method: &str,
        path: &str,
    ) -> Result<Option<&HttpRule>, Denied> {
        let Some(p) = self.profiles.get(profile) else {
            return Err(self.unknown_profile(profile));
        };
        let group = p.http_index.most_specific(host.as_str());
        if group.is_empty() {
            return Ok(None);
        }
        let judged = Readings::of(without_query(path));
        let mut path_ok: Option<&HttpRule> = None;
        let mut first: Option<&HttpRule> = None;
        for r in group.iter().filter_map(|i| p.http.get(*i)) {
            first.get_or_insert(r);
            if r.allows_readings(&judged) {
                if r.allows_method(method) {
                    return Ok(Some(r));
                }
                path_ok.get_or_insert(r);
            }
        }
        let Some(first) = first else {
            return Ok(None);
        };
        if let Some(r) = path_ok {
            return Err(Denied {
                code: DenyCode::MethodNotAllowed,
                reason: format!(
                    "method {} is not allowed for {host} by {}",
                    clip(method, 32),
                    r.id
                ),
                rule: Some(r.id.clone()),
                hint: format!(
                    "add \"{}\" to methods of the http rule {} (host \"{}\")",
                    clip(method, 32),
                    r.id,
                    r.host
                ),
            });
        }
        Err(path_refusal(host, path, &judged, first))
    }

    fn unknown_profile(&self, profile: &str) -> Denied {
        let profile = clip(profile, 64);
        Denied {
            code: DenyCode::HostNotAllowed,
            reason: format!("profile {profile:?} is not defined in the policy"),
            rule: None,
            hint: format!(
                "define [profile.{profile}] in the policy, or attach with an existing --profile"
            ),
        }
    }

    /// The effective policy as TOML, exactly as enforced: normalised patterns, secret
    /// sources as `env:NAME` / path (never values). `Policy::parse` of it decides the same.
    pub fn show(&self) -> String {
        parse::show(self)
    }
}

/// A local service's name is decided by its entry alone: its port, any protocol (the bytes
/// go to the one service the operator named).
fn local_decision(l: &LocalService, profile: &str, port: u16) -> Decision {
    if l.port == port {
        return Decision::Allow {
            rule: l.rule.clone(),
            inspect: false,
        };
    }
    Decision::Deny(Denied {
        code: DenyCode::PortNotAllowed,
        reason: format!(
            "{} is a local service on port {} only ({}), not on port {port}",
            l.name, l.port, l.rule
        ),
        rule: Some(l.rule.clone()),
        hint: format!(
            "add \"{}:{port} -> ADDRESS:PORT\" to [profile.{profile}] local",
            l.name
        ),
    })
}

/// `path_not_allowed` for a path `rule` (the first of the host's rules) refused: naming the
/// reading it refused when that differs from the path as written, or why no reading is
/// reliable.
fn path_refusal(
    host: &CanonicalName,
    path: &str,
    judged: &Result<Readings<'_>, Unjudgeable>,
    rule: &HttpRule,
) -> Denied {
    let shown = clip(path, 100);
    let (reason, hint) = match (judged, rule.refused_reading(judged)) {
        (Err(why), _) => (
            format!("path {shown:?} for {host} cannot be judged by path rules: it contains {why}"),
            format!(
                "no path glob can allow this spelling; the client must send the path plainly (or remove `paths` from the http rule {} to allow every path)",
                rule.id
            ),
        ),
        (Ok(r), Some(Some((reading, seen)))) if r.differ() => (
            format!(
                "path {shown:?} is not allowed for {host} by {}: {} act on {:?}",
                rule.id,
                reading.who(),
                clip(seen, 100)
            ),
            format!(
                "add a glob matching {:?} to paths of the http rule {} (host \"{}\")",
                clip(r.normalised(), 100),
                rule.id,
                rule.host
            ),
        ),
        _ => (
            format!("path {shown:?} is not allowed for {host} by {}", rule.id),
            format!(
                "add a glob matching {shown:?} to paths of the http rule {} (host \"{}\")",
                rule.id, rule.host
            ),
        ),
    };
    Denied {
        code: DenyCode::PathNotAllowed,
        reason,
        rule: Some(rule.id.clone()),
        hint,
    }
}

/// Shortens untrusted text for messages (on a character boundary).
fn clip(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The first `nameserver` of /etc/resolv.conf, port 53.
pub fn system_resolver() -> io::Result<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf")?;
    parse_resolv_conf(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no usable nameserver in /etc/resolv.conf",
        )
    })
}

/// The first usable `nameserver` line (IPv6 zones are dropped), port 53.
pub fn parse_resolv_conf(text: &str) -> Option<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some("nameserver"))
                .then(|| it.next())
                .flatten()
        })
        .find_map(|a| {
            let a = a.split('%').next().unwrap_or(a);
            a.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
        })
}

#[cfg(test)]
mod tests;
