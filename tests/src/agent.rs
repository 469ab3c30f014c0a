//! Running the real `egress-agent` binary against a topology: it runs in ag-*
//! (so its upstream dials reach only the fake internet), its listeners live in
//! ctr-*, and its programs are attached to ctr-*'s cgroup.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

use crate::{bin_path, topology::Topology};

/// The policy the integration tests share: the fake internet's TEST-NET ranges
/// are exempted (they are documentation ranges, denied by default), its DNS
/// server is the agent's resolver.
pub fn test_policy(extra_allow: &[&str]) -> String {
    let mut allow = vec![
        "allowed.test",
        "*.allowed.test",
        "internal.test",
        "metadata.test",
        "rebind.test",
        "cdn.test:7",
    ];
    allow.extend_from_slice(extra_allow);
    let list = allow
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "version = \"test-1\"\nresolver = \"203.0.113.53:53\"\n\
         allow_ranges = [\"198.51.100.0/24\", \"203.0.113.0/24\", \"2001:db8:100::/48\"]\n\
         [profile.default]\nallow = [{list}]\n"
    )
}

/// A policy with the test exemptions and resolver, and the given profiles (name, allow list).
pub fn policy_with_profiles(profiles: &[(&str, &[&str])]) -> String {
    let mut out = String::from(
        "version = \"test-1\"\nresolver = \"203.0.113.53:53\"\n\
         allow_ranges = [\"198.51.100.0/24\", \"203.0.113.0/24\", \"2001:db8:100::/48\"]\n",
    );
    for (name, allow) in profiles {
        let list = allow
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!("[profile.{name}]\nallow = [{list}]\n"));
    }
    out
}

pub struct Agent {
    child: Option<Child>,
    pub policy: PathBuf,
    pub audit: PathBuf,
    cgroups: Vec<PathBuf>,
    /// First stdout line: "enforcing cgroup id N (adopted pins: B)".
    pub banner: String,
    /// Every stderr line so far (also echoed as `[agent] ...`).
    log: Arc<Mutex<Vec<String>>>,
    /// The daemon's control socket (`daemon_control` only).
    pub control: Option<PathBuf>,
}

impl Agent {
    /// `egress-agent attach` for the topology's container.
    pub fn attach(topo: &Topology, policy_toml: &str) -> Agent {
        let dir = topo.workdir().to_path_buf();
        let policy = dir.join("policy.toml");
        std::fs::write(&policy, policy_toml).unwrap();
        let audit = dir.join("audit.jsonl");
        Self::spawn_attach(topo, policy, audit)
    }

    /// `egress-agent attach` with the audit log at `audit` (e.g. on a tiny tmpfs).
    pub fn attach_with_audit(topo: &Topology, policy_toml: &str, audit: &Path) -> Agent {
        let policy = topo.workdir().join("policy.toml");
        std::fs::write(&policy, policy_toml).unwrap();
        Self::spawn_attach(topo, policy, audit.to_path_buf())
    }

    /// [`Agent::attach`] with extra environment for the agent (e.g. `EGRESS_STATE_DIR`, the
    /// secrets an inspected host's credentials are read from).
    pub fn attach_with_env(topo: &Topology, policy_toml: &str, env: &[(&str, &str)]) -> Agent {
        let dir = topo.workdir().to_path_buf();
        let policy = dir.join("policy.toml");
        std::fs::write(&policy, policy_toml).unwrap();
        let audit = dir.join("audit.jsonl");
        let mut cmd = Self::attach_command(topo, &policy, &audit);
        cmd.envs(env.iter().copied());
        let cgroups = vec![topo.ctr_cgroup_path().to_path_buf()];
        Self::start(cmd, policy, audit, cgroups)
    }

    fn attach_command(topo: &Topology, policy: &Path, audit: &Path) -> Command {
        let mut cmd = topo.ag_command(bin_path("egress-agent"));
        cmd.arg("attach")
            .arg("--cgroup")
            .arg(topo.ctr_cgroup_path())
            .arg("--netns")
            .arg(topo.ctr_netns_path())
            .arg("--policy")
            .arg(policy)
            .arg("--audit-log")
            .arg(audit);
        cmd
    }

