//! THREATS.md F under `egress-agent exec` (issue 11): every attack once without the boundary
//! (it must succeed, proving the set-up) and once under `exec` (it must fail), with the
//! real binary in the test's ctr-* namespace, against the fake internet.
//!
//! The unprivileged user is `nobody` (65534, on every Debian): no home, so the commands run
//! from the test's workdir (0755) and find their programs in /usr/bin.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use egress_tests::{
    addrs::METADATA_SECRET, agent::test_policy, agent::Agent, bin_path, cgroup2_root, require_root,
    threat, topology::Topology, FakeNet,
};
use serde_json::Value;

const NOBODY: &str = "65534";
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const METADATA: &str = "169.254.169.254:80";
const GET_METADATA: &str = "GET /latest/meta-data/iam/security-credentials/role HTTP/1.0\\r\\nHost: 169.254.169.254\\r\\n\\r\\n";

/// `nsenter --net=<ctr netns> egress-agent exec ARGS` from the workdir, as root without
/// SUDO_UID (the caller adds it), agent logs at warn.
fn exec(topo: &Topology, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", topo.ctr_netns_path().display()))
        .arg(bin_path("egress-agent"))
        .arg("exec")
        .args(args)
        .current_dir(topo.workdir())
        .env("PATH", PATH)
        .env("EGRESS_LOG", "warn")
        .env("EGRESS_STATE_DIR", state_dir(topo))
        .env("EGRESS_CONTROL", topo.workdir().join("control.sock"))
        .env_remove("SUDO_UID")
        .env_remove("SUDO_GID")
        .stdin(Stdio::null());
    c
}

fn as_nobody(c: &mut Command) -> &mut Command {
    c.env("SUDO_UID", NOBODY).env("SUDO_GID", NOBODY)
}

fn state_dir(topo: &Topology) -> PathBuf {
    topo.workdir().join("state")
}

fn policy(topo: &Topology, text: &str) -> String {
    let p = topo.workdir().join("boundary-policy.toml");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn out_text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The probe's JSON line out of an exec run.
fn probe_line(o: &Output) -> Value {
    let (out, err) = out_text(o);
    out.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no probe line: {o:?}\nstdout {out}\nstderr {err}"))
}

fn run_probe_under_exec(topo: &Topology, policy: &str, user: Option<&str>, args: &[&str]) -> Value {
    let probe = bin_path("probe");
    let mut a = vec!["--policy", policy];
    if let Some(u) = user {
        a.extend(["--user", u]);
    }
    a.push("--");
    a.push(probe.to_str().unwrap());
    a.extend(args);
    probe_line(&exec(topo, &a).output().unwrap())
}

/// Directory entries of `<cg2>/egress-agent.exec` named after exec's pid: it must be gone.
fn exec_cgroup(pid: u32) -> PathBuf {
    cgroup2_root()
        .unwrap()
        .join("egress-agent.exec")
        .join(pid.to_string())
}

/// Host pids whose command line is exactly `argv`.
fn pids_running(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            (std::fs::read(e.path().join("cmdline")).ok()? == want).then_some(pid)
        })
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A process started outside every sandbox, killed on drop.
struct Victim(Child);

impl Victim {
    fn start(secret: &str) -> Victim {
        Victim(
            Command::new("sleep")
                .arg("3600")
                .env("VICTIM_SECRET", secret)
                .spawn()
                .unwrap(),
        )
    }
    fn pid(&self) -> String {
        self.0.id().to_string()
    }
    fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `exec`, stopped with SIGTERM (exec then cleans up) if the test fails first.
struct RunningExec(Child);

impl RunningExec {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for RunningExec {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = egress_tests::sys::kill(self.0.id() as i32, libc::SIGTERM);
            let _ = self.0.wait();
        }
    }
}

