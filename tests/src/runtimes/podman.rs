//! podman 4.3 with runc (or crun), state entirely private to the test:
//!
//! ```text
//! CONTAINERS_CONF=<dir>/containers.conf CONTAINERS_STORAGE_CONF=<dir>/storage.conf \
//! podman --root <dir>/root --runroot <dir>/runroot --tmpdir <dir>/tmp --storage-driver overlay \
//!        --runtime runc --runtime-flag root=<dir>/runc --cgroup-manager cgroupfs \
//!        --events-backend file --network-config-dir <dir>/net --hooks-dir <dir>/hooks.d \
//!   run -d --cgroup-parent /egress-runtimes/<id>/podman<n>/containers --network ns:/run/netns/ctr-<id> ...
//! ```
//!
//! `containers.conf` sets the ulimits (podman's default RLIMIT_NOFILE of 1048576 is above this
//! machine's cap, and runc fails "error setting rlimits") and the `k8s-file` log driver. The host's
//! `/var/lib/containers`, `/run/containers`, `/run/libpod` and `/run/runc` are never touched. An OCI
//! hook dropped into [`Podman::hooks_dir`] applies to every later `run` (podman reads hooks.d per
//! command).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};

use super::image::{ImageFiles, PROBE_IMAGE};
use super::{cgroup_of, output_text, Net, RunSpec, Runtime, Scratch, Started};
use crate::topology::Topology;

pub const PODMAN: &str = "/usr/bin/podman";
pub const RUNC: &str = "/usr/sbin/runc";
pub const CRUN: &str = "/usr/bin/crun";

/// The podman harness: private roots, the test image imported, containers removed on drop.
pub struct Podman<'t> {
    topo: &'t Topology,
    runtime: String,
    scratch: Scratch,
}

impl<'t> Podman<'t> {
    /// Whether podman, runc and busybox-static are installed (skip message / CI panic otherwise).
    pub fn tools_present() -> bool {
        super::tools_present("podman", &[PODMAN, RUNC, super::image::BUSYBOX])
    }