    fn spawn_attach(topo: &Topology, policy: PathBuf, audit: PathBuf) -> Agent {
        let mut cmd = topo.ag_command(bin_path("egress-agent"));
        cmd.arg("attach")
            .arg("--cgroup")
            .arg(topo.ctr_cgroup_path())
            .arg("--netns")
            .arg(topo.ctr_netns_path())
            .arg("--policy")
            .arg(&policy)
            .arg("--audit-log")
            .arg(&audit);
        // A per-test control path nobody serves: standalone mode, whatever
        // daemon may listen on the machine's default socket.
        let control = topo.workdir().join("control.sock");
        cmd.env("EGRESS_CONTROL", &control);
        let cgroups = vec![topo.ctr_cgroup_path().to_path_buf()];
        let mut a = Self::start(cmd, policy, audit, cgroups);
        a.control = Some(control);
        a
    }

    /// `egress-agent daemon` over several topologies' containers, run in the
    /// first topology's agent namespace.
    pub fn daemon(topos: &[&Topology], policy_toml: &str) -> Agent {
        let with: Vec<(&Topology, &str)> = topos.iter().map(|t| (*t, "default")).collect();
        Self::daemon_profiles(&with, policy_toml)
    }

    /// `egress-agent daemon` with one attach entry per (topology, profile), run in the first
    /// topology's agent namespace (so every upstream dial reaches the first topology's fakenet).
    pub fn daemon_profiles(entries: &[(&Topology, &str)], policy_toml: &str) -> Agent {
        let topos: Vec<&Topology> = entries.iter().map(|(t, _)| *t).collect();
        let dir = topos[0].workdir().to_path_buf();
        let policy = dir.join("policy.toml");
        std::fs::write(&policy, policy_toml).unwrap();
        let audit = dir.join("audit.jsonl");
        // Its own record of attachments (a restart restores them): never the machine's.
        let mut cfg = format!(
            "policy = {:?}\naudit_log = {:?}\nstate_dir = {:?}\n",
            policy,
            audit,
            dir.join("attachments")
        );
        for (t, profile) in entries {
            cfg.push_str(&format!(
                "[[attach]]\ncgroup = {:?}\nnetns = {:?}\nprofile = {profile:?}\n",
                t.ctr_cgroup_path(),
                t.ctr_netns_path()
            ));
        }
        let config = dir.join("daemon.toml");
        std::fs::write(&config, cfg).unwrap();
        // Its own control socket: never the machine's default one.
        let control = dir.join("control.sock");
        let mut cmd = topos[0].ag_command(bin_path("egress-agent"));
        cmd.arg("--control")
            .arg(&control)
            .arg("daemon")
            .arg("--config")
            .arg(&config);
        let cgroups = topos
            .iter()
            .map(|t| t.ctr_cgroup_path().to_path_buf())
            .collect();
        let mut a = Self::start(cmd, policy, audit, cgroups);
        a.control = Some(control);
        a
    }

    /// `egress-agent daemon` with nothing attached by its config and its own
    /// control socket (`<workdir>/control.sock`), in the topology's agent
    /// namespace; `extra` are more daemon arguments (e.g. `--metrics ADDR`).
    /// The topology's cgroup is detached on drop, whoever attached it.
    pub fn daemon_control(topo: &Topology, policy_toml: &str, extra: &[&str]) -> Agent {
        let cgroups = vec![topo.ctr_cgroup_path().to_path_buf()];
        Self::daemon_configured(topo, policy_toml, "", extra, cgroups)
    }

    /// `egress-agent daemon` whose config gets `extra_config` appended (e.g. a
    /// `[kubernetes]` section); `cgroups` are detached on drop.
    pub fn daemon_with_config(
        topo: &Topology,
        policy_toml: &str,
        extra_config: &str,
        cgroups: Vec<PathBuf>,
    ) -> Agent {
        Self::daemon_configured(topo, policy_toml, extra_config, &[], cgroups)
    }

