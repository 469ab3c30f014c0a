//! The real-runtime harnesses, proven with NO enforcer: podman (runc), Docker (dockerd from
//! Debian) and containerd (CRI, driven like a kubelet). For each, a container whose entrypoint's
//! first action is a connect to the fake metadata server reaches it (the "first instruction" race
//! of issues 12/13 is real: nothing stands between `run` and that connect), and so do its requests
//! to a denied and an allowed host; `--network none` has no network at all; the hook points the
//! enforcer will use (podman hooks.d, Docker `--add-runtime`, containerd `BinaryName` +
//! `pod_annotations`) are exercised; and every instance leaves nothing behind.
//!
//! Printed (`--nocapture`): per runtime, `run` → first connection at the metadata server (p50/max)
//! and the per-container cost (wall, CPU of the runtime's whole cgroup subtree).
//!
//! Needs podman, runc, docker.io, containerd, containernetworking-plugins, busybox-static (skipped
//! with a message without them, except under CI=true); crun where it runs.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use egress_tests::runtimes::containerd::{Containerd, ContainerdOpts, Handler, PodOpts};
use egress_tests::runtimes::docker::{Docker, DockerOpts};
use egress_tests::runtimes::podman::{crun_usable, Podman, RUNC};
use egress_tests::runtimes::{
    cpu_usage, is_hybrid_cgroups, metadata_arrival, mounts_under, percentile, LoggingWrapper, Net,
    RunSpec, Runtime, Started,
};
use egress_tests::{require_root, topology::Topology, FakeNet};

/// Runs of the first-instruction container per runtime (each must reach the metadata server).
const RUNS: usize = 5;
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// One runtime at a time: on 2 shared cores, overlapping daemons would distort the timings.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn same_netns(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    id(a).is_some() && id(a) == id(b)
}

/// The topology's island property, checked on the routing tables (no packet sent): up-* has no
/// default route and the node (ctr-*) has no interface but loopback, its link to up-*, and what
/// `allowed` names (the CNI bridge and its veths).
fn assert_no_way_out(topo: &Topology, allowed: &[&str]) {
    let o = std::process::Command::new("ip")
        .args(["-n", &topo.up_netns(), "route", "show", "default"])
        .output()
        .unwrap();
    assert!(o.stdout.is_empty(), "up-* has a default route: {o:?}");
    let o = std::process::Command::new("ip")
        .args(["-n", &topo.ctr_netns(), "-o", "link", "show"])
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let name = line.split(':').nth(1).unwrap_or("").trim();
        let name = name.split('@').next().unwrap_or(name);
        assert!(
            ["lo", "eth0"].contains(&name) || allowed.iter().any(|a| name.starts_with(a)),
            "unexpected interface in the node netns: {line}"
        );
    }
}

/// After a harness is dropped: its directory, mounts, cgroups and processes are gone.
fn assert_nothing_left(dir: &Path, cgroup_subtree: &Path) {
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(
        mounts_under(dir).is_empty(),
        "mounts left under {}",
        dir.display()
    );
    assert!(
        !cgroup_subtree.exists(),
        "cgroup {} left",
        cgroup_subtree.display()
    );
    let needle = dir.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(
            !cmdline.contains(&needle),
            "process {} left: {cmdline}",
            e.file_name().to_string_lossy()
        );
    }
}

