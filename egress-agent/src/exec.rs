//! `egress-agent exec`: run a command in a fresh cgroup (and, with --netns, a fresh network
//! namespace with only `lo`) under enforcement, inside the boundary of `crate::sandbox`
//! (its own user, cgroup, mount and pid namespaces: DESIGN.md §12), pass its exit status
//! through, and leave nothing behind: cgroup, pins, listeners and every process of the
//! command are removed on exit, on Ctrl-C, SIGTERM and SIGHUP.

use std::{os::fd::AsRawFd, path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::Args;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    agent::Running,
    attachment::Shared,
    audit::Audit,
    cgroup::Cgroup,
    netns::Netns,
    policy::Policy,
    sandbox::{self, user::Target},
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
    /// directory, show them in CMD's system store (bundles, hashed directory, Java cacerts,
    /// NSS) and set SSL_CERT_FILE, REQUESTS_CA_BUNDLE, NODE_EXTRA_CA_CERTS… for CMD.
    #[arg(long)]
    pub trust_ca: bool,
    /// Run CMD as USER[:GROUP] (names or numbers). Default: the invoking user under sudo
    /// (SUDO_UID/SUDO_GID), else root with a reduced capability set; `--user root` keeps root.
    #[arg(long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Remove VAR from CMD's environment (repeatable); the variables `inject` rules read are
    /// always removed.
    #[arg(long = "unset-env", value_name = "VAR")]
    pub unset_env: Vec<String>,
    /// Do not print a line on stderr for each denial while CMD runs.
    #[arg(long)]
    pub quiet: bool,
    /// Ask mode for the profile: what the policy denies is held while you decide, at the
    /// prompt when stdin is a terminal, else with the `approve`/`deny` commands printed on
    /// stderr (against a socket this exec serves).
    #[arg(long)]
    pub ask: bool,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

mod ask;

pub async fn run(args: ExecArgs, control: Option<&std::path::Path>) -> Result<ExitCode> {
    let policy = match &args.policy {
        Some(p) => Policy::load(p)?,
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
    let policy = if args.ask {
        policy.asking(&args.profile)
    } else {
        policy
    };
    let audit = Audit::open(args.audit_log.as_deref())?;
    let shared = Shared::new(policy, audit)?;
    let _denials = crate::notify::to_stderr(&shared.audit, args.quiet);
    let _asking = if args.ask {
        Some(ask::start(std::sync::Arc::new(
            crate::control::pending::StandaloneFile {
                shared: shared.clone(),
                path: args.policy.clone(),
                profile: args.profile.clone(),
                keep_asking: true,
            },
        ))?)
    } else {
        None
    };

    let cg = Cgroup::create("egress-agent.exec", &format!("{}", std::process::id()))?;
    let audit = shared.audit.clone();
    let result = run_in(&args, &target, shared, &cg, control).await;
    audit.flush();
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
    control: Option<&std::path::Path>,
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
    let state_dir = crate::inspect::ca::state_dir();
    running.attachment.set_trusts_ca(args.trust_ca);
    let trust = if args.trust_ca {
        // Certificates only: the CA key stays in the state directory's `ca/` (mode 0600),
        // which the command's mount namespace hides.
        let inspector = crate::inspect::Inspector::get(&policy)
            .map_err(|e| anyhow::anyhow!("--trust-ca: {e}"))?;
        let written = inspector.ca.write_trust(&state_dir).context("--trust-ca")?;
        Some((written, inspector.ca.cert_der.to_vec()))
    } else {
        None
    };
    // The daemon's control socket (masked in the command's mount namespace).
    let control = crate::control::socket_path(control);
    let spec = sandbox::build_spec(&sandbox::Request {
        argv: &args.command,
        policy: &policy,
        user: target,
        unset_env: &args.unset_env,
        trust: trust.as_ref().map(|(t, der)| (t, der.as_slice())),
        state_dir: &state_dir,
        control_socket: &control,
    })?;
    // The handlers exist before the command does: a signal sent once it runs is never lost
    // (nor, inherited ignored, dropped; nor, default, fatal to exec before it can forward).
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut sb = sandbox::launch::launch(
        &spec,
        procs.as_raw_fd(),
        child_netns.as_ref().map(|f| f.as_raw_fd()),
    )?;
    drop(procs);
    let pid = sb.pid().unwrap_or(0);
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
