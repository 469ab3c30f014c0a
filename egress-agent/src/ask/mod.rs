//! Ask mode (`mode = "ask"` per profile): what the policy would deny is held while an operator
//! decides — `approve ID --once|--session|--save` or `deny ID` on the control socket, or the
//! terminal of `exec --ask`. One pending decision per (profile, name): a DNS question and the
//! connection that follows it (or several connections at once) wait for the same one.
//!
//! Bounded: at most `ask_max_pending` decisions at once, agent-wide; past it a connection is
//! denied at once with that reason. A pending decision is a few hundred bytes plus one waker per
//! waiter; waiters are connections (bounded by the per-container connection cap) and DNS
//! questions (bounded by the DNS listener's in-flight cap). Nothing is kept once the last
//! waiter has its answer or gives up (`ask_timeout`: then the normal denial).

pub mod save;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::sync::{broadcast, watch};

use crate::policy::{CanonicalName, Pattern, Policy, Protocol, DEFAULT_PORTS};

/// How far an approval reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The held connections (and DNS questions) of this decision, and nothing after.
    Once,
    /// The rule, for the rest of this agent's life, for this profile.
    Session,
    /// The rule, written into the policy file (and so reloaded and kept).
    Save,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "once" => Some(Scope::Once),
            "session" => Some(Scope::Session),
            "save" => Some(Scope::Save),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Once => "once",
            Scope::Session => "session",
            Scope::Save => "save",
        }
    }
}

/// The operator's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Approved { scope: Scope, by: String },
    Denied { by: String },
}

/// What a held connection or question gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed: `rule` names the grant (`ask:once#3 "name:port" by root`).
    Approved {
        id: u64,
        scope: Scope,
        rule: String,
    },
    Denied {
        id: u64,
        by: String,
    },
    TimedOut {
        id: u64,
        after: Duration,
    },
    /// Too many decisions pending: denied at once.
    Overflow {
        max: usize,
    },
}

impl Outcome {
    /// The audit record's `ask` field.
    pub fn label(&self) -> String {
        match self {
            Outcome::Approved { id, scope, .. } => format!("approved:{}#{id}", scope.as_str()),
            Outcome::Denied { id, .. } => format!("denied#{id}"),
            Outcome::TimedOut { id, .. } => format!("timeout#{id}"),
            Outcome::Overflow { .. } => "overflow".into(),
        }
    }

    /// The sentence appended to the denial's reason (`None` when approved).
    pub fn denial_note(&self) -> Option<String> {
        match self {
            Outcome::Approved { .. } => None,
            Outcome::Denied { id, by } => Some(format!("denied by {by} (ask {id})")),
            Outcome::TimedOut { id, after } => Some(format!(
                "no decision within ask_timeout {} (ask {id})",
                humantime::format_duration(*after)
            )),
            Outcome::Overflow { max } => Some(format!(
                "not held for a decision: {max} decisions are pending already (ask_max_pending)"
            )),
        }
    }
}

/// What the held connection (or question) wants.
#[derive(Debug, Clone)]
pub struct Want {
    pub profile: String,
    pub name: CanonicalName,
    /// `None` for a DNS question.
    pub port: Option<u16>,
    pub protocol: Option<Protocol>,
    pub cgroup_id: u64,
    pub comm: String,
    pub pid: u32,
}

impl Want {
    /// The rule an approval grants (and `--save` writes): the name on the default ports for
    /// TLS/HTTP there or a DNS question, else `name:port`.
    pub fn rule(&self) -> Pattern {
        let explicit = match (self.port, self.protocol) {
            (None, _) => None,
            (Some(p), Some(Protocol::Opaque)) => Some(p),
            (Some(p), _) if DEFAULT_PORTS.contains(&p) => None,
            (Some(p), _) => Some(p),
        };
        Pattern {
            host: crate::policy::HostPattern::Exact(self.name.clone()),
            port: explicit,
        }
    }
}

/// Whether `grant` allows what `want` asks (DNS questions: the name).
fn covers(grant: &Pattern, want: &Want) -> bool {
    if !grant.host.matches(&want.name) {
        return false;
    }
    match want.port {
        None => true,
        Some(p) => {
            grant.covers_port(p)
                && !(want.protocol == Some(Protocol::Opaque) && grant.port.is_none())
        }
    }
}