/// Starts the first-instruction container `RUNS` times, asserts each reached the metadata server
/// (and the denied and allowed hosts), prints the timings. `peer_of`: which peer address fakenet
/// sees for a container (None: any).
fn race_is_real(
    rt: &dyn Runtime,
    fake: &FakeNet,
    subtree: &Path,
    spec: impl Fn(usize) -> RunSpec,
    check: impl Fn(&Started),
) {
    let mut arrivals = Vec::new();
    let mut starts = Vec::new();
    let mut walls = Vec::new();
    // Runs whose first connection reached the metadata server before the start call returned.
    let mut before_return = 0;
    let cpu0 = cpu_usage(subtree);
    for i in 0..RUNS {
        let t = Instant::now();
        let c = rt
            .start(&spec(i))
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", rt.kind(), rt.diagnostics()));
        let report = rt.wait_report(&c, REPORT_TIMEOUT);
        assert!(
            report.metadata_leaked(),
            "{} run {i}: the entrypoint's first connect reached the metadata server: {:?}",
            rt.kind(),
            report.metadata
        );
        assert!(report.denied_reached(), "{:?}", report.denied);
        assert!(report.allowed_ok(), "{:?}", report.allowed);
        let arrival = metadata_arrival(fake, c.t0, c.ip)
            .unwrap_or_else(|| panic!("fakenet logged no metadata connection for {}", c.name));
        assert!(
            c.cgroup.starts_with(rt.cgroup_parent_path()),
            "{} not under {}",
            c.cgroup.display(),
            rt.cgroup_parent_path().display()
        );
        check(&c);
        before_return += usize::from(arrival <= c.start_took);
        arrivals.push(arrival);
        starts.push(c.start_took);
        rt.remove(&c);
        walls.push(t.elapsed());
    }
    let cpu = cpu_usage(subtree).saturating_sub(cpu0);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "RUNTIME {}: run → first connection at the metadata server: p50 {:.0} ms, max {:.0} ms; \
         start call p50 {:.0} ms (returned after the connection arrived: {before_return}/{RUNS}); \
         per container (start + report + remove): wall p50 {:.0} ms, CPU {:.0} ms ({RUNS} runs)",
        rt.kind(),
        ms(percentile(&arrivals, 50)),
        ms(percentile(&arrivals, 100)),
        ms(percentile(&starts, 50)),
        ms(percentile(&walls, 50)),
        ms(cpu) / RUNS as f64,
    );
}

/// A container started with `--network none`: its first connect fails with ENETUNREACH.
fn no_network(rt: &dyn Runtime, spec: RunSpec) {
    let c = rt.start(&spec.net(Net::None)).unwrap();
    let r = rt.wait_report(&c, REPORT_TIMEOUT);
    assert!(!r.metadata_leaked(), "{:?}", r.metadata);
    assert_eq!(
        r.metadata_errno(),
        Some(libc::ENETUNREACH),
        "{:?}",
        r.metadata
    );
    assert!(!r.allowed_ok(), "{:?}", r.allowed);
    rt.remove(&c);
}

/// An OCI hook (hooks.d JSON) that copies the OCI state it reads on stdin to `out_dir`, for
/// containers annotated `egress-agent.io/profile`, at `createRuntime`.
fn install_state_recording_hook(hooks_dir: &Path, out_dir: &Path) -> PathBuf {
    let script = out_dir.join("record-state.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ncat > '{}/state.'$$'.json'\n", out_dir.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let hook = serde_json::json!({
        "version": "1.0.0",
        "hook": {"path": script, "args": ["record-state.sh"]},
        "when": {"annotations": {"^egress-agent\\.io/profile$": ".+"}},
        "stages": ["createRuntime"],
    });
    std::fs::write(hooks_dir.join("egress-test.json"), hook.to_string()).unwrap();
    script
}

fn recorded_states(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("state."))
        .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
        .collect()
}

