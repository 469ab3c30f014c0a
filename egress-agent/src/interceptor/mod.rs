//! Stage: interceptor — the first room of the data path (DESIGN.md §5). Every TCP
//! connection the kernel redirected arrives here and goes through the steps of §5, one
//! function each: [`Session::attribute`] (original destination, workload), [`Session::peek`]
//! (ClientHello, HTTP head, CONNECT, or nothing), [`wanted::of`] (the canonical name),
//! [`Session::decide`] (the policy), [`Session::admit`] (the budgets), then [`hand_off`]: the upstream dialed by
//! [`crate::upstream`] and the connection served by [`crate::passthrough`],
//! [`crate::inspect`] or [`crate::requests`]. DNS over TCP goes to [`crate::dns`].

mod monitor;
mod respond;
mod session;
mod tunnel;
mod wanted;

use std::{
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use crate::{
    attachment::Attachment,
    peek::Peeked,
    policy::{Mode, Policy},
    pool::Shared,
    requests::{Conn, Speaks},
    rewind::Rewind,
};
pub use respond::{Refusal, Reply};
use session::Session;
use tunnel::Opened;
use wanted::{Unnamed, Wanted};

/// Connections served at once per container (its v4 and v6 listeners share
/// the budget); beyond it new ones are reset. Each costs two descriptors, and
/// descriptors are one pool for the whole agent: the cap is also held under
/// half of what RLIMIT_NOFILE leaves after a reserve, so one container filling
/// its budget cannot make accept() fail (EMFILE) for the others.
const MAX_CONNECTIONS: usize = 16_384;
/// Descriptors kept for everything else: other containers' first connections,
/// listeners, DNS sockets, upstream resolver sockets, the audit log, bpf maps, and the
/// passthrough copy's splice pipes (at most 64, two descriptors each).
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
            let _active = att.shared.audit.metrics().connection();
            // The stages run in a box of their own, freed before the room serves the
            // connection for the rest of its life (see [`Room`]).
            if let Some(room) = Box::pin(handle(stream, peer, &att)).await {
                room.await;
            }
            drop(permit);
        });
    }
}

/// What serves an allowed connection for the rest of its life: its copy loop or its request
/// engine. The stages return it instead of awaiting it, so that their own state (sized by
/// their largest step: the peek, the dial, a refusal) is freed first and an idle
/// connection holds only its room. (A request engine is already one: [`crate::requests::serve`].)
type Room = crate::requests::Serving;

/// One connection, stage by stage. Each stage's result is the next one's input; a stage
/// that ends the connection records it and returns `None`. The sub-futures are boxed:
/// inline, the largest of them would size every connection's stages.
async fn handle(client: TcpStream, peer: SocketAddr, att: &Arc<Attachment>) -> Option<Room> {
    let mut s = Session::attribute(client, peer, att)?;
    if s.dst.port() == DNS_PORT && !s.service {
        s.rec.protocol = "dns-tcp";
        return ended(Box::pin(crate::dns::serve_tcp(s.client, &s.att, s.rec))).await;
    }
    let policy = s.snapshot();
    let peeked = match s.peek(&policy).await {
        Ok(p) => p,
        Err(stop) => return ended(Box::pin(s.stop(&policy, stop))).await,
    };
    let wanted = match wanted::of(&peeked, s.dst, s.service, &s.att, &policy) {
        Ok(w) => w,
        Err(unnamed) => return ended(Box::pin(unnamed_connection(s, &policy, unnamed))).await,
    };
    let inspect = match s.decide(&policy, &wanted) {
        Ok(inspect) => inspect,
        Err(r) => match Box::pin(held(&mut s, &policy, &wanted, r)).await {
            Ok(()) => false,
            Err(r) => return ended(Box::pin(s.refuse(&policy, r))).await,
        },
    };
    Box::pin(hand_off(s, policy, peeked, wanted, inspect)).await
}

/// A stage that ends the connection itself: no room follows.
async fn ended(stage: impl Future<Output = ()>) -> Option<Room> {
    stage.await;
    None
}

const DNS_PORT: u16 = 53;