/// One pending decision, as shown by `pending` (and its event stream).
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    pub id: u64,
    pub profile: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub protocol: &'static str,
    /// The rule an approval grants, as `--save` would write it.
    pub rule: String,
    pub cgroup_id: u64,
    pub comm: String,
    pub pid: u32,
    pub waiting: usize,
    pub since: String,
    pub expires_in_ms: u64,
}

/// A line of the event stream (`GET /v1/pending?follow=1`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    Pending(Shown),
    Approved {
        id: u64,
        scope: Scope,
        by: String,
    },
    Denied {
        id: u64,
        by: String,
    },
    /// Every waiter gave up (timeout, or the clients went away).
    Expired {
        id: u64,
    },
}

type Key = (String, CanonicalName);

struct Entry {
    shown: Shown,
    want: Want,
    deadline: Instant,
    /// Held connections (not DNS questions) among the waiters.
    connections: usize,
    tx: watch::Sender<Option<Verdict>>,
}

#[derive(Default)]
struct State {
    pending: HashMap<Key, Entry>,
    ids: HashMap<u64, Key>,
    /// `--session` grants (with the decision that made each), per profile.
    session: HashMap<String, Vec<(Pattern, u64)>>,
    /// Decisions only DNS questions waited for: the connection that follows (within
    /// [`TICKET_LIFE`]) is the one the operator decided on.
    tickets: HashMap<Key, (Ticket, Instant)>,
    /// Decisions whose rule `--save` is writing: the reload that follows must not release
    /// them (the operator's own approval does).
    saving: std::collections::HashSet<u64>,
}

/// A decision left for the connection that follows an answered DNS question.
#[derive(Clone)]
enum Ticket {
    /// `--once` (decision `id`): that connection, if the rule covers it.
    Once(Pattern, u64),
    /// `deny`: that connection is denied without asking again.
    Denied { id: u64, by: String },
}

/// Tickets live this long after the approval that left them.
const TICKET_LIFE: Duration = Duration::from_secs(60);
/// A decision being saved (see [`Asks::saving`]).
pub struct Saving<'a> {
    asks: &'a Asks,
    id: u64,
}

impl Drop for Saving<'_> {
    fn drop(&mut self) {
        self.asks.state().saving.remove(&self.id);
    }
}

/// Whether `policy` allows what `want` waits for (a DNS question: the name on 443).
fn allowed_now(policy: &Policy, want: &Want) -> bool {
    let port = want.port.unwrap_or(443);
    let protocol = want.protocol.unwrap_or(Protocol::Tls);
    matches!(
        policy.decide(&want.profile, &want.name, port, protocol),
        crate::policy::Decision::Allow { .. }
    )
}

/// Events buffered per follower; a slower follower misses events (and is told so).
const EVENT_BUFFER: usize = 256;

/// The agent-wide register of pending decisions.
pub struct Asks {
    state: Mutex<State>,
    next_id: AtomicU64,
    events: broadcast::Sender<Event>,
}

impl Default for Asks {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
            events: broadcast::channel(EVENT_BUFFER).0,
        }
    }
}

/// Why an operator's decision was not applied.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("no pending decision {0} (decided already, or every waiter gave up)")]
    Unknown(u64),
}

impl Asks {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds `want` until an operator decides or `timeout` passes. Returns at once when a
    /// session grant or a ticket covers it, or when `max` decisions are pending already.
    pub async fn hold(&self, want: Want, timeout: Duration, max: usize) -> Outcome {
        let (id, mut rx, rule) = match self.join(&want, timeout, max) {
            Joined::Granted(o) => return o,
            Joined::Overflow => return Outcome::Overflow { max },
            Joined::Waiting(id, rx, rule) => (id, rx, rule),
        };
        // Leaves on every path, also when the caller drops this future (its client went away).
        let _waiting = Waiting {
            asks: self,
            want: &want,
            id,
        };
        let verdict = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await;
        let verdict = match verdict {
            Ok(Ok(v)) => v.clone(),
            _ => None,
        };
        match verdict {
            Some(Verdict::Approved { scope, by }) => Outcome::Approved {
                id,
                scope,
                rule: format!("ask:{}#{id} \"{rule}\" by {by}", scope.as_str()),
            },
            Some(Verdict::Denied { by }) => Outcome::Denied { id, by },
            None => Outcome::TimedOut { id, after: timeout },
        }
    }

