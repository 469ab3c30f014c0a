//! Running attachments: for one cgroup, the kernel enforcement attached (or adopted), the
//! listeners created in its network namespace, and the tasks that serve them (interceptor,
//! DNS, kernel events).

use std::sync::Arc;

use tokio::task::JoinSet;

use crate::{
    attachment::{Attachment, DnsMemory, Shared},
    bpf::{self, maps::EgressEvent, Enforcement},
    cgroup::Cgroup,
    netns::{Listeners, Netns},
    policy::Policy,
    record::Record,
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
        let listeners = Listeners::create(&netns, crate::interceptor::connection_cap())?;
        let config = listeners.config();
        enforcement.configure(config)?;
        let orig = enforcement.take_orig_dst()?;
        let dns_senders = enforcement.take_dns_senders();
        let events = enforcement.take_events()?;
        let attachment = Arc::new(Attachment {
            cgroup: cg,
            profile,
            orig,
            dns: DnsMemory::default(),
            shared: shared.clone(),
            conn_permits: crate::interceptor::connection_permits(),
            upstreams: Default::default(),
            dns_senders,
            trusts_ca: Default::default(),
            netns: netns.try_clone().ok(),
            budgets: Default::default(),
        });
        let mut tasks = JoinSet::new();
        let Listeners {
            tcp4,
            tcp6,
            dns4,
            dns6,
        } = listeners;
        for l in tcp4.into_iter().chain(tcp6) {
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
    let version = att.shared.policy.load().version().to_string();
    kernel_event_record(&att.profile, version, ev)
}

/// The audit record of a kernel denial (a container's programs or a gate's).
pub fn kernel_event_record(profile: &str, policy_version: String, ev: &EgressEvent) -> Record {
    let reason = crate::addr::Reason::from_u32(ev.reason as u32);
    Record {
        time: Record::now(),
        cgroup_id: ev.cgroup_id,
        profile: profile.to_string(),
        pid: ev.tgid,
        comm: ev.comm().to_string(),
        orig_dst: ev.destination().map(|d| d.to_string()).unwrap_or_default(),
        protocol: "kernel",
        decision: "deny",
        policy: policy_version,
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
