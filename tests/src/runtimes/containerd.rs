//! containerd 1.6 (Debian `containerd`) with its CRI plugin, started by the test inside the ctr-*
//! netns (the "node") with its own `--config` (root, state, socket, all under the scratch dir), and
//! pods created over the CRI exactly as a kubelet does: RunPodSandbox → CreateContainer →
//! StartContainer, with the pod's annotations and a RuntimeClass handler.
//!
//! - CRI: overlayfs snapshotter, runc v2 shim with `SystemdCgroup = false` (cgroupfs; kubelet's
//!   `cgroup_parent` is `/egress-runtimes/<id>/containerd<n>/containers/pod<uid>`), runc state under the
//!   scratch (`Root`), `restrict_oom_score_adj` (this machine's root lacks CAP_SYS_RESOURCE, so the
//!   sandbox's default oom_score_adj of -998 fails in runc with "can't get final child's PID from
//!   pipe: EOF"; restricted, it is clamped to containerd's own), AppArmor off, `sandbox_image` = a locally imported pause image, pod netns
//!   mounts under the state dir (`netns_mounts_under_state_dir`: nothing in /run/netns).
//! - Extra runtime handlers ([`Handler`]): `BinaryName` (a runtime wrapper), `pod_annotations`,
//!   `SystemdCgroup`.
//! - CNI (`/usr/lib/cni` from containernetworking-plugins): a `bridge` (`cni0`, gateway
//!   [`POD_GATEWAY`]) with host-local IPAM on [`POD_SUBNET`] (leases under the scratch), plus the
//!   loopback containerd adds itself. The node forwards; up-* gets a route for the pod subnet back
//!   via the node, and has no other way out: pods reach the fake internet and nothing else.
//!
//! Side effects outside the scratch: the shims' sockets in `/run/containerd/s/` (hard-coded in
//! 1.6, removed by the shims) and libcni's cache `/var/lib/cni/results/egress-rt-<id>-*` (removed
//! on CNI DEL; after a SIGKILL by the scratch's teardown). The CNI network is `egress-rt-<id>`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use k8s_cri::v1 as cri;

use super::cri::CriClient;
use super::image::{ImageConfig, ImageFiles, PAUSE_IMAGE, PROBE_IMAGE};
use super::{cgroup_of, output_text, Net, RunSpec, Runtime, Scratch, Started};
use crate::addrs::{CTR_LINK, DNS};
use crate::topology::Topology;

pub const CONTAINERD: &str = "/usr/bin/containerd";
pub const CTR: &str = "/usr/bin/ctr";
pub const SHIM: &str = "/usr/bin/containerd-shim-runc-v2";
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The pods' subnet on the node's CNI bridge (routed node ↔ up-*, never further).
pub const POD_SUBNET: &str = "10.202.0.0/24";
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 202, 0, 1);
/// containerd's namespace for CRI objects.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// Name of the default runtime handler (runc, cgroupfs).
pub const DEFAULT_HANDLER: &str = "runc";

static POD_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A CRI runtime handler (what a RuntimeClass names).
#[derive(Clone, Debug)]
pub struct Handler {
    pub name: String,
    /// `BinaryName`: the OCI runtime the runc shim executes instead of runc (a wrapper).
    pub binary_name: Option<PathBuf>,
    /// `SystemdCgroup`: runc's systemd cgroup driver (needs systemd as PID 1).
    pub systemd_cgroup: bool,
    /// Pod annotations passed into the OCI specs (sandbox and containers), e.g. `egress-agent.io/*`.
    pub pod_annotations: Vec<String>,
}

impl Handler {
    /// A runc handler whose runtime binary is `binary` and that passes `egress-agent.io/*` pod
    /// annotations through: the wrapper's hook point.
    pub fn wrapper(name: &str, binary: &Path) -> Handler {
        Handler {
            name: name.to_string(),
            binary_name: Some(binary.to_path_buf()),
            systemd_cgroup: false,
            pod_annotations: vec!["egress-agent.io/*".to_string()],
        }
    }
    /// A plain runc handler with the systemd cgroup driver.
    pub fn systemd(name: &str) -> Handler {
        Handler {
            name: name.to_string(),
            binary_name: None,
            systemd_cgroup: true,
            pod_annotations: Vec::new(),
        }
    }
}

/// Options of the containerd the test starts.
#[derive(Clone, Debug, Default)]
pub struct ContainerdOpts {
    /// Handlers besides the default `runc`.
    pub handlers: Vec<Handler>,
}