    fn join(&self, want: &Want, timeout: Duration, max: usize) -> Joined {
        let key: Key = (want.profile.clone(), want.name.clone());
        let mut st = self.state();
        if let Some(g) = st
            .session
            .get(&want.profile)
            .and_then(|gs| gs.iter().find(|(g, _)| covers(g, want)))
        {
            return Joined::Granted(Outcome::Approved {
                id: g.1,
                scope: Scope::Session,
                rule: format!("ask:session#{} \"{}\"", g.1, g.0),
            });
        }
        if let Some(o) = take_ticket(&mut st, &key, want) {
            return Joined::Granted(o);
        }
        if let Some(e) = st.pending.get_mut(&key) {
            e.shown.waiting += 1;
            if want.port.is_some() {
                e.connections += 1;
                // The connection says more than the DNS question that opened it.
                if e.want.port.is_none() {
                    e.want.port = want.port;
                    e.want.protocol = want.protocol;
                    e.shown.port = want.port;
                    e.shown.protocol = protocol_label(want.protocol);
                    e.shown.rule = want.rule().to_string();
                }
            }
            return Joined::Waiting(e.shown.id, e.tx.subscribe(), e.shown.rule.clone());
        }
        if st.pending.len() >= max {
            return Joined::Overflow;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shown = Shown {
            id,
            profile: want.profile.clone(),
            name: want.name.as_str().to_string(),
            port: want.port,
            protocol: protocol_label(want.protocol),
            rule: want.rule().to_string(),
            cgroup_id: want.cgroup_id,
            comm: want.comm.clone(),
            pid: want.pid,
            waiting: 1,
            since: crate::record::Record::now(),
            expires_in_ms: 0,
        };
        let (tx, rx) = watch::channel(None);
        let rule = shown.rule.clone();
        let _ = self.events.send(Event::Pending(shown.clone()));
        st.ids.insert(id, key.clone());
        st.pending.insert(
            key,
            Entry {
                shown,
                want: want.clone(),
                deadline: Instant::now() + timeout,
                connections: usize::from(want.port.is_some()),
                tx,
            },
        );
        Joined::Waiting(id, rx, rule)
    }

    /// A waiter of decision `id` is done (answered, timed out, or its client went away):
    /// the last one removes a decision nobody made.
    fn leave(&self, want: &Want, id: u64) {
        let key: Key = (want.profile.clone(), want.name.clone());
        let mut st = self.state();
        let Some(e) = st.pending.get_mut(&key).filter(|e| e.shown.id == id) else {
            return;
        };
        e.shown.waiting = e.shown.waiting.saturating_sub(1);
        if want.port.is_some() {
            e.connections = e.connections.saturating_sub(1);
        }
        if e.shown.waiting == 0 {
            st.pending.remove(&key);
            st.ids.remove(&id);
            let _ = self.events.send(Event::Expired { id });
        }
    }

    /// Applies an operator's decision to every waiter of `id`. `--save` must have written
    /// and reloaded the policy before this is called.
    pub fn decide(&self, id: u64, verdict: Verdict) -> Result<Shown, DecideError> {
        let mut st = self.state();
        let key = st.ids.remove(&id).ok_or(DecideError::Unknown(id))?;
        let Some(e) = st.pending.remove(&key) else {
            return Err(DecideError::Unknown(id));
        };
        let grant = e.want.rule();
        let ticket = match &verdict {
            Verdict::Approved {
                scope: Scope::Session,
                ..
            } => {
                st.session
                    .entry(key.0.clone())
                    .or_default()
                    .push((grant, id));
                None
            }
            Verdict::Approved {
                scope: Scope::Once, ..
            } => Some(Ticket::Once(grant, id)),
            Verdict::Approved { .. } => None,
            Verdict::Denied { by } => Some(Ticket::Denied { id, by: by.clone() }),
        };
        if let Some(t) = ticket.filter(|_| e.connections == 0) {
            let now = Instant::now();
            st.tickets.retain(|_, (_, until)| *until > now);
            st.tickets.insert(key, (t, now + TICKET_LIFE));
        }
        let event = match &verdict {
            Verdict::Approved { scope, by } => Event::Approved {
                id,
                scope: *scope,
                by: by.clone(),
            },
            Verdict::Denied { by } => Event::Denied { id, by: by.clone() },
        };
        let _ = e.tx.send(Some(verdict));
        let _ = self.events.send(event);
        Ok(e.shown)
    }

    /// After a reload: every pending decision the new policy allows is approved (once, by the
    /// reload), so its held connections go on at once instead of waiting out `ask_timeout`.
    /// Returns how many were released.
    pub fn release_allowed(&self, policy: &Policy) -> usize {
        let ids: Vec<u64> = {
            let st = self.state();
            st.pending
                .values()
                .filter(|e| !st.saving.contains(&e.shown.id) && allowed_now(policy, &e.want))
                .map(|e| e.shown.id)
                .collect()
        };
        let by = format!("policy reload ({})", policy.version());
        ids.into_iter()
            .filter(|id| {
                let verdict = Verdict::Approved {
                    scope: Scope::Once,
                    by: by.clone(),
                };
                self.decide(*id, verdict).is_ok()
            })
            .count()
    }

    /// Keeps `id` out of [`Asks::release_allowed`] while `--save` writes and reloads its rule.
    pub fn saving(&self, id: u64) -> Saving<'_> {
        self.state().saving.insert(id);
        Saving { asks: self, id }
    }

