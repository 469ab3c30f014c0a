//! The benchmark environment: one topology, the upstream (fakenet in bench mode), the agent and the
//! peers, each pinned to its CPU, and how a client reaches the upstream through each configuration.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use egress_tests::{
    addrs::WEB1,
    agent::Agent,
    bin_path,
    topology::{FakeNet, Topology},
};

/// CPU of the proxy under test (agent, HAProxy, httpjail).
pub const PROXY_CPU: &str = "0";
/// CPU of the load generator and the upstream.
pub const LOAD_CPU: &str = "1";

/// The name every passthrough configuration uses (SNI and Host).
pub const PASS_HOST: &str = "allowed.test";
/// The name the agent inspects (warm certificate cache: always the same name).
pub const INSPECT_HOST: &str = "api.allowed.test";
/// Never-seen names for the cold certificate cache: `<random>.cold.exfil.test` (fakenet answers
/// every name under exfil.test with 203.0.113.10, which serves HTTPS too).
pub const COLD_ZONE: &str = "cold.exfil.test";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Config {
    Direct,
    Passthrough,
    Haproxy,
    Httpjail,
    Inspect,
}

impl Config {
    pub const ALL: [Config; 5] = [
        Config::Direct,
        Config::Passthrough,
        Config::Haproxy,
        Config::Httpjail,
        Config::Inspect,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Config::Direct => "direct",
            Config::Passthrough => "passthrough",
            Config::Haproxy => "haproxy",
            Config::Httpjail => "httpjail",
            Config::Inspect => "inspect",
        }
    }
}

/// How a client of one configuration reaches the upstream.
pub struct Target {
    /// The cgroup the client runs in (the enforced one, or the plain sibling).
    pub cgroup: PathBuf,
    /// Name in the URL (SNI, Host).
    pub host: String,
    /// Where TCP for `https://host/` goes (oha `--connect-to`); None: resolve the name.
    pub connect_https: Option<String>,
    /// Same for `http://host/`.
    pub connect_http: Option<String>,
    /// An explicit proxy (`http://IP:PORT`), for peers reached that way.
    pub proxy: Option<String>,
    /// The process whose CPU and memory are the proxy's.
    pub proxy_pid: Option<u32>,
}

/// A background process killed on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Tools found (or installed by `cargo xtask bench`).
pub struct Tools {
    pub oha: PathBuf,
    pub haproxy: Result<PathBuf, String>,
    pub httpjail: Result<PathBuf, String>,
}

fn which(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.push("/usr/sbin".into());
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

impl Tools {
    pub fn find() -> Tools {
        let oha = which("oha")
            .expect("oha not found: `cargo install oha --locked` (or run `cargo xtask bench`)");
        Tools {
            oha,
            haproxy: which("haproxy").ok_or_else(|| "haproxy not installed".to_string()),
            httpjail: which("httpjail").ok_or_else(|| {
                match std::env::var("BENCH_HTTPJAIL_MISSING") {
                    Ok(why) => format!("httpjail could not be installed: {why}"),
                    Err(_) => {
                        "httpjail not installed (`cargo install httpjail --locked`)".to_string()
                    }
                }
            }),
        }
    }
}

/// Fields drop in order: the peers and the agent first, then the upstream, the topology last.
pub struct Env {
    pub haproxy: Option<Haproxy>,
    pub httpjail: Option<Httpjail>,
    pub agent: Agent,
    _fake: FakeNet,
    pub plain: PathBuf,
    pub stats: PathBuf,
    /// Fakenet's CA plus, when inspection works, the agent's.
    pub bundle: PathBuf,
    pub tools: Tools,
    /// Why inspection is not measured (None: it is).
    pub inspect_missing: Option<String>,
    pub haproxy_missing: Option<String>,
    pub httpjail_missing: Option<String>,
    /// Threads of the agent right after start.
    pub agent_threads: usize,
    pub topo: Topology,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.haproxy = None;
        self.httpjail = None;
        // The plain sibling cgroup is the bench's own (Topology removes only the container's).
        let _ = std::fs::remove_dir(&self.plain);
    }
}

pub struct Httpjail {
    pub proc: Proc,
    pub https_port: u16,
    pub http_port: u16,
}

pub struct Haproxy {
    pub proc: Proc,
    pub https_port: u16,
    pub http_port: u16,
}

