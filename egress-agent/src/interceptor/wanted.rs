//! Step 3 of the interceptor (DESIGN.md §5.3): from what the client sent to the name, port
//! and protocol the policy decides on — SNI, CONNECT target, absolute-form target or Host,
//! canonicalised; for opaque TCP, a name the agent's DNS gave this container for the address.

use std::net::SocketAddr;

use super::respond::{Refusal, Reply};
use crate::{
    attachment::Attachment,
    deny::DenyCode,
    peek::{http::Target, Peeked},
    policy::{name::CanonicalName, split_host_port, Decision, Policy, Protocol},
};

/// What the client asked for, as far as the decision is concerned.
pub struct Wanted {
    pub name: CanonicalName,
    pub port: u16,
    pub protocol: Protocol,
    /// How a denial must be spoken on this connection.
    pub reply: Reply,
}

/// Why no name came out of the client's first bytes.
pub enum Unnamed {
    /// A request for the agent's own status page (`http://egress.internal/status`).
    Status,
    /// Nothing the policy can judge by name: refused in enforce mode; monitor mode forwards
    /// it to the address the client asked for.
    Refused(Refusal),
}

/// The name, port and protocol of a connection to `dst` that began with `peeked`.
pub fn of(
    peeked: &Peeked,
    dst: SocketAddr,
    service: bool,
    att: &Attachment,
    policy: &Policy,
) -> Result<Wanted, Unnamed> {
    let port = dst.port();
    if service && matches!(peeked, Peeked::Opaque | Peeked::H2PriorKnowledge) {
        if let Some(w) = local_by_address(dst, att, policy) {
            return Ok(w);
        }
    }
    match peeked {
        Peeked::Tls(hello) => {
            let Some(sni) = hello.sni.as_deref() else {
                return Err(refused(
                    Reply::Tls,
                    "",
                    port,
                    "TLS ClientHello without SNI: egress is decided by name",
                ));
            };
            Ok(Wanted {
                name: canonical(sni, Reply::Tls, port, "SNI")?,
                port,
                protocol: Protocol::Tls,
                reply: Reply::Tls,
            })
        }
        Peeked::Http(head) => match &head.target {
            Target::Authority(authority) => connect_target(authority, port),
            Target::Absolute {
                authority, scheme, ..
            } => absolute_target(authority, scheme, port),
            _ => host_header(head.host.as_deref(), port, service),
        },
        Peeked::H2PriorKnowledge => Err(Unnamed::Refused(Refusal::new(
            Reply::Reset,
            DenyCode::ProtocolNotAllowed,
            "",
            port,
            "cleartext HTTP/2 (prior knowledge) hides the host name; use TLS or HTTP/1.1",
        ))),
        // The service address is the agent's own (status page, proxy, denied names): no
        // name it was reached by may ever make opaque bytes to it go anywhere.
        Peeked::Opaque if service => Err(Unnamed::Refused(Refusal::new(
            Reply::Reset,
            DenyCode::ProtocolNotAllowed,
            "",
            port,
            format!(
                "opaque TCP to {dst}: {} serves only HTTP, TLS and CONNECT",
                crate::SERVICE_NAME
            ),
        ))),
        Peeked::Opaque => opaque(dst, att, policy),
    }
}

/// Whether opaque TCP to `dst` could be allowed at all: some name the agent's DNS gave this
/// container for the address has a `host:port` rule for the port. Only then is a client that
/// sends nothing worth taking for a server-first protocol early (see [`Session::peek`]).
///
/// [`Session::peek`]: super::session::Session::peek
pub fn opaque_could_be_allowed(dst: SocketAddr, att: &Attachment, policy: &Policy) -> bool {
    att.dns.names_of(dst.ip()).iter().any(|n| {
        CanonicalName::parse(n).is_ok_and(|n| {
            matches!(
                policy.decide(&att.profile, &n, dst.port(), Protocol::Opaque),
                Decision::Allow { .. }
            )
        })
    })
}

/// Bytes that name nothing (opaque TCP, cleartext HTTP/2) to the agent's service address, from
/// a container the agent's DNS gave a `local` service's name: that service when the port is
/// its port; otherwise the name, for the entry's own refusal (`port_not_allowed`).
fn local_by_address(dst: SocketAddr, att: &Attachment, policy: &Policy) -> Option<Wanted> {
    let names: Vec<CanonicalName> = att
        .dns
        .names_of(dst.ip())
        .iter()
        .filter_map(|n| CanonicalName::parse(n).ok())
        .filter(|n| policy.is_local_name(&att.profile, n))
        .collect();
    let name = names
        .iter()
        .find(|n| policy.local_service(&att.profile, n, dst.port()).is_some())
        .or(names.first())?
        .clone();
    Some(Wanted {
        name,
        port: dst.port(),
        protocol: Protocol::Opaque,
        reply: Reply::Reset,
    })
}

