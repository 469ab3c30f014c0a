//! The boundary around `egress-agent exec` (DESIGN.md §12, THREATS.md F, issue 11): the
//! command runs as the invoking user with no_new_privs, in its own cgroup, mount and pid
//! namespaces, so that it cannot leave the enforced cgroup, see or act on processes
//! outside, or read what the agent holds (CA key, injected secrets, control socket, pins).
//!
//! - [`user`]: who the command runs as, and root's capability set;
//! - [`env`]: the scrubbed environment;
//! - [`spec`]: what the agent hands the init; [`launch`]: how it starts it;
//! - [`init`]: the init and pid 1; [`plan`] / `mounts`: the mount namespace;
//! - [`trust`]: `--trust-ca` through the system store;
//! - [`attach_check`]: the same guarantees, checked on a container `attach` adopts.

pub mod attach_check;
pub mod env;
pub mod init;
pub mod launch;
pub mod mountinfo;
mod mounts;
pub mod plan;
pub mod spec;
pub mod trust;
pub mod user;

use std::{
    ffi::OsString,
    io,
    path::{Path, PathBuf},
};

use crate::{inspect::ca::Trust, policy::Policy};

/// The hidden subcommand the agent re-executes itself as (never in `--help`: `main`
/// dispatches it before clap).
pub const INIT_ARG: &str = "__sandbox-init";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    User(#[from] user::UserError),
    #[error("cannot isolate the command: bad sandbox spec: {0}")]
    Spec(String),
    #[error(
        "cannot isolate the command ({what}): {source}{}; it was not started",
        hint(source)
    )]
    Io { what: String, source: io::Error },
    #[error(
        "cannot isolate the command ({stage}): {source}{}; it was not started",
        hint(source)
    )]
    Namespace { stage: String, source: io::Error },
    /// A failure the init reported (already one line).
    #[error("{0}")]
    Reported(String),
}

impl SandboxError {
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        SandboxError::Io {
            what: what.into(),
            source,
        }
    }
}

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOSPC) => " (a namespace limit is reached: sysctl user.max_cgroup_namespaces, user.max_mnt_namespaces, user.max_pid_namespaces)",
        Some(libc::EPERM) => " (refused: a seccomp filter, a security module or a missing capability)",
        _ => "",
    }
}

/// Sockets of daemons that start processes on request, outside the sandbox's cgroup
/// (THREATS.md F "asking a host daemon"): systemd (system and the user's), D-Bus, the
/// container runtimes. Hidden where they exist.
pub fn daemon_sockets(uid: u32) -> Vec<PathBuf> {
    let user = PathBuf::from(format!("/run/user/{uid}"));
    let mut v: Vec<PathBuf> = [
        "/run/systemd/private",
        "/run/dbus/system_bus_socket",
        "/run/docker.sock",
        "/run/containerd/containerd.sock",
        "/run/podman/podman.sock",
        "/run/crio/crio.sock",
        "/run/buildkit/buildkitd.sock",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    for rel in [
        "bus",
        "systemd/private",
        "podman/podman.sock",
        "docker.sock",
    ] {
        v.push(user.join(rel));
    }
    v
}

/// What `exec` asks for.
pub struct Request<'a> {
    pub argv: &'a [String],
    pub policy: &'a Policy,
    pub user: &'a user::Target,
    pub unset_env: &'a [String],
    /// `--trust-ca`: the files `write_trust` wrote and the CA certificate (DER).
    pub trust: Option<(&'a Trust, &'a [u8])>,
    pub state_dir: &'a Path,
    pub control_socket: &'a Path,
}

/// The spec for the init: environment scrubbed, user decided, paths to hide listed.
pub fn build_spec(req: &Request<'_>) -> Result<spec::Spec, SandboxError> {
    let sources = env::inject_sources(req.policy);
    let scrub = env::scrubbed_names(&sources, req.unset_env);
    let base: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let mut set = req.user.env_overrides();
    if let Some((t, _)) = req.trust {
        let java = base
            .iter()
            .find(|(k, _)| k == "JAVA_TOOL_OPTIONS" && !scrub.contains(k))
            .map(|(_, v)| v.as_os_str());
        set.extend(trust::command_env(t, &trust::view_paths(t), java));
    }
    let env = env::command_env(base, &scrub, set);
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_os_str());
    let trust = req
        .trust
        .map(|(t, der)| trust::spec(t, der, get("JAVA_HOME"), get("HOME")));
    // The state directory in use is hidden even before it exists when this agent may
    // create the CA in it while the command runs (created here, as the agent would). The
    // default one, where a daemon keeps its CA key, is hidden when it exists.
    if req.trust.is_some() || !req.policy.inspect_hosts().is_empty() {
        std::fs::create_dir_all(req.state_dir)
            .map_err(|e| SandboxError::io(format!("creating {}", req.state_dir.display()), e))?;
    }
    let mut state_dirs = vec![req.state_dir.to_path_buf()];
    let default_state = Path::new(crate::inspect::ca::DEFAULT_STATE_DIR);
    if req.state_dir != default_state {
        state_dirs.push(default_state.to_path_buf());
    }
    let mut files: Vec<OsString> = sources
        .iter()
        .filter_map(|s| match s {
            crate::policy::SecretSource::File(p) => Some(p.clone().into_os_string()),
            crate::policy::SecretSource::Env(_) => None,
        })
        .collect();
    let default_dir = Path::new(crate::control::DEFAULT_SOCKET)
        .parent()
        .unwrap_or(Path::new("/run/egress-agent"));
    // The default socket's directory also holds the serve locks: hidden whole.
    let dirs = vec![default_dir.as_os_str().to_os_string()];
    if req.control_socket.parent() != Some(default_dir) {
        files.push(req.control_socket.as_os_str().to_os_string());
    }
    files.extend(
        daemon_sockets(req.user.creds.uid)
            .into_iter()
            .map(PathBuf::into_os_string),
    );
    let cwd = std::env::current_dir().map_err(|e| SandboxError::io("the working directory", e))?;
    Ok(spec::Spec {
        argv: req.argv.to_vec(),
        env,
        cwd: cwd.into_os_string(),
        creds: req.user.creds.clone(),
        hide: spec::Hide {
            state_dirs: state_dirs
                .into_iter()
                .map(PathBuf::into_os_string)
                .collect(),
            dirs,
            files,
        },
        trust,
        private_dev: req.user.is_root(),
    })
}
