//! Control plane: Kubernetes pods on this node, selected by annotation, enforced by the daemon.
//!
//! ```toml
//! [kubernetes]
//! annotation = "egress-agent.io/profile"                   # its value names the profile
//! runtime_endpoint = "unix:///run/containerd/containerd.sock"
//! interval_secs = 5
//! crictl = "crictl"                                         # optional: the binary
//! ```
//!
//! Pods are found through the CRI the node already runs, with `crictl` (no API
//! server access, no credentials): `crictl pods -o json` lists the sandboxes
//! with their annotations; for a ready sandbox carrying the annotation,
//! `crictl inspectp -o json ID` gives the sandbox (pause) process's pid
//! (`info.pid`, containerd and CRI-O alike), whose `/proc/PID/ns/net` is the
//! pod's network namespace and whose `/proc/PID/cgroup` names the sandbox
//! container's cgroup v2.
//!
//! **One attachment per pod**, on the *pod-level* cgroup: the parent of the
//! sandbox container's cgroup (`…/kubepods-<qos>-pod<uid>.slice` with the
//! systemd driver, `…/pod<uid>` with cgroupfs). Every container of the pod is a
//! child of it, so containers started later (restarts, init containers,
//! ephemeral debug containers) are enforced from their first syscall, and they
//! all share the pod's network namespace, where the agent's listeners live.
//! The parent's name must carry the pod's uid, or nothing is attached.
//!
//! The reconcile loop attaches new annotated pods, detaches pods that are gone
//! (or no longer annotated) and re-attaches a pod whose profile changed. Every
//! error is logged per pod and retried at the next tick; none stops the loop.

use std::{
    collections::BTreeMap,
    path::{Component, Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;

use crate::{cgroup::Cgroup, daemon::Daemon, netns::Netns};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeConfig {
    #[serde(default = "default_annotation")]
    pub annotation: String,
    #[serde(default = "default_endpoint")]
    pub runtime_endpoint: String,
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    #[serde(default = "default_crictl")]
    pub crictl: PathBuf,
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
fn default_crictl() -> PathBuf {
    "crictl".into()
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("running {cmd}: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{cmd} failed ({status}): {stderr}")]
    Crictl {
        cmd: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("parsing the output of {cmd}: {source}")]
    Json {
        cmd: String,
        source: serde_json::Error,
    },
    #[error(
        "pod {pod}: the sandbox has no process (info.pid is missing or 0 in `crictl inspectp`)"
    )]
    NoPid { pod: String },
    #[error("pod {pod}: reading /proc/{pid}/cgroup: {source}")]
    ProcCgroup {
        pod: String,
        pid: u32,
        source: std::io::Error,
    },
    #[error("pod {pod}: {reason}")]
    PodCgroup { pod: String, reason: String },
    #[error("pod {pod}: {source}")]
    Cgroup {
        pod: String,
        source: crate::cgroup::CgroupError,
    },
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

/// `crictl pods -o json`.
#[derive(Debug, Clone, Deserialize)]
pub struct PodList {
    #[serde(default)]
    pub items: Vec<PodSandbox>,
}

/// One pod sandbox, as crictl prints it (fields we do not use are ignored).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct PodSandbox {
    pub id: String,
    pub metadata: PodMetadata,
    pub state: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct PodMetadata {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// `crictl inspectp -o json ID`.
#[derive(Debug, Clone, Deserialize)]
pub struct Inspect {
    pub status: PodSandbox,
    #[serde(default)]
    pub info: InspectInfo,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct InspectInfo {
    #[serde(default)]
    pub pid: u32,
}

impl PodSandbox {
    /// `namespace/name` for logs and errors.
    pub fn display(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }
}

pub fn parse_pods(json: &str) -> Result<PodList, serde_json::Error> {
    serde_json::from_str(json)
}

pub fn parse_inspect(json: &str) -> Result<Inspect, serde_json::Error> {
    serde_json::from_str(json)
}

/// A pod that should be enforced: ready and carrying the annotation (a
/// non-empty value, which is the profile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub id: String,
    pub pod: String,
    pub uid: String,
    pub profile: String,
}

pub fn select(pods: &[PodSandbox], annotation: &str) -> BTreeMap<String, Wanted> {
    pods.iter()
        .filter(|p| p.state == "SANDBOX_READY")
        .filter_map(|p| {
            let profile = p.annotations.get(annotation)?.trim();
            (!profile.is_empty()).then(|| {
                (
                    p.id.clone(),
                    Wanted {
                        id: p.id.clone(),
                        pod: p.display(),
                        uid: p.metadata.uid.clone(),
                        profile: profile.to_string(),
                    },
                )
            })
        })
        .collect()
}

/// A pod this loop attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub pod: String,
    pub profile: String,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
}

/// What to do: attach these sandbox ids, detach those (a pod whose profile
/// changed is in both: detached first).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub attach: Vec<String>,
    pub detach: Vec<String>,
}

