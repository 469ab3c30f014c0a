//! `egress-agent runtime [--profile NAME] [--runtime PATH] -- ARGS`: an OCI runtime that adds
//! the `createRuntime` hook ([`super::hook`]) to the bundle of every `create` (and `run`),
//! then executes the real runtime (runc by default) with the same arguments — stdio, exit
//! code and every other verb untouched. Invoked as `egress-agent-runc` (a symlink: what a
//! containerd runtime handler's `BinaryName` or a Docker `--add-runtime` points at) it is the
//! same as `egress-agent runtime -- ARGS`; as `egress-agent-runc.PROFILE`, with `--profile
//! PROFILE`.

use std::{
    ffi::{OsStr, OsString},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;

/// The name this binary answers to as a runtime wrapper.
pub const WRAPPER_NAME: &str = "egress-agent-runc";

#[derive(Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// The profile of every container this runtime creates (else each container's
    /// `egress-agent.io/profile` annotation).
    #[arg(long)]
    pub profile: Option<String>,
    /// The real OCI runtime (default: `runc` on PATH).
    #[arg(long, env = "EGRESS_RUNTIME")]
    pub runtime: Option<PathBuf>,
    /// Put the agent's CA in every container's system trust store (the bundle bind-mounted
    /// read-only over the distribution paths, the Java truststore, the variables tools with
    /// their own store read), as `exec --trust-ca` does; also per container with the
    /// `egress-agent.io/trust-ca=true` annotation. Certificates only, never the key.
    #[arg(long)]
    pub trust_ca: bool,
    /// The runtime's own arguments, as its caller gave them.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<OsString>,
}

/// `argv` rewritten when the binary was invoked under the wrapper's name, else `None`.
pub fn as_wrapper(argv: &[OsString]) -> Option<Vec<OsString>> {
    let name = Path::new(argv.first()?).file_name()?.to_str()?;
    let profile = match name.strip_prefix(WRAPPER_NAME)? {
        "" => None,
        rest => Some(rest.strip_prefix('.')?.to_string()),
    };
    let mut out: Vec<OsString> = vec!["egress-agent".into(), "runtime".into()];
    if let Some(p) = profile {
        out.extend(["--profile".into(), p.into()]);
    }
    out.push("--".into());
    out.extend(argv[1..].iter().cloned());
    Some(out)
}

/// Adds the hook on `create`/`run`, then becomes the real runtime (returns only on error).
pub fn run(args: &RuntimeArgs, control: Option<&Path>) -> Result<ExitCode> {
    let runtime = match &args.runtime {
        Some(r) => r.clone(),
        None => find_runtime("runc")?,
    };
    if let Some(bundle) = bundle_of_create(&args.args) {
        let trust = args.trust_ca || super::trust::requested(&bundle);
        if trust {
            super::trust::mount_into(&bundle, control)
                .with_context(|| format!("runtime wrapper, bundle {}", bundle.display()))?;
        }
        add_hook(&bundle, args.profile.as_deref(), trust, control)
            .with_context(|| format!("runtime wrapper, bundle {}", bundle.display()))?;
    }
    let err = std::process::Command::new(&runtime)
        .arg0(runtime.file_name().unwrap_or(OsStr::new("runc")))
        .args(&args.args)
        .exec();
    Err(anyhow!("executing {}: {err}", runtime.display()))
}

/// runc's global options that take a value (`runc --help`).
const GLOBAL_WITH_VALUE: &[&str] = &["--root", "--log", "--log-format", "--criu", "--rootless"];

/// The bundle directory of a `create` or `run`, `None` for every other verb.
pub fn bundle_of_create(args: &[OsString]) -> Option<PathBuf> {
    let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap_or("")).collect();
    let mut i = 0;
    while i < args.len() && args[i].starts_with('-') {
        if GLOBAL_WITH_VALUE.contains(&args[i]) {
            i += 1;
        }
        i += 1;
    }
    if !matches!(args.get(i), Some(&"create") | Some(&"run")) {
        return None;
    }
    let rest = &args[i + 1..];
    for (j, a) in rest.iter().enumerate() {
        if let Some(v) = a
            .strip_prefix("--bundle=")
            .or_else(|| a.strip_prefix("-b="))
        {
            return Some(PathBuf::from(v));
        }
        if *a == "--bundle" || *a == "-b" {
            return rest.get(j + 1).map(PathBuf::from);
        }
    }
    std::env::current_dir().ok()
}

