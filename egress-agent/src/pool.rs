//! Below requests: upstream connections shared by one container's client connections — one
//! HTTP/2 connection per name that its HTTP/2 clients multiplex over, and its inspected
//! HTTP/1.1 connections between requests (each goes back as soon as its request is answered,
//! so an idle client connection holds none, as in HAProxy's `http-reuse`).
//!
//! Without this, every client connection pays a second TLS handshake (and the upstream a
//! connection) although the agent already holds a verified connection to the same name: a
//! client that opens a connection per request (most CLIs, `curl` in a loop) doubled the
//! agent's handshake cost. A connection is reused only by the same container, for the same
//! decided name and port, under the same policy snapshot it was dialed under (the snapshot is held, so a reload never reuses a
//! connection whose address was checked against an older policy). Requests are still checked
//! one by one by the per-request engine; only the transport is shared. Looked up once per
//! client connection, never on the data path.
//!
//! Each client keeps the HTTP version it speaks on the upstream leg too: an HTTP/1.1 request
//! put on a shared HTTP/2 connection costs the agent's two tokio workers about three more
//! wake-ups each (hyper's HTTP/2 client runs the connection as its own task), which made an
//! inspected HTTP/1.1 request cost more CPU and latency than it does over HTTP/1.1 end to end.
//! An upstream that refuses HTTP/1.1 (ALPN `h2` alone) is the exception: its HTTP/2 connection
//! is marked so, and serves the name's HTTP/1.1 clients too.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::policy::Policy;

pub type H2 = hyper::client::conn::http2::SendRequest<crate::requests::UpBody>;
pub type H1 = hyper::client::conn::http1::SendRequest<crate::requests::UpBody>;

/// An unused shared connection is closed after this long.
const IDLE: Duration = Duration::from_secs(60);
/// Entries kept per container (names × ports); beyond it the least recently used goes.
const MAX: usize = 256;
/// An idle HTTP/1.1 connection is not reused after this long: upstreams close idle
/// keep-alive connections after a while (nginx 75 s, many balancers 60 s), and a request
/// sent just as the upstream closes is lost.
const H1_IDLE: Duration = Duration::from_secs(15);
/// HTTP/1.1 connections parked per container, all names together (each holds a
/// descriptor; those whose response is still on the way count too); beyond it the oldest is
/// closed (after its response). Few enough to scan on each request.
const H1_IDLE_MAX: usize = 128;

/// An idle upstream HTTP/1.1 connection and the address it is connected to.
pub type IdleH1 = (H1, Option<SocketAddr>);

/// A connection another client connection of the container opened, for this one to use.
pub enum Shared {
    /// The name's HTTP/2 connection (for an HTTP/2 client), and its address.
    H2(H2, Option<SocketAddr>),
    /// An idle HTTP/1.1 connection (for an HTTP/1.1 client).
    H1(IdleH1),
}

impl Shared {
    pub fn peer(&self) -> Option<SocketAddr> {
        match self {
            Shared::H2(_, peer) | Shared::H1((_, peer)) => *peer,
        }
    }
}

struct ParkedH1 {
    policy: Arc<Policy>,
    name: Arc<str>,
    port: u16,
    idle: IdleH1,
    since: Instant,
}

struct Entry {
    policy: Arc<Policy>,
    h2: H2,
    peer: Option<SocketAddr>,
    used: Instant,
    /// Dialed because the upstream refused HTTP/1.1: HTTP/1.1 clients use it too.
    refuses_h1: bool,
}

#[derive(Default)]
pub struct SharedUpstreams {
    map: Mutex<HashMap<(String, u16), Entry>>,
    /// Oldest first.
    h1: Mutex<Vec<ParkedH1>>,
}

impl SharedUpstreams {
    /// A live connection to `name:port` dialed under exactly `policy`, and its peer address.
    /// An HTTP/1.1 client (`h1_client`) gets one only from an upstream that refused HTTP/1.1.
    pub fn get(
        &self,
        policy: &Arc<Policy>,
        name: &str,
        port: u16,
        h1_client: bool,
    ) -> Option<(H2, Option<SocketAddr>)> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let e = map.get_mut(&(name.to_string(), port))?;
        if !Arc::ptr_eq(&e.policy, policy) || !live(e, now) || (h1_client && !e.refuses_h1) {
            return None;
        }
        e.used = now;
        Some((e.h2.clone(), e.peer))
    }

    /// Offers a freshly dialed connection for sharing (replaces a closed or older one);
    /// `refuses_h1`: the upstream refused HTTP/1.1.
    pub fn put(
        &self,
        policy: &Arc<Policy>,
        name: &str,
        port: u16,
        (h2, peer): (&H2, Option<SocketAddr>),
        refuses_h1: bool,
    ) {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // Pruned here, on the rare insert, not on every lookup.
        map.retain(|_, e| live(e, now));
        if map.len() >= MAX {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            (name.to_string(), port),
            Entry {
                policy: policy.clone(),
                h2: h2.clone(),
                peer,
                used: now,
                refuses_h1,
            },
        );
    }
}

impl SharedUpstreams {
    /// The most recently parked idle inspected HTTP/1.1 connection to `name:port` dialed
    /// under exactly `policy`, ready for a request and not idle too long (those are dropped
    /// by the next [`Self::give_h1`]).
    pub fn take_h1(&self, policy: &Arc<Policy>, name: &str, port: u16) -> Option<IdleH1> {
        let now = Instant::now();
        let mut parked = self.h1.lock().unwrap_or_else(|e| e.into_inner());
        let i = parked.iter().rposition(|p| {
            p.port == port
                && Arc::ptr_eq(&p.policy, policy)
                && &*p.name == name
                && p.idle.0.is_ready()
                && live_h1(p, now)
        })?;
        Some(parked.remove(i).idle)
    }

    /// Parks an inspected HTTP/1.1 connection as soon as its request is answered (its
    /// response body may still be on the way: [`Self::take_h1`] takes only a ready one), for
    /// any client connection of the container to the same name.
    /// Closed and expired ones are dropped here, once per request.
    pub fn give_h1(&self, policy: &Arc<Policy>, name: &Arc<str>, port: u16, idle: IdleH1) {
        let now = Instant::now();
        let mut parked = self.h1.lock().unwrap_or_else(|e| e.into_inner());
        parked.retain(|p| live_h1(p, now));
        parked.push(ParkedH1 {
            policy: policy.clone(),
            name: name.clone(),
            port,
            idle,
            since: now,
        });
        let over = parked.len().saturating_sub(H1_IDLE_MAX);
        parked.drain(..over);
    }
}

fn live_h1(p: &ParkedH1, now: Instant) -> bool {
    !p.idle.0.is_closed() && now.duration_since(p.since) < H1_IDLE
}

fn live(e: &Entry, now: Instant) -> bool {
    !e.h2.is_closed() && now.duration_since(e.used) < IDLE
}
