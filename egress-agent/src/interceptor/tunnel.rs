//! An explicit `CONNECT` (clients that honour HTTPS_PROXY): the tunnel is answered, and its
//! first bytes must speak to the host it named — SNI or Host equal to the CONNECT target, or
//! opaque bytes only where a `host:port` rule allows them.

use tokio::{io::AsyncWriteExt, net::TcpStream};

use super::{
    respond::{Refusal, Reply},
    wanted::Wanted,
};
use crate::{
    attachment::Attachment,
    deny::DenyCode,
    peek::{self, PeekLimits, Peeked},
    policy::{name::CanonicalName, split_host_port, Decision, Policy, Protocol},
};

/// How the tunnel's opening ended.
pub enum Opened {
    /// The first bytes inside the tunnel, checked; `buf` holds them.
    Inner(Peeked),
    /// The client went away before the tunnel started.
    Closed,
    Refused(Refusal),
}

/// Answers `200 Connection Established`, drops the CONNECT head from `buf` and peeks at what
/// follows (a client may pipeline its ClientHello right behind the head: those bytes belong to
/// the tunnel).
pub async fn open(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    connect: &Peeked,
    wanted: &Wanted,
    policy: &Policy,
    att: &Attachment,
) -> Opened {
    if client
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await
        .is_err()
    {
        return Opened::Closed;
    }
    let head_len = match connect {
        Peeked::Http(head) => head.head_len.min(buf.len()),
        _ => buf.len(),
    };
    buf.drain(..head_len);
    match check(client, buf, wanted, policy, att).await {
        Ok(inner) => Opened::Inner(inner),
        Err(r) => Opened::Refused(r),
    }
}

async fn check(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    wanted: &Wanted,
    policy: &Policy,
    att: &Attachment,
) -> Result<Peeked, Refusal> {
    let host = wanted.name.as_str();
    let mismatch = |reply: Reply, what: &str, got: &str| {
        Refusal::new(
            reply,
            DenyCode::HostMismatch,
            host,
            wanted.port,
            format!("{what} {got:?} inside a CONNECT tunnel to {host:?}"),
        )
    };
    // Silence is taken for a server-first protocol early only where one could be allowed.
    let mut limits = PeekLimits::default();
    if !matches!(
        policy.decide(&att.profile, &wanted.name, wanted.port, Protocol::Opaque),
        Decision::Allow { .. }
    ) {
        limits.first_byte_timeout = limits.total_timeout;
    }
    match peek::peek(client, buf, limits).await {
        Ok(Peeked::Tls(hello)) => match hello.sni.as_deref().map(CanonicalName::parse) {
            Some(Ok(n)) if n == wanted.name => Ok(Peeked::Tls(hello)),
            _ => Err(mismatch(
                Reply::Tls,
                "SNI",
                hello.sni.as_deref().unwrap_or(""),
            )),
        },
        Ok(Peeked::Http(head)) => {
            let h = head.host.as_deref().unwrap_or("");
            let name = split_host_port(h, wanted.port)
                .ok()
                .and_then(|(h, _)| CanonicalName::parse(&h).ok());
            if name.as_ref() == Some(&wanted.name) {
                Ok(Peeked::Http(head))
            } else {
                Err(mismatch(Reply::Http, "Host", h))
            }
        }
        Ok(other) => match policy.decide(&att.profile, &wanted.name, wanted.port, Protocol::Opaque)
        {
            Decision::Allow { .. } => Ok(other),
            Decision::Deny(d) => Err(Refusal::by_policy(Reply::Reset, d, host, wanted.port)),
        },
        Err(e) => Err(Refusal::new(
            Reply::Reset,
            DenyCode::ProtocolNotAllowed,
            host,
            wanted.port,
            format!("tunnel: {e}"),
        )),
    }
}
