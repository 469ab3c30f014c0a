//! Below every room: the deny contract (DESIGN.md §6): how a refused HTTP request, CONNECT or inspected HTTPS
//! request is answered. One [`Denial`] renders the JSON body, the `Proxy-Status` header
//! (RFC 9209) and the complete HTTP/1.1 response, so every path says the same thing.

use std::fmt;

use serde::Serialize;

/// Why a request was refused: the `error` field of the JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyCode {
    HostNotAllowed,
    PortNotAllowed,
    DestinationIpProhibited,
    /// SNI differs from Host / :authority (domain fronting, coalescing).
    HostMismatch,
    MethodNotAllowed,
    PathNotAllowed,
    DnsError,
    UpstreamUnreachable,
    ProtocolNotAllowed,
    /// Over one of the profile's budgets (bytes, connections, requests).
    BudgetExceeded,
}

impl DenyCode {
    /// Every code.
    pub const ALL: &'static [DenyCode] = &[
        DenyCode::HostNotAllowed,
        DenyCode::PortNotAllowed,
        DenyCode::DestinationIpProhibited,
        DenyCode::HostMismatch,
        DenyCode::MethodNotAllowed,
        DenyCode::PathNotAllowed,
        DenyCode::DnsError,
        DenyCode::UpstreamUnreachable,
        DenyCode::ProtocolNotAllowed,
        DenyCode::BudgetExceeded,
    ];

    /// The contract's snake_case code (JSON `error`, metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            DenyCode::HostNotAllowed => "host_not_allowed",
            DenyCode::PortNotAllowed => "port_not_allowed",
            DenyCode::DestinationIpProhibited => "destination_ip_prohibited",
            DenyCode::HostMismatch => "host_mismatch",
            DenyCode::MethodNotAllowed => "method_not_allowed",
            DenyCode::PathNotAllowed => "path_not_allowed",
            DenyCode::DnsError => "dns_error",
            DenyCode::UpstreamUnreachable => "upstream_unreachable",
            DenyCode::ProtocolNotAllowed => "protocol_not_allowed",
            DenyCode::BudgetExceeded => "budget_exceeded",
        }
    }

    /// The RFC 9209 §2.3 proxy error type for `Proxy-Status: …; error=<type>`.
    ///
    /// Mapping, most precise type first:
    /// - policy refusals of the request itself (host, port, method, path, protocol, a budget
    ///   used up, and a Host/:authority that differs from the inspected connection's name) are
    ///   `http_request_denied` ("rejected … based on its configuration and/or policy");
    /// - a destination whose every address is in the deny set is `destination_ip_prohibited`;
    /// - a failed lookup is `dns_error`;
    /// - an upstream that could not be reached is `destination_unavailable` (we do not
    ///   distinguish refused from timed out here).
    pub fn proxy_status_error(self) -> &'static str {
        match self {
            DenyCode::HostNotAllowed
            | DenyCode::PortNotAllowed
            | DenyCode::HostMismatch
            | DenyCode::MethodNotAllowed
            | DenyCode::PathNotAllowed
            | DenyCode::ProtocolNotAllowed
            | DenyCode::BudgetExceeded => "http_request_denied",
            DenyCode::DestinationIpProhibited => "destination_ip_prohibited",
            DenyCode::DnsError => "dns_error",
            DenyCode::UpstreamUnreachable => "destination_unavailable",
        }
    }
}

impl fmt::Display for DenyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The HTTP status for a denial: 403 for everything (DESIGN.md §6), except `host_mismatch`,
/// which is 421 Misdirected Request (RFC 9110 §15.5.20): the request is not refused as
/// such, it was sent on a connection for another name, and a well-behaved client (HTTP/2
/// coalescing) retries it on a new connection; and `budget_exceeded`, 429 Too Many Requests
/// (RFC 6585 §4): allowed, but not this much or this fast.
pub fn status_for(code: DenyCode) -> u16 {
    match code {
        DenyCode::HostMismatch => 421,
        DenyCode::BudgetExceeded => 429,
        _ => 403,
    }
}

/// Longest `details` in `Proxy-Status`; the full sentence is in the body.
const DETAILS_MAX: usize = 200;

/// One refusal, rendered the same way on every path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub code: DenyCode,
    /// The name (or address) the client asked for.
    pub host: String,
    pub port: u16,
    /// One sentence for people.
    pub reason: String,
    /// The policy rule that decided, e.g. `profile.default.allow[1]`; None when no rule did.
    pub rule: Option<String>,
    /// The policy version label.
    pub policy: String,
    /// What an operator would add to allow it.
    pub hint: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'static str,
    host: &'a str,
    port: u16,
    reason: &'a str,
    rule: Option<&'a str>,
    policy: &'a str,
    hint: &'a str,
}

