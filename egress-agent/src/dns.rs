//! Stage: dns — DNS for the sandbox (DESIGN.md §6, THREATS.md D). Every datagram a container
//! sends to port 53, whatever resolver it names, arrives here. Allowed names are
//! resolved by the agent's own resolver and answered (A/AAAA only, prohibited
//! addresses removed). A denied name is never forwarded, so labels cannot tunnel
//! data out through the agent; it is answered (`dns_deny`, policy) with the
//! agent's service address for A and NODATA otherwise (`explain`, the default:
//! the connection that follows is refused at a layer the client shows), or with
//! NXDOMAIN + Extended DNS Error 15 "Blocked" (`nxdomain`). Service labels under
//! an allowed name (`_https._tcp.NAME`) get NODATA and no record. Every other
//! question is one audit record, attributed to its sender by the kernel.

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
/// RFC 8914 4 "Forged Answer": a denied name answered with the agent's own address.
const EDE_FORGED: u16 = 4;

/// An Extended DNS Error option's data: info-code, then the text.
fn ede(info_code: u16, reason: &str) -> Vec<u8> {
    let mut data = info_code.to_be_bytes().to_vec();
    data.extend_from_slice(format!("egress-agent: {reason}").as_bytes());
    data
}
/// A steered answer is short-lived: after a reload that allows the name, clients soon ask
/// again and get its real addresses (connections are judged by name meanwhile).
const STEERED_TTL: u32 = 10;
/// Answers are short-lived: the agent re-checks at connect time anyway.
const MAX_TTL: u32 = 60;

/// Queries answered at once per DNS listener. A flood of names the upstream
/// resolver must look up (random labels under an allowed wildcard, or a slow
/// resolver) would otherwise spawn one task per datagram without bound; past
/// the cap a query is refused at once (REFUSED + EDE), which costs nothing and
/// tells the client to back off. Other containers have their own listeners.
const MAX_QUERIES_IN_FLIGHT: usize = 512;

pub async fn serve_udp(sock: UdpSocket, att: Arc<Attachment>) {
    let netns_cookie =
        crate::sys::netns_cookie(std::os::fd::AsRawFd::as_raw_fd(&sock)).unwrap_or(0);
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
            let asker = Asker::of_datagram(&att, netns_cookie, from);
            if let Some(reply) = answer(&packet, &att, asker, "dns").await {
                let _ = sock.send_to(&reply, from).await;
            }
            drop(permit);
        });
    }
}

/// DNS over TCP (RFC 1035 §4.2.2: two-byte length prefix), same treatment.
/// `rec` is the connection's record: its attribution is the asker's.
pub async fn serve_tcp(mut stream: TcpStream, att: &Attachment, rec: Record) {
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
        let asker = Asker {
            pid: rec.pid,
            comm: rec.comm.clone(),
        };
        let Some(reply) = answer(&msg, att, asker, "dns-tcp").await else {
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
        Outcome::Steered { reason } => {
            if q.query_type() == RecordType::A {
                resp.add_answer(DnsRecord::from_rdata(
                    q.name().clone(),
                    STEERED_TTL,
                    RData::A(A(crate::SERVICE_ADDR4)),
                ));
            }
            edns.options_mut()
                .insert(EdnsOption::Unknown(EDNS_EDE, ede(EDE_FORGED, reason)));
        }
        Outcome::Blocked {
            rcode,
            reason,
            code,
        } => {
            resp.metadata.response_code = *rcode;
            edns.options_mut().insert(EdnsOption::Unknown(
                EDNS_EDE,
                ede(ede_info_code(code), reason),
            ));
        }
    }
    let explained = matches!(outcome, Outcome::Steered { .. });
    if req.edns.is_some() || explained || resp.metadata.response_code != ResponseCode::NoError {
        resp.set_edns(edns);
    }
    resp.to_vec().ok()
}

/// Who asked: the kernel's attribution of the datagram's sender (UDP), or of the connection
/// (DNS over TCP).
#[derive(Default)]
pub struct Asker {
    pub pid: u32,
    pub comm: String,
}

