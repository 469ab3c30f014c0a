//! Control plane: Kubernetes pods on this node, found through the CRI API of the node's
//! runtime and enforced by the daemon.
//!
//! ```toml
//! [kubernetes]
//! annotation = "egress-agent.io/profile"                   # its value names the profile
//! runtime_endpoint = "unix:///run/containerd/containerd.sock"
//! interval_secs = 5                                         # listing interval (≥ 1)
//! exempt_namespaces = ["egress-agent"]                      # never enforced (the agent's own)
//! exempt_annotation = "egress-agent.io/exempt"              # optional: `=true` exempts a pod
//! host_network = "enforce"                                  # or "exempt"
//! namespace_profiles = { ci = "ci" }                        # profile of unannotated pods
//! default_profile = "default"                               # optional: every other pod
//! ```
//!
//! (`crictl` is no longer a key: discovery speaks gRPC to `runtime_endpoint` itself, and a
//! config that still names it is refused with one line.)
//!
//! Pods are found through the runtime's CRI socket ([`cri`]: `ListPodSandbox`, verbose
//! `PodSandboxStatus`, the `GetContainerEvents` stream where the runtime has one, else a
//! listing every `interval_secs`). No API server access, no credentials. For each ready
//! sandbox, [`select::decide`] says enforce (a profile), exempt or leave gated; the pod's
//! cgroup is the parent of its sandbox process's ([`pod_cgroup`]).
//!
//! **One attachment per pod**, on the pod-level cgroup, in the pod's network namespace
//! (hostNetwork pods: the node's, listeners on its loopback). Fail closed needs the gate: a
//! `[[gate]]` on the kubepods parent (`/sys/fs/cgroup/kubepods.slice` with the systemd
//! driver, `/sys/fs/cgroup/kubepods` with cgroupfs) leaves every pod without network until
//! discovery (or the runtime wrapper, synchronously) adopts or exempts it. Without a gate a
//! pod runs unenforced until its first listing, and the loop says so at start.
//!
//! Pods that end (gone from the list or no longer ready) are detached, their records and gate
//! entries removed. Errors are logged once per pod and message, and retried at the next
//! listing; none stops the loop.

pub mod cri;
pub mod pod_cgroup;
mod reconcile;
pub mod select;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use serde::{Deserialize, Deserializer};

use crate::daemon::Daemon;
pub use reconcile::Discovery;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeConfig {
    #[serde(default = "default_annotation")]
    pub annotation: String,
    #[serde(default = "default_endpoint", deserialize_with = "unix_endpoint")]
    pub runtime_endpoint: String,
    #[serde(default = "default_interval", deserialize_with = "interval")]
    pub interval_secs: u64,
    /// Pods of these namespaces are exempt from the gate and never enforced.
    #[serde(default)]
    pub exempt_namespaces: Vec<String>,
    /// An annotation whose value `true` exempts a pod (none by default: whoever can annotate a
    /// pod could exempt it, so only with an admission policy that controls it).
    #[serde(default)]
    pub exempt_annotation: Option<String>,
    #[serde(default)]
    pub host_network: HostNetwork,
    /// The profile of an unannotated pod, by namespace.
    #[serde(default)]
    pub namespace_profiles: BTreeMap<String, String>,
    /// The profile of every other unannotated, non-exempt pod (none: it stays gated).
    #[serde(default)]
    pub default_profile: Option<String>,
    /// Removed (discovery no longer runs crictl): refused with a line that says so.
    #[serde(default, deserialize_with = "removed_crictl")]
    #[allow(dead_code)] // never set: its deserializer always refuses
    crictl: Removed,
}

/// hostNetwork pods share the node's network namespace: enforced there (the agent's listeners
/// on the node's loopback), or exempt. Never silently open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostNetwork {
    #[default]
    Enforce,
    Exempt,
}

fn default_annotation() -> String {
    "egress-agent.io/profile".into()
}
fn default_endpoint() -> String {
    "unix:///run/containerd/containerd.sock".into()
}
fn default_interval() -> u64 {
    5
}

fn unix_endpoint<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    cri::socket_path(&s).map_err(serde::de::Error::custom)?;
    Ok(s)
}

fn interval<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match u64::deserialize(d)? {
        0 => Err(serde::de::Error::custom("interval_secs must be at least 1")),
        n => Ok(n),
    }
}

/// A key that is no longer read: present, it is refused.
#[derive(Debug, Clone, Copy, Default)]
struct Removed;

