//! Dialing through the upstream proxy (`upstream_proxy`, issue 17 §1): the agent connects to
//! the proxy — its address resolved by the agent's resolver and screened like any dialed
//! address — asks `CONNECT name:port` and hands back the tunnel, which every room then uses
//! as it would a direct connection (passthrough, inspect, plain HTTP, opaque TCP). The proxy
//! resolves the name; the policy decided before, and the proxy's answer cannot widen it.
//! Every failure is `upstream_unreachable` with the proxy's status line in the reason.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

use crate::{
    deny::DenyCode,
    policy::{name::CanonicalName, Policy, ProxyHost, UpstreamProxy},
    resolve::Resolver,
};

/// A proxy's answer to CONNECT is a short head; more than this is not a proxy speaking.
const MAX_HEAD: usize = 16 * 1024;

type Refused = (DenyCode, String);

/// A tunnel to `name:port` through `proxy`, within the same budget as a direct dial.
pub(super) async fn connect(
    resolver: &Resolver,
    policy: &Policy,
    proxy: &UpstreamProxy,
    name: &CanonicalName,
    port: u16,
) -> Result<TcpStream, Refused> {
    let deadline = Instant::now() + super::CONNECT_TIMEOUT;
    let unreachable = |what: String| {
        (
            DenyCode::UpstreamUnreachable,
            format!("upstream proxy {} {what}", proxy.url()),
        )
    };
    // Read at dial time (a rotated password needs no reload); never logged.
    let auth = proxy.authorization().map_err(|e| {
        unreachable(format!(
            "has no usable credentials (upstream_proxy_auth): {e}"
        ))
    })?;
    let addrs = proxy_addrs(resolver, policy, proxy).await?;
    let mut s = dial(&addrs, deadline)
        .await
        .map_err(|e| unreachable(format!("is unreachable: {e}")))?;
    let target = format!("{name}:{port}");
    handshake(&mut s, &target, auth.as_ref(), deadline)
        .await
        .map_err(unreachable)?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// `CONNECT target`, and the proxy's answer: `Err` says what went wrong (after "upstream
/// proxy URL"), with the status line when the proxy refused.
async fn handshake(
    s: &mut TcpStream,
    target: &str,
    auth: Option<&crate::policy::Secret>,
    deadline: Instant,
) -> Result<(), String> {
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(a) = auth {
        req.push_str(&format!("Proxy-Authorization: {}\r\n", a.expose()));
    }
    req.push_str("\r\n");
    let answer = tokio::time::timeout_at(deadline, async {
        s.write_all(req.as_bytes()).await?;
        read_head(s).await
    })
    .await;
    let head = match answer {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => return Err(format!("failed CONNECT {target}: {e}")),
        Err(_) => {
            return Err(format!(
                "did not answer CONNECT {target} within {}s",
                super::CONNECT_TIMEOUT.as_secs()
            ))
        }
    };
    let (code, status) = parse_status(&head)
        .map_err(|e| format!("sent a malformed answer to CONNECT {target}: {e}"))?;
    if (200..300).contains(&code) {
        return Ok(());
    }
    let fix = if code == 407 {
        " (check upstream_proxy_auth)"
    } else {
        ""
    };
    Err(format!("refused CONNECT {target}: {status}{fix}"))
}

/// The proxy's addresses that the classifier (and the host screen) accept.
async fn proxy_addrs(
    resolver: &Resolver,
    policy: &Policy,
    proxy: &UpstreamProxy,
) -> Result<Vec<SocketAddr>, Refused> {
    let ips = match proxy.host() {
        ProxyHost::Ip(ip) => vec![*ip],
        ProxyHost::Name(n) => {
            resolver
                .lookup(n.as_str())
                .await
                .map_err(|e| {
                    (
                        DenyCode::UpstreamUnreachable,
                        format!("upstream proxy {}: {e}", proxy.url()),
                    )
                })?
                .0
        }
    };
    let (ok, refused) = crate::resolve::screen(policy, ips);
    if ok.is_empty() {
        let reason = if refused.is_empty() {
            format!("upstream proxy {} has no addresses", proxy.url())
        } else {
            format!(
                "upstream proxy {} has only prohibited addresses: {} (exempt it with allow_ranges)",
                proxy.url(),
                refused.join(", ")
            )
        };
        return Err((DenyCode::DestinationIpProhibited, reason));
    }
    Ok(ok
        .into_iter()
        .map(|ip| SocketAddr::new(ip, proxy.port()))
        .collect())
}

/// The first address that accepts, sharing what is left of the budget among them (as
/// `upstream::connect` does for the names it dials itself).
async fn dial(addrs: &[SocketAddr], deadline: Instant) -> Result<TcpStream, String> {
    let mut last = String::new();
    for (i, addr) in addrs.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let slot = left / (addrs.len() - i) as u32;
        match tokio::time::timeout(slot, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: connect timed out after {}ms", slot.as_millis()),
        }
    }
    Err(last)
}