/// Ask mode: a connection the policy denies by name, port or protocol waits for an
/// operator's decision (see [`crate::ask`]). `Ok`: approved, served as passthrough. `Err`:
/// the same refusal as without ask mode, its reason saying what became of the question.
async fn held(
    s: &mut Session,
    policy: &Policy,
    wanted: &Wanted,
    r: Refusal,
) -> Result<(), Refusal> {
    use crate::deny::DenyCode;
    let Some(timeout) = policy.ask_timeout(&s.att.profile) else {
        return Err(r);
    };
    if !matches!(
        r.code,
        DenyCode::HostNotAllowed | DenyCode::PortNotAllowed | DenyCode::ProtocolNotAllowed
    ) {
        return Err(r);
    }
    let want = crate::ask::Want {
        profile: s.att.profile.clone(),
        name: wanted.name.clone(),
        port: Some(wanted.port),
        protocol: Some(wanted.protocol),
        cgroup_id: s.att.cgroup.id,
        comm: s.rec.comm.clone(),
        pid: s.rec.pid,
    };
    let asks = &s.att.shared.asks;
    let outcome = tokio::select! {
        o = asks.hold(want, timeout, policy.ask_max_pending()) => o,
        () = client_gone(&s.client) => {
            // Not waiting for anyone any more: the pending decision loses this waiter.
            s.rec.ask = Some("client_gone".into());
            let mut r = r;
            r.reason = format!("{}; the client went away while held for a decision", r.reason);
            return Err(r);
        }
    };
    s.rec.ask = Some(outcome.label());
    match (outcome.denial_note(), outcome) {
        (_, crate::ask::Outcome::Approved { rule, .. }) => {
            s.rec.rule = Some(rule);
            Ok(())
        }
        (Some(note), _) => {
            let mut r = r;
            r.reason = format!("{}; {note}", r.reason);
            Err(r)
        }
        (None, _) => Err(r),
    }
}

/// Resolves when the client closes (or resets) its connection. Bytes it sends meanwhile stay
/// unread for whoever serves the connection; from then on it is not watched (no busy loop).
async fn client_gone(client: &TcpStream) {
    let mut b = [0u8; 1];
    match client.peek(&mut b).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Step 5: the upstream, dialed by the agent: a `local` service's target, else the name
/// resolved, screened and dialed (or tunnelled through the upstream proxy).
async fn dial(
    s: &Session,
    policy: &Policy,
    wanted: &Wanted,
) -> Result<TcpStream, (crate::deny::DenyCode, String)> {
    if let Some(l) = policy.local_service(&s.att.profile, &wanted.name, wanted.port) {
        return dial_local(l, &s.att).await;
    }
    let resolver = s.att.shared.resolver.load_full();
    crate::upstream::connect(&resolver, policy, &wanted.name, wanted.port).await
}

/// A `local` service's target, dialed by the agent as the entry says (never resolved or
/// screened: the operator named the address), from the agent's network namespace or, for
/// `sandbox:`, from the sandbox's own.
async fn dial_local(
    l: &crate::policy::LocalService,
    att: &Arc<Attachment>,
) -> Result<TcpStream, (crate::deny::DenyCode, String)> {
    let unreachable = |why: String| {
        (
            crate::deny::DenyCode::UpstreamUnreachable,
            format!("local service {l} ({}): {why}", l.rule),
        )
    };
    let dialed = if l.in_sandbox {
        dial_in_sandbox(att.clone(), l.target)
            .await
            .map_err(unreachable)?
    } else {
        match tokio::time::timeout(LOCAL_DIAL_TIMEOUT, TcpStream::connect(l.target)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable("connect timed out".into())),
        }
    };
    let _ = dialed.set_nodelay(true);
    Ok(dialed)
}

/// Connects from a thread inside the sandbox's network namespace (the agent's own threads
/// never change namespace); the socket keeps that namespace for its life.
async fn dial_in_sandbox(att: Arc<Attachment>, target: SocketAddr) -> Result<TcpStream, String> {
    let joined = tokio::task::spawn_blocking(move || {
        let ns = att
            .netns
            .as_ref()
            .ok_or("the sandbox's network namespace is not known")?;
        ns.run(move || std::net::TcpStream::connect_timeout(&target, LOCAL_DIAL_TIMEOUT))
            .map_err(|e| e.to_string())
    })
    .await;
    let std = joined.map_err(|e| e.to_string())??;
    std.set_nonblocking(true).map_err(|e| e.to_string())?;
    TcpStream::from_std(std).map_err(|e| e.to_string())
}

const LOCAL_DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection whose first bytes named nothing the policy can judge: the status page, a
/// refusal, or (monitor mode) a pass to the address the client asked for.
async fn unnamed_connection(mut s: Session, policy: &Policy, unnamed: Unnamed) {
    let r = match unnamed {
        Unnamed::Status => return s.status_page(policy).await,
        Unnamed::Refused(r) => r,
    };
    s.rec.protocol = r.reply.label();
    s.rec.name = (!r.host.is_empty()).then(|| r.host.clone());
    if policy.mode() == Mode::Monitor && !s.service {
        s.rec.would_deny(r.code, r.reason);
        return monitor::pass_nameless(s, policy).await;
    }
    s.refuse(policy, r).await
}