/// The policy of the benchmarks: passthrough for allowed.test, inspection for api.allowed.test and
/// the cold names; the upstream CA for inspected upstreams.
fn bench_policy(fake_ca: &Path) -> String {
    format!(
        "version = \"bench-1\"\nresolver = \"203.0.113.53:53\"\n\
         allow_ranges = [\"198.51.100.0/24\", \"203.0.113.0/24\", \"2001:db8:100::/48\"]\n\
         upstream_ca = {fake_ca:?}\n\
         [profile.default]\nallow = [\"{PASS_HOST}\"]\n\
         inspect = [\"{INSPECT_HOST}\", \"*.{COLD_ZONE}\"]\n"
    )
}

pub fn pin(pid: u32, cpu: &str) {
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", cpu, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "taskset -a -p -c {cpu} {pid} failed");
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn free_port_hint(seed: &str, base: u16) -> u16 {
    // The namespaces are fresh: any fixed port is free in them; vary it by topology anyway.
    base + (u16::from_str_radix(&seed[..2], 16).unwrap_or(0) % 100)
}

impl Env {
    pub fn new(tools: Tools) -> Env {
        let topo = Topology::new("bench");
        let stats = topo.workdir().join("upstream-stats.json");
        let stats_arg = stats.to_string_lossy().into_owned();
        let fake = topo.start_fakenet_with(&["--bench", "--stats-out", &stats_arg]);
        pin(fakenet_pid(&topo), LOAD_CPU);

        let state = topo.workdir().join("agent-state");
        std::fs::create_dir_all(&state).unwrap();
        let policy = topo.workdir().join("bench-policy.toml");
        std::fs::write(&policy, bench_policy(&fake.ca_pem)).unwrap();
        // The inspection CA, if this build has one: `ca export` creates it in the state directory
        // the agent will use.
        let agent_ca = Command::new(bin_path("egress-agent"))
            .args(["ca", "export", "--policy"])
            .arg(&policy)
            .env("EGRESS_STATE_DIR", &state)
            .output()
            .ok()
            .filter(|o| o.status.success() && o.stdout.starts_with(b"-----BEGIN"))
            .map(|o| o.stdout);
        let mut bundle_pem = std::fs::read(&fake.ca_pem).unwrap();
        if let Some(ca) = &agent_ca {
            bundle_pem.extend_from_slice(ca);
        }
        let bundle = topo.workdir().join("bundle.pem");
        std::fs::write(&bundle, &bundle_pem).unwrap();

        std::env::set_var("EGRESS_STATE_DIR", &state);
        std::env::set_var("EGRESS_LOG", "warn");
        let agent = Agent::attach(&topo, &bench_policy(&fake.ca_pem));
        pin(agent.pid(), PROXY_CPU);
        let agent_threads = threads(agent.pid());

        let plain = topo
            .ctr_cgroup_path()
            .with_file_name(format!("{}-plain", topo.id()));
        std::fs::create_dir_all(&plain).unwrap();

        let mut env = Env {
            topo,
            _fake: fake,
            agent,
            plain,
            stats,
            bundle,
            tools,
            inspect_missing: None,
            haproxy: None,
            httpjail: None,
            haproxy_missing: None,
            httpjail_missing: None,
            agent_threads,
        };
        env.inspect_missing = match agent_ca {
            None => Some(
                "this build has no inspection CA (`egress-agent ca export` failed): \
                 the `inspect` key parses but TLS is not terminated"
                    .into(),
            ),
            Some(ca) => env.check_inspect(&ca),
        };
        match &env.tools.haproxy {
            Ok(bin) => match env.start_haproxy(bin.clone()) {
                Ok(h) => env.haproxy = Some(h),
                Err(e) => env.haproxy_missing = Some(e),
            },
            Err(e) => env.haproxy_missing = Some(e.clone()),
        }
        match &env.tools.httpjail {
            Ok(bin) => match env.start_httpjail(bin.clone(), &bundle_pem) {
                Ok(h) => env.httpjail = Some(h),
                Err(e) => env.httpjail_missing = Some(e),
            },
            Err(e) => env.httpjail_missing = Some(e.clone()),
        }
        env
    }

    /// Restarts the agent (it adopts its pins) on the proxy CPU.
    pub fn restart_agent(&mut self) {
        self.agent.restart_attach(&self.topo);
        pin(self.agent.pid(), PROXY_CPU);
    }

    pub fn available(&self, c: Config) -> Result<(), String> {
        let missing = match c {
            Config::Direct | Config::Passthrough => None,
            Config::Haproxy => self.haproxy_missing.clone(),
            Config::Httpjail => self.httpjail_missing.clone(),
            Config::Inspect => self.inspect_missing.clone(),
        };
        missing.map_or(Ok(()), Err)
    }

    /// A curl through the inspect configuration trusting only the agent's CA must succeed.
    fn check_inspect(&self, agent_ca: &[u8]) -> Option<String> {
        let only_agent = self.topo.workdir().join("agent-ca.pem");
        std::fs::write(&only_agent, agent_ca).unwrap();
        let out = self
            .topo
            .ctr_command("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg("--cacert")
            .arg(&only_agent)
            .args([
                "--connect-to",
                &format!("{INSPECT_HOST}:443:{WEB1}:443"),
                &format!("https://{INSPECT_HOST}/bytes/16"),
            ])
            .output()
            .expect("curl");
        let code = String::from_utf8_lossy(&out.stdout);
        if code.trim() == "200" {
            None
        } else {
            Some(format!(
                "inspection did not terminate TLS with the agent's CA (curl: {} {})",
                code.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// HAProxy in the agent's namespace, its listeners in the container's (`bind ... namespace`), so
    /// the client-side hop is the same loopback hop the agent's redirected connections take.
    fn start_haproxy(&self, bin: PathBuf) -> Result<Haproxy, String> {
        let https_port = free_port_hint(self.topo.id(), 20443);
        let http_port = https_port + 100;
        let ns = self.topo.ctr_netns();
        let threads = self.agent_threads_worker();
        let cfg = format!(
            "global\n  nbthread {threads}\n  maxconn 9100\n  maxpipes 500\n  ulimit-n 20000\n  tune.bufsize 65536\n\n\
             defaults\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n\
             \x20 option splice-auto\n\n\
             frontend tls\n  mode tcp\n  bind 127.0.0.1:{https_port} namespace {ns}\n\
             \x20 tcp-request inspect-delay 5s\n\
             \x20 tcp-request content accept if {{ req_ssl_hello_type 1 }}\n\
             \x20 use_backend up_tls if {{ req_ssl_sni -i {PASS_HOST} }}\n\n\
             backend up_tls\n  mode tcp\n  server s1 {WEB1}:443\n\n\
             frontend plain\n  mode http\n  option http-keep-alive\n\
             \x20 bind 127.0.0.1:{http_port} namespace {ns}\n\
             \x20 use_backend up_http if {{ hdr(host) -i {PASS_HOST} }}\n\n\
             backend up_http\n  mode http\n  server s1 {WEB1}:80\n"
        );
        let path = self.topo.workdir().join("haproxy.cfg");
        std::fs::write(&path, &cfg).unwrap();
        let check = Command::new(&bin)
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
            .map_err(|e| format!("haproxy: {e}"))?;
        if !check.status.success() {
            return Err(format!(
                "haproxy -c: {}",
                String::from_utf8_lossy(&check.stderr).trim()
            ));
        }
        let mut cmd = self.topo.ag_command("taskset");
        cmd.args(["-c", PROXY_CPU])
            .arg(&bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("haproxy: {e}"))?;
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[haproxy] {line}");
            }
        });
        let proc = Proc { child };
        // Ready when the listener accepts (probe in the plain cgroup).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self
                .topo
                .ctr_command_in(&self.plain, "curl")
                .args([
                    "-sS",
                    "--max-time",
                    "2",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                ])
                .arg(format!("http://127.0.0.1:{http_port}/bytes/1"))
                .args(["-H", &format!("Host: {PASS_HOST}")])
                .output()
                .map_err(|e| format!("curl: {e}"))?;
            if String::from_utf8_lossy(&out.stdout).trim() == "200" {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "haproxy did not answer on 127.0.0.1:{http_port} in ctr: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Haproxy {
            proc,
            https_port,
            http_port,
        })
    }

    /// httpjail `--server` (transparent TLS interception on its HTTPS port, JS rule `true`). It runs in
    /// the container's netns in the plain cgroup — its server mode binds 127.0.0.1 of its own netns —
    /// so its upstream dials leave from ctr-* (one veth hop fewer than the agent and HAProxy).
    fn start_httpjail(&self, bin: PathBuf, bundle_pem: &[u8]) -> Result<Httpjail, String> {
        let https_port = free_port_hint(self.topo.id(), 21443);
        let http_port = https_port + 100;
        let home = self.topo.workdir().join("httpjail-home");
        std::fs::create_dir_all(&home).unwrap();
        let mut cmd = self.topo.ctr_command_in(&self.plain, "taskset");
        cmd.args(["-c", PROXY_CPU])
            .arg(&bin)
            .args(["--server", "--js", "true"])
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("HTTPJAIL_HTTP_BIND", format!("127.0.0.1:{http_port}"))
            .env("HTTPJAIL_HTTPS_BIND", format!("127.0.0.1:{https_port}"))
            // Its upstream TLS verification: fakenet's CA.
            .env("SSL_CERT_FILE", &self.bundle)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("httpjail: {e}"))?;
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[httpjail] {line}");
            }
        });
        let proc = Proc { child };
        // Its CA appears on first start somewhere under HOME; add it to the clients' bundle.
        let deadline = Instant::now() + Duration::from_secs(15);
        let ca = loop {
            if let Some(f) = find_file(&home, "ca-cert.pem") {
                break f;
            }
            if Instant::now() > deadline {
                return Err("httpjail --server wrote no ca-cert.pem under its HOME".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut pem = bundle_pem.to_vec();
        pem.extend_from_slice(&std::fs::read(&ca).unwrap_or_default());
        std::fs::write(&self.bundle, pem).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self
                .topo
                .ctr_command_in(&self.plain, "curl")
                .args([
                    "-sS",
                    "--max-time",
                    "3",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                ])
                .arg("--cacert")
                .arg(&self.bundle)
                .args([
                    "--connect-to",
                    &format!("{PASS_HOST}:443:127.0.0.1:{https_port}"),
                    &format!("https://{PASS_HOST}/bytes/16"),
                ])
                .output()
                .map_err(|e| format!("curl: {e}"))?;
            if String::from_utf8_lossy(&out.stdout).trim() == "200" {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "httpjail --server did not proxy https://{PASS_HOST}/ on 127.0.0.1:{https_port}: {} {}",
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(Httpjail {
            proc,
            https_port,
            http_port,
        })
    }

    /// The agent's tokio worker count (its runtime's default: one per CPU).
    fn agent_threads_worker(&self) -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    }

    pub fn target(&self, c: Config) -> Target {
        let web = |port: u16| Some(format!("{WEB1}:{port}"));
        match c {
            Config::Direct => Target {
                cgroup: self.plain.clone(),
                host: PASS_HOST.into(),
                connect_https: web(443),
                connect_http: web(80),
                proxy: None,
                proxy_pid: None,
            },
            Config::Passthrough => Target {
                cgroup: self.topo.ctr_cgroup_path().to_path_buf(),
                host: PASS_HOST.into(),
                connect_https: web(443),
                connect_http: web(80),
                proxy: None,
                proxy_pid: Some(self.agent.pid()),
            },
            Config::Inspect => Target {
                cgroup: self.topo.ctr_cgroup_path().to_path_buf(),
                host: INSPECT_HOST.into(),
                connect_https: web(443),
                connect_http: web(80),
                proxy: None,
                proxy_pid: Some(self.agent.pid()),
            },
            Config::Haproxy => {
                let h = self.haproxy.as_ref().expect("haproxy available");
                Target {
                    cgroup: self.plain.clone(),
                    host: PASS_HOST.into(),
                    connect_https: Some(format!("127.0.0.1:{}", h.https_port)),
                    connect_http: Some(format!("127.0.0.1:{}", h.http_port)),
                    proxy: None,
                    proxy_pid: Some(h.proc.pid()),
                }
            }
            Config::Httpjail => {
                let h = self.httpjail.as_ref().expect("httpjail available");
                Target {
                    cgroup: self.plain.clone(),
                    host: PASS_HOST.into(),
                    connect_https: Some(format!("127.0.0.1:{}", h.https_port)),
                    connect_http: Some(format!("127.0.0.1:{}", h.http_port)),
                    proxy: None,
                    proxy_pid: Some(h.proc.pid()),
                }
            }
        }
    }

    /// The upstream's counters (fakenet `--stats-out`), after its next 100 ms rewrite.
    pub fn upstream(&self) -> serde_json::Value {
        std::thread::sleep(Duration::from_millis(150));
        std::fs::read(&self.stats)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

/// fakenet's pid: the one process in up-* (found by its netns).
fn fakenet_pid(topo: &Topology) -> u32 {
    let out = Command::new("ip")
        .args(["netns", "pids", &topo.up_netns()])
        .output()
        .expect("ip netns pids");
    let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(pids.len(), 1, "expected fakenet alone in up-*: {pids:?}");
    pids[0]
}

/// utime + stime of `pid` in seconds (/proc/PID/stat; includes exited threads).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|r| r.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime is field 14, stime 15 (1-based); `rest` starts at field 3.
    (ticks(11) + ticks(12)) / clk_tck()
}

fn clk_tck() -> f64 {
    static T: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *T.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// VmRSS of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> f64 {
    kb_field(&format!("/proc/{pid}/status"), "VmRSS:") * 1024.0
}

/// Slab of /proc/meminfo in bytes (machine-wide).
pub fn slab_bytes() -> f64 {
    kb_field("/proc/meminfo", "Slab:") * 1024.0
}

fn kb_field(path: &str, key: &str) -> f64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}