/// The answer's head, up to and including its blank line, and not one byte more: what
/// follows belongs to the tunnel (a server that speaks first, such as SMTP, may already
/// have sent its banner). Peeks, then consumes exactly what it looked at.
async fn read_head(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head: Vec<u8> = Vec::with_capacity(256);
    let mut buf = [0u8; 2048];
    loop {
        let n = s.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the proxy closed the connection before answering",
            ));
        }
        let before = head.len();
        head.extend_from_slice(&buf[..n]);
        let from = before.saturating_sub(3);
        let end = head[from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| from + p + 4);
        let take = end.map_or(n, |e| e - before);
        s.read_exact(&mut buf[..take]).await?;
        if let Some(e) = end {
            head.truncate(e);
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("an answer head longer than {MAX_HEAD} bytes"),
            ));
        }
    }
}

/// The status code and a printable status line (`403 Forbidden`) of a response head.
fn parse_status(head: &[u8]) -> Result<(u16, String), String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("an incomplete head".into()),
        Err(e) => return Err(e.to_string()),
    }
    let code = resp.code.unwrap_or(0);
    // The reason phrase is the proxy's text: shown, but short and printable.
    let phrase: String = resp
        .reason
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(80)
        .collect();
    Ok((code, format!("{code} {phrase}").trim_end().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        let ok = [
            (
                &b"HTTP/1.1 200 Connection established\r\n\r\n"[..],
                200,
                "200 Connection established",
            ),
            (b"HTTP/1.0 200 OK\r\nVia: x\r\n\r\n", 200, "200 OK"),
            (
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
                403,
                "403 Forbidden",
            ),
            (
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
                407,
                "407 Proxy Authentication Required",
            ),
            (b"HTTP/1.1 502 \r\n\r\n", 502, "502"),
        ];
        for (head, code, line) in ok {
            assert_eq!(parse_status(head), Ok((code, line.to_string())));
        }
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n",
        ] {
            assert!(
                parse_status(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// A proxy that answers CONNECT and then, in the same segment, the tunnel's first bytes:
    /// the head is consumed exactly, the banner stays for the client.
    #[tokio::test]
    async fn the_head_is_consumed_and_not_one_byte_more() {
        use tokio::net::TcpListener;
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut c, _) = l.accept().await.expect("accept");
            // The answer arrives in pieces, the last one carrying the banner too.
            for part in [
                &b"HTTP/1.1 200 Connection est"[..],
                b"ablished\r",
                b"\n\r\n220 banner\r\n",
            ] {
                c.write_all(part).await.expect("write");
                c.flush().await.expect("flush");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            c
        });
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let head = read_head(&mut s).await.expect("head");
        assert_eq!(head, b"HTTP/1.1 200 Connection established\r\n\r\n");
        let mut rest = [0u8; 12];
        s.read_exact(&mut rest).await.expect("banner");
        assert_eq!(&rest, b"220 banner\r\n");
        drop(server.await);
    }
}
