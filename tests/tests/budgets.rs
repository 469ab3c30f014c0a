//! Budgets (issue 17 §3): how much one container may send, and how fast it may connect. A
//! sink in the fake internet (`sink.test`, 203.0.113.21) counts what it receives: raw TCP on
//! 9000, HTTP uploads on 80. Without the agent, every upload arrives whole and every
//! connection of a burst is served; under a budget, an upload is cut at the limit (the client
//! sees a reset, or a 429 with the deny contract), a burst of connections is held to its rate,
//! the counts survive a reload, and another container's budget is its own.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use egress_tests::{
    agent::{read_jsonl, Agent},
    bin_path,
    clients::{curl, PYTHON},
    require_root, threat,
    topology::Topology,
};
use serde_json::Value;

const SINK_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 21);
const LIMIT: u64 = 256 * 1024;
const MIB: u64 = 1024 * 1024;

/// Raw TCP on 9000 counts bytes until EOF or reset; HTTP on 80 reads one request and its body
/// (by Content-Length). Each connection is one JSON line in the log.
const SINK_PY: &str = r#"
import json, socket, sys, threading
addr, log = sys.argv[1], sys.argv[2]
lock = threading.Lock()
def note(d):
    with lock:
        with open(log, 'a') as f:
            f.write(json.dumps(d) + '\n')
def sink(c):
    n, ended = 0, 'eof'
    try:
        while True:
            b = c.recv(65536)
            if not b:
                break
            n += len(b)
    except Exception as e:
        ended = e.__class__.__name__
    note({'service': 'sink', 'received': n, 'ended': ended})
    c.close()
def http(c):
    f = c.makefile('rb')
    try:
        line = f.readline().decode('latin-1').strip()
        length, expect = 0, False
        while True:
            h = f.readline()
            if h in (b'\r\n', b'\n', b''):
                break
            k, _, v = h.decode('latin-1').partition(':')
            if k.strip().lower() == 'content-length':
                length = int(v)
            if k.strip().lower() == 'expect':
                expect = True
            if k.strip().lower() == 'transfer-encoding' and 'chunked' in v.lower():
                length = None
        if expect:
            c.sendall(b'HTTP/1.1 100 Continue\r\n\r\n')
        got, complete = 0, False
        if length is None:
            try:
                while True:
                    size = int(f.readline().split(b';')[0], 16)
                    if size == 0:
                        f.readline()
                        complete = True
                        break
                    data = f.read(size)
                    got += len(data)
                    if len(data) < size:
                        break
                    f.readline()
            except Exception:
                pass
        else:
            while got < length:
                b = f.read(min(65536, length - got))
                if not b:
                    break
                got += len(b)
            complete = got == length
        note({'service': 'http', 'line': line, 'received': got, 'complete': complete})
        body = json.dumps({'received': got}).encode()
        c.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n' % len(body) + body)
    except Exception as e:
        note({'service': 'http', 'error': e.__class__.__name__})
    c.close()
def serve(port, fn):
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((addr, port))
    l.listen(128)
    while True:
        c, _ = l.accept()
        threading.Thread(target=fn, args=(c,), daemon=True).start()
for port, fn in ((9000, sink), (80, http)):
    threading.Thread(target=serve, args=(port, fn), daemon=True).start()
print('READY', flush=True)
sys.stdin.read()
"#;

/// `upload HOST PORT N`: sends N bytes, half-closes, reads to the end: `complete` or the
/// exception the client saw. `burst HOST N`: N HTTP GETs, one connection each, as fast as they
/// go: every status, the first refusal's body, and the time it took.
const CLIENT_PY: &str = r#"
import json, socket, sys, time
def upload(host, port, n):
    try:
        s = socket.create_connection((host, port), timeout=10)
    except Exception as e:
        return 'connect: ' + e.__class__.__name__
    try:
        chunk, sent = b'x' * 65536, 0
        while sent < n:
            k = min(65536, n - sent)
            s.sendall(chunk[:k])
            sent += k
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
        return 'complete'
    except Exception as e:
        return e.__class__.__name__
    finally:
        s.close()
