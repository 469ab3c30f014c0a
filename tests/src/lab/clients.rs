//! The lab's clients: for each, how it asks for the allowed thing, for the thing a path rule
//! refuses, under another name, and at another name's address; how it trusts the test CA by its
//! own setting; and what success looks like in what it fetched.
//!
//! Flags that only bound time (`--retries 0`, `--fetch-retries=0`, `CARGO_NET_RETRY=0`,
//! `--tries=1`, timeouts) keep a denied run from retrying for minutes; quiet flags (`-q`, `-sS`,
//! `-nv`) keep progress lines out of "the first line the client printed".

use std::net::Ipv4Addr;
use std::path::Path;

use super::{Lab, GRPC, REGISTRY, WEBSOCKET};
use crate::addrs::WEB1;

/// One request of a client.
pub struct Req<'a> {
    pub lab: &'a Lab,
    /// The name the client asks for (the allowed one, or the denied one).
    pub host: &'a str,
    /// Ask for the thing the inspected host's path rule refuses (the registry serves it).
    pub blocked: bool,
    /// Reach `host` at this address instead of resolving it, for a client with its own flag for
    /// that ([`SniWay::Flag`]); the others get an `/etc/hosts` entry instead.
    pub via: Option<Ipv4Addr>,
    /// The test CA, when the client is to trust it by its own setting; `None` under inspection
    /// (then only what `exec --trust-ca` sets applies).
    pub ca: Option<&'a Path>,
    /// Scratch directory of this run (the client's cwd; HOME is `work/home`).
    pub work: &'a Path,
}

impl Req<'_> {
    fn s(p: &Path) -> String {
        p.display().to_string()
    }
    fn work(&self, rel: &str) -> String {
        Self::s(&self.work.join(rel))
    }
    fn ca(&self) -> Option<String> {
        self.ca.map(Self::s)
    }
}

/// The command of one request.
#[derive(Default)]
pub struct Cmd {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Written to the client's stdin (else /dev/null).
    pub stdin: Option<String>,
}

fn cmd<I: IntoIterator<Item = S>, S: Into<String>>(argv: I) -> Cmd {
    Cmd {
        argv: argv.into_iter().map(Into::into).collect(),
        ..Cmd::default()
    }
}

impl Cmd {
    fn arg(mut self, a: impl Into<String>) -> Cmd {
        self.argv.push(a.into());
        self
    }
    fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Cmd {
        self.argv.extend(a.into_iter().map(Into::into));
        self
    }
    fn env(mut self, k: &str, v: impl Into<String>) -> Cmd {
        self.env.push((k.to_string(), v.into()));
        self
    }
    fn opt<T>(self, v: Option<T>, f: impl FnOnce(Cmd, T) -> Cmd) -> Cmd {
        match v {
            Some(v) => f(self, v),
            None => self,
        }
    }
}

/// How a client reaches an allowed name's address while naming another host (SNI, Host).
#[derive(Clone, Copy)]
pub enum SniWay {
    /// The client's own flag (described here), e.g. curl `--resolve`.
    Flag(&'static str),
    /// An `/etc/hosts` line `ADDR DENIED-NAME`, bind-mounted over /etc/hosts in a private mount
    /// namespace around the run (exec and the client both see it).
    Hosts,
}

pub struct Client {
    pub name: &'static str,
    /// What it does, for the report.
    pub what: &'static str,
    /// Its entry in the policies (`name` = 80 and 443, or `name:port`).
    pub allowed: &'static str,
    /// A name in no policy that the same server answers.
    pub denied: &'static str,
    /// The address both names resolve to.
    pub addr: Ipv4Addr,
    pub sni_way: SniWay,
    /// The paths the inspect policy allows on `allowed` (the blocked request is outside them);
    /// `None`: no path rule can apply (opaque TCP).
    pub paths: Option<&'static [&'static str]>,
    pub command: fn(&Req) -> Cmd,
    /// Given exit status 0: does what the client printed or fetched show success?
    pub check: fn(&Req, &str) -> Result<(), String>,
}

