//! Below requests: upstream HTTP/2 connections shared by one container's inspected client connections.
//!
//! Without this, every inspected client connection pays a second TLS handshake (and the
//! upstream a connection) although the agent already holds a verified HTTP/2 connection to the
//! same name: a client that opens a connection per request (most CLIs, `curl` in a loop)
//! doubled the agent's handshake cost. A connection is reused only by the same container, for
//! the same decided name and port, under the same policy snapshot it was dialed under (the
//! snapshot is held, so a reload never reuses a connection whose address was checked against
//! an older policy). Requests are still checked one by one by the per-request engine; only the
//! transport is shared. Looked up once per client connection, never on the data path.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::policy::Policy;

pub type H2 = hyper::client::conn::http2::SendRequest<crate::requests::UpBody>;

/// An unused shared connection is closed after this long.
const IDLE: Duration = Duration::from_secs(60);
/// Entries kept per container (names × ports); beyond it the least recently used goes.
const MAX: usize = 256;

struct Entry {
    policy: Arc<Policy>,
    h2: H2,
    peer: Option<SocketAddr>,
    used: Instant,
}

#[derive(Default)]
pub struct SharedUpstreams {
    map: Mutex<HashMap<(String, u16), Entry>>,
}

impl SharedUpstreams {
    /// A live connection to `name:port` dialed under exactly `policy`, and its peer address.
    pub fn get(
        &self,
        policy: &Arc<Policy>,
        name: &str,
        port: u16,
    ) -> Option<(H2, Option<SocketAddr>)> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let e = map.get_mut(&(name.to_string(), port))?;
        if !Arc::ptr_eq(&e.policy, policy) || !live(e, now) {
            return None;
        }
        e.used = now;
        Some((e.h2.clone(), e.peer))
    }

    /// Offers a freshly dialed connection for sharing (replaces a closed or older one).
    pub fn put(
        &self,
        policy: &Arc<Policy>,
        name: &str,
        port: u16,
        h2: &H2,
        peer: Option<SocketAddr>,
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
            },
        );
    }
}

fn live(e: &Entry, now: Instant) -> bool {
    !e.h2.is_closed() && now.duration_since(e.used) < IDLE
}
