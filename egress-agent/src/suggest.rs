//! Command: `egress-agent suggest --from AUDIT.jsonl [--profile NAME] [--wildcards]`:
//! the minimal policy that would have allowed what an audit log recorded
//! (typically a `mode = "monitor"` session, whose would-be denials are
//! `would_deny` records).
//!
//! - TLS / HTTP / CONNECT to ports 80 or 443: `name` (a rule without a port
//!   covers exactly those two); any other port: `name:port`.
//! - Opaque TCP (no name on the wire, matched through the agent's DNS): always
//!   `name:port` (opaque TCP is only ever allowed by an explicit port).
//! - A name that was only resolved: `name` (a rule must name it for its DNS
//!   question to be answered), marked in a comment.
//! - Kernel denials (the built-in deny set) and denials about addresses or
//!   attacks (`destination_ip_prohibited`, `host_mismatch`, ...) are never
//!   turned into rules: no name rule can or should allow them.
//! - `--wildcards`: two or more names directly under the same parent domain
//!   (itself at least two labels, so never `*.com`) become `*.parent`.
//!
//! The output is checked with the policy parser before it is printed.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write,
    path::PathBuf,
};

use clap::Args;

use crate::policy::{name::CanonicalName, Policy};

#[derive(Args, Debug)]
pub struct SuggestArgs {
    /// The audit log (JSONL) to learn from.
    #[arg(long = "from", value_name = "AUDIT.jsonl")]
    pub from: PathBuf,
    /// Only this profile's records (default: every profile seen).
    #[arg(long)]
    pub profile: Option<String>,
    /// Group sibling names under `*.parent`.
    #[arg(long)]
    pub wildcards: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SuggestError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: not an audit record: {source}")]
    Parse {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
    #[error("{0}: no decision with a host name{1}: nothing to suggest")]
    Empty(PathBuf, String),
    #[error("internal error: the suggested policy does not parse: {0}")]
    Invalid(String),
}

/// Codes whose records say "a rule for this name (and port) is missing".
const LEARNABLE: [&str; 3] = [
    "host_not_allowed",
    "port_not_allowed",
    "protocol_not_allowed",
];

/// A rule's port part: `None` = 80 and 443.
type Spec = Option<u16>;

#[derive(Default)]
struct Seen {
    /// name → port specs used by connections.
    connected: BTreeMap<String, BTreeSet<Spec>>,
    /// names only resolved.
    resolved: BTreeSet<String>,
    /// destinations of connections that carried no name (no rule can allow them).
    nameless: BTreeSet<String>,
}

pub fn run(args: &SuggestArgs) -> Result<String, SuggestError> {
    let text = std::fs::read_to_string(&args.from).map_err(|source| SuggestError::Read {
        path: args.from.clone(),
        source,
    })?;
    let mut profiles: BTreeMap<String, Seen> = BTreeMap::new();
    let (mut total, mut used) = (0usize, 0usize);
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        total += 1;
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|source| SuggestError::Parse {
                path: args.from.clone(),
                line: i + 1,
                source,
            })?;
        let profile = v["profile"].as_str().unwrap_or("default");
        if args.profile.as_deref().is_some_and(|p| p != profile) {
            continue;
        }
        if let Some(dst) = nameless(&v) {
            used += 1;
            let seen = profiles.entry(profile.to_string()).or_default();
            seen.nameless.insert(dst);
        } else if let Some((name, spec)) = learn(&v) {
            used += 1;
            let seen = profiles.entry(profile.to_string()).or_default();
            match spec {
                Some(spec) => {
                    seen.connected.entry(name).or_default().insert(spec);
                }
                None => {
                    seen.resolved.insert(name);
                }
            }
        }
    }
    if profiles.is_empty() {
        let which = args
            .profile
            .as_ref()
            .map(|p| format!(" for profile {p}"))
            .unwrap_or_default();
        return Err(SuggestError::Empty(args.from.clone(), which));
    }
    let out = render(args, &profiles, total, used);
    Policy::parse(&out, "suggest").map_err(|e| SuggestError::Invalid(e.to_string()))?;
    Ok(out)
}

