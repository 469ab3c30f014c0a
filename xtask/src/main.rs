//! `cargo xtask <build|test|demo|bench|install>`: the project's entry points.
//! `test` and `demo` install what a fresh Debian machine lacks first, so the
//! README's two commands are all a newcomer (or CI) needs.

mod install;
mod modules;

use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the Debian packages the build and the tests need (root).
    Deps,
    /// Build every crate (debug).
    Build,
    /// Install deps, build, run unit and netns integration tests.
    Test {
        /// Also run every fuzz target for 30 s (always done when CI=true).
        #[arg(long)]
        fuzz: bool,
        /// Also run `bench --quick` as a check: every configuration completes every workload
        /// with zero errors (always done when CI=true; figures are not asserted).
        #[arg(long)]
        bench: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Install deps, build, and show allowed vs denied traffic from a throwaway container.
    Demo,
    /// Benchmarks (../shared/BENCH.md): installs HAProxy, Squid, oha and mitmproxy if missing,
    /// builds in release and writes bench/RESULTS.md, bench/results.json and bench/raw/ (root).
    Bench(BenchArgs),
    /// Run every fuzz target for a bounded time (installs cargo-fuzz if missing).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Release build; binary to <prefix>/bin, systemd unit, default policy
    /// under /etc/egress-agent/ (kept if present), shell completions.
    Install(install::InstallArgs),
    /// Remove what `install` put in place (configuration only with --purge).
    Uninstall(install::UninstallArgs),
    /// The agent's module graph (imports, circles) and its longest functions, from the source.
    Modules {
        /// How many functions to list per group.
        #[arg(long, default_value_t = 12)]
        top: usize,
    },
}

#[derive(clap::Args)]
struct BenchArgs {
    /// 3 rounds, smaller sizes, 60 s soak: checks the machinery, not for comparison.
    #[arg(long)]
    quick: bool,
    /// Every configuration completes every workload once, tiny; fails on any error.
    #[arg(long, conflicts_with = "quick")]
    sanity: bool,
    /// Only these workloads, e.g. `W1,W4`.
    #[arg(long)]
    only: Option<String>,
    /// What CI runs (with --quick): fail on any error of any configuration; results go to
    /// target/bench-check, the committed ones stay as they are.
    #[arg(long)]
    check: bool,
    /// W6: seconds of the agent's soak (full run: 1800).
    #[arg(long)]
    soak_seconds: Option<f64>,
    /// W6: seconds of each peer's soak (full run: 300).
    #[arg(long)]
    soak_peer_seconds: Option<f64>,
}

/// The fuzz targets of fuzz/ (each has a seed corpus in fuzz/corpus/<name>).
const FUZZ_TARGETS: &[&str] = &[
    "client_hello",
    "http_head",
    "dns_message",
    "names",
    "policy",
];

/// Debian packages: clang + libbpf headers to build the BPF object; bpftool,
/// iproute2 and the clients the integration tests and the demo drive.
const APT_PACKAGES: &[&str] = &[
    "clang-19",
    "llvm-19",
    "libbpf-dev",
    "bpftool",
    "iproute2",
    "curl",
    "python3",
    "dnsutils",
    "linux-libc-dev",
    // tests/tests/containers.rs: a real container attached by PID.
    "podman",
    "runc",
    "busybox-static",
    // tests/src/runtimes (tests/tests/runtimes.rs): real runtimes with private state, images
    // built locally; crun only to record its refusal of hybrid cgroups; protoc builds k8s-cri.
    "crun",
    "docker.io",
    "containerd",
    "containernetworking-plugins",
    "protobuf-compiler",
    // tests/tests/kubernetes.rs: a venv for kubernetes-validate.
    "python3-venv",
    // tests/tests/upstream_proxy.rs: a real upstream proxy (the openssl flavour is what the
    // bench machine already has; plain `squid` conflicts with it).
    "squid-openssl",
    // tests/tests/upstream_proxy.rs: the proxy's password file (`openssl passwd`).
    "openssl",
];

