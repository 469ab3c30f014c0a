//! The load generator (`oha`), run in the configuration's cgroup inside the container's netns,
//! pinned to the load CPU, with one JSON summary out.

use std::process::Stdio;

use serde_json::Value;

use crate::env::{Env, Target, LOAD_CPU};

/// One oha run.
#[derive(Clone)]
pub struct Load {
    pub https: bool,
    pub path: String,
    /// Concurrent connections.
    pub conns: u32,
    /// Requests per second (`-q`).
    pub rate: Option<u32>,
    /// `--latency-correction` (open loop: latency counted from the scheduled send time).
    pub open_loop: bool,
    /// Seconds (`-z`), else `requests` (`-n`).
    pub seconds: Option<f64>,
    pub requests: Option<u64>,
    pub keepalive: bool,
    /// POST a 1 KiB body.
    pub post_1k: bool,
    /// `--rand-regex-url`: the host is this regex (never-seen names; resolved through DNS).
    pub host_regex: Option<String>,
}

/// What one oha run measured (latencies in µs).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Outcome {
    pub ok: u64,
    /// Client-side errors plus non-200 answers.
    pub errors: u64,
    pub error_kinds: Value,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub seconds: f64,
    pub bytes: f64,
    pub rps: f64,
}

fn us(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN) * 1e6
}

pub fn run(env: &Env, t: &Target, l: &Load) -> Outcome {
    let out = command(env, t, l).output().expect("run oha");
    outcome(&out)
}

/// Starts oha in the background (W6 runs several at once); `finish` reads its summary.
pub fn spawn(env: &Env, t: &Target, l: &Load) -> std::process::Child {
    command(env, t, l)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn oha")
}

pub fn finish(child: std::process::Child) -> Outcome {
    let out = child.wait_with_output().expect("wait for oha");
    outcome(&out)
}

fn command(env: &Env, t: &Target, l: &Load) -> std::process::Command {
    let scheme = if l.https { "https" } else { "http" };
    let port = if l.https { 443 } else { 80 };
    let url = match &l.host_regex {
        // oha's regex URLs take `.` literally; the path has no other metacharacter.
        Some(re) => format!("{scheme}://{re}{}", l.path),
        None => format!("{scheme}://{}{}", t.host, l.path),
    };
    let mut cmd = env.topo.ctr_command_in(&t.cgroup, "taskset");
    cmd.args(["-c", LOAD_CPU])
        .arg(&env.tools.oha)
        .args(["--no-tui", "--output-format", "json"])
        .args(["-t", request_timeout(l)])
        .args(["-c", &l.conns.to_string()])
        .arg("--cacert")
        .arg(&env.bundle)
        .env("SSL_CERT_FILE", &env.bundle)
        .stdin(Stdio::null());
    if let (None, Some(to)) = (
        &l.host_regex,
        if l.https {
            &t.connect_https
        } else {
            &t.connect_http
        },
    ) {
        let (ip, p) = to.rsplit_once(':').unwrap();
        cmd.args(["--connect-to", &format!("{}:{port}:{ip}:{p}", t.host)]);
    }
    if let Some(p) = &t.proxy {
        cmd.args(["-x", p]);
    }
    if let Some(r) = l.rate {
        cmd.args(["-q", &r.to_string()]);
        if l.open_loop {
            cmd.arg("--latency-correction");
        }
    }
    match (l.seconds, l.requests) {
        (Some(s), _) => {
            cmd.args(["-z", &format!("{}ms", (s * 1000.0) as u64)])
                .arg("--wait-ongoing-requests-after-deadline");
        }
        (None, Some(n)) => {
            cmd.args(["-n", &n.to_string()]);
        }
        (None, None) => panic!("oha run needs a duration or a count"),
    }
    if !l.keepalive {
        cmd.arg("--disable-keepalive");
    }
    if l.post_1k {
        cmd.args(["-m", "POST", "-d", &"x".repeat(1024)]);
    }
    if l.host_regex.is_some() {
        // fakenet's never-seen names have A records only.
        cmd.args(["--rand-regex-url", "--ipv4"]);
    }
    cmd.arg(&url);
    cmd
}

fn outcome(out: &std::process::Output) -> Outcome {
    match serde_json::from_slice::<Value>(&out.stdout) {
        Ok(v) => parse(&v),
        // A run that fails as a whole (e.g. a DNS error) counts as one error, with oha's message.
        Err(_) => Outcome {
            errors: 1,
            error_kinds: serde_json::json!({"oha": String::from_utf8_lossy(&out.stderr).trim(),
                "status": out.status.code()}),
            p50: f64::NAN,
            p90: f64::NAN,
            p99: f64::NAN,
            max: f64::NAN,
            seconds: f64::NAN,
            rps: f64::NAN,
            ..Outcome::default()
        },
    }
}

fn parse(v: &Value) -> Outcome {
    let codes = &v["statusCodeDistribution"];
    let ok = codes["200"].as_u64().unwrap_or(0);
    let non200: u64 = codes
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.as_str() != "200")
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
        .unwrap_or(0);
    let errs: u64 = v["errorDistribution"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    let s = &v["summary"];
    let p = &v["latencyPercentiles"];
    Outcome {
        ok,
        errors: errs + non200,
        error_kinds: serde_json::json!({"errors": v["errorDistribution"], "status": codes}),
        p50: us(&p["p50"]),
        p90: us(&p["p90"]),
        p99: us(&p["p99"]),
        max: us(&s["slowest"]),
        seconds: s["total"].as_f64().unwrap_or(f64::NAN),
        bytes: s["totalData"].as_f64().unwrap_or(0.0),
        rps: s["requestsPerSec"].as_f64().unwrap_or(f64::NAN),
    }
}

/// oha's per-request timeout: 10 s, or 120 s for a counted number of requests (W2's 1 GiB
/// downloads), so that a proxy at a tenth of the load's speed still completes one; with 10 s,
/// a VM at half the speed of the last one made two inspecting peers time out on every W2 run.
fn request_timeout(l: &Load) -> &'static str {
    if l.requests.is_some() {
        "120s"
    } else {
        "10s"
    }
}
