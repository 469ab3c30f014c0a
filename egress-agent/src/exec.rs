//! `egress-agent exec`: run a command in a fresh cgroup (and, with --netns, a fresh network
//! namespace with only `lo`) under enforcement, inside the boundary of `crate::sandbox`
//! (its own user, cgroup, mount and pid namespaces: DESIGN.md §12), pass its exit status
//! through, and leave nothing behind: cgroup, pins, listeners and every process of the
//! command are removed on exit, on Ctrl-C, SIGTERM and SIGHUP.

use std::{os::fd::AsRawFd, process::ExitCode};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    agent::{Running, Shared},
    audit::Audit,
    cgroup::Cgroup,
    cli::ExecArgs,
    netns::Netns,
    policy::Policy,
    sandbox::{self, user::Target},
};

pub async fn run(args: ExecArgs) -> Result<ExitCode> {
    let policy = match &args.policy {
        Some(p) => crate::cli::load_policy(p)?,
        None if !args.allow.is_empty() => {
            Policy::from_allow_list(&args.allow).map_err(|e| anyhow::anyhow!("--allow: {e}"))?
        }
        None => anyhow::bail!(
            "give --policy FILE or at least one --allow PATTERN (nothing is allowed otherwise)"
        ),
    };
    // Decided before anything exists: an unknown user changes nothing.
    let target = sandbox::user::resolve(
        args.user.as_deref(),
        std::env::var("SUDO_UID").ok().as_deref(),
        std::env::var("SUDO_GID").ok().as_deref(),
    )?;
    for line in target.notice().into_iter().chain(target.warnings()) {
        eprintln!("{line}");
    }
    let audit = Audit::open(args.audit_log.as_deref())?;
    let shared = Shared::new(policy, audit)?;

    let cg = Cgroup::create("egress-agent.exec", &format!("{}", std::process::id()))?;
    let result = run_in(&args, &target, shared, &cg).await;
    // Kill stragglers first (nothing may run unenforced), then the cgroup goes;
    // the pins go with `Running::detach` inside run_in or here on error.
    let removed = cg.kill_and_remove();
    let _ = crate::bpf::detach(&cg);
    removed.context("removing the exec cgroup")?;
    result
}

async fn run_in(
    args: &ExecArgs,
    target: &Target,
    shared: std::sync::Arc<Shared>,
    cg: &Cgroup,
) -> Result<ExitCode> {
    let netns = if args.netns {
        Netns::create()?
    } else {
        Netns::current()?
    };
    let child_netns = args
        .netns
        .then(|| netns.fd().try_clone_to_owned())
        .transpose()?;
    let running = Running::start(shared, cg.clone(), netns, args.profile.clone())?;
    let policy = running.attachment.shared.policy.load_full();

    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cg.path.join("cgroup.procs"))
        .context("opening cgroup.procs")?;
    let state_dir = crate::tls::ca::state_dir();
    let trust = if args.trust_ca {
        // Certificates only: the CA key stays in the state directory's `ca/` (mode 0600),
        // which the command's mount namespace hides.
        let inspector =
            crate::tls::Inspector::get(&policy).map_err(|e| anyhow::anyhow!("--trust-ca: {e}"))?;
        let written = inspector.ca.write_trust(&state_dir).context("--trust-ca")?;
        Some((written, inspector.ca.cert_der.to_vec()))
    } else {
        None
    };
    // TODO(lead): take cli.control here once `Cmd::Exec` passes it; EGRESS_CONTROL is what
    // clap reads into it.
    let control = crate::control::socket_path(
        std::env::var_os("EGRESS_CONTROL")
            .map(std::path::PathBuf::from)
            .as_deref(),
    );
    let spec = sandbox::build_spec(&sandbox::Request {
        argv: &args.command,
        policy: &policy,
        user: target,
        unset_env: &args.unset_env,
        trust: trust.as_ref().map(|(t, der)| (t, der.as_slice())),
        state_dir: &state_dir,
        control_socket: &control,
    })?;
    let mut sb = sandbox::launch::launch(
        &spec,
        procs.as_raw_fd(),
        child_netns.as_ref().map(|f| f.as_raw_fd()),
    )?;
    drop(procs);
    let pid = sb.pid().unwrap_or(0);

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    // The init forwards what it receives to the command.
    let status = loop {
        tokio::select! {
            s = sb.wait() => break s?,
            _ = term.recv() => { let _ = crate::sys::kill(pid, libc::SIGTERM); }
            _ = int.recv() => { let _ = crate::sys::kill(pid, libc::SIGINT); }
            _ = hup.recv() => { let _ = crate::sys::kill(pid, libc::SIGHUP); }
        }
    };
    let outcome = sb.outcome(status);
    // Anything the command left running in its cgroup dies before the
    // enforcement is removed: nothing from the sandbox ever runs unenforced.
    cg.kill_and_remove()?;
    running.detach()?;
    Ok(exit_code(outcome?))
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(c.clamp(0, 255) as u8),
        (None, Some(sig)) => ExitCode::from((128 + sig).clamp(0, 255) as u8),
        _ => ExitCode::from(1),
    }
}
