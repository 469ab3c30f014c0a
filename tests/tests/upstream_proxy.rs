//! The upstream proxy (issue 17 §1) with a real one: Squid from Debian, started by the test in
//! the fake internet (`up-*`, on 203.0.113.60, named `proxy.test`), its access log read back.
//! Allowed HTTPS (passthrough and inspected), plain HTTP and opaque TCP go through it; what the
//! policy denies never reaches it; `no_upstream_proxy` names go direct; a proxy that refuses
//! (403, 407), is down or never answers is `upstream_unreachable` with its status in the reason.
//! Squid's side is shown to work without the agent first.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use egress_tests::{
    addrs::*, agent::Agent, bin_path, clients::*, require_root, threat, topology::Topology, FakeNet,
};
use serde_json::Value;

/// The proxy's address in the fake internet (TEST-NET-3, exempted by the test policies).
const PROXY_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 60);
/// No authentication on this port; `AUTH_PORT` requires `alice` / `PASSWORD`.
const OPEN_PORT: u16 = 3128;
const AUTH_PORT: u16 = 3129;
const PASSWORD: &str = "pw-s3cr3t-for-squid";

/// One line of Squid's access log (`logformat egress` below).
#[derive(Debug, Clone)]
struct Logged {
    user: String,
    /// `TCP_TUNNEL/200`, `TCP_DENIED/403`, ...
    status: String,
    method: String,
    /// `host:port` for CONNECT.
    url: String,
}

/// A Squid of the test's own (config, logs, pid file in its scratch directory), killed on drop.
struct Squid {
    child: Option<Child>,
    dir: PathBuf,
}

