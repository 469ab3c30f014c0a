//! The agent's CA in a container's system trust store (DESIGN §14), from the runtime
//! wrapper: the daemon writes the trust files (certificates only) and the wrapper adds
//! read-only bind mounts of them to the bundle's `config.json` — over the distribution
//! bundle paths the image has (always over Debian's), at `/etc/egress-agent/` for the
//! variables, over the Java truststore where the image has one — plus the variables tools
//! with their own store read.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::TRUST_ANNOTATION;

/// Where the container finds the files the variables name.
const IN_CONTAINER: &str = "/etc/egress-agent";
/// Distribution bundle paths; Debian's is always mounted (it is what most tools read when the
/// image has no store at all), the others only where the image has them.
const BUNDLE_PATHS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
];
const JAVA_PATHS: &[&str] = &["/etc/ssl/certs/java/cacerts", "/etc/pki/java/cacerts"];

/// Whether the container's own annotation asks for the trust store.
pub fn requested(bundle: &Path) -> bool {
    super::read_spec(bundle)
        .map(|s| {
            s.annotations
                .get(TRUST_ANNOTATION)
                .is_some_and(|v| v == "true")
        })
        .unwrap_or(false)
}

/// The trust files as the daemon wrote them.
struct Files {
    ca: PathBuf,
    bundle: PathBuf,
    jks: PathBuf,
}

fn files_from_daemon(control: Option<&Path>) -> Result<Files> {
    let sock = crate::control::socket_path(control);
    let body = crate::control::call_blocking(&sock, hyper::Method::GET, "/v1/trust", None)
        .map_err(|e| {
            anyhow!(
                "the agent's trust files (daemon on {}): {e}",
                sock.display()
            )
        })?;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let path = |k: &str| -> Result<PathBuf> {
        v[k].as_str()
            .map(PathBuf::from)
            .ok_or_else(|| anyhow!("the daemon's /v1/trust has no {k}"))
    };
    Ok(Files {
        ca: path("ca")?,
        bundle: path("bundle")?,
        jks: path("jks")?,
    })
}

/// Adds the mounts and variables to `<bundle>/config.json` (once: a second call changes
/// nothing).
pub fn mount_into(bundle: &Path, control: Option<&Path>) -> Result<()> {
    let files = files_from_daemon(control)?;
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut spec: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}: not valid JSON: {e}", path.display()))?;
    let rootfs = rootfs_of(bundle, &spec)?;
    let mut mounts = vec![
        (format!("{IN_CONTAINER}/ca.pem"), files.ca.clone()),
        (format!("{IN_CONTAINER}/bundle.pem"), files.bundle.clone()),
        (format!("{IN_CONTAINER}/truststore.jks"), files.jks.clone()),
    ];
    for (i, p) in BUNDLE_PATHS.iter().enumerate() {
        if i == 0 || in_image(&rootfs, p) {
            mounts.push((p.to_string(), files.bundle.clone()));
        }
    }
    for p in JAVA_PATHS.iter().filter(|p| in_image(&rootfs, p)) {
        mounts.push((p.to_string(), files.jks.clone()));
    }
    add_mounts(&mut spec, &mounts, &path)?;
    add_env(&mut spec, &path)?;
    let tmp = bundle.join(".config.json.egress-agent-trust");
    std::fs::write(&tmp, serde_json::to_vec(&spec)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))
}

fn rootfs_of(bundle: &Path, spec: &serde_json::Value) -> Result<PathBuf> {
    let root = spec["root"]["path"]
        .as_str()
        .ok_or_else(|| anyhow!("config.json has no root.path"))?;
    Ok(bundle.join(root))
}

/// Whether the image has a regular file (or a link to one) at `p`.
fn in_image(rootfs: &Path, p: &str) -> bool {
    let inside = rootfs.join(p.trim_start_matches('/'));
    std::fs::symlink_metadata(&inside).is_ok()
}

fn add_mounts(
    spec: &mut serde_json::Value,
    mounts: &[(String, PathBuf)],
    path: &Path,
) -> Result<()> {
    let Some(obj) = spec.as_object_mut() else {
        bail!("{}: not a JSON object", path.display());
    };
    let list = obj
        .entry("mounts")
        .or_insert_with(|| serde_json::json!([]))
        .as_array_mut()
        .ok_or_else(|| anyhow!("{}: `mounts` is not a list", path.display()))?;
    for (dest, src) in mounts {
        if list.iter().any(|m| m["destination"] == dest.as_str()) {
            continue;
        }
        list.push(serde_json::json!({
            "destination": dest,
            "type": "bind",
            "source": src,
            "options": ["rbind", "ro", "nosuid", "nodev", "noexec"],
        }));
    }
    Ok(())
}

/// The variables `Trust::env` names, pointing at the container's copies, plus the JVM's.
fn add_env(spec: &mut serde_json::Value, path: &Path) -> Result<()> {
    let names = crate::inspect::ca::Trust {
        ca: format!("{IN_CONTAINER}/ca.pem").into(),
        bundle: format!("{IN_CONTAINER}/bundle.pem").into(),
        jks: format!("{IN_CONTAINER}/truststore.jks").into(),
    };
    if spec["process"]["env"].is_null() {
        spec["process"]["env"] = serde_json::json!([]);
    }
    let env = spec["process"]["env"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("{}: process.env is not a list", path.display()))?;
    let mut vars: Vec<(String, String)> = names
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    vars.push(("JAVA_TOOL_OPTIONS".into(), names.java_options()));
    for (k, v) in vars {
        let prefix = format!("{k}=");
        if env
            .iter()
            .any(|e| e.as_str().is_some_and(|s| s.starts_with(&prefix)))
        {
            continue; // the image's own setting wins
        }
        env.push(serde_json::json!(format!("{k}={v}")));
    }
    Ok(())
}
