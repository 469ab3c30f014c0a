//! Discovery's CRI client: gRPC (`runtime.v1`, the `k8s-cri` crate on tonic) on the runtime's
//! unix socket, the calls a kubelet makes to look at pods. No API server, no credentials: the
//! node's runtime knows every pod sandbox with its annotations.
//!
//! - `ListPodSandbox`: ids, metadata, state, annotations.
//! - `PodSandboxStatus(verbose)`: the network mode (hostNetwork) and, in the runtime's `info`
//!   JSON, the sandbox (pause) process's `pid` (containerd and CRI-O alike).
//! - `GetContainerEvents`: the event stream, where the runtime serves it (containerd ≥ 1.7,
//!   CRI-O ≥ 1.26); containerd 1.6 answers `Unimplemented` and discovery lists at its interval.

use std::{
    collections::BTreeMap,
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use tonic::transport::{Channel, Endpoint, Uri};

use super::KubeError;
use cri::runtime_service_client::RuntimeServiceClient;

/// How long one CRI call may take: a hung runtime must not stall the loop forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A pod sandbox as discovery sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub ready: bool,
    pub annotations: BTreeMap<String, String>,
}

impl Sandbox {
    /// `namespace/name` for logs and errors.
    pub fn display(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What the verbose status adds: the sandbox process and whether the pod shares the node's
/// network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspect {
    pub pid: u32,
    pub host_network: bool,
    pub ready: bool,
}

/// The socket path of `unix:///path` (or of a bare absolute path, as crictl accepts).
pub fn socket_path(endpoint: &str) -> Result<PathBuf, String> {
    let p = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if !Path::new(p).is_absolute() {
        return Err(format!(
            "runtime_endpoint {endpoint:?}: want unix:///path/to/the/runtime.sock"
        ));
    }
    Ok(PathBuf::from(p))
}

/// Dials the runtime's unix socket for every (re)connection of the channel.
#[derive(Clone)]
struct UnixConnector(PathBuf);

type Dial = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<tokio::net::UnixStream>>> + Send>>;

impl tonic::codegen::Service<Uri> for UnixConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = Dial;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let p = self.0.clone();
        Box::pin(async move { Ok(TokioIo::new(tokio::net::UnixStream::connect(p).await?)) })
    }
}

#[derive(Clone)]
pub struct CriClient {
    client: RuntimeServiceClient<Channel>,
    endpoint: String,
}

impl CriClient {
    /// A lazily connected client: a runtime that is down now (or restarts later) is dialled
    /// again on the next call.
    pub fn new(endpoint: &str) -> Result<Self, KubeError> {
        let path = socket_path(endpoint).map_err(KubeError::Endpoint)?;
        // The URI is required by tonic and ignored: the connector dials the socket.
        let channel = Endpoint::from_static("http://[::]:0")
            .timeout(CALL_TIMEOUT)
            .connect_timeout(CALL_TIMEOUT)
            .connect_with_connector_lazy(UnixConnector(path));
        Ok(Self {
            client: RuntimeServiceClient::new(channel),
            endpoint: endpoint.to_string(),
        })
    }

    fn err(&self, call: &'static str) -> impl FnOnce(tonic::Status) -> KubeError + '_ {
        move |s| KubeError::Cri {
            call,
            endpoint: self.endpoint.clone(),
            code: s.code(),
            message: s.message().to_string(),
        }
    }

    /// Every pod sandbox the runtime knows (ready or not).
    pub async fn list(&self) -> Result<Vec<Sandbox>, KubeError> {
        let mut c = self.client.clone();
        let items = c
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await
            .map_err(self.err("ListPodSandbox"))?
            .into_inner()
            .items;
        Ok(items.into_iter().map(sandbox).collect())
    }

    /// The verbose status of one sandbox.
    pub async fn inspect(&self, id: &str) -> Result<Inspect, KubeError> {
        let mut c = self.client.clone();
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: true,
        };
        let r = c
            .pod_sandbox_status(req)
            .await
            .map_err(self.err("PodSandboxStatus"))?
            .into_inner();
        inspect_of(&r).map_err(|reason| KubeError::Inspect {
            id: id.to_string(),
            reason,
        })
    }

    /// The runtime's container event stream, or its refusal (`Unimplemented` on containerd 1.6).
    pub async fn events(&self) -> Result<tonic::Streaming<cri::ContainerEventResponse>, KubeError> {
        // The channel's timeout bounds the answer's headers; the stream then stays open.
        let mut c = self.client.clone();
        Ok(c.get_container_events(cri::GetEventsRequest::default())
            .await
            .map_err(self.err("GetContainerEvents"))?
            .into_inner())
    }
}

