//! The interceptor (DESIGN.md §5): every TCP connection the kernel redirected
//! arrives here. Recover the original destination, peek at what the client
//! says (ClientHello, HTTP head, CONNECT, or nothing), decide by *name*, resolve
//! the name ourselves, re-check every address, dial one we checked, and splice.

mod monitor;
mod respond;
pub(crate) mod upstream;

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use crate::{
    agent::Attachment,
    deny::DenyCode,
    peek::{self, http::Target, PeekLimits, Peeked},
    policy::{name::CanonicalName, Decision, Policy, Protocol},
    record::Record,
};
pub use respond::Reply;

/// Connections served at once per container (its v4 and v6 listeners share
/// the budget); beyond it new ones are reset. Each costs two descriptors, and
/// descriptors are one pool for the whole agent: the cap is also held under
/// half of what RLIMIT_NOFILE leaves after a reserve, so one container filling
/// its budget cannot make accept() fail (EMFILE) for the others.
const MAX_CONNECTIONS: usize = 16_384;
/// Descriptors kept for everything else: other containers' first connections,
/// listeners, DNS sockets, upstream resolver sockets, the audit log, bpf maps.
const FD_RESERVE: u64 = 1024;

/// The per-container connection cap for this process's descriptor limit.
pub fn connection_cap() -> usize {
    let nofile = crate::sys::nofile_limit().unwrap_or(1024);
    (MAX_CONNECTIONS as u64)
        .min(nofile.saturating_sub(FD_RESERVE) / 2)
        .max(64) as usize
}

/// The semaphore an attachment's listeners share.
pub fn connection_permits() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(connection_cap()))
}

pub async fn serve(listener: TcpListener, att: Arc<Attachment>) {
    let permits = att.conn_permits.clone();
    // At most one warning per 10 s while at the cap.
    let mut warned: Option<Instant> = None;
    let mut backoff = Duration::from_millis(5);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                warned = Some(Instant::now());
                tracing::warn!(
                    cgroup_id = att.cgroup.id,
                    max = connection_cap(),
                    "connections at the per-container cap; resetting new ones until some end"
                );
            }
            respond::reset(stream);
            continue;
        };
        let att = att.clone();
        tokio::spawn(async move {
            handle(stream, peer, &att).await;
            drop(permit);
        });
    }
}

/// What the client asked for, as far as the decision is concerned.
struct Wanted {
    name: CanonicalName,
    port: u16,
    protocol: Protocol,
    /// How a denial must be spoken on this connection.
    reply: Reply,
}

