//! The benchmark environment: one topology, the upstream (fakenet in bench mode), the agent and the
//! peers, each pinned to its CPU, and how a client reaches the upstream through each configuration.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use egress_tests::{
    addrs::WEB1,
    agent::Agent,
    bin_path,
    topology::{FakeNet, Topology},
};

use crate::peers::{
    self,
    haproxy::{Haproxy, HaproxySetup},
    mitmproxy::{MitmSetup, Mitmproxy},
    squid::{Squid, SquidSetup},
    Intercept, PeerCa,
};

/// CPU of the proxy under test (agent, HAProxy, Squid, mitmproxy).
pub const PROXY_CPU: &str = "0";
/// CPU of the load generator and the upstream.
pub const LOAD_CPU: &str = "1";

/// The name every passthrough configuration uses (SNI and Host).
pub const PASS_HOST: &str = "allowed.test";
/// The name the inspecting configurations inspect (warm certificate cache: always the same name).
pub const INSPECT_HOST: &str = "api.allowed.test";
/// Never-seen names for the cold certificate cache: `<random>.cold.exfil.test` (fakenet answers
/// every name under exfil.test with 203.0.113.10, which serves HTTPS too).
pub const COLD_ZONE: &str = "cold.exfil.test";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Config {
    Direct,
    Passthrough,
    Haproxy,
    Squid,
    Inspect,
    HaproxyInspect,
    SquidInspect,
    Mitmproxy,
}

impl Config {
    pub const ALL: [Config; 8] = [
        Config::Direct,
        Config::Passthrough,
        Config::Haproxy,
        Config::Squid,
        Config::Inspect,
        Config::HaproxyInspect,
        Config::SquidInspect,
        Config::Mitmproxy,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Config::Direct => "direct",
            Config::Passthrough => "passthrough",
            Config::Haproxy => "haproxy",
            Config::Squid => "squid",
            Config::Inspect => "inspect",
            Config::HaproxyInspect => "haproxy inspect",
            Config::SquidInspect => "squid inspect",
            Config::Mitmproxy => "mitmproxy",
        }
    }
    /// The column heading in RESULTS.md.
    pub fn label(self) -> &'static str {
        match self {
            Config::Mitmproxy => "mitmproxy (reference)",
            c => c.name(),
        }
    }
    /// Terminates the client's TLS and re-originates it.
    pub fn inspects(self) -> bool {
        matches!(
            self,
            Config::Inspect | Config::HaproxyInspect | Config::SquidInspect | Config::Mitmproxy
        )
    }
    /// Plain HTTP is measured (the peers' inspect columns would repeat their passthrough
    /// column: plain HTTP takes the same frontend either way).
    pub fn plain_http(self) -> bool {
        !matches!(self, Config::HaproxyInspect | Config::SquidInspect)
    }
}

/// How a client of one configuration reaches the upstream.
pub struct Target {
    /// The cgroup the client runs in (enforced, plain, or a transparent peer's client cgroup).
    pub cgroup: PathBuf,
    /// Name in the URL (SNI, Host).
    pub host: String,
    /// Where TCP for `https://host/` goes (oha `--connect-to`); None: resolve the name.
    pub connect_https: Option<String>,
    /// Same for `http://host/`.
    pub connect_http: Option<String>,
    /// An explicit proxy (`http://IP:PORT`), for peers reached that way.
    pub proxy: Option<String>,
    /// The process whose CPU and memory (with its descendants) are the proxy's.
    pub proxy_pid: Option<u32>,
}

/// Tools found (or installed by `cargo xtask bench`).
pub struct Tools {
    pub oha: PathBuf,
    pub haproxy: Result<PathBuf, String>,
    pub squid: Result<PathBuf, String>,
    pub mitmdump: Result<PathBuf, String>,
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
        let mitmdump = Path::new(peers::mitmproxy::VENV).join("bin/mitmdump");
        Tools {
            oha,
            haproxy: which("haproxy").ok_or_else(|| "haproxy not installed".to_string()),
            squid: which("squid")
                .ok_or_else(|| "squid not installed (Debian `squid-openssl`)".to_string()),
            mitmdump: if mitmdump.is_file() {
                Ok(mitmdump)
            } else {
                Err(format!(
                    "mitmproxy not installed ({} missing; `cargo xtask bench` installs it)",
                    mitmdump.display()
                ))
            },
        }
    }
}

