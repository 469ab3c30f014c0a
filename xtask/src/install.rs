//! `cargo xtask install` / `uninstall`: the release binary, a systemd unit,
//! the default configuration (secure defaults, never overwritten) and shell
//! completions. `--root DIR` stages everything under DIR (packaging, tests)
//! and then touches nothing else on the machine.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::Args;

const UNIT: &str = include_str!("../../packaging/egress-agent.service");
const POLICY: &str = include_str!("../../packaging/policy.toml");
const DAEMON: &str = include_str!("../../packaging/daemon.toml");

#[derive(Args, Debug)]
pub struct InstallArgs {
    /// Stage under this directory instead of the live system.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Where the binary goes (`<prefix>/bin`).
    #[arg(long, default_value = "/usr/local")]
    pub prefix: PathBuf,
    /// Install this binary instead of building the release one.
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Docker runtimes to register in /etc/docker/daemon.json, one per profile: `egress`
    /// for `default`, `egress-NAME` for the others (e.g. `--docker default,ci`).
    #[arg(long, value_delimiter = ',')]
    pub docker: Vec<String>,
}

#[derive(Args, Debug)]
pub struct UninstallArgs {
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    #[arg(long, default_value = "/usr/local")]
    pub prefix: PathBuf,
    /// Also remove /etc/egress-agent (policy and daemon config).
    #[arg(long)]
    pub purge: bool,
    /// Uninstall even though cgroups are still enforced (their pins stay, and
    /// refuse traffic, until removed by hand: `rm -r <bpffs>/egress-agent/<id>`).
    #[arg(long)]
    pub keep_enforcement: bool,
}

/// `root` joined with an absolute path.
fn under(root: &Path, abs: &Path) -> PathBuf {
    root.join(abs.strip_prefix("/").unwrap_or(abs))
}

struct Layout {
    bin: PathBuf,
    /// `egress-agent-runc`: the runtime wrapper under the name a runtime handler points at.
    wrapper: PathBuf,
    unit: PathBuf,
    etc: PathBuf,
    /// The OCI hook for podman and CRI-O.
    hook: PathBuf,
    docker: PathBuf,
    completions: [(&'static str, PathBuf); 3],
}

fn layout(root: &Path, prefix: &Path) -> Layout {
    let u = |p: &str| under(root, Path::new(p));
    Layout {
        bin: under(root, &prefix.join("bin/egress-agent")),
        wrapper: under(root, &prefix.join("bin/egress-agent-runc")),
        unit: u("/etc/systemd/system/egress-agent.service"),
        etc: u("/etc/egress-agent"),
        hook: u("/etc/containers/oci/hooks.d/egress-agent.json"),
        docker: u("/etc/docker/daemon.json"),
        completions: [
            (
                "bash",
                u("/usr/share/bash-completion/completions/egress-agent"),
            ),
            ("zsh", u("/usr/share/zsh/vendor-completions/_egress-agent")),
            (
                "fish",
                u("/usr/share/fish/vendor_completions.d/egress-agent.fish"),
            ),
        ],
    }
}

fn live(root: &Path) -> bool {
    root == Path::new("/")
}

fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn write_file(path: &Path, text: &[u8], mode: u32) -> Result<()> {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // Write beside, then rename: a running binary or unit is replaced whole.
    let tmp = path.with_extension("xtask-tmp");
    let _ = fs::remove_file(&tmp);
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(text)?;
    }
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path).with_context(|| format!("installing {}", path.display()))?;
    Ok(())
}

pub fn install(a: &InstallArgs) -> Result<()> {
    let l = layout(&a.root, &a.prefix);
    let binary = match &a.binary {
        Some(b) => b.clone(),
        None => {
            super::cargo(&["build", "--release", "-p", "egress-agent"])?;
            target_dir().join("release/egress-agent")
        }
    };
    let bytes = fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    write_file(&l.bin, &bytes, 0o755)?;
    println!("installed {}", l.bin.display());

    let bindir = a.prefix.join("bin");
    install_runtime_hooks(&l, &bindir, &a.docker)?;
    let unit = UNIT.replace("@BINDIR@", &bindir.display().to_string());
    write_file(&l.unit, unit.as_bytes(), 0o644)?;
    println!("installed {}", l.unit.display());

    // Configuration: 0700 directory, 0600 files, never overwritten.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&l.etc)
        .with_context(|| format!("creating {}", l.etc.display()))?;
    for (name, text) in [("policy.toml", POLICY), ("daemon.toml", DAEMON)] {
        let p = l.etc.join(name);
        if p.exists() {
            println!("kept existing {}", p.display());
        } else {
            write_file(&p, text.as_bytes(), 0o600)?;
            println!("installed {}", p.display());
        }
    }
    // The installed binary must accept the installed policy.
    let check = Command::new(&l.bin)
        .arg("policy")
        .arg("check")
        .arg(l.etc.join("policy.toml"))
        .output()
        .context("running the installed binary")?;
    if !check.status.success() {
        bail!(
            "the installed policy does not pass `policy check`: {}",
            String::from_utf8_lossy(&check.stderr).trim()
        );
    }

    for (shell, path) in &l.completions {
        let out = Command::new(&l.bin)
            .args(["completions", shell])
            .output()
            .context("generating completions")?;
        if !out.status.success() {
            bail!("egress-agent completions {shell} failed");
        }
        write_file(path, &out.stdout, 0o644)?;
    }
    println!("installed completions for bash, zsh and fish");

    if live(&a.root) && systemd_running() {
        super::run_cmd(Command::new("systemctl").arg("daemon-reload"))?;
        println!(
            "next: edit /etc/egress-agent/policy.toml, then `systemctl enable --now egress-agent`"
        );
    }
    Ok(())
}

