//! One accepted connection on its way through the interceptor's stages: the client socket,
//! the bytes read from it so far, its decision record and its clock. Steps 1, 2 and 4 of
//! DESIGN §5 (attribute, peek, decide) are methods here; every way a connection ends without
//! being handed on (refused, status page, reset) ends here too, with exactly one record.

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    sync::Arc,
    time::Instant,
};

use tokio::{io::AsyncWriteExt, net::TcpStream};

use super::{
    respond::{self, Refusal, Reply},
    wanted::Wanted,
};
use crate::{
    attachment::Attachment,
    deny::DenyCode,
    peek::{self, PeekLimits, Peeked},
    policy::{Decision, Mode, Policy},
    record::Record,
};

pub struct Session {
    pub client: TcpStream,
    /// What was read while peeking; replayed to whoever serves the connection next.
    pub buf: Vec<u8>,
    pub rec: Record,
    pub started: Instant,
    pub att: Arc<Attachment>,
    /// The destination the client asked for (the kernel's record of it).
    pub dst: SocketAddr,
    /// Whether that destination is the agent's own service address (`egress.internal`).
    pub service: bool,
}

impl Session {
    /// Step 1: who is this, and where did it want to go? `None`: the connection was not
    /// redirected by our programs (or its entry is gone); it was reset and recorded.
    pub fn attribute(client: TcpStream, peer: SocketAddr, att: &Arc<Attachment>) -> Option<Self> {
        let started = Instant::now();
        let _ = client.set_nodelay(true);
        let mut rec = att.record("tcp");
        rec.client = peer.to_string();
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
                att.finish(rec, started);
                respond::reset(client);
                return None;
            }
        };
        let dst = orig.destination();
        rec.pid = orig.tgid;
        rec.comm = orig.comm().to_string();
        rec.orig_dst = dst.to_string();
        Some(Self {
            client,
            buf: Vec::new(),
            rec,
            started,
            att: att.clone(),
            dst,
            service: is_service(dst.ip()),
        })
    }

    /// One policy snapshot for the whole connection: a reload never changes a decision
    /// already made.
    pub fn snapshot(&mut self) -> Arc<Policy> {
        let policy = self.att.shared.policy.load_full();
        self.rec.policy = policy.version().to_string();
        policy
    }

    /// Step 2: read (without consuming: the bytes stay in `buf`) the client's first message.
    /// A client that spoke HTTP or TLS badly or deceptively (absolute-form naming another
    /// host than Host, NUL/CR in a header, a broken ClientHello extension) is refused in its
    /// own protocol, so a person sees why; anything else that fails is reset.
    ///
    /// A client that sends nothing is taken for a server-first protocol (opaque TCP) after
    /// the short first-byte wait only where a `host:port` rule could allow the destination;
    /// elsewhere it gets the whole timeout (a cold JVM on a loaded machine sends its
    /// ClientHello more than 500 ms after connecting). In monitor mode every nameless
    /// connection may pass, so the short wait stays.
    pub async fn peek(&mut self, policy: &Policy) -> Result<Peeked, Stop> {
        let port = self.dst.port();
        let mut limits = PeekLimits::default();
        // Monitor mode passes nameless connections on: any of them may be server-first.
        let server_first_possible = policy.mode() == Mode::Monitor
            || super::wanted::opaque_could_be_allowed(self.dst, &self.att, policy);
        if self.service || !server_first_possible {
            limits.first_byte_timeout = limits.total_timeout;
        }
        match Box::pin(peek::peek(&mut self.client, &mut self.buf, limits)).await {
            Ok(p) => Ok(p),
            Err(peek::PeekError::Http(e)) => {
                let (code, host) = match &e {
                    peek::HttpPeekError::HostMismatch { target_host, .. } => {
                        (DenyCode::HostMismatch, target_host.clone())
                    }
                    _ => (DenyCode::ProtocolNotAllowed, String::new()),
                };
                let reason = format!("malformed or ambiguous HTTP request: {e}");
                Err(Stop::Refuse(Refusal::new(
                    Reply::Http,
                    code,
                    host,
                    port,
                    reason,
                )))
            }
            Err(peek::PeekError::Tls(e)) => Err(Stop::Refuse(Refusal::new(
                Reply::Tls,
                DenyCode::ProtocolNotAllowed,
                "",
                port,
                format!("unacceptable TLS ClientHello: {e}"),
            ))),
            Err(e) => Err(Stop::Reset {
                code: "protocol_not_allowed",
                reason: format!("could not read the client's first bytes: {e}"),
            }),
        }
    }

    /// Step 4: the policy's decision on what the client wants. Ok(inspect) when allowed (or
    /// when monitor mode lets a denial through, recorded as `would_deny`).
    pub fn decide(&mut self, policy: &Policy, wanted: &Wanted) -> Result<bool, Refusal> {
        self.rec.protocol = wanted.reply.label();
        self.rec.name = Some(wanted.name.as_str().to_string());
        self.rec.port = Some(wanted.port);
        match crate::revocation::decide(
            &self.att.shared.revocation,
            policy,
            &self.att.profile,
            &wanted.name,
            wanted.port,
            wanted.protocol,
        ) {
            Decision::Allow { rule, inspect } => {
                self.rec.rule = Some(rule.to_string());
                Ok(inspect)
            }
            Decision::Deny(d) => {
                let r = Refusal::by_policy(wanted.reply, d, wanted.name.as_str(), wanted.port);
                if policy.mode() != Mode::Monitor {
                    return Err(r);
                }
                self.rec.would_deny(r.code, r.reason);
                Ok(false)
            }
        }
    }

    /// Step 4½: the profile's budgets admit the allowed connection (or refuse it, in its own
    /// protocol, as `budget_exceeded`). The meter it gets counts its bytes and requests. In
    /// monitor mode a connection over budget passes, recorded as `would_deny`, unmetered.
    pub fn admit(
        &mut self,
        policy: &Policy,
        wanted: &Wanted,
    ) -> Result<Option<Arc<crate::budget::Meter>>, Refusal> {
        let x = match self
            .att
            .budgets
            .admit(policy, &self.att.profile, &wanted.name)
        {
            Ok(m) => return Ok(m),
            Err(x) => x,
        };
        let r = budget_refusal(wanted.reply, wanted.name.as_str(), wanted.port, x);
        if policy.mode() != Mode::Monitor {
            return Err(r);
        }
        self.rec.would_deny(r.code, r.reason);
        Ok(None)
    }

    /// Ends a connection that stopped before it could be named.
    pub async fn stop(self, policy: &Policy, stop: Stop) {
        match stop {
            Stop::Refuse(r) => {
                let mut s = self;
                s.rec.protocol = r.reply.label();
                s.refuse(policy, r).await
            }
            Stop::Reset { code, reason } => self.reset(code, reason),
        }
    }

    /// Answers `http://egress.internal/status` with this container's own page.
    pub async fn status_page(mut self, policy: &Policy) {
        self.rec.protocol = "http";
        self.rec.name = Some(crate::SERVICE_NAME.into());
        let body = crate::status::page(&self.att, policy);
        let _ = self.client.write_all(&respond::json_ok(&body)).await;
        self.finish();
    }

    /// Refuses the connection as its protocol expects, with the denial's record. TLS from a
    /// sandbox that trusts the agent's CA is answered inside TLS (a minted certificate for
    /// the refused name, then a 403 for every request); other TLS gets `access_denied`.
    pub async fn refuse(self, policy: &Policy, r: Refusal) {
        let denial = r.denial(policy);
        let mut rec = self.rec;
        rec.decision = "deny";
        rec.code = Some(denial.code.as_str().into());
        rec.reason = Some(denial.reason.clone());
        rec.hint = (!denial.hint.is_empty()).then(|| denial.hint.clone());
        if rec.rule.is_none() {
            rec.rule = denial.rule.clone();
        }
        tracing::debug!(
            target: "egress::deny",
            cgroup_id = rec.cgroup_id,
            comm = %rec.comm,
            dst = %rec.orig_dst,
            name = rec.name.as_deref().unwrap_or(""),
            code = denial.code.as_str(),
            reason = %denial.reason,
            "denied"
        );
        let (client, buf, att, started) = (self.client, self.buf, self.att, self.started);
        if r.reply == Reply::Tls && tells_in_tls(&att, &r) {
            return Box::pin(refuse_in_tls(
                client, buf, policy, rec, denial, &att, started,
            ))
            .await;
        }
        att.finish(rec, started);
        respond::send(client, r.reply, &denial).await;
    }

    /// Resets the connection, recorded as a denial with `code` and `reason`.
    pub fn reset(mut self, code: &str, reason: String) {
        self.rec.decision = "deny";
        self.rec.code = Some(code.into());
        self.rec.reason = Some(reason);
        self.att.finish(self.rec, self.started);
        respond::reset(self.client);
    }

    /// Hands the connection to passthrough: replay what was peeked, copy both ways. The
    /// record says why it ended early, unless it already explains a monitor-mode pass. This
    /// is a spliced connection's whole room: the record and the copy loop, nothing else.
    pub async fn splice(self, upstream: TcpStream, meter: Option<Arc<crate::budget::Meter>>) {
        let Session {
            client,
            buf,
            mut rec,
            started,
            att,
            ..
        } = self;
        rec.upstream = upstream.peer_addr().ok().map(|a| a.to_string());
        let out = crate::passthrough::splice(client, buf, upstream, meter).await;
        rec.bytes_up = out.transferred.up;
        rec.bytes_down = out.transferred.down;
        match out.ended_by {
            // Allowed, then cut: the record says by which budget, like a refusal.
            Some(crate::copy::Disconnect::OverBudget(x)) => x.record_cut(&mut rec),
            Some(e) => {
                if let crate::copy::Disconnect::UpstreamReset(_) = e {
                    tracing::info!(dst = %rec.orig_dst, upstream = rec.upstream.as_deref().unwrap_or(""), error = %e, "upstream reset; client reset too");
                }
                rec.reason.get_or_insert_with(|| e.to_string());
            }
            None => {}
        }
        att.finish(rec, started);
    }

    /// Ends a connection that was served (or went away) with its record as it stands.
    pub fn finish(self) {
        self.att.finish(self.rec, self.started);
    }
}

