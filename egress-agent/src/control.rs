//! Control plane: the daemon's control socket: HTTP/1.1 + JSON over a unix socket
//! (`/run/egress-agent/control.sock` by default; the global `--control PATH`
//! or `EGRESS_CONTROL` names another). Root only: the directory is created
//! 0700, the socket is 0600, and every connection's peer credentials must be
//! uid 0.
//!
//! | method | path | body / query | answer |
//! | --- | --- | --- | --- |
//! | GET | `/v1/status` | | daemon, policy, audit and attachments (JSON) |
//! | GET | `/v1/attachments` | | `[{cgroup, cgroup_id, profile, listeners, …}]` |
//! | POST | `/v1/attach` | `{"cgroup"|"pid", "profile", "netns"?}` | the attachment; 409 if already attached |
//! | POST | `/v1/adopt` | `{"pid", "profile", "cgroups_path"?, "pod"?, "pod_uid"?, "container"?}` | the attachment (idempotent: the OCI hook) |
//! | GET | `/v1/trust` | | `{ca, bundle, jks}`: the trust files (certificates only) for a runtime wrapper to mount |
//! | POST | `/v1/detach` | `{"cgroup"|"pid"|"cgroup_id"}` | `{detached, cgroup_id}`; 404 if not attached |
//! | POST | `/v1/reload` | | `{policy, warnings}`; 400 (nothing changed) if invalid |
//! | GET | `/v1/decisions` | `?limit=N&cgroup_id=ID` | recent decisions, newest first |
//! | GET | `/v1/policy` | | the effective policy (text, `policy show`) |
//! | GET | `/v1/explain` | `?host=H[:P]&profile=NAME` | the decision lines (text, `explain`) |
//! | GET | `/metrics` | | Prometheus text |
//! | GET | `/v1/pending` | `?follow=1` | ask mode's pending decisions (see [`pending`]) |
//! | POST | `/v1/pending/ID/approve` | `{"scope", "by"}` | approve (`--once`, `--session`, `--save`) |
//! | POST | `/v1/pending/ID/deny` | `{"by"}` | deny |
//!
//! Errors are `{"error": "<one line>"}` with a 4xx/5xx status; a request that
//! fails never changes the running state.

use std::{
    convert::Infallible,
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::{body::Incoming, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};

use crate::daemon::{AdoptRequest, AttachRequest, Daemon, DetachRequest};

pub mod pending;
pub use pending::PolicyFile;

pub const DEFAULT_SOCKET: &str = "/run/egress-agent/control.sock";
/// Request bodies are tiny; anything bigger is refused.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another daemon is already serving {0}")]
    InUse(PathBuf),
    #[error("control socket {path}: {source}")]
    Http { path: PathBuf, source: hyper::Error },
    /// The daemon refused the request; its one-line reason.
    #[error("{0}")]
    Refused(String),
    #[error("control socket {0}: unexpected reply: {1}")]
    BadReply(PathBuf, String),
}

/// Create the directory (0700 when created here), replace a stale socket,
/// bind, and make the socket 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.to_owned()));
        }
        // A crashed daemon's socket: nobody listens behind it.
        std::fs::remove_file(path).map_err(io)?;
    }
    let l = std::os::unix::net::UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    l.set_nonblocking(true).map_err(io)?;
    UnixListener::from_std(l).map_err(io)
}

/// Accept and serve until the task is aborted.
pub async fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // Root only (the socket is 0600 already; this also holds if someone
        // loosens its mode).
        match stream.peer_cred() {
            Ok(c) if c.uid() == 0 => {}
            other => {
                tracing::warn!(peer = ?other.map(|c| c.uid()), "control socket: refusing a non-root peer");
                continue;
            }
        }
        let daemon = daemon.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let daemon = daemon.clone();
                async move {
                    if pending::owns(req.uri().path()) {
                        let file = DaemonFile(&daemon);
                        return Ok::<_, Infallible>(
                            pending::route(req, &daemon.shared, &file).await,
                        );
                    }
                    Ok(route(req, &daemon).await.map(Either::Left))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The daemon's policy file, reloaded as `reload` does (kernel deny sets re-synced).
struct DaemonFile<'a>(&'a Daemon);