impl Asker {
    /// The sender of a datagram from `from`, as the kernel noted it (`eg_dns_src`).
    fn of_datagram(att: &Attachment, netns_cookie: u64, from: SocketAddr) -> Self {
        match att
            .dns_senders
            .as_ref()
            .and_then(|t| t.get(netns_cookie, from))
        {
            Some(v) => Self {
                pid: v.tgid,
                comm: v.comm().to_string(),
            },
            None => Self::default(),
        }
    }
}

/// Build the reply for one message; None for garbage not worth answering.
async fn answer(
    packet: &[u8],
    att: &Attachment,
    asker: Asker,
    protocol: &'static str,
) -> Option<Vec<u8>> {
    let started = Instant::now();
    let req = match parse(packet) {
        Parsed::Query(req) => req,
        Parsed::Reply(r) => return Some(r),
        Parsed::Drop => return None,
    };
    let q = req.queries.first()?.clone();
    let raw = q.name().to_ascii();
    let policy = att.shared.policy.load_full();
    let (outcome, note, asked) = decide(&q, &raw, att, &policy).await;
    if let Some(rec) = record_of(att, &policy, &raw, asker, protocol, &outcome, note) {
        let mut rec = rec;
        rec.ask = asked;
        rec.duration_ms = started.elapsed().as_millis() as u64;
        att.shared.audit.record(rec);
    }
    respond(&req, &outcome)
}

/// The question's audit record; `None` for a question that is part of using an allowed
/// name (a service label under it), which is answered but is no decision of its own.
fn record_of(
    att: &Attachment,
    policy: &crate::policy::Policy,
    raw: &str,
    asker: Asker,
    protocol: &'static str,
    outcome: &Outcome,
    note: Note,
) -> Option<Record> {
    let mut rec = att.record(protocol);
    rec.name = Some(raw.trim_end_matches('.').to_string());
    rec.orig_dst = "dns".into();
    rec.policy = policy.version().to_string();
    rec.pid = asker.pid;
    rec.comm = asker.comm;
    match note {
        Note::Unrecorded => return None,
        Note::Decided => {}
        // Monitor mode: answered, but recorded as what enforce mode would do.
        Note::WouldDeny(d) => {
            rec.would_deny(d.code, d.reason);
            rec.hint = Some(d.hint);
        }
        Note::Denied(d) => {
            rec.decision = "deny";
            rec.code = Some(d.code.as_str().into());
            rec.reason = Some(d.reason);
            rec.hint = Some(d.hint);
        }
    }
    if let Outcome::Steered { reason } = outcome {
        rec.reason = Some(reason.clone());
    }
    if let Outcome::Blocked { code, reason, .. } = outcome {
        // Refused in either mode: monitor mode answers every name it can, so what is left
        // is a real refusal (unparseable name, prohibited addresses only, resolver failure).
        rec.decision = "deny";
        rec.code = Some((*code).into());
        rec.reason = Some(reason.clone());
    }
    Some(rec)
}

/// What the sandbox is told about one name.
pub enum Outcome {
    Answer(Vec<IpAddr>, u32),
    NoData,
    /// A denied name (`dns_deny = "explain"`): A is answered with the agent's service
    /// address, so the connection that follows is refused where the client shows it; other
    /// types get NODATA (AAAA: clients use the v4 answer). Never forwarded.
    Steered {
        reason: String,
    },
    Blocked {
        rcode: ResponseCode,
        code: &'static str,
        reason: String,
    },
}

/// What the audit record of a question says, beside the outcome.
enum Note {
    /// Answered as the policy allows (or refused for a reason the outcome carries).
    Decided,
    /// Denied by the policy: the name is not allowed.
    Denied(crate::policy::Denied),
    /// Monitor mode: answered, but enforce mode would have denied it.
    WouldDeny(crate::policy::Denied),
    /// Part of using an allowed name (`_https._tcp.NAME`): no decision of its own.
    Unrecorded,
}

/// The outcome, the record's note, and (ask mode) what became of the held question.
async fn decide(
    q: &Query,
    raw: &str,
    att: &Attachment,
    policy: &crate::policy::Policy,
) -> (Outcome, Note, Option<String>) {
    let qtype = q.query_type();
    match judge(qtype, raw, att, policy) {
        Judged::Now(outcome, Note::Denied(d)) => match policy.ask_timeout(&att.profile) {
            Some(timeout) => Box::pin(asked(qtype, raw, att, policy, d, timeout)).await,
            None => (outcome, Note::Denied(d), None),
        },
        Judged::Now(outcome, note) => (outcome, note, None),
        Judged::Resolve(name, note) => (resolve(&name, qtype, att, policy).await, note, None),
    }
}

