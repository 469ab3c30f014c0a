//! `packaging/kubernetes/daemonset.yaml` validated offline against the
//! Kubernetes OpenAPI schemas (`kubernetes-validate --strict`, PyPI, which
//! ships the schemas; `cargo xtask deps` installs it into
//! /opt/egress-agent-tools/venv). As root the validator runs in a fresh network
//! namespace with no interfaces up: proof that validation needs no network.
//! Copies with a typo'd field or a wrong type must be rejected.
//!
//! Also: the ConfigMap's daemon.toml and policy.toml are what the agent
//! accepts, the manifest keeps the properties the README promises, and the
//! RuntimeClass, the containerd handler snippet and the DaemonSet's installed
//! wrapper name one another consistently.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use egress_tests::is_ci;

const VENV: &str = "/opt/egress-agent-tools/venv/bin";

fn packaging(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/kubernetes")
        .join(file)
}

fn manifest() -> PathBuf {
    packaging("daemonset.yaml")
}

/// (validator, python with PyYAML): $EGRESS_K8S_VALIDATE, xtask's venv, PATH.
fn tools() -> Option<(PathBuf, PathBuf)> {
    let works = |p: &Path| {
        Command::new(p)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let candidates = [
        std::env::var_os("EGRESS_K8S_VALIDATE").map(|v| (PathBuf::from(v), "python3".into())),
        Some((
            Path::new(VENV).join("kubernetes-validate"),
            Path::new(VENV).join("python3"),
        )),
        Some(("kubernetes-validate".into(), "python3".into())),
    ];
    let found = candidates.into_iter().flatten().find(|(v, _)| works(v));
    if found.is_none() {
        assert!(
            !is_ci(),
            "CI=true: kubernetes-validate is required (cargo xtask deps installs it)"
        );
        eprintln!("SKIPPED: kubernetes-validate not found (run `cargo xtask deps`)");
    }
    found
}

fn is_root() -> bool {
    egress_tests::sys::geteuid() == 0
}

/// `kubernetes-validate --strict FILE`, offline when root.
fn validate(validator: &Path, file: &Path) -> Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("unshare");
        c.arg("--net").arg("--").arg(validator);
        c
    } else {
        Command::new(validator)
    };
    cmd.args(["--strict", "--no-warn"]).arg(file);
    cmd.output().expect("running kubernetes-validate")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn daemonset_manifest_validates_offline_and_broken_copies_do_not() {
    let Some((validator, _)) = tools() else {
        return;
    };
    let o = validate(&validator, &manifest());
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    for kind in [
        "namespace/egress-agent",
        "serviceaccount/egress-agent",
        "configmap/egress-agent-config",
        "daemonset/egress-agent",
    ] {
        assert!(
            out.contains(&format!("passed for resource {kind}")),
            "{out}"
        );
    }

    let o = validate(&validator, &packaging("runtimeclass.yaml"));
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("passed for resource runtimeclass/egress"),
        "{out}"
    );

    let good = std::fs::read_to_string(manifest()).unwrap();
    let dir = std::env::temp_dir().join(format!("egress-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let broken = [
        // A typo'd field: strict validation rejects unknown properties.
        ("hostPID: true", "hostPid: true", "'hostPid' was unexpected"),
        // A wrong type.
        ("maxUnavailable: 1", "maxUnavailable: [1]", "maxUnavailable"),
        // A number as a string.
        (
            "periodSeconds: 20",
            "periodSeconds: \"20\"",
            "periodSeconds",
        ),
    ];
    for (from, to, expect) in broken {
        assert!(good.contains(from), "{from}");
        let f = dir.join("broken.yaml");
        std::fs::write(&f, good.replacen(from, to, 1)).unwrap();
        let o = validate(&validator, &f);
        let out = text(&o);
        assert!(!o.status.success(), "{to}: accepted: {out}");
        assert!(out.contains(expect), "{to}: {out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A manifest as JSON documents (PyYAML, which kubernetes-validate needs anyway).
fn documents_of(python: &Path, file: &Path) -> Vec<serde_json::Value> {
    let o = Command::new(python)
        .args([
            "-c",
            "import json,sys,yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(file)
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn documents(python: &Path) -> Vec<serde_json::Value> {
    documents_of(python, &manifest())
}

/// A TOML file as JSON (Python's tomllib).
fn toml_of(python: &Path, file: &Path) -> serde_json::Value {
    let o = Command::new(python)
        .args([
            "-c",
            "import json,sys,tomllib; print(json.dumps(tomllib.load(open(sys.argv[1],'rb'))))",
        ])
        .arg(file)
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn configmap_files_are_accepted_by_the_agent_and_the_daemonset_keeps_its_promises() {
    let Some((_, python)) = tools() else {
        return;
    };
    let docs = documents(&python);
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let cm = find("ConfigMap");
    let dir = std::env::temp_dir().join(format!("egress-k8s-cm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let daemon_toml = dir.join("daemon.toml");
    std::fs::write(&daemon_toml, cm["data"]["daemon.toml"].as_str().unwrap()).unwrap();
    let cfg = egress_agent::service::load_config(&daemon_toml).expect("daemon.toml");
    let k = cfg.kubernetes.expect("[kubernetes] section");
    assert_eq!(k.annotation, "egress-agent.io/profile");
    // Fail closed: the kubepods parent gated; the agent's own namespace exempt.
    assert_eq!(
        cfg.gate[0].cgroup,
        Path::new("/sys/fs/cgroup/kubepods.slice")
    );
    assert!(k.exempt_namespaces.iter().any(|n| n == "egress-agent"));
    assert_eq!(k.host_network, egress_agent::kube::HostNetwork::Enforce);
    assert_eq!(k.default_profile.as_deref(), Some("default"));
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, cm["data"]["policy.toml"].as_str().unwrap()).unwrap();
    let p = egress_agent::policy::Policy::load(&policy).expect("policy.toml");
    assert!(p.has_profile("default"));
    let _ = std::fs::remove_dir_all(&dir);

    let ds = find("DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostPID"], true);
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["tolerations"][0]["operator"], "Exists");
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    let c = &spec["containers"][0];
    let caps: Vec<&str> = c["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for cap in [
        "BPF",
        "NET_ADMIN",
        "SYS_ADMIN",
        "SYS_PTRACE",
        "DAC_READ_SEARCH",
    ] {
        assert!(caps.contains(&cap), "{cap} in {caps:?}");
    }
    for probe in ["livenessProbe", "readinessProbe"] {
        let cmd = &c[probe]["exec"]["command"];
        assert_eq!(cmd[0], "egress-agent", "{probe}");
        assert_eq!(cmd[1], "status", "{probe}");
        assert_eq!(cmd[2], "--daemon", "{probe}");
    }
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mount = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("no mount at {path}"))
    };
    assert_eq!(mount("/sys/fs/bpf")["mountPropagation"], "Bidirectional");
    assert!(
        mounts.iter().all(|m| m["name"] != "crictl"),
        "crictl is gone: {mounts:?}"
    );
    for path in [
        "/sys/fs/cgroup",
        "/run/containerd/containerd.sock",
        "/var/lib/egress-agent",
        "/var/log/egress-agent",
        // The control socket and records, on the node: the wrapper calls it from there.
        "/run/egress-agent",
    ] {
        let name = mount(path)["name"].as_str().unwrap();
        let vol = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap();
        assert_eq!(vol["hostPath"]["path"], path, "{name}");
    }
}

/// The RuntimeClass names the containerd handler of the snippet; the handler runs the wrapper
/// the DaemonSet's init container installs, passes the profile annotation, and is a runc v2
/// handler.
#[test]
fn runtimeclass_containerd_handler_and_installed_wrapper_agree() {
    let Some((_, python)) = tools() else {
        return;
    };
    let rc = documents_of(&python, &packaging("runtimeclass.yaml"));
    assert_eq!(rc.len(), 1);
    assert_eq!(rc[0]["kind"], "RuntimeClass");
    let handler = rc[0]["handler"].as_str().unwrap();
    let ctd = toml_of(&python, &packaging("containerd-egress.toml"));
    let h = &ctd["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"][handler];
    assert_eq!(h["runtime_type"], "io.containerd.runc.v2", "{ctd}");
    assert_eq!(
        h["pod_annotations"],
        serde_json::json!(["egress-agent.io/*"])
    );
    let binary = h["options"]["BinaryName"].as_str().unwrap();
    assert_eq!(
        Path::new(binary).file_name().unwrap(),
        egress_agent::oci::wrapper::WRAPPER_NAME
    );
    let docs = documents(&python);
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let spec = &ds["spec"]["template"]["spec"];
    let init = &spec["initContainers"][0];
    let script = init["command"][2].as_str().unwrap();
    assert!(
        script.contains("ln -sfn egress-agent /host-bin/egress-agent-runc"),
        "{script}"
    );
    let vol = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == init["volumeMounts"][0]["name"])
        .unwrap();
    assert_eq!(
        Path::new(vol["hostPath"]["path"].as_str().unwrap()).join("egress-agent-runc"),
        Path::new(binary)
    );
}

/// Bad `[kubernetes]` input (the removed `crictl` key, a non-unix endpoint, a zero interval):
/// one line naming file:line:column, exit 2, before the daemon binds or touches anything.
#[test]
fn bad_kubernetes_config_is_one_line_and_exit_2() {
    let dir = std::env::temp_dir().join(format!("egress-k8s-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("daemon.toml");
    let control = dir.join("control.sock");
    for (bad, expect) in [
        ("crictl = \"/usr/bin/crictl\"", "`crictl` was removed"),
        ("runtime_endpoint = \"tcp://10.0.0.1:1\"", "want unix:///"),
        ("interval_secs = 0", "at least 1"),
        ("host_network = \"open\"", "unknown variant"),
    ] {
        std::fs::write(
            &config,
            format!("policy = \"/nonexistent\"\n[kubernetes]\n{bad}\n"),
        )
        .unwrap();
        let o = Command::new(egress_tests::bin_path("egress-agent"))
            .arg("--control")
            .arg(&control)
            .arg("daemon")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{bad}: {err}");
        assert_eq!(err.lines().count(), 1, "{bad}: {err}");
        assert!(
            err.contains(&format!("{}:3:", config.display())),
            "{bad}: {err}"
        );
        assert!(err.contains(expect), "{bad}: {err}");
        assert!(!control.exists(), "{bad}: the daemon bound its socket");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
