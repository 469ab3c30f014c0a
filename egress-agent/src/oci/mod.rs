//! Command: the container runtimes' ways in (DESIGN.md §12) — enforcement before a
//! container's first instruction.
//!
//! - [`hook`]: `egress-agent oci-hook`, an OCI `createRuntime` hook (podman and CRI-O read it
//!   from hooks.d): the runtime has created the container's namespaces and placed its init
//!   process in its cgroup, and waits for the hook before the container runs anything. The
//!   hook asks the daemon to adopt the container and returns only once it is enforced; if
//!   the daemon does not answer or refuses, the hook fails and the container does not start.
//! - [`wrapper`]: `egress-agent runtime … -- ARGS` (or the binary invoked as
//!   `egress-agent-runc`), an OCI runtime for runtimes without hooks.d (Docker, containerd):
//!   on `create`/`run` it adds the hook to the bundle's `config.json`, then executes the real
//!   runtime with the same arguments; every other verb goes through unchanged.

pub mod hook;
mod trust;
pub mod wrapper;

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;

/// The annotation that selects a container's profile.
pub const PROFILE_ANNOTATION: &str = "egress-agent.io/profile";
/// The annotation (`"true"`) that asks the runtime wrapper for the agent's CA in the
/// container's system trust store (as `egress-agent runtime --trust-ca` does).
pub const TRUST_ANNOTATION: &str = "egress-agent.io/trust-ca";

/// The OCI state a runtime writes on a hook's stdin (runtime-spec `runtime.md`).
#[derive(Debug, Deserialize)]
pub struct State {
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub pid: Option<u32>,
    pub bundle: std::path::PathBuf,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// What the hook needs of the bundle's `config.json`.
#[derive(Debug, Default)]
pub struct Spec {
    pub annotations: BTreeMap<String, String>,
    pub cgroups_path: Option<String>,
}

/// Reads `<bundle>/config.json` (the spec is the runtime's, so only what we use is read).
pub fn read_spec(bundle: &Path) -> Result<Spec, String> {
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("bundle {}: cannot read config.json: {e}", bundle.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
    let annotations = v["annotations"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let cgroups_path = v["linux"]["cgroupsPath"].as_str().map(str::to_string);
    Ok(Spec {
        annotations,
        cgroups_path,
    })
}

/// Which part of a Kubernetes pod a container is, from the CRI's annotations (containerd's
/// and CRI-O's spellings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodRole {
    /// The pod's sandbox (pause) container: its parent cgroup is the pod's.
    Sandbox { uid: Option<String> },
    /// An application container of a pod (its sandbox was adopted first).
    Container,
    /// Not a Kubernetes container.
    None,
}

pub fn pod_role(a: &BTreeMap<String, String>) -> PodRole {
    let kind = a
        .get("io.kubernetes.cri.container-type")
        .or_else(|| a.get("io.kubernetes.cri-o.ContainerType"));
    match kind.map(String::as_str) {
        Some("sandbox") => PodRole::Sandbox {
            uid: a
                .get("io.kubernetes.cri.sandbox-uid")
                .or_else(|| a.get("io.kubernetes.pod.uid"))
                .cloned(),
        },
        Some("container") => PodRole::Container,
        _ => PodRole::None,
    }
}

/// A Kubernetes pod's `namespace/name` from the CRI's annotations (containerd's and CRI-O's).
pub fn pod_name(a: &BTreeMap<String, String>) -> Option<String> {
    let get = |keys: [&str; 2]| keys.iter().find_map(|k| a.get(*k));
    let ns = get([
        "io.kubernetes.cri.sandbox-namespace",
        "io.kubernetes.pod.namespace",
    ])?;
    let name = get(["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"])?;
    Some(format!("{ns}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cri_roles() {
        let mut a = BTreeMap::new();
        assert_eq!(pod_role(&a), PodRole::None);
        a.insert("io.kubernetes.cri.container-type".into(), "sandbox".into());
        a.insert("io.kubernetes.cri.sandbox-uid".into(), "u-1".into());
        assert_eq!(
            pod_role(&a),
            PodRole::Sandbox {
                uid: Some("u-1".into())
            }
        );
        let mut b = BTreeMap::new();
        b.insert(
            "io.kubernetes.cri-o.ContainerType".into(),
            "container".into(),
        );
        assert_eq!(pod_role(&b), PodRole::Container);
        assert_eq!(pod_name(&a), None);
        a.insert("io.kubernetes.cri.sandbox-namespace".into(), "team".into());
        a.insert("io.kubernetes.cri.sandbox-name".into(), "web-0".into());
        assert_eq!(pod_name(&a).as_deref(), Some("team/web-0"));
    }
}