/// The clients of the real-client lab (tests/tests/clients.rs), as (command, Debian package):
/// a package is installed only when its command is missing, because a machine may have the tool
/// from elsewhere (Node.js from another repository ships its own npm, which Debian's npm
/// conflicts with). curl and python3-venv are in APT_PACKAGES; cargo is the toolchain itself.
const LAB_TOOLS: &[(&str, &str)] = &[
    ("go", "golang-go"),
    ("java", "openjdk-17-jdk-headless"),
    ("javac", "openjdk-17-jdk-headless"),
    ("keytool", "openjdk-17-jdk-headless"),
    ("npm", "npm"),
    ("git", "git"),
    ("wget", "wget"),
    ("openssl", "openssl"),
    // exec --trust-ca builds the NSS database (Chromium, Firefox) with certutil.
    ("certutil", "libnss3-tools"),
];

/// The lab's Python servers and clients (grpcio, websockets; PyPI), in a venv of their own (keep
/// in step with `VENV` in tests/src/lab/mod.rs).
const LAB_VENV: &str = "/opt/egress-agent-tools/lab-venv";
const LAB_PYPI: &[&str] = &["grpcio==1.85.1", "websockets==17.4"];

/// The offline Kubernetes schema validator (PyPI; ships the schemas), in a
/// venv of its own (Debian's python3 refuses system-wide pip installs).
const K8S_VENV: &str = "/opt/egress-agent-tools/venv";
const K8S_VALIDATE: &str = "kubernetes-validate==1.37.0";

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Deps => deps(),
        Cmd::Build => cargo(&["build", "--workspace", "--all-targets"]),
        Cmd::Test {
            fuzz: with_fuzz,
            bench: with_bench,
            args,
        } => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            deps()?;
            cargo(&["build", "--workspace", "--all-targets"])?;
            if with_fuzz || ci {
                fuzz(30)?;
            }
            let mut a = vec!["test", "--workspace", "--no-fail-fast"];
            a.extend(args.iter().map(String::as_str));
            cargo_test(&a)?;
            if with_bench || ci {
                bench_check()?;
                println!("bench check: every configuration completed every workload (--quick) with zero errors");
            }
            Ok(())
        }
        Cmd::Fuzz { seconds } => fuzz(seconds),
        Cmd::Bench(a) => bench(a),
        Cmd::Demo => {
            deps()?;
            cargo(&["build", "--workspace", "--bins"])?;
            cargo(&["run", "--quiet", "-p", "egress-tests", "--bin", "demo"])
        }
        Cmd::Install(a) => install::install(&a),
        Cmd::Uninstall(a) => install::uninstall(&a),
        Cmd::Modules { top } => modules::run(&workspace_root().join("egress-agent/src"), top),
    }
}