async fn handle(mut client: TcpStream, peer: SocketAddr, att: &Arc<Attachment>) {
    let started = Instant::now();
    let _active = att.shared.audit.metrics().connection();
    let _ = client.set_nodelay(true);
    let mut rec = att.record("tcp");
    rec.client = peer.to_string();

    // 1. Who is this, and where did it want to go?
    let cookie = crate::sys::netns_cookie(client.as_raw_fd()).unwrap_or(0);
    let orig = match att.orig.take(cookie, peer) {
        Ok(Some(o)) => o,
        other => {
            rec.decision = "deny";
            rec.code = Some("no_original_destination".into());
            rec.reason = Some(match other {
                Err(e) => format!("original destination lookup failed: {e}"),
                _ => format!(
                    "no original destination recorded for {peer}: not a redirected connection"
                ),
            });
            att.shared.audit.record(rec);
            respond::reset(client);
            return;
        }
    };
    let dst = orig.destination();
    rec.pid = orig.tgid;
    rec.comm = orig.comm().to_string();
    rec.orig_dst = dst.to_string();
    let service = is_service(dst.ip());

    if dst.port() == 53 && !service {
        rec.protocol = "dns-tcp";
        Box::pin(crate::dns::serve_tcp(client, att, rec)).await;
        return;
    }

    // One policy snapshot for the whole connection: a reload never changes a
    // decision already made.
    let policy = att.shared.policy.load_full();
    rec.policy = policy.version().to_string();

    // 2. Peek.
    let mut buf = Vec::new();
    let peeked = match Box::pin(peek::peek(&mut client, &mut buf, PeekLimits::default())).await {
        Ok(p) => p,
        // The client spoke HTTP, badly or deceptively (absolute-form naming another host than
        // Host, NUL/CR in a header, two Host lines): it gets the HTTP deny contract, so a person
        // sees why, not a bare reset.
        Err(peek::PeekError::Http(e)) => {
            let (code, host) = match &e {
                peek::HttpPeekError::HostMismatch { target_host, .. } => {
                    (DenyCode::HostMismatch, target_host.clone())
                }
                _ => (DenyCode::ProtocolNotAllowed, String::new()),
            };
            rec.protocol = Reply::Http.label();
            let reason = format!("malformed or ambiguous HTTP request: {e}");
            let denial =
                respond::denial(&policy, code, host, dst.port(), reason, None, String::new());
            deny(att, &policy, client, Reply::Http, denial, rec, started).await;
            return;
        }
        // Likewise a ClientHello we cannot accept (a NUL in the SNI, a broken extension): the
        // client gets a TLS alert, as for any refused TLS connection.
        Err(peek::PeekError::Tls(e)) => {
            rec.protocol = Reply::Tls.label();
            let reason = format!("unacceptable TLS ClientHello: {e}");
            let denial = respond::denial(
                &policy,
                DenyCode::ProtocolNotAllowed,
                String::new(),
                dst.port(),
                reason,
                None,
                String::new(),
            );
            deny(att, &policy, client, Reply::Tls, denial, rec, started).await;
            return;
        }
        Err(e) => {
            rec.decision = "deny";
            rec.code = Some("protocol_not_allowed".into());
            rec.reason = Some(format!("could not read the client's first bytes: {e}"));
            finish(att, rec, started);
            respond::reset(client);
            return;
        }
    };

    // 3. Name, port, protocol.
    let wanted = match what_is_wanted(&peeked, dst, service, att, &policy) {
        Ok(w) => w,
        Err(Early::Status) => {
            rec.protocol = "http";
            rec.name = Some(crate::SERVICE_NAME.into());
            let body = crate::status::page(att, &policy);
            let _ = client.write_all(&respond::json_ok(&body)).await;
            finish(att, rec, started);
            return;
        }
        Err(Early::Deny {
            reply,
            code,
            host,
            reason,
        }) => {
            rec.protocol = reply.label();
            rec.name = host.clone();
            if policy.mode() == crate::policy::Mode::Monitor && !service {
                (rec.decision, rec.code) = ("would_deny", Some(code.as_str().into()));
                rec.reason = Some(reason);
                Box::pin(monitor::pass_nameless(
                    client, buf, dst, att, &policy, rec, started,
                ))
                .await;
                return;
            }
            let denial = respond::denial(
                &policy,
                code,
                host.unwrap_or_default(),
                dst.port(),
                reason,
                None,
                String::new(),
            );
            deny(att, &policy, client, reply, denial, rec, started).await;
            return;
        }
    };
    rec.protocol = wanted.reply.label();
    rec.name = Some(wanted.name.as_str().to_string());
    rec.port = Some(wanted.port);

    // 4. Decide.
    let decision = policy.decide(&att.profile, &wanted.name, wanted.port, wanted.protocol);
    let mut inspect = false;
    match decision {
        Decision::Allow {
            rule,
            inspect: inspected,
        } => {
            rec.rule = Some(rule.to_string());
            inspect = inspected;
        }
        Decision::Deny(d) => {
            let denial = respond::denial(
                &policy,
                d.code,
                wanted.name.as_str().into(),
                wanted.port,
                d.reason,
                d.rule.map(|r| r.to_string()),
                d.hint,
            );
            if policy.mode() == crate::policy::Mode::Monitor {
                rec.decision = "would_deny";
                rec.code = Some(denial.code.as_str().into());
                rec.reason = Some(denial.reason.clone());
            } else {
                deny(att, &policy, client, wanted.reply, denial, rec, started).await;
                return;
            }
        }
    }

    // ECH under inspection is stripped, not refused: our TLS server (rustls)
    // ignores the extension and answers for the outer name, which is the name
    // the policy just judged. A GREASE-ECH client (every Chromium) carries on;
    // a client with real ECH cannot verify ECH acceptance and aborts itself, so
    // its hidden inner name never gets a connection. Noted in the audit log.
    if let (true, Peeked::Tls(hello)) = (inspect, &peeked) {
        if hello.offers_ech() {
            rec.reason = Some(
                "ClientHello offered ECH; stripped under inspection (decided on the outer SNI)"
                    .into(),
            );
        }
    }

    // 5. Resolve ourselves, re-check every address, dial one we checked — unless this
    //    container already holds a verified HTTP/2 connection to the same inspected name,
    //    dialed under this very policy snapshot: then its requests share it.
    if let (true, Peeked::Tls(_), Reply::Tls) = (inspect, &peeked, &wanted.reply) {
        if let Some((h2, peer)) = att
            .upstreams
            .get(&policy, wanted.name.as_str(), wanted.port)
        {
            rec.upstream = peer.map(|a| a.to_string());
            rec.protocol = "http";
            let conn = crate::http_proxy::Conn::new(
                att.clone(),
                policy,
                wanted.name,
                wanted.port,
                None,
                rec,
                None,
            )
            .with_shared_h2(h2);
            Box::pin(crate::tls::inspect(client, buf, conn)).await;
            return;
        }
    }
    let upstream = match Box::pin(upstream::connect(att, &policy, &wanted.name, wanted.port)).await
    {
        Ok(u) => u,
        Err((code, reason)) => {
            let denial = respond::denial(
                &policy,
                code,
                wanted.name.as_str().into(),
                wanted.port,
                reason,
                rec.rule.clone(),
                String::new(),
            );
            deny(att, &policy, client, wanted.reply, denial, rec, started).await;
            return;
        }
    };
    rec.upstream = upstream.peer_addr().ok().map(|a| a.to_string());

    // 6. CONNECT: answer, then hold the tunnel's first bytes to the same name.
    let mut upstream = upstream;
    let mut inner = None;
    if let Reply::Connect = wanted.reply {
        if client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
            .is_err()
        {
            finish(att, rec, started);
            return;
        }
        // Only the CONNECT head is ours: a client may pipeline its ClientHello right behind
        // it (optimistic CONNECT), and those bytes belong to the tunnel.
        let head_len = match &peeked {
            Peeked::Http(head) => head.head_len.min(buf.len()),
            _ => buf.len(),
        };
        buf.drain(..head_len);
        match Box::pin(check_tunnel(&mut client, &mut buf, &wanted, &policy, att)).await {
            Ok(p) => inner = Some(p),
            Err((reply, denial)) => {
                deny(att, &policy, client, reply, denial, rec, started).await;
                return;
            }
        }
    }

    // 7. Hand-off: inspected TLS and plain HTTP are served request by request (every
    //    request's Host, method and path checked); the rest is spliced.
    let first = inner.as_ref().unwrap_or(&peeked);
    let engine = match first {
        Peeked::Tls(_) if inspect => Some(true),
        Peeked::Http(_) => Some(false),
        _ => None,
    };
    if let Some(tls) = engine {
        rec.protocol = "http";
        let conn = crate::http_proxy::Conn::new(
            att.clone(),
            policy,
            wanted.name,
            wanted.port,
            None,
            rec,
            Some(upstream),
        );
        if tls {
            Box::pin(crate::tls::inspect(client, buf, conn)).await;
        } else {
            let io = crate::rewind::Rewind::new(buf, client);
            Box::pin(crate::http_proxy::serve(io, Arc::new(conn), false)).await;
        }
        return;
    }

    // 8. Passthrough: replay what we read, then copy both ways.
    if !buf.is_empty() && upstream.write_all(&buf).await.is_err() {
        finish(att, rec, started);
        return;
    }
    // Nothing of the set-up outlives it: a spliced connection may stay open for hours, and
    // its task should hold little more than the two sockets (the sub-futures above are boxed
    // for the same reason: inline, the largest of them sized every connection's task).
    drop((buf, peeked, inner, wanted));
    let (t, err) = crate::copy::bidirectional(client, upstream).await;
    rec.bytes_up = t.up;
    rec.bytes_down = t.down;
    if let Some(e) = err {
        // The record says why the connection ended early (the peer got a reset too).
        if let crate::copy::Disconnect::UpstreamReset(_) = e {
            tracing::info!(dst = %rec.orig_dst, upstream = rec.upstream.as_deref().unwrap_or(""), error = %e, "upstream reset; client reset too");
        }
        rec.reason = Some(e.to_string());
    }
    finish(att, rec, started);
}

