//! The pod-level cgroup of a pod, from its sandbox (pause) process: the parent of the sandbox
//! container's cgroup (`…/kubepods-<qos>-pod<uid>.slice` with the systemd driver, `…/pod<uid>`
//! with cgroupfs). Every container of the pod is a child of it, so containers started later
//! (restarts, init containers, ephemeral debug containers) are enforced from their first
//! syscall. The parent's name must carry the pod's uid, or nothing is attached.

use std::path::{Component, Path, PathBuf};

use super::KubeError;
use crate::cgroup::Cgroup;

/// The pod-level cgroup, relative to the cgroup v2 root, from the text of the sandbox
/// process's `/proc/PID/cgroup`: the parent of its `0::` path, whose last component must name
/// the pod's uid (`pod<uid>`, or with `_` for `-` as the systemd driver writes it).
pub fn pod_cgroup(proc_cgroup: &str, uid: &str) -> Result<PathBuf, String> {
    let rel = v2_line(proc_cgroup).ok_or("no cgroup v2 membership (0::/...)")?;
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

fn v2_line(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
}

/// The pod cgroup's directory under the cgroup v2 mount. When the agent runs in a cgroup
/// namespace of its own (a container's default), `/proc/PID/cgroup` of other processes reads
/// `/../../kubepods…`: the path below the common ancestor, which is then found under the mount
/// by its suffix (bounded walk); the sandbox cgroup `leaf` below it must hold `pid`.
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

/// The pod cgroup of the sandbox process `pid` of pod `pod` (uid `uid`), opened. Checked
/// again after opening: a sandbox that exited meanwhile may have had its pid reused.
pub fn of_sandbox(pod: &str, uid: &str, pid: u32) -> Result<Cgroup, KubeError> {
    let bad = |reason: String| KubeError::PodCgroup {
        pod: pod.to_string(),
        reason,
    };
    let read = || std::fs::read_to_string(format!("/proc/{pid}/cgroup"));
    let proc_cg = read().map_err(|e| bad(format!("reading /proc/{pid}/cgroup: {e}")))?;
    let rel = pod_cgroup(&proc_cg, uid).map_err(bad)?;
    let leaf = v2_line(&proc_cg)
        .and_then(|p| {
            Path::new(p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let mount = crate::cgroup::cgroup2_mount().map_err(|e| bad(e.to_string()))?;
    let dir = locate(&mount, &rel, &leaf, pid).ok_or_else(|| {
        bad(format!(
            "pod cgroup {} not found under {}",
            rel.display(),
            mount.display()
        ))
    })?;
    let cg = Cgroup::open(&dir).map_err(|e| bad(e.to_string()))?;
    if read().ok().as_deref() != Some(proc_cg.as_str()) {
        return Err(bad(format!(
            "sandbox process {pid} changed cgroup while it was resolved"
        )));
    }
    Ok(cg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b6a4e2c-9d1f-4c3a-8e7b-2f5d6c1a9e03";
    /// /proc/PID/cgroup of the pause process: containerd with the systemd cgroup driver
    /// (hybrid host: v1 lines first), containerd with cgroupfs, CRI-O (systemd, Guaranteed
    /// QoS: no QoS slice).
    const CONTAINERD_SYSTEMD: &str = "12:pids:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b6a4e2c_9d1f_4c3a_8e7b_2f5d6c1a9e03.slice/cri-containerd-5f0a.scope\n\
1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b6a4e2c_9d1f_4c3a_8e7b_2f5d6c1a9e03.slice/cri-containerd-5f0a.scope\n\
0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b6a4e2c_9d1f_4c3a_8e7b_2f5d6c1a9e03.slice/cri-containerd-5f0a.scope\n";
    const CONTAINERD_CGROUPFS: &str =
        "0::/kubepods/burstable/pod0b6a4e2c-9d1f-4c3a-8e7b-2f5d6c1a9e03/5f0a8c1e9b2d\n";
    const CRIO: &str = "0::/kubepods.slice/kubepods-pod0b6a4e2c_9d1f_4c3a_8e7b_2f5d6c1a9e03.slice/crio-0c9d.scope\n";
    /// The same pause process read from inside a private cgroup namespace.
    const CGROUPNS: &str = "0::/../../../kubepods-besteffort.slice/kubepods-besteffort-pod0b6a4e2c_9d1f_4c3a_8e7b_2f5d6c1a9e03.slice/cri-containerd-5f0a.scope\n";

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
        // Another pod's uid, the root, a process directly in a QoS slice, no v2 line:
        // refused, never a shared cgroup.
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
}
