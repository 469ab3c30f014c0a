//! `egress-agent exec` (DESIGN.md §9): the command's exit status passes through, its traffic is
//! enforced, and nothing is left behind — no cgroup under `<cg2>/egress-agent.exec/`, no pin under
//! `/sys/fs/bpf/egress-agent/`, no network namespace, no listener — also after SIGTERM / Ctrl-C.
//! exec runs inside the test's ctr-* namespace so that its upstream dials reach the fake internet.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use egress_tests::{agent::test_policy, bin_path, cgroup2_root, require_root, topology::Topology};

/// `nsenter --net=<ctr netns> egress-agent exec ARGS` (no cgroup change: exec makes its own).
fn exec_cmd(topo: &Topology, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", topo.ctr_netns_path().display()))
        .arg(bin_path("egress-agent"))
        .arg("exec")
        .args(args)
        .stdin(Stdio::null());
    c
}

fn policy_file(topo: &Topology) -> String {
    let p = topo.workdir().join("exec-policy.toml");
    std::fs::write(&p, test_policy(&[])).unwrap();
    p.to_str().unwrap().to_string()
}

/// A shell prologue that prints the command's cgroup path, cgroup id and netns inode.
const WHOAMI: &str = r#"cg=$(sed -n 's/^0:://p' /proc/self/cgroup); echo "CG=$cg"; echo "CGID=$(stat -c %i "$CG2$cg")"; echo "NETNS=$(readlink /proc/self/ns/net)";"#;

struct Seen {
    /// The cgroup as the command sees it: "/" (its cgroup namespace is rooted at it).
    cgroup: String,
    cgroup_id: String,
    netns: String,
}

fn seen(out: &str) -> Seen {
    let get = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in {out:?}"))
            .to_string()
    };
    Seen {
        cgroup: get("CG"),
        cgroup_id: get("CGID"),
        netns: get("NETNS"),
    }
}

/// exec's cgroup, found by the id the command saw: `<cg2>/egress-agent.exec/<exec pid>`.
fn exec_cgroup(id: &str) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dir = cgroup2_root().unwrap().join("egress-agent.exec");
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.ino().to_string() == id))
}

fn assert_nothing_left(topo: &Topology, s: &Seen) {
    assert_eq!(s.cgroup, "/", "the command sees its own cgroup only");
    assert_eq!(
        exec_cgroup(&s.cgroup_id),
        None,
        "cgroup {} left",
        s.cgroup_id
    );
    let pin = PathBuf::from("/sys/fs/bpf/egress-agent").join(&s.cgroup_id);
    assert!(!pin.exists(), "pin {} left", pin.display());
    // No process lives in that network namespace any more (an anonymous netns dies with them).
    let holders = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path().join("ns/net"))
                .map(|l| l.to_string_lossy() == s.netns)
                .unwrap_or(false)
        })
        .count();
    if s.netns
        != std::fs::read_link(topo.ctr_netns_path())
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default()
    {
        assert_eq!(holders, 0, "netns {} still held", s.netns);
    }
    // No listener of the agent is left in the container's namespace.
    let ss = Command::new("nsenter")
        .arg(format!("--net={}", topo.ctr_netns_path().display()))
        .args(["ss", "-Hltun"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ss.stdout).trim(),
        "",
        "listeners left"
    );
}

fn run(mut cmd: Command) -> Output {
    cmd.env("CG2", cgroup2_root().unwrap()).output().unwrap()
}