enum Early {
    /// The in-sandbox status page.
    Status,
    Deny {
        reply: Reply,
        code: DenyCode,
        host: Option<String>,
        reason: String,
    },
}

fn is_service(ip: IpAddr) -> bool {
    crate::bpf::maps::to_v6(ip) == crate::SERVICE_ADDR4.to_ipv6_mapped()
}

fn canonical(raw: &str, reply: Reply, what: &str) -> Result<CanonicalName, Early> {
    CanonicalName::parse(raw).map_err(|e| Early::Deny {
        reply,
        code: DenyCode::HostNotAllowed,
        host: Some(raw.chars().filter(|c| !c.is_control()).take(255).collect()),
        reason: format!("{what} {raw:?} is not an acceptable host name: {e}"),
    })
}

fn what_is_wanted(
    peeked: &Peeked,
    dst: SocketAddr,
    service: bool,
    att: &Attachment,
    policy: &Policy,
) -> Result<Wanted, Early> {
    match peeked {
        Peeked::Tls(hello) => {
            let reply = Reply::Tls;
            let Some(sni) = hello.sni.as_deref() else {
                return Err(Early::Deny {
                    reply,
                    code: DenyCode::HostNotAllowed,
                    host: None,
                    reason: "TLS ClientHello without SNI: egress is decided by name".into(),
                });
            };
            Ok(Wanted {
                name: canonical(sni, reply, "SNI")?,
                port: dst.port(),
                protocol: Protocol::Tls,
                reply,
            })
        }
        Peeked::Http(head) => {
            match &head.target {
                Target::Authority(authority) => {
                    let reply = Reply::Connect;
                    let (host, port) = crate::policy::name::split_host_port(authority, 443)
                        .map_err(|e| Early::Deny {
                            reply,
                            code: DenyCode::HostNotAllowed,
                            host: Some(authority.clone()),
                            reason: format!("CONNECT target {authority:?}: {e}"),
                        })?;
                    Ok(Wanted {
                        name: canonical(&host, reply, "CONNECT target")?,
                        port,
                        protocol: Protocol::Tls,
                        reply,
                    })
                }
                Target::Absolute {
                    authority, scheme, ..
                } => {
                    let reply = Reply::Http;
                    if !scheme.eq_ignore_ascii_case("http") {
                        return Err(Early::Deny {
                        reply,
                        code: DenyCode::ProtocolNotAllowed,
                        host: Some(authority.clone()),
                        reason: format!("proxy requests for scheme {scheme:?} are not supported; use CONNECT for https"),
                    });
                    }
                    let (host, port) = crate::policy::name::split_host_port(authority, 80)
                        .map_err(|e| Early::Deny {
                            reply,
                            code: DenyCode::HostNotAllowed,
                            host: Some(authority.clone()),
                            reason: format!("request target {authority:?}: {e}"),
                        })?;
                    Ok(Wanted {
                        name: canonical(&host, reply, "request target")?,
                        port,
                        protocol: Protocol::Http,
                        reply,
                    })
                }
                _ => {
                    let reply = Reply::Http;
                    let Some(host) = head.host.as_deref() else {
                        return Err(Early::Deny {
                            reply,
                            code: DenyCode::HostNotAllowed,
                            host: None,
                            reason: "HTTP request without a Host header: egress is decided by name"
                                .into(),
                        });
                    };
                    let (h, _) =
                        crate::policy::name::split_host_port(host, dst.port()).map_err(|e| {
                            Early::Deny {
                                reply,
                                code: DenyCode::HostNotAllowed,
                                host: Some(host.to_string()),
                                reason: format!("Host {host:?}: {e}"),
                            }
                        })?;
                    if service {
                        return Err(Early::Status);
                    }
                    Ok(Wanted {
                        name: canonical(&h, reply, "Host")?,
                        port: dst.port(),
                        protocol: Protocol::Http,
                        reply,
                    })
                }
            }
        }
        Peeked::H2PriorKnowledge => Err(Early::Deny {
            reply: Reply::Reset,
            code: DenyCode::ProtocolNotAllowed,
            host: None,
            reason: "cleartext HTTP/2 (prior knowledge) hides the host name; use TLS or HTTP/1.1"
                .into(),
        }),
        Peeked::Opaque => {
            // No name on the wire: only a name our DNS gave this container for
            // this address can be matched, and only against a host:port rule.
            // Several names may share an address (CDNs): the first one a
            // host:port rule allows decides; else the first name, for the reason.
            let names = att.dns.names_of(dst.ip());
            let chosen = names
                .iter()
                .filter_map(|n| CanonicalName::parse(n).ok())
                .find(|n| {
                    matches!(
                        policy.decide(&att.profile, n, dst.port(), Protocol::Opaque),
                        Decision::Allow { .. }
                    )
                })
                .map(|n| n.as_str().to_string())
                .or_else(|| names.first().cloned());
            let Some(name) = chosen else {
                return Err(Early::Deny {
                    reply: Reply::Reset,
                    code: DenyCode::ProtocolNotAllowed,
                    host: None,
                    reason: format!("opaque TCP to {dst} with no name: the address was not obtained from the agent's DNS"),
                });
            };
            Ok(Wanted {
                name: canonical(&name, Reply::Reset, "name")?,
                port: dst.port(),
                protocol: Protocol::Opaque,
                reply: Reply::Reset,
            })
        }
    }
}