/// Appends `egress-agent oci-hook` to the bundle's createRuntime hooks (once), rewriting
/// `config.json` atomically.
pub fn add_hook(
    bundle: &Path,
    profile: Option<&str>,
    trust_ca: bool,
    control: Option<&Path>,
) -> Result<()> {
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut spec: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}: not valid JSON: {e}", path.display()))?;
    let hook = hook_entry(profile, trust_ca, control)?;
    let Some(obj) = spec.as_object_mut() else {
        bail!("{}: not a JSON object", path.display());
    };
    let hooks = obj
        .entry("hooks")
        .or_insert_with(|| serde_json::json!({}))
        .as_object_mut()
        .ok_or_else(|| anyhow!("{}: `hooks` is not an object", path.display()))?;
    let list = hooks
        .entry("createRuntime")
        .or_insert_with(|| serde_json::json!([]))
        .as_array_mut()
        .ok_or_else(|| anyhow!("{}: `hooks.createRuntime` is not a list", path.display()))?;
    if !list.contains(&hook) {
        list.push(hook);
    }
    let tmp = bundle.join(".config.json.egress-agent");
    std::fs::write(&tmp, serde_json::to_vec(&spec)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))
}

/// The hook as the runtime-spec describes one: an absolute path and its argv.
fn hook_entry(
    profile: Option<&str>,
    trust_ca: bool,
    control: Option<&Path>,
) -> Result<serde_json::Value> {
    let exe = std::env::current_exe().context("finding the egress-agent binary")?;
    let mut argv = vec!["egress-agent".to_string()];
    if let Some(c) = control {
        argv.extend(["--control".into(), c.display().to_string()]);
    }
    argv.push("oci-hook".into());
    if let Some(p) = profile {
        argv.extend(["--profile".into(), p.into()]);
    }
    if trust_ca {
        argv.push("--trust-ca".into());
    }
    Ok(serde_json::json!({"path": exe, "args": argv}))
}

/// `name` on PATH, never this binary itself (a wrapper installed as `runc` would loop).
fn find_runtime(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe().and_then(std::fs::canonicalize).ok();
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/usr/sbin:/bin:/sbin".into());
    for dir in std::env::split_paths(&path) {
        let cand = dir.join(name);
        if cand.is_file() && std::fs::canonicalize(&cand).ok() != me {
            return Ok(cand);
        }
    }
    bail!("no {name} on PATH: give --runtime PATH (or EGRESS_RUNTIME)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn finds_the_bundle_of_create_only() {
        let a = os(&[
            "--root",
            "/run/r",
            "--log",
            "/l.json",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
            "id1",
        ]);
        assert_eq!(bundle_of_create(&a), Some(PathBuf::from("/b")));
        assert_eq!(
            bundle_of_create(&os(&["--systemd-cgroup", "run", "-b=/c", "x"])),
            Some(PathBuf::from("/c"))
        );
        assert_eq!(
            bundle_of_create(&os(&["--root", "/r", "start", "id1"])),
            None
        );
        assert_eq!(bundle_of_create(&os(&["state", "create"])), None);
        assert_eq!(bundle_of_create(&os(&["--version"])), None);
    }

    #[test]
    fn the_wrapper_name_carries_the_profile() {
        let a = os(&[
            "/usr/local/bin/egress-agent-runc.ci",
            "--root",
            "/r",
            "create",
            "x",
        ]);
        assert_eq!(
            as_wrapper(&a).unwrap(),
            os(&[
                "egress-agent",
                "runtime",
                "--profile",
                "ci",
                "--",
                "--root",
                "/r",
                "create",
                "x"
            ])
        );
        assert_eq!(
            as_wrapper(&os(&["egress-agent-runc", "start", "x"])).unwrap(),
            os(&["egress-agent", "runtime", "--", "start", "x"])
        );
        assert!(as_wrapper(&os(&["egress-agent", "status"])).is_none());
        assert!(as_wrapper(&os(&["egress-agent-runcx"])).is_none());
    }

    #[test]
    fn adds_the_hook_once_and_keeps_the_rest() {
        let dir = std::env::temp_dir().join(format!("egress-wrapper-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = r#"{"ociVersion":"1.0.2","process":{"args":["sh"]},"hooks":{"prestart":[{"path":"/x"}]}}"#;
        std::fs::write(dir.join("config.json"), spec).unwrap();
        add_hook(&dir, Some("ci"), false, None).unwrap();
        add_hook(&dir, Some("ci"), false, None).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(v["hooks"]["prestart"][0]["path"], "/x");
        assert_eq!(v["process"]["args"][0], "sh");
        let cr = v["hooks"]["createRuntime"].as_array().unwrap();
        assert_eq!(cr.len(), 1);
        assert_eq!(
            cr[0]["args"],
            serde_json::json!(["egress-agent", "oci-hook", "--profile", "ci"])
        );
        std::fs::write(dir.join("config.json"), "[1]").unwrap();
        assert!(add_hook(&dir, None, false, None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
