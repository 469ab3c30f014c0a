//! Local services (`local = ["otel-collector:4317 -> 127.0.0.1:4317"]`, per profile): a name
//! the sandbox may use for one service the agent reaches on the host (its loopback, or any
//! unicast address it routes to), on exactly one port. The agent's DNS answers the name with
//! its own service address; a connection there on that port is dialed to the target by the
//! agent. Nothing else opens: no `allow_ranges` entry, no other port, no other name.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use super::name::{split_host_port, CanonicalName, HostPattern, Pattern};
use super::RuleRef;

/// One `local` entry of a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalService {
    pub name: CanonicalName,
    pub port: u16,
    /// Where the agent dials (never resolved, never screened by the address policy: the
    /// operator named it explicitly).
    pub target: SocketAddr,
    /// `sandbox:ADDRESS:PORT`: dialed inside the sandbox's own network namespace (a sidecar
    /// on the pod's loopback), not the agent's.
    pub in_sandbox: bool,
    pub rule: RuleRef,
}

impl fmt::Display for LocalService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = if self.in_sandbox { SANDBOX } else { "" };
        write!(f, "{}:{} -> {ns}{}", self.name, self.port, self.target)
    }
}

/// The target prefix of a service in the sandbox's own network namespace.
const SANDBOX: &str = "sandbox:";

const SHAPE: &str =
    "expected \"NAME:PORT -> [sandbox:]ADDRESS:PORT\", e.g. \"otel-collector:4317 -> 127.0.0.1:4317\"";

/// Parses one entry (without checking it against the profile's other rules).
pub fn parse(s: &str, rule: RuleRef) -> Result<LocalService, String> {
    let Some((from, to)) = s.split_once("->") else {
        return Err(format!("{s:?}: {SHAPE}"));
    };
    let (from, to) = (from.trim(), to.trim());
    let (host, port) = name_and_port(from)?;
    let (in_sandbox, to) = match to.strip_prefix(SANDBOX) {
        Some(rest) => (true, rest),
        None => (false, to),
    };
    let target = target(to)?;
    Ok(LocalService {
        name: host,
        port,
        target,
        in_sandbox,
        rule,
    })
}

fn name_and_port(from: &str) -> Result<(CanonicalName, u16), String> {
    if !from.contains(':') {
        return Err(format!(
            "{from:?} has no port: a local service is one port, e.g. \"{from}:4317\""
        ));
    }
    let (host, port) = split_host_port(from, 0).map_err(|e| format!("{from:?}: {e}"))?;
    let name = match HostPattern::parse(&host) {
        Ok(HostPattern::Exact(n)) => n,
        Ok(HostPattern::Wildcard(_)) => {
            return Err(format!(
                "{from:?}: a local service has one exact name, not a wildcard"
            ))
        }
        Err(e) => return Err(format!("{from:?}: {e}")),
    };
    if name.as_str() == crate::SERVICE_NAME {
        return Err(format!(
            "{from:?}: {} is the agent's own name",
            crate::SERVICE_NAME
        ));
    }
    Ok((name, port))
}

fn target(to: &str) -> Result<SocketAddr, String> {
    let sa: SocketAddr = to.parse().map_err(|_| {
        format!("target {to:?} is not ADDRESS:PORT (an IP address, [v6] in brackets; names are never resolved for a local service)")
    })?;
    if sa.port() == 0 {
        return Err(format!("target {to:?}: port 0"));
    }
    if let Some(why) = unusable(sa.ip()) {
        return Err(format!("target {to:?}: {why}"));
    }
    Ok(sa)
}

/// Addresses no local service may name: nothing to dial, or link-local (where cloud metadata
/// services live: those are never a sandbox's "local service").
fn unusable(ip: IpAddr) -> Option<&'static str> {
    let v6_link_local = |ip: &std::net::Ipv6Addr| (ip.segments()[0] & 0xffc0) == 0xfe80;
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() => {
            Some("not a unicast address")
        }
        IpAddr::V4(v4) if v4.is_link_local() => {
            Some("link-local addresses (cloud metadata) cannot be local services")
        }
        IpAddr::V6(v6) if v6.is_unspecified() || v6.is_multicast() => Some("not a unicast address"),
        IpAddr::V6(v6) if v6_link_local(&v6) => {
            Some("link-local addresses (cloud metadata) cannot be local services")
        }
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
            Some("write an IPv4 target as IPv4, not IPv4-mapped IPv6")
        }
        _ => None,
    }
}

/// Why `svc` conflicts with the profile's patterns (a name is a local service or a host on
/// the internet, never both: the agent's DNS answers it with its own address).
pub fn conflict<'a>(
    svc: &LocalService,
    patterns: impl Iterator<Item = (&'a Pattern, &'a RuleRef)>,
) -> Option<String> {
    patterns
        .into_iter()
        .find(|(p, _)| p.host.matches(&svc.name))
        .map(|(_, id)| {
            format!(
                "\"{}\" is also matched by `{id}`: a local service's name must be its own (the agent's DNS answers it with {})",
                svc.name,
                crate::SERVICE_NAME
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rr() -> RuleRef {
        RuleRef::new("profile.default.local[0]".into())
    }

    #[test]
    fn parses_name_port_and_target() {
        let s = parse("OTel-Collector:4317 -> 127.0.0.1:4317", rr()).unwrap();
        assert_eq!(s.name.as_str(), "otel-collector");
        assert_eq!(s.port, 4317);
        assert_eq!(s.target, "127.0.0.1:4317".parse().unwrap());
        let v6 = parse("db:5432->[::1]:5433", rr()).unwrap();
        assert_eq!(v6.target, "[::1]:5433".parse().unwrap());
        assert_eq!(v6.to_string(), "db:5432 -> [::1]:5433");
        assert!(!v6.in_sandbox);
        let side = parse("sidecar:4317 -> sandbox:127.0.0.1:4317", rr()).unwrap();
        assert!(side.in_sandbox);
        assert_eq!(side.to_string(), "sidecar:4317 -> sandbox:127.0.0.1:4317");
    }

    #[test]
    fn refuses_each_bad_shape_in_one_line() {
        for (bad, says) in [
            ("otel:4317", "expected \"NAME:PORT"),
            ("otel:4317 -> sandbox:localhost:4317", "never resolved"),
            ("otel -> 127.0.0.1:4317", "has no port"),
            ("*.otel:4317 -> 127.0.0.1:4317", "wildcard"),
            ("otel:4317 -> localhost:4317", "never resolved"),
            ("otel:4317 -> 127.0.0.1", "not ADDRESS:PORT"),
            ("otel:4317 -> 169.254.169.254:80", "link-local"),
            ("otel:4317 -> 0.0.0.0:4317", "unicast"),
            ("otel:4317 -> [::ffff:127.0.0.1]:4317", "IPv4-mapped"),
            ("egress.internal:81 -> 127.0.0.1:81", "agent's own name"),
            ("otel:0 -> 127.0.0.1:4317", "port"),
            ("10.0.0.1:80 -> 127.0.0.1:80", "IP address"),
        ] {
            let e = parse(bad, rr()).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
