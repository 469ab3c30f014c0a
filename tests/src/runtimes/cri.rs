//! A blocking CRI client (k8s-cri 0.11 = tonic 0.14 + prost 0.14, `runtime.v1`) on a runtime's unix
//! socket: the calls a kubelet makes to start and inspect pods, and the verbose status a node agent
//! reads (pid, netns, cgroup). Each call runs on the client's own current-thread tokio runtime, so
//! tests stay synchronous. Errors carry the runtime's gRPC status message verbatim.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

/// A connected CRI client (RuntimeService + ImageService on one channel).
pub struct CriClient {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    image: ImageServiceClient<Channel>,
}

fn status_err(what: &str) -> impl FnOnce(tonic::Status) -> anyhow::Error + '_ {
    move |s| anyhow!("{what}: {:?}: {}", s.code(), s.message())
}

/// What the runtime's verbose sandbox status says about a pod (containerd's `info` JSON).
#[derive(Clone, Debug)]
pub struct SandboxInfo {
    /// The sandbox (pause) process.
    pub pid: u32,
    /// The pod's network namespace (a bind mount the runtime holds).
    pub netns: Option<PathBuf>,
    /// `linux.cgroupsPath` of the sandbox's OCI spec (cgroupfs syntax, or `slice:prefix:name`).
    pub cgroups_path: Option<String>,
    pub runtime_handler: String,
    /// The OCI spec's annotations (CRI's own `io.kubernetes.cri.*` and pass-through ones).
    pub spec_annotations: HashMap<String, String>,
}

impl SandboxInfo {
    /// Parses containerd's verbose `info` JSON of a sandbox or container.
    pub fn parse(info_json: &str) -> anyhow::Result<SandboxInfo> {
        let v: serde_json::Value = serde_json::from_str(info_json).context("verbose info JSON")?;
        let spec = &v["runtimeSpec"];
        let netns = spec["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        let spec_annotations = spec["annotations"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(SandboxInfo {
            pid: v["pid"].as_u64().context("no pid in verbose info")? as u32,
            netns,
            cgroups_path: spec["linux"]["cgroupsPath"].as_str().map(str::to_string),
            runtime_handler: v["runtimeHandler"].as_str().unwrap_or_default().to_string(),
            spec_annotations,
        })
    }
}