/// cargo-fuzz on the stable toolchain: `--sanitizer none` needs no nightly
/// flags; libFuzzer's coverage guidance and the targets' own assertions still
/// apply. A crash fails the run and leaves its input in fuzz/artifacts/.
fn fuzz(seconds: u64) -> Result<()> {
    let have = Command::new(env!("CARGO"))
        .args(["fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have {
        logged_step(
            "installing cargo-fuzz (cargo install cargo-fuzz --locked)",
            "install-cargo-fuzz.log",
            &mut [Command::new(env!("CARGO")).args(["install", "cargo-fuzz", "--locked"])],
        )?;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for target in FUZZ_TARGETS {
        let corpus = root.join("corpus").join(target);
        // Work on a copy so a run never rewrites the checked-in seeds.
        let work = std::env::temp_dir().join(format!("egress-fuzz-{target}"));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        for e in std::fs::read_dir(&corpus).with_context(|| format!("{}", corpus.display()))? {
            let e = e?;
            std::fs::copy(e.path(), work.join(e.file_name()))?;
        }
        eprintln!("xtask: fuzzing {target} for {seconds}s");
        run_cmd(
            Command::new(env!("CARGO"))
                .current_dir(&root)
                .args(["fuzz", "run", "--sanitizer", "none", "-O", target])
                .arg(&work)
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .arg("-rss_limit_mb=1024"),
        )?;
    }
    println!(
        "fuzz: {} targets ran {seconds}s each without a crash",
        FUZZ_TARGETS.len()
    );
    Ok(())
}

/// Debian packages of the benchmarks: the HAProxy and Squid peers, iptables for the transparent
/// peers' `REDIRECT`, openssl for the TLS check of every configuration (`taskset` is in
/// util-linux, always present).
const BENCH_APT_PACKAGES: &[&str] = &["haproxy", "squid-openssl", "iptables", "openssl"];

/// The mitmproxy peer (PyPI) in a venv of its own (Debian's python3 refuses system-wide pip
/// installs); the bench looks for it there.
const MITMPROXY_VENV: &str = "/opt/egress-agent-tools/mitmproxy";
const MITMPROXY: &str = "mitmproxy==11.0.2";

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
        || std::env::var_os("HOME").is_some_and(|h| {
            Command::new(std::path::Path::new(&h).join(".cargo/bin").join(cmd))
                .arg(arg)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
}

/// `cargo install NAME --locked` unless NAME already runs. (httpjail is not attempted: its only
/// rule engine links v8, whose build script downloads a prebuilt library from github.com, and no
/// feature leaves it out; bench/RESULTS.md says so.)
fn cargo_install(name: &str) -> Result<()> {
    if have(name, "--version") {
        return Ok(());
    }
    logged_step(
        &format!("installing {name} (cargo install {name} --locked)"),
        &format!("install-{name}.log"),
        &mut [Command::new(env!("CARGO")).args(["install", name, "--locked"])],
    )
}

/// mitmproxy into its venv unless that version is already there.
fn mitmproxy_venv() -> Result<()> {
    let venv = std::path::Path::new(MITMPROXY_VENV);
    let want = MITMPROXY.trim_start_matches("mitmproxy==");
    let have = Command::new(venv.join("bin/mitmdump"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(want))
        .unwrap_or(false);
    if have {
        return Ok(());
    }
    logged_step(
        &format!("installing {MITMPROXY} into {MITMPROXY_VENV}"),
        "install-mitmproxy.log",
        &mut [
            Command::new("python3").args(["-m", "venv"]).arg(venv),
            Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "--disable-pip-version-check"])
                .arg(MITMPROXY),
        ],
    )
}

fn bench(args: BenchArgs) -> Result<()> {
    let mut a = Vec::new();
    if args.quick {
        a.push("--quick".to_string());
    }
    if args.sanity {
        a.push("--sanity".to_string());
    }
    if let Some(o) = args.only {
        a.extend(["--only".to_string(), o]);
    }
    if let Some(s) = args.soak_seconds {
        a.extend(["--soak-seconds".to_string(), s.to_string()]);
    }
    if let Some(s) = args.soak_peer_seconds {
        a.extend(["--soak-peer-seconds".to_string(), s.to_string()]);
    }
    if args.check {
        let out = target_dir().join("bench-check");
        a.extend([
            "--check".to_string(),
            "--out".to_string(),
            out.to_string_lossy().into_owned(),
        ]);
    }
    run_bench(&a)
}

/// The CI check of the bench (`test --bench`, always under CI=true): `--quick --check` on the
/// release build the measured runs use (a debug fakenet, slower, occasionally logged a
/// connection error when the load generator closed right after a 64 MiB body): one round of
/// each workload with every peer, then the 60-second W6 soak, written to target/bench-check
/// (the committed results stay as they are), failing if any configuration has any error.
/// Figures are not looked at.
fn bench_check() -> Result<()> {
    bench(BenchArgs {
        quick: true,
        sanity: false,
        only: None,
        check: true,
        soak_seconds: None,
        soak_peer_seconds: None,
    })
}

fn run_bench(args: &[String]) -> Result<()> {
    apt_deps()?;
    apt_install(BENCH_APT_PACKAGES)?;
    cargo_install("oha")?;
    mitmproxy_venv()?;
    cargo(&["build", "--release", "--workspace", "--bins"])?;
    let bin_dir = target_dir().join("release");
    let mut cmd = Command::new(bin_dir.join("bench"));
    cmd.current_dir(workspace_root())
        .env("EGRESS_BIN_DIR", &bin_dir);
    if let Some(home) = std::env::var_os("HOME") {
        // oha lives in ~/.cargo/bin.
        let mut path = vec![std::path::Path::new(&home).join(".cargo/bin")];
        path.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        cmd.env("PATH", std::env::join_paths(path)?);
    }
    cmd.args(args);
    run_cmd(&mut cmd)
}

fn deps() -> Result<()> {
    apt_deps()?;
    k8s_validator()?;
    lab_clients()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn on_path(cmd: &str) -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join(cmd).is_file())
}

/// Runs `cmds` one after the other with their output in `target/xtask-logs/LOG`, printing one
/// line: `xtask: WHAT … done` (or `failed, see LOG`).
fn logged_step(what: &str, log: &str, cmds: &mut [&mut Command]) -> Result<()> {
    use std::io::Write;
    let dir = target_dir().join("xtask-logs");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(log);
    let file = std::fs::File::create(&path).with_context(|| format!("{}", path.display()))?;
    eprint!("xtask: {what} … ");
    let _ = std::io::stderr().flush();
    for cmd in cmds.iter_mut() {
        let status = cmd
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file.try_clone()?)
            .status()
            .with_context(|| format!("running {cmd:?}"))?;
        if !status.success() {
            eprintln!("failed, see {}", path.display());
            bail!("{what}: {cmd:?} failed: {status} (log: {})", path.display());
        }
    }
    eprintln!("done");
    Ok(())
}