pub fn plan(wanted: &BTreeMap<String, Wanted>, attached: &BTreeMap<String, Attached>) -> Plan {
    let mut p = Plan::default();
    for (id, a) in attached {
        match wanted.get(id) {
            Some(w) if w.profile == a.profile => {}
            _ => p.detach.push(id.clone()),
        }
    }
    for (id, w) in wanted {
        match attached.get(id) {
            Some(a) if a.profile == w.profile => {}
            _ => p.attach.push(id.clone()),
        }
    }
    p
}

/// The pod-level cgroup, relative to the cgroup v2 root, from the text of
/// the sandbox process's `/proc/PID/cgroup`: the parent of its `0::` path,
/// whose last component must name the pod's uid (`pod<uid>`, or with `_`
/// for `-` as the systemd driver writes it).
pub fn pod_cgroup(proc_cgroup: &str, uid: &str) -> Result<PathBuf, String> {
    let rel = proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("no cgroup v2 membership (0::/...)")?
        .trim();
    let path = Path::new(rel);
    let parent = path
        .parent()
        .filter(|p| p.file_name().is_some())
        .ok_or_else(|| format!("sandbox cgroup {rel} has no parent below the root"))?;
    let name = parent.file_name().unwrap_or_default().to_string_lossy();
    let systemd_uid = uid.replace('-', "_");
    if uid.is_empty()
        || !(name.contains(&format!("pod{uid}")) || name.contains(&format!("pod{systemd_uid}")))
    {
        return Err(format!(
            "sandbox cgroup {rel}: its parent {name} is not the cgroup of pod uid {uid}"
        ));
    }
    Ok(parent.to_path_buf())
}