/// `CONNECT host:port`: the tunnel's target decides (its port, default 443).
fn connect_target(authority: &str, dst_port: u16) -> Result<Wanted, Unnamed> {
    let reply = Reply::Connect;
    let (host, port) = split_host_port(authority, 443).map_err(|e| {
        refused(
            reply,
            authority,
            dst_port,
            format!("CONNECT target {authority:?}: {e}"),
        )
    })?;
    Ok(Wanted {
        name: canonical(&host, reply, dst_port, "CONNECT target")?,
        port,
        protocol: Protocol::Tls,
        reply,
    })
}

/// An explicit-proxy request (`GET http://host/…`): only `http` is served this way.
fn absolute_target(authority: &str, scheme: &str, dst_port: u16) -> Result<Wanted, Unnamed> {
    let reply = Reply::Http;
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(Unnamed::Refused(Refusal::new(
            reply,
            DenyCode::ProtocolNotAllowed,
            authority,
            dst_port,
            format!(
                "proxy requests for scheme {scheme:?} are not supported; use CONNECT for https"
            ),
        )));
    }
    let (host, port) = split_host_port(authority, 80).map_err(|e| {
        refused(
            reply,
            authority,
            dst_port,
            format!("request target {authority:?}: {e}"),
        )
    })?;
    Ok(Wanted {
        name: canonical(&host, reply, dst_port, "request target")?,
        port,
        protocol: Protocol::Http,
        reply,
    })
}

/// A plain HTTP request: its `Host` header names it (the port is the one it connected to).
fn host_header(host: Option<&str>, port: u16, service: bool) -> Result<Wanted, Unnamed> {
    let reply = Reply::Http;
    let Some(host) = host else {
        return Err(refused(
            reply,
            "",
            port,
            "HTTP request without a Host header: egress is decided by name",
        ));
    };
    let (h, _) = split_host_port(host, port)
        .map_err(|e| refused(reply, host, port, format!("Host {host:?}: {e}")))?;
    // The status page is the service address asked for by its own name (or address); any
    // other Host there is a name the agent's DNS steered to it, judged like everywhere.
    if service && is_service_name(&h) {
        return Err(Unnamed::Status);
    }
    Ok(Wanted {
        name: canonical(&h, reply, port, "Host")?,
        port,
        protocol: Protocol::Http,
        reply,
    })
}

fn is_service_name(host: &str) -> bool {
    let h = host.trim_end_matches('.');
    h.eq_ignore_ascii_case(crate::SERVICE_NAME)
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip == std::net::IpAddr::V4(crate::SERVICE_ADDR4))
}

/// No name on the wire: only a name our DNS gave this container for this address can be
/// matched, and only against a host:port rule. Several names may share an address (CDNs):
/// the first one a host:port rule allows decides; else the first name, for the reason.
fn opaque(dst: SocketAddr, att: &Attachment, policy: &Policy) -> Result<Wanted, Unnamed> {
    let names = att.dns.names_of(dst.ip());
    let allows = |n: &CanonicalName| {
        matches!(
            policy.decide(&att.profile, n, dst.port(), Protocol::Opaque),
            Decision::Allow { .. }
        )
    };
    let chosen = names
        .iter()
        .filter_map(|n| CanonicalName::parse(n).ok())
        .find(allows)
        .map(|n| n.as_str().to_string())
        .or_else(|| names.first().cloned());
    let Some(name) = chosen else {
        return Err(Unnamed::Refused(Refusal::new(
            Reply::Reset,
            DenyCode::ProtocolNotAllowed,
            "",
            dst.port(),
            format!("opaque TCP to {dst} with no name: the address was not obtained from the agent's DNS"),
        )));
    };
    Ok(Wanted {
        name: canonical(&name, Reply::Reset, dst.port(), "name")?,
        port: dst.port(),
        protocol: Protocol::Opaque,
        reply: Reply::Reset,
    })
}

fn canonical(raw: &str, reply: Reply, port: u16, what: &str) -> Result<CanonicalName, Unnamed> {
    CanonicalName::parse(raw).map_err(|e| {
        let shown: String = raw.chars().filter(|c| !c.is_control()).take(255).collect();
        refused(
            reply,
            shown,
            port,
            format!("{what} {raw:?} is not an acceptable host name: {e}"),
        )
    })
}

fn refused(reply: Reply, host: impl Into<String>, port: u16, reason: impl Into<String>) -> Unnamed {
    Unnamed::Refused(Refusal::new(
        reply,
        DenyCode::HostNotAllowed,
        host,
        port,
        reason,
    ))
}