impl Denial {
    /// The JSON body: exactly `error, host, port, reason, rule (string or null), policy, hint`.
    pub fn json_body(&self) -> String {
        let body = Body {
            error: self.code.as_str(),
            host: &self.host,
            port: self.port,
            reason: &self.reason,
            rule: self.rule.as_deref(),
            policy: &self.policy,
            hint: &self.hint,
        };
        // Serialising plain strings and integers cannot fail; keep a valid body anyway.
        serde_json::to_string(&body)
            .unwrap_or_else(|_| format!("{{\"error\":\"{}\"}}", self.code.as_str()))
    }

    /// The `Proxy-Status` field value (RFC 9209):
    /// `egress-agent; error=<type>; details="<short reason>"`.
    pub fn proxy_status(&self) -> String {
        format!(
            "egress-agent; error={}; details={}",
            self.code.proxy_status_error(),
            sf_string(&self.reason, DETAILS_MAX)
        )
    }

    /// The HTTP status of this denial ([`status_for`]).
    pub fn status(&self) -> u16 {
        status_for(self.code)
    }

    /// The HTTP/1.1 reason phrase: the status's own, then who refused and why, e.g.
    /// `Forbidden by egress-agent: host_not_allowed` (clients that show no body, such as Go's,
    /// git's and wget's, print the status line).
    pub fn reason_phrase(&self, status: http::StatusCode) -> String {
        format!(
            "{} by egress-agent: {}",
            status.canonical_reason().unwrap_or("Refused"),
            self.code.as_str()
        )
    }

    /// A complete HTTP/1.1 response carrying this denial; the connection is closed after it.
    /// An invalid `status` (outside 100..=999) becomes 403.
    pub fn http_response(&self, status: u16) -> Vec<u8> {
        let status = match http::StatusCode::from_u16(status) {
            Ok(s) => s,
            Err(_) => http::StatusCode::FORBIDDEN,
        };
        let mut body = self.json_body();
        body.push('\n');
        let head = format!(
            "HTTP/1.1 {} {}\r\n\
             Proxy-Status: {}\r\n\
             Content-Type: application/json\r\n\
             Content-Length: {}\r\n\
             Connection: close\r\n\
             Cache-Control: no-store\r\n\
             \r\n",
            status.as_u16(),
            self.reason_phrase(status),
            self.proxy_status(),
            body.len(),
        );
        let mut out = head.into_bytes();
        out.extend_from_slice(body.as_bytes());
        out
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}:{}: {}",
            self.code, self.host, self.port, self.reason
        )
    }
}

