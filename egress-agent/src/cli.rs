//! Command line (the top): argument parsing and the subcommands' top level.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::{
    agent::Running, attachment::Shared, audit::Audit, cgroup::Cgroup, netns::Netns, policy::Policy,
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
    /// The daemon's control socket (attach, detach, status, policy show,
    /// explain talk to a running daemon through it; without one they work
    /// standalone).
    #[arg(long, global = true, env = "EGRESS_CONTROL", value_name = "PATH")]
    pub control: Option<PathBuf>,
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
    Exec(crate::exec::ExecArgs),
    /// Long-running agent: the config's cgroups/pids plus whatever `attach`
    /// adds through the control socket (see README: daemon).
    Daemon {
        #[arg(long)]
        config: PathBuf,
        /// Also serve Prometheus metrics on this loopback address (e.g. 127.0.0.1:9464).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Enforce a cgroup or a process's cgroup: through the running daemon, or
    /// (no daemon) serving in the foreground until SIGTERM.
    Attach(AttachArgs),
    /// Remove the enforcement from a cgroup (the only way enforcement ends).
    Detach(Target),
    /// Show enforced cgroups (the daemon's attachments, or the pins).
    Status {
        #[arg(long)]
        json: bool,
        /// Fail (exit 2) unless a daemon answers on the control socket: a
        /// liveness/readiness probe (the Kubernetes DaemonSet uses it).
        #[arg(long)]
        daemon: bool,
    },
    /// Ask the running daemon to reload its policy file (as SIGHUP does).
    Reload,
    /// The running daemon's metrics (Prometheus text).
    Metrics,
    /// The running daemon's recent decisions, newest first (JSON lines).
    Decisions {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        cgroup_id: Option<u64>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the minimal policy that would have allowed what an audit log
    /// (typically a monitor-mode session) recorded.
    Suggest(crate::suggest::SuggestArgs),
    /// Policy file tools.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// The TLS inspection CA: `export` (PEM on stdout), `env` (shell exports for common tools).
    #[command(subcommand)]
    Ca(CaCmd),
    /// OCI `createRuntime` hook: reads the OCI state on stdin and has the daemon enforce the
    /// container before it runs (podman/CRI-O hooks.d; added by `runtime` elsewhere).
    OciHook(crate::oci::hook::HookArgs),
    /// An OCI runtime wrapper (for Docker, containerd): adds the hook on `create`, then runs
    /// the real runtime with the same arguments. Also what `egress-agent-runc` runs.
    Runtime(crate::oci::wrapper::RuntimeArgs),
    /// Gated parents (`[[gate]]` in daemon.toml): `list` the pinned gates, `remove` one.
    #[command(subcommand)]
    Gate(GateCmd),
    /// Ask mode: the decisions waiting for an operator (JSON lines), or with --follow each
    /// one as it comes and goes.
    Pending {
        #[arg(long)]
        follow: bool,
    },
    /// Ask mode: allow a pending decision (default --once).
    Approve(ApproveArgs),
    /// Ask mode: deny a pending decision (the normal denial, its reason naming you).
    Deny { id: u64 },
    /// Explain the decision for HOST[:PORT] (with the daemon's policy unless --policy).
    Explain {
        host: String,
        #[arg(long, default_value = "default")]
        profile: String,
        #[arg(long)]
        policy: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct ApproveArgs {
    pub id: u64,
    /// Only what is held now (a DNS question and the connection that follows it).
    #[arg(long, conflicts_with_all = ["session", "save"])]
    pub once: bool,
    /// The rule, for the rest of this agent's life, for that profile.
    #[arg(long, conflicts_with = "save")]
    pub session: bool,
    /// Write the rule into the policy file (with a comment: who, when), re-validated and
    /// reloaded; if the file would not validate, nothing changes (exit 2).
    #[arg(long)]
    pub save: bool,
}

impl ApproveArgs {
    fn scope(&self) -> &'static str {
        if self.save {
            "save"
        } else if self.session {
            "session"
        } else {
            "once"
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum GateCmd {
    /// The gated parents with pins (they outlive the daemon: fail closed).
    List,
    /// Remove a gate: every cgroup below it gets its network back unless enforced on its
    /// own. Refused while a daemon serves it.
    Remove {
        #[arg(long)]
        cgroup: PathBuf,
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
    /// Policy file: standalone mode only (a daemon enforces its own policy).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Network namespace for the listeners (default: that of --pid, or of the
    /// first process in --cgroup).
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// Audit log: standalone mode only.
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Validate a policy file: exit 0, or one line naming file:line:column and key, exit 2.
    Check { file: PathBuf },
    /// Print the effective policy exactly as enforced (the daemon's without FILE).
    Show { file: Option<PathBuf> },
}

pub fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EGRESS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a person's terminal: a file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.compact().init(),
    }
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let sock = crate::control::socket_path(cli.control.as_deref());
    if let Some(d) = &cli.state_dir {
        crate::inspect::ca::set_state_dir(d.clone());
    }
    crate::inspect::set_name_constraints(cli.ca_name_constraints);
    let daemon = || crate::control::daemon_running(&sock);
    match cli.cmd {
        Cmd::Ca(c) => ca(c),
        Cmd::Policy(c) => policy(c, &sock),
        Cmd::Explain {
            host,
            profile,
            policy,
        } => explain(&host, &profile, policy.as_deref(), &sock),
        Cmd::Detach(t) if daemon() => detach_via_daemon(&sock, &t),
        Cmd::Detach(t) => {
            let cg = target_cgroup(&t)?;
            crate::bpf::detach(&cg)?;
            println!("detached {} (cgroup id {})", cg.path.display(), cg.id);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { json, .. } if daemon() => daemon_status(&sock, json),
        Cmd::Status { daemon: true, .. } => {
            require_daemon(&sock, "status --daemon")?;
            // It answered a moment ago (the arm above) but not any more.
            bail!("the daemon on {} stopped answering", sock.display())
        }
        Cmd::Status { json, .. } => status(json),
        Cmd::Reload => reload(&sock),
        Cmd::Metrics => {
            require_daemon(&sock, "metrics")?;
            print!("{}", get(&sock, "/metrics")?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Decisions { limit, cgroup_id } => decisions(&sock, limit, cgroup_id),
        Cmd::Pending { follow } => pending(&sock, follow),
        Cmd::Approve(a) => decide(&sock, a.id, "approve", Some(a.scope())),
        Cmd::Deny { id } => decide(&sock, id, "deny", None),
        Cmd::Completions { shell } => completions(shell),
        Cmd::OciHook(args) => crate::oci::hook::run(&args, &sock),
        Cmd::Runtime(args) => crate::oci::wrapper::run(&args, cli.control.as_deref()),
        Cmd::Gate(c) => gate(c),
        Cmd::Suggest(args) => {
            print!("{}", crate::suggest::run(&args)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Attach(args) if daemon() => attach_via_daemon(&sock, &args),
        Cmd::Exec(args) => runtime()?.block_on(crate::exec::run(args, cli.control.as_deref())),
        Cmd::Attach(args) => runtime()?.block_on(attach_foreground(args, &sock)),
        Cmd::Daemon { config, metrics } => {
            runtime()?.block_on(crate::service::run(&config, &sock, metrics))
        }
    }
}

fn gate(cmd: GateCmd) -> Result<ExitCode> {
    match cmd {
        GateCmd::List => {
            let ids = crate::bpf::gate::installed()?;
            if ids.is_empty() {
                println!("no gate is pinned");
            }
            for id in ids {
                println!("gated parent cgroup id {id}");
            }
        }
        GateCmd::Remove { cgroup } => {
            let cg = Cgroup::open(&cgroup)?;
            // The daemon holds the gate's lock while it serves it.
            let _lock = crate::bpf::serve_lock_named(&format!("gate-{}", cg.id), &cg.path)?;
            crate::bpf::gate::Gate::remove(&cg)?;
            println!(
                "removed the gate of {} (cgroup id {})",
                cg.path.display(),
                cg.id
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn ca(cmd: CaCmd) -> Result<ExitCode> {
    match cmd {
        CaCmd::Export { policy } => print!("{}", load_ca(policy.as_deref())?.cert_pem),
        CaCmd::Env { policy } => {
            let ca = load_ca(policy.as_deref())?;
            let trust = ca.write_trust(&crate::inspect::ca::state_dir())?;
            print!("{}", trust.shell_exports());
            print!("{}", crate::sandbox::trust::ca_env_notes(&trust));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn policy(cmd: PolicyCmd, sock: &Path) -> Result<ExitCode> {
    match cmd {
        PolicyCmd::Check { file } => {
            let p = Policy::load(&file)?;
            println!(
                "{}: ok ({} profiles, policy {})",
                file.display(),
                p.profile_names().count(),
                p.version()
            );
        }
        PolicyCmd::Show { file: Some(file) } => print!("{}", Policy::load(&file)?.show()),
        PolicyCmd::Show { file: None } => {
            require_daemon(sock, "policy show without FILE")?;
            print!("{}", get(sock, "/v1/policy")?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// With `--policy`, from the file; otherwise the daemon's policy decides.
fn explain(host: &str, profile: &str, policy: Option<&Path>, sock: &Path) -> Result<ExitCode> {
    let text = match policy {
        Some(p) => crate::report::explain_text(&Policy::load(p)?, host, profile)?,
        None => {
            require_daemon(sock, "explain without --policy")?;
            get(
                sock,
                &format!(
                    "/v1/explain?host={}&profile={}",
                    crate::control::percent_encode(host),
                    crate::control::percent_encode(profile)
                ),
            )?
        }
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn detach_via_daemon(sock: &Path, t: &Target) -> Result<ExitCode> {
    let req = crate::daemon::DetachRequest {
        cgroup: t.cgroup.clone(),
        pid: t.pid,
        cgroup_id: None,
    };
    let v = post_json(sock, "/v1/detach", serde_json::to_value(req)?)?;
    println!(
        "detached {} (cgroup id {})",
        v["detached"].as_str().unwrap_or("?"),
        v["cgroup_id"]
    );
    Ok(ExitCode::SUCCESS)
}

fn daemon_status(sock: &Path, json: bool) -> Result<ExitCode> {
    let v: serde_json::Value = serde_json::from_str(&get(sock, "/v1/status")?)?;
    if json {
        println!("{v}");
    } else {
        print_daemon_status(&v);
    }
    Ok(ExitCode::SUCCESS)
}

fn reload(sock: &Path) -> Result<ExitCode> {
    require_daemon(sock, "reload")?;
    let v = post_json(sock, "/v1/reload", serde_json::json!({}))?;
    println!("reloaded: policy {}", v["policy"].as_str().unwrap_or("?"));
    for w in v["warnings"].as_array().into_iter().flatten() {
        eprintln!("egress-agent: warning: {}", w.as_str().unwrap_or(""));
    }
    Ok(ExitCode::SUCCESS)
}

fn decisions(sock: &Path, limit: usize, cgroup_id: Option<u64>) -> Result<ExitCode> {
    require_daemon(sock, "decisions")?;
    let mut uri = format!("/v1/decisions?limit={limit}");
    if let Some(id) = cgroup_id {
        uri.push_str(&format!("&cgroup_id={id}"));
    }
    let v: serde_json::Value = serde_json::from_str(&get(sock, &uri)?)?;
    for r in v.as_array().into_iter().flatten() {
        println!("{r}");
    }
    Ok(ExitCode::SUCCESS)
}

fn pending(sock: &Path, follow: bool) -> Result<ExitCode> {
    require_daemon(sock, "pending")?;
    if !follow {
        let v: serde_json::Value = serde_json::from_str(&get(sock, "/v1/pending")?)?;
        for p in v.as_array().into_iter().flatten() {
            println!("{p}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    use std::io::Write;
    runtime()?.block_on(crate::control::follow(
        sock,
        "/v1/pending?follow=1",
        |line| {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}").and_then(|_| out.flush()).is_ok()
        },
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// `approve ID [--once|--session|--save]` and `deny ID`, as the invoking user.
fn decide(sock: &Path, id: u64, action: &str, scope: Option<&str>) -> Result<ExitCode> {
    require_daemon(sock, action)?;
    let by = crate::ask::operator();
    let mut body = serde_json::json!({ "by": by });
    if let Some(s) = scope {
        body["scope"] = s.into();
    }
    let v = post_json(sock, &format!("/v1/pending/{id}/{action}"), body)?;
    match scope {
        Some(s) => println!(
            "approved {id} ({s}): {} for profile {}{}",
            v["rule"].as_str().unwrap_or("?"),
            v["profile"].as_str().unwrap_or("?"),
            v["policy"]
                .as_str()
                .map(|p| format!(", saved; policy {p}"))
                .unwrap_or_default()
        ),
        None => println!("denied {id}: {}", v["denied"].as_str().unwrap_or("?")),
    }
    Ok(ExitCode::SUCCESS)
}

fn completions(shell: clap_complete::Shell) -> Result<ExitCode> {
    use clap::CommandFactory;
    use std::io::Write;
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "egress-agent", &mut buf);
    match std::io::stdout().write_all(&buf) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// A GET on the daemon's control socket, as text.
fn get(sock: &Path, uri: &str) -> Result<String> {
    let b = crate::control::call_blocking(sock, hyper::Method::GET, uri, None)?;
    Ok(String::from_utf8_lossy(&b).into_owned())
}

fn require_daemon(sock: &Path, what: &str) -> Result<()> {
    if !crate::control::daemon_running(sock) {
        bail!(
            "{what} needs a running daemon, and none answers on {} (start `egress-agent daemon`, or pass --control PATH)",
            sock.display()
        );
    }
    Ok(())
}

fn post_json(sock: &Path, uri: &str, body: serde_json::Value) -> Result<serde_json::Value> {
    let b = crate::control::call_blocking(sock, hyper::Method::POST, uri, Some(body))?;
    Ok(serde_json::from_slice(&b)?)
}

/// Says on stderr what the target holds that breaks the guarantees (host pid namespace,
/// CAP_SYS_ADMIN / CAP_NET_RAW / CAP_SYS_PTRACE, the control socket or state directory in
/// view): enforcement goes ahead, but the operator should know.
fn warn_boundary(t: &Target, sock: &Path) {
    let pid = match (t.pid, &t.cgroup) {
        (Some(pid), _) => Some(pid),
        (None, Some(cg)) => Cgroup::open(cg)
            .ok()
            .and_then(|c| c.pids_recursive().ok())
            .and_then(|p| p.first().copied()),
        _ => None,
    };
    for w in pid
        .map(|p| crate::sandbox::attach_check::boundary_warnings(p, sock))
        .unwrap_or_default()
    {
        eprintln!("egress-agent: warning: {w}");
    }
}

fn attach_via_daemon(sock: &Path, args: &AttachArgs) -> Result<ExitCode> {
    warn_boundary(&args.target, sock);
    if args.policy.is_some() || args.audit_log.is_some() {
        bail!(
            "a daemon is running on {}: it enforces its own policy and audit log; drop --policy/--audit-log (or use --control for another socket)",
            sock.display()
        );
    }
    let req = crate::daemon::AttachRequest {
        cgroup: args.target.cgroup.clone(),
        pid: args.target.pid,
        profile: args.profile.clone(),
        netns: args.netns.clone(),
    };
    let v = post_json(sock, "/v1/attach", serde_json::to_value(req)?)?;
    println!(
        "attached cgroup {} (id {}) with profile {} (adopted pins: {})",
        v["cgroup"].as_str().unwrap_or("?"),
        v["cgroup_id"],
        v["profile"].as_str().unwrap_or("?"),
        v["adopted"]
    );
    Ok(ExitCode::SUCCESS)
}

fn print_daemon_status(v: &serde_json::Value) {
    println!(
        "daemon pid {} up {}s, policy {} ({}, {}), audit {} written {} lost {}",
        v["pid"],
        v["uptime_s"],
        v["policy"]["version"].as_str().unwrap_or("?"),
        v["policy"]["mode"].as_str().unwrap_or("?"),
        v["policy"]["file"].as_str().unwrap_or("?"),
        v["audit"]["path"].as_str().unwrap_or("-"),
        v["audit"]["written"],
        v["audit"]["lost"],
    );
    let atts = v["attachments"].as_array().cloned().unwrap_or_default();
    if atts.is_empty() {
        println!("no attachments");
    }
    for a in atts {
        println!(
            "cgroup id {}: {} profile {} tcp {} dns {}",
            a["cgroup_id"],
            a["cgroup"].as_str().unwrap_or("?"),
            a["profile"].as_str().unwrap_or("?"),
            a["listeners"]["tcp"],
            a["listeners"]["dns"],
        );
        for b in a["budgets"].as_array().into_iter().flatten() {
            println!("  {}", budget_line(b));
        }
    }
}

/// One budget of `status`: its limits and what the container has used of them.
fn budget_line(b: &serde_json::Value) -> String {
    format!(
        "budget {} ({}): {}; used {} B up, {} B down this window (resets in {}s); {} open; exceeded {} times",
        b["rule"].as_str().unwrap_or("?"),
        b["host"].as_str().unwrap_or("every host"),
        b["limits"].as_str().unwrap_or("?"),
        b["used_bytes_up"],
        b["used_bytes_down"],
        b["window_resets_in_s"],
        b["open_connections"],
        b["exceeded"],
    )
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// The inspection CA of the state directory (created on first use); constrained to the
/// policy's inspected names when asked to.
pub fn load_ca(policy: Option<&Path>) -> Result<crate::inspect::ca::Ca> {
    let constraints = match (crate::inspect::name_constraints_wanted(), policy) {
        (false, _) => None,
        (true, Some(p)) => {
            let p = Policy::load(p)?;
            Some(crate::inspect::ca::constraints_for(
                p.inspect_hosts().iter().map(String::as_str),
            ))
        }
        (true, None) => bail!("--ca-name-constraints needs --policy FILE (the inspected names)"),
    };
    Ok(crate::inspect::ca::Ca::load_or_create(
        &crate::inspect::ca::state_dir(),
        constraints.as_deref(),
    )?)
}

pub fn target_cgroup(t: &Target) -> Result<Cgroup> {
    Ok(match (&t.cgroup, t.pid) {
        (Some(p), _) => Cgroup::open(p)?,
        (None, Some(pid)) => Cgroup::of_pid(pid).with_context(|| format!("process {pid}"))?,
        _ => bail!("give --cgroup PATH or --pid PID"),
    })
}

fn status(json: bool) -> Result<ExitCode> {
    let root = crate::bpf::pin_root()?;
    let mut rows = Vec::new();
    for (id, dir) in crate::bpf::pinned_cgroups()? {
        let links = std::fs::read_dir(dir.join("links"))
            .map(|d| d.count())
            .unwrap_or(0);
        rows.push(
            serde_json::json!({"cgroup_id": id.to_string(), "pinned_links": links, "pin_dir": dir}),
        );
    }
    let gates: Vec<serde_json::Value> = crate::bpf::gate::installed()?
        .into_iter()
        .map(|id| serde_json::json!({"cgroup_id": id.to_string(), "pin_dir": root.join("gate").join(id.to_string())}))
        .collect();
    if json {
        println!(
            "{}",
            serde_json::json!({ "attachments": rows, "gates": gates })
        );
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!(
            "no cgroup is enforced (nothing pinned under {})",
            root.display()
        );
    }
    for r in rows {
        println!(
            "cgroup id {}: {} pinned programs ({})",
            r["cgroup_id"].as_str().unwrap_or("?"),
            r["pinned_links"],
            r["pin_dir"].as_str().unwrap_or("")
        );
    }
    for g in gates {
        println!(
            "gated parent cgroup id {} ({})",
            g["cgroup_id"].as_str().unwrap_or("?"),
            g["pin_dir"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn attach_foreground(args: AttachArgs, sock: &Path) -> Result<ExitCode> {
    let Some(policy) = &args.policy else {
        bail!("no daemon is running: give --policy FILE to enforce in the foreground (or start `egress-agent daemon`)");
    };
    let policy = Policy::load(policy)?;
    let cg = target_cgroup(&args.target)?;
    warn_boundary(&args.target, &crate::control::socket_path(None));
    cg.check_enforceable()?;
    cg.check_dedicated(args.target.pid)?;
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
    let _asking = ask_socket(&running, args.policy.clone(), sock);
    // SIGHUP reloads the policy file as the daemon does: an invalid file changes nothing,
    // a valid one is swapped in and the kernel deny set re-synced.
    let policy_path = args.policy.clone().unwrap_or_default();
    let mut running = running;
    crate::signals::wait_for_shutdown(|| {
        let att = running.attachment.clone();
        let res = att
            .shared
            .reload(&policy_path, std::slice::from_ref(&att.profile));
        att.shared.audit.metrics().reloaded(res.is_ok());
        if res.is_ok() {
            if let Err(e) = running.resync() {
                tracing::error!(error = %e, "re-syncing the kernel deny set");
            }
        }
        async {}
    })
    .await;
    running.attachment.shared.audit.flush();
    // Leaving the pins in place: enforcement outlives the agent until `detach`.
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn _shared_is_send(_: Arc<Shared>) {}

/// A foreground `attach` of a profile in ask mode serves the ask endpoints on the control
/// socket path (no daemon answers there: that is why it runs in the foreground), so that
/// `pending`, `approve` and `deny` work as with a daemon. Removed when dropped.
fn ask_socket(running: &Running, policy: Option<PathBuf>, sock: &Path) -> Option<SocketFile> {
    let shared = running.attachment.shared.clone();
    let profile = running.attachment.profile.clone();
    shared.policy.load().ask_timeout(&profile)?;
    let listener = match crate::control::bind(sock) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "ask mode: no control socket to decide on; held connections will time out");
            return None;
        }
    };
    let file = crate::control::pending::StandaloneFile {
        shared: shared.clone(),
        path: policy,
        profile,
        keep_asking: false,
    };
    tokio::spawn(crate::control::serve_pending(
        listener,
        shared,
        Arc::new(file),
    ));
    Some(SocketFile(sock.to_path_buf()))
}

struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
