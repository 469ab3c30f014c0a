//! The real-client lab (issue 16): real package managers and clients, run under the real
//! `egress-agent exec`, against real registries and servers in the test's fake internet.
//!
//! - [`Lab`]: a [`Topology`] whose fake internet also holds the lab's servers — `registry` (a PEP
//!   503 index, npm, a cargo sparse index, a GOPROXY tree and `git http-backend`, built at test time
//!   by `tests/lab/make_fixtures.py`), `git daemon`, a grpcio server and a `websockets` server — each
//!   with a certificate from fakenet's test CA and a name in fakenet's DNS.
//! - [`clients`]: the table of clients (how each asks for the allowed thing, a denied name, another
//!   SNI on an allowed address, a path a rule refuses; how it trusts the test CA; what success looks
//!   like in what it fetched).
//! - [`run`]: one client in one mode — without enforcement, passthrough under `exec`, inspected
//!   under `exec --trust-ca` — with its exit status, output, exec's stderr and time.
//! - [`report`]: the markdown tables (`target/clients-report.md`).
//!
//! Nothing is downloaded at test time; the clients themselves are installed by `cargo xtask deps`.

pub mod clients;
pub mod pki;
pub mod policy;
pub mod report;
pub mod run;

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::bin_path;
use crate::topology::{FakeNet, Topology};

/// The registry (every package name, `mirror.lab.test`, `git daemon` on 9418).
pub const REGISTRY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
/// The grpcio server.
pub const GRPC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 21);
/// The `websockets` server.
pub const WEBSOCKET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 22);

/// The lab's names in fakenet's DNS (`--zone`). The `*mirror*` names serve the same content as
/// the allowed ones and are in no policy: the "denied name" of each client.
pub const NAMES: &[(&str, Ipv4Addr)] = &[
    ("pypi.lab.test", REGISTRY),
    ("npm.lab.test", REGISTRY),
    ("git.lab.test", REGISTRY),
    ("crates.lab.test", REGISTRY),
    ("goproxy.lab.test", REGISTRY),
    ("mirror.lab.test", REGISTRY),
    ("grpc.lab.test", GRPC),
    ("grpc-mirror.lab.test", GRPC),
    ("ws.lab.test", WEBSOCKET),
    ("ws-mirror.lab.test", WEBSOCKET),
];

/// The lab's Python venv (grpcio, websockets): `cargo xtask deps` installs it (keep in step with
/// `LAB_VENV` in xtask/src/main.rs).
pub const VENV: &str = "/opt/egress-agent-tools/lab-venv";

/// `tests/lab/`: the fixture builder, the Python servers and clients, the Java client.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("lab")
}

/// Where every client is found. A missing one fails the lab with the list and the fix.
pub struct Tools {
    pub python: PathBuf,
    pub cargo: PathBuf,
    pub go: PathBuf,
    pub java: PathBuf,
    pub javac: PathBuf,
    pub keytool: PathBuf,
    pub npm: PathBuf,
    pub git: PathBuf,
    pub curl: PathBuf,
    pub wget: PathBuf,
    pub openssl: PathBuf,
    /// PATH for the clients: the standard directories plus the Rust toolchain's (cargo runs
    /// rustc).
    pub path: String,
}