/// An RFC 8941 sf-string: printable ASCII only (others are dropped), `"` and `\` escaped,
/// at most `max` characters of content.
fn sf_string(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 2);
    out.push('"');
    for c in s.chars().filter(|c| (' '..='~').contains(c)).take(max) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(code: DenyCode) -> Denial {
        Denial {
            code,
            host: "evil.example".to_string(),
            port: 443,
            reason: "evil.example is not in the allow list of profile default".to_string(),
            rule: None,
            policy: "2026-11-22.1".to_string(),
            hint: "add \"evil.example\" to [profile.default] allow".to_string(),
        }
    }

    struct Parsed {
        status: u16,
        headers: Vec<(String, String)>,
        body: serde_json::Value,
    }

    fn parse(bytes: &[u8]) -> Parsed {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(bytes).expect("valid response") {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("incomplete response"),
        };
        assert_eq!(resp.version, Some(1));
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8(h.value.to_vec()).expect("utf-8 header"),
                )
            })
            .collect();
        let get = |k: &str| {
            headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .expect(k)
        };
        let len: usize = get("content-length").parse().expect("length");
        assert_eq!(len, bytes.len() - n, "content-length matches the body");
        let body = serde_json::from_slice(&bytes[n..]).expect("json body");
        Parsed {
            status: resp.code.expect("status"),
            headers,
            body,
        }
    }

    fn header<'a>(p: &'a Parsed, k: &str) -> &'a str {
        p.headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("missing {k}"))
    }

    #[test]
    fn codes_and_mapping() {
        let want = [
            ("host_not_allowed", "http_request_denied", 403),
            ("port_not_allowed", "http_request_denied", 403),
            (
                "destination_ip_prohibited",
                "destination_ip_prohibited",
                403,
            ),
            ("host_mismatch", "http_request_denied", 421),
            ("method_not_allowed", "http_request_denied", 403),
            ("path_not_allowed", "http_request_denied", 403),
            ("dns_error", "dns_error", 403),
            ("upstream_unreachable", "destination_unavailable", 403),
            ("protocol_not_allowed", "http_request_denied", 403),
            ("budget_exceeded", "http_request_denied", 429),
        ];
        assert_eq!(DenyCode::ALL.len(), want.len());
        for (code, (s, ps, st)) in DenyCode::ALL.iter().zip(want) {
            assert_eq!(code.as_str(), s);
            assert_eq!(code.to_string(), s);
            assert_eq!(
                serde_json::to_value(code).expect("ser"),
                serde_json::Value::String(s.to_string())
            );
            assert_eq!(code.proxy_status_error(), ps);
            assert_eq!(status_for(*code), st);
        }
    }

    #[test]
    fn json_body_has_exactly_the_contract_fields() {
        let d = sample(DenyCode::HostNotAllowed);
        let v: serde_json::Value = serde_json::from_str(&d.json_body()).expect("json");
        let obj = v.as_object().expect("object");
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["error", "hint", "host", "policy", "port", "reason", "rule"]
        );
        assert_eq!(v["error"], "host_not_allowed");
        assert_eq!(v["host"], "evil.example");
        assert_eq!(v["port"], 443);
        assert_eq!(v["rule"], serde_json::Value::Null);
        assert_eq!(v["policy"], "2026-11-22.1");
        assert_eq!(v["hint"], "add \"evil.example\" to [profile.default] allow");

        let mut d = sample(DenyCode::PortNotAllowed);
        d.rule = Some("profile.default.allow[1]".to_string());
        let v: serde_json::Value = serde_json::from_str(&d.json_body()).expect("json");
        assert_eq!(v["rule"], "profile.default.allow[1]");
    }

    #[test]
    fn proxy_status_escapes_and_strips() {
        let mut d = sample(DenyCode::DnsError);
        d.reason = "bad \"name\" \\ here\r\n\u{0}\u{7f}é".to_string();
        assert_eq!(
            d.proxy_status(),
            r#"egress-agent; error=dns_error; details="bad \"name\" \\ here""#
        );
        d.reason = "x".repeat(1000);
        let ps = d.proxy_status();
        assert!(ps.len() < 260, "{}", ps.len());
    }

    #[test]
    fn http_response_parses() {
        for code in DenyCode::ALL {
            let d = sample(*code);
            let bytes = d.http_response(d.status());
            let p = parse(&bytes);
            assert_eq!(p.status, status_for(*code));
            assert_eq!(header(&p, "content-type"), "application/json");
            assert_eq!(header(&p, "connection"), "close");
            assert_eq!(header(&p, "cache-control"), "no-store");
            assert_eq!(
                header(&p, "proxy-status"),
                format!(
                    "egress-agent; error={}; details=\"{}\"",
                    code.proxy_status_error(),
                    d.reason
                )
            );
            assert_eq!(p.body["error"], code.as_str());
            assert!(bytes.starts_with(b"HTTP/1.1 "));
        }
        let d = sample(DenyCode::HostMismatch);
        assert!(d
            .http_response(421)
            .starts_with(b"HTTP/1.1 421 Misdirected Request by egress-agent: host_mismatch\r\n"));
        assert!(d
            .http_response(403)
            .starts_with(b"HTTP/1.1 403 Forbidden by egress-agent: host_mismatch\r\n"));
        // Invalid status never panics.
        assert!(d.http_response(0).starts_with(b"HTTP/1.1 403 "));
        assert!(d.http_response(65535).starts_with(b"HTTP/1.1 403 "));
    }

    #[test]
    fn hostile_fields_cannot_inject_headers() {
        let d = Denial {
            code: DenyCode::HostMismatch,
            host: "a\r\nSet-Cookie: x=1".to_string(),
            port: 80,
            reason: "host \"a\r\nSet-Cookie: x=1\" differs".to_string(),
            rule: Some("r\"\n".to_string()),
            policy: "p".to_string(),
            hint: "h\u{0}".to_string(),
        };
        let bytes = d.http_response(421);
        let p = parse(&bytes);
        assert!(p.headers.iter().all(|(n, _)| n != "set-cookie"));
        assert_eq!(p.body["host"], "a\r\nSet-Cookie: x=1");
        assert_eq!(p.body["hint"], "h\u{0}");
    }
}