/// The real-client lab's clients (Debian) and its Python venv (PyPI), each one progress line.
fn lab_clients() -> Result<()> {
    let mut missing: Vec<&str> = LAB_TOOLS
        .iter()
        .filter(|(cmd, _)| !on_path(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    let venv = std::path::Path::new(LAB_VENV);
    let venv_ok = Command::new(venv.join("bin/python"))
        .args(["-c", "import grpc, websockets"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if missing.is_empty() && venv_ok {
        return Ok(());
    }
    if !is_root() {
        eprintln!(
            "xtask: not root: the client lab's {} not installed (tests/tests/clients.rs needs them)",
            if venv_ok { missing.join(" ") } else { format!("{} {LAB_VENV}", missing.join(" ")) }
        );
        return Ok(());
    }
    if !missing.is_empty() {
        apt_get(&missing, "client lab", "deps-lab-apt.log", false)?;
    }
    if !venv_ok {
        logged_step(
            &format!("installing {} into {LAB_VENV}", LAB_PYPI.join(" ")),
            "deps-lab-venv.log",
            &mut [
                Command::new("python3").args(["-m", "venv"]).arg(venv),
                Command::new(venv.join("bin/pip"))
                    .args(["install", "-q", "--disable-pip-version-check"])
                    .args(LAB_PYPI),
            ],
        )?;
    }
    Ok(())
}

fn k8s_validator() -> Result<()> {
    let venv = std::path::Path::new(K8S_VENV);
    let have = Command::new(venv.join("bin/kubernetes-validate"))
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if have {
        return Ok(());
    }
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("xtask: not root: {K8S_VALIDATE} not installed into {K8S_VENV} (the manifest test skips)");
        return Ok(());
    }
    logged_step(
        &format!("installing {K8S_VALIDATE} into {K8S_VENV}"),
        "deps-k8s-venv.log",
        &mut [
            Command::new("python3").args(["-m", "venv"]).arg(venv),
            Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "--disable-pip-version-check"])
                .arg(K8S_VALIDATE),
        ],
    )
}

fn apt_deps() -> Result<()> {
    apt_install(APT_PACKAGES)
}

fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY-free check for root: geteuid via `id -u` keeps xtask dependency-light.
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!(
            "missing Debian packages {missing:?}: run as root, or `apt-get install {}`",
            missing.join(" ")
        );
    }
    apt_get(&missing, "Debian packages", "deps-apt.log", true)
}