    /// podman with runc; the probe image imported.
    pub fn new(topo: &'t Topology) -> Podman<'t> {
        Podman::with_runtime(topo, "runc")
    }

    /// podman with OCI runtime `runtime` (`runc`, `crun`, or a path).
    pub fn with_runtime(topo: &'t Topology, runtime: &str) -> Podman<'t> {
        let scratch = Scratch::new(topo, "podman");
        let p = Podman {
            topo,
            runtime: runtime.to_string(),
            scratch,
        };
        let d = p.scratch.dir();
        for sub in ["root", "runroot", "tmp", "net", "hooks.d", "runtime-state"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(
            d.join("containers.conf"),
            "[containers]\n\
             default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             log_driver = \"k8s-file\"\n\
             [engine]\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n",
        )
        .unwrap();
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                d.join("root").display(),
                d.join("runroot").display()
            ),
        )
        .unwrap();
        let tar = ImageFiles::probe(d).write_rootfs_tar(&d.join("probe-rootfs.tar"));
        let o = p.podman(&["import", tar.to_str().unwrap(), PROBE_IMAGE]);
        assert!(o.status.success(), "podman import: {}", output_text(&o));
        p
    }

    /// `podman` with the private global flags, in the runtime's own cgroup (so conmon, which
    /// podman leaves in the caller's cgroup v2, is killed with the rest on teardown).
    pub fn cli(&self) -> std::process::Command {
        let d = self.scratch.dir();
        let mut c = self.scratch.command(PODMAN, None);
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--storage-driver", "overlay", "--runtime", &self.runtime])
            .arg(format!(
                "--runtime-flag=root={}",
                d.join("runtime-state").display()
            ))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .arg("--network-config-dir")
            .arg(d.join("net"))
            .arg("--hooks-dir")
            .arg(self.hooks_dir());
        c
    }

    /// Runs `podman ARGS` to completion.
    pub fn podman(&self, args: &[&str]) -> Output {
        self.cli().args(args).output().expect("run podman")
    }

    /// The hooks.d directory this podman reads (empty at first): put an OCI hook JSON here.
    pub fn hooks_dir(&self) -> PathBuf {
        self.scratch.dir().join("hooks.d")
    }

    /// The instance's scratch (directory, cgroups).
    pub fn scratch(&self) -> &Scratch {
        &self.scratch
    }

    /// `--cgroup-parent` of every container (cgroupfs syntax).
    pub fn cgroup_parent(&self) -> String {
        self.scratch.cgroup_parent()
    }

    fn network_arg(&self, net: Net) -> String {
        match net {
            Net::None => "--network=none".into(),
            Net::Test | Net::Node => {
                format!("--network=ns:{}", self.topo.ctr_netns_path().display())
            }
        }
    }
}

impl Runtime for Podman<'_> {
    fn kind(&self) -> &'static str {
        "podman"
    }

    fn start(&self, spec: &RunSpec) -> anyhow::Result<Started> {
        let mut cmd = self.cli();
        cmd.args(["run", "-d", "--name", &spec.name])
            .arg(format!("--cgroup-parent={}", self.cgroup_parent()))
            .arg(self.network_arg(spec.net));
        for (k, v) in &spec.annotations {
            cmd.arg(format!("--annotation={k}={v}"));
        }
        if let Some(rt) = &spec.runtime {
            cmd.arg(format!("--runtime={rt}"));
        }
        cmd.arg(PROBE_IMAGE).args(&spec.command);
        let t0 = SystemTime::now();
        let started = Instant::now();
        let o = cmd.output().context("run podman")?;
        let start_took = started.elapsed();
        if !o.status.success() {
            // The container may exist (created, start refused): never leave it behind.
            let _ = self.podman(&["rm", "-f", "-t", "0", &spec.name]);
            bail!("podman run {}: {}", spec.name, output_text(&o).trim());
        }
        let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let o = self.podman(&["inspect", "-f", "{{.State.Pid}}", &id]);
        let pid: u32 = String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .with_context(|| format!("podman inspect pid: {}", output_text(&o)))?;
        let cgroup = cgroup_of(pid).context("container cgroup")?;
        Ok(Started {
            name: spec.name.clone(),
            id,
            sandbox_id: None,
            pid,
            cgroup,
            t0,
            start_took,
            ip: None,
        })
    }

    fn output(&self, c: &Started) -> String {
        output_text(&self.podman(&["logs", &c.id]))
    }

    fn remove(&self, c: &Started) {
        let _ = self.podman(&["rm", "-f", "-t", "0", &c.id]);
    }

    fn cgroup_parent_path(&self) -> PathBuf {
        self.scratch.cgroup_parent_path()
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        // Politely first (unmounts, conmon exits); the scratch kills and unmounts what is left.
        let o = self.podman(&["rm", "--all", "-f", "-t", "0"]);
        if !o.status.success() {
            eprintln!("egress-tests: podman rm --all: {}", output_text(&o));
        }
    }
}

/// Whether crun can run a container here: Err is its refusal, the runtime's own line (on a hybrid
/// cgroup host, crun 1.8: `crun: cgroups in hybrid mode not supported, drop all controllers from
/// cgroupv2`). Tests that want crun skip with this reason.
pub fn crun_usable(topo: &Topology) -> Result<(), String> {
    if !Path::new(CRUN).is_file() {
        return Err(format!("{CRUN} not installed"));
    }
    let p = Podman::with_runtime(topo, "crun");
    let spec = RunSpec::first_instruction("crun-check")
        .net(Net::None)
        .command(&["/bin/true"]);
    match p.start(&spec) {
        Ok(c) => {
            p.remove(&c);
            Ok(())
        }
        Err(e) => {
            let text = e.to_string();
            let line = text
                .lines()
                .rev()
                .find(|l| l.contains("crun"))
                .unwrap_or(&text);
            // podman's own line, without the harness's "podman run NAME: " prefix.
            Err(line[line.find("Error: ").unwrap_or(0)..].trim().to_string())
        }
    }
}

/// Waits until `podman inspect` reports the container `state` (`running`, `exited`, ...).
pub fn wait_state(p: &Podman, id: &str, state: &str, timeout: Duration) -> bool {
    super::wait_for(timeout, || {
        let o = p.podman(&["inspect", "-f", "{{.State.Status}}", id]);
        (String::from_utf8_lossy(&o.stdout).trim() == state).then_some(())
    })
    .is_some()
}