/// The first executable `name` on `path`.
fn which(name: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path).map(|d| d.join(name)).find(|p| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// The toolchain's own cargo (not rustup's proxy, which needs the caller's HOME): `rustup which
/// cargo`, else the first cargo on PATH.
fn real_cargo(path: &str) -> Option<PathBuf> {
    let out = Command::new("rustup").args(["which", "cargo"]).output();
    if let Ok(o) = out {
        let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        if o.status.success() && p.is_file() {
            return Some(p);
        }
    }
    which("cargo", path)
}

impl Tools {
    pub fn find() -> Result<Tools, String> {
        let user_path = std::env::var("PATH").unwrap_or_default();
        let std_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
        let search = format!("{user_path}:{std_path}");
        let mut missing = Vec::new();
        let mut find = |name: &str| {
            which(name, &search).unwrap_or_else(|| {
                missing.push(name.to_string());
                PathBuf::new()
            })
        };
        let (go, java, javac, keytool) = (find("go"), find("java"), find("javac"), find("keytool"));
        let (npm, git, curl, wget, openssl) = (
            find("npm"),
            find("git"),
            find("curl"),
            find("wget"),
            find("openssl"),
        );
        let cargo = real_cargo(&search).unwrap_or_else(|| {
            missing.push("cargo".into());
            PathBuf::new()
        });
        let python = Path::new(VENV).join("bin/python");
        let venv_ok = Command::new(&python)
            .args(["-c", "import grpc, websockets"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !venv_ok {
            missing.push(format!("{VENV} (grpcio, websockets)"));
        }
        if !missing.is_empty() {
            return Err(format!(
                "the client lab needs {}: run `cargo xtask deps` (as root)",
                missing.join(", ")
            ));
        }
        let toolchain = cargo.parent().unwrap().display().to_string();
        Ok(Tools {
            python,
            cargo,
            go,
            java,
            javac,
            keytool,
            npm,
            git,
            curl,
            wget,
            openssl,
            path: format!("{toolchain}:{std_path}"),
        })
    }
}

/// A server of the lab in up-*: stopped on drop (stdin closed, then killed).
struct Server {
    name: &'static str,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(2);
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

/// Spawns `cmd` and waits for it to print `READY` (its stdout is drained afterwards).
fn start_ready(name: &'static str, mut cmd: Command) -> Server {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines.any(|l| l.map(|l| l.trim() == "READY").unwrap_or(false));
        let _ = tx.send(ready);
        for _ in lines {}
    });
    let server = Server { name, child };
    if !rx.recv_timeout(Duration::from_secs(30)).unwrap_or(false) {
        panic!("{} did not print READY (see its stderr above)", server.name);
    }
    server
}

fn run_ok(what: &str, cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The lab: a topology, fakenet (DNS with the lab's names, the test CA), the registries and
/// servers, the compiled Java client and its truststore, and the two policies.
pub struct Lab {
    /// Held only to be stopped on drop, before `topo`.
    _servers: Vec<Server>,
    pub fake: FakeNet,
    pub tools: Tools,
    /// Scratch root of the lab (inside the topology's workdir, removed with it).
    pub dir: PathBuf,
    /// The test CA (PEM): what a client trusts by its own setting without inspection.
    pub ca: PathBuf,
    /// The test CA as a PKCS#12 truststore (password `changeit`), for the JVM.
    pub java_truststore: PathBuf,
    /// Where `LabFetch.class` is.
    pub java_classes: PathBuf,
    /// JSONL: one line per request the registry answered.
    pub registry_log: PathBuf,
    /// Every lab name allowed, nothing inspected.
    pub passthrough_policy: PathBuf,
    /// Every HTTPS name inspected, with the clients' path rules; `upstream_ca` = the test CA.
    pub inspect_policy: PathBuf,
    /// Last: the servers above stop before their namespaces go.
    pub topo: Topology,
}

impl Lab {
    /// Builds everything; panics (tearing down what exists) if any part fails.
    pub fn start(test_name: &str) -> Lab {
        let tools = Tools::find().unwrap_or_else(|e| panic!("{e}"));
        let topo = Topology::new(test_name);
        let dir = topo.workdir().join("lab");
        std::fs::create_dir_all(&dir).unwrap();

        // Java first: javac and keytool take seconds, the servers start meanwhile.
        let java_classes = dir.join("java");
        let mut javac = Command::new(&tools.javac)
            .arg("-d")
            .arg(&java_classes)
            .arg(scripts_dir().join("LabFetch.java"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("javac");

        let up = topo.up_netns();
        for ip in [REGISTRY, GRPC, WEBSOCKET] {
            run_ok(
                "ip addr add",
                Command::new("ip").args([
                    "-n",
                    &up,
                    "addr",
                    "add",
                    &format!("{ip}/32"),
                    "dev",
                    "lo",
                ]),
            );
        }
        let zone = dir.join("zone.json");
        let zone_json: serde_json::Map<String, serde_json::Value> = NAMES
            .iter()
            .map(|(n, ip)| (n.to_string(), serde_json::json!([ip.to_string()])))
            .collect();
        std::fs::write(&zone, serde_json::Value::Object(zone_json).to_string()).unwrap();
        let ca_key = dir.join("ca.key");
        let fake = topo.start_fakenet_with(&[
            "--zone",
            zone.to_str().unwrap(),
            "--ca-key-out",
            ca_key.to_str().unwrap(),
        ]);
        let ca = fake.ca_pem.clone();

        let www = dir.join("www");
        run_ok(
            "make_fixtures.py",
            Command::new("python3")
                .arg(scripts_dir().join("make_fixtures.py"))
                .arg(&www)
                .args(["--npm-url", "https://npm.lab.test/npm"])
                .args(["--crates-url", "https://crates.lab.test/cargo"]),
        );
        let mut servers = Vec::new();
        let cert = |name: &str, names: &[&str]| {
            let (c, k) = (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}.key")),
            );
            pki::issue_leaf(&ca_key, names, &c, &k);
            (c, k)
        };
        let names_at = |ip: Ipv4Addr| -> Vec<&str> {
            NAMES
                .iter()
                .filter(|(_, a)| *a == ip)
                .map(|(n, _)| *n)
                .collect()
        };

        let (c, k) = cert("registry", &names_at(REGISTRY));
        let registry_log = dir.join("registry.jsonl");
        let mut cmd = topo.up_command(bin_path("registry"));
        cmd.arg("--listen")
            .arg(format!("{REGISTRY}:443"))
            .arg("--cert")
            .arg(&c)
            .arg("--key")
            .arg(&k)
            .arg("--root")
            .arg(&www)
            .arg("--log")
            .arg(&registry_log);
        servers.push(start_ready("registry", cmd));

        for (name, script, ip) in [
            ("grpc server", "grpc_lab.py", GRPC),
            ("websocket server", "ws_lab.py", WEBSOCKET),
        ] {
            let (c, k) = cert(script, &names_at(ip));
            let mut cmd = topo.up_command(&tools.python);
            cmd.arg(scripts_dir().join(script))
                .arg("serve")
                .arg("--listen")
                .arg(format!("{ip}:443"))
                .arg("--cert")
                .arg(&c)
                .arg("--key")
                .arg(&k);
            servers.push(start_ready(name, cmd));
        }

        let mut daemon = topo.up_command(&tools.git);
        daemon
            .arg("daemon")
            .arg("--export-all")
            .arg("--reuseaddr")
            .arg("--informative-errors")
            .arg(format!("--base-path={}", www.join("git").display()))
            .arg(format!("--listen={REGISTRY}"))
            .arg("--port=9418")
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let child = daemon.spawn().expect("git daemon");
        servers.push(Server {
            name: "git daemon",
            child,
        });
        wait_listening(&topo, &format!("{REGISTRY}:9418"));

        let status = javac.wait().unwrap();
        let mut err = String::new();
        use std::io::Read;
        let _ = javac.stderr.take().unwrap().read_to_string(&mut err);
        assert!(status.success(), "javac LabFetch.java: {err}");
        let java_truststore = dir.join("test-ca.p12");
        run_ok(
            "keytool -importcert",
            Command::new(&tools.keytool)
                .args(["-importcert", "-noprompt", "-alias", "egress-test-ca"])
                .arg("-file")
                .arg(&ca)
                .arg("-keystore")
                .arg(&java_truststore)
                .args(["-storetype", "PKCS12", "-storepass", "changeit"]),
        );

        let passthrough_policy = dir.join("passthrough.toml");
        std::fs::write(&passthrough_policy, policy::passthrough(clients::ALL)).unwrap();
        let inspect_policy = dir.join("inspect.toml");
        std::fs::write(&inspect_policy, policy::inspect(clients::ALL, &ca)).unwrap();
        for p in [&passthrough_policy, &inspect_policy] {
            run_ok(
                "egress-agent policy check",
                Command::new(bin_path("egress-agent"))
                    .args(["policy", "check"])
                    .arg(p),
            );
        }

        Lab {
            _servers: servers,
            fake,
            tools,
            dir,
            ca,
            java_truststore,
            java_classes,
            registry_log,
            passthrough_policy,
            inspect_policy,
            topo,
        }
    }
}

/// Waits until something accepts TCP on `addr` in the fake internet.
fn wait_listening(topo: &Topology, addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = topo.probe_up(&["--timeout-ms", "500", "tcp", addr]);
        if v["ok"] == true {
            return;
        }
        assert!(Instant::now() < deadline, "nothing listens on {addr}: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
