//! Docker 20.10 from Debian (`docker.io`): a `dockerd` started by the test inside a test network
//! namespace (ctr-* by default) with everything private:
//!
//! ```text
//! nsenter --net=/run/netns/ctr-<id> dockerd --data-root <dir>/data --exec-root <dir>/exec \
//!   --pidfile <dir>/docker.pid -H unix://<dir>/docker.sock --config-file <dir>/daemon.json \
//!   --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
//!   --exec-opt native.cgroupdriver=cgroupfs --cgroup-parent /egress-runtimes/<id>/docker<n>/containers \
//!   --default-ulimit nofile=1024:1024 [--add-runtime NAME=PATH ...]
//! ```
//!
//! `daemon.json` moves the daemon's trust key (`deprecated-key-path`) out of `/etc/docker`. dockerd
//! starts its own containerd under `<dir>/exec/containerd`. With `--bridge=none` nothing is created
//! in the netns; a `--network host` container *is* in dockerd's netns, so it reaches exactly what
//! that netns routes to: the fake internet. The client is always `/usr/bin/docker` (another binary
//! may be first on PATH) with `-H unix://<dir>/docker.sock`.

use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};

use super::image::{ImageFiles, PROBE_IMAGE};
use super::{cgroup_of, output_text, Net, RunSpec, Runtime, Scratch, Started};
use crate::topology::Topology;

pub const DOCKER: &str = "/usr/bin/docker";
pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// What dockerd and its containerd may find on PATH (never /usr/local: another docker lives there).
pub const DAEMON_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Options of the dockerd the test starts.
#[derive(Clone, Debug, Default)]
pub struct DockerOpts {
    /// `--add-runtime NAME=PATH` (e.g. a runtime wrapper), usable as `docker run --runtime NAME`.
    pub runtimes: Vec<(String, PathBuf)>,
    /// The netns dockerd runs in (and host-network containers get); default: the topology's ctr-*.
    pub netns: Option<PathBuf>,
    /// More dockerd flags.
    pub extra_args: Vec<String>,
}

/// A private dockerd; its containers are removed and it is stopped on drop.
pub struct Docker<'t> {
    child: Option<Child>,
    scratch: Scratch,
    _topo: &'t Topology,
}

impl<'t> Docker<'t> {
    /// Whether docker.io (dockerd, the client, containerd, runc) and busybox-static are installed.
    pub fn tools_present() -> bool {
        super::tools_present(
            "docker",
            &[
                DOCKER,
                DOCKERD,
                super::containerd::CONTAINERD,
                super::podman::RUNC,
                super::image::BUSYBOX,
            ],
        )
    }

    /// dockerd in the ctr netns, no extra runtimes; the probe image imported.
    pub fn start(topo: &'t Topology) -> Docker<'t> {
        Docker::start_with(topo, DockerOpts::default())
    }

    pub fn start_with(topo: &'t Topology, opts: DockerOpts) -> Docker<'t> {
        let scratch = Scratch::new(topo, "docker");
        let d = scratch.dir().to_path_buf();
        // dockerd makes /run/docker/plugins, its shims /run/containerd/s: removed after if we made them.
        scratch.note_host_dirs(&[
            "/run/docker/plugins",
            "/run/docker",
            "/run/containerd/s",
            "/run/containerd",
        ]);
        std::fs::write(
            d.join("daemon.json"),
            serde_json::json!({"deprecated-key-path": d.join("key.json")}).to_string(),
        )
        .unwrap();
        let netns = opts.netns.clone().unwrap_or_else(|| topo.ctr_netns_path());
        let mut cmd = scratch.command(DOCKERD, Some(&netns));
        cmd.env("PATH", DAEMON_PATH)
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--userland-proxy=false",
                "--storage-driver=overlay2",
                "--exec-opt=native.cgroupdriver=cgroupfs",
                "--default-ulimit=nofile=1024:1024",
            ])
            .arg(format!("--cgroup-parent={}", scratch.cgroup_parent()));
        for (name, path) in &opts.runtimes {
            cmd.arg(format!("--add-runtime={name}={}", path.display()));
        }
        cmd.args(&opts.extra_args);
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        cmd.stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        let child = cmd.spawn().expect("spawn dockerd");
        let mut docker = Docker {
            child: Some(child),
            scratch,
            _topo: topo,
        };
        docker.wait_ready(Duration::from_secs(30));
        let tar = ImageFiles::probe(&d).write_rootfs_tar(&d.join("probe-rootfs.tar"));
        let o = docker.docker(&["import", tar.to_str().unwrap(), PROBE_IMAGE]);
        assert!(o.status.success(), "docker import: {}", output_text(&o));
        docker
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("dockerd exited ({st}): {}", self.log());
            }
            if self
                .docker(&["version", "-f", "{{.Server.Version}}"])
                .status
                .success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd not ready in {timeout:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `/usr/bin/docker -H unix://<dir>/docker.sock` (no cgroup or netns change: a client).
    pub fn cli(&self) -> std::process::Command {
        let mut c = std::process::Command::new(DOCKER);
        c.arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .env("DOCKER_CONFIG", self.scratch.dir().join("client"))
            .stdin(Stdio::null());
        c
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        self.cli().args(args).output().expect("run docker")
    }

    pub fn socket(&self) -> PathBuf {
        self.scratch.dir().join("docker.sock")
    }

    /// dockerd's own log (stdout + stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.scratch.dir().join("dockerd.log")).unwrap_or_default()
    }

    pub fn scratch(&self) -> &Scratch {
        &self.scratch
    }

    /// SIGTERM, then SIGKILL after 15 s.
    fn stop_daemon(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = crate::sys::kill(child.id() as i32, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Runtime for Docker<'_> {
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn start(&self, spec: &RunSpec) -> anyhow::Result<Started> {
        if !spec.annotations.is_empty() {
            bail!("docker 20.10 has no --annotation: select a profile with --runtime NAME");
        }
        let mut cmd = self.cli();
        cmd.args(["run", "-d", "--name", &spec.name])
            .arg(match spec.net {
                Net::None => "--network=none",
                Net::Test | Net::Node => "--network=host",
            });
        if let Some(rt) = &spec.runtime {
            cmd.arg(format!("--runtime={rt}"));
        }
        cmd.arg(PROBE_IMAGE).args(&spec.command);
        let t0 = SystemTime::now();
        let started = Instant::now();
        let o = cmd.output().context("run docker")?;
        let start_took = started.elapsed();
        if !o.status.success() {
            let _ = self.docker(&["rm", "-f", &spec.name]);
            bail!("docker run {}: {}", spec.name, output_text(&o).trim());
        }
        let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let o = self.docker(&["inspect", "-f", "{{.State.Pid}}", &id]);
        let pid: u32 = String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .with_context(|| format!("docker inspect pid: {}", output_text(&o)))?;
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
        output_text(&self.docker(&["logs", &c.id]))
    }

    fn remove(&self, c: &Started) {
        let _ = self.docker(&["rm", "-f", &c.id]);
    }

    fn cgroup_parent_path(&self) -> PathBuf {
        self.scratch.cgroup_parent_path()
    }

    fn diagnostics(&self) -> String {
        super::tail(&self.log(), 30)
    }
}

impl Drop for Docker<'_> {
    fn drop(&mut self) {
        let ids = self.docker(&["ps", "-aq"]);
        let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            let mut rm = self.cli();
            rm.args(["rm", "-f"]).args(&ids);
            let _ = rm.output();
        }
        self.stop_daemon();
    }
}