impl Client {
    /// The allowed host name without a port.
    pub fn allowed_name(&self) -> &'static str {
        self.allowed.split(':').next().unwrap()
    }
    /// Its port (443 when the policy entry has none).
    pub fn port(&self) -> u16 {
        self.allowed
            .split_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(443)
    }
}

fn file_has(path: &Path, needle: &str) -> Result<(), String> {
    match std::fs::read_to_string(path) {
        Ok(t) if t.contains(needle) => Ok(()),
        Ok(_) => Err(format!("{} lacks {needle:?}", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn output_has(out: &str, needles: &[&str]) -> Result<(), String> {
    match needles.iter().find(|n| !out.contains(*n)) {
        None => Ok(()),
        Some(n) => Err(format!("output lacks {n:?}")),
    }
}

/// The fake internet's HTTPS echo path: the echo answers any path, the rule allows `/lab/ok`.
fn echo_path(r: &Req) -> &'static str {
    if r.blocked {
        "/lab/blocked"
    } else {
        "/lab/ok"
    }
}

fn echo_check(r: &Req, out: &str) -> Result<(), String> {
    output_has(out, &[&format!("\"path\":\"{}\"", echo_path(r))])
}

fn pip(r: &Req) -> Cmd {
    let pkg = if r.blocked { "blockedpkg" } else { "labpkg" };
    cmd([Req::s(&r.lab.tools.python), "-m".into(), "pip".into()])
        .args([
            "install",
            "-q",
            "--no-cache-dir",
            "--disable-pip-version-check",
        ])
        .args(["--no-deps", "--retries", "0", "--timeout", "20", "--target"])
        .arg(r.work("site"))
        .arg("--index-url")
        .arg(format!("https://{}/pypi/simple/", r.host))
        .opt(r.ca(), |c, ca| c.arg("--cert").arg(ca))
        .arg(format!("{pkg}==1.0.0"))
        .env("PIP_CONFIG_FILE", "/dev/null")
}

fn pip_check(r: &Req, _: &str) -> Result<(), String> {
    let pkg = if r.blocked { "blockedpkg" } else { "labpkg" };
    file_has(&r.work.join(format!("site/{pkg}/__init__.py")), "lab-ok")
}

fn npm(r: &Req) -> Cmd {
    let pkg = if r.blocked { "blockedpkg" } else { "labpkg" };
    std::fs::create_dir_all(r.work.join("proj")).unwrap();
    cmd([Req::s(&r.lab.tools.npm), "install".into()])
        .args([
            "--no-audit",
            "--no-fund",
            "--no-update-notifier",
            "--fetch-retries=0",
        ])
        .args(["--fetch-timeout=20000", "--registry"])
        .arg(format!("https://{}/npm/", r.host))
        .arg("--cache")
        .arg(r.work("npm-cache"))
        .arg("--prefix")
        .arg(r.work("proj"))
        .opt(r.ca(), |c, ca| c.arg("--cafile").arg(ca))
        .arg(format!("{pkg}@1.0.0"))
}

fn npm_check(r: &Req, _: &str) -> Result<(), String> {
    let pkg = if r.blocked { "blockedpkg" } else { "labpkg" };
    file_has(
        &r.work.join(format!("proj/node_modules/{pkg}/index.js")),
        "lab-ok",
    )
}

fn git_repo(r: &Req) -> &'static str {
    if r.blocked {
        "blocked"
    } else {
        "lab"
    }
}

fn git_https(r: &Req) -> Cmd {
    cmd([Req::s(&r.lab.tools.git)])
        .opt(r.ca(), |c, ca| {
            c.arg("-c").arg(format!("http.sslCAInfo={ca}"))
        })
        .args(["clone", "-q"])
        .arg(format!("https://{}/git/{}.git", r.host, git_repo(r)))
        .arg(r.work("clone"))
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
}

fn git_daemon(r: &Req) -> Cmd {
    cmd([Req::s(&r.lab.tools.git), "clone".into(), "-q".into()])
        .arg(format!("git://{}/{}.git", r.host, git_repo(r)))
        .arg(r.work("clone"))
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
}

fn git_check(r: &Req, _: &str) -> Result<(), String> {
    file_has(
        &r.work.join("clone/README"),
        &format!("lab-ok {}", git_repo(r)),
    )
}

fn cargo_crate(r: &Req) -> &'static str {
    if r.blocked {
        "blocked"
    } else {
        "labcrate"
    }
}

fn cargo(r: &Req) -> Cmd {
    let proj = r.work.join("proj");
    std::fs::create_dir_all(proj.join("src")).unwrap();
    std::fs::write(
        proj.join("Cargo.toml"),
        format!(
            "[package]\nname = \"labapp\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
             [dependencies]\n{} = {{ version = \"1.0.0\", registry = \"lab\" }}\n",
            cargo_crate(r)
        ),
    )
    .unwrap();
    std::fs::write(proj.join("src/lib.rs"), "").unwrap();
    cmd([Req::s(&r.lab.tools.cargo), "fetch".into(), "-q".into()])
        .arg("--manifest-path")
        .arg(Req::s(&proj.join("Cargo.toml")))
        .env("CARGO_HOME", r.work("cargo-home"))
        .env(
            "CARGO_REGISTRIES_LAB_INDEX",
            format!("sparse+https://{}/cargo/index/", r.host),
        )
        .env("CARGO_NET_RETRY", "0")
        .env("CARGO_HTTP_TIMEOUT", "20")
        .env("CARGO_TARGET_DIR", r.work("target"))
        .opt(r.ca(), |c, ca| c.env("CARGO_HTTP_CAINFO", ca))
}

fn cargo_check(r: &Req, _: &str) -> Result<(), String> {
    let cache = r.work.join("cargo-home/registry/cache");
    let want = format!("{}-1.0.0.crate", cargo_crate(r));
    let found = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .any(|d| d.path().join(&want).is_file());
    if found {
        Ok(())
    } else {
        Err(format!("no {want} under {}", cache.display()))
    }
}

fn go_module(r: &Req) -> &'static str {
    if r.blocked {
        "lab.test/blocked"
    } else {
        "lab.test/hello"
    }
}

fn go(r: &Req) -> Cmd {
    cmd([Req::s(&r.lab.tools.go), "mod".into(), "download".into()])
        .arg(format!("{}@v1.0.0", go_module(r)))
        .env("GOPROXY", format!("https://{}/go", r.host))
        .env("GOSUMDB", "off")
        .env("GOENV", "off")
        .env("GOFLAGS", "-modcacherw")
        .env("GO111MODULE", "on")
        .env("GOPATH", r.work("gopath"))
        .env("GOCACHE", r.work("gocache"))
        .opt(r.ca(), |c, ca| c.env("SSL_CERT_FILE", ca))
}

fn go_check(r: &Req, _: &str) -> Result<(), String> {
    let m = go_module(r);
    let file = m.rsplit('/').next().unwrap();
    file_has(
        &r.work.join(format!("gopath/pkg/mod/{m}@v1.0.0/{file}.go")),
        "lab-ok",
    )
}

fn java(r: &Req) -> Cmd {
    let l = r.lab;
    cmd([Req::s(&l.tools.java)])
        // A small, quick JVM: the test runs it many times on two shared cores.
        .args([
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Xshare:auto",
        ])
        .opt(r.ca.map(|_| Req::s(&l.java_truststore)), |c, ts| {
            c.arg(format!("-Djavax.net.ssl.trustStore={ts}"))
                .arg("-Djavax.net.ssl.trustStorePassword=changeit")
                .arg("-Djavax.net.ssl.trustStoreType=PKCS12")
        })
        .arg("-cp")
        .arg(Req::s(&l.java_classes))
        .arg("LabFetch")
        .arg(format!("https://{}{}", r.host, echo_path(r)))
}

fn java_check(r: &Req, out: &str) -> Result<(), String> {
    output_has(out, &["HTTP 200"])?;
    echo_check(r, out)
}

fn grpc_method(r: &Req) -> &'static str {
    if r.blocked {
        "/lab.Echo/Blocked"
    } else {
        "/lab.Echo/Say"
    }
}

fn grpc(r: &Req) -> Cmd {
    cmd([Req::s(&r.lab.tools.python)])
        .arg(Req::s(&super::scripts_dir().join("grpc_lab.py")))
        .arg("call")
        .arg(format!("{}:443", r.host))
        .arg(grpc_method(r))
        .opt(r.ca(), |c, ca| c.arg("--roots").arg(ca))
}

fn websocket(r: &Req) -> Cmd {
    let path = if r.blocked { "/blocked" } else { "/echo" };
    cmd([Req::s(&r.lab.tools.python)])
        .arg(Req::s(&super::scripts_dir().join("ws_lab.py")))
        .arg("call")
        .arg(format!("wss://{}{path}", r.host))
        .opt(r.ca(), |c, ca| c.arg("--cafile").arg(ca))
}

fn echoed(_: &Req, out: &str) -> Result<(), String> {
    output_has(out, &["lab-ok hello"])
}

fn curl(r: &Req) -> Cmd {
    cmd([Req::s(&r.lab.tools.curl)])
        .args(["-sS", "--fail-with-body", "--http2", "--max-time", "20"])
        .opt(r.ca(), |c, ca| c.arg("--cacert").arg(ca))
        .opt(r.via, |c, ip| {
            c.arg("--resolve").arg(format!("{}:443:{ip}", r.host))
        })
        .args(["-w", "\nhttp_version=%{http_version}\n"])
        .arg(format!("https://{}{}", r.host, echo_path(r)))
}

fn curl_check(r: &Req, out: &str) -> Result<(), String> {
    output_has(out, &["http_version=2\n"])?;
    echo_check(r, out)
}

fn wget(r: &Req) -> Cmd {
    cmd([Req::s(&r.lab.tools.wget)])
        .args(["-nv", "-O", "-", "--tries=1", "--timeout=20"])
        .opt(r.ca(), |c, ca| c.arg(format!("--ca-certificate={ca}")))
        .arg(format!("https://{}{}", r.host, echo_path(r)))
}

fn openssl(r: &Req) -> Cmd {
    let connect = match r.via {
        Some(ip) => format!("{ip}:443"),
        None => format!("{}:443", r.host),
    };
    let mut c = cmd([Req::s(&r.lab.tools.openssl), "s_client".into()])
        .arg("-connect")
        .arg(connect)
        .arg("-servername")
        .arg(r.host)
        .args(["-verify_return_error", "-verify_quiet", "-verify_hostname"])
        .arg(r.host)
        .opt(r.ca(), |c, ca| c.arg("-CAfile").arg(ca))
        .args(["-quiet", "-alpn", "http/1.1"]);
    c.stdin = Some(format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        echo_path(r),
        r.host
    ));
    c
}

