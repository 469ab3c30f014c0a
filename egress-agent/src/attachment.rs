//! Below every room: what every stage of the data path reads: the agent-wide [`Shared`] state (policy in
//! force, resolver, audit log) and one [`Attachment`] per enforced cgroup (its identity,
//! profile, original-destination table, DNS memory, connection cap and budgets). Below every
//! stage; it knows none of them.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;

use crate::{
    audit::Audit,
    bpf::OrigDstTable,
    cgroup::Cgroup,
    policy::Policy,
    record::Record,
    resolve::{ResolveError, Resolver},
};

/// What every connection handler reads. The policy is swapped atomically on
/// reload; a connection loads it once and keeps that snapshot to the end.
pub struct Shared {
    pub policy: ArcSwap<Policy>,
    pub resolver: ArcSwap<Resolver>,
    pub audit: Audit,
    /// Decisions pending for an operator (`mode = "ask"` profiles).
    pub asks: crate::ask::Asks,
    /// Revocation URLs learned from inspected upstreams' certificates (kept across reloads).
    pub revocation: crate::revocation::Registry,
}

impl Shared {
    pub fn new(policy: Policy, audit: Audit) -> Result<Arc<Self>, ResolveError> {
        let resolver = Resolver::new(policy.resolver())?;
        Ok(Arc::new(Self {
            policy: ArcSwap::from_pointee(policy),
            resolver: ArcSwap::from_pointee(resolver),
            audit,
            asks: crate::ask::Asks::default(),
            revocation: Default::default(),
        }))
    }

    /// Parse and validate the policy file, then swap it in atomically: new
    /// connections see it, established ones keep the snapshot they loaded. An
    /// invalid file, or one that drops a profile in use, changes nothing.
    /// Returns the new version, or the one-line reason for refusing it.
    pub fn reload(&self, path: &Path, in_use: &[String]) -> Result<String, String> {
        let res = (|| {
            let p = crate::policy::Policy::load(path).map_err(|e| e.to_string())?;
            if let Some(missing) = in_use.iter().find(|prof| !p.has_profile(prof)) {
                return Err(format!(
                    "{}: profile `{missing}` is in use by an attachment but not defined",
                    path.display()
                ));
            }
            let mut resolver = None;
            if let Some(r) = p.resolver() {
                if r != self.resolver.load().server {
                    resolver = Some(
                        crate::resolve::Resolver::new(Some(r))
                            .map_err(|e| format!("resolver {r}: {e}"))?,
                    );
                }
            }
            Ok((p, resolver))
        })();
        match res {
            Ok((p, resolver)) => {
                let version = p.version().to_string();
                if let Some(res) = resolver {
                    self.resolver.store(Arc::new(res));
                }
                self.policy.store(Arc::new(p));
                let released = self.asks.release_allowed(&self.policy.load());
                tracing::info!(policy = %version, released, "policy reloaded");
                Ok(version)
            }
            Err(e) => {
                tracing::error!(error = %e, "reload refused; keeping the policy in force");
                Err(e)
            }
        }
    }
}

/// Names the agent's DNS answered for one cgroup, by address: how opaque TCP
/// (no SNI, no Host) is matched to a `host:port` rule. An address may carry
/// several names (shared CDN addresses); a few are kept per address.
#[derive(Default)]
pub struct DnsMemory {
    by_addr: Mutex<HashMap<IpAddr, Vec<(String, Instant)>>>,
}

/// Entries outlive their DNS TTL a little: clients keep using answers past it.
const DNS_MEMORY_MIN: Duration = Duration::from_secs(600);
const DNS_MEMORY_MAX_ENTRIES: usize = 65_536;
const DNS_MEMORY_NAMES_PER_ADDR: usize = 8;

impl DnsMemory {
    pub fn remember(&self, name: &str, addrs: &[IpAddr], ttl: u32) {
        let now = Instant::now();
        let until = now + DNS_MEMORY_MIN.max(Duration::from_secs(ttl as u64));
        let mut m = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= DNS_MEMORY_MAX_ENTRIES {
            m.retain(|_, names| {
                names.retain(|(_, t)| *t > now);
                !names.is_empty()
            });
        }
        for a in addrs {
            if m.len() >= DNS_MEMORY_MAX_ENTRIES && !m.contains_key(a) {
                continue;
            }
            let names = m.entry(*a).or_default();
            names.retain(|(n, t)| *t > now && n != name);
            if names.len() == DNS_MEMORY_NAMES_PER_ADDR {
                names.remove(0); // oldest first
            }
            names.push((name.to_string(), until));
        }
    }

    /// Unexpired names for an address, most recent first.
    pub fn names_of(&self, ip: IpAddr) -> Vec<String> {
        let now = Instant::now();
        let m = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&ip)
            .map(|names| {
                names
                    .iter()
                    .rev()
                    .filter(|(_, t)| *t > now)
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One enforced cgroup as the connection handlers see it.
pub struct Attachment {
    pub cgroup: Cgroup,
    pub profile: String,
    pub orig: OrigDstTable,
    pub dns: DnsMemory,
    pub shared: Arc<Shared>,
    /// The container's connection cap, shared by its v4 and v6 listeners.
    pub conn_permits: Arc<tokio::sync::Semaphore>,
    /// Upstream HTTP/2 connections its inspected connections share.
    pub upstreams: crate::pool::SharedUpstreams,
    /// Who sent each DNS question (the kernel's record, by the sender's address and port).
    pub dns_senders: Option<crate::bpf::DnsSenderTable>,
    /// The sandbox is known to trust the agent's CA (`exec --trust-ca`; a runtime hook that
    /// mounted the trust bundle): a denied TLS name is then answered with a minted
    /// certificate and a 403, and a client that still rejects the CA uses a store of its own.
    pub trusts_ca: std::sync::atomic::AtomicBool,
    /// The sandbox's network namespace: where a `local` service marked `sandbox:` is dialed.
    pub netns: Option<crate::netns::Netns>,
    /// What this container has used of its profile's budgets (kept across reloads).
    pub budgets: crate::budget::Budgets,
}

impl Attachment {
    pub fn trusts_ca(&self) -> bool {
        self.trusts_ca.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Marks the sandbox as trusting the agent's CA (see [`Attachment::trusts_ca`]).
    pub fn set_trusts_ca(&self, on: bool) {
        self.trusts_ca
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Writes a finished connection's (or request's) record with its duration.
    pub fn finish(&self, mut rec: Record, started: Instant) {
        rec.duration_ms = started.elapsed().as_millis() as u64;
        self.shared.audit.record(rec);
    }

    /// An audit record pre-filled with this attachment's identity.
    pub fn record(&self, protocol: &'static str) -> Record {
        Record {
            time: Record::now(),
            cgroup_id: self.cgroup.id,
            profile: self.profile.clone(),
            protocol,
            decision: "allow",
            policy: self.shared.policy.load().version().to_string(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_memory_keeps_every_name_of_a_shared_address() {
        let m = DnsMemory::default();
        let ip: IpAddr = "198.51.100.12".parse().unwrap();
        m.remember("cdn.test", &[ip], 0);
        m.remember("other.test", &[ip], 0);
        m.remember("cdn.test", &[ip], 0);
        assert_eq!(
            m.names_of(ip),
            vec!["cdn.test".to_string(), "other.test".to_string()]
        );
        for i in 0..20 {
            m.remember(&format!("n{i}.test"), &[ip], 0);
        }
        assert_eq!(m.names_of(ip).len(), DNS_MEMORY_NAMES_PER_ADDR);
        assert_eq!(m.names_of(ip)[0], "n19.test");
    }
}