#[test]
fn the_command_cannot_leave_its_cgroup() {
    require_root!();
    let topo = Topology::new("boundary_cgroup");
    let sibling = Topology::new("boundary_sibling");
    let fake = topo.start_fakenet();
    let cg2 = cgroup2_root().unwrap();
    let root_procs = cg2.join("cgroup.procs");
    let sibling_procs = sibling.ctr_cgroup_path().join("cgroup.procs");
    let (root_procs, sibling_procs) = (
        root_procs.to_str().unwrap(),
        sibling_procs.to_str().unwrap(),
    );
    let escapes: [(&str, Vec<&str>); 4] = [
        (
            "cgroup.procs of the cgroup2 root",
            vec!["cgroup-escape", "--procs", root_procs],
        ),
        (
            "cgroup.procs of a sibling cgroup",
            vec!["cgroup-escape", "--procs", sibling_procs],
        ),
        (
            "clone3(CLONE_INTO_CGROUP) into the cgroup2 root",
            vec!["clone3-escape", "--cgroup", cg2.to_str().unwrap()],
        ),
        (
            "clone3(CLONE_INTO_CGROUP) into a sibling cgroup",
            vec![
                "clone3-escape",
                "--cgroup",
                sibling.ctr_cgroup_path().to_str().unwrap(),
            ],
        ),
    ];
    let with_target = |v: &[&str]| {
        let mut a = v.to_vec();
        a.extend([METADATA, "--send", GET_METADATA, "--read"]);
        a.into_iter().map(str::to_string).collect::<Vec<_>>()
    };

    // Without the boundary: a root process of an enforced cgroup moves out and reaches the
    // metadata server.
    {
        let _agent = Agent::attach(&topo, &test_policy(&[]));
        let direct = topo.probe(&["tcp", METADATA, "--send", GET_METADATA, "--read"]);
        assert_eq!(direct["errno"], libc::EPERM, "enforced: {direct}");
        for (what, args) in &escapes {
            let a = with_target(args);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let v = topo.probe(&a);
            assert!(v["ok"] == true, "{what} without the boundary: {v}");
            assert!(
                v["reply"].as_str().unwrap_or("").contains(METADATA_SECRET),
                "{what}: {v}"
            );
        }
    }
    let metadata_conns = || {
        fake.connections_to(egress_tests::addrs::METADATA.into())
            .len()
    };
    wait_for(
        "fakenet to log the connections",
        Duration::from_secs(5),
        || metadata_conns() == escapes.len(),
    );

    // Under exec (as root: the strongest case; a user cannot write root's cgroup.procs
    // anyway): the cgroup2 it sees is its own subtree, read-only.
    let p = policy(&topo, &test_policy(&[]));
    for (what, args) in &escapes {
        let a = with_target(args);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let v = run_probe_under_exec(&topo, &p, None, &a);
        let moved = v["escaped"] == true || v["child_cgroup"].as_str().is_some_and(|c| c != "/");
        let blocked = !moved && v["ok"] == false && v["errno"] == libc::EPERM;
        threat("F", &format!("leave the cgroup: {what}"), blocked);
        assert!(blocked, "{what} under exec: {v}");
        if args[0] == "cgroup-escape" {
            // EROFS for its own (read-only) cgroup2 root, ENOENT for what it cannot see.
            assert!(
                [libc::EROFS, libc::ENOENT].contains(&(v["escape_errno"].as_i64().unwrap() as i32)),
                "{v}"
            );
        }
    }
    // A late log line would show up here.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        metadata_conns(),
        escapes.len(),
        "something reached the metadata server from under exec"
    );
}

/// Fakenet's `api.allowed.test` (env credential) and `www.allowed.test` (file credential),
/// both inspected.
fn inject_policy(net: &FakeNet, secret_file: &Path) -> String {
    format!(
        r#"version = "boundary-1"
resolver = "203.0.113.53:53"
allow_ranges = ["198.51.100.0/24", "203.0.113.0/24", "2001:db8:100::/48"]
upstream_ca = "{}"
[profile.default]
allow = ["allowed.test"]
inspect = ["api.allowed.test", "www.allowed.test"]
[[profile.default.http]]
host = "api.allowed.test"
inject = {{ header = "X-Api-Key", env = "TEST_API_TOKEN" }}
[[profile.default.http]]
host = "www.allowed.test"
inject = {{ header = "X-File-Key", file = "{}" }}
"#,
        net.ca_pem.display(),
        secret_file.display()
    )
}

