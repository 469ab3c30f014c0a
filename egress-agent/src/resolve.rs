//! Below upstream and dns: the agent's own resolver (hickory). Every upstream dial uses an address this
//! resolver returned and `addr` accepted — never the address the client chose.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_resolver::{
    config::{NameServerConfig, ResolverConfig, ResolverOpts},
    net::runtime::TokioRuntimeProvider,
    TokioResolver,
};

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "no resolver configured: set `resolver` in the policy or a nameserver in /etc/resolv.conf"
    )]
    NoResolver,
    #[error("building the resolver: {0}")]
    Build(String),
    #[error("resolving {name}: {msg}")]
    Lookup { name: String, msg: String },
}

/// The longest a lookup may take, all attempts included.
const LOOKUP_BUDGET: Duration = Duration::from_secs(4);

pub struct Resolver {
    inner: TokioResolver,
    pub server: SocketAddr,
}

/// The first nameserver of /etc/resolv.conf.
pub fn system_nameserver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("nameserver")?;
        let ip: IpAddr = rest.trim().parse().ok()?;
        Some(SocketAddr::new(ip, 53))
    })
}

impl Resolver {
    pub fn new(server: Option<SocketAddr>) -> Result<Self, ResolveError> {
        let server = server
            .or_else(system_nameserver)
            .ok_or(ResolveError::NoResolver)?;
        let mut ns = NameServerConfig::udp_and_tcp(server.ip());
        for c in &mut ns.connections {
            c.port = server.port();
        }
        let config = ResolverConfig::from_name_servers(vec![ns]);
        let mut opts = ResolverOpts::default();
        // Two tries of 1.5 s fit the lookup budget (a lost datagram is retried).
        opts.timeout = Duration::from_millis(1500);
        opts.attempts = 2;
        opts.cache_size = 4096;
        // Rebinding defence does not rely on caching: every dial re-checks the
        // addresses; the cap just bounds how stale an answer can be.
        opts.positive_max_ttl = Some(Duration::from_secs(300));
        let inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| ResolveError::Build(e.to_string()))?;
        Ok(Self { inner, server })
    }

    /// A and AAAA for a canonical name (absolute: no search domains), with the
    /// smallest TTL seen.
    pub async fn lookup(&self, name: &str) -> Result<(Vec<IpAddr>, u32), ResolveError> {
        let fqdn = format!("{name}.");
        // One bound for the whole lookup (every attempt, UDP and TCP): a resolver
        // that is down or slow must give the client dns_error / SERVFAIL before its
        // own timeout (glibc's is 5 s), not hold the connection or query longer.
        let res = tokio::time::timeout(LOOKUP_BUDGET, self.inner.lookup_ip(fqdn.as_str()))
            .await
            .map_err(|_| ResolveError::Lookup {
                name: name.to_string(),
                msg: format!(
                    "resolver {} did not answer within {}s",
                    self.server,
                    LOOKUP_BUDGET.as_secs()
                ),
            })?
            .map_err(|e| ResolveError::Lookup {
                name: name.to_string(),
                msg: format!("resolver {}: {e}", self.server),
            })?;
        let ttl = res
            .valid_until()
            .saturating_duration_since(std::time::Instant::now())
            .as_secs()
            .min(u32::MAX as u64) as u32;
        Ok((res.iter().collect(), ttl))
    }
}

/// Split resolved addresses into those the agent may use and those it refuses
/// (with the reason), by the one classifier of `addr` plus the host's own
/// addresses. Used for every dial and every DNS answer alike.
pub fn screen(policy: &crate::policy::Policy, addrs: Vec<IpAddr>) -> (Vec<IpAddr>, Vec<String>) {
    let own = host_addresses();
    let mut ok = Vec::with_capacity(addrs.len());
    let mut refused = Vec::new();
    for ip in addrs {
        match policy.addr_policy().classify(ip) {
            crate::addr::Verdict::Denied { reason, .. } => refused.push(format!("{ip} ({reason})")),
            _ if own.contains(&ip) => {
                refused.push(format!("{ip} (an address of the agent's host)"))
            }
            _ => ok.push(ip),
        }
    }
    (ok, refused)
}

/// How long the host's address list is reused before it is read again.
const HOST_ADDRS_TTL: Duration = Duration::from_secs(5);

/// The agent's own host addresses (THREATS B: proxy loops, host services),
/// re-read at most every few seconds. Reads take no lock: the cache is an
/// ArcSwap; two dials racing past a stale entry both refresh it, harmlessly.
fn host_addresses() -> Arc<Vec<IpAddr>> {
    static CACHE: std::sync::LazyLock<arc_swap::ArcSwapOption<(Instant, Arc<Vec<IpAddr>>)>> =
        std::sync::LazyLock::new(arc_swap::ArcSwapOption::empty);
    if let Some(c) = CACHE.load().as_ref() {
        if c.0.elapsed() < HOST_ADDRS_TTL {
            return c.1.clone();
        }
    }
    let v = Arc::new(crate::sys::local_addresses().unwrap_or_default());
    CACHE.store(Some(Arc::new((Instant::now(), v.clone()))));
    v
}
