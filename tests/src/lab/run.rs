//! Running one client in one mode and recording what it did.
//!
//! Every run gets its own scratch directory (cwd, HOME, caches: nothing is cached between runs)
//! and a clean environment. The client's stdout and stderr go, merged, to a file; under `exec`
//! the agent's own stderr goes to another, so the two never mix.
//!
//! - [`Mode::Direct`]: in the container's network namespace, in a fresh child of its cgroup that
//!   no program is attached to — no enforcement (proves the set-up).
//! - [`Mode::Passthrough`]: `nsenter --net=CTR egress-agent exec --policy passthrough.toml -- …`.
//! - [`Mode::Inspect`]: `… exec --trust-ca --policy inspect.toml -- …`, and the client gets no
//!   per-tool trust setting: only the variables `--trust-ca` sets.
//!
//! Denials run in [`Mode::Inspect`] (the mode in which a denial can be most explicit), and each
//! once more in [`Mode::Direct`], where it must succeed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::clients::{Client, Req, SniWay};
use super::Lab;
use crate::bin_path;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
pub enum Mode {
    Direct,
    Passthrough,
    Inspect,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Direct, Mode::Passthrough, Mode::Inspect];
    pub fn label(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Passthrough => "passthrough",
            Mode::Inspect => "inspect",
        }
    }
}

/// The three ways a request is denied.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
pub enum Way {
    /// A name in no policy (the same server answers it).
    Name,
    /// The allowed name's address, reached under another name (SNI and Host).
    Sni,
    /// The allowed, inspected host, asked for a path its rule refuses.
    Path,
}

impl Way {
    pub const ALL: [Way; 3] = [Way::Name, Way::Sni, Way::Path];
    pub fn label(self) -> &'static str {
        match self {
            Way::Name => "name",
            Way::Sni => "sni",
            Way::Path => "path",
        }
    }
}

/// One run: a client in a mode, asking for the allowed thing (`way: None`) or a denied one.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
pub struct Case {
    pub mode: Mode,
    pub way: Option<Way>,
}

impl Case {
    pub fn label(self) -> String {
        match self.way {
            None => self.mode.label().to_string(),
            Some(w) => format!("{}-deny-{}", self.mode.label(), w.label()),
        }
    }
}

/// Every run of `client`: allowed in each mode; each applicable denial enforced (inspect) and
/// without enforcement (direct).
pub fn cases(client: &Client) -> Vec<Case> {
    let mut v: Vec<Case> = Mode::ALL
        .iter()
        .map(|&mode| Case { mode, way: None })
        .collect();
    for way in Way::ALL {
        if way == Way::Path && client.paths.is_none() {
            continue;
        }
        for mode in [Mode::Inspect, Mode::Direct] {
            v.push(Case {
                mode,
                way: Some(way),
            });
        }
    }
    v
}

/// What one run did.
pub struct Outcome {
    pub client: &'static str,
    pub case: Case,
    /// The client's exit status (`None`: killed by a signal or by the timeout).
    pub exit: Option<i32>,
    pub timed_out: bool,
    /// The client's stdout and stderr, merged.
    pub output: String,
    /// exec's own stderr (empty in direct mode).
    pub exec_stderr: String,
    /// `Ok` when the client exited 0 and what it printed or fetched shows success.
    pub check: Result<(), String>,
    pub secs: f64,
}

/// The deny contract's codes (DESIGN.md §6) and the hint code of a client that rejects the CA:
/// a client's output "explains" a denial when it names one of them or `egress-agent`.
pub const EXPLAINING_WORDS: &[&str] = &[
    "egress-agent",
    "host_not_allowed",
    "port_not_allowed",
    "destination_ip_prohibited",
    "host_mismatch",
    "method_not_allowed",
    "path_not_allowed",
    "dns_error",
    "upstream_unreachable",
    "protocol_not_allowed",
    "client_rejected_ca",
];

/// Lines that say nothing about the request (the JVM announcing JAVA_TOOL_OPTIONS).
fn is_noise(line: &str) -> bool {
    line.starts_with("Picked up JAVA_TOOL_OPTIONS")
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.check.is_ok()
    }

    /// The first `n` lines the client printed (blank lines and noise skipped).
    pub fn first_lines(&self, n: usize) -> Vec<&str> {
        self.output
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.trim().is_empty() && !is_noise(l))
            .take(n)
            .collect()
    }

    /// Whether the client's own output names `egress-agent` or a reason code. The name of the
    /// inspection CA (`CN = egress-agent inspection CA …, O = egress-agent`, printed by clients
    /// that show the certificate they got) explains nothing and does not count.
    pub fn explains(&self) -> bool {
        let mut out = self.output.to_ascii_lowercase();
        for ca_name in [
            "egress-agent inspection ca",
            "o = egress-agent",
            "o=egress-agent",
        ] {
            out = out.replace(ca_name, "");
        }
        EXPLAINING_WORDS.iter().any(|w| out.contains(w))
    }

    /// exec's stderr lines (terminal colours removed, blank ones skipped).
    pub fn exec_lines(&self) -> Vec<String> {
        strip_ansi(&self.exec_stderr)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    /// exec's lines about a denial: those naming a reason code or saying deny/denied (the
    /// start-up lines, "enforcing …" and "created the inspection CA …", are not).
    pub fn exec_denials(&self) -> Vec<String> {
        self.exec_lines()
            .into_iter()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("deny") || EXPLAINING_WORDS[1..].iter().any(|w| l.contains(w))
            })
            .collect()
    }

    pub fn status(&self) -> String {
        match (self.timed_out, self.exit) {
            (true, _) => "timeout".into(),
            (false, Some(c)) => format!("exit {c}"),
            (false, None) => "signal".into(),
        }
    }
}