/// How a pod differs from the default one [`Runtime::start`] makes.
#[derive(Clone, Debug, Default)]
pub struct PodOpts {
    /// Kubernetes namespace (default `default`).
    pub namespace: Option<String>,
    /// `LinuxPodSandboxConfig.cgroup_parent` (default `<containers parent>/pod<uid>`; a systemd
    /// handler needs a `.slice`).
    pub cgroup_parent: Option<String>,
    /// Container annotations (the kubelet's own; pod annotations come from the [`RunSpec`]).
    pub container_annotations: Vec<(String, String)>,
    /// RunPodSandbox only, no container: [`Started`] is then the sandbox (pause) itself.
    pub sandbox_only: bool,
}

/// A private containerd with the CRI plugin; pods removed and the daemon stopped on drop.
pub struct Containerd<'t> {
    child: Option<Child>,
    cri: CriClient,
    scratch: Scratch,
    _topo: &'t Topology,
}

impl<'t> Containerd<'t> {
    /// Whether containerd, ctr, the runc shim, runc, the CNI plugins and busybox-static exist.
    pub fn tools_present() -> bool {
        super::tools_present(
            "containerd",
            &[
                CONTAINERD,
                CTR,
                SHIM,
                super::podman::RUNC,
                "/usr/lib/cni/bridge",
                "/usr/lib/cni/host-local",
                "/usr/lib/cni/loopback",
                super::image::BUSYBOX,
            ],
        )
    }

    pub fn start(topo: &'t Topology) -> Containerd<'t> {
        Containerd::start_with(topo, ContainerdOpts::default())
    }

    /// Starts containerd in ctr-*, routes the pod subnet from up-* to the node, imports the pause and
    /// probe images into `k8s.io`, and connects the CRI client.
    pub fn start_with(topo: &'t Topology, opts: ContainerdOpts) -> Containerd<'t> {
        let scratch = Scratch::new(topo, "containerd");
        scratch.note_host_dirs(&[
            "/run/containerd/s",
            "/run/containerd",
            "/var/lib/cni/results",
            "/var/lib/cni",
        ]);
        let d = scratch.dir().to_path_buf();
        for sub in [
            "root",
            "state",
            "opt",
            "runc",
            "cni/net.d",
            "cni/ipam",
            "pods",
        ] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("config.toml"), config_toml(&d, &opts)).unwrap();
        std::fs::write(
            d.join("cni/net.d/10-egress.conflist"),
            cni_conflist(&format!("egress-rt-{}", topo.id()), &d.join("cni/ipam")).to_string(),
        )
        .unwrap();
        let bridge = std::process::Command::new("ip")
            .args(["-n", &topo.ctr_netns(), "link", "show", "cni0"])
            .output()
            .expect("run ip");
        assert!(
            !bridge.status.success(),
            "one containerd per topology: its CNI bridge and pod subnet are the node's"
        );
        node_routing(topo);
        let mut cmd = scratch.command(CONTAINERD, Some(&topo.ctr_netns_path()));
        cmd.env("PATH", super::docker::DAEMON_PATH)
            .arg("--config")
            .arg(d.join("config.toml"));
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        cmd.stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        let mut child = cmd.spawn().expect("spawn containerd");
        let sock = d.join("containerd.sock");
        let cri = match CriClient::connect(&sock, Duration::from_secs(30)) {
            Ok(c) => c,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(d.join("containerd.log")).unwrap_or_default();
                panic!("containerd CRI: {e}\n{log}");
            }
        };
        let c = Containerd {
            child: Some(child),
            cri,
            scratch,
            _topo: topo,
        };
        let pause = ImageFiles::busybox().write_docker_archive(
            &d.join("pause.tar"),
            PAUSE_IMAGE,
            &ImageConfig::pause(),
        );
        let probe = ImageFiles::probe(&d).write_docker_archive(
            &d.join("probe.tar"),
            PROBE_IMAGE,
            &ImageConfig::with_entrypoint(&["/bin/sh"]),
        );
        for tar in [pause, probe] {
            let o = c.ctr(&["images", "import", tar.to_str().unwrap()]);
            assert!(o.status.success(), "ctr images import: {}", output_text(&o));
        }
        c
    }