const ENV_SECRET: &str = "env-s3cret-7f3a9c";
const FILE_SECRET: &str = "file-s3cret-51e0b2";
const UNSET_SECRET: &str = "unset-s3cret-0c4d";

/// Runs `sh -c` sections separated by `==SECTION==` lines; returns them.
fn sections(text: &str) -> Vec<String> {
    text.split("==SECTION==\n").map(str::to_string).collect()
}

#[test]
fn the_agents_secrets_stay_outside_while_injection_works() {
    require_root!();
    let topo = Topology::new("boundary_secrets");
    let net = topo.start_fakenet();
    let state = state_dir(&topo);
    let out = Command::new(bin_path("egress-agent"))
        .args(["ca", "env"])
        .env("EGRESS_STATE_DIR", &state)
        .output()
        .unwrap();
    assert!(out.status.success(), "ca env: {out:?}");
    let key = state.join("ca/ca.key");
    let secret_file = topo.workdir().join("inject-secret");
    std::fs::write(&secret_file, format!("{FILE_SECRET}\n")).unwrap();
    // World-readable on purpose: only the sandbox's mounts keep it from the command.
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = inject_policy(&net, &secret_file);
    let p = policy(&topo, &text);

    // Without the boundary: a root process of the enforced cgroup reads the CA key, the
    // inject file and the agent's environment.
    {
        let state_s = state.display().to_string();
        let agent = Agent::attach_with_env(
            &topo,
            &text,
            &[
                ("EGRESS_STATE_DIR", &state_s),
                ("TEST_API_TOKEN", ENV_SECRET),
            ],
        );
        let out = topo
            .ctr_command("sh")
            .arg("-c")
            .arg(format!(
                "cat {} {}; tr '\\0' '\\n' < /proc/{}/environ",
                key.display(),
                secret_file.display(),
                agent.pid()
            ))
            .output()
            .unwrap();
        let (o, _) = out_text(&out);
        assert!(
            o.contains("PRIVATE KEY"),
            "CA key without the boundary: {out:?}"
        );
        assert!(o.contains(FILE_SECRET) && o.contains(ENV_SECRET), "{out:?}");
    }

    let script = format!(
        "env; echo ==SECTION==; cat {key} 2>&1; echo ==SECTION==; cat {file} 2>&1; echo ==SECTION==; \
         n=0; for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f 2>/dev/null && n=$((n+1)); done; echo ENVIRONS=$n; \
         echo ==SECTION==; curl -sS --max-time 10 --noproxy '*' https://api.allowed.test/v1/env; \
         echo ==SECTION==; curl -sS --max-time 10 --noproxy '*' https://www.allowed.test/v1/file",
        key = key.display(),
        file = secret_file.display()
    );
    for user in [None, Some(NOBODY)] {
        let who = if user.is_some() { "nobody" } else { "root" };
        let mut c = exec(
            &topo,
            &[
                "--policy",
                &p,
                "--trust-ca",
                "--unset-env",
                "UNSET_ME",
                "--",
                "sh",
                "-c",
                &script,
            ],
        );
        c.env("TEST_API_TOKEN", ENV_SECRET)
            .env("UNSET_ME", UNSET_SECRET);
        if user.is_some() {
            as_nobody(&mut c);
        }
        let out = c.output().unwrap();
        let (o, e) = out_text(&out);
        assert!(out.status.success(), "{who}: {out:?}");
        let s = sections(&o);
        assert_eq!(s.len(), 6, "{who}: {o}\n{e}");
        let env_blocked = !s[0].contains(ENV_SECRET) && !s[0].contains("TEST_API_TOKEN=");
        threat(
            "F",
            &format!("inject env value in the command's environment ({who})"),
            env_blocked,
        );
        assert!(env_blocked, "{who}: {}", s[0]);
        assert!(!s[0].contains(UNSET_SECRET), "--unset-env: {}", s[0]);
        let key_blocked = !s[1].contains("PRIVATE KEY");
        threat("F", &format!("read the CA key ({who})"), key_blocked);
        assert!(key_blocked, "{who}: {}", s[1]);
        let file_blocked = !s[2].contains(FILE_SECRET);
        threat("F", &format!("read an inject file ({who})"), file_blocked);
        assert!(file_blocked, "{who}: {}", s[2]);
        let environ_blocked = !s[3].contains(ENV_SECRET);
        threat(
            "F",
            &format!("read the secret in /proc/*/environ ({who})"),
            environ_blocked,
        );
        assert!(environ_blocked, "{who}: {}", s[3]);
        assert!(
            !s[3].contains("ENVIRONS=0"),
            "the scan read nothing: {}",
            s[3]
        );
        // The injection still works: the upstream received both credentials.
        let echoed = |body: &str, header: &str| -> Option<String> {
            let v: Value = serde_json::from_str(body.trim()).ok()?;
            v["headers"]
                .as_array()?
                .iter()
                .find(|h| h[0] == header)
                .and_then(|h| h[1].as_str().map(str::to_string))
        };
        assert_eq!(
            echoed(&s[4], "x-api-key").as_deref(),
            Some(ENV_SECRET),
            "{who}: {}",
            s[4]
        );
        assert_eq!(
            echoed(&s[5], "x-file-key").as_deref(),
            Some(FILE_SECRET),
            "{who}: {}",
            s[5]
        );
    }
}