pub fn uninstall(a: &UninstallArgs) -> Result<()> {
    let l = layout(&a.root, &a.prefix);
    if live(&a.root) && !a.keep_enforcement {
        let pinned = pinned_cgroups();
        if !pinned.is_empty() {
            bail!(
                "{} cgroup(s) are still enforced (cgroup ids {}): detach them first (`egress-agent detach --cgroup PATH`), or pass --keep-enforcement",
                pinned.len(),
                pinned.join(", ")
            );
        }
    }
    if live(&a.root) && systemd_running() && l.unit.exists() {
        // Best effort: the unit may be installed but never enabled.
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "egress-agent"])
            .status();
    }
    remove_docker_runtimes(&l.docker)?;
    for p in wrappers(&l.wrapper) {
        let _ = fs::remove_file(&p);
        println!("removed {}", p.display());
    }
    let mut removed = vec![l.bin.clone(), l.unit.clone(), l.hook.clone()];
    removed.extend(l.completions.iter().map(|(_, p)| p.clone()));
    for p in removed {
        match fs::remove_file(&p) {
            Ok(()) => println!("removed {}", p.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    if a.purge && l.etc.exists() {
        fs::remove_dir_all(&l.etc).with_context(|| format!("removing {}", l.etc.display()))?;
        println!("removed {}", l.etc.display());
    } else if l.etc.exists() {
        println!("kept {} (--purge removes it)", l.etc.display());
    }
    if live(&a.root) && systemd_running() {
        let _ = Command::new("systemctl").arg("daemon-reload").status();
    }
    Ok(())
}

/// The hooks.d file for podman and CRI-O: the hook runs at createRuntime for every container
/// carrying the profile annotation (others are untouched, unless under a gated parent).
fn hooks_d(bindir: &Path) -> String {
    let hook = serde_json::json!({
        "version": "1.0.0",
        "hook": {"path": bindir.join("egress-agent"), "args": ["egress-agent", "oci-hook"]},
        "when": {"annotations": {"^egress-agent\\.io/profile$": ".+"}},
        "stages": ["createRuntime"],
    });
    format!(
        "{}\n",
        serde_json::to_string_pretty(&hook).unwrap_or_default()
    )
}

/// The hooks.d file, the `egress-agent-runc` wrapper (one `egress-agent-runc.PROFILE` per
/// Docker profile) and the Docker runtimes.
fn install_runtime_hooks(l: &Layout, bindir: &Path, docker: &[String]) -> Result<()> {
    write_file(&l.hook, hooks_d(bindir).as_bytes(), 0o644)?;
    println!("installed {} (podman, CRI-O)", l.hook.display());
    let mut links = vec![l.wrapper.clone()];
    links.extend(docker.iter().map(|p| wrapper_for(&l.wrapper, p)));
    for link in &links {
        let _ = fs::remove_file(link);
        std::os::unix::fs::symlink("egress-agent", link)
            .with_context(|| format!("linking {}", link.display()))?;
        println!("installed {} -> egress-agent", link.display());
    }
    if docker.is_empty() {
        return Ok(());
    }
    let mut cfg: serde_json::Value = match fs::read_to_string(&l.docker) {
        Ok(t) => serde_json::from_str(&t)
            .with_context(|| format!("{} is not valid JSON", l.docker.display()))?,
        Err(_) => serde_json::json!({}),
    };
    let runtimes = cfg
        .as_object_mut()
        .context("daemon.json is not an object")?
        .entry("runtimes")
        .or_insert_with(|| serde_json::json!({}));
    for p in docker {
        let name = if p == "default" {
            "egress".to_string()
        } else {
            format!("egress-{p}")
        };
        let path = bindir.join(format!("egress-agent-runc.{p}"));
        runtimes[&name] = serde_json::json!({ "path": path });
        println!("docker runtime {name} (profile {p}): `docker run --runtime {name} ...`");
    }
    write_file(
        &l.docker,
        serde_json::to_string_pretty(&cfg)?.as_bytes(),
        0o644,
    )?;
    println!("updated {} (restart dockerd to use it)", l.docker.display());
    Ok(())
}

fn wrapper_for(wrapper: &Path, profile: &str) -> PathBuf {
    wrapper.with_file_name(format!("egress-agent-runc.{profile}"))
}

/// Every installed wrapper link (`egress-agent-runc`, `egress-agent-runc.*`).
fn wrappers(wrapper: &Path) -> Vec<PathBuf> {
    let Some(dir) = wrapper.parent() else {
        return Vec::new();
    };
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n == "egress-agent-runc" || n.starts_with("egress-agent-runc.")
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Our `egress*` runtimes out of daemon.json (the rest of the file as it was).
fn remove_docker_runtimes(path: &Path) -> Result<()> {
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(());
    };
    let Ok(mut cfg) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Ok(());
    };
    let Some(rt) = cfg.get_mut("runtimes").and_then(|r| r.as_object_mut()) else {
        return Ok(());
    };
    let before = rt.len();
    rt.retain(|k, _| k != "egress" && !k.starts_with("egress-"));
    if rt.len() != before {
        write_file(path, serde_json::to_string_pretty(&cfg)?.as_bytes(), 0o644)?;
        println!("removed the egress runtimes from {}", path.display());
    }
    Ok(())
}

/// Cgroup ids with pins under `<bpffs>/egress-agent/` (`<id>/`: an enforced cgroup;
/// `gate/<id>/`: a gated parent, shown as `gate <id>`).
fn pinned_cgroups() -> Vec<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let bpffs = info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "bpf").then(|| left.split_whitespace().nth(4))?
    });
    let Some(bpffs) = bpffs else {
        return Vec::new();
    };
    let ids = |dir: &Path| -> Vec<String> {
        fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<u64>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let root = Path::new(bpffs).join("egress-agent");
    let mut out = ids(&root);
    out.extend(
        ids(&root.join("gate"))
            .into_iter()
            .map(|id| format!("gate {id}")),
    );
    out
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stage an install with the debug binary (built by `cargo build
    /// --workspace`), check modes and contents, reinstall (config kept),
    /// uninstall (config kept), uninstall --purge.
    #[test]
    fn install_and_uninstall_into_a_staging_root() {
        let bin = target_dir().join("debug/egress-agent");
        if !bin.exists() {
            eprintln!(
                "SKIPPED: build the workspace first ({} missing)",
                bin.display()
            );
            return;
        }
        let root = std::env::temp_dir().join(format!("egress-xtask-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let args = InstallArgs {
            root: root.clone(),
            prefix: "/usr/local".into(),
            binary: Some(bin),
            docker: vec!["ci".into()],
        };
        install(&args).unwrap();
        let l = layout(&root, Path::new("/usr/local"));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&l.bin), 0o755);
        assert_eq!(mode(&l.etc), 0o700);
        assert_eq!(mode(&l.etc.join("policy.toml")), 0o600);
        let unit = fs::read_to_string(&l.unit).unwrap();
        assert!(unit.contains("ExecStart=/usr/local/bin/egress-agent --log-format json daemon"));
        assert!(unit.contains("Restart=on-failure"));
        assert!(unit.contains("CapabilityBoundingSet=CAP_BPF "));
        assert!(!unit.contains("@BINDIR@"));
        let policy = fs::read_to_string(l.etc.join("policy.toml")).unwrap();
        assert!(policy.contains("mode = \"enforce\"") && policy.contains("allow = []"));
        let bash = fs::read_to_string(&l.completions[0].1).unwrap();
        assert!(bash.contains("egress-agent") && bash.contains("attach"));
        let hook: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&l.hook).unwrap()).unwrap();
        assert_eq!(hook["hook"]["path"], "/usr/local/bin/egress-agent");
        assert_eq!(hook["stages"], serde_json::json!(["createRuntime"]));
        let docker: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&l.docker).unwrap()).unwrap();
        assert_eq!(
            docker["runtimes"]["egress-ci"]["path"],
            "/usr/local/bin/egress-agent-runc.ci"
        );
        assert_eq!(
            fs::read_link(wrapper_for(&l.wrapper, "ci")).unwrap(),
            Path::new("egress-agent")
        );

        // An operator's edits survive a reinstall.
        fs::write(
            l.etc.join("policy.toml"),
            "# mine\n[profile.default]\nallow = []\n",
        )
        .unwrap();
        install(&args).unwrap();
        assert!(fs::read_to_string(l.etc.join("policy.toml"))
            .unwrap()
            .starts_with("# mine"));

        let un = UninstallArgs {
            root: root.clone(),
            prefix: "/usr/local".into(),
            purge: false,
            keep_enforcement: false,
        };
        uninstall(&un).unwrap();
        assert!(!l.hook.exists() && !l.wrapper.exists());
        assert!(fs::symlink_metadata(wrapper_for(&l.wrapper, "ci")).is_err());
        let docker: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&l.docker).unwrap()).unwrap();
        assert_eq!(docker["runtimes"], serde_json::json!({}));
        assert!(!l.bin.exists() && !l.unit.exists() && !l.completions[2].1.exists());
        assert!(l.etc.join("policy.toml").exists());
        uninstall(&UninstallArgs { purge: true, ..un }).unwrap();
        assert!(!l.etc.exists());
        fs::remove_dir_all(&root).unwrap();
    }
}
