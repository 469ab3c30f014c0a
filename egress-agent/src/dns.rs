//! Stage: dns — DNS for the sandbox (DESIGN.md §6, THREATS.md D). Every datagram a container
//! sends to port 53, whatever resolver it names, arrives here. Allowed names are
//! resolved by the agent's own resolver and answered (A/AAAA only, prohibited
//! addresses removed); every other name gets NXDOMAIN with Extended DNS Error 15
//! ("Blocked", RFC 8914) and is never forwarded, so labels cannot tunnel data
//! out through the agent.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        rdata::{opt::EdnsOption, A, AAAA},
        RData, Record as DnsRecord, RecordType,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};

use crate::{
    attachment::Attachment,
    policy::{name::CanonicalName, Decision, Protocol},
    record::Record,
};

/// RFC 8914 info-codes: 15 Blocked (policy), 23 Network Error (the agent's
/// resolver failed), 0 Other (overload).
const EDE_BLOCKED: u16 = 15;
const EDE_NETWORK_ERROR: u16 = 23;
const EDE_OTHER: u16 = 0;

fn ede_info_code(code: &str) -> u16 {
    match code {
        "dns_error" => EDE_NETWORK_ERROR,
        "dns_overloaded" => EDE_OTHER,
        _ => EDE_BLOCKED,
    }
}
const EDNS_EDE: u16 = 15;
/// Answers are short-lived: the agent re-checks at connect time anyway.
const MAX_TTL: u32 = 60;

/// Queries answered at once per DNS listener. A flood of names the upstream
/// resolver must look up (random labels under an allowed wildcard, or a slow
/// resolver) would otherwise spawn one task per datagram without bound; past
/// the cap a query is refused at once (REFUSED + EDE), which costs nothing and
/// tells the client to back off. Other containers have their own listeners.
const MAX_QUERIES_IN_FLIGHT: usize = 512;

pub async fn serve_udp(sock: UdpSocket, att: Arc<Attachment>) {
    let sock = Arc::new(sock);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_QUERIES_IN_FLIGHT));
    // At most one warning per 10 s while at the cap: a flood must not flood the log too.
    let mut warned: Option<Instant> = None;
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "dns recv failed");
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if warned.is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(10)) {
                warned = Some(Instant::now());
                tracing::warn!(
                    cgroup_id = att.cgroup.id,
                    max = MAX_QUERIES_IN_FLIGHT,
                    "dns queries in flight at the cap; refusing until some finish"
                );
            }
            if let Parsed::Query(req) = parse(&buf[..n]) {
                let outcome = Outcome::Blocked {
                    rcode: ResponseCode::Refused,
                    code: "dns_overloaded",
                    reason: format!("too many queries in flight from this container (max {MAX_QUERIES_IN_FLIGHT})"),
                };
                if let Some(reply) = respond(&req, &outcome) {
                    let _ = sock.try_send_to(&reply, from);
                }
            }
            continue;
        };
        let packet = buf[..n].to_vec();
        let (sock, att) = (sock.clone(), att.clone());
        tokio::spawn(async move {
            if let Some(reply) = answer(&packet, &att, from, "dns").await {
                let _ = sock.send_to(&reply, from).await;
            }
            drop(permit);
        });
    }
}