def get(host):
    s = socket.create_connection((host, 80), timeout=10)
    s.sendall(b'GET / HTTP/1.1\r\nHost: ' + host.encode() + b'\r\nConnection: close\r\n\r\n')
    data = b''
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    s.close()
    status = int(data.split(b' ', 2)[1]) if data.startswith(b'HTTP/') else 0
    return status, data.split(b'\r\n\r\n', 1)[-1].decode('latin-1')
if sys.argv[1] == 'upload':
    print(json.dumps({'result': upload(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))}))
else:
    statuses, refusal, t0 = [], None, time.monotonic()
    for _ in range(int(sys.argv[3])):
        try:
            status, body = get(sys.argv[2])
        except Exception as e:
            status, body = e.__class__.__name__, ''
        statuses.append(status)
        if status != 200 and refusal is None:
            refusal = body
    print(json.dumps({'statuses': statuses, 'refusal': refusal, 'elapsed': time.monotonic() - t0}))
"#;

fn policy(bytes_up: &str, version: &str) -> String {
    format!(
        r#"version = "{version}"
resolver = "203.0.113.53:53"
allow_ranges = ["198.51.100.0/24", "203.0.113.0/24", "2001:db8:100::/48"]
[profile.default]
allow = ["sink.test", "sink.test:9000", "allowed.test"]
[[profile.default.budget]]
host = "sink.test"
bytes_up = "{bytes_up}"
[[profile.default.budget]]
host = "allowed.test"
connections_per_second = 5
"#
    )
}

/// The sink in up-*, killed on drop.
struct Sink {
    _script: egress_tests::topology::UpScript,
    log: PathBuf,
}

impl Sink {
    fn start(topo: &Topology) -> Sink {
        let log = topo.workdir().join("sink.jsonl");
        topo.add_up_address(SINK_IP);
        let args = [SINK_IP.to_string().into(), log.clone().into_os_string()];
        let _script = topo.start_up_script(SINK_PY, args, "the sink");
        Sink { _script, log }
    }

    /// What `service` (`sink` or `http`) received so far, a line per connection.
    fn lines(&self, service: &str) -> Vec<Value> {
        read_jsonl(&self.log)
            .into_iter()
            .filter(|l| l["service"] == service)
            .collect()
    }