/// Steps 5–7: an upstream the agent dialed itself (or a shared one), the CONNECT tunnel's
/// inner check, then the room that serves the connection.
async fn hand_off(
    mut s: Session,
    policy: Arc<Policy>,
    peeked: Peeked,
    wanted: Wanted,
    inspect: bool,
) -> Option<Room> {
    let meter = match s.admit(&policy, &wanted) {
        Ok(m) => m,
        Err(r) => return ended(s.refuse(&policy, r)).await,
    };
    if inspect {
        note_ech(&mut s, &peeked);
        if let Some(shared) = shared_upstream(&s, &policy, &peeked, &wanted) {
            return inspect_shared(s, policy, wanted, shared, meter).await;
        }
    }
    let upstream = match Box::pin(dial(&s, &policy, &wanted)).await {
        Ok(u) => u,
        Err((code, reason)) => {
            let mut r = Refusal::new(
                wanted.reply,
                code,
                wanted.name.as_str(),
                wanted.port,
                reason,
            );
            r.rule = s.rec.rule.clone();
            return ended(s.refuse(&policy, r)).await;
        }
    };
    s.rec.upstream = upstream.peer_addr().ok().map(|a| a.to_string());
    let first = if wanted.reply == Reply::Connect {
        let att = s.att.clone();
        match tunnel::open(&mut s.client, &mut s.buf, &peeked, &wanted, &policy, &att).await {
            Opened::Inner(inner) => inner,
            Opened::Closed => {
                s.finish();
                return None;
            }
            Opened::Refused(r) => return ended(s.refuse(&policy, r)).await,
        }
    } else {
        peeked
    };
    match first {
        Peeked::Tls(_) if inspect => serve_requests(s, policy, wanted, upstream, true, meter).await,
        Peeked::Http(_) => serve_requests(s, policy, wanted, upstream, false, meter).await,
        _ => Some(Box::pin(s.splice(upstream, meter))),
    }
}

/// ECH under inspection is stripped, not refused: our TLS server (rustls) ignores the
/// extension and answers for the outer name, which is the name the policy just judged. A
/// GREASE-ECH client (every Chromium) carries on; a client with real ECH cannot verify ECH
/// acceptance and aborts itself, so its hidden inner name never gets a connection.
fn note_ech(s: &mut Session, peeked: &Peeked) {
    if matches!(peeked, Peeked::Tls(hello) if hello.offers_ech()) {
        s.rec.reason = Some(
            "ClientHello offered ECH; stripped under inspection (decided on the outer SNI)".into(),
        );
    }
}

/// A verified connection this container already holds to the same inspected name, dialed
/// under this very policy snapshot: the HTTP/2 one for a client that offers HTTP/2 (the
/// agent's TLS server then picks it), else an idle HTTP/1.1 one, or the HTTP/2 one of an
/// upstream that refused HTTP/1.1.
fn shared_upstream(
    s: &Session,
    policy: &Arc<Policy>,
    peeked: &Peeked,
    wanted: &Wanted,
) -> Option<Shared> {
    let Peeked::Tls(hello) = peeked else {
        return None;
    };
    if wanted.reply != Reply::Tls {
        return None;
    }
    let (name, port, shared) = (wanted.name.as_str(), wanted.port, &s.att.upstreams);
    let h1_client = !hello.offers_alpn(b"h2");
    if h1_client {
        if let Some(idle) = shared.take_h1(policy, name, port) {
            return Some(Shared::H1(idle));
        }
    }
    let (h2, peer) = shared.get(policy, name, port, h1_client)?;
    Some(Shared::H2(h2, peer))
}

async fn inspect_shared(
    mut s: Session,
    policy: Arc<Policy>,
    wanted: Wanted,
    shared: Shared,
    meter: Option<Arc<crate::budget::Meter>>,
) -> Option<Room> {
    s.rec.upstream = shared.peer().map(|a| a.to_string());
    s.rec.protocol = "http";
    let conn = Conn::new(s.att, policy, wanted.name, wanted.port, s.rec, None)
        .with_shared(shared)
        .with_budget(meter);
    crate::inspect::serve(s.client, s.buf, conn).await
}

/// Inspected TLS (`tls`, once its handshake is done) and plain HTTP are served request by
/// request: every request's Host, method and path is checked on its own.
async fn serve_requests(
    mut s: Session,
    policy: Arc<Policy>,
    wanted: Wanted,
    upstream: TcpStream,
    tls: bool,
    meter: Option<Arc<crate::budget::Meter>>,
) -> Option<Room> {
    s.rec.protocol = "http";
    let conn = Conn::new(
        s.att,
        policy,
        wanted.name,
        wanted.port,
        s.rec,
        Some(upstream),
    )
    .with_budget(meter);
    if tls {
        crate::inspect::serve(s.client, s.buf, conn).await
    } else {
        let io = Rewind::new(s.buf, s.client);
        Some(crate::requests::serve(io, Arc::new(conn), Speaks::Http1))
    }
}
