//! registry: the package registries of the real-client lab (`tests/src/lab`), run in `up-*`.
//!
//! One HTTPS server (h2 + HTTP/1.1, any name the certificate holds) over a tree built at test time
//! by `tests/lab/make_fixtures.py`: a PEP 503 index, npm packuments and tarballs, a cargo sparse
//! index with its `.crate` downloads and a GOPROXY tree are plain files; `/git/…` is handed to
//! `git http-backend` (CGI, the smart protocol). Every request is logged as one JSON line
//! (`method`, `path`, `host`, `sni`, `version`, `status`). Prints `READY` once bound; exits when
//! stdin closes or on SIGTERM.

use std::convert::Infallible;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(about = "Static registries + git http-backend for the real-client lab")]
struct Args {
    /// Address to serve HTTPS on (repeatable).
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    /// Certificate chain (PEM) for every name served.
    #[arg(long)]
    cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// The tree to serve; `<root>/git` holds the bare repositories `/git/…` serves.
    #[arg(long)]
    root: PathBuf,
    /// Append one JSON line per request here.
    #[arg(long)]
    log: Option<PathBuf>,
}

struct State {
    root: PathBuf,
    log: Option<Mutex<File>>,
}

impl State {
    fn log(&self, v: serde_json::Value) {
        if let Some(f) = &self.log {
            let mut line = v.to_string();
            line.push('\n');
            let _ = f.lock().unwrap().write_all(line.as_bytes());
        }
    }
}

type Body = Full<Bytes>;

fn response(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(body.into()))
        .unwrap()
}

/// The file under `root` that `path` names (percent-decoding is not needed: every fixture name is
/// plain ASCII), refusing anything that would climb out. A directory serves its `index.html` or
/// `index.json` (an npm packument lives at `npm/NAME/index.json`, next to `npm/NAME/-/`).
fn file_for(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = Path::new(path.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let p = root.join(rel);
    if p.is_dir() {
        return ["index.html", "index.json"]
            .iter()
            .map(|i| p.join(i))
            .find(|i| i.is_file());
    }
    p.is_file().then_some(p)
}

fn content_type(p: &Path) -> &'static str {
    match p.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("json" | "info") => "application/json",
        Some("mod") | None => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

async fn static_file(st: &State, path: &str) -> Response<Body> {
    match file_for(&st.root, path) {
        Some(p) => match tokio::fs::read(&p).await {
            Ok(data) => response(StatusCode::OK, content_type(&p), data),
            Err(e) => response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                e.to_string(),
            ),
        },
        None => response(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// `/git/REPO/…` through `git http-backend` (RFC 3875 CGI): the request body goes to its stdin,
/// its `Status:` and other headers, then the body, come back on stdout.
async fn git_cgi(st: &State, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return response(StatusCode::BAD_REQUEST, "text/plain", e.to_string()),
    };
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let path_info = parts.uri.path().trim_start_matches("/git").to_string();
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", st.root.join("git"))
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", &path_info)
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_ADDR", "198.51.100.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("git http-backend: {e}"),
            )
        }
    };
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Feed and drain at once: a large pack would fill one pipe while the other waits.
    let feed = async move {
        let _ = stdin.write_all(&body).await;
    };
    let drain = async move {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out).await;
        out
    };
    let ((), out) = tokio::join!(feed, drain);
    let _ = child.wait().await;
    cgi_response(&out)
}

/// Splits a CGI program's output into a response: headers up to the first blank line
/// (`Status: 404 Not Found` sets the status), the rest is the body.
fn cgi_response(out: &[u8]) -> Response<Body> {
    let (head, body) = match find(out, b"\r\n\r\n") {
        Some(i) => (&out[..i], &out[i + 4..]),
        None => match find(out, b"\n\n") {
            Some(i) => (&out[..i], &out[i + 2..]),
            None => {
                return response(
                    StatusCode::BAD_GATEWAY,
                    "text/plain",
                    "git http-backend printed no header\n",
                )
            }
        },
    };
    let mut b = Response::builder().status(StatusCode::OK);
    for line in String::from_utf8_lossy(head).lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("status") {
            let code = v.split_whitespace().next().and_then(|c| c.parse().ok());
            b = b.status(code.unwrap_or(500));
        } else {
            b = b.header(k, v);
        }
    }
    b.body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap_or_else(|e| response(StatusCode::BAD_GATEWAY, "text/plain", e.to_string()))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn handle(
    st: Arc<State>,
    req: Request<Incoming>,
    sni: Option<String>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let version = format!("{:?}", req.version());
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let resp = if path == "/git" || path.starts_with("/git/") {
        git_cgi(&st, req).await
    } else if method == "GET" || method == "HEAD" {
        static_file(&st, &path).await
    } else {
        response(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "read-only\n")
    };
    st.log(json!({
        "method": method, "path": path, "host": host, "sni": sni,
        "version": version, "status": resp.status().as_u16(),
    }));
    Ok(resp)
}

async fn serve(st: Arc<State>, l: TcpListener, acceptor: tokio_rustls::TlsAcceptor) {
    loop {
        let Ok((s, _peer)) = l.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let (st, acceptor) = (st.clone(), acceptor.clone());
        tokio::spawn(async move {
            let accept = acceptor.accept(s);
            let Ok(Ok(tls)) =
                tokio::time::timeout(std::time::Duration::from_secs(10), accept).await
            else {
                return;
            };
            let sni = tls.get_ref().1.server_name().map(str::to_string);
            let svc = hyper::service::service_fn(move |req| handle(st.clone(), req, sni.clone()));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("read {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parse {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("read {}", key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

async fn run(args: Args) -> Result<()> {
    let acceptor = tls_acceptor(&args.cert, &args.key)?;
    let log = match &args.log {
        Some(p) => Some(Mutex::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("open {}", p.display()))?,
        )),
        None => None,
    };
    let st = Arc::new(State {
        root: args.root.clone(),
        log,
    });
    for addr in &args.listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {addr}"))?;
        tokio::spawn(serve(st.clone(), l, acceptor.clone()));
    }
    println!("READY");
    std::io::stdout().flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    loop {
        tokio::select! {
            _ = term.recv() => break,
            r = stdin.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
        }
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("registry: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_never_climb_out_and_directories_serve_their_index() {
        let dir = std::env::temp_dir().join(format!("registry-unit-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("npm/labpkg/-")).unwrap();
        std::fs::write(dir.join("npm/labpkg/index.json"), "{}").unwrap();
        std::fs::write(dir.join("a.txt"), "a").unwrap();
        assert_eq!(
            file_for(&dir, "/npm/labpkg"),
            Some(dir.join("npm/labpkg/index.json"))
        );
        assert_eq!(file_for(&dir, "/a.txt"), Some(dir.join("a.txt")));
        assert_eq!(file_for(&dir, "/../etc/passwd"), None);
        assert_eq!(file_for(&dir, "/npm/../a.txt"), None);
        assert_eq!(file_for(&dir, "/npm/labpkg/-"), None);
        assert_eq!(file_for(&dir, "/missing"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cgi_output_becomes_a_response() {
        let r = cgi_response(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope");
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()["content-type"], "text/plain");
        let r = cgi_response(b"Content-Type: application/x-git-upload-pack-advertisement\n\n001e");
        assert_eq!(r.status(), 200);
        assert_eq!(cgi_response(b"no header").status(), 502);
    }
}
