//! Command-line front end: argument parsing and the subcommands' top level.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::{
    agent::{Running, Shared},
    audit::Audit,
    cgroup::Cgroup,
    netns::Netns,
    policy::{name::CanonicalName, Decision, Policy, Protocol},
};

#[derive(Parser, Debug)]
#[command(
    name = "egress-agent",
    version,
    about = "Transparent eBPF egress enforcement for Linux containers"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// State directory (the inspection CA, trust files); default $EGRESS_STATE_DIR or
    /// /var/lib/egress-agent.
    #[arg(long, global = true)]
    pub state_dir: Option<PathBuf>,
    /// Issue the inspection CA name-constrained to the policy's inspected names
    /// (also EGRESS_CA_NAME_CONSTRAINTS=1). A change of those names issues a new CA.
    #[arg(long, global = true)]
    pub ca_name_constraints: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run CMD in a fresh cgroup (and with --netns a fresh network namespace) under enforcement.
    Exec(ExecArgs),
    /// Long-running agent for a static list of cgroups/pids (see README: daemon config).
    Daemon {
        #[arg(long)]
        config: PathBuf,
    },
    /// Enforce a cgroup or a process's cgroup, serving in the foreground until SIGTERM.
    Attach(AttachArgs),
    /// Remove the pinned enforcement from a cgroup (the only way enforcement ends).
    Detach(Target),
    /// Show enforced cgroups and kernel denial counters.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Policy file tools.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// The TLS inspection CA: `export` (PEM on stdout), `env` (shell exports for common tools).
    #[command(subcommand)]
    Ca(CaCmd),
    /// Explain the decision for HOST[:PORT].
    Explain {
        host: String,
        #[arg(long, default_value = "default")]
        profile: String,
        #[arg(long)]
        policy: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum CaCmd {
    /// Print the CA certificate (PEM), creating the CA on first use.
    Export {
        /// The policy whose inspected names constrain the CA (with --ca-name-constraints).
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Write the trust files (CA, system roots + CA bundle, JKS truststore) under the state
    /// directory and print `export` lines for SSL_CERT_FILE, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE,
    /// NODE_EXTRA_CA_CERTS, GIT_SSL_CAINFO, PIP_CERT, CARGO_HTTP_CAINFO, AWS_CA_BUNDLE,
    /// DENO_CERT and JAVA_TOOL_OPTIONS.
    Env {
        #[arg(long)]
        policy: Option<PathBuf>,
    },
}

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
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Target {
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    #[arg(long)]
    pub pid: Option<u32>,
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long, default_value = "default")]
    pub profile: String,
    #[arg(long)]
    pub policy: PathBuf,
    /// Network namespace for the listeners (default: that of --pid, or of the
    /// first process in --cgroup).
    #[arg(long)]
    pub netns: Option<PathBuf>,
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Validate a policy file: exit 0, or one line naming file:line:column and key, exit 2.
    Check { file: PathBuf },
    /// Print the effective policy exactly as enforced.
    Show { file: PathBuf },
}

pub fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EGRESS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.compact().init(),
    }
}