/// Inside a CONNECT tunnel the client must speak to the host it named:
/// SNI or Host equal to the CONNECT target, or opaque bytes only where allowed.
async fn check_tunnel(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    wanted: &Wanted,
    policy: &Policy,
    att: &Attachment,
) -> Result<Peeked, (Reply, crate::deny::Denial)> {
    let host = wanted.name.as_str().to_string();
    let mismatch = |reply: Reply, what: &str, got: &str| {
        (
            reply,
            respond::denial(
                policy,
                DenyCode::HostMismatch,
                host.clone(),
                wanted.port,
                format!("{what} {got:?} inside a CONNECT tunnel to {host:?}"),
                None,
                String::new(),
            ),
        )
    };
    match peek::peek(client, buf, PeekLimits::default()).await {
        Ok(Peeked::Tls(hello)) => match hello.sni.as_deref().map(CanonicalName::parse) {
            Some(Ok(n)) if n == wanted.name => Ok(Peeked::Tls(hello)),
            Some(_) => Err(mismatch(
                Reply::Tls,
                "SNI",
                hello.sni.as_deref().unwrap_or(""),
            )),
            None => Err(mismatch(Reply::Tls, "SNI", "")),
        },
        Ok(Peeked::Http(head)) => {
            let h = head.host.as_deref().unwrap_or("");
            let name = crate::policy::name::split_host_port(h, wanted.port)
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
            Decision::Deny(d) => Err((
                Reply::Reset,
                respond::denial(
                    policy,
                    d.code,
                    host.clone(),
                    wanted.port,
                    d.reason,
                    d.rule.map(|r| r.to_string()),
                    d.hint,
                ),
            )),
        },
        Err(e) => Err((
            Reply::Reset,
            respond::denial(
                policy,
                DenyCode::ProtocolNotAllowed,
                host.clone(),
                wanted.port,
                format!("tunnel: {e}"),
                None,
                String::new(),
            ),
        )),
    }
}

