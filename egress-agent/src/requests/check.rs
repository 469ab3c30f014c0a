//! Steps 1–3 of the engine: protocol switches, the request's host against the connection's
//! decided name, and the policy's per-request rules.

use http::{header, Method, Request};
use hyper::body::Incoming;

use super::Conn;
use crate::{
    deny::DenyCode,
    policy::{name::CanonicalName, HttpRule},
};

/// Why a request is not forwarded.
pub struct Refusal {
    pub code: DenyCode,
    pub reason: String,
    pub rule: Option<String>,
    pub hint: String,
}

impl Refusal {
    pub fn new(code: DenyCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
            rule: None,
            hint: String::new(),
        }
    }

    /// A request over one of the connection's budgets.
    pub fn over_budget(x: crate::budget::Exceeded) -> Self {
        Self {
            code: DenyCode::BudgetExceeded,
            reason: x.reason,
            rule: Some(x.rule.to_string()),
            hint: x.hint,
        }
    }
}

impl Conn {
    /// Steps 1–3. Returns the per-request rule (if the host has rules) and whether the
    /// request is a WebSocket upgrade.
    pub(super) fn check(
        &self,
        req: &Request<Incoming>,
    ) -> Result<(Option<&HttpRule>, bool), Refusal> {
        self.check_method_and_target(req)?;
        self.check_hosts(req)?;
        let websocket = check_upgrade(req)?;
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        match self
            .policy
            .decide_request(&self.att.profile, &self.name, req.method().as_str(), path)
        {
            Ok(None) if self.is_revocation_url() => {
                self.att
                    .shared
                    .revocation
                    .judge(
                        &self.att.profile,
                        &self.name,
                        self.port,
                        req.method().as_str(),
                        path,
                    )
                    .map_err(|d| Refusal {
                        code: d.code,
                        reason: d.reason,
                        rule: self.base.rule.clone(),
                        hint: d.hint,
                    })?;
                Ok((None, websocket))
            }
            Ok(rule) => Ok((rule, websocket)),
            Err(d) => Err(Refusal {
                code: d.code,
                reason: d.reason,
                rule: d.rule.map(|r| r.to_string()),
                hint: d.hint,
            }),
        }
    }

    /// Whether the connection was allowed only as a learned revocation URL (plain HTTP), so
    /// that each request must be one of those URLs.
    fn is_revocation_url(&self) -> bool {
        self.tls.is_none()
            && self
                .base
                .rule
                .as_deref()
                .is_some_and(crate::revocation::is_revocation_rule)
    }

    /// No CONNECT inside the stream; absolute-form only for plain `http://` proxy requests.
    fn check_method_and_target(&self, req: &Request<Incoming>) -> Result<(), Refusal> {
        let inspected = self.tls.is_some();
        if req.method() == Method::CONNECT {
            return Err(Refusal::new(
                DenyCode::ProtocolNotAllowed,
                format!(
                    "CONNECT inside {} connection to {} is not allowed",
                    if inspected { "an inspected" } else { "an HTTP" },
                    self.name
                ),
            ));
        }
        let uri = req.uri();
        if uri.authority().is_none() || req.version() == http::Version::HTTP_2 {
            return Ok(());
        }
        if inspected {
            return Err(Refusal::new(
                DenyCode::ProtocolNotAllowed,
                format!("absolute-form request target {uri} inside TLS is not allowed"),
            ));
        }
        match uri.scheme_str() {
            Some(s) if !s.eq_ignore_ascii_case("http") => Err(Refusal::new(
                DenyCode::ProtocolNotAllowed,
                format!("proxy requests for scheme {s:?} are not supported; use CONNECT for https"),
            )),
            _ => Ok(()),
        }
    }

    /// `:authority` / the absolute-form target and `Host` must all name the decided host.
    fn check_hosts(&self, req: &Request<Incoming>) -> Result<(), Refusal> {
        let h2 = req.version() == http::Version::HTTP_2;
        let uri = req.uri();
        match uri.authority() {
            Some(a) => {
                self.check_host(a.as_str(), if h2 { ":authority" } else { "request target" })?
            }
            None if h2 => {
                return Err(Refusal::new(
                    DenyCode::HostMismatch,
                    "HTTP/2 request without :authority",
                ))
            }
            None => {}
        }
        // Bytes, not `to_str`: a UTF-8 Host (fullwidth letters, IDN) is canonicalised like SNI.
        match req
            .headers()
            .get(header::HOST)
            .map(|v| std::str::from_utf8(v.as_bytes()))
        {
            Some(Ok(h)) => self.check_host(h, "Host")?,
            Some(Err(_)) => {
                return Err(Refusal::new(
                    DenyCode::HostMismatch,
                    "Host header is not UTF-8",
                ))
            }
            None if uri.authority().is_none() => {
                return Err(Refusal::new(
                    DenyCode::HostMismatch,
                    "request without a Host header",
                ))
            }
            None => {}
        }
        if req.headers().get_all(header::HOST).iter().count() > 1 {
            return Err(Refusal::new(
                DenyCode::HostMismatch,
                "more than one Host header",
            ));
        }
        Ok(())
    }

    fn check_host(&self, raw: &str, what: &str) -> Result<(), Refusal> {
        let ok = crate::policy::name::split_host_port(raw, self.port)
            .ok()
            .filter(|(_, p)| *p == self.port)
            .and_then(|(h, _)| CanonicalName::parse(&h).ok())
            .is_some_and(|n| n == self.name);
        if ok {
            return Ok(());
        }
        let shown = clip(raw, 100);
        Err(Refusal {
            code: DenyCode::HostMismatch,
            reason: format!(
                "{what} {shown:?} differs from {}:{} that this connection was allowed for",
                self.name, self.port
            ),
            rule: None,
            hint: "open a new connection for each host (no domain fronting or connection reuse across hosts)".into(),
        })
    }
}

/// Only WebSocket upgrades over HTTP/1.1 pass (true when the request is one); `h2c` and
/// everything else would hide later requests from the engine.
fn check_upgrade(req: &Request<Incoming>) -> Result<bool, Refusal> {
    let h2 = req.version() == http::Version::HTTP_2;
    let mut websocket = false;
    for v in req.headers().get_all(header::UPGRADE) {
        for token in v.to_str().unwrap_or("?").split(',').map(str::trim) {
            let proto = token.split('/').next().unwrap_or("");
            if proto.eq_ignore_ascii_case("websocket") && !h2 {
                websocket = true;
                continue;
            }
            let why = if proto.eq_ignore_ascii_case("h2c") {
                ": cleartext HTTP/2 would hide later requests from the agent"
            } else {
                " (only WebSocket upgrades pass)"
            };
            return Err(Refusal::new(
                DenyCode::ProtocolNotAllowed,
                format!("Upgrade to {:?} is not allowed{why}", clip(token, 32)),
            ));
        }
    }
    if req.headers().contains_key("http2-settings") {
        return Err(Refusal::new(
            DenyCode::ProtocolNotAllowed,
            "HTTP2-Settings (h2c upgrade) is not allowed",
        ));
    }
    Ok(websocket)
}

/// Denials that monitor mode lets through (the rest cannot be forwarded meaningfully).
pub fn monitorable(code: DenyCode) -> bool {
    matches!(
        code,
        DenyCode::HostMismatch | DenyCode::MethodNotAllowed | DenyCode::PathNotAllowed
    )
}

pub fn clip(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