/// Ask mode: a name the policy denies waits for the same decision as the connection that
/// follows it (one pending decision per profile and name); approved, it is resolved as an
/// allowed name is, else refused as without ask mode, the reason saying why.
async fn asked(
    qtype: RecordType,
    raw: &str,
    att: &Attachment,
    policy: &crate::policy::Policy,
    mut d: crate::policy::Denied,
    timeout: std::time::Duration,
) -> (Outcome, Note, Option<String>) {
    let Ok(name) = CanonicalName::parse(raw) else {
        return (refused(&d, policy), Note::Denied(d), None);
    };
    let want = crate::ask::Want {
        profile: att.profile.clone(),
        name: name.clone(),
        port: None,
        protocol: None,
        cgroup_id: att.cgroup.id,
        comm: String::new(),
        pid: 0,
    };
    let outcome = att
        .shared
        .asks
        .hold(want, timeout, policy.ask_max_pending())
        .await;
    let label = Some(outcome.label());
    if let Some(note) = outcome.denial_note() {
        d.reason = format!("{}; {note}", d.reason);
        return (refused(&d, policy), Note::Denied(d), label);
    }
    if !matches!(qtype, RecordType::A | RecordType::AAAA) {
        return (Outcome::NoData, Note::Decided, label);
    }
    (
        resolve(&name, qtype, att, policy).await,
        Note::Decided,
        label,
    )
}

/// What the policy says of a question, before any lookup.
enum Judged {
    /// Answered without asking anyone (refused, the agent's own name, no such record type).
    Now(Outcome, Note),
    /// Resolve this name (in monitor mode perhaps with what enforce mode would say).
    Resolve(CanonicalName, Note),
}

fn judge(qtype: RecordType, raw: &str, att: &Attachment, policy: &crate::policy::Policy) -> Judged {
    if let Some(owner) = service_label_owner(raw) {
        if let Ok(n) = CanonicalName::parse(owner) {
            if n.as_str() == crate::SERVICE_NAME || answerable(&n, qtype, att, policy).is_ok() {
                // `_https._tcp.NAME`, `_443._tcp.NAME`...: part of using NAME; nothing to
                // forward (only addresses leave) and nothing to count as a denial.
                return Judged::Now(Outcome::NoData, Note::Unrecorded);
            }
        }
    }
    let name = match CanonicalName::parse(raw) {
        Ok(n) => n,
        Err(e) => {
            let reason = format!("not an acceptable host name: {e}");
            return Judged::Now(
                blocked(ResponseCode::NXDomain, "host_not_allowed", reason),
                Note::Decided,
            );
        }
    };
    if name.as_str() == crate::SERVICE_NAME {
        let outcome = match qtype {
            RecordType::A => Outcome::Answer(vec![IpAddr::V4(crate::SERVICE_ADDR4)], MAX_TTL),
            _ => Outcome::NoData,
        };
        return Judged::Now(outcome, Note::Decided);
    }
    if policy.is_local_name(&att.profile, &name) {
        return Judged::Now(local_answer(&name, qtype, att), Note::Decided);
    }
    let mut note = Note::Decided;
    if let Err(d) = answerable(&name, qtype, att, policy) {
        if policy.mode() != crate::policy::Mode::Monitor {
            return Judged::Now(refused(&d, policy), Note::Denied(d));
        }
        note = Note::WouldDeny(d);
    }
    if !matches!(qtype, RecordType::A | RecordType::AAAA) {
        // No TXT/MX/SVCB/...: nothing but addresses leaves, and nothing is forwarded.
        return Judged::Now(Outcome::NoData, note);
    }
    Judged::Resolve(name, note)
}