/// `text` without ANSI escape sequences (`ESC [ … letter`), as tracing colours a terminal's lines.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        }
    }
    out
}

/// A run longer than this is killed (and recorded as `timeout`).
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// The client's wrapper: cwd = the run's directory; stdout+stderr merged into `$LAB_OUT`.
const CLIENT_SH: &str = r#"cd "$LAB_WORK" && exec "$@" <"$LAB_IN" >"$LAB_OUT" 2>&1"#;
/// The SNI way by /etc/hosts: a private mount namespace (unshare's default propagation is
/// private, so nothing leaks to the host) with `$LAB_HOSTS` over /etc/hosts.
const HOSTS_SH: &str = r#"mount --bind "$LAB_HOSTS" /etc/hosts && exec "$@""#;

/// Runs `client` in `case` (its directory and cgroup are named after both).
pub fn run_case(lab: &Lab, client: &Client, case: Case) -> Outcome {
    // Named without "deny": exec's lines name this directory, and are searched for denials.
    let slug = format!(
        "{}-{}-{}",
        client.name,
        case.mode.label(),
        case.way.map(Way::label).unwrap_or("allowed")
    );
    let work = lab.dir.join("runs").join(&slug);
    let _ = std::fs::remove_dir_all(&work);
    for d in ["home", "tmp", "state"] {
        std::fs::create_dir_all(work.join(d)).unwrap();
    }
    let denied_name = matches!(case.way, Some(Way::Name | Way::Sni));
    let host = if denied_name {
        client.denied
    } else {
        client.allowed_name()
    };
    let sni = case.way == Some(Way::Sni);
    let req = Req {
        lab,
        host,
        blocked: case.way == Some(Way::Path),
        via: (sni && matches!(client.sni_way, SniWay::Flag(_))).then_some(client.addr),
        ca: (case.mode != Mode::Inspect).then_some(lab.ca.as_path()),
        work: &work,
    };
    let spec = (client.command)(&req);
    let stdin = match &spec.stdin {
        Some(text) => {
            let p = work.join("stdin");
            std::fs::write(&p, text).unwrap();
            p
        }
        None => PathBuf::from("/dev/null"),
    };
    let hosts = (sni && matches!(client.sni_way, SniWay::Hosts)).then(|| {
        let p = work.join("hosts");
        std::fs::write(
            &p,
            format!(
                "127.0.0.1 localhost\n::1 localhost ip6-localhost\n{} {}\n",
                client.addr, client.denied
            ),
        )
        .unwrap();
        p
    });

    // argv from the outside in: [unshare + mount] [nsenter + exec] sh -c CLIENT_SH client...
    let mut argv: Vec<String> = Vec::new();
    if hosts.is_some() {
        argv.extend(["unshare", "-m", "sh", "-c", HOSTS_SH, "lab-hosts"].map(String::from));
    }
    if case.mode != Mode::Direct {
        argv.push("nsenter".into());
        argv.push(format!("--net={}", lab.topo.ctr_netns_path().display()));
        argv.push(bin_path("egress-agent").display().to_string());
        argv.push("exec".into());
        if case.mode == Mode::Inspect {
            argv.push("--trust-ca".into());
        }
        let policy = match case.mode {
            Mode::Inspect => &lab.inspect_policy,
            _ => &lab.passthrough_policy,
        };
        argv.push("--policy".into());
        argv.push(policy.display().to_string());
        argv.push("--".into());
    }
    argv.extend(["sh", "-c", CLIENT_SH, "lab-client"].map(String::from));
    argv.extend(spec.argv.iter().cloned());

    let cgroup = lab.topo.ctr_cgroup_path().join(format!("run-{slug}"));
    let mut cmd = if case.mode == Mode::Direct {
        std::fs::create_dir_all(&cgroup).unwrap();
        lab.topo.ctr_command_in(&cgroup, &argv[0])
    } else {
        Command::new(&argv[0])
    };
    let out_file = work.join("client.out");
    let exec_err = work.join("exec.err");
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", &lab.tools.path)
        .env("HOME", work.join("home"))
        .env("TMPDIR", work.join("tmp"))
        .env("LANG", "C.UTF-8")
        .env("EGRESS_STATE_DIR", work.join("state"))
        .env("LAB_WORK", &work)
        .env("LAB_IN", &stdin)
        .env("LAB_OUT", &out_file)
        .envs(hosts.iter().map(|h| ("LAB_HOSTS", h)))
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(work.join("exec.out")).unwrap())
        .stderr(std::fs::File::create(&exec_err).unwrap());

    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", argv[0]));
    let (status, timed_out) = wait_timeout(&mut child, RUN_TIMEOUT);
    let secs = started.elapsed().as_secs_f64();
    if case.mode == Mode::Direct {
        remove_cgroup(&cgroup);
    }
    let output = std::fs::read_to_string(&out_file).unwrap_or_default();
    let exec_stderr = std::fs::read_to_string(&exec_err).unwrap_or_default();
    let exit = status.and_then(|s| s.code());
    let check = match exit {
        _ if timed_out => Err(format!("no exit within {}s", RUN_TIMEOUT.as_secs())),
        Some(0) => (client.check)(&req, &output),
        Some(c) => Err(format!("exit {c}")),
        None => Err("killed by a signal".into()),
    };
    Outcome {
        client: client.name,
        case,
        exit,
        timed_out,
        output,
        exec_stderr,
        check,
        secs,
    }
}

