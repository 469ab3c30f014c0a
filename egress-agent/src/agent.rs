//! The running agent: the policy in force, the audit log, the resolver, and one
//! `Attachment` per enforced cgroup, each with its listeners' tasks.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use tokio::task::JoinSet;

use crate::{
    audit::Audit,
    bpf::{self, maps::EgressEvent, Enforcement, OrigDstTable},
    cgroup::Cgroup,
    netns::{Listeners, Netns},
    policy::Policy,
    record::Record,
    resolve::Resolver,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Bpf(#[from] bpf::BpfError),
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    #[error(transparent)]
    Resolve(#[from] crate::resolve::ResolveError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("profile `{0}` is not defined in the policy")]
    UnknownProfile(String),
}

/// What every connection handler reads. The policy is swapped atomically on
/// reload; a connection loads it once and keeps that snapshot to the end.
pub struct Shared {
    pub policy: ArcSwap<Policy>,
    pub resolver: ArcSwap<Resolver>,
    pub audit: Audit,
}

impl Shared {
    pub fn new(policy: Policy, audit: Audit) -> Result<Arc<Self>, AgentError> {
        let resolver = Resolver::new(policy.resolver())?;
        Ok(Arc::new(Self {
            policy: ArcSwap::from_pointee(policy),
            resolver: ArcSwap::from_pointee(resolver),
            audit,
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
                tracing::info!(policy = %version, "policy reloaded");
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
    /// The container's connection budget, shared by its v4 and v6 listeners.
    pub conn_permits: Arc<tokio::sync::Semaphore>,
    /// Upstream HTTP/2 connections its inspected connections share.
    pub upstreams: crate::shared_upstreams::SharedUpstreams,
}

impl Attachment {
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

/// An attached cgroup with its running tasks. Dropping it stops the tasks but
/// leaves the kernel enforcement pinned (fail closed); `detach` removes that.
pub struct Running {
    pub attachment: Arc<Attachment>,
    pub enforcement: Enforcement,
    pub netns: Netns,
    /// Where the listeners are (also in the kernel's eg_config).
    pub config: bpf::maps::EgressConfig,
    tasks: JoinSet<()>,
}

impl Running {
    /// Attach (or adopt) enforcement on `cg`, create listeners in `netns`, point
    /// the programs at them, and start serving.
    pub fn start(
        shared: Arc<Shared>,
        cg: Cgroup,
        netns: Netns,
        profile: String,
    ) -> Result<Self, AgentError> {
        let policy = shared.policy.load();
        if !policy.profile_names().any(|p| p == profile) {
            return Err(AgentError::UnknownProfile(profile));
        }
        let mut enforcement = Enforcement::attach(&cg)?;
        sync_deny_set(&mut enforcement, &policy)?;
        let listeners = Listeners::create(&netns)?;
        let config = listeners.config();
        enforcement.configure(config)?;
        let orig = enforcement.take_orig_dst()?;
        let events = enforcement.take_events()?;
        let attachment = Arc::new(Attachment {
            cgroup: cg,
            profile,
            orig,
            dns: DnsMemory::default(),
            shared: shared.clone(),
            conn_permits: crate::interceptor::connection_permits(),
            upstreams: Default::default(),
        });
        let mut tasks = JoinSet::new();
        let Listeners {
            tcp4,
            tcp6,
            dns4,
            dns6,
        } = listeners;
        for l in std::iter::once(tcp4).chain(tcp6) {
            let l = tokio::net::TcpListener::from_std(l)?;
            tasks.spawn(crate::interceptor::serve(l, attachment.clone()));
        }
        for s in std::iter::once(dns4).chain(dns6) {
            let s = tokio::net::UdpSocket::from_std(s)?;
            tasks.spawn(crate::dns::serve_udp(s, attachment.clone()));
        }
        let att = attachment.clone();
        tasks.spawn(async move {
            let res = bpf::events::run(events, move |ev| {
                att.shared.audit.record(kernel_record(&att, &ev))
            })
            .await;
            if let Err(e) = res {
                tracing::error!(error = %e, "kernel event reader stopped");
            }
        });
        tracing::info!(
            cgroup = %attachment.cgroup.path.display(),
            cgroup_id = attachment.cgroup.id,
            profile = %attachment.profile,
            adopted = enforcement.adopted,
            "enforcing"
        );
        Ok(Self {
            attachment,
            enforcement,
            netns,
            config,
            tasks,
        })
    }

    /// Stop serving and remove the kernel enforcement.
    pub fn detach(mut self) -> Result<(), AgentError> {
        self.tasks.abort_all();
        let cg = self.attachment.cgroup.clone();
        drop(self);
        bpf::detach(&cg)?;
        Ok(())
    }

    /// Re-sync the kernel deny set after a policy reload.
    pub fn resync(&mut self) -> Result<(), AgentError> {
        let policy = self.attachment.shared.policy.load();
        sync_deny_set(&mut self.enforcement, &policy)
    }
}

/// The kernel tries hold exactly `addr`'s table and the policy's allow_ranges.
pub fn sync_deny_set(enf: &mut Enforcement, policy: &Policy) -> Result<(), AgentError> {
    let deny = crate::addr::deny_entries().map(|(net, reason, exemptable)| {
        (
            net,
            bpf::maps::DenyValue {
                reason: reason as u32,
                flags: if exemptable {
                    0
                } else {
                    bpf::maps::DENY_F_NO_EXEMPT
                },
            },
        )
    });
    let exempt = policy.addr_policy().exempt_nets().to_vec();
    enf.sync_deny_set(deny, exempt)?;
    Ok(())
}

fn kernel_record(att: &Attachment, ev: &EgressEvent) -> Record {
    let reason = crate::addr::Reason::from_u32(ev.reason as u32);
    Record {
        time: Record::now(),
        cgroup_id: ev.cgroup_id,
        profile: att.profile.clone(),
        pid: ev.tgid,
        comm: ev.comm().to_string(),
        orig_dst: ev.destination().map(|d| d.to_string()).unwrap_or_default(),
        protocol: "kernel",
        decision: "deny",
        policy: att.shared.policy.load().version().to_string(),
        code: Some(
            reason
                .map(|r| r.label().to_string())
                .unwrap_or_else(|| ev.reason.to_string()),
        ),
        reason: Some(format!(
            "{} refused in the kernel ({})",
            crate::bpf::maps::Hook::from_u8(ev.hook)
                .map(|h| h.label())
                .unwrap_or("?"),
            reason
                .map(|r| r.to_string())
                .unwrap_or_else(|| format!("reason {}", ev.reason))
        )),
        ..Default::default()
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