    /// The daemon with its own control socket (`<workdir>/control.sock`) in the
    /// topology's agent namespace: `extra_config` appended to daemon.toml,
    /// `extra_args` after `daemon --config FILE`.
    fn daemon_configured(
        topo: &Topology,
        policy_toml: &str,
        extra_config: &str,
        extra_args: &[&str],
        cgroups: Vec<PathBuf>,
    ) -> Agent {
        let dir = topo.workdir().to_path_buf();
        let policy = dir.join("policy.toml");
        std::fs::write(&policy, policy_toml).unwrap();
        let audit = dir.join("audit.jsonl");
        let control = dir.join("control.sock");
        let config = dir.join("daemon.toml");
        std::fs::write(
            &config,
            format!(
                "policy = {policy:?}\naudit_log = {audit:?}\nstate_dir = {:?}\n{extra_config}",
                dir.join("attachments")
            ),
        )
        .unwrap();
        let mut cmd = topo.ag_command(bin_path("egress-agent"));
        cmd.arg("--control")
            .arg(&control)
            .arg("daemon")
            .arg("--config")
            .arg(&config)
            .args(extra_args);
        let mut a = Self::start(cmd, policy, audit, cgroups);
        a.control = Some(control);
        a
    }

    /// The `egress-agent` CLI, talking to this daemon's control socket.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(bin_path("egress-agent"));
        if let Some(s) = &self.control {
            c.env("EGRESS_CONTROL", s);
        }
        c
    }

    fn start(mut cmd: Command, policy: PathBuf, audit: PathBuf, cgroups: Vec<PathBuf>) -> Agent {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("EGRESS_LOG", "info");
        let mut child = cmd.spawn().expect("starting egress-agent");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[agent] {line}");
                log2.lock().unwrap().push(line.clone());
                if line.contains("daemon ready") {
                    let _ = tx2.send(line);
                }
            }
        });
        let banner = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("egress-agent did not start (see [agent] lines above)"));
        Agent {
            child: Some(child),
            policy,
            audit,
            cgroups,
            banner,
            log,
            control: None,
        }
    }

    /// The agent's stderr lines so far (every process this `Agent` started).
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for a stderr line containing `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(l) = self.log_lines().into_iter().find(|l| l.contains(needle)) {
                return Some(l);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Restart `attach` on the same files (after a crash).
    pub fn restart_attach(&mut self, topo: &Topology) {
        self.stop();
        let mut a = Self::spawn_attach(topo, self.policy.clone(), self.audit.clone());
        self.child = a.child.take();
        self.control = a.control.take();
        self.banner = std::mem::take(&mut a.banner);
        // One log across restarts: the earlier process's lines first.
        let old = self.log.lock().unwrap().clone();
        a.log.lock().unwrap().splice(0..0, old);
        self.log = a.log.clone();
        // `a` has no child left: its Drop only re-detaches nothing we still need...
        a.cgroups.clear();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL: no cleanup at all, as in a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (pins stay: enforcement outlives the agent).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe_kill(c.id(), libc::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The audit log, parsed, once a record that `wanted` accepts is in it (or after 10 s):
    /// records are written by a thread of their own, in the order they were made, so waiting
    /// for a count can return before the one a test is about.
    pub fn audit_records_until(
        &self,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let recs = read_jsonl(&self.audit);
            if recs.iter().any(&wanted) || std::time::Instant::now() > deadline {
                return recs;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The audit log, parsed (waits briefly for `min` records to be written).
    pub fn audit_records(&self, min: usize) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let recs = read_jsonl(&self.audit);
            if recs.len() >= min || std::time::Instant::now() > deadline {
                return recs;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        for cg in &self.cgroups {
            // The daemon is stopped: this is the standalone detach (pins).
            let _ = self
                .cli()
                .arg("detach")
                .arg("--cgroup")
                .arg(cg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `bpftool cgroup show PATH` program names, one per attachment.
pub fn attached_programs(cgroup: &Path) -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("bpftool");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect()
}