#[test]
fn processes_outside_cannot_be_traced_read_or_signalled() {
    require_root!();
    let topo = Topology::new("boundary_procs");
    let p = policy(&topo, &test_policy(&[]));
    let secret = "victim-s3cret-99a1";

    // Without the boundary: a root process of an enforced cgroup traces, reads and kills a
    // process outside.
    {
        let _agent = Agent::attach(&topo, &test_policy(&[]));
        let mut victim = Victim::start(secret);
        let v = topo.probe(&["touch-process", &victim.pid(), "--signal", "15"]);
        for k in ["ptrace", "vm_read", "environ", "kill"] {
            assert_eq!(v[k]["ok"], true, "{k} without the boundary: {v}");
        }
        assert!(
            v["environ"]["text"].as_str().unwrap().contains(secret),
            "{v}"
        );
        wait_for("the victim to die", Duration::from_secs(5), || {
            !victim.alive()
        });
    }

    for user in [Some("root"), None] {
        let who = user.unwrap_or("nobody (SUDO_UID)");
        let mut victim = Victim::start(secret);
        let probe = bin_path("probe");
        let mut args = vec!["--policy", &p];
        if let Some(u) = user {
            args.extend(["--user", u]);
        }
        let pid = victim.pid();
        args.extend([
            "--",
            probe.to_str().unwrap(),
            "touch-process",
            &pid,
            "--signal",
            "15",
        ]);
        let mut c = exec(&topo, &args);
        if user.is_none() {
            as_nobody(&mut c);
        }
        let v = probe_line(&c.output().unwrap());
        for (k, what) in [
            ("ptrace", "ptrace"),
            ("vm_read", "process_vm_readv"),
            ("kill", "kill"),
            ("environ", "read /proc/PID/environ of"),
        ] {
            let errno = v[k]["errno"].as_i64().unwrap_or(0) as i32;
            let blocked =
                v[k]["ok"] == false && [libc::ESRCH, libc::EPERM, libc::ENOENT].contains(&errno);
            threat("F", &format!("{what} a process outside ({who})"), blocked);
            assert!(blocked, "{what} under exec as {who}: {v}");
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            victim.alive(),
            "the victim was killed from under exec as {who}"
        );
    }

    // pid 1 of the sandbox is root with every capability: root inside cannot trace it.
    let probe = bin_path("probe");
    let out = exec(
        &topo,
        &[
            "--policy",
            &p,
            "--user",
            "root",
            "--",
            probe.to_str().unwrap(),
            "touch-process",
            "1",
        ],
    )
    .output()
    .unwrap();
    let v = probe_line(&out);
    let blocked = ["ptrace", "vm_read", "environ"]
        .iter()
        .all(|k| v[*k]["ok"] == false);
    threat(
        "F",
        "trace the sandbox's pid 1 (root with every capability)",
        blocked,
    );
    assert!(blocked, "{v}");
}