/// Waits up to `limit`; then SIGTERM (exec cleans up after its command), and SIGKILL 5 s later.
fn wait_timeout(
    child: &mut std::process::Child,
    limit: Duration,
) -> (Option<std::process::ExitStatus>, bool) {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return (Some(s), false);
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = crate::sys::kill(child.id() as i32, libc::SIGTERM);
    let grace = Instant::now() + Duration::from_secs(5);
    while Instant::now() < grace {
        if let Ok(Some(s)) = child.try_wait() {
            return (Some(s), true);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    (child.wait().ok(), true)
}

/// Kills whatever a direct run left in its cgroup and removes it.
fn remove_cgroup(cg: &Path) {
    let _ = std::fs::write(cg.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::remove_dir(cg).is_err() && cg.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs every case of every client, `workers` at a time; outcomes in table order.
pub fn run_all(lab: &Lab, clients: &[&'static Client], workers: usize) -> Vec<Outcome> {
    let mut queue: Vec<(usize, usize, &'static Client, Case)> = Vec::new();
    for (ci, c) in clients.iter().enumerate() {
        for (k, case) in cases(c).into_iter().enumerate() {
            queue.push((k, ci, c, case));
        }
    }
    // Round-robin over clients (the k-th case of each client, then the next): the slow ones
    // (JVM, cargo, go) spread over the run instead of queueing behind each other.
    queue.sort_by_key(|(k, ci, _, _)| (*k, *ci));
    queue.reverse();
    let queue = Mutex::new(queue);
    let verbose = std::env::var_os("LAB_VERBOSE").is_some();
    let done = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| loop {
                let Some((_, ci, c, case)) = queue.lock().unwrap().pop() else {
                    return;
                };
                let o = run_case(lab, c, case);
                // Quiet by default: on a failure the assertion's list must not drown in rows.
                if verbose {
                    eprintln!(
                        "lab: {:<10} {:<22} {:<8} {:5.1}s {}",
                        o.client,
                        o.case.label(),
                        if o.ok() { "ok" } else { "FAIL" },
                        o.secs,
                        o.first_lines(1).first().copied().unwrap_or("")
                    );
                }
                done.lock().unwrap().push((ci, o));
            });
        }
    });
    let mut done = done.into_inner().unwrap();
    done.sort_by_key(|(ci, o)| (*ci, o.case));
    done.into_iter().map(|(_, o)| o).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(output: &str) -> Outcome {
        Outcome {
            client: "t",
            case: Case {
                mode: Mode::Inspect,
                way: Some(Way::Name),
            },
            exit: Some(1),
            timed_out: false,
            output: output.into(),
            exec_stderr: "\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m denied\n\n".into(),
            check: Err("exit 1".into()),
            secs: 0.1,
        }
    }

    #[test]
    fn a_ca_name_explains_nothing_a_reason_code_does() {
        assert!(
            !outcome("depth=1 CN = egress-agent inspection CA 12ab, O = egress-agent").explains()
        );
        assert!(outcome("403 Forbidden - GET https://x/y - path_not_allowed").explains());
        assert!(outcome("Proxy-Status: egress-agent; error=http_request_denied").explains());
        assert!(!outcome("curl: (6) Could not resolve host: other.test").explains());
    }

    #[test]
    fn first_lines_skip_blanks_and_the_jvm_notice() {
        let o = outcome("\nPicked up JAVA_TOOL_OPTIONS: -Dx=y\nException in thread\n\tat a\n");
        assert_eq!(o.first_lines(2), vec!["Exception in thread", "\tat a"]);
        assert_eq!(o.exec_lines(), vec!["2026  INFO denied".to_string()]);
    }

    #[test]
    fn every_client_has_its_allowed_run_in_each_mode_and_two_runs_per_denial() {
        for c in super::super::clients::ALL {
            let cases = cases(c);
            let ways = if c.paths.is_some() { 3 } else { 2 };
            assert_eq!(cases.len(), 3 + 2 * ways, "{}", c.name);
        }
    }
}