/// The refusal of a connection over budget, said as its protocol expects.
pub fn budget_refusal(reply: Reply, host: &str, port: u16, x: crate::budget::Exceeded) -> Refusal {
    Refusal {
        rule: Some(x.rule.to_string()),
        hint: x.hint,
        ..Refusal::new(reply, DenyCode::BudgetExceeded, host, port, x.reason)
    }
}

/// A refused TLS connection may be answered inside TLS when the sandbox trusts the agent's
/// CA and the refusal is about a name (the SNI) a certificate can be minted for.
fn tells_in_tls(att: &Attachment, r: &Refusal) -> bool {
    att.trusts_ca()
        && crate::inspect::can_mint_refusals()
        && crate::policy::name::CanonicalName::parse(&r.host).is_ok()
}

/// The handshake with a leaf for the refused name, the record (noting a client that did
/// not get that far: it saw a TLS error, not the 403), then the 403 for every request.
async fn refuse_in_tls(
    client: TcpStream,
    peeked: Vec<u8>,
    policy: &Policy,
    mut rec: Record,
    denial: crate::deny::Denial,
    att: &Attachment,
    started: Instant,
) {
    match crate::inspect::terminate_refused(client, peeked, policy).await {
        Ok(tls) => {
            att.finish(rec, started);
            crate::inspect::answer_refused(tls, denial).await;
        }
        Err(why) => {
            if let Some(reason) = rec.reason.as_mut() {
                reason.push_str(&format!(
                    " (refused inside TLS, but {why}: the client shows a TLS error instead)"
                ));
            }
            att.finish(rec, started);
        }
    }
}

/// Why a connection stopped before anything could be decided about its name.
pub enum Stop {
    /// Refused in the protocol the client spoke.
    Refuse(Refusal),
    /// Reset, with the record's code and reason.
    Reset { code: &'static str, reason: String },
}

fn is_service(ip: IpAddr) -> bool {
    crate::bpf::maps::to_v6(ip) == crate::SERVICE_ADDR4.to_ipv6_mapped()
}