impl Squid {
    /// Starts Squid in up-* on PROXY_IP:OPEN_PORT and :AUTH_PORT; it resolves through fakenet's
    /// DNS and refuses `alt.test` with a 403 (the policy allows it: the proxy's refusal shows).
    fn start(topo: &Topology) -> Option<Squid> {
        let bin = ["/usr/sbin/squid", "/usr/bin/squid"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        let dir = topo.workdir().join("squid");
        std::fs::create_dir_all(&dir).unwrap();
        let hash = Command::new("openssl")
            .args(["passwd", "-1", PASSWORD])
            .output()
            .expect("openssl passwd");
        assert!(hash.status.success(), "{hash:?}");
        let hash = String::from_utf8(hash.stdout).unwrap();
        std::fs::write(dir.join("passwd"), format!("alice:{}", hash.trim())).unwrap();
        let d = dir.display();
        let conf = format!(
            "http_port {PROXY_IP}:{OPEN_PORT} name=open\n\
             http_port {PROXY_IP}:{AUTH_PORT} name=auth\n\
             pid_filename {d}/squid.pid\n\
             cache_log {d}/cache.log\n\
             logformat egress %ts.%03tu %>a %un %Ss/%03>Hs %rm %ru %<a\n\
             access_log stdio:{d}/access.log egress\n\
             cache deny all\ncache_mem 1 MB\ncoredump_dir {d}\npinger_enable off\n\
             visible_hostname egress-test-proxy\nshutdown_lifetime 0 seconds\n\
             dns_nameservers {DNS}\n\
             auth_param basic program /usr/lib/squid/basic_ncsa_auth {d}/passwd\n\
             auth_param basic children 1 startup=1 idle=1\n\
             auth_param basic realm egress-test\n\
             acl authport myportname auth\nacl authed proxy_auth REQUIRED\n\
             acl refused dstdomain alt.test\n\
             http_access deny refused\nhttp_access deny authport !authed\n\
             http_access allow all\n"
        );
        std::fs::write(dir.join("squid.conf"), conf).unwrap();
        // Squid drops to its own user; the scratch directory must be its.
        let ok = Command::new("chown")
            .args(["-R", "proxy:proxy"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(ok.success());
        topo.add_up_address(PROXY_IP);
        let child = topo
            .up_command(bin)
            .args(["-N", "-f"])
            .arg(dir.join("squid.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn squid");
        let squid = Squid {
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while squid
            .cache_log()
            .matches("Accepting HTTP Socket connections")
            .count()
            < 2
        {
            assert!(
                Instant::now() < deadline,
                "squid did not start: {}",
                squid.cache_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(squid)
    }

    fn cache_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("cache.log")).unwrap_or_default()
    }

    fn log(&self) -> Vec<Logged> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some(Logged {
                    user: f.get(2)?.to_string(),
                    status: f.get(3)?.to_string(),
                    method: f.get(4)?.to_string(),
                    url: f.get(5)?.to_string(),
                })
            })
            .collect()
    }

    /// Waits (10 s) for a CONNECT to `target` with a status starting `status`. Squid writes a
    /// tunnel's line when the tunnel closes, so the client must have finished.
    fn wait_connect(&self, target: &str, status: &str) -> Logged {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if let Some(l) = log
                .iter()
                .find(|l| l.method == "CONNECT" && l.url == target && l.status.starts_with(status))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no CONNECT {target} {status} in squid's log: {log:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn saw_host(&self, host: &str) -> bool {
        self.log()
            .iter()
            .any(|l| l.url.split(':').next() == Some(host) || l.url.contains(&format!("//{host}")))
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: with shutdown_lifetime 0 it exits at once; SIGKILL if it does not.
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Squid, fakenet (with `proxy.test`) and the agent's CA, or `None` (skipped) without Squid.
struct Setup {
    topo: Topology,
    net: FakeNet,
    squid: Squid,
    state: PathBuf,
    /// The agent's CA certificate (inspected hosts).
    agent_ca: String,
    /// fakenet's CA (passthrough hosts).
    net_ca: String,
}

fn setup(name: &str) -> Option<Setup> {
    let topo = Topology::new(name);
    let net = topo.start_fakenet_with(&["--record", &format!("proxy.test={PROXY_IP}")]);
    let Some(squid) = Squid::start(&topo) else {
        assert!(
            !egress_tests::is_ci(),
            "squid is not installed (xtask deps installs squid-openssl)"
        );
        eprintln!("SKIPPED: squid is not installed (apt-get install squid-openssl)");
        return None;
    };
    let state = topo.workdir().join("state");
    let out = Command::new(bin_path("egress-agent"))
        .args(["ca", "export"])
        .env("EGRESS_STATE_DIR", &state)
        .output()
        .unwrap();
    assert!(out.status.success(), "ca export: {out:?}");
    let agent_ca = topo.workdir().join("agent-ca.pem");
    std::fs::write(&agent_ca, &out.stdout).unwrap();
    let net_ca = net.ca_pem.display().to_string();
    Some(Setup {
        topo,
        net,
        squid,
        state,
        agent_ca: agent_ca.display().to_string(),
        net_ca,
    })
}

impl Setup {
    /// The test policy with the proxy keys in `proxy` (TOML lines).
    fn policy(&self, version: &str, proxy: &str) -> String {
        format!(
            r#"version = "{version}"
resolver = "203.0.113.53:53"
allow_ranges = ["198.51.100.0/24", "203.0.113.0/24", "2001:db8:100::/48"]
upstream_ca = "{}"
{proxy}
[profile.default]
allow = ["allowed.test", "www.allowed.test", "allowed.test:7", "allowed.test:25", "alt.test"]
inspect = ["api.allowed.test"]
"#,
            self.net.ca_pem.display()
        )
    }

    fn agent(&self, policy: &str) -> Agent {
        let state = self.state.display().to_string();
        Agent::attach_with_env(&self.topo, policy, &[("EGRESS_STATE_DIR", &state)])
    }

    /// Rewrites the agent's policy file and reloads it (SIGHUP), waiting for `version`.
    fn reload(&self, agent: &Agent, policy: &str, version: &str) {
        std::fs::write(&agent.policy, policy).unwrap();
        let ok = Command::new("kill")
            .args(["-HUP", &agent.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !agent
            .log_lines()
            .iter()
            .any(|l| l.contains("policy reloaded") && l.contains(version))
        {
            assert!(Instant::now() < deadline, "no reload to {version}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn curl(&self, args: &[&str]) -> Curl {
        curl(&self.topo, args, &[])
    }
}

/// Whether the fake internet saw this echo request come from the agent's namespace (dialed
/// directly) rather than from the proxy (which lives in up-* itself).
fn from_agent(c: &Curl) -> bool {
    let v = c.json();
    let peer = v["peer"]
        .as_str()
        .and_then(|p| p.parse::<std::net::SocketAddr>().ok())
        .map(|s| s.ip())
        .unwrap_or_else(|| panic!("no peer in the echo: {c:?}"));
    peer == IpAddr::from(AG_LINK) || peer == IpAddr::from(AG_LINK_V6)
}

/// The deny contract's JSON of a plain HTTP refusal.
fn denial(c: &Curl, code: &str) -> Value {
    assert_eq!(c.status, 403, "{c:?}");
    let v = c.json();
    assert_eq!(v["error"], code, "{c:?}");
    assert!(
        c.header("proxy-status")
            .is_some_and(|p| p.starts_with("egress-agent; error=")),
        "{c:?}"
    );
    v
}

#[test]
fn allowed_connections_go_through_squid_and_denied_ones_never_reach_it() {
    require_root!();
    let Some(s) = setup("proxy_route") else {
        return;
    };
    let proxy = format!("http://{PROXY_IP}:{OPEN_PORT}");
    // Without the agent: Squid tunnels to the fake internet and refuses alt.test itself; the
    // host the policy will deny is reachable directly.
    let c = s.curl(&[
        "-x",
        &proxy,
        "--cacert",
        &s.net_ca,
        "https://allowed.test/baseline",
    ]);
    assert_eq!(c.status, 200, "through squid without the agent: {c:?}");
    s.squid.wait_connect("allowed.test:443", "TCP_TUNNEL/200");
    let c = s.curl(&["-x", &proxy, "http://alt.test/"]);
    assert_eq!(c.status, 403, "squid refuses alt.test: {c:?}");
    let c = s.curl(&["--cacert", &s.net_ca, "https://other.test/"]);
    assert_eq!(c.status, 200, "other.test without the agent: {c:?}");
    let other_before = s.net.connections_to(WEB2.into()).len();

    let policy = s.policy(
        "proxy-1",
        "upstream_proxy = \"http://proxy.test:3128\"\nno_upstream_proxy = [\"www.allowed.test\"]",
    );
    let agent = s.agent(&policy);

    // Passthrough HTTPS: the client verifies fakenet's own certificate through the tunnel.
    let c = s.curl(&["--cacert", &s.net_ca, "https://allowed.test/pass"]);
    assert_eq!(c.status, 200, "{c:?}");
    assert!(!from_agent(&c), "dialed directly: {c:?}");
    s.squid.wait_connect("allowed.test:443", "TCP_TUNNEL/200");
    // Inspected HTTPS: the agent's certificate to the client, TLS to the upstream in the tunnel.
    let c = s.curl(&["--cacert", &s.agent_ca, "https://api.allowed.test/insp"]);
    assert_eq!(c.status, 200, "{c:?}");
    assert_eq!(c.json()["sni"], "api.allowed.test", "{c:?}");
    assert!(!from_agent(&c), "dialed directly: {c:?}");
    // Plain HTTP.
    let c = s.curl(&["http://allowed.test/plain"]);
    assert_eq!(c.status, 200, "{c:?}");
    assert!(!from_agent(&c), "dialed directly: {c:?}");
    // Opaque TCP, by its host:port rules, after the agent's DNS answered the name: an echo,
    // and a server that speaks first (its banner follows the proxy's answer at once).
    let d = s.topo.probe(&["dns", "203.0.113.53", "allowed.test"]);
    assert_eq!(d["ips"], serde_json::json!([WEB1.to_string()]), "{d}");
    let echo = format!("{WEB1}:{TCP_ECHO_PORT}");
    let p = s.topo.probe(&["tcp", &echo, "--send", "hi", "--read"]);
    assert_eq!(p["reply"], "hi", "opaque TCP through the proxy: {p}");
    let banner = format!("{WEB1}:{BANNER_PORT}");
    let p = s.topo.probe(&["tcp", &banner, "--read"]);
    assert_eq!(p["reply"], BANNER, "a banner through the proxy: {p}");

    // Denied by the policy: refused by the agent, never asked of the proxy.
    // (Its name does not resolve in the sandbox either: the client forces the address.)
    let c = s.curl(&[
        "--resolve",
        "other.test:80:198.51.100.11",
        "http://other.test/",
    ]);
    denial(&c, "host_not_allowed");
    let c = s.curl(&[
        "--resolve",
        "other.test:443:198.51.100.11",
        "--cacert",
        &s.net_ca,
        "https://other.test/",
    ]);
    assert_eq!(c.status, 0, "{c:?}");
    assert!(c.stderr.contains("alert"), "a TLS alert: {c:?}");
    let c = s.curl(&["http://allowed.test:8080/"]);
    denial(&c, "port_not_allowed");
    std::thread::sleep(Duration::from_millis(300));
    let reached =
        s.squid.saw_host("other.test") || s.squid.log().iter().any(|l| l.url.contains(":8080"));
    threat(
        "C",
        "a denied host reached through the upstream proxy",
        !reached,
    );
    assert!(!reached, "squid saw a denied host: {:#?}", s.squid.log());
    assert_eq!(s.net.connections_to(WEB2.into()).len(), other_before);

    // no_upstream_proxy: dialed directly from the agent's namespace, never through the proxy.
    let c = s.curl(&["--cacert", &s.net_ca, "https://www.allowed.test/direct"]);
    assert_eq!(c.status, 200, "{c:?}");
    assert!(from_agent(&c), "not dialed directly: {c:?}");
    assert!(
        !s.squid.saw_host("www.allowed.test"),
        "{:#?}",
        s.squid.log()
    );

    // The proxy refuses a host the policy allows: upstream_unreachable with its status line.
    let c = s.curl(&["http://alt.test/"]);
    let v = denial(&c, "upstream_unreachable");
    let reason = v["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("http://proxy.test:3128") && reason.contains("403 Forbidden"),
        "{v}"
    );
    s.squid.wait_connect("alt.test:80", "TCP_DENIED/403");

    // explain names the route.
    let out = Command::new(bin_path("egress-agent"))
        .args(["explain", "allowed.test", "--policy"])
        .arg(&agent.policy)
        .env("EGRESS_CONTROL", s.topo.workdir().join("nobody.sock"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "route: CONNECT allowed.test:443 through upstream proxy http://proxy.test:3128"
        ),
        "{text}"
    );

    // Stopping the agent closes the tunnels its HTTP engine kept for reuse; Squid logs a
    // tunnel when it closes.
    let recs = agent
        .audit_records_until(|r| r["code"] == "upstream_unreachable" && r["name"] == "alt.test");
    drop(agent);
    for target in [
        "api.allowed.test:443",
        "allowed.test:80",
        "allowed.test:7",
        "allowed.test:25",
    ] {
        let l = s.squid.wait_connect(target, "TCP_TUNNEL/200");
        assert_eq!(l.user, "-", "{l:?}");
    }
    assert!(!s.squid.saw_host("other.test"), "{:#?}", s.squid.log());
    assert!(
        recs.iter()
            .any(|r| r["code"] == "upstream_unreachable" && r["name"] == "alt.test"),
        "{recs:#?}"
    );
}

#[test]
fn proxy_credentials_and_a_proxy_that_never_answers() {
    require_root!();
    let Some(mut s) = setup("proxy_auth") else {
        return;
    };
    let proxy = format!("http://{PROXY_IP}:{AUTH_PORT}");
    // Without the agent: Squid's auth port wants alice's password.
    let c = s.curl(&["-x", &proxy, "http://allowed.test/"]);
    assert_eq!(c.status, 407, "{c:?}");
    let c = s.curl(&[
        "-x",
        &proxy,
        "--proxy-user",
        &format!("alice:{PASSWORD}"),
        "http://allowed.test/",
    ]);
    assert_eq!(c.status, 200, "{c:?}");

    // No credentials: the proxy's 407 becomes upstream_unreachable, with the fix.
    let url = format!("upstream_proxy = \"http://proxy.test:{AUTH_PORT}\"");
    let agent = s.agent(&s.policy("auth-1", &url));
    let c = s.curl(&["http://allowed.test/"]);
    let v = denial(&c, "upstream_unreachable");
    let reason = v["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("407 Proxy Authentication Required")
            && reason.contains("upstream_proxy_auth"),
        "{v}"
    );

    // The credentials file (read at dial time): the tunnel opens as alice.
    let auth = s.topo.workdir().join("proxy-auth");
    std::fs::write(&auth, format!("alice:{PASSWORD}\n")).unwrap();
    let with_auth = format!(
        "{url}\nupstream_proxy_auth = {{ file = \"{}\" }}",
        auth.display()
    );
    s.reload(&agent, &s.policy("auth-2", &with_auth), "auth-2");
    let c = s.curl(&["--cacert", &s.net_ca, "https://allowed.test/as-alice"]);
    assert_eq!(c.status, 200, "{c:?}");
    let l = s.squid.wait_connect("allowed.test:443", "TCP_TUNNEL/200");
    assert_eq!(l.user, "alice", "{l:?}");
    // A wrong password in the file: 407 again, and the password is nowhere in what was said.
    std::fs::write(&auth, "alice:wrong-password-77\n").unwrap();
    let c = s.curl(&["http://allowed.test/"]);
    let v = denial(&c, "upstream_unreachable");
    assert!(v["reason"].as_str().unwrap_or("").contains("407"), "{v}");
    // The denial's record is in the log before the log is searched.
    agent.audit_records_until(|r| r["reason"].as_str().is_some_and(|x| x.contains("407")));
    let said = format!("{c:?}{}", agent.log_lines().join("\n"))
        + &std::fs::read_to_string(&agent.audit).unwrap_or_default();
    assert!(!said.contains("wrong-password-77") && !said.contains(PASSWORD));

    // The proxy goes down: the documented denial, naming the proxy.
    s.squid.stop();
    let c = curl(&s.topo, &["http://allowed.test/down"], &[]);
    let v = denial(&c, "upstream_unreachable");
    let reason = v["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains(&format!("http://proxy.test:{AUTH_PORT} is unreachable"))
            && reason.contains("Connection refused"),
        "{v}"
    );
    let c = curl(
        &s.topo,
        &["--cacert", &s.net_ca, "https://allowed.test/down"],
        &[],
    );
    assert_ne!(c.status, 200, "{c:?}");

    // A proxy that accepts and never answers (fakenet's silent port): a timeout, not a hang.
    let silent = format!("upstream_proxy = \"http://{WEB1}:{SILENT_PORT}\"");
    s.reload(&agent, &s.policy("silent-1", &silent), "silent-1");
    let t0 = Instant::now();
    let c = curl(&s.topo, &["--max-time", "30", "http://allowed.test/"], &[]);
    let v = denial(&c, "upstream_unreachable");
    assert!(
        v["reason"]
            .as_str()
            .unwrap_or("")
            .contains("did not answer CONNECT allowed.test:80 within 10s"),
        "{v}"
    );
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
}