    /// The lines of `service` after its first `seen`, once there are more (or after 5 s).
    fn after(&self, service: &str, seen: usize) -> Vec<Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let all = self.lines(service);
            if all.len() > seen || std::time::Instant::now() > deadline {
                return all.into_iter().skip(seen).collect();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// HTTP requests it received (a connection the agent dialed and closed unused is none).
    fn requests(&self) -> usize {
        self.lines("http")
            .iter()
            .filter(|l| l["line"] != "")
            .count()
    }
}

fn client(topo: &Topology, args: &[&str]) -> Value {
    let out = topo
        .ctr_command(PYTHON)
        .args(["-c", CLIENT_PY])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    serde_json::from_str(text.lines().last().unwrap_or("")).unwrap_or_else(|_| {
        panic!(
            "client {args:?}: no JSON: {text} / {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn upload(topo: &Topology, n: u64) -> String {
    let v = client(topo, &["upload", "sink.test", "9000", &n.to_string()]);
    v["result"].as_str().unwrap_or("").to_string()
}

/// `curl -X POST` of `n` bytes to the sink's HTTP service.
fn post(topo: &Topology, n: u64) -> egress_tests::clients::Curl {
    let body = topo.workdir().join(format!("body-{n}"));
    if !body.exists() {
        std::fs::write(&body, vec![b'y'; n as usize]).unwrap();
    }
    let data = format!("@{}", body.display());
    curl(
        topo,
        &["-X", "POST", "--data-binary", &data, "http://sink.test/up"],
        &[],
    )
}

fn status_of(agent: &Agent, cgroup: &Path) -> Value {
    let out = agent.cli().args(["status", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let atts = v["attachments"].as_array().cloned().unwrap_or_default();
    atts.into_iter()
        .find(|a| a["cgroup"].as_str().map(Path::new) == Some(cgroup))
        .unwrap_or_else(|| panic!("no attachment for {}: {v}", cgroup.display()))
}

#[test]
fn an_upload_past_its_byte_budget_is_cut_at_the_limit_and_another_container_is_not() {
    require_root!();
    let a = Topology::new("budget_a");
    let b = Topology::new("budget_b");
    let _net = a.start_fakenet_with(&["--record", &format!("sink.test={SINK_IP}")]);
    let sink = Sink::start(&a);

    // Without the agent: the whole upload arrives, raw and over HTTP.
    assert_eq!(upload(&a, MIB), "complete");
    let got = sink.after("sink", 0);
    assert_eq!(got[0]["received"], MIB, "{got:?}");
    let c = post(&a, MIB);
    assert_eq!(c.status, 200, "{c:?}");
    assert_eq!(c.json()["received"], MIB, "{c:?}");
    let mut raw = 1;
    assert_eq!(sink.requests(), 1);

    let agent = Agent::daemon(&[&a, &b], &policy("256 KiB", "budget-1"));

    // An HTTP upload that declares more than the budget is refused before any of it is sent.
    let c = post(&a, MIB);
    assert_eq!(c.status, 429, "{c:?}");
    assert_eq!(c.json()["error"], "budget_exceeded", "{c:?}");
    assert_eq!(c.json()["rule"], "profile.default.budget[0]", "{c:?}");
    assert!(
        c.header("proxy-status")
            .is_some_and(|p| p.contains("error=http_request_denied")),
        "{c:?}"
    );
    let body_said = c.json()["reason"].as_str().unwrap_or("").to_string();
    assert!(
        body_said.contains("more than the 262144 bytes left of bytes_up"),
        "{body_said}"
    );
    // (The agent's upstream connection, dialed while it decided, closes unused.)
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.requests(), 1, "the refused upload reached the sink");

    // A raw upload is cut at the limit: the sink gets exactly what fitted, then a reset; so
    // does the client.
    let result = upload(&a, MIB);
    let got = sink.after("sink", raw);
    raw += got.len();
    let received = got[0]["received"].as_u64().unwrap_or(u64::MAX);
    eprintln!("budget cut: the sink received {received} of {LIMIT} bytes; the client saw {result}");
    let cut = result != "complete" && received <= LIMIT && received + 65536 >= LIMIT;
    threat(
        "E",
        "budget: an upload past bytes_up is cut at the limit",
        cut,
    );
    assert!(cut, "client: {result}; sink: {got:?}");
    assert_eq!(got[0]["ended"], "ConnectionResetError", "{got:?}");
    assert!(
        result.contains("Reset") || result.contains("BrokenPipe"),
        "{result}"
    );

    // The window is used up: the next connection is refused before it is dialed.
    let again = upload(&a, 1024);
    assert_ne!(again, "complete");
    let c = post(&a, 10);
    assert_eq!(c.status, 429, "{c:?}");
    assert!(
        c.json()["reason"]
            .as_str()
            .is_some_and(|r| r.contains("bytes_up of 256 KiB per 1h is used up")),
        "{c:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        sink.lines("sink").len(),
        raw,
        "a refused connection reached the sink"
    );
    assert_eq!(sink.requests(), 1, "a refused request reached the sink");

    let recs = agent.audit_records_until(|r| {
        r["code"] == "budget_exceeded"
            && r["reason"]
                .as_str()
                .is_some_and(|s| s.starts_with("cut after "))
    });
    let cut_rec = recs
        .iter()
        .find(|r| {
            r["code"] == "budget_exceeded"
                && r["reason"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("cut after "))
        })
        .unwrap_or_else(|| panic!("no record of the cut: {recs:?}"));
    assert_eq!(cut_rec["rule"], "profile.default.budget[0]", "{cut_rec}");
    assert_eq!(cut_rec["bytes_up"].as_u64(), Some(received), "{cut_rec}");

    let m =
        String::from_utf8_lossy(&agent.cli().arg("metrics").output().unwrap().stdout).into_owned();
    assert!(
        m.lines().any(|l| l.starts_with(
            "egress_decisions_total{profile=\"default\",decision=\"deny\",code=\"budget_exceeded\"} "
        )),
        "{m}"
    );

    // `status` reports it; a reload that raises the budget keeps the count.
    let st = status_of(&agent, a.ctr_cgroup_path());
    assert_eq!(st["budgets"][0]["used_bytes_up"], received, "{st}");
    assert!(st["budgets"][0]["exceeded"].as_u64() >= Some(4), "{st}");
    std::fs::write(&agent.policy, policy("512 KiB", "budget-2")).unwrap();
    let out = agent.cli().arg("reload").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let st = status_of(&agent, a.ctr_cgroup_path());
    assert_eq!(st["budgets"][0]["used_bytes_up"], received, "{st}");
    assert_ne!(upload(&a, MIB), "complete");
    let got = sink.after("sink", raw);
    raw += got.len();
    let more = got[0]["received"].as_u64().unwrap_or(u64::MAX);
    assert!(
        received + more <= 2 * LIMIT && received + more + 65536 >= 2 * LIMIT,
        "after the reload: {received} + {more}"
    );

    // Another container under the same profile has its own budget.
    assert_eq!(upload(&b, 100 * 1024), "complete");
    let got = sink.after("sink", raw);
    assert_eq!(got[0]["received"], 100 * 1024, "{got:?}");
    assert_eq!(got[0]["ended"], "eof", "{got:?}");

    // Its streamed (chunked) upload declares no length: it is sent up to what is left of its
    // 512 KiB, the upstream request is aborted, and the client gets the 429. The upstream sees
    // an aborted request, never more than what was left (and, on a loaded machine, less: what
    // the aborted connection still buffered is not sent).
    let left = 2 * LIMIT - 100 * 1024;
    let requests = sink.lines("http").len();
    let body = b.workdir().join("body-chunked");
    std::fs::write(&body, vec![b'z'; MIB as usize]).unwrap();
    let data = format!("@{}", body.display());
    let c = curl(
        &b,
        &[
            "-X",
            "POST",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &data,
            "http://sink.test/chunked",
        ],
        &[],
    );
    assert_eq!(c.status, 429, "{c:?}");
    assert!(
        c.json()["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with(&format!("cut after {left} bytes up"))),
        "{c:?}"
    );
    let got = sink.after("http", requests);
    let received = got[0]["received"].as_u64().unwrap_or(u64::MAX);
    assert!(got[0]["complete"] == false && received <= left, "{got:?}");
}

#[test]
fn a_connection_rate_budget_holds_under_a_burst() {
    require_root!();
    let topo = Topology::new("budget_rate");
    let _net = topo.start_fakenet();
    // Without the agent every connection of the burst is served.
    let v = client(&topo, &["burst", "allowed.test", "20"]);
    let ok = |v: &Value| {
        v["statuses"]
            .as_array()
            .map_or(0, |s| s.iter().filter(|s| **s == 200).count())
    };
    assert_eq!(ok(&v), 20, "{v}");

    let agent = Agent::attach(&topo, &policy("1 MiB", "budget-rate"));
    let v = client(&topo, &["burst", "allowed.test", "20"]);
    let served = ok(&v);
    let elapsed = v["elapsed"].as_f64().unwrap_or(0.0);
    // Five at once (a second's worth), then five a second.
    let most = 5 + (elapsed * 5.0).ceil() as usize;
    let held = (5..=most).contains(&served);
    threat(
        "E",
        "budget: a burst of connections is held to connections_per_second",
        held,
    );
    assert!(held, "{served} of 20 served in {elapsed:.2} s: {v}");
    let statuses = v["statuses"].as_array().unwrap();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "every other one is refused with 429: {v}"
    );
    let refusal: Value =
        serde_json::from_str(v["refusal"].as_str().unwrap_or("")).unwrap_or_default();
    assert_eq!(refusal["error"], "budget_exceeded", "{v}");
    assert_eq!(refusal["rule"], "profile.default.budget[1]", "{v}");
    assert!(
        refusal["reason"]
            .as_str()
            .is_some_and(|r| r.contains("allows 5 new connections per second")),
        "{refusal}"
    );
    // The bucket refills.
    std::thread::sleep(Duration::from_millis(1200));
    let v = client(&topo, &["burst", "allowed.test", "1"]);
    assert_eq!(ok(&v), 1, "{v}");
    let recs = agent.audit_records_until(|r| r["code"] == "budget_exceeded");
    assert!(
        recs.iter()
            .any(|r| r["code"] == "budget_exceeded" && r["name"] == "allowed.test"),
        "{recs:?}"
    );
}

#[test]
fn bad_budget_keys_are_refused_in_one_line_and_change_nothing() {
    require_root!();
    let topo = Topology::new("budget_bad");
    let _net = topo.start_fakenet();
    let agent = Agent::daemon(&[&topo], &policy("1 MiB", "budget-bad"));
    let cli = |args: &[&str]| agent.cli().args(args).output().unwrap();
    let shown = String::from_utf8_lossy(&cli(&["policy", "show"]).stdout).into_owned();
    assert!(shown.contains("bytes_up = 1048576"), "{shown}");
    let text = String::from_utf8_lossy(&cli(&["explain", "sink.test:9000"]).stdout).into_owned();
    assert!(
        text.contains(
            "budget: profile.default.budget[0] (host \"sink.test\"): bytes_up 1 MiB per 1h"
        ),
        "{text}"
    );
    let cases: &[(&str, &str)] = &[
        ("bytes_up = \"1 MiB\"", "bytes_up = \"a lot\""),
        ("bytes_up = \"1 MiB\"", "bytes_up = 0"),
        ("connections_per_second = 5", "connections_per_second = -1"),
        ("connections_per_second = 5", "connection_per_second = 5"),
        ("host = \"sink.test\"", "host = \"elsewhere.test\""),
    ];
    for (good, bad) in cases {
        let text = policy("1 MiB", "budget-bad").replacen(good, bad, 1);
        let f = topo.workdir().join("bad.toml");
        std::fs::write(&f, &text).unwrap();
        let out = std::process::Command::new(bin_path("egress-agent"))
            .args(["policy", "check"])
            .arg(&f)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        assert_eq!(err.trim().lines().count(), 1, "{bad}: {err}");
        assert!(err.contains("key `profile.default.budget["), "{bad}: {err}");
        std::fs::write(&agent.policy, &text).unwrap();
        let out = cli(&["reload"]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        let now = String::from_utf8_lossy(&cli(&["policy", "show"]).stdout).into_owned();
        assert_eq!(now, shown, "{bad}: the running policy changed");
    }
}

/// curl in the container: each response's body, then its status on a line of its own.
fn curl_each(topo: &Topology, env: &[(String, String)], args: &[&str]) -> (String, i32) {
    let out = topo
        .ctr_command("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--noproxy",
            "*",
            "-w",
            "\n%{http_code}\n",
        ])
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .expect("curl");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

fn statuses(out: &str) -> Vec<u16> {
    out.lines()
        .filter(|l| l.len() == 3)
        .filter_map(|l| l.parse().ok())
        .collect()
}

#[test]
fn inspected_requests_and_downloads_are_held_to_their_budgets() {
    require_root!();
    let topo = Topology::new("budget_inspect");
    let net = topo.start_fakenet();
    let state = topo.workdir().join("state");
    let trust = egress_tests::clients::agent_ca_env(&state);
    let fakenet_ca = net.ca_pem.display().to_string();
    let six: Vec<&str> = std::iter::repeat_n("https://api.allowed.test/", 6).collect();

    // Without the agent: six requests on one connection, and the whole download.
    let mut direct = vec!["--cacert", fakenet_ca.as_str()];
    direct.extend_from_slice(&six);
    let (out, _) = curl_each(&topo, &[], &direct);
    assert_eq!(statuses(&out), [200; 6], "{out}");
    let download = [
        "--cacert",
        fakenet_ca.as_str(),
        "-o",
        "/dev/null",
        "https://www.allowed.test/bytes/1048576",
    ];
    let (out, exit) = curl_each(&topo, &[], &download);
    assert_eq!((exit, statuses(&out)), (0, vec![200]), "{out}");

    let policy = format!(
        r#"version = "budget-inspect"
resolver = "203.0.113.53:53"
allow_ranges = ["198.51.100.0/24", "203.0.113.0/24", "2001:db8:100::/48"]
upstream_ca = "{fakenet_ca}"
[profile.default]
allow = ["allowed.test"]
inspect = ["api.allowed.test", "www.allowed.test"]
[[profile.default.budget]]
host = "api.allowed.test"
requests_per_second = 1
[[profile.default.budget]]
host = "www.allowed.test"
bytes_down = "256 KiB"
"#
    );
    let state_arg = state.display().to_string();
    let agent = Agent::attach_with_env(&topo, &policy, &[("EGRESS_STATE_DIR", &state_arg)]);

    // One request a second: of six sent at once, the first goes through, the rest get 429.
    let started = std::time::Instant::now();
    let (out, _) = curl_each(&topo, &trust, &six);
    let elapsed = started.elapsed().as_secs_f64();
    let got = statuses(&out);
    let served = got.iter().filter(|s| **s == 200).count();
    let held = got.len() == 6
        && got.iter().all(|s| *s == 200 || *s == 429)
        && (1..=1 + elapsed.ceil() as usize).contains(&served);
    threat(
        "E",
        "budget: requests_per_second holds on one inspected connection",
        held,
    );
    assert!(held, "{served} of 6 in {elapsed:.2} s: {out}");
    assert!(
        out.contains("\"error\":\"budget_exceeded\"")
            && out.contains("\"rule\":\"profile.default.budget[0]\"")
            && out.contains("allows 1 requests per second"),
        "{out}"
    );

    // A download past bytes_down is relayed up to the limit, then fails (HTTP/1.1: a chunked
    // body that never ends; HTTP/2: the stream is reset). The client may get less than the
    // limit: what the connection still buffered when it failed is not sent.
    let size_of = |version: &str| {
        let (out, exit) = curl_each(
            &topo,
            &trust,
            &[
                version,
                "-w",
                "%{size_download}\n",
                "-o",
                "/dev/null",
                "https://www.allowed.test/bytes/1048576",
            ],
        );
        let size: u64 = out
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .find(|n: &u64| *n > 999)
            .unwrap_or(0);
        (exit, size, out)
    };
    let (exit, size, out) = size_of("--http1.1");
    let cut = exit != 0 && size > 0 && size <= LIMIT;
    threat(
        "E",
        "budget: an inspected download past bytes_down is cut at the limit",
        cut,
    );
    assert!(cut, "curl exit {exit}, {size} bytes: {out}");
    let recs = agent
        .audit_records_until(|r| r["code"] == "budget_exceeded" && r["name"] == "www.allowed.test");
    let rec = recs
        .iter()
        .find(|r| r["code"] == "budget_exceeded" && r["name"] == "www.allowed.test")
        .unwrap_or_else(|| panic!("no record of the cut download: {recs:?}"));
    assert_eq!(rec["path"], "/bytes/1048576", "{rec}");
    assert!(
        rec["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("cut after 262144 bytes down")),
        "{rec}"
    );
    // The window is used up: the next connection is refused before anything is dialed, with
    // the TLS alert (this sandbox is not known to trust the agent's CA: no `exec --trust-ca`).
    let (out, exit) = curl_each(&topo, &trust, &["https://www.allowed.test/"]);
    assert_eq!((exit, statuses(&out)), (35, vec![0]), "{out}");
    let recs =
        agent.audit_records_until(|r| r["code"] == "budget_exceeded" && r["protocol"] == "tls");
    assert!(
        recs.iter().any(|r| r["code"] == "budget_exceeded"
            && r["protocol"] == "tls"
            && r["reason"]
                .as_str()
                .is_some_and(|s| s.contains("is used up"))),
        "{recs:?}"
    );
}