#[test]
fn podman_runc_first_instruction_reaches_metadata_without_enforcement() {
    require_root!();
    if !Podman::tools_present() {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("rt_podman");
    let fake = topo.start_fakenet();
    let podman = Podman::new(&topo);
    let (dir, subtree) = (
        podman.scratch().dir().to_path_buf(),
        podman.scratch().subtree(),
    );
    let states = topo.workdir().join("hook-states");
    std::fs::create_dir_all(&states).unwrap();
    install_state_recording_hook(&podman.hooks_dir(), &states);

    race_is_real(
        &podman,
        &fake,
        &subtree,
        |i| RunSpec::first_instruction(&format!("first-{i}")),
        |c| assert!(same_netns(&c.netns_path(), &topo.ctr_netns_path())),
    );
    assert!(
        recorded_states(&states).is_empty(),
        "the hook ran for containers without the annotation"
    );

    // The hooks.d point: an annotated container runs the hook at createRuntime, with the
    // container's pid (its namespaces exist) and annotations in the state.
    let c = podman
        .start(
            &RunSpec::first_instruction("hooked").annotation("egress-agent.io/profile", "default"),
        )
        .unwrap();
    let r = podman.wait_report(&c, REPORT_TIMEOUT);
    assert!(
        r.metadata_leaked(),
        "the hook does nothing: {:?}",
        r.metadata
    );
    let st = recorded_states(&states);
    assert_eq!(st.len(), 1, "{st:?}");
    assert_eq!(st[0]["id"], c.id.as_str());
    assert_eq!(st[0]["status"], "creating");
    assert_eq!(st[0]["pid"], c.pid);
    assert_eq!(st[0]["annotations"]["egress-agent.io/profile"], "default");
    podman.remove(&c);

    no_network(&podman, RunSpec::first_instruction("none"));
    assert_no_way_out(&topo, &[]);
    drop(podman);
    assert_nothing_left(&dir, &subtree);
}

#[test]
fn crun_runs_or_is_refused_with_its_own_reason() {
    require_root!();
    let crun = egress_tests::runtimes::podman::CRUN;
    if !Podman::tools_present() || !egress_tests::runtimes::tools_present("crun", &[crun]) {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("rt_crun");
    match crun_usable(&topo) {
        Ok(()) => assert!(!is_hybrid_cgroups(), "crun 1.8 ran on a hybrid cgroup host"),
        Err(reason) => {
            assert!(is_hybrid_cgroups(), "crun refused a unified host: {reason}");
            assert!(
                reason.contains("cgroups in hybrid mode not supported"),
                "{reason}"
            );
            eprintln!("SKIPPED crun: {reason}");
        }
    }
}

#[test]
fn docker_first_instruction_reaches_metadata_without_enforcement() {
    require_root!();
    if !Docker::tools_present() {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("rt_docker");
    let fake = topo.start_fakenet();
    let wrap = LoggingWrapper::create(topo.workdir(), "egress-wrap", Path::new(RUNC));
    let docker = Docker::start_with(
        &topo,
        DockerOpts {
            runtimes: vec![("egress-wrap".into(), wrap.path())],
            ..Default::default()
        },
    );
    let (dir, subtree) = (
        docker.scratch().dir().to_path_buf(),
        docker.scratch().subtree(),
    );
    race_is_real(
        &docker,
        &fake,
        &subtree,
        |i| RunSpec::first_instruction(&format!("first-{i}")),
        |c| assert!(same_netns(&c.netns_path(), &topo.ctr_netns_path())),
    );
    assert!(wrap.invocations().is_empty(), "{:?}", wrap.invocations());

    // The --add-runtime point: `--runtime egress-wrap` runs the wrapper for every verb, `create`
    // with the bundle whose config.json the real wrapper will edit; it stays transparent.
    let c = docker
        .start(&RunSpec::first_instruction("wrapped").runtime("egress-wrap"))
        .unwrap();
    let r = docker.wait_report(&c, REPORT_TIMEOUT);
    assert!(r.metadata_leaked(), "{:?}", r.metadata);
    let calls = wrap.invocations();
    assert!(
        calls
            .iter()
            .any(|l| l.contains(" create ") && l.contains("--bundle") && l.contains(&c.id)),
        "{calls:?}"
    );
    let configs = wrap.configs();
    let (_, cfg) = configs
        .iter()
        .find(|(id, _)| *id == c.id)
        .unwrap_or_else(|| panic!("no config.json for {}: {configs:?}", c.id));
    assert!(
        cfg["linux"]["cgroupsPath"]
            .as_str()
            .unwrap()
            .starts_with(&docker.scratch().cgroup_parent()),
        "{}",
        cfg["linux"]["cgroupsPath"]
    );
    docker.remove(&c);
    assert!(wrap.invocations().iter().any(|l| l.contains(" delete ")));

    no_network(&docker, RunSpec::first_instruction("none"));
    assert_no_way_out(&topo, &[]);
    drop(docker);
    assert_nothing_left(&dir, &subtree);
}

#[test]
fn containerd_cri_pod_first_instruction_reaches_metadata_without_enforcement() {
    require_root!();
    if !Containerd::tools_present() {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("rt_containerd");
    let fake = topo.start_fakenet();
    let wrap = LoggingWrapper::create(topo.workdir(), "egress-wrap", Path::new(RUNC));
    let ctd = Containerd::start_with(
        &topo,
        ContainerdOpts {
            handlers: vec![Handler::wrapper("egress", &wrap.path())],
        },
    );
    let (dir, subtree) = (ctd.scratch().dir().to_path_buf(), ctd.scratch().subtree());
    let v = ctd.cri().version().unwrap();
    assert_eq!(v.runtime_name, "containerd");
    let events = ctd.cri().container_events();
    eprintln!(
        "CRI: {} {} (API {}), GetContainerEvents: {:?}",
        v.runtime_name,
        v.runtime_version,
        v.runtime_api_version,
        events.as_ref().map_err(|e| e.to_string())
    );
    // containerd 1.6 has no CRI event stream: discovery must list (1.7 added it).
    if v.runtime_version.starts_with("1.6") {
        let e = events.expect_err("containerd 1.6 serves GetContainerEvents");
        assert!(e.to_string().contains("Unimplemented"), "{e}");
    }

    race_is_real(
        &ctd,
        &fake,
        &subtree,
        |i| RunSpec::first_instruction(&format!("first-{i}")),
        |c| {
            let sid = c.sandbox_id.as_deref().unwrap();
            // What a node agent reads: the pod in the list with its annotations, the sandbox's
            // pid / netns / cgroup in the verbose status.
            let pods = ctd.cri().list_pod_sandbox().unwrap();
            assert!(pods.iter().any(|p| p.id == sid), "{pods:?}");
            let info = ctd.cri().sandbox_info(sid).unwrap();
            let netns = info.netns.clone().expect("pod netns");
            assert!(netns.starts_with(&dir), "{}", netns.display());
            assert!(same_netns(&netns, &c.netns_path()));
            assert!(same_netns(
                &PathBuf::from(format!("/proc/{}/ns/net", info.pid)),
                &netns
            ));
            let cg = info.cgroups_path.unwrap();
            assert!(cg.starts_with(&ctd.scratch().cgroup_parent()), "{cg}");
            let ip = c.ip.expect("pod IP");
            assert!(ip.to_string().starts_with("10.202.0."), "{ip}");
        },
    );
    assert!(wrap.invocations().is_empty(), "{:?}", wrap.invocations());

    // The RuntimeClass point: handler `egress` runs the wrapper (BinaryName) for the sandbox and
    // the container, and its config.json carries the pod's egress-agent.io/* annotations (and no
    // other pod annotation).
    let spec = RunSpec::first_instruction("wrapped")
        .runtime("egress")
        .annotation("egress-agent.io/profile", "default")
        .annotation("example.com/other", "x");
    let c = ctd.start(&spec).unwrap();
    let r = ctd.wait_report(&c, REPORT_TIMEOUT);
    assert!(r.metadata_leaked(), "{:?}", r.metadata);
    let sid = c.sandbox_id.clone().unwrap();
    let st = ctd.cri().pod_sandbox_status(&sid, false).unwrap();
    let status = st.status.unwrap();
    assert_eq!(status.runtime_handler, "egress");
    assert_eq!(status.annotations["egress-agent.io/profile"], "default");
    let configs = wrap.configs();
    for id in [&sid, &c.id] {
        let (_, cfg) = configs
            .iter()
            .find(|(b, _)| b == id)
            .unwrap_or_else(|| panic!("the wrapper did not create {id}: {configs:?}"));
        assert_eq!(
            cfg["annotations"]["egress-agent.io/profile"], "default",
            "{id}"
        );
        assert!(cfg["annotations"].get("example.com/other").is_none());
    }
    ctd.remove(&c);
    let pods = ctd.cri().list_pod_sandbox().unwrap();
    assert!(pods.iter().all(|p| p.id != sid), "{pods:?}");

    // hostNetwork: the pod is in the node's netns (ctr-*) and reaches the metadata server too.
    let c = ctd
        .start(&RunSpec::first_instruction("hostnet").net(Net::Node))
        .unwrap();
    let r = ctd.wait_report(&c, REPORT_TIMEOUT);
    assert!(r.metadata_leaked(), "{:?}", r.metadata);
    assert!(same_netns(&c.netns_path(), &topo.ctr_netns_path()));
    ctd.remove(&c);

    assert_no_way_out(&topo, &["cni0", "veth"]);
    drop(ctd);
    assert_nothing_left(&dir, &subtree);
}

#[test]
fn containerd_systemd_cgroup_driver_needs_systemd_as_pid1() {
    require_root!();
    if !Containerd::tools_present() {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("rt_ctd_systemd");
    let _fake = topo.start_fakenet();
    let ctd = Containerd::start_with(
        &topo,
        ContainerdOpts {
            handlers: vec![Handler::systemd("runc-systemd")],
        },
    );
    let pid1 = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    let spec = RunSpec::first_instruction("systemd").runtime("runc-systemd");
    let opts = PodOpts {
        cgroup_parent: Some("egress_runtimes_test.slice".into()),
        ..Default::default()
    };
    match ctd.start_pod(&spec, &opts) {
        Ok(c) => {
            assert_eq!(
                pid1.trim(),
                "systemd",
                "the systemd driver worked without systemd"
            );
            ctd.remove(&c);
        }
        Err(e) => {
            assert_ne!(pid1.trim(), "systemd", "systemd is PID 1, yet: {e}");
            eprintln!(
                "SKIPPED systemd cgroup driver (PID 1 is {:?}): {e}",
                pid1.trim()
            );
        }
    }
}

/// Sizing figures for the scale tests (1,000 containers, 200 pods), not run by default:
/// `cargo test -p egress-tests --test runtimes -- --ignored --nocapture start_cost`
/// (`EGRESS_RT_RUNS`, default 30, per runtime; then the same number 4 at a time).
#[test]
#[ignore = "a measurement: run by hand to size the scale tests"]
fn start_cost_sequential_and_parallel() {
    require_root!();
    if !Podman::tools_present() || !Docker::tools_present() || !Containerd::tools_present() {
        return;
    }
    let _serial = serial();
    let runs: usize = std::env::var("EGRESS_RT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let topo = Topology::new("rt_cost");
    let fake = topo.start_fakenet();
    let measure = |rt: &(dyn Runtime + Sync), subtree: &Path| {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        // Sequential: start, first report, remove.
        let (cpu0, t) = (cpu_usage(subtree), Instant::now());
        let mut arrivals = Vec::new();
        for i in 0..runs {
            let c = rt
                .start(&RunSpec::first_instruction(&format!("seq-{i}")))
                .unwrap_or_else(|e| panic!("{e}\n{}", rt.diagnostics()));
            let r = rt.wait_report(&c, REPORT_TIMEOUT);
            assert!(r.metadata_leaked());
            arrivals.extend(metadata_arrival(&fake, c.t0, c.ip));
            rt.remove(&c);
        }
        let (seq_wall, seq_cpu) = (t.elapsed(), cpu_usage(subtree).saturating_sub(cpu0));
        // 4 at a time.
        let (cpu0, t) = (cpu_usage(subtree), Instant::now());
        std::thread::scope(|s| {
            for w in 0..4 {
                s.spawn(move || {
                    for i in (w..runs).step_by(4) {
                        let c = rt
                            .start(&RunSpec::first_instruction(&format!("par-{i}")))
                            .unwrap_or_else(|e| panic!("{e}"));
                        rt.wait_report(&c, REPORT_TIMEOUT);
                        rt.remove(&c);
                    }
                });
            }
        });
        let (par_wall, par_cpu) = (t.elapsed(), cpu_usage(subtree).saturating_sub(cpu0));
        eprintln!(
            "COST {}: {runs} sequential: {:.0} ms/container wall, {:.0} ms CPU, first connection \
             p50 {:.0} ms p99 {:.0} ms; 4 at a time: {:.0} ms/container wall, {:.0} ms CPU",
            rt.kind(),
            ms(seq_wall) / runs as f64,
            ms(seq_cpu) / runs as f64,
            ms(percentile(&arrivals, 50)),
            ms(percentile(&arrivals, 99)),
            ms(par_wall) / runs as f64,
            ms(par_cpu) / runs as f64,
        );
    };
    {
        let p = Podman::new(&topo);
        measure(&p, &p.scratch().subtree());
    }
    {
        let d = Docker::start(&topo);
        measure(&d, &d.scratch().subtree());
    }
    {
        let c = Containerd::start(&topo);
        measure(&c, &c.scratch().subtree());
    }
}

/// Starts one container in each runtime (`keep`: so they are running), returns their scratch dirs.
fn one_of_each(topo: &Topology, body: impl FnOnce(&[PathBuf])) {
    let p = Podman::new(topo);
    let d = Docker::start(topo);
    let c = Containerd::start(topo);
    let rts: [&dyn Runtime; 3] = [&p, &d, &c];
    for rt in rts {
        let started = rt.start(&RunSpec::first_instruction("left")).unwrap();
        rt.wait_report(&started, REPORT_TIMEOUT);
    }
    body(&[
        p.scratch().dir().to_path_buf(),
        d.scratch().dir().to_path_buf(),
        c.scratch().dir().to_path_buf(),
    ]);
}

/// What must be gone for topology `id`: scratch dirs, mounts, cgroups (v2 and v1), processes.
fn assert_id_clean(id: &str) {
    let tmp = std::env::temp_dir();
    for e in std::fs::read_dir(&tmp).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(&format!("egress-rt-{id}-")),
            "{name} left"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!("egress-rt-{id}-")),
        "mounts left: {mounts}"
    );
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let cg = h.path().join("egress-runtimes").join(id);
        assert!(!cg.exists(), "{} left", cg.display());
    }
    let cg2 = egress_tests::cgroup2_root().unwrap();
    assert!(!cg2.join("egress-runtimes").join(id).exists());
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(
            !cmdline.contains(&format!("egress-rt-{id}-")),
            "process left: {cmdline}"
        );
    }
}

#[test]
fn a_panicking_test_leaves_nothing_behind() {
    require_root!();
    if !Podman::tools_present() || !Docker::tools_present() || !Containerd::tools_present() {
        return;
    }
    let _serial = serial();
    let topo = Topology::new("rt_panic");
    let _fake = topo.start_fakenet();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        one_of_each(&topo, |dirs| {
            assert!(dirs.iter().all(|d| d.exists()));
            panic!("a test failing with three runtimes running");
        })
    }));
    assert!(r.is_err());
    assert_id_clean(topo.id());
}