fn sandbox(p: cri::PodSandbox) -> Sandbox {
    let meta = p.metadata.unwrap_or_default();
    Sandbox {
        id: p.id,
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        ready: p.state == cri::PodSandboxState::SandboxReady as i32,
        annotations: p.annotations.into_iter().collect(),
    }
}

/// The pid from the runtime's `info` JSON (`{"pid": N, ...}`), hostNetwork from the status.
pub fn inspect_of(r: &cri::PodSandboxStatusResponse) -> Result<Inspect, String> {
    let status = r.status.as_ref().ok_or("the runtime sent no status")?;
    let info = r
        .info
        .get("info")
        .ok_or("no verbose `info` (the runtime gives no sandbox pid)")?;
    let v: serde_json::Value =
        serde_json::from_str(info).map_err(|e| format!("verbose info is not JSON: {e}"))?;
    let pid = v["pid"]
        .as_u64()
        .filter(|p| *p > 0 && *p <= u64::from(u32::MAX))
        .ok_or("verbose info has no sandbox pid")? as u32;
    let network = status
        .linux
        .as_ref()
        .and_then(|l| l.namespaces.as_ref())
        .and_then(|n| n.options.as_ref())
        .map(|o| o.network);
    Ok(Inspect {
        pid,
        host_network: network == Some(cri::NamespaceMode::Node as i32),
        ready: status.state == cri::PodSandboxState::SandboxReady as i32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(network: cri::NamespaceMode, info: &str) -> cri::PodSandboxStatusResponse {
        cri::PodSandboxStatusResponse {
            status: Some(cri::PodSandboxStatus {
                id: "s1".into(),
                state: cri::PodSandboxState::SandboxReady as i32,
                linux: Some(cri::LinuxPodSandboxStatus {
                    namespaces: Some(cri::Namespace {
                        options: Some(cri::NamespaceOption {
                            network: network as i32,
                            ..Default::default()
                        }),
                    }),
                }),
                ..Default::default()
            }),
            info: [("info".to_string(), info.to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn verbose_status_gives_the_pid_and_the_network_mode() {
        // The shape containerd 1.6 answers (trimmed).
        let info = r#"{"pid":4242,"processStatus":"running","netNamespaceClosed":false,
            "runtimeSpec":{"linux":{"cgroupsPath":"/kubepods/pod1/s1"}}}"#;
        let i = inspect_of(&status(cri::NamespaceMode::Pod, info)).unwrap();
        assert_eq!(
            i,
            Inspect {
                pid: 4242,
                host_network: false,
                ready: true
            }
        );
        assert!(
            inspect_of(&status(cri::NamespaceMode::Node, info))
                .unwrap()
                .host_network
        );
        for bad in ["{}", r#"{"pid":0}"#, "not json", r#"{"pid":-1}"#] {
            assert!(
                inspect_of(&status(cri::NamespaceMode::Pod, bad)).is_err(),
                "{bad}"
            );
        }
        let mut none = status(cri::NamespaceMode::Pod, info);
        none.info.clear();
        assert!(inspect_of(&none).unwrap_err().contains("no verbose"));
    }

    #[test]
    fn endpoints_are_unix_sockets() {
        assert_eq!(
            socket_path("unix:///run/containerd/containerd.sock").unwrap(),
            Path::new("/run/containerd/containerd.sock")
        );
        assert_eq!(
            socket_path("/run/crio/crio.sock").unwrap(),
            Path::new("/run/crio/crio.sock")
        );
        assert!(socket_path("tcp://10.0.0.1:1234").is_err());
        assert!(socket_path("unix://relative.sock").is_err());
    }

    #[test]
    fn listed_sandboxes_keep_their_metadata_state_and_annotations() {
        let s = sandbox(cri::PodSandbox {
            id: "abc".into(),
            metadata: Some(cri::PodSandboxMetadata {
                name: "web-0".into(),
                uid: "u-1".into(),
                namespace: "team".into(),
                attempt: 0,
            }),
            state: cri::PodSandboxState::SandboxNotready as i32,
            annotations: [("egress-agent.io/profile".to_string(), "ci".to_string())].into(),
            ..Default::default()
        });
        assert_eq!(s.display(), "team/web-0");
        assert!(!s.ready);
        assert_eq!(s.annotations["egress-agent.io/profile"], "ci");
    }
}
