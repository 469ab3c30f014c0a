//! Control plane: what several commands say the same way: an error chain as one line (every command's
//! failure, the control socket's refusals) and the explanation of a decision (`explain`, on
//! the command line and on the control socket).

use anyhow::{bail, Result};

use crate::policy::{name::CanonicalName, Decision, Policy, Protocol};

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
    Ok(o)
}