#[test]
fn exec_passes_the_exit_status_through_enforces_and_leaves_nothing() {
    require_root!();
    let topo = Topology::new("exec_status");
    let _net = topo.start_fakenet();
    let policy = policy_file(&topo);

    let out = run(exec_cmd(
        &topo,
        &["--policy", &policy, "--", "sh", "-c", "exit 7"],
    ));
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let out = run(exec_cmd(&topo, &["--allow", "allowed.test", "--", "true"]));
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // Allowed and denied traffic of the command, seen by curl.
    let script = format!(
        "{WHOAMI} curl -sS --max-time 10 http://allowed.test/; echo; \
         curl -sS --max-time 10 -o /dev/null -w 'DENIED=%{{http_code}}\\n' --resolve other.test:80:198.51.100.11 http://other.test/; \
         curl -sS --max-time 5 -o /dev/null -w 'NAME=%{{http_code}}\\n' http://other.test/; exit 3"
    );
    let out = run(exec_cmd(
        &topo,
        &["--policy", &policy, "--", "sh", "-c", &script],
    ));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(text.contains("\"host\":\"allowed.test\""), "{text}");
    assert!(text.contains("DENIED=403"), "{text}");
    // The denied name resolves to the agent, which refuses the request it names (403).
    assert!(text.contains("NAME=403"), "{text}");
    // exec's stderr said so, one line per denial (other.test's A, AAAA and request are one).
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("egress-agent: denied other.test"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("host_not_allowed"), "{stderr}");
    assert_nothing_left(&topo, &seen(&text));

    // --allow has no address exemptions: the TEST-NET address itself is refused in the kernel
    // (EPERM at connect, curl exit 7), whatever the name.
    let script = format!(
        "{WHOAMI} curl -sS --max-time 10 --resolve other.test:80:198.51.100.11 http://other.test/ || echo CONNECT=$?"
    );
    let out = run(exec_cmd(
        &topo,
        &["--allow", "allowed.test", "--", "sh", "-c", &script],
    ));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("CONNECT=7"), "{text} {out:?}");
    assert_nothing_left(&topo, &seen(&text));
}

#[test]
fn exec_with_netns_gives_the_command_only_loopback_and_the_agent() {
    require_root!();
    let topo = Topology::new("exec_netns");
    let _net = topo.start_fakenet();
    let policy = policy_file(&topo);
    let script = format!(
        "{WHOAMI} echo LINKS=$(ip -o link show | awk -F': ' '{{print $2}}'); \
         curl -sS --max-time 10 http://allowed.test/; echo; \
         curl -sS --max-time 10 -o /dev/null -w 'DENIED=%{{http_code}}\\n' -H 'Host: other.test' http://198.51.100.11/"
    );
    let out = run(exec_cmd(
        &topo,
        &["--netns", "--policy", &policy, "--", "sh", "-c", &script],
    ));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("LINKS=lo \n") || text.contains("LINKS=lo\n"),
        "{text}"
    );
    assert!(text.contains("\"host\":\"allowed.test\""), "{text}");
    assert!(text.contains("DENIED=403"), "{text}");
    let s = seen(&text);
    let ctr = std::fs::read_link(topo.ctr_netns_path()).ok();
    assert_ne!(Some(PathBuf::from(&s.netns)), ctr, "not a fresh namespace");
    assert_nothing_left(&topo, &s);
}

#[test]
fn sigterm_and_ctrl_c_to_exec_clean_up() {
    require_root!();
    let topo = Topology::new("exec_signals");
    let policy = policy_file(&topo);
    for (sig, code) in [(libc::SIGTERM, 128 + 15), (libc::SIGINT, 128 + 2)] {
        let out_file = topo.workdir().join(format!("exec-{sig}.out"));
        let script = format!("{WHOAMI} exec sleep 30");
        let mut child = exec_cmd(
            &topo,
            &["--netns", "--policy", &policy, "--", "sh", "-c", &script],
        )
        .env("CG2", cgroup2_root().unwrap())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .spawn()
        .unwrap();
        // Wait for the command to be running under enforcement.
        let deadline = Instant::now() + Duration::from_secs(10);
        let text = loop {
            let t = std::fs::read_to_string(&out_file).unwrap_or_default();
            if t.contains("NETNS=") {
                break t;
            }
            assert!(Instant::now() < deadline, "exec did not start: {t:?}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let s = seen(&text);
        assert!(exec_cgroup(&s.cgroup_id).is_some());
        std::thread::sleep(Duration::from_millis(200));
        // nsenter execs egress-agent: the child's pid is the agent's.
        unsafe { libc::kill(child.id() as i32, sig) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "exec did not exit after signal {sig}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(code), "signal {sig}: {status:?}");
        assert_nothing_left(&topo, &s);
    }
}