/// DNS over TCP (RFC 1035 §4.2.2: two-byte length prefix), same treatment.
pub async fn serve_tcp(mut stream: TcpStream, att: &Attachment, _rec: Record) {
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    loop {
        let mut len = [0u8; 2];
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_exact(&mut len),
        )
        .await;
        if !matches!(read, Ok(Ok(_))) {
            return;
        }
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        if stream.read_exact(&mut msg).await.is_err() {
            return;
        }
        let Some(reply) = answer(&msg, att, peer, "dns-tcp").await else {
            return;
        };
        let mut out = Vec::with_capacity(reply.len() + 2);
        out.extend_from_slice(&(reply.len() as u16).to_be_bytes());
        out.extend_from_slice(&reply);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// What a received datagram is, before any policy: a query to answer, a reply
/// owed to a malformed or unsupported message, or nothing worth answering.
pub enum Parsed {
    Query(Box<Message>),
    Reply(Vec<u8>),
    Drop,
}

/// Pure and allocation-bounded: fuzzed (`fuzz/fuzz_targets/dns_message.rs`).
pub fn parse(packet: &[u8]) -> Parsed {
    let Ok(req) = Message::from_vec(packet) else {
        return Parsed::Drop;
    };
    if req.metadata.message_type != MessageType::Query {
        return Parsed::Drop;
    }
    if req.queries.len() == 1 && req.metadata.op_code == OpCode::Query {
        return Parsed::Query(Box::new(req));
    }
    let mut resp = Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.response_code = if req.queries.is_empty() {
        ResponseCode::FormErr
    } else {
        ResponseCode::NotImp
    };
    if let Some(q) = req.queries.first() {
        resp.add_query(q.clone());
    }
    resp.to_vec().map_or(Parsed::Drop, Parsed::Reply)
}

/// The reply to a parsed query for a given outcome.
pub fn respond(req: &Message, outcome: &Outcome) -> Option<Vec<u8>> {
    let q = req.queries.first()?;
    let mut resp = Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_query(q.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    match outcome {
        Outcome::Answer(addrs, ttl) => {
            for ip in addrs {
                let rdata = match ip {
                    IpAddr::V4(v4) => RData::A(A(*v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                };
                resp.add_answer(DnsRecord::from_rdata(
                    q.name().clone(),
                    (*ttl).min(MAX_TTL),
                    rdata,
                ));
            }
        }
        Outcome::NoData => {}
        Outcome::Blocked {
            rcode,
            reason,
            code,
        } => {
            resp.metadata.response_code = *rcode;
            let mut data = ede_info_code(code).to_be_bytes().to_vec();
            data.extend_from_slice(format!("egress-agent: {reason}").as_bytes());
            edns.options_mut()
                .insert(EdnsOption::Unknown(EDNS_EDE, data));
        }
    }
    if req.edns.is_some() || resp.metadata.response_code != ResponseCode::NoError {
        resp.set_edns(edns);
    }
    resp.to_vec().ok()
}

/// Build the reply for one message; None for garbage not worth answering.
async fn answer(
    packet: &[u8],
    att: &Attachment,
    _from: SocketAddr,
    protocol: &'static str,
) -> Option<Vec<u8>> {
    let started = Instant::now();
    let req = match parse(packet) {
        Parsed::Query(req) => req,
        Parsed::Reply(r) => return Some(r),
        Parsed::Drop => return None,
    };
    let q = req.queries.first()?.clone();
    let mut rec = att.record(protocol);
    let raw = q.name().to_ascii();
    rec.name = Some(raw.trim_end_matches('.').to_string());
    rec.orig_dst = "dns".into();
    let policy = att.shared.policy.load_full();
    rec.policy = policy.version().to_string();

    let (outcome, would_deny) = decide(&q, &raw, att, &policy).await;
    if let Some(reason) = would_deny {
        // Monitor mode: answered, but recorded as what enforce mode would do.
        rec.decision = "would_deny";
        rec.code = Some("host_not_allowed".into());
        rec.reason = Some(reason);
    }
    if let Outcome::Blocked { code, reason, .. } = &outcome {
        // Refused in either mode: monitor mode answers every name it can, so
        // what is left is a real refusal (unparseable name, prohibited
        // addresses only, resolver failure).
        rec.decision = "deny";
        rec.code = Some((*code).into());
        rec.reason = Some(reason.clone());
    }
    rec.duration_ms = started.elapsed().as_millis() as u64;
    att.shared.audit.record(rec);
    respond(&req, &outcome)
}

/// What the sandbox is told about one name.
pub enum Outcome {
    Answer(Vec<IpAddr>, u32),
    NoData,
    Blocked {
        rcode: ResponseCode,
        code: &'static str,
        reason: String,
    },
}

/// The outcome, and in monitor mode the reason enforce mode would have refused
/// the name (it is answered all the same).
async fn decide(
    q: &Query,
    raw: &str,
    att: &Attachment,
    policy: &crate::policy::Policy,
) -> (Outcome, Option<String>) {
    let qtype = q.query_type();
    match judge(qtype, raw, att, policy) {
        Judged::Now(outcome, would) => (outcome, would),
        Judged::Resolve(name, would) => (resolve(&name, qtype, att, policy).await, would),
    }
}

/// What the policy says of a question, before any lookup.
enum Judged {
    /// Answered without asking anyone (refused, the agent's own name, no such record type).
    Now(Outcome, Option<String>),
    /// Resolve this name; in monitor mode, with the reason enforce mode would refuse it.
    Resolve(CanonicalName, Option<String>),
}

fn judge(qtype: RecordType, raw: &str, att: &Attachment, policy: &crate::policy::Policy) -> Judged {
    let name = match CanonicalName::parse(raw) {
        Ok(n) => n,
        Err(e) => {
            let reason = format!("not an acceptable host name: {e}");
            return Judged::Now(
                blocked(ResponseCode::NXDomain, "host_not_allowed", reason),
                None,
            );
        }
    };
    if name.as_str() == crate::SERVICE_NAME {
        let outcome = match qtype {
            RecordType::A => Outcome::Answer(vec![IpAddr::V4(crate::SERVICE_ADDR4)], MAX_TTL),
            _ => Outcome::NoData,
        };
        return Judged::Now(outcome, None);
    }
    let mut would = None;
    if !answerable(&name, qtype, att, policy) {
        let reason = format!(
            "{} is not allowed by the policy (profile {})",
            name.as_str(),
            att.profile
        );
        if policy.mode() != crate::policy::Mode::Monitor {
            return Judged::Now(
                blocked(ResponseCode::NXDomain, "host_not_allowed", reason),
                None,
            );
        }
        would = Some(reason);
    }
    if !matches!(qtype, RecordType::A | RecordType::AAAA) {
        // No TXT/MX/SVCB/...: nothing but addresses leaves, and nothing is forwarded.
        return Judged::Now(Outcome::NoData, would);
    }
    Judged::Resolve(name, would)
}

/// A name is answerable if some rule names it, whatever the port. An inspected name's leaf
/// certificate is minted now, off the connection's path.
fn answerable(
    name: &CanonicalName,
    qtype: RecordType,
    att: &Attachment,
    policy: &crate::policy::Policy,
) -> bool {
    match policy.decide(&att.profile, name, 443, Protocol::Tls) {
        Decision::Allow { inspect, .. } => {
            if inspect && matches!(qtype, RecordType::A | RecordType::AAAA) {
                crate::inspect::Inspector::premint(name.as_str());
            }
            true
        }
        Decision::Deny(d) => d.code != crate::deny::DenyCode::HostNotAllowed,
    }
}

fn blocked(rcode: ResponseCode, code: &'static str, reason: String) -> Outcome {
    Outcome::Blocked {
        rcode,
        code,
        reason,
    }
}

/// The agent's own lookup, screened: prohibited addresses never reach the sandbox.
async fn resolve(
    name: &CanonicalName,
    qtype: RecordType,
    att: &Attachment,
    policy: &crate::policy::Policy,
) -> Outcome {
    let resolver = att.shared.resolver.load();
    let (addrs, ttl) = match resolver.lookup(name.as_str()).await {
        Ok(x) => x,
        Err(e) => {
            return Outcome::Blocked {
                rcode: ResponseCode::ServFail,
                code: "dns_error",
                reason: e.to_string(),
            }
        }
    };
    let (keep, refused) = crate::resolve::screen(policy, addrs);
    att.dns.remember(name.as_str(), &keep, ttl);
    let want_v4 = qtype == RecordType::A;
    let answer: Vec<IpAddr> = keep
        .into_iter()
        .filter(|ip| ip.is_ipv4() == want_v4)
        .collect();
    if answer.is_empty() && !refused.is_empty() {
        return Outcome::Blocked {
            rcode: ResponseCode::NXDomain,
            code: "destination_ip_prohibited",
            reason: format!(
                "{} resolves only to prohibited addresses: {}",
                name.as_str(),
                refused.join(", ")
            ),
        };
    }
    if answer.is_empty() {
        return Outcome::NoData;
    }
    Outcome::Answer(answer, ttl)
}