fn openssl_check(r: &Req, out: &str) -> Result<(), String> {
    output_has(out, &["HTTP/1.1 200"])?;
    echo_check(r, out)
}

/// Every client of the lab.
pub const ALL: &[Client] = &[
    Client {
        name: "pip",
        what: "pip install from a PEP 503 index (wheel)",
        allowed: "pypi.lab.test",
        denied: "mirror.lab.test",
        addr: REGISTRY,
        sni_way: SniWay::Hosts,
        paths: Some(&["/pypi/simple/labpkg/", "/pypi/packages/labpkg-*"]),
        command: pip,
        check: pip_check,
    },
    Client {
        name: "npm",
        what: "npm install (packument + tarball)",
        allowed: "npm.lab.test",
        denied: "mirror.lab.test",
        addr: REGISTRY,
        sni_way: SniWay::Hosts,
        paths: Some(&["/npm/labpkg", "/npm/labpkg/-/*"]),
        command: npm,
        check: npm_check,
    },
    Client {
        name: "git-https",
        what: "git clone over HTTPS (git http-backend, smart protocol)",
        allowed: "git.lab.test",
        denied: "mirror.lab.test",
        addr: REGISTRY,
        sni_way: SniWay::Hosts,
        paths: Some(&["/git/lab.git/**"]),
        command: git_https,
        check: git_check,
    },
    Client {
        name: "git-daemon",
        what: "git clone over git:// (git daemon, opaque TCP 9418)",
        allowed: "git.lab.test:9418",
        denied: "mirror.lab.test",
        addr: REGISTRY,
        sni_way: SniWay::Hosts,
        paths: None,
        command: git_daemon,
        check: git_check,
    },
    Client {
        name: "cargo",
        what: "cargo fetch from a sparse registry (index + .crate)",
        allowed: "crates.lab.test",
        denied: "mirror.lab.test",
        addr: REGISTRY,
        sni_way: SniWay::Hosts,
        paths: Some(&[
            "/cargo/index/config.json",
            "/cargo/index/la/bc/labcrate",
            "/cargo/api/v1/crates/labcrate/**",
        ]),
        command: cargo,
        check: cargo_check,
    },
    Client {
        name: "go",
        what: "go mod download through a GOPROXY",
        allowed: "goproxy.lab.test",
        denied: "mirror.lab.test",
        addr: REGISTRY,
        sni_way: SniWay::Hosts,
        paths: Some(&["/go/lab.test/hello/@v/*"]),
        command: go,
        check: go_check,
    },
    Client {
        name: "java",
        what: "Java 17 HttpClient GET (h2)",
        allowed: "allowed.test",
        denied: "other.test",
        addr: WEB1,
        sni_way: SniWay::Hosts,
        paths: Some(&["/lab/ok"]),
        command: java,
        check: java_check,
    },
    Client {
        name: "grpc",
        what: "Python grpcio unary call over TLS",
        allowed: "grpc.lab.test",
        denied: "grpc-mirror.lab.test",
        addr: GRPC,
        sni_way: SniWay::Hosts,
        paths: Some(&["/lab.Echo/Say"]),
        command: grpc,
        check: echoed,
    },
    Client {
        name: "websocket",
        what: "Python websockets over TLS (wss://)",
        allowed: "ws.lab.test",
        denied: "ws-mirror.lab.test",
        addr: WEBSOCKET,
        sni_way: SniWay::Hosts,
        paths: Some(&["/echo"]),
        command: websocket,
        check: echoed,
    },
    Client {
        name: "curl-h2",
        what: "curl --http2",
        allowed: "allowed.test",
        denied: "other.test",
        addr: WEB1,
        sni_way: SniWay::Flag("curl --resolve NAME:443:ADDR"),
        paths: Some(&["/lab/ok"]),
        command: curl,
        check: curl_check,
    },
    Client {
        name: "wget",
        what: "wget (GnuTLS)",
        allowed: "allowed.test",
        denied: "other.test",
        addr: WEB1,
        sni_way: SniWay::Hosts,
        paths: Some(&["/lab/ok"]),
        command: wget,
        check: echo_check,
    },
    Client {
        name: "openssl",
        what: "openssl s_client + an HTTP/1.1 request on stdin",
        allowed: "allowed.test",
        denied: "other.test",
        addr: WEB1,
        sni_way: SniWay::Flag("openssl s_client -connect ADDR:443 -servername NAME"),
        paths: Some(&["/lab/ok"]),
        command: openssl,
        check: openssl_check,
    },
];

/// The client called `name`.
pub fn by_name(name: &str) -> Option<&'static Client> {
    ALL.iter().find(|c| c.name == name)
}