/// An error chain as one line.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut s = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
    }
    s.replace('\n', " ")
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    if let Some(d) = &cli.state_dir {
        crate::tls::ca::set_state_dir(d.clone());
    }
    crate::tls::set_name_constraints(cli.ca_name_constraints);
    match cli.cmd {
        Cmd::Ca(CaCmd::Export { policy }) => {
            print!("{}", load_ca(policy.as_deref())?.cert_pem);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ca(CaCmd::Env { policy }) => {
            let ca = load_ca(policy.as_deref())?;
            let trust = ca.write_trust(&crate::tls::ca::state_dir())?;
            print!("{}", trust.shell_exports());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Policy(PolicyCmd::Check { file }) => {
            let p = load_policy(&file)?;
            println!(
                "{}: ok ({} profiles, policy {})",
                file.display(),
                p.profile_names().count(),
                p.version()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Policy(PolicyCmd::Show { file }) => {
            print!("{}", load_policy(&file)?.show());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Explain {
            host,
            profile,
            policy,
        } => explain(&load_policy(&policy)?, &host, &profile),
        Cmd::Detach(t) => {
            let cg = target_cgroup(&t)?;
            crate::bpf::detach(&cg)?;
            println!("detached {} (cgroup id {})", cg.path.display(), cg.id);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { json } => status(json),
        Cmd::Exec(args) => runtime()?.block_on(crate::exec::run(args)),
        Cmd::Attach(args) => runtime()?.block_on(attach_foreground(args)),
        Cmd::Daemon { config } => runtime()?.block_on(crate::daemon::run(&config)),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// The inspection CA of the state directory (created on first use); constrained to the
/// policy's inspected names when asked to.
pub fn load_ca(policy: Option<&Path>) -> Result<crate::tls::ca::Ca> {
    let constraints = match (crate::tls::name_constraints_wanted(), policy) {
        (false, _) => None,
        (true, Some(p)) => {
            let p = load_policy(p)?;
            Some(crate::tls::ca::constraints_for(
                p.inspect_hosts().iter().map(String::as_str),
            ))
        }
        (true, None) => bail!("--ca-name-constraints needs --policy FILE (the inspected names)"),
    };
    Ok(crate::tls::ca::Ca::load_or_create(
        &crate::tls::ca::state_dir(),
        constraints.as_deref(),
    )?)
}

pub fn load_policy(path: &Path) -> Result<Policy> {
    // PolicyError's Display is already the one line "FILE:LINE:COL: key `k`: ...".
    Policy::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

pub fn target_cgroup(t: &Target) -> Result<Cgroup> {
    Ok(match (&t.cgroup, t.pid) {
        (Some(p), _) => Cgroup::open(p)?,
        (None, Some(pid)) => Cgroup::of_pid(pid).with_context(|| format!("process {pid}"))?,
        _ => bail!("give --cgroup PATH or --pid PID"),
    })
}

fn explain(policy: &Policy, host: &str, profile: &str) -> Result<ExitCode> {
    let (h, port) = crate::policy::name::split_host_port(host, 443)
        .map_err(|e| anyhow::anyhow!("{host}: {e}"))?;
    let name = CanonicalName::parse(&h).map_err(|e| anyhow::anyhow!("{h}: {e}"))?;
    for proto in [Protocol::Tls, Protocol::Http, Protocol::Opaque] {
        match policy.decide(profile, &name, port, proto) {
            Decision::Allow { rule, inspect } => println!(
                "{name}:{port} {proto:?}: allow ({}) by {rule}",
                if inspect { "inspect" } else { "passthrough" },
                name = name.as_str()
            ),
            Decision::Deny(d) => println!(
                "{name}:{port} {proto:?}: deny {}: {}{}",
                d.code.as_str(),
                d.reason,
                if d.hint.is_empty() {
                    String::new()
                } else {
                    format!(" (hint: {})", d.hint)
                },
                name = name.as_str()
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn status(json: bool) -> Result<ExitCode> {
    let root = crate::bpf::pin_root()?;
    let mut rows = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().to_string();
            let links = std::fs::read_dir(e.path().join("links"))
                .map(|d| d.count())
                .unwrap_or(0);
            rows.push(
                serde_json::json!({"cgroup_id": id, "pinned_links": links, "pin_dir": e.path()}),
            );
        }
    }
    if json {
        println!("{}", serde_json::json!({ "attachments": rows }));
    } else if rows.is_empty() {
        println!(
            "no cgroup is enforced (nothing pinned under {})",
            root.display()
        );
    } else {
        for r in rows {
            println!(
                "cgroup id {}: {} pinned programs ({})",
                r["cgroup_id"].as_str().unwrap_or("?"),
                r["pinned_links"],
                r["pin_dir"].as_str().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn attach_foreground(args: AttachArgs) -> Result<ExitCode> {
    let policy = load_policy(&args.policy)?;
    let cg = target_cgroup(&args.target)?;
    let netns = match (&args.netns, args.target.pid) {
        (Some(p), _) => Netns::open(p)?,
        (None, Some(pid)) => Netns::of_pid(pid)?,
        (None, None) => {
            let pid = *cg.pids()?.first().context(
                "the cgroup has no processes: pass --netns PATH for its network namespace",
            )?;
            Netns::of_pid(pid)?
        }
    };
    let audit = Audit::open(args.audit_log.as_deref())?;
    let shared = Shared::new(policy, audit)?;
    let running = Running::start(shared, cg, netns, args.profile)?;
    let c = running.config;
    println!(
        "enforcing cgroup id {} (adopted pins: {}) listeners tcp=127.0.0.1:{},[::1]:{} dns=127.0.0.1:{},[::1]:{}",
        running.attachment.cgroup.id, running.enforcement.adopted, c.tcp_port4, c.tcp_port6, c.dns_port4, c.dns_port6
    );
    crate::daemon::wait_for_shutdown(|| {}).await;
    // Leaving the pins in place: enforcement outlives the agent until `detach`.
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn _shared_is_send(_: Arc<Shared>) {}