/// The destination of a monitor-mode connection that had no name at all.
fn nameless(v: &serde_json::Value) -> Option<String> {
    let learnable = v["decision"] == "would_deny"
        && v["protocol"] != "kernel"
        && !v["protocol"].as_str().unwrap_or("dns").starts_with("dns")
        && v["code"].as_str().is_some_and(|c| LEARNABLE.contains(&c));
    (learnable && v["name"].is_null())
        .then(|| v["orig_dst"].as_str().map(str::to_string))
        .flatten()
}

/// The (name, Some(port spec)) a connection record asks for, or (name, None)
/// for a DNS question; None when the record teaches nothing.
fn learn(v: &serde_json::Value) -> Option<(String, Option<Spec>)> {
    let decision = v["decision"].as_str()?;
    let protocol = v["protocol"].as_str()?;
    if protocol == "kernel" {
        return None;
    }
    match (decision, v["code"].as_str()) {
        ("allow", _) => {}
        ("would_deny" | "deny", Some(code)) if LEARNABLE.contains(&code) => {}
        _ => return None,
    }
    let name = CanonicalName::parse(v["name"].as_str()?).ok()?;
    if name.as_str() == crate::SERVICE_NAME {
        return None;
    }
    let name = name.as_str().to_string();
    if protocol.starts_with("dns") {
        return Some((name, None));
    }
    // The decided port (a CONNECT target's), else the original destination's.
    let port = v["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .or_else(|| {
            v["orig_dst"]
                .as_str()
                .and_then(|d| d.parse::<std::net::SocketAddr>().ok())
                .map(|a| a.port())
        });
    let spec = match (protocol, port) {
        ("opaque", Some(p)) => Some(p),
        ("opaque", None) => return None,
        (_, Some(80 | 443) | None) => None,
        (_, Some(p)) => Some(p),
    };
    Some((name, Some(spec)))
}

fn render(
    args: &SuggestArgs,
    profiles: &BTreeMap<String, Seen>,
    total: usize,
    used: usize,
) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# suggested by `egress-agent suggest` from {} ({used} of {total} records used)",
        args.from.display()
    );
    let _ = writeln!(
        o,
        "# add `resolver` and `allow_ranges` as your deployment needs; review before enforcing"
    );
    let _ = writeln!(o, "mode = \"enforce\"");
    for (profile, seen) in profiles {
        let mut rules: BTreeMap<String, BTreeSet<Spec>> = seen.connected.clone();
        let mut dns_only = Vec::new();
        for n in &seen.resolved {
            if !rules.contains_key(n) {
                rules.insert(n.clone(), BTreeSet::from([None]));
                dns_only.push(n.clone());
            }
        }
        if args.wildcards {
            rules = group(rules);
        }
        let _ = writeln!(o, "\n[profile.{}]", key(profile));
        if !dns_only.is_empty() {
            let _ = writeln!(
                o,
                "# resolved but never connected to (allowed on 80/443 so their DNS answers): {}",
                dns_only.join(", ")
            );
        }
        if !seen.nameless.is_empty() {
            let list: Vec<&str> = seen.nameless.iter().map(String::as_str).collect();
            let _ = writeln!(
                o,
                "# connections without any name (enforce mode refuses them; no rule can allow them): {}",
                list.join(", ")
            );
        }
        let mut allow = Vec::new();
        for (name, specs) in &rules {
            for s in specs {
                allow.push(match s {
                    None => format!("{name:?}"),
                    Some(p) => format!("\"{name}:{p}\""),
                });
            }
        }
        let _ = writeln!(o, "allow = [{}]", allow.join(", "));
    }
    o
}