#[test]
fn the_command_runs_as_the_invoking_user_without_new_privileges() {
    require_root!();
    let topo = Topology::new("boundary_user");
    let p = policy(&topo, &test_policy(&[]));
    let report = "id -u; id -g; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status";
    let run = |args: &[&str], sudo: bool| -> (Output, Vec<String>) {
        let mut a = vec!["--policy", p.as_str()];
        a.extend(args);
        a.extend(["--", "sh", "-c", report]);
        let mut c = exec(&topo, &a);
        if sudo {
            as_nobody(&mut c);
        }
        let out = c.output().unwrap();
        let lines = out_text(&out).0.lines().map(str::to_string).collect();
        (out, lines)
    };
    // Under sudo (SUDO_UID/SUDO_GID): that user, no capabilities at all, no_new_privs.
    let (out, l) = run(&[], true);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(l[..2], ["65534", "65534"], "{l:?}");
    assert!(
        l.contains(&"CapEff:\t0000000000000000".to_string()),
        "{l:?}"
    );
    assert!(
        l.contains(&"CapBnd:\t0000000000000000".to_string()),
        "{l:?}"
    );
    assert!(l.contains(&"NoNewPrivs:\t1".to_string()), "{l:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    // --user, by name and by numbers; it wins over SUDO_UID.
    for (spec, uid, gid) in [
        ("nobody", "65534", "65534"),
        ("65534:0", "65534", "0"),
        ("daemon", "1", "1"),
    ] {
        let (out, l) = run(&["--user", spec], true);
        assert!(out.status.success(), "{spec}: {out:?}");
        assert_eq!(l[..2], [uid, gid], "--user {spec}: {l:?}");
    }
    // Root, by choice or by default: said once on stderr, and the bounding set is the
    // documented one.
    let want_bnd = format!(
        "CapBnd:\t{:016x}",
        egress_agent::sandbox::user::mask(egress_agent::sandbox::user::ROOT_CAPABILITIES)
    );
    for (args, why) in [
        (&["--user", "root"][..], "--user root"),
        (&[][..], "no SUDO_UID"),
    ] {
        let (out, l) = run(args, false);
        let (_, err) = out_text(&out);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(l[0], "0");
        assert!(l.contains(&want_bnd), "{l:?} want {want_bnd}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("runs as root") && err.contains(why), "{err}");
    }

    // A setuid-root copy of id: root's without no_new_privs, the user's under exec.
    let suid = topo.workdir().join("suid-id");
    std::fs::copy("/usr/bin/id", &suid).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"])
        .arg(&suid)
        .arg("-u")
        .output()
        .unwrap();
    assert_eq!(
        out_text(&out).0.trim(),
        "0",
        "setuid without the boundary: {out:?}"
    );
    let mut c = exec(&topo, &["--policy", &p, "--", suid.to_str().unwrap(), "-u"]);
    let out = as_nobody(&mut c).output().unwrap();
    let blocked = out.status.success() && out_text(&out).0.trim() == NOBODY;
    threat("F", "regain root through a setuid-root binary", blocked);
    assert!(blocked, "{out:?}");

    // A working directory the user cannot enter: one line, exit 2, nothing started.
    let private = topo.workdir().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let marker = topo.workdir().join("cwd-marker");
    let mut c = exec(
        &topo,
        &["--policy", &p, "--", "touch", marker.to_str().unwrap()],
    );
    let out = as_nobody(&mut c).current_dir(&private).output().unwrap();
    let (_, err) = out_text(&out);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("is not accessible to uid 65534"), "{err}");
    assert!(!marker.exists());
}

#[test]
fn set_up_failures_are_one_line_and_nothing_runs() {
    require_root!();
    let topo = Topology::new("boundary_refusals");
    let p = policy(&topo, &test_policy(&[]));
    let marker = topo.workdir().join("started");
    let marker_s = marker.to_str().unwrap().to_string();
    let check = |mut c: Command, want: &str, what: &str| {
        let child = as_nobody(&mut c)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        let (_, err) = out_text(&out);
        let ok = out.status.code() == Some(2)
            && err.lines().count() == 1
            && err.contains(want)
            && !marker.exists();
        if let Some(attack) = what.strip_prefix("F:") {
            threat("F", attack, ok);
        }
        assert!(
            ok,
            "{what}: want exit 2 and one line with {want:?}: {out:?}"
        );
        assert!(!exec_cgroup(pid).exists(), "{what}: cgroup left");
    };
    // Unknown users and groups: decided before anything exists.
    for (spec, want) in [
        ("no-such-user-x", "--user no-such-user-x: no such user"),
        ("nobody:no-such-group-x", "no such group"),
        ("4242", "has no passwd entry"),
    ] {
        let c = exec(
            &topo,
            &["--policy", &p, "--user", spec, "--", "touch", &marker_s],
        );
        check(c, want, spec);
    }
    // A namespace or a mount the kernel refuses (a seccomp filter on the agent: unlike
    // the user.max_*_namespaces sysctls it touches no other process on the machine).
    let probe = bin_path("probe");
    for (deny, want) in [
        (
            &["--deny-unshare", "0x02000000"][..],
            "(unshare(CLONE_NEWCGROUP)): Operation not permitted",
        ),
        (
            &["--deny-unshare", "0x00020000"][..],
            "(unshare(CLONE_NEWNS)): Operation not permitted",
        ),
        (
            &["--deny-unshare", "0x20000000"][..],
            "(unshare(CLONE_NEWPID)): Operation not permitted",
        ),
        (
            &["--deny-mount"][..],
            "(making the mount namespace private): Operation not permitted",
        ),
    ] {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", topo.ctr_netns_path().display()))
            .arg(&probe)
            .arg("seccomp-exec")
            .args(deny)
            .arg("--")
            .arg(bin_path("egress-agent"))
            .args(["exec", "--policy", &p, "--", "touch", &marker_s]);
        let reference = exec(&topo, &[]);
        for (k, v) in reference.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c.current_dir(topo.workdir()).stdin(Stdio::null());
        check(
            c,
            want,
            &format!(
                "F:run without the isolation the kernel refused ({})",
                deny.join(" ")
            ),
        );
    }
}

#[test]
fn the_unprivileged_command_keeps_its_exit_status_and_leaves_nothing_behind() {
    require_root!();
    let topo = Topology::new("boundary_exit");
    let _net = topo.start_fakenet();
    let p = policy(&topo, &test_policy(&[]));
    // Exit status, allowed traffic, and a background process left behind: killed with the
    // namespace when the command exits.
    let script = "sleep 1234.5 & curl -sS --max-time 10 http://allowed.test/ >/dev/null && echo FETCHED; exit 3";
    let mut c = exec(&topo, &["--policy", &p, "--", "sh", "-c", script]);
    let out = as_nobody(&mut c).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(out_text(&out).0.contains("FETCHED"), "{out:?}");
    let left = pids_running(&["sleep", "1234.5"]);
    threat(
        "F",
        "leave a process running after the command exits",
        left.is_empty(),
    );
    assert!(left.is_empty(), "left running: {left:?}");

    // SIGTERM, SIGINT and SIGHUP to exec: the command gets them, exec exits 128+N, nothing
    // is left (with --netns as well).
    for (sig, netns) in [
        (libc::SIGTERM, false),
        (libc::SIGINT, true),
        (libc::SIGHUP, false),
    ] {
        let mut args = vec!["--policy", p.as_str()];
        if netns {
            args.push("--netns");
        }
        args.extend(["--", "sh", "-c", "sleep 1234.6 & exec sleep 1234.7"]);
        let mut c = exec(&topo, &args);
        let mut child = RunningExec(as_nobody(&mut c).stdout(Stdio::null()).spawn().unwrap());
        wait_for("the command", Duration::from_secs(10), || {
            !pids_running(&["sleep", "1234.7"]).is_empty()
                && !pids_running(&["sleep", "1234.6"]).is_empty()
        });
        // Both sleeps run as nobody, in the exec's cgroup.
        let inner = pids_running(&["sleep", "1234.7"])[0];
        let status = std::fs::read_to_string(format!("/proc/{inner}/status")).unwrap();
        assert!(
            status.contains("Uid:\t65534\t65534\t65534\t65534"),
            "{status}"
        );
        assert!(exec_cgroup(child.pid()).exists());
        egress_tests::sys::kill(child.pid() as i32, sig).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let st = loop {
            if let Some(st) = child.0.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "exec did not exit after {sig}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(st.code(), Some(128 + sig), "signal {sig}");
        assert!(
            pids_running(&["sleep", "1234.6"]).is_empty(),
            "background process left"
        );
        assert!(!exec_cgroup(child.pid()).exists(), "cgroup left");
    }
}

/// `--trust-ca` as the unprivileged user: clients trust the inspection through the system
/// store, without any variable (wget, python, curl, openssl, Java), and through the
/// variables exec sets (curl, python, node).
#[test]
fn trust_ca_works_for_the_user_through_the_system_store() {
    require_root!();
    let topo = Topology::new("boundary_trust");
    let net = topo.start_fakenet();
    let secret_file = topo.workdir().join("inject-secret");
    std::fs::write(&secret_file, FILE_SECRET).unwrap();
    let p = policy(&topo, &inject_policy(&net, &secret_file));
    let url = "https://api.allowed.test/v1/trust";
    let java_src = topo.workdir().join("Get.java");
    std::fs::write(
        &java_src,
        "public class Get { public static void main(String[] a) throws Exception {\n\
         var c = java.net.http.HttpClient.newHttpClient();\n\
         var r = c.send(java.net.http.HttpRequest.newBuilder(java.net.URI.create(a[0])).build(), java.net.http.HttpResponse.BodyHandlers.ofString());\n\
         System.out.println(r.statusCode()); } }\n",
    )
    .unwrap();
    let bare = format!("env -i PATH={PATH}");
    // (client, program, command, what its output shows on success)
    let all: Vec<(&str, &str, String, &str)> = vec![
        (
            "python urllib (system store)",
            "python3",
            format!("{bare} /usr/bin/python3 -c \"import urllib.request;print(urllib.request.urlopen('{url}').read().decode())\""),
            "x-api-key",
        ),
        (
            "curl (system store)",
            "curl",
            format!("{bare} curl -sS --max-time 10 --noproxy '*' {url}"),
            "x-api-key",
        ),
        (
            "wget/GnuTLS (system store)",
            "wget",
            format!("{bare} wget -qO- {url}"),
            "x-api-key",
        ),
        (
            "openssl s_client (system store)",
            "openssl",
            format!("echo | {bare} openssl s_client -connect api.allowed.test:443 -servername api.allowed.test -verify_return_error -brief 2>&1"),
            "Verification: OK",
        ),
        (
            "java HttpClient (cacerts, no JAVA_TOOL_OPTIONS)",
            "java",
            format!("{bare} java -XX:-UsePerfData {} {url}", java_src.display()),
            "200",
        ),
        (
            "curl (variables)",
            "curl",
            format!("curl -sS --max-time 10 --noproxy '*' {url}"),
            "x-api-key",
        ),
        (
            "python urllib (variables)",
            "python3",
            format!("/usr/bin/python3 -c \"import urllib.request;print(urllib.request.urlopen('{url}').read().decode())\""),
            "x-api-key",
        ),
        (
            "node fetch (NODE_EXTRA_CA_CERTS)",
            "node",
            format!("node -e \"fetch('{url}').then(r=>r.text()).then(t=>console.log(t)).catch(e=>{{console.error(e);process.exit(1)}})\""),
            "x-api-key",
        ),
    ];
    let installed = |prog: &str| {
        Command::new("sh")
            .args(["-c", &format!("PATH={PATH} command -v {prog}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let clients: Vec<(&str, String, &str)> = all
        .into_iter()
        .filter(|(name, prog, _, _)| {
            let ok = installed(prog);
            if !ok {
                eprintln!("{prog} not installed: {name} skipped");
            }
            ok
        })
        .map(|(name, _, cmd, want)| (name, cmd, want))
        .collect();
    let run = |trust: bool, cmd: &str| {
        let mut args = vec!["--policy", p.as_str()];
        if trust {
            args.push("--trust-ca");
        }
        args.extend(["--", "sh", "-c", cmd]);
        let mut c = exec(&topo, &args);
        c.env("TEST_API_TOKEN", ENV_SECRET);
        as_nobody(&mut c).output().unwrap()
    };
    // The set-up is real: without --trust-ca the system-store clients reject our CA.
    for (name, cmd, _) in clients.iter().filter(|c| c.0.contains("system store")) {
        let out = run(false, cmd);
        assert!(
            !out.status.success(),
            "{name} trusted the inspection without --trust-ca: {out:?}"
        );
    }
    for (name, cmd, want) in &clients {
        let out = run(true, cmd);
        let (o, _) = out_text(&out);
        assert!(out.status.success() && o.contains(want), "{name}: {out:?}");
    }
    // The trust files are the user's to read; the key is nowhere.
    let out = run(
        true,
        "cat /etc/ssl/certs/egress-agent/ca.pem \"$SSL_CERT_FILE\" >/dev/null && echo READABLE; ls -A \"$EGRESS_STATE_DIR\"",
    );
    let (o, _) = out_text(&out);
    assert!(o.contains("READABLE"), "{out:?}");
    assert_eq!(
        o.lines().last(),
        Some("trust"),
        "state directory shows more than trust/: {o}"
    );
}

/// `--trust-ca` and NSS: the CA is in the command's view of `$HOME/.pki/nssdb` and nowhere
/// on disk; without certutil, one warning says so and the command still runs.
#[test]
fn trust_ca_adds_the_ca_to_the_nss_database_in_the_namespace_only() {
    require_root!();
    let topo = Topology::new("boundary_nss");
    let p = policy(&topo, &test_policy(&[]));
    let home = topo.workdir().join("home");
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let list = "certutil -L -d sql:$HOME/.pki/nssdb";
    let have_certutil = Command::new("certutil").arg("-H").output().is_ok();
    if have_certutil {
        let out = Command::new("certutil")
            .args(["-N", "--empty-password", "-d"])
            .arg(format!("sql:{}", db.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    } else {
        eprintln!("certutil not installed (Debian: libnss3-tools): checking the warning only");
    }
    let out = exec(
        &topo,
        &[
            "--policy",
            &p,
            "--trust-ca",
            "--user",
            "root",
            "--",
            "sh",
            "-c",
            &format!("{list} || true"),
        ],
    )
    .env("HOME", &home)
    .output()
    .unwrap();
    let (o, e) = out_text(&out);
    assert!(out.status.success(), "{out:?}");
    if have_certutil {
        assert!(o.contains("egress-agent inspection CA"), "{o}\n{e}");
        let after = Command::new("sh")
            .args(["-c", list])
            .env("HOME", &home)
            .output()
            .unwrap();
        assert!(
            !out_text(&after).0.contains("egress-agent"),
            "the database on disk changed: {after:?}"
        );
    } else {
        assert!(e.contains("certutil is not installed"), "{e}");
    }
}

/// `attach_check`: a plain root process on the host holds everything a container must not;
/// the command under exec holds none of it.
#[test]
fn attach_warnings_name_what_breaks_the_guarantees() {
    require_root!();
    let topo = Topology::new("boundary_attach");
    let p = policy(&topo, &test_policy(&[]));
    // A live control socket where exec() tells the agent it is (EGRESS_CONTROL).
    let control = topo.workdir().join("control.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&control).unwrap();
    let control = control.as_path();
    let host = Victim::start("x");
    let w = egress_agent::sandbox::attach_check::boundary_warnings(host.0.id(), control).join("\n");
    for want in [
        "shares the host's pid namespace",
        "holds CAP_SYS_ADMIN",
        "holds CAP_NET_RAW",
        "can reach the agent's control socket",
    ] {
        assert!(w.contains(want), "{want}: {w}");
    }
    let mut c = exec(&topo, &["--policy", &p, "--", "sleep", "1234.8"]);
    let child = RunningExec(as_nobody(&mut c).spawn().unwrap());
    wait_for("the command", Duration::from_secs(10), || {
        !pids_running(&["sleep", "1234.8"]).is_empty()
    });
    let pid = pids_running(&["sleep", "1234.8"])[0];
    let w = egress_agent::sandbox::attach_check::boundary_warnings(pid, control);
    drop(child);
    assert_eq!(w, Vec::<String>::new());
}
