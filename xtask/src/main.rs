//! `cargo xtask <build|test|demo|bench|install>`: the project's entry points.
//! `test` and `demo` install what a fresh Debian machine lacks first, so the
//! README's two commands are all a newcomer (or CI) needs.

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
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Install deps, build, and show allowed vs denied traffic from a throwaway container.
    Demo,
}

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
];

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
        Cmd::Test { args } => {
            deps()?;
            cargo(&["build", "--workspace", "--all-targets"])?;
            let mut a = vec!["test", "--workspace"];
            a.extend(args.iter().map(String::as_str));
            cargo(&a)
        }
        Cmd::Demo => {
            deps()?;
            cargo(&["build", "--workspace", "--bins"])?;
            cargo(&["run", "--quiet", "-p", "egress-tests", "--bin", "demo"])
        }
    }
}

fn deps() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
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
    eprintln!("xtask: installing {}", missing.join(" "));
    run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
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