/// A `local` service's name: the agent's service address (A; NODATA otherwise), remembered so
/// that a connection there on the service's port is known to mean it. Never forwarded.
fn local_answer(name: &CanonicalName, qtype: RecordType, att: &Attachment) -> Outcome {
    if qtype != RecordType::A {
        return Outcome::NoData;
    }
    let addr = IpAddr::V4(crate::SERVICE_ADDR4);
    att.dns.remember(name.as_str(), &[addr], MAX_TTL);
    Outcome::Answer(vec![addr], MAX_TTL)
}

/// How a denied name is answered (`dns_deny`); never by asking anyone.
fn refused(d: &crate::policy::Denied, policy: &crate::policy::Policy) -> Outcome {
    match policy.dns_deny() {
        crate::policy::DnsDeny::Explain => Outcome::Steered {
            reason: format!(
                "{}; answered with {}'s address so that the connection explains the denial",
                d.reason,
                crate::SERVICE_NAME
            ),
        },
        crate::policy::DnsDeny::Nxdomain => {
            blocked(ResponseCode::NXDomain, "host_not_allowed", d.reason.clone())
        }
    }
}

/// `_https._tcp.example.com` → `example.com`: the name under leading service labels
/// (RFC 8552 underscore labels: SRV, TLSA, HTTPS/SVCB attrleaf names), if there are any.
fn service_label_owner(raw: &str) -> Option<&str> {
    let mut rest = raw;
    while let Some(label) = rest.strip_prefix('_') {
        rest = label.split_once('.')?.1;
    }
    (rest.len() < raw.len() && !rest.is_empty() && rest != ".").then_some(rest)
}

/// A name is answerable if some rule names it, whatever the port; else the policy's denial.
/// An inspected name's leaf certificate is minted now, off the connection's path.
fn answerable(
    name: &CanonicalName,
    qtype: RecordType,
    att: &Attachment,
    policy: &crate::policy::Policy,
) -> Result<(), crate::policy::Denied> {
    match policy.decide(&att.profile, name, 443, Protocol::Tls) {
        Decision::Allow { inspect, .. } => {
            if inspect && matches!(qtype, RecordType::A | RecordType::AAAA) {
                crate::inspect::Inspector::premint(name.as_str());
            }
            Ok(())
        }
        Decision::Deny(d) if d.code == crate::deny::DenyCode::HostNotAllowed => {
            let learned = &att.shared.revocation;
            if crate::revocation::answers_name(learned, policy, &att.profile, name.as_str()) {
                return Ok(());
            }
            Err(d)
        }
        Decision::Deny(_) => Ok(()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_labels_name_their_owner() {
        let owner = |raw| service_label_owner(raw);
        assert_eq!(owner("_https._tcp.example.com."), Some("example.com."));
        assert_eq!(owner("_443._tcp.api.example.com"), Some("api.example.com"));
        assert_eq!(owner("_dns.example.com"), Some("example.com"));
        // Not a service label, or nothing under it.
        assert_eq!(owner("example.com"), None);
        assert_eq!(owner("a._tcp.example.com"), None);
        assert_eq!(owner("_tcp."), None);
        assert_eq!(owner("_tcp"), None);
        assert_eq!(owner("_a._b."), None);
    }

    #[test]
    fn a_steered_answer_is_the_service_address_for_a_and_nodata_else() {
        let q = |t| {
            let mut m = Message::new(7, MessageType::Query, OpCode::Query);
            m.add_query(Query::query("denied.test.".parse().unwrap(), t));
            m
        };
        let outcome = Outcome::Steered {
            reason: "denied.test is not allowed".into(),
        };
        let a = Message::from_vec(&respond(&q(RecordType::A), &outcome).unwrap()).unwrap();
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a.answers.len(), 1);
        assert_eq!(a.answers[0].ttl, STEERED_TTL);
        assert!(matches!(&a.answers[0].data, RData::A(A(ip)) if *ip == crate::SERVICE_ADDR4));
        let ede = a.edns.as_ref().expect("EDE");
        // EDE 4 "Forged Answer", then the text.
        assert!(
            format!("{ede:?}").contains("Unknown(15, [0, 4, 101, 103"),
            "{ede:?}"
        );
        let aaaa = Message::from_vec(&respond(&q(RecordType::AAAA), &outcome).unwrap()).unwrap();
        assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
        assert!(aaaa.answers.is_empty());
    }
}