fn removed_crictl<'de, D: Deserializer<'de>>(_: D) -> Result<Removed, D::Error> {
    Err(serde::de::Error::custom(
        "`crictl` was removed: discovery speaks the CRI over `runtime_endpoint` itself; delete the key",
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("{0}")]
    Endpoint(String),
    #[error("{call} on {endpoint}: {code:?}: {message}")]
    Cri {
        call: &'static str,
        endpoint: String,
        code: tonic::Code,
        message: String,
    },
    #[error("sandbox {id}: {reason}")]
    Inspect { id: String, reason: String },
    #[error("pod {pod}: {reason}")]
    PodCgroup { pod: String, reason: String },
    #[error("pod {pod}: {source}")]
    Netns {
        pod: String,
        source: crate::netns::NetnsError,
    },
    #[error("pod {pod}: {source}")]
    Daemon {
        pod: String,
        source: Box<crate::daemon::DaemonError>,
    },
}

/// The discovery loop: a pass at every event of the runtime's stream (if it has one) and at
/// every interval; runs until the daemon stops (the task is aborted).
pub async fn run(daemon: Arc<Daemon>, cfg: KubeConfig) {
    let cri = match cri::CriClient::new(&cfg.runtime_endpoint) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "kubernetes pod discovery not started");
            return;
        }
    };
    if !daemon.has_gates() {
        tracing::warn!(
            "no [[gate]] in daemon.toml: a new pod runs unenforced until discovery attaches it; gate the kubepods parent cgroup to fail closed"
        );
    }
    tracing::info!(annotation = %cfg.annotation, endpoint = %cfg.runtime_endpoint, interval_secs = cfg.interval_secs, "kubernetes pod discovery");
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let events = tokio::spawn(follow_events(cri.clone(), tx, cfg.interval_secs));
    let _stop_events = AbortOnDrop(events.abort_handle());
    let mut discovery = Discovery::new(cri, cfg.clone());
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.interval_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(()) = rx.recv() => {}
        }
        discovery.pass(&daemon).await;
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Follows `GetContainerEvents`, waking the loop at each event. A runtime without the stream
/// (containerd 1.6: `Unimplemented`) is said once; the loop then relies on its interval.
async fn follow_events(cri: cri::CriClient, wake: tokio::sync::mpsc::Sender<()>, secs: u64) {
    let mut last_err = None;
    loop {
        let res = match cri.events().await {
            Ok(mut stream) => {
                tracing::info!("following the runtime's container events");
                loop {
                    match stream.message().await {
                        Ok(Some(_)) => {
                            // A pass is due; one pending wake-up is enough.
                            let _ = wake.try_send(());
                        }
                        Ok(None) => break Ok(()),
                        Err(s) => break Err(s.code()),
                    }
                }
            }
            Err(KubeError::Cri { code, .. }) => Err(code),
            Err(_) => Err(tonic::Code::Unknown),
        };
        match res {
            Err(tonic::Code::Unimplemented) => {
                tracing::info!(
                    interval_secs = secs,
                    "the runtime has no CRI event stream (containerd < 1.7): listing at the interval"
                );
                return;
            }
            Err(code) if last_err != Some(code) => {
                tracing::warn!(
                    ?code,
                    "the runtime's event stream failed; listing at the interval until it is back"
                );
                last_err = Some(code);
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_bad_input() {
        let c: KubeConfig = toml::from_str("").unwrap();
        assert_eq!(c.annotation, "egress-agent.io/profile");
        assert_eq!(c.runtime_endpoint, "unix:///run/containerd/containerd.sock");
        assert_eq!(c.interval_secs, 5);
        assert_eq!(c.host_network, HostNetwork::Enforce);
        assert!(c.exempt_namespaces.is_empty() && c.default_profile.is_none());
        let e = |t: &str| toml::from_str::<KubeConfig>(t).unwrap_err().to_string();
        assert!(e("anotation = \"x\"").contains("unknown field"));
        assert!(e("crictl = \"/usr/bin/crictl\"").contains("`crictl` was removed"));
        assert!(e("interval_secs = 0").contains("at least 1"));
        assert!(e("runtime_endpoint = \"tcp://1.2.3.4:5\"").contains("unix:///"));
        assert!(e("host_network = \"open\"").contains("unknown variant"));
        let c: KubeConfig =
            toml::from_str("host_network = \"exempt\"\nruntime_endpoint = \"/run/crio/crio.sock\"")
                .unwrap();
        assert_eq!(c.host_network, HostNetwork::Exempt);
    }
}