/// The child half of `a_killed_test_is_cleaned_up_by_the_next_one` (does nothing unless asked).
#[test]
#[ignore = "run by a_killed_test_is_cleaned_up_by_the_next_one"]
fn killed_child() {
    if std::env::var_os("EGRESS_RT_KILLED_CHILD").is_none() {
        return;
    }
    let topo = Topology::new("rt_killed");
    let _fake = topo.start_fakenet();
    one_of_each(&topo, |_| {
        println!("READY {}", topo.id());
        std::thread::sleep(Duration::from_secs(300));
    });
}

#[test]
fn a_killed_test_is_cleaned_up_by_the_next_one() {
    require_root!();
    if !Podman::tools_present() || !Docker::tools_present() || !Containerd::tools_present() {
        return;
    }
    let _serial = serial();
    use std::io::BufRead;
    // Host-wide side effects (shim sockets, libcni's cache): back to what they were.
    let count = |d: &str| std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0);
    let shared = [
        "/run/containerd/s",
        "/var/lib/cni/results",
        "/run/docker/plugins",
    ];
    let before: Vec<usize> = shared.iter().map(|d| count(d)).collect();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "killed_child", "--ignored", "--nocapture"])
        .env("EGRESS_RT_KILLED_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(id) = line.strip_prefix("READY ") {
                let _ = tx.send(id.to_string());
            }
        }
    });
    let id = rx.recv_timeout(Duration::from_secs(180));
    let _ = child.kill();
    let _ = child.wait();
    let id = id.expect("the child started its runtimes");
    let tmp = std::env::temp_dir();
    let left = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("egress-rt-{id}-"))
        })
        .count();
    assert_eq!(left, 3, "SIGKILL left the three runtimes running");
    // What the next test's Topology::new and Scratch::new do.
    egress_tests::cleanup_stale();
    let removed = egress_tests::runtimes::cleanup_stale();
    assert_eq!(removed.len(), 3, "{removed:?}");
    assert_id_clean(&id);
    assert!(!Path::new(&format!("/run/netns/ctr-{id}")).exists());
    let after: Vec<usize> = shared.iter().map(|d| count(d)).collect();
    assert!(
        after.iter().zip(&before).all(|(a, b)| a <= b),
        "{shared:?}: {before:?} before, {after:?} after"
    );
}
