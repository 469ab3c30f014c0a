//! A real container (podman + runc, rootfs from busybox-static, `--network=none`)
//! attached by its PID through the daemon: before, its connects fail the
//! ordinary way (no network); attached, a denied connect is EPERM, a denied
//! name is answered with egress.internal's address and an allowed name is served through the agent; detached,
//! everything is as before. A cgroup that also holds a host process is refused.
//!
//! Needs `apt-get install podman runc busybox-static`; skipped (with a message)
//! without them, except under CI=true.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use egress_tests::{
    agent::{test_policy, Agent},
    is_ci, require_root,
    topology::Topology,
};

const PODMAN_ARGS: [&str; 2] = ["--runtime=runc", "--cgroup-manager=cgroupfs"];

fn tools_present() -> bool {
    let have = |p: &str| {
        Command::new(p)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let ok = have("podman") && have("runc") && Path::new("/usr/bin/busybox").exists();
    if !ok {
        assert!(
            !is_ci(),
            "CI=true: podman, runc and busybox-static are required"
        );
        eprintln!("SKIPPED: needs podman, runc and busybox-static");
    }
    ok
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(PODMAN_ARGS)
        .args(args)
        .output()
        .expect("podman")
}

/// A running container, removed on drop.
struct Container {
    name: String,
    pid: u32,
}

impl Container {
    fn start(name: &str, rootfs: &Path) -> Container {
        let _ = podman(&["rm", "-f", "-t", "0", name]);
        let o = podman(&[
            "run",
            "-d",
            "--name",
            name,
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--network=none",
            "--rootfs",
            rootfs.to_str().unwrap(),
            "/bin/sleep",
            "120",
        ]);
        assert!(o.status.success(), "podman run: {o:?}");
        let mut c = Container {
            name: name.to_string(),
            pid: 0,
        };
        let o = podman(&["inspect", "-f", "{{.State.Pid}}", name]);
        c.pid = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
        c
    }

    /// `sh -c SCRIPT` in the container: (exit code, stdout + stderr).
    fn sh(&self, script: &str) -> (i32, String) {
        let o = podman(&["exec", &self.name, "/bin/sh", "-c", script]);
        let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&o.stderr));
        (o.status.code().unwrap_or(-1), s)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.name]);
    }
}

/// busybox-static and its applets, a resolv.conf naming a resolver the
/// container cannot reach without the agent.
fn rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/usr/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep", "nc", "nslookup", "printf", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("etc/resolv.conf"), "nameserver 203.0.113.53\n").unwrap();
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    root
}

fn cgroup_v2_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .unwrap()
}

#[test]
fn podman_container_attached_by_pid_is_enforced_then_restored() {
    if !require_root() || !tools_present() {
        return;
    }
    // The topology supplies the fake internet and the agent's namespace; the
    // container is podman's, with no network at all.
    let topo = Topology::new("ops_podman");
    let _net = topo.start_fakenet();
    let agent = Agent::daemon_control(&topo, &test_policy(&[]), &[]);
    let ctr = Container::start(
        &format!("egress-ops-{}", topo.id()),
        &rootfs(topo.workdir()),
    );
    let cg = cgroup_v2_of(ctr.pid);
    assert!(
        cg.contains("libpod-"),
        "the container has a cgroup v2 of its own: {cg}"
    );
    let pid = ctr.pid.to_string();

    // Without the agent: no network at all.
    let metadata = "nc -w 2 169.254.169.254 80 </dev/null";
    let (code, out) = ctr.sh(metadata);
    assert!(code != 0 && out.contains("Network is unreachable"), "{out}");
    let (code, out) = ctr.sh("nslookup allowed.test");
    assert!(code != 0, "{out}");

    // A host process moved into the container's cgroup makes it shared:
    // attach is refused, and nothing changed.
    let mut intruder = Command::new("sleep").arg("60").spawn().unwrap();
    let mount = egress_tests::cgroup2_root().unwrap();
    let procs = mount.join(cg.trim_start_matches('/')).join("cgroup.procs");
    std::fs::write(&procs, intruder.id().to_string()).unwrap();
    let o = agent
        .cli()
        .args(["attach", "--pid", &pid])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("not a dedicated container cgroup"), "{err}");
    let _ = intruder.kill();
    let _ = intruder.wait();
    // The killed process leaves the cgroup once reaped.
    std::thread::sleep(Duration::from_millis(100));

    // Attached by PID through the daemon.
    let o = agent
        .cli()
        .args(["attach", "--pid", &pid])
        .output()
        .unwrap();
    assert!(o.status.success(), "attach: {o:?}");
    let st: serde_json::Value = serde_json::from_slice(
        &agent
            .cli()
            .args(["status", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        st["attachments"][0]["cgroup"]
            .as_str()
            .unwrap()
            .ends_with(&cg),
        "{st}"
    );
    let (code, out) = ctr.sh(metadata);
    assert!(
        code != 0 && out.contains("Operation not permitted"),
        "EPERM: {out}"
    );
    // A denied name: egress.internal's address (dns_deny = "explain"), never forwarded.
    let (_, out) = ctr.sh("nslookup -type=a other.test");
    assert!(out.contains("192.0.2.1"), "{out}");
    let (code, out) = ctr.sh("nslookup allowed.test");
    assert!(code == 0 && out.contains("198.51.100.10"), "{out}");
    let get = |host: &str| {
        format!(
            "printf 'GET / HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n' | nc -w 3 198.51.100.10 80"
        )
    };
    let (_, out) = ctr.sh(&get("allowed.test"));
    assert!(out.starts_with("HTTP/1.1 200"), "allowed: {out}");
    let (_, out) = ctr.sh(&get("other.test"));
    assert!(
        out.starts_with("HTTP/1.1 403") && out.contains("host_not_allowed"),
        "denied: {out}"
    );

    // Detached: as before.
    let o = agent
        .cli()
        .args(["detach", "--pid", &pid])
        .output()
        .unwrap();
    assert!(o.status.success(), "detach: {o:?}");
    let (code, out) = ctr.sh(metadata);
    assert!(code != 0 && out.contains("Network is unreachable"), "{out}");
}