/// Refuses the connection as its protocol expects. Boxed here rather than at its callers:
/// inline, this future would add to every connection task's size (see step 8 of `handle`).
fn deny<'a>(
    att: &'a Attachment,
    policy: &'a Policy,
    client: TcpStream,
    reply: Reply,
    denial: crate::deny::Denial,
    rec: Record,
    started: Instant,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
    Box::pin(deny_now(att, policy, client, reply, denial, rec, started))
}

async fn deny_now(
    att: &Attachment,
    _policy: &Policy,
    client: TcpStream,
    reply: Reply,
    denial: crate::deny::Denial,
    mut rec: Record,
    started: Instant,
) {
    rec.decision = "deny";
    rec.code = Some(denial.code.as_str().into());
    rec.reason = Some(denial.reason.clone());
    if rec.rule.is_none() {
        rec.rule = denial.rule.clone();
    }
    tracing::info!(
        target: "egress::deny",
        cgroup_id = rec.cgroup_id,
        comm = %rec.comm,
        dst = %rec.orig_dst,
        name = rec.name.as_deref().unwrap_or(""),
        code = denial.code.as_str(),
        reason = %denial.reason,
        "denied"
    );
    finish(att, rec, started);
    respond::send(client, reply, &denial).await;
}

fn finish(att: &Attachment, mut rec: Record, started: Instant) {
    rec.duration_ms = started.elapsed().as_millis() as u64;
    att.shared.audit.record(rec);
}