impl PolicyFile for DaemonFile<'_> {
    fn path(&self) -> Option<&Path> {
        Some(&self.0.policy_path)
    }

    fn reload(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + '_>>
    {
        Box::pin(async move {
            let v = self.0.reload().await.map_err(|e| e.to_string())?;
            Ok(v["policy"].as_str().unwrap_or("").to_string())
        })
    }
}

/// A socket that serves only the ask endpoints (`exec --ask` without a terminal): the same
/// root-only rule as the daemon's.
pub async fn serve_pending(
    listener: UnixListener,
    shared: Arc<crate::attachment::Shared>,
    file: Arc<dyn PolicyFile>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        if !matches!(stream.peer_cred(), Ok(c) if c.uid() == 0) {
            continue;
        }
        let (shared, file) = (shared.clone(), file.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (shared, file) = (shared.clone(), file.clone());
                async move {
                    if !pending::owns(req.uri().path()) {
                        let path = req.uri().path().to_string();
                        return Ok::<_, Infallible>(
                            error(404, format!("{path}: this socket (a standalone agent in ask mode) serves only /v1/pending"))
                                .map(Either::Left),
                        );
                    }
                    Ok(pending::route(req, &shared, file.as_ref()).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

type Reply = Response<Full<Bytes>>;
/// What the socket answers: a whole body, or an event stream (`/v1/pending?follow=1`).
type Body = Either<Full<Bytes>, http_body_util::channel::Channel<Bytes>>;

fn json(status: u16, v: &serde_json::Value) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn text(status: u16, s: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(s)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn error(status: u16, msg: impl std::fmt::Display) -> Reply {
    json(
        status,
        &serde_json::json!({ "error": msg.to_string().replace('\n', " ") }),
    )
}

async fn body_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Reply> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| error(400, format!("reading the request body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| error(400, format!("request body: {e}")))
}

async fn route(req: Request<Incoming>, daemon: &Daemon) -> Reply {
    let path = req.uri().path().to_string();
    let query = query_pairs(req.uri().query().unwrap_or(""));
    let q = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/v1/status") => json(200, &daemon.status().await),
        (Method::GET, "/v1/attachments") => json(200, &serde_json::json!(daemon.list().await)),
        (Method::POST, "/v1/attach") => {
            let r: AttachRequest = match body_json(req).await {
                Ok(r) => r,
                Err(e) => return e,
            };
            match daemon.attach(r).await {
                Ok(v) => json(200, &v),
                Err(e) => error(e.status(), e),
            }
        }
        (Method::POST, "/v1/adopt") => {
            let r: AdoptRequest = match body_json(req).await {
                Ok(r) => r,
                Err(e) => return e,
            };
            match daemon.adopt(r).await {
                Ok(v) => json(200, &v),
                Err(e) => error(e.status(), e),
            }
        }
        (Method::POST, "/v1/detach") => {
            let r: DetachRequest = match body_json(req).await {
                Ok(r) => r,
                Err(e) => return e,
            };
            match daemon.detach(r).await {
                Ok(v) => json(200, &v),
                Err(e) => error(e.status(), e),
            }
        }
        (Method::POST, "/v1/reload") => match daemon.reload().await {
            Ok(v) => json(200, &v),
            Err(e) => error(e.status(), e),
        },
        (Method::GET, "/v1/decisions") => {
            let limit = match q("limit").map(|l| l.parse::<usize>()) {
                None => 100,
                Some(Ok(n)) => n.min(1000),
                Some(Err(_)) => return error(400, "limit: expected a number"),
            };
            let cgroup = match q("cgroup_id").map(|l| l.parse::<u64>()) {
                None => None,
                Some(Ok(n)) => Some(n),
                Some(Err(_)) => return error(400, "cgroup_id: expected a number"),
            };
            let recs = daemon.shared.audit.recent_decisions(cgroup, limit);
            json(200, &serde_json::json!(recs))
        }
        (Method::GET, "/v1/trust") => match daemon.trust_files() {
            Ok(v) => json(200, &v),
            Err(e) => error(e.status(), e),
        },
        (Method::GET, "/v1/policy") => text(200, daemon.shared.policy.load().show()),
        (Method::GET, "/v1/explain") => {
            let Some(host) = q("host") else {
                return error(400, "explain: give ?host=HOST[:PORT]");
            };
            let profile = q("profile").unwrap_or_else(|| "default".into());
            match crate::report::explain_text(&daemon.shared.policy.load(), &host, &profile) {
                Ok(t) => text(200, t),
                Err(e) => error(400, crate::report::one_line(&e)),
            }
        }
        (Method::GET, "/metrics") => crate::metrics::text_response(daemon.metrics().await),
        (_, "/v1/status" | "/v1/attachments" | "/v1/attach" | "/v1/adopt" | "/v1/detach")
        | (_, "/v1/reload" | "/v1/trust")
        | (_, "/v1/decisions" | "/v1/policy" | "/v1/explain" | "/metrics") => error(
            405,
            format!("method {} not allowed on {path}", req.method()),
        ),
        _ => error(404, format!("no such endpoint {path}")),
    }
}

/// `a=b&c=d` with %XX and `+` decoded.
fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `application/x-www-form-urlencoded`-style encoding of one query value.
pub fn percent_encode(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

// ---------------------------------------------------------------- client ---

/// The socket path: the flag, else `EGRESS_CONTROL` (clap reads it), else the default.
pub fn socket_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// Whether a daemon answers on `path` (a socket file nobody listens on is
/// stale). A socket we may not connect to counts as running, so the caller's
/// request fails with "permission denied" instead of falling back to
/// standalone mode behind the daemon's back.
pub fn daemon_running(path: &Path) -> bool {
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::PermissionDenied,
    }
}

/// An HTTP/1.1 connection to the control socket at `path`.
async fn connect(
    path: &Path,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, ControlError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ControlError::Io {
            path: path.to_owned(),
            source,
        })?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ControlError::Http {
            path: path.to_owned(),
            source,
        })?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One request to the daemon. A 4xx/5xx answer becomes `Refused` with the
/// daemon's one-line reason.
pub async fn call(
    path: &Path,
    method: Method,
    uri: &str,
    body: Option<serde_json::Value>,
) -> Result<Bytes, ControlError> {
    let http = |source| ControlError::Http {
        path: path.to_owned(),
        source,
    };
    let mut sender = connect(path).await?;
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header(hyper::header::HOST, "egress-agent");
    if body.is_some() {
        b = b.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = b
        .body(Full::new(Bytes::from(
            body.map(|v| v.to_string()).unwrap_or_default(),
        )))
        .map_err(|e| ControlError::BadReply(path.to_owned(), e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(http)?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map_err(http)?.to_bytes();
    if status.is_success() {
        return Ok(bytes);
    }
    let msg = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{status}: {}", String::from_utf8_lossy(&bytes).trim()));
    Err(ControlError::Refused(msg))
}

/// A streaming GET (`/v1/pending?follow=1`): `each` gets every line until the stream ends or
/// `each` returns false.
pub async fn follow(
    path: &Path,
    uri: &str,
    mut each: impl FnMut(&str) -> bool,
) -> Result<(), ControlError> {
    let http = |source| ControlError::Http {
        path: path.to_owned(),
        source,
    };
    let mut sender = connect(path).await?;
    let req = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(hyper::header::HOST, "egress-agent")
        .body(Full::new(Bytes::new()))
        .map_err(|e| ControlError::BadReply(path.to_owned(), e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(http)?;
    if !resp.status().is_success() {
        let status = resp.status();
        let b = resp.into_body().collect().await.map_err(http)?.to_bytes();
        return Err(ControlError::Refused(format!(
            "{status}: {}",
            String::from_utf8_lossy(&b).trim()
        )));
    }
    let mut body = resp.into_body();
    let mut partial = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(http)?.into_data() else {
            continue;
        };
        partial.extend_from_slice(&data);
        while let Some(nl) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=nl).collect();
            if !each(String::from_utf8_lossy(&line).trim_end()) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// `call` from synchronous code (the CLI).
pub fn call_blocking(
    path: &Path,
    method: Method,
    uri: &str,
    body: Option<serde_json::Value>,
) -> Result<Bytes, ControlError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ControlError::Io {
            path: path.to_owned(),
            source,
        })?;
    rt.block_on(call(path, method, uri, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_round_trip() {
        let v = "a b:443/é&x";
        let q = format!("host={}&profile=ci", percent_encode(v));
        let p = query_pairs(&q);
        assert_eq!(p[0], ("host".into(), v.into()));
        assert_eq!(p[1], ("profile".into(), "ci".into()));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