impl CriClient {
    /// Connects to the CRI endpoint at unix socket `socket` (retrying until `timeout`: a runtime
    /// that is still starting).
    pub fn connect(socket: &Path, timeout: Duration) -> anyhow::Result<CriClient> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let path = socket.to_path_buf();
        let channel = rt.block_on(async {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let p = path.clone();
                // The URI is required by tonic and ignored: the connector dials the socket.
                let attempt = Endpoint::try_from("http://[::]:0")?
                    .timeout(Duration::from_secs(60))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let p = p.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(p).await?,
                            ))
                        }
                    }))
                    .await;
                match attempt {
                    Ok(ch) => break Ok::<_, anyhow::Error>(ch),
                    Err(e) if tokio::time::Instant::now() > deadline => {
                        break Err(anyhow!("connect {}: {e}", path.display()))
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })?;
        Ok(CriClient {
            runtime: RuntimeServiceClient::new(channel.clone()),
            image: ImageServiceClient::new(channel),
            rt,
        })
    }

    /// `Version` (runtime name and version, CRI API version).
    pub fn version(&self) -> anyhow::Result<VersionResponse> {
        let mut c = self.runtime.clone();
        self.rt
            .block_on(c.version(VersionRequest::default()))
            .map(|r| r.into_inner())
            .map_err(status_err("Version"))
    }

    /// `RunPodSandbox` with a RuntimeClass handler (`""` = the runtime's default): the sandbox id.
    pub fn run_pod_sandbox(
        &self,
        config: PodSandboxConfig,
        handler: &str,
    ) -> anyhow::Result<String> {
        let mut c = self.runtime.clone();
        let req = RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: handler.to_string(),
        };
        self.rt
            .block_on(c.run_pod_sandbox(req))
            .map(|r| r.into_inner().pod_sandbox_id)
            .map_err(status_err("RunPodSandbox"))
    }

    /// `CreateContainer` in a sandbox (the kubelet passes the sandbox config again): the container id.
    pub fn create_container(
        &self,
        pod_sandbox_id: &str,
        config: ContainerConfig,
        sandbox_config: PodSandboxConfig,
    ) -> anyhow::Result<String> {
        let mut c = self.runtime.clone();
        let req = CreateContainerRequest {
            pod_sandbox_id: pod_sandbox_id.to_string(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        };
        self.rt
            .block_on(c.create_container(req))
            .map(|r| r.into_inner().container_id)
            .map_err(status_err("CreateContainer"))
    }

    pub fn start_container(&self, container_id: &str) -> anyhow::Result<()> {
        let mut c = self.runtime.clone();
        let req = StartContainerRequest {
            container_id: container_id.to_string(),
        };
        self.rt
            .block_on(c.start_container(req))
            .map(drop)
            .map_err(status_err("StartContainer"))
    }

    /// `ListPodSandbox` without a filter.
    pub fn list_pod_sandbox(&self) -> anyhow::Result<Vec<PodSandbox>> {
        let mut c = self.runtime.clone();
        self.rt
            .block_on(c.list_pod_sandbox(ListPodSandboxRequest::default()))
            .map(|r| r.into_inner().items)
            .map_err(status_err("ListPodSandbox"))
    }

    pub fn pod_sandbox_status(
        &self,
        pod_sandbox_id: &str,
        verbose: bool,
    ) -> anyhow::Result<PodSandboxStatusResponse> {
        let mut c = self.runtime.clone();
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: pod_sandbox_id.to_string(),
            verbose,
        };
        self.rt
            .block_on(c.pod_sandbox_status(req))
            .map(|r| r.into_inner())
            .map_err(status_err("PodSandboxStatus"))
    }

    /// `PodSandboxStatus(verbose)`, its `info` parsed.
    pub fn sandbox_info(&self, pod_sandbox_id: &str) -> anyhow::Result<SandboxInfo> {
        let st = self.pod_sandbox_status(pod_sandbox_id, true)?;
        SandboxInfo::parse(st.info.get("info").context("no `info` in verbose status")?)
    }

    pub fn container_status(
        &self,
        container_id: &str,
        verbose: bool,
    ) -> anyhow::Result<ContainerStatusResponse> {
        let mut c = self.runtime.clone();
        let req = ContainerStatusRequest {
            container_id: container_id.to_string(),
            verbose,
        };
        self.rt
            .block_on(c.container_status(req))
            .map(|r| r.into_inner())
            .map_err(status_err("ContainerStatus"))
    }

    /// `ContainerStatus(verbose)`, its `info` parsed (same shape as a sandbox's).
    pub fn container_info(&self, container_id: &str) -> anyhow::Result<SandboxInfo> {
        let st = self.container_status(container_id, true)?;
        SandboxInfo::parse(st.info.get("info").context("no `info` in verbose status")?)
    }

    /// `ListContainers`, optionally of one sandbox.
    pub fn list_containers(&self, pod_sandbox_id: Option<&str>) -> anyhow::Result<Vec<Container>> {
        let mut c = self.runtime.clone();
        let req = ListContainersRequest {
            filter: pod_sandbox_id.map(|id| ContainerFilter {
                pod_sandbox_id: id.to_string(),
                ..Default::default()
            }),
        };
        self.rt
            .block_on(c.list_containers(req))
            .map(|r| r.into_inner().containers)
            .map_err(status_err("ListContainers"))
    }

    pub fn stop_pod_sandbox(&self, pod_sandbox_id: &str) -> anyhow::Result<()> {
        let mut c = self.runtime.clone();
        let req = StopPodSandboxRequest {
            pod_sandbox_id: pod_sandbox_id.to_string(),
        };
        self.rt
            .block_on(c.stop_pod_sandbox(req))
            .map(drop)
            .map_err(status_err("StopPodSandbox"))
    }

    pub fn remove_pod_sandbox(&self, pod_sandbox_id: &str) -> anyhow::Result<()> {
        let mut c = self.runtime.clone();
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: pod_sandbox_id.to_string(),
        };
        self.rt
            .block_on(c.remove_pod_sandbox(req))
            .map(drop)
            .map_err(status_err("RemovePodSandbox"))
    }

    /// Whether the runtime serves `GetContainerEvents` (CRI's event stream; containerd ≥ 1.7):
    /// Err carries the runtime's answer otherwise (containerd 1.6: `Unimplemented`).
    pub fn container_events(&self) -> anyhow::Result<()> {
        let mut c = self.runtime.clone();
        self.rt.block_on(async {
            let stream = c
                .get_container_events(GetEventsRequest::default())
                .await
                .map_err(status_err("GetContainerEvents"))?;
            // Some servers report Unimplemented only on the first read.
            let mut stream = stream.into_inner();
            match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
                Ok(Err(s)) => Err(status_err("GetContainerEvents")(s)),
                _ => Ok(()),
            }
        })
    }

    /// `ExecSync` in a running container (what `kubectl exec` ends as): exit code and stdout.
    pub fn exec_sync(
        &self,
        container_id: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<(i32, String)> {
        let mut c = self.runtime.clone();
        let req = ExecSyncRequest {
            container_id: container_id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout.as_secs().max(1) as i64,
        };
        self.rt
            .block_on(c.exec_sync(req))
            .map(|r| {
                let r = r.into_inner();
                (r.exit_code, String::from_utf8_lossy(&r.stdout).into_owned())
            })
            .map_err(status_err("ExecSync"))
    }

    /// `ImageStatus`: the image if the runtime has it.
    pub fn image_status(&self, image: &str) -> anyhow::Result<Option<Image>> {
        let mut c = self.image.clone();
        let req = ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            verbose: false,
        };
        self.rt
            .block_on(c.image_status(req))
            .map(|r| r.into_inner().image)
            .map_err(status_err("ImageStatus"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbose_info_gives_pid_netns_and_cgroups_path() {
        let info = r#"{"pid":4242,"runtimeHandler":"egress",
            "runtimeSpec":{"annotations":{"egress-agent.io/profile":"default",
                                          "io.kubernetes.cri.container-type":"sandbox"},
                           "linux":{"cgroupsPath":"/kubepods/pod1/abc",
                                    "namespaces":[{"type":"pid"},
                                                  {"type":"network","path":"/run/x/netns/cni-1"}]}}}"#;
        let s = SandboxInfo::parse(info).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.netns, Some(PathBuf::from("/run/x/netns/cni-1")));
        assert_eq!(s.cgroups_path.as_deref(), Some("/kubepods/pod1/abc"));
        assert_eq!(s.runtime_handler, "egress");
        assert_eq!(s.spec_annotations["egress-agent.io/profile"], "default");
        // hostNetwork: the network namespace entry has no path (or is absent).
        let host = r#"{"pid":1,"runtimeSpec":{"linux":{"namespaces":[{"type":"network"}]}}}"#;
        assert_eq!(SandboxInfo::parse(host).unwrap().netns, None);
        assert!(SandboxInfo::parse("{}").is_err());
    }
}