    /// The pending decision `id` (for `--save`, which needs its rule before deciding).
    pub fn get(&self, id: u64) -> Option<Shown> {
        let st = self.state();
        let key = st.ids.get(&id)?;
        st.pending
            .get(key)
            .map(|e| with_expiry(&e.shown, e.deadline))
    }

    /// Every pending decision, oldest first.
    pub fn list(&self) -> Vec<Shown> {
        let st = self.state();
        let mut v: Vec<Shown> = st
            .pending
            .values()
            .map(|e| with_expiry(&e.shown, e.deadline))
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }

    pub fn pending_count(&self) -> usize {
        self.state().pending.len()
    }

    /// The event stream: subscribe first, then list, so nothing falls between.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

/// One waiter of a pending decision; dropping it is leaving.
struct Waiting<'a> {
    asks: &'a Asks,
    want: &'a Want,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.asks.leave(self.want, self.id);
    }
}

enum Joined {
    Granted(Outcome),
    Overflow,
    Waiting(u64, watch::Receiver<Option<Verdict>>, String),
}

/// A connection consumes the ticket its DNS question's decision left; a question only reads it.
fn take_ticket(st: &mut State, key: &Key, want: &Want) -> Option<Outcome> {
    let now = Instant::now();
    let (ticket, until) = st.tickets.get(key)?;
    if *until <= now {
        return None;
    }
    let outcome = match ticket {
        Ticket::Once(grant, id) if covers(grant, want) => Outcome::Approved {
            id: *id,
            scope: Scope::Once,
            rule: format!("ask:once \"{grant}\" (approved with its DNS question)"),
        },
        Ticket::Once(..) => return None,
        Ticket::Denied { id, by } => Outcome::Denied {
            id: *id,
            by: by.clone(),
        },
    };
    if want.port.is_some() {
        st.tickets.remove(key);
    }
    Some(outcome)
}

fn with_expiry(s: &Shown, deadline: Instant) -> Shown {
    let mut s = s.clone();
    s.expires_in_ms = deadline
        .saturating_duration_since(Instant::now())
        .as_millis() as u64;
    s
}

fn protocol_label(p: Option<Protocol>) -> &'static str {
    match p {
        None => "dns",
        Some(Protocol::Tls) => "tls",
        Some(Protocol::Http) => "http",
        Some(Protocol::Opaque) => "opaque",
    }
}

/// Who decides: `SUDO_USER`, else `USER`, else the uid.
pub fn operator() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .ok()
        .filter(|u| !u.is_empty() && u.len() <= 64 && u.chars().all(|c| !c.is_control()))
        .unwrap_or_else(|| {
            use std::os::unix::fs::MetadataExt;
            let uid = std::fs::metadata("/proc/self").map(|m| m.uid());
            uid.map_or_else(|_| "unknown user".into(), |u| format!("uid {u}"))
        })
}

#[cfg(test)]
mod tests;
