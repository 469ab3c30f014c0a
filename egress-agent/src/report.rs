//! Control plane: what several commands say the same way: an error chain as one line (every command's
//! failure, the control socket's refusals) and the explanation of a decision (`explain`, on
//! the command line and on the control socket).

use anyhow::{bail, Result};

use crate::policy::{name::CanonicalName, Decision, Policy, Protocol, Route};

/// An error chain as one line.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut s = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
    }
    s.replace('\n', " ")
}

/// The decision for HOST[:PORT] under each protocol, one line each.
pub fn explain_text(policy: &Policy, host: &str, profile: &str) -> Result<String> {
    use std::fmt::Write;
    let (h, port) = crate::policy::name::split_host_port(host, 443)
        .map_err(|e| anyhow::anyhow!("{host}: {e}"))?;
    let name = CanonicalName::parse(&h).map_err(|e| anyhow::anyhow!("{h}: {e}"))?;
    if !policy.has_profile(profile) {
        bail!("profile `{profile}` is not defined in the policy");
    }
    let mut o = String::new();
    for proto in [Protocol::Tls, Protocol::Http, Protocol::Opaque] {
        let _ = match policy.decide(profile, &name, port, proto) {
            Decision::Allow { rule, inspect } => writeln!(
                o,
                "{name}:{port} {proto:?}: allow ({}) by {rule}",
                if inspect { "inspect" } else { "passthrough" },
                name = name.as_str()
            ),
            Decision::Deny(d) => writeln!(
                o,
                "{name}:{port} {proto:?}: deny {}: {}{}",
                d.code.as_str(),
                d.reason,
                if d.hint.is_empty() {
                    String::new()
                } else {
                    format!(" (hint: {})", d.hint)
                },
                name = name.as_str()
            ),
        };
    }
    let route = match policy.local_service(profile, &name, port) {
        Some(l) => format!(
            "local service {l} ({}): the agent's DNS answers {} with {}'s address {}, and the agent dials {} itself{} (not resolved, not screened by allow_ranges; no other port)",
            l.rule,
            l.name,
            crate::SERVICE_NAME,
            crate::SERVICE_ADDR4,
            l.target,
            if l.in_sandbox {
                " inside the sandbox's own network namespace"
            } else {
                ""
            }
        ),
        None => route_text(policy, &name, port),
    };
    let _ = writeln!(o, "{}:{port} route: {route}", name.as_str());
    for b in policy.budgets_for(profile, &name) {
        let _ = writeln!(
            o,
            "{}:{port} budget: {} ({}): {b}; counted per container; over it a connection or request is refused or cut with budget_exceeded (HTTP 429, TLS access_denied or a 429 inside TLS, a reset for opaque TCP)",
            name.as_str(),
            b.id,
            b.host.as_ref().map_or_else(|| "every host".to_string(), |h| format!("host \"{h}\"")),
        );
    }
    if let Some(t) = policy.ask_timeout(profile) {
        let _ = writeln!(
            o,
            "{}:{port} ask: profile {profile} is in ask mode: what it denies above is held up to {} for `egress-agent approve ID` / `deny ID` (at most {} pending), then denied as shown",
            name.as_str(),
            humantime::format_duration(t),
            policy.ask_max_pending()
        );
    }
    Ok(o)
}

/// How an allowed connection to `name:port` is dialed, for `explain`.
fn route_text(policy: &Policy, name: &CanonicalName, port: u16) -> String {
    match policy.route(name, port) {
        Route::Direct => "direct: the agent resolves the name and dials a screened address".into(),
        Route::Bypass(i, p) => format!(
            "direct (no_upstream_proxy[{i}] \"{p}\"): the agent resolves the name and dials a screened address"
        ),
        Route::Proxy(p) => format!(
            "CONNECT {name}:{port} through upstream proxy {}{} (the proxy resolves the name; the proxy's own address is screened)",
            p.url(),
            if p.auth_file().is_some() { " with upstream_proxy_auth" } else { "" },
            name = name.as_str()
        ),
    }
}
