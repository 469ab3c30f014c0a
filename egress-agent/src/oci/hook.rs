//! `egress-agent oci-hook [--profile NAME]`: the OCI `createRuntime` hook. It reads the OCI
//! state on stdin and the bundle's `config.json`, picks the profile (`--profile`, else the
//! `egress-agent.io/profile` annotation; none: not ours, exit 0), and asks the daemon to
//! adopt the container — or, for a Kubernetes pod's sandbox, the pod's cgroup. It returns
//! only once the container is enforced; any failure is one line on stderr and exit 2, and
//! the runtime does not start the container.
//!
//! Stage guarantees (runtime-spec `config.md`): at `createRuntime` the namespaces exist and
//! the container's init process is waiting; the spec does not promise the cgroup, so the
//! daemon checks that the process already sits in `linux.cgroupsPath` (runc and crun place it
//! first). A new network namespace may not be configured yet: the agent brings its `lo` up
//! for its own listeners, which is all it needs.

use std::{io::Read, path::Path, process::ExitCode, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;

use super::{pod_role, read_spec, PodRole, State, PROFILE_ANNOTATION, TRUST_ANNOTATION};
use crate::daemon::AdoptRequest;

/// Largest OCI state read from stdin (it is a few hundred bytes in practice).
const MAX_STATE: u64 = 1 << 20;
/// How long the daemon may take to adopt a container before the hook gives up (and the
/// container does not start).
const ADOPT_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Args, Debug, Clone)]
pub struct HookArgs {
    /// The profile, overriding the container's `egress-agent.io/profile` annotation.
    #[arg(long)]
    pub profile: Option<String>,
    /// The runtime wrapper mounted the agent's trust bundle into the container.
    #[arg(long)]
    pub trust_ca: bool,
}

pub fn run(args: &HookArgs, sock: &Path) -> Result<ExitCode> {
    let state = read_state()?;
    let Some(request) = adopt_request(&state, args)? else {
        return Ok(ExitCode::SUCCESS);
    };
    if !crate::control::daemon_running(sock) {
        bail!(
            "no egress-agent daemon answers on {}: container {} is not started (it would run unenforced)",
            sock.display(),
            state.id
        );
    }
    let body = serde_json::to_value(&request)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = rt.block_on(async {
        tokio::time::timeout(
            ADOPT_TIMEOUT,
            crate::control::call(sock, hyper::Method::POST, "/v1/adopt", Some(body)),
        )
        .await
    });
    match answer {
        Ok(Ok(_)) => Ok(ExitCode::SUCCESS),
        Ok(Err(e)) => Err(anyhow!(
            "container {}: the daemon refused to enforce it, so it is not started: {e}",
            state.id
        )),
        Err(_) => Err(anyhow!(
            "container {}: the daemon did not enforce it within {ADOPT_TIMEOUT:?}, so it is not started",
            state.id
        )),
    }
}

fn read_state() -> Result<State> {
    let mut text = String::new();
    std::io::stdin()
        .take(MAX_STATE)
        .read_to_string(&mut text)
        .context("reading the OCI state on stdin")?;
    serde_json::from_str(&text).map_err(|e| anyhow!("malformed OCI state on stdin: {e}"))
}

/// What to ask the daemon for this container; `None` when no profile selects it.
fn adopt_request(state: &State, args: &HookArgs) -> Result<Option<AdoptRequest>> {
    if state.status != "creating" && state.status != "created" {
        // Another stage (e.g. poststop) calling the same hook: nothing to enforce.
        return Ok(None);
    }
    let spec = read_spec(&state.bundle).map_err(|e| anyhow!("container {}: {e}", state.id))?;
    let annotation = |k: &str| {
        state
            .annotations
            .get(k)
            .or_else(|| spec.annotations.get(k))
            .cloned()
    };
    let Some(profile) = args
        .profile
        .clone()
        .or_else(|| annotation(PROFILE_ANNOTATION))
    else {
        return Ok(None);
    };
    let Some(pid) = state.pid.filter(|p| *p > 0) else {
        bail!(
            "container {}: the OCI state has no pid (status {:?}): nothing to enforce, so it is not started",
            state.id,
            state.status
        );
    };
    let mut all = spec.annotations.clone();
    all.extend(state.annotations.clone());
    let (pod, pod_uid) = match pod_role(&all) {
        PodRole::Sandbox { uid } => (true, uid),
        PodRole::Container => (true, None),
        PodRole::None => (false, None),
    };
    Ok(Some(AdoptRequest {
        pid,
        profile,
        cgroups_path: spec.cgroups_path,
        pod,
        pod_uid,
        trusts_ca: args.trust_ca || annotation(TRUST_ANNOTATION).is_some_and(|v| v == "true"),
        container: Some(state.id.clone()),
        pod_name: super::pod_name(&all),
    }))
}