/// `apt-get update` and `install` of `missing` as one progress line (`logged_step`); apt's
/// own log goes to `target/xtask-logs/LOG`. `recommends`: also what the packages recommend.
fn apt_get(missing: &[&str], why: &str, log: &str, recommends: bool) -> Result<()> {
    // docker.io, containerd and squid would start their host services on installation: the
    // tests start their own, with private state, and a host dockerd would bring its bridge and
    // NAT. A policy-rc.d that refuses every start (the convention of Debian's invoke-rc.d) is in place for
    // the install, unless the machine already has one.
    let _no_services = NoServiceStarts::install();
    let mut install = Command::new("apt-get");
    install.args(["-o", "DPkg::Lock::Timeout=900", "install", "-y", "-qq"]);
    if !recommends {
        install.arg("--no-install-recommends");
    }
    logged_step(
        &format!("installing {} ({why})", missing.join(" ")),
        log,
        &mut [
            Command::new("apt-get").args(["update", "-qq"]),
            install
                .args(missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        ],
    )
}

/// `/usr/sbin/policy-rc.d` answering 101 ("action forbidden") while it lives, removed on drop
/// (only if this process wrote it).
struct NoServiceStarts(Option<std::path::PathBuf>);

impl NoServiceStarts {
    fn install() -> Self {
        let p = std::path::PathBuf::from("/usr/sbin/policy-rc.d");
        if p.exists() {
            return Self(None);
        }
        use std::os::unix::fs::PermissionsExt;
        let wrote = std::fs::write(
            &p,
            "#!/bin/sh\n# egress-agent xtask: no service starts during its installs\nexit 101\n",
        )
        .and_then(|()| std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)));
        Self(wrote.ok().map(|()| p))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `cargo test`, echoing its output, then one closing line with the totals of
/// every test binary (cargo's own last lines are per-binary, often doc tests).
fn cargo_test(args: &[&str]) -> Result<()> {
    use std::io::{BufRead, BufReader};
    // Every attack of the THREATS catalogue the suites run with the enforcer appends one line
    // here (`egress_tests::threat`); summarised below, before the overall tests line.
    let threat_log =
        std::env::temp_dir().join(format!("egress-threats-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&threat_log);
    let mut child = Command::new(env!("CARGO"))
        .args(args)
        .env("EGRESS_THREAT_LOG", &threat_log)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(child.stdout.take().context("cargo test stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |key: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(key).map(str::trim))
                    .map(|n| n.rsplit(' ').next().unwrap_or(n))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            passed += num(" passed");
            failed += num(" failed");
            ignored += num(" ignored");
        }
    }
    let status = child.wait()?;
    println!();
    let threats = std::fs::read_to_string(&threat_log).unwrap_or_default();
    let _ = std::fs::remove_file(&threat_log);
    println!("{}", threat_summary(&threats));
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    Ok(())
}

/// `threats: N attacks, N blocked, 0 bypassed (A: n, B: n, ...)` from the JSONL the tests wrote
/// (`{"class","name","blocked","test"}` per attack), naming every bypass.
fn threat_summary(jsonl: &str) -> String {
    // One attack per (class, name), however many times a test checked it (loops, repeated
    // rounds); it counts as bypassed if any check was not blocked.
    let mut attacks: std::collections::BTreeMap<(String, String), (bool, String)> =
        Default::default();
    for line in jsonl.lines() {
        // Minimal field extraction: the helper writes flat one-line JSON objects.
        let field = |k: &str| -> Option<String> {
            let rest = line.split(&format!("\"{k}\":")).nth(1)?;
            let rest = rest.trim_start();
            Some(if let Some(r) = rest.strip_prefix('"') {
                r.split('"').next()?.to_string()
            } else {
                rest.split([',', '}']).next()?.trim().to_string()
            })
        };
        let Some(class) = field("class") else {
            continue;
        };
        let name = field("name").unwrap_or_default();
        let ok = field("blocked").as_deref() == Some("true");
        let test = field("test").unwrap_or_default();
        let e = attacks.entry((class, name)).or_insert((true, test.clone()));
        if !ok && e.0 {
            *e = (false, test);
        }
    }
    let total = attacks.len();
    let blocked = attacks.values().filter(|(ok, _)| *ok).count();
    let mut by_class: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut bypassed = Vec::new();
    for ((class, name), (ok, test)) in &attacks {
        *by_class.entry(class).or_default() += 1;
        if !ok {
            bypassed.push(format!("{class}: {name} ({test})"));
        }
    }
    let classes: Vec<String> = by_class.iter().map(|(c, n)| format!("{c}: {n}")).collect();
    let mut out = format!(
        "threats: {total} attacks, {blocked} blocked, {} bypassed ({})",
        bypassed.len(),
        classes.join(", ")
    );
    for b in bypassed {
        out.push_str(&format!("\n  BYPASSED {b}"));
    }
    out
}

fn cargo(args: &[&str]) -> Result<()> {
    run_cmd(Command::new(env!("CARGO")).args(args))
}

fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn threat_summary_counts_each_attack_once_and_names_bypasses() {
        let log = concat!(
            r#"{"blocked":true,"class":"A","name":"raw socket","test":"t1"}"#,
            "\n",
            r#"{"blocked":true,"class":"E","name":"disk full","test":"t2"}"#,
            "\n",
            r#"{"blocked":true,"class":"E","name":"disk full","test":"t2"}"#,
            "\n",
            r#"{"blocked":false,"class":"C","name":"sni spoofing","test":"t3"}"#,
            "\n",
        );
        assert_eq!(
            super::threat_summary(log),
            "threats: 3 attacks, 2 blocked, 1 bypassed (A: 1, C: 1, E: 1)\n  BYPASSED C: sni spoofing (t3)"
        );
        assert_eq!(
            super::threat_summary(""),
            "threats: 0 attacks, 0 blocked, 0 bypassed ()"
        );
    }
}