    /// The CRI client (the kubelet's view of this node).
    pub fn cri(&self) -> &CriClient {
        &self.cri
    }
    /// The CRI (and containerd API) socket.
    pub fn socket(&self) -> PathBuf {
        self.scratch.dir().join("containerd.sock")
    }
    /// `ctr -a <socket> -n k8s.io ARGS`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        std::process::Command::new(CTR)
            .arg("-a")
            .arg(self.socket())
            .args(["-n", K8S_NAMESPACE])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }
    /// containerd's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.scratch.dir().join("containerd.log")).unwrap_or_default()
    }
    pub fn scratch(&self) -> &Scratch {
        &self.scratch
    }

    /// Starts a pod the kubelet's way; `spec.annotations` are the pod's, `spec.runtime` the
    /// RuntimeClass handler, `spec.net`: `Test` = CNI, `Node` = hostNetwork.
    pub fn start_pod(&self, spec: &RunSpec, opts: &PodOpts) -> anyhow::Result<Started> {
        self.start_pod_on(&self.cri, spec, opts)
    }

    /// Another CRI client on the same socket: one per thread for pods started in parallel.
    pub fn connect_cri(&self) -> CriClient {
        CriClient::connect(&self.socket(), Duration::from_secs(10)).expect("CRI client")
    }

    /// [`Containerd::start_pod`] through `cri` (a client of this containerd).
    pub fn start_pod_on(
        &self,
        cri: &CriClient,
        spec: &RunSpec,
        opts: &PodOpts,
    ) -> anyhow::Result<Started> {
        anyhow::ensure!(
            spec.net != Net::None,
            "a CRI pod always has a network: use Net::Test (CNI) or Net::Node (hostNetwork)"
        );
        let n = POD_COUNTER.fetch_add(1, Ordering::Relaxed);
        let uid = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            std::process::id(),
            u64::from(n)
        );
        let namespace = opts.namespace.clone().unwrap_or_else(|| "default".into());
        let log_dir = self
            .scratch
            .dir()
            .join(format!("pods/{namespace}_{}_{uid}", spec.name));
        std::fs::create_dir_all(&log_dir)?;
        let sandbox = self.sandbox_config(spec, opts, &namespace, &uid, &log_dir);
        let container = container_config(spec, opts, &sandbox);
        let handler = spec.runtime.clone().unwrap_or_default();
        let t0 = SystemTime::now();
        let started = Instant::now();
        let sid = cri.run_pod_sandbox(sandbox.clone(), &handler)?;
        if opts.sandbox_only {
            let info = cri.sandbox_info(&sid)?;
            return Ok(Started {
                name: spec.name.clone(),
                id: sid.clone(),
                sandbox_id: Some(sid),
                pid: info.pid,
                cgroup: cgroup_of(info.pid).context("sandbox cgroup")?,
                t0,
                start_took: started.elapsed(),
                ip: None,
            });
        }
        let cid = match cri
            .create_container(&sid, container, sandbox)
            .and_then(|cid| cri.start_container(&cid).map(|()| cid))
        {
            Ok(cid) => cid,
            Err(e) => {
                self.remove_sandbox_on(cri, &sid);
                return Err(e);
            }
        };
        let start_took = started.elapsed();
        let info = cri.container_info(&cid)?;
        let ip = cri
            .pod_sandbox_status(&sid, false)?
            .status
            .and_then(|s| s.network)
            .and_then(|n| n.ip.parse::<IpAddr>().ok());
        Ok(Started {
            name: spec.name.clone(),
            id: cid,
            sandbox_id: Some(sid),
            pid: info.pid,
            cgroup: cgroup_of(info.pid).context("container cgroup")?,
            t0,
            start_took,
            ip,
        })
    }

    fn sandbox_config(
        &self,
        spec: &RunSpec,
        opts: &PodOpts,
        namespace: &str,
        uid: &str,
        log_dir: &Path,
    ) -> cri::PodSandboxConfig {
        let network = match spec.net {
            Net::Node => cri::NamespaceMode::Node,
            _ => cri::NamespaceMode::Pod,
        };
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: spec.name.clone(),
                uid: uid.to_string(),
                namespace: namespace.to_string(),
                attempt: 0,
            }),
            // The kubelet names only pods with their own network (runc refuses a hostname
            // without a private UTS namespace, and a hostNetwork sandbox has none).
            hostname: if network == cri::NamespaceMode::Node {
                String::new()
            } else {
                spec.name.clone()
            },
            log_directory: log_dir.to_string_lossy().into_owned(),
            dns_config: Some(cri::DnsConfig {
                servers: vec![DNS.to_string()],
                ..Default::default()
            }),
            labels: pod_labels(&spec.name, namespace, uid),
            annotations: spec.annotations.iter().cloned().collect(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: opts
                    .cgroup_parent
                    .clone()
                    .unwrap_or_else(|| format!("{}/pod{uid}", self.scratch.cgroup_parent())),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(namespace_options(network)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn remove_sandbox(&self, sid: &str) {
        self.remove_sandbox_on(&self.cri, sid)
    }

    /// StopPodSandbox, RemovePodSandbox, then the pod-level cgroup (`<parent>/pod<uid>`), as the
    /// kubelet removes it once the pod's containers are gone (runc removes only its own leaf).
    pub fn remove_sandbox_on(&self, cri: &CriClient, sid: &str) {
        let uid = cri
            .pod_sandbox_status(sid, false)
            .ok()
            .and_then(|s| s.status)
            .and_then(|s| s.metadata)
            .map(|m| m.uid);
        if let Err(e) = cri
            .stop_pod_sandbox(sid)
            .and_then(|()| cri.remove_pod_sandbox(sid))
        {
            eprintln!("egress-tests: removing pod {sid}: {e}");
        }
        if let Some(uid) = uid.filter(|u| !u.is_empty()) {
            remove_empty_cgroup(&self.scratch.cgroup_parent_path().join(format!("pod{uid}")));
        }
    }

    /// [`Runtime::remove`] through `cri`.
    pub fn remove_on(&self, cri: &CriClient, c: &Started) {
        if let Some(sid) = &c.sandbox_id {
            self.remove_sandbox_on(cri, sid);
        }
    }

    /// SIGTERM, then SIGKILL after 10 s.
    fn stop_daemon(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = crate::sys::kill(child.id() as i32, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
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

/// rmdir of a cgroup whose last process just exited (EBUSY for a moment); absent is fine.
fn remove_empty_cgroup(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = std::fs::remove_dir(dir) {
        if e.kind() == std::io::ErrorKind::NotFound || Instant::now() > deadline {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("egress-tests: rmdir {}: {e}", dir.display());
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `NamespaceOption` as the kubelet sends it: network per pod (or node), pid per container, ipc per pod.
fn namespace_options(network: cri::NamespaceMode) -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: network as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

fn pod_labels(name: &str, namespace: &str, uid: &str) -> HashMap<String, String> {
    HashMap::from([
        ("io.kubernetes.pod.name".to_string(), name.to_string()),
        (
            "io.kubernetes.pod.namespace".to_string(),
            namespace.to_string(),
        ),
        ("io.kubernetes.pod.uid".to_string(), uid.to_string()),
    ])
}

/// The pod's one container (`main`), as the kubelet builds it.
fn container_config(
    spec: &RunSpec,
    opts: &PodOpts,
    sandbox: &cri::PodSandboxConfig,
) -> cri::ContainerConfig {
    let meta = sandbox.metadata.clone().unwrap_or_default();
    let mut labels = pod_labels(&meta.name, &meta.namespace, &meta.uid);
    labels.insert("io.kubernetes.container.name".into(), "main".into());
    let network = sandbox
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .map(|n| n.network)
        .unwrap_or(cri::NamespaceMode::Pod as i32);
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "main".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: PROBE_IMAGE.into(),
            ..Default::default()
        }),
        command: spec.command.clone(),
        log_path: "main/0.log".into(),
        labels,
        annotations: opts.container_annotations.iter().cloned().collect(),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network,
                    ..namespace_options(cri::NamespaceMode::Pod)
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The node's routing: it forwards between the pods' bridge and up-*; up-* routes the pod subnet
/// back via the node's end of the link (up-* has no default route: nothing goes further).
fn node_routing(topo: &Topology) {
    crate::sys::in_netns(&topo.ctr_netns_path(), || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
    })
    .expect("ip_forward in the node netns");
    let o = std::process::Command::new("ip")
        .args([
            "-n",
            &topo.up_netns(),
            "route",
            "replace",
            POD_SUBNET,
            "via",
        ])
        .arg(CTR_LINK.to_string())
        .output()
        .expect("run ip");
    assert!(o.status.success(), "route to the pods: {}", output_text(&o));
}

/// The CNI network: a bridge with host-local IPAM, leases under `ipam_dir`.
pub fn cni_conflist(name: &str, ipam_dir: &Path) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": false,
            "ipam": {
                "type": "host-local",
                "dataDir": ipam_dir,
                "ranges": [[{"subnet": POD_SUBNET, "gateway": POD_GATEWAY.to_string()}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }],
    })
}

fn config_toml(d: &Path, opts: &ContainerdOpts) -> String {
    let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
    let mut s = format!(
        "version = 2\n\
         root = \"{root}\"\n\
         state = \"{state}\"\n\
         disabled_plugins = [\"io.containerd.snapshotter.v1.aufs\", \"io.containerd.snapshotter.v1.btrfs\", \
         \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.zfs\"]\n\
         [grpc]\n  address = \"{sock}\"\n\
         [ttrpc]\n  address = \"{sock}.ttrpc\"\n\
         [debug]\n  level = \"info\"\n\
         [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n\
         [{cri}]\n\
           sandbox_image = \"{PAUSE_IMAGE}\"\n\
           disable_apparmor = true\n\
           enable_selinux = false\n\
           restrict_oom_score_adj = true\n\
           netns_mounts_under_state_dir = true\n\
           stream_server_address = \"127.0.0.1\"\n\
         [{cri}.cni]\n  bin_dir = \"{CNI_BIN_DIR}\"\n  conf_dir = \"{cni}\"\n  max_conf_num = 1\n\
         [{cri}.containerd]\n  snapshotter = \"overlayfs\"\n  default_runtime_name = \"{DEFAULT_HANDLER}\"\n",
        root = d.join("root").display(),
        state = d.join("state").display(),
        sock = d.join("containerd.sock").display(),
        opt = d.join("opt").display(),
        cni = d.join("cni/net.d").display(),
    );
    let mut handlers = vec![Handler {
        name: DEFAULT_HANDLER.into(),
        binary_name: None,
        systemd_cgroup: false,
        pod_annotations: Vec::new(),
    }];
    handlers.extend(opts.handlers.iter().cloned());
    for h in handlers {
        let t = format!("{cri}.containerd.runtimes.{}", h.name);
        let annotations = h
            .pod_annotations
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        s.push_str(&format!(
            "[{t}]\n  runtime_type = \"io.containerd.runc.v2\"\n  pod_annotations = [{annotations}]\n\
             [{t}.options]\n  SystemdCgroup = {}\n  Root = \"{}\"\n",
            h.systemd_cgroup,
            d.join("runc").display()
        ));
        if let Some(bin) = &h.binary_name {
            s.push_str(&format!("  BinaryName = \"{}\"\n", bin.display()));
        }
    }
    s
}

impl Runtime for Containerd<'_> {
    fn kind(&self) -> &'static str {
        "containerd"
    }

    fn start(&self, spec: &RunSpec) -> anyhow::Result<Started> {
        self.start_pod(spec, &PodOpts::default())
    }

    /// The container's CRI log (`<time> <stream> <P|F> <line>` per line).
    fn output(&self, c: &Started) -> String {
        let Some(sid) = &c.sandbox_id else {
            return String::new();
        };
        let Ok(st) = self.cri.pod_sandbox_status(sid, false) else {
            return String::new();
        };
        let Some(meta) = st.status.and_then(|s| s.metadata) else {
            return String::new();
        };
        let log = self.scratch.dir().join(format!(
            "pods/{}_{}_{}/main/0.log",
            meta.namespace, meta.name, meta.uid
        ));
        std::fs::read_to_string(log).unwrap_or_default()
    }

    fn remove(&self, c: &Started) {
        if let Some(sid) = &c.sandbox_id {
            self.remove_sandbox(sid);
        }
    }

    fn cgroup_parent_path(&self) -> PathBuf {
        self.scratch.cgroup_parent_path()
    }

    fn diagnostics(&self) -> String {
        super::tail(&self.log(), 30)
    }
}

impl Drop for Containerd<'_> {
    fn drop(&mut self) {
        // The pods' cgroups go below; a daemon already stopped would leave their pins.
        let ids = crate::topology::cgroup_ids(&self.scratch.cgroup_parent_path());
        match self.cri.list_pod_sandbox() {
            Ok(pods) => {
                for p in pods {
                    self.remove_sandbox(&p.id);
                }
            }
            Err(e) => eprintln!("egress-tests: ListPodSandbox at teardown: {e}"),
        }
        self.stop_daemon();
        crate::topology::remove_pins(&ids);
    }
}
