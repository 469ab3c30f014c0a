//! Command: `egress-agent exec`: run a command in a fresh cgroup (and, with --netns, a
//! fresh network namespace with only `lo`) under enforcement, pass its exit
//! status through, and leave nothing behind: cgroup, pins and listeners are
//! removed on exit, on Ctrl-C and on SIGTERM.

use std::{os::fd::AsRawFd, path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::Args;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    agent::Running, attachment::Shared, audit::Audit, cgroup::Cgroup, netns::Netns, policy::Policy,
};

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Policy file (TOML).
    #[arg(long, conflicts_with = "allow")]
    pub policy: Option<PathBuf>,
    /// Allow a host pattern (repeatable), instead of a policy file.
    #[arg(long)]
    pub allow: Vec<String>,
    /// Profile of the policy to apply.
    #[arg(long, default_value = "default")]
    pub profile: String,
    /// Also give CMD a fresh network namespace with no route out (only the agent).
    #[arg(long)]
    pub netns: bool,
    /// Append decisions to this JSONL file.
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// Make CMD trust the inspection CA: write the trust files (never the key) under the state
    /// directory and set SSL_CERT_FILE, REQUESTS_CA_BUNDLE, NODE_EXTRA_CA_CERTS… for CMD.
    #[arg(long)]
    pub trust_ca: bool,
    /// Do not print a line on stderr for each denial while CMD runs.
    #[arg(long)]
    pub quiet: bool,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

pub async fn run(args: ExecArgs) -> Result<ExitCode> {
    let policy = match &args.policy {
        Some(p) => Policy::load(p)?,
        None if !args.allow.is_empty() => {
            Policy::from_allow_list(&args.allow).map_err(|e| anyhow::anyhow!("--allow: {e}"))?
        }
        None => anyhow::bail!(
            "give --policy FILE or at least one --allow PATTERN (nothing is allowed otherwise)"
        ),
    };
    let audit = Audit::open(args.audit_log.as_deref())?;
    let shared = Shared::new(policy, audit)?;
    let _denials = crate::notify::to_stderr(&shared.audit, args.quiet);

    let cg = Cgroup::create("egress-agent.exec", &format!("{}", std::process::id()))?;
    let result = run_in(&args, shared, &cg).await;
    // Kill stragglers first (nothing may run unenforced), then the cgroup goes;
    // the pins go with `Running::detach` inside run_in or here on error.
    let removed = cg.kill_and_remove();
    let _ = crate::bpf::detach(&cg);
    removed.context("removing the exec cgroup")?;
    result
}

async fn run_in(args: &ExecArgs, shared: std::sync::Arc<Shared>, cg: &Cgroup) -> Result<ExitCode> {
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

    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cg.path.join("cgroup.procs"))
        .context("opening cgroup.procs")?;
    let procs_fd = procs.as_raw_fd();
    let netns_fd = child_netns.as_ref().map(|f| f.as_raw_fd());

    let mut cmd = tokio::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    running.attachment.set_trusts_ca(args.trust_ca);
    if args.trust_ca {
        // Certificates only: the CA key stays in the state directory's `ca/` (mode 0600).
        let policy = running.attachment.shared.policy.load_full();
        let inspector = crate::inspect::Inspector::get(&policy)
            .map_err(|e| anyhow::anyhow!("--trust-ca: {e}"))?;
        let trust = inspector
            .ca
            .write_trust(&crate::inspect::ca::state_dir())
            .context("--trust-ca")?;
        for (k, v) in trust.env() {
            cmd.env(k, v);
        }
        let java = match std::env::var("JAVA_TOOL_OPTIONS") {
            Ok(prev) if !prev.is_empty() => format!("{prev} {}", trust.java_options()),
            _ => trust.java_options(),
        };
        cmd.env("JAVA_TOOL_OPTIONS", java);
    }
    // SAFETY: the closure only makes async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(move || {
            crate::sys::join_cgroup_raw(procs_fd)?;
            if let Some(fd) = netns_fd {
                crate::sys::setns_net_raw(fd)?;
            }
            // No CAP_NET_RAW (AF_PACKET bypasses every cgroup hook), no way to
            // detach programs or leave the namespace.
            crate::sys::drop_net_caps()
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", args.command[0]))?;
    drop(procs);
    let pid = child.id().unwrap_or(0);

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let status = loop {
        tokio::select! {
            s = child.wait() => break s?,
            _ = term.recv() => { let _ = crate::sys::kill(pid, libc::SIGTERM); }
            _ = int.recv() => { let _ = crate::sys::kill(pid, libc::SIGINT); }
        }
    };
    // Anything the command left running in its cgroup dies before the
    // enforcement is removed: nothing from the sandbox ever runs unenforced.
    cg.kill_and_remove()?;
    running.detach()?;
    Ok(exit_code(status))
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(c.clamp(0, 255) as u8),
        (None, Some(sig)) => ExitCode::from((128 + sig).clamp(0, 255) as u8),
        _ => ExitCode::from(1),
    }
}