/// `*.parent` for two or more names directly under `parent`.
fn group(rules: BTreeMap<String, BTreeSet<Spec>>) -> BTreeMap<String, BTreeSet<Spec>> {
    let mut by_parent: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in rules.keys() {
        if let Some((_, parent)) = name.split_once('.') {
            if parent.contains('.') {
                by_parent
                    .entry(parent.to_string())
                    .or_default()
                    .push(name.clone());
            }
        }
    }
    let mut out = rules.clone();
    for (parent, names) in by_parent {
        if names.len() < 2 {
            continue;
        }
        let mut specs = BTreeSet::new();
        for n in &names {
            if let Some(s) = out.remove(n) {
                specs.extend(s);
            }
        }
        out.entry(format!("*.{parent}")).or_default().extend(specs);
    }
    out
}

/// A TOML key: bare when it can be.
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(lines: &[serde_json::Value]) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "egress-suggest-{}-{}.jsonl",
            std::process::id(),
            lines.len()
        ));
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&p, text).unwrap();
        p
    }

    fn rec(
        proto: &str,
        decision: &str,
        code: Option<&str>,
        name: &str,
        dst: &str,
    ) -> serde_json::Value {
        serde_json::json!({"profile": "default", "protocol": proto, "decision": decision,
            "code": code, "name": name, "orig_dst": dst})
    }

    #[test]
    fn minimal_rules_and_wildcards() {
        let wd = Some("host_not_allowed");
        let p = write(&[
            rec(
                "http",
                "would_deny",
                wd,
                "www.shop.test",
                "198.51.100.10:80",
            ),
            rec(
                "tls",
                "would_deny",
                wd,
                "api.shop.test",
                "198.51.100.10:443",
            ),
            rec("tls", "allow", None, "api.shop.test", "198.51.100.10:8443"),
            rec(
                "opaque",
                "would_deny",
                Some("protocol_not_allowed"),
                "db.test",
                "198.51.100.12:5432",
            ),
            rec("dns", "would_deny", wd, "db.test", "dns"),
            rec("dns", "would_deny", wd, "lookup.test", "dns"),
            rec("kernel", "deny", Some("metadata"), "", "169.254.169.254:80"),
            rec(
                "tls",
                "deny",
                Some("host_mismatch"),
                "evil.test",
                "198.51.100.10:443",
            ),
            rec("http", "allow", None, "egress.internal", "192.0.2.1:80"),
            serde_json::json!({"profile": "default", "protocol": "connect", "decision": "would_deny",
                "code": "host_not_allowed", "name": "tunnel.test", "port": 8443,
                "orig_dst": "192.0.2.1:3128"}),
            serde_json::json!({"profile": "default", "protocol": "opaque", "decision": "would_deny",
                "code": "protocol_not_allowed", "orig_dst": "198.51.100.10:25"}),
        ]);
        let args = SuggestArgs {
            from: p.clone(),
            profile: None,
            wildcards: false,
        };
        let out = run(&args).unwrap();
        assert!(
            out.contains(r#"allow = ["api.shop.test", "api.shop.test:8443", "db.test:5432", "lookup.test", "tunnel.test:8443", "www.shop.test"]"#),
            "{out}"
        );
        assert!(
            !out.contains("evil") && !out.contains("egress.internal"),
            "{out}"
        );
        assert!(
            out.contains("no rule can allow them): 198.51.100.10:25\n"),
            "{out}"
        );
        let wild = run(&SuggestArgs {
            wildcards: true,
            ..args
        })
        .unwrap();
        assert!(
            wild.contains(
                r#"allow = ["*.shop.test", "*.shop.test:8443", "db.test:5432", "lookup.test", "tunnel.test:8443"]"#
            ),
            "{wild}"
        );
        let other = run(&SuggestArgs {
            from: p.clone(),
            profile: Some("ci".into()),
            wildcards: false,
        });
        assert!(matches!(other, Err(SuggestError::Empty(..))));
        std::fs::remove_file(p).unwrap();
    }
}