/// The pod cgroup's directory under the cgroup v2 mount. When the agent runs
/// in a cgroup namespace of its own (a container's default), `/proc/PID/cgroup`
/// of other processes reads `/../../kubepods…`: the path below the common
/// ancestor, which is then found under the mount by its suffix (bounded walk);
/// the sandbox cgroup `leaf` below it must hold `pid`.
pub fn locate(mount: &Path, rel: &Path, leaf: &str, pid: u32) -> Option<PathBuf> {
    let comps: Vec<_> = rel.components().collect();
    let ups = comps.iter().filter(|c| **c == Component::ParentDir).count();
    let suffix: PathBuf = comps
        .iter()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    if ups == 0 {
        return Some(mount.join(&suffix));
    }
    let holds = |dir: &Path| {
        std::fs::read_to_string(dir.join(leaf).join("cgroup.procs"))
            .map(|t| t.lines().any(|l| l.trim() == pid.to_string()))
            .unwrap_or(false)
    };
    let mut stack = vec![(mount.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let cand = dir.join(&suffix);
        if cand.is_dir() && holds(&cand) {
            return Some(cand);
        }
        if depth >= 6 {
            continue;
        }
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    None
}

fn crictl(cfg: &KubeConfig, args: &[&str]) -> Result<String, KubeError> {
    let cmd = format!("{} {}", cfg.crictl.display(), args.join(" "));
    let out = std::process::Command::new(&cfg.crictl)
        .arg("--runtime-endpoint")
        .arg(&cfg.runtime_endpoint)
        .args(args)
        .output()
        .map_err(|source| KubeError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(KubeError::Crictl {
            cmd,
            status: out.status,
            stderr: stderr.lines().last().unwrap_or("").to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn list_pods(cfg: &KubeConfig) -> Result<Vec<PodSandbox>, KubeError> {
    let cmd = "crictl pods -o json";
    let text = crictl(cfg, &["pods", "-o", "json"])?;
    Ok(parse_pods(&text)
        .map_err(|source| KubeError::Json {
            cmd: cmd.into(),
            source,
        })?
        .items)
}

/// The pod's cgroup and network namespace, from its sandbox process.
fn resolve_pod(cfg: &KubeConfig, w: &Wanted) -> Result<(Cgroup, Netns), KubeError> {
    let pod = || w.pod.clone();
    let text = crictl(cfg, &["inspectp", "-o", "json", &w.id])?;
    let inspect = parse_inspect(&text).map_err(|source| KubeError::Json {
        cmd: format!("crictl inspectp -o json {}", w.id),
        source,
    })?;
    let pid = inspect.info.pid;
    if pid == 0 {
        return Err(KubeError::NoPid { pod: pod() });
    }
    let proc_cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|source| {
        KubeError::ProcCgroup {
            pod: pod(),
            pid,
            source,
        }
    })?;
    let rel = pod_cgroup(&proc_cg, &w.uid)
        .map_err(|reason| KubeError::PodCgroup { pod: pod(), reason })?;
    let leaf = proc_cg
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .and_then(|p| Path::new(p.trim()).file_name().map(|n| n.to_owned()))
        .unwrap_or_default();
    let cg_err = |source| KubeError::Cgroup { pod: pod(), source };
    let mount = crate::cgroup::cgroup2_mount().map_err(cg_err)?;
    let dir =
        locate(&mount, &rel, &leaf.to_string_lossy(), pid).ok_or_else(|| KubeError::PodCgroup {
            pod: pod(),
            reason: format!(
                "pod cgroup {} not found under {}",
                rel.display(),
                mount.display()
            ),
        })?;
    let cg = Cgroup::open(&dir).map_err(cg_err)?;
    let netns = Netns::of_pid(pid).map_err(|source| KubeError::Netns { pod: pod(), source })?;
    // The sandbox may have exited meanwhile and its pid been reused.
    let again = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    if again != proc_cg {
        return Err(KubeError::PodCgroup {
            pod: pod(),
            reason: format!("sandbox process {pid} changed cgroup during attach"),
        });
    }
    Ok((cg, netns))
}

/// One reconcile pass: attach, detach, log. `attached` is this loop's state.
pub async fn reconcile(
    daemon: &Daemon,
    cfg: &KubeConfig,
    attached: &mut BTreeMap<String, Attached>,
) -> Result<(), KubeError> {
    let c = cfg.clone();
    let pods = match tokio::task::spawn_blocking(move || list_pods(&c)).await {
        Ok(r) => r?,
        Err(e) => {
            tracing::error!(error = %e, "listing pods");
            return Ok(());
        }
    };
    let wanted = select(&pods, &cfg.annotation);
    // Someone may have detached a pod by hand: attach it again.
    let live = daemon.attached_ids().await;
    attached.retain(|_, a| live.contains(&a.cgroup_id));
    let p = plan(&wanted, attached);
    for id in &p.detach {
        let Some(a) = attached.remove(id) else {
            continue;
        };
        match daemon.detach_id(a.cgroup_id).await {
            Ok(_) => tracing::info!(pod = %a.pod, cgroup = %a.cgroup.display(), "pod detached"),
            Err(e) => tracing::error!(pod = %a.pod, error = %e, "detaching pod"),
        }
    }
    for id in &p.attach {
        let w = wanted[id].clone();
        let c = cfg.clone();
        let w2 = w.clone();
        let resolved = tokio::task::spawn_blocking(move || resolve_pod(&c, &w2)).await;
        let res = match resolved {
            Ok(Ok((cg, netns))) => {
                let (path, cid) = (cg.path.clone(), cg.id);
                daemon
                    .attach_pod(cg, netns, w.profile.clone())
                    .await
                    .map(|_| (path, cid))
                    .map_err(|e| KubeError::Daemon {
                        pod: w.pod.clone(),
                        source: Box::new(e),
                    })
            }
            Ok(Err(e)) => Err(e),
            Err(e) => {
                tracing::error!(pod = %w.pod, error = %e, "resolving pod");
                continue;
            }
        };
        match res {
            Ok((cgroup, cgroup_id)) => {
                tracing::info!(pod = %w.pod, profile = %w.profile, cgroup = %cgroup.display(), "pod attached");
                attached.insert(
                    id.clone(),
                    Attached {
                        pod: w.pod,
                        profile: w.profile,
                        cgroup,
                        cgroup_id,
                    },
                );
            }
            Err(e) => tracing::error!(pod = %w.pod, error = %e, "attaching pod"),
        }
    }
    Ok(())
}

/// The reconcile loop: runs until the daemon stops (the task is aborted).
pub async fn run(daemon: Arc<Daemon>, cfg: KubeConfig) {
    let mut attached = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.interval_secs.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(annotation = %cfg.annotation, endpoint = %cfg.runtime_endpoint, "kubernetes pod discovery");
    let mut last_err = None;
    loop {
        tick.tick().await;
        match reconcile(&daemon, &cfg, &mut attached).await {
            Ok(()) => last_err = None,
            Err(e) => {
                // Log a failing listing once, not every tick.
                let s = e.to_string();
                if last_err.as_ref() != Some(&s) {
                    tracing::error!(error = %s, "listing pods (will retry)");
                }
                last_err = Some(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PODS: &str = include_str!("../tests/fixtures/kube/crictl-pods.json");
    const INSPECT_CONTAINERD: &str =
        include_str!("../tests/fixtures/kube/crictl-inspectp-containerd.json");
    const INSPECT_CRIO: &str = include_str!("../tests/fixtures/kube/crictl-inspectp-crio.json");
    const UID: &str = "0b6a4e2c-9d1f-4c3a-8e7b-2f5d6c1a9e03";
    const AGENT_ID: &str = "5f0a8c1e9b2d4f6a8c0e1f3a5b7d9e2c4f6a8b0d1e3f5a7c9e1b3d5f7a9c0e2b";

    /// /proc/PID/cgroup of the pause process: containerd with the systemd
    /// cgroup driver (hybrid host: v1 lines first), containerd with cgroupfs,
    /// CRI-O (systemd, Guaranteed QoS: no QoS slice).
    const CONTAINERD_SYSTEMD: &str = "12:pids:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b6a4e2c_9d1f_4c3a_8e7b_2f5d6c1a9e03.slice/cri-containerd-5f0a8c1e9b2d4f6a8c0e1f3a5b7d9e2c4f6a8b0d1e3f5a7c9e1b3d5f7a9c0e2b.scope\n\
1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b6a4e2c_9d1f_4c3a_8e7b_2f5d6c1a9e03.slice/cri-containerd-5f0a8c1e9b2d4f6a8c0e1f3a5b7d9e2c4f6a8b0d1e3f5a7c9e1b3d5f7a9c0e2b.scope\n\
0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b6a4e2c_9d1f_4c3a_8e7b_2f5d6c1a9e03.slice/cri-containerd-5f0a8c1e9b2d4f6a8c0e1f3a5b7d9e2c4f6a8b0d1e3f5a7c9e1b3d5f7a9c0e2b.scope\n";
    const CONTAINERD_CGROUPFS: &str = "0::/kubepods/burstable/pod0b6a4e2c-9d1f-4c3a-8e7b-2f5d6c1a9e03/5f0a8c1e9b2d4f6a8c0e1f3a5b7d9e2c4f6a8b0d1e3f5a7c9e1b3d5f7a9c0e2b\n";
    const CRIO: &str = "0::/kubepods.slice/kubepods-pod0b6a4e2c_9d1f_4c3a_8e7b_2f5d6c1a9e03.slice/crio-0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d.scope\n";
    /// The same pause process read from inside a private cgroup namespace.
    const CGROUPNS: &str = "0::/../../../kubepods-besteffort.slice/kubepods-besteffort-pod0b6a4e2c_9d1f_4c3a_8e7b_2f5d6c1a9e03.slice/cri-containerd-5f0a8c1e9b2d4f6a8c0e1f3a5b7d9e2c4f6a8b0d1e3f5a7c9e1b3d5f7a9c0e2b.scope\n";

    #[test]
    fn parses_crictl_pods_and_selects_ready_annotated_pods() {
        let pods = parse_pods(PODS).unwrap().items;
        assert_eq!(pods.len(), 4);
        assert_eq!(pods[0].metadata.uid, UID);
        assert_eq!(pods[0].display(), "sandboxes/coding-agent-7d9f8b6c5-x2k4q");
        let w = select(&pods, "egress-agent.io/profile");
        // Not: coredns (no annotation), build-job (not ready), notebook (empty value).
        assert_eq!(w.keys().collect::<Vec<_>>(), vec![AGENT_ID]);
        assert_eq!(
            w[AGENT_ID],
            Wanted {
                id: AGENT_ID.into(),
                pod: "sandboxes/coding-agent-7d9f8b6c5-x2k4q".into(),
                uid: UID.into(),
                profile: "ci".into(),
            }
        );
        assert!(select(&pods, "other.io/profile").is_empty());
        assert!(parse_pods("{}").unwrap().items.is_empty());
        assert!(parse_pods("not json").is_err());
    }

    #[test]
    fn parses_crictl_inspectp_of_containerd_and_crio() {
        let c = parse_inspect(INSPECT_CONTAINERD).unwrap();
        assert_eq!(c.info.pid, 48213);
        assert_eq!(c.status.metadata.uid, UID);
        assert_eq!(c.status.annotations["egress-agent.io/profile"], "ci");
        let o = parse_inspect(INSPECT_CRIO).unwrap();
        assert_eq!(o.info.pid, 51877);
        assert_eq!(o.status.state, "SANDBOX_READY");
        // Without --verbose info (or a runtime that gives none): pid 0.
        let bare = format!(
            "{{\"status\": {}}}",
            serde_json::to_string(
                &serde_json::from_str::<serde_json::Value>(INSPECT_CRIO).unwrap()["status"]
            )
            .unwrap()
        );
        assert_eq!(parse_inspect(&bare).unwrap().info.pid, 0);
    }

    #[test]
    fn pod_cgroup_is_the_parent_of_the_sandbox_cgroup_and_names_the_uid() {
        assert_eq!(
            pod_cgroup(CONTAINERD_SYSTEMD, UID).unwrap(),
            Path::new("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b6a4e2c_9d1f_4c3a_8e7b_2f5d6c1a9e03.slice")
        );
        assert_eq!(
            pod_cgroup(CONTAINERD_CGROUPFS, UID).unwrap(),
            Path::new("/kubepods/burstable/pod0b6a4e2c-9d1f-4c3a-8e7b-2f5d6c1a9e03")
        );
        assert_eq!(
            pod_cgroup(CRIO, UID).unwrap(),
            Path::new("/kubepods.slice/kubepods-pod0b6a4e2c_9d1f_4c3a_8e7b_2f5d6c1a9e03.slice")
        );
        assert_eq!(
            pod_cgroup(CGROUPNS, UID).unwrap(),
            Path::new("/../../../kubepods-besteffort.slice/kubepods-besteffort-pod0b6a4e2c_9d1f_4c3a_8e7b_2f5d6c1a9e03.slice")
        );
        // Another pod's uid, the root, a process directly in a QoS slice,
        // no v2 line: refused, never a shared cgroup.
        let other = "7c2f9a41-3b8e-4d5a-9f6c-1e0d2b3a4c5f";
        assert!(pod_cgroup(CONTAINERD_SYSTEMD, other)
            .unwrap_err()
            .contains("not the cgroup of pod uid"));
        assert!(pod_cgroup("0::/\n", UID).is_err());
        assert!(pod_cgroup("0::/init.scope\n", UID).is_err());
        assert!(pod_cgroup("0::/kubepods.slice/kubepods-besteffort.slice\n", UID).is_err());
        assert!(pod_cgroup("1:name=systemd:/x/y\n", UID).is_err());
        assert!(pod_cgroup(CONTAINERD_SYSTEMD, "").is_err());
    }

    #[test]
    fn locate_joins_plain_paths_and_finds_cgroupns_relative_ones() {
        let mount = std::env::temp_dir().join(format!("egress-kube-locate-{}", std::process::id()));
        let pod =
            mount.join("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podX.slice");
        std::fs::create_dir_all(pod.join("cri-containerd-S.scope")).unwrap();
        std::fs::write(pod.join("cri-containerd-S.scope/cgroup.procs"), "77\n").unwrap();
        let plain =
            Path::new("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podX.slice");
        assert_eq!(
            locate(&mount, plain, "cri-containerd-S.scope", 77).unwrap(),
            pod
        );
        let rel = Path::new("/../../kubepods-besteffort.slice/kubepods-besteffort-podX.slice");
        assert_eq!(
            locate(&mount, rel, "cri-containerd-S.scope", 77).unwrap(),
            pod
        );
        // The sandbox cgroup must hold the pid.
        assert_eq!(locate(&mount, rel, "cri-containerd-S.scope", 78), None);
        let _ = std::fs::remove_dir_all(&mount);
    }

    fn wanted(id: &str, profile: &str) -> (String, Wanted) {
        (
            id.into(),
            Wanted {
                id: id.into(),
                pod: format!("ns/{id}"),
                uid: format!("uid-{id}"),
                profile: profile.into(),
            },
        )
    }

    fn attached(id: &str, profile: &str) -> (String, Attached) {
        (
            id.into(),
            Attached {
                pod: format!("ns/{id}"),
                profile: profile.into(),
                cgroup: PathBuf::from(format!("/sys/fs/cgroup/{id}")),
                cgroup_id: id.len() as u64,
            },
        )
    }

    #[test]
    fn plan_attaches_new_detaches_gone_and_reattaches_changed_profiles() {
        let want: BTreeMap<_, _> =
            [wanted("a", "ci"), wanted("b", "ci"), wanted("c", "web")].into();
        let have: BTreeMap<_, _> = [
            attached("a", "ci"),
            attached("c", "ci"),
            attached("d", "ci"),
        ]
        .into();
        assert_eq!(
            plan(&want, &have),
            Plan {
                attach: vec!["b".into(), "c".into()],
                detach: vec!["c".into(), "d".into()],
            }
        );
        assert_eq!(
            plan(
                &want,
                &want.iter().map(|(k, w)| attached(k, &w.profile)).collect()
            ),
            Plan::default()
        );
        assert_eq!(
            plan(&BTreeMap::new(), &have).detach,
            vec!["a".to_string(), "c".into(), "d".into()]
        );
    }

    #[test]
    fn config_defaults_and_unknown_keys() {
        let c: KubeConfig = toml::from_str("").unwrap();
        assert_eq!(c.annotation, "egress-agent.io/profile");
        assert_eq!(c.runtime_endpoint, "unix:///run/containerd/containerd.sock");
        assert_eq!(c.interval_secs, 5);
        assert!(toml::from_str::<KubeConfig>("anotation = \"x\"").is_err());
    }
}