/// Fields drop in order: the peers and the agent first, then the upstream, the topology last.
pub struct Env {
    pub haproxy: Option<Haproxy>,
    pub squid: Option<Squid>,
    pub mitmproxy: Option<Mitmproxy>,
    pub agent: Agent,
    fake: FakeNet,
    /// The plain sibling cgroup (direct, HAProxy's clients).
    pub plain: PathBuf,
    /// The transparent peers' client cgroups (their connections are redirected to the peer).
    pub squid_clients: PathBuf,
    pub mitm_clients: PathBuf,
    pub stats: PathBuf,
    /// Fakenet's CA plus the agent's and the peers' inspection CAs.
    pub bundle: PathBuf,
    pub tools: Tools,
    /// Why a configuration is not measured.
    pub missing: BTreeMap<Config, String>,
    /// Threads of the agent right after start.
    pub agent_threads: usize,
    pub topo: Topology,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.haproxy = None;
        self.squid = None;
        self.mitmproxy = None;
        // The sibling cgroups are the bench's own (Topology removes only the container's).
        for cg in [&self.squid_clients, &self.mitm_clients, &self.plain] {
            peers::kill_cgroup(cg);
        }
    }
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

/// Pins `pid`, its threads and every descendant (helpers) to `cpu`.
pub fn pin(pid: u32, cpu: &str) {
    for p in std::iter::once(pid).chain(descendants(pid)) {
        let ok = Command::new("taskset")
            .args(["-a", "-p", "-c", cpu, &p.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok || p != pid, "taskset -a -p -c {cpu} {p} failed");
    }
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

/// Removes the sibling cgroups of earlier bench runs whose topology is gone (a SIGKILLed run
/// leaves them; the topology's own cleanup only knows the container's cgroup).
fn cleanup_stale_siblings(parent: &Path) {
    for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((id, _)) = name.split_once('-') else {
            continue;
        };
        let harness = id.len() == 6 && id.bytes().all(|b| b.is_ascii_hexdigit());
        if harness && !Path::new(&format!("/run/netns/ctr-{id}")).exists() {
            peers::kill_cgroup(&e.path());
        }
    }
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
        let peer_ca = PeerCa::create(&topo.workdir().join("peers"));
        let mut bundle_pem = std::fs::read(&fake.ca_pem).unwrap();
        if let Some(ca) = &agent_ca {
            bundle_pem.extend_from_slice(ca);
        }
        bundle_pem.extend_from_slice(&std::fs::read(&peer_ca.cert).unwrap());
        let bundle = topo.workdir().join("bundle.pem");
        std::fs::write(&bundle, &bundle_pem).unwrap();

        std::env::set_var("EGRESS_STATE_DIR", &state);
        std::env::set_var("EGRESS_LOG", "warn");
        let agent = Agent::attach(&topo, &bench_policy(&fake.ca_pem));
        pin(agent.pid(), PROXY_CPU);
        let agent_threads = threads(agent.pid());

        let parent = topo.ctr_cgroup_path().parent().unwrap().to_path_buf();
        cleanup_stale_siblings(&parent);
        let sibling = |suffix: &str| {
            let p = parent.join(format!("{}-{suffix}", topo.id()));
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        let plain = sibling("plain");
        let squid_clients = sibling("squid-clients");
        let mitm_clients = sibling("mitm-clients");

        let mut env = Env {
            fake,
            agent,
            plain,
            squid_clients,
            mitm_clients,
            stats,
            bundle,
            tools,
            missing: BTreeMap::new(),
            haproxy: None,
            squid: None,
            mitmproxy: None,
            agent_threads,
            topo,
        };
        match agent_ca {
            None => {
                env.missing.insert(
                    Config::Inspect,
                    "this build has no inspection CA (`egress-agent ca export` failed): \
                     the `inspect` key parses but TLS is not terminated"
                        .into(),
                );
            }
            Some(ca) => {
                if let Some(why) = env.check_inspect(&ca) {
                    env.missing.insert(Config::Inspect, why);
                }
            }
        }
        env.start_peers(&peer_ca);
        env
    }

    fn start_peers(&mut self, ca: &PeerCa) {
        let fake_ca = self.topo.workdir().join("fakenet-ca.pem");
        // fakenet's CA alone: what the inspecting peers verify the upstream with.
        let fake_pem = std::fs::read(&self.fake.ca_pem).unwrap();
        std::fs::write(&fake_ca, fake_pem).unwrap();
        let openssl_conf = peers::openssl_conf(&self.topo.workdir().join("peers"));
        let parent = self.plain.parent().unwrap().to_path_buf();
        let peer_cgroup = |name: &str| parent.join(format!("{}-{name}", self.topo.id()));
        let base = free_port_hint(self.topo.id(), 20443);

        let haproxy = match &self.tools.haproxy {
            Ok(bin) => Haproxy::start(HaproxySetup {
                bin,
                topo: &self.topo,
                plain: &self.plain,
                cgroup: peer_cgroup("haproxy"),
                ca,
                fake_ca: &fake_ca,
                bundle: &self.bundle,
                openssl_conf: &openssl_conf,
                threads: self.agent_threads_worker(),
                base_port: base,
            }),
            Err(e) => Err(e.clone()),
        };
        match haproxy {
            Ok(h) => {
                if let Some(why) = &h.inspect_missing {
                    self.missing.insert(Config::HaproxyInspect, why.clone());
                }
                self.haproxy = Some(h);
            }
            Err(e) => {
                self.missing.insert(Config::Haproxy, e.clone());
                self.missing.insert(Config::HaproxyInspect, e);
            }
        }

        let mut intercept = Intercept::new();
        let squid_port = base + 1000;
        let squid = match &self.tools.squid {
            Ok(bin) => intercept
                .redirect(
                    &self.topo,
                    &self.squid_clients,
                    &[(443, squid_port), (80, squid_port + 100)],
                )
                .and_then(|()| {
                    Squid::start(SquidSetup {
                        bin,
                        topo: &self.topo,
                        client: &self.squid_clients,
                        cgroup: peer_cgroup("squid"),
                        ca,
                        fake_ca: &fake_ca,
                        bundle: &self.bundle,
                        openssl_conf: &openssl_conf,
                        base_port: squid_port,
                    })
                }),
            Err(e) => Err(e.clone()),
        };
        match squid {
            Ok(s) => {
                if let Some(why) = &s.inspect_missing {
                    self.missing.insert(Config::SquidInspect, why.clone());
                }
                self.squid = Some(s);
            }
            Err(e) => {
                self.missing.insert(Config::Squid, e.clone());
                self.missing.insert(Config::SquidInspect, e);
            }
        }

        let mitm_port = base + 2000;
        let mitm = match &self.tools.mitmdump {
            Ok(bin) => intercept
                .redirect(
                    &self.topo,
                    &self.mitm_clients,
                    &[(443, mitm_port), (80, mitm_port)],
                )
                .and_then(|()| {
                    Mitmproxy::start(MitmSetup {
                        bin,
                        topo: &self.topo,
                        client: &self.mitm_clients,
                        cgroup: peer_cgroup("mitmproxy"),
                        ca,
                        fake_ca: &fake_ca,
                        bundle: &self.bundle,
                        openssl_conf: &openssl_conf,
                        port: mitm_port,
                    })
                }),
            Err(e) => Err(e.clone()),
        };
        match mitm {
            Ok(m) => self.mitmproxy = Some(m),
            Err(e) => {
                self.missing.insert(Config::Mitmproxy, e);
            }
        }
    }

    /// Restarts the agent (it adopts its pins) on the proxy CPU.
    pub fn restart_agent(&mut self) {
        self.agent.restart_attach(&self.topo);
        pin(self.agent.pid(), PROXY_CPU);
    }

    pub fn available(&self, c: Config) -> Result<(), String> {
        self.missing.get(&c).cloned().map_or(Ok(()), Err)
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

    /// The agent's tokio worker count (its runtime's default: one per CPU).
    fn agent_threads_worker(&self) -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    }

    pub fn target(&self, c: Config) -> Target {
        let web = |port: u16| Some(format!("{WEB1}:{port}"));
        let agent = Some(self.agent.pid());
        let (cgroup, host, https, http, pid) = match c {
            Config::Direct => (self.plain.clone(), PASS_HOST, web(443), web(80), None),
            Config::Passthrough => (self.ctr(), PASS_HOST, web(443), web(80), agent),
            Config::Inspect => (self.ctr(), INSPECT_HOST, web(443), web(80), agent),
            Config::Haproxy | Config::HaproxyInspect => {
                let h = self.haproxy.as_ref().expect("haproxy available");
                let local = |p: u16| Some(format!("127.0.0.1:{p}"));
                let (host, https) = if c == Config::Haproxy {
                    (PASS_HOST, local(h.https_port))
                } else {
                    (INSPECT_HOST, local(h.inspect_port))
                };
                let pid = Some(h.proc.pid());
                (self.plain.clone(), host, https, local(h.http_port), pid)
            }
            Config::Squid | Config::SquidInspect => {
                let s = self.squid.as_ref().expect("squid available");
                let host = if c == Config::Squid {
                    PASS_HOST
                } else {
                    INSPECT_HOST
                };
                let pid = Some(s.proc.pid());
                (self.squid_clients.clone(), host, web(443), web(80), pid)
            }
            Config::Mitmproxy => {
                let m = self.mitmproxy.as_ref().expect("mitmproxy available");
                let pid = Some(m.proc.pid());
                (
                    self.mitm_clients.clone(),
                    INSPECT_HOST,
                    web(443),
                    web(80),
                    pid,
                )
            }
        };
        Target {
            cgroup,
            host: host.into(),
            connect_https: https,
            connect_http: http,
            proxy: None,
            proxy_pid: pid,
        }
    }

    /// Where a never-seen name per connection can go (resolved by the client, so only the
    /// transparent inspecting configurations): None for the others.
    pub fn cold_target(&self, c: Config) -> Option<Target> {
        (c.inspects() && c != Config::HaproxyInspect).then(|| self.target(c))
    }

    /// The peers that exited (a crash is an error of every configuration it served).
    pub fn dead_peers(&mut self) -> Vec<(&'static str, Vec<Config>)> {
        let mut dead = Vec::new();
        let procs = [
            (
                self.haproxy.as_mut().map(|h| &mut h.proc),
                vec![Config::Haproxy, Config::HaproxyInspect],
            ),
            (
                self.squid.as_mut().map(|s| &mut s.proc),
                vec![Config::Squid, Config::SquidInspect],
            ),
            (
                self.mitmproxy.as_mut().map(|m| &mut m.proc),
                vec![Config::Mitmproxy],
            ),
        ];
        for (proc, served) in procs {
            if let Some(p) = proc {
                if !p.running() {
                    dead.push((p.name, served));
                }
            }
        }
        dead
    }

    fn ctr(&self) -> PathBuf {
        self.topo.ctr_cgroup_path().to_path_buf()
    }

    /// The TLS the client of `c` negotiates, as `openssl s_client` (in the client's cgroup, same
    /// address and name as the load) reports it: `TLSv1.3 TLS_AES_128_GCM_SHA256 X25519, ECDSA,
    /// verified` is the profile every configuration must show.
    pub fn tls_seen(&self, c: Config) -> String {
        let t = self.target(c);
        let Some(to) = t.connect_https.as_deref() else {
            return "(resolved by name)".into();
        };
        let out = self
            .topo
            .ctr_command_in(&t.cgroup, "openssl")
            .args(["s_client", "-brief", "-verify_return_error", "-connect", to])
            .args(["-servername", &t.host, "-CAfile"])
            .arg(&self.bundle)
            .stdin(Stdio::null())
            .output();
        let Ok(out) = out else {
            return "(openssl s_client did not run)".into();
        };
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        let group = field("Negotiated TLS1.3 group:")
            .or_else(|| field("Server Temp Key:"))
            .map(|g| g.split(',').next().unwrap_or("").to_string());
        match (
            field("Protocol version:"),
            field("Ciphersuite:"),
            field("Signature type:"),
            field("Verification:"),
        ) {
            (Some(v), Some(cs), sig, verify) => format!(
                "{v} {cs} {} {}, {}",
                group.unwrap_or_else(|| "?".into()),
                sig.unwrap_or_else(|| "?".into()),
                match verify.as_deref() {
                    Some("OK") => "verified".to_string(),
                    other => format!("verification {}", other.unwrap_or("?")),
                }
            ),
            _ => format!(
                "(no handshake: {})",
                text.lines()
                    .find(|l| l.contains("verify error"))
                    .or(text.lines().last())
                    .unwrap_or("")
                    .trim()
            ),
        }
    }

    /// The upstream's counters (fakenet `--stats-out`), after its next 100 ms rewrite.
    pub fn upstream(&self) -> serde_json::Value {
        std::thread::sleep(Duration::from_millis(150));
        self.upstream_now()
    }

    /// The upstream's counters as last written (up to 100 ms old).
    pub fn upstream_now(&self) -> serde_json::Value {
        std::fs::read(&self.stats)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
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

/// Every live descendant of `pid` (children, their children, ...), from /proc/*/stat.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        // `pid (comm) state ppid ...`: the command may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(pp) = ppid {
            parent_of.push((p, pp));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(q) = frontier.pop() {
        for &(p, pp) in &parent_of {
            if pp == q && !out.contains(&p) {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out
}

/// CPU seconds of `pid` and its live descendants (Squid's certificate helpers are the proxy's
/// work too).
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    std::iter::once(pid)
        .chain(descendants(pid))
        .map(cpu_seconds)
        .sum()
}

/// Context switches (voluntary + involuntary) of every live thread of `pid` and of its live
/// descendants, from /proc/P/task/T/status.
pub fn tree_context_switches(pid: u32) -> u64 {
    std::iter::once(pid)
        .chain(descendants(pid))
        .flat_map(|p| {
            std::fs::read_dir(format!("/proc/{p}/task"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .map(|t| {
            std::fs::read_to_string(t.path().join("status"))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// VmRSS of `pid` and its live descendants, in bytes.
pub fn tree_rss_bytes(pid: u32) -> f64 {
    std::iter::once(pid)
        .chain(descendants(pid))
        .map(rss_bytes)
        .sum()
}
