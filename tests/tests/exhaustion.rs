//! Load and exhaustion (THREATS E): thousands of held connections, slowloris ClientHellos and
//! HTTP heads, 1 MiB headers, a DNS flood. The agent's memory stays bounded (VmRSS, printed),
//! every hostile connection is closed within the peek bounds (500 ms to the first byte, 10 s in
//! all), and another container served by the same agent keeps working at a latency close to
//! its own before the attack (generous bounds asserted, figures printed).

use std::time::{Duration, Instant};

use egress_tests::procstat::{alive, open_fds, status_kib, vm_rss_kib};
use egress_tests::{
    addrs::*,
    agent::{test_policy, Agent},
    clients::*,
    require_root, threat,
    topology::Topology,
};
use serde_json::Value;

/// `n` sequential requests from the container, each on a new connection: an HTTP GET to
/// allowed.test and a DNS query for it. Prints per-request latencies in ms and failures.
const PY_LATENCY: &str = r#"
import json, random, socket, struct, sys, time
n = int(sys.argv[1])
http, dns, fails = [], [], []
req = b"GET / HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n"
q = lambda i: struct.pack(">HHHHHH", i, 0x0100, 1, 0, 0, 0) + b"\x07allowed\x04test\x00" + struct.pack(">HH", 1, 1)
for i in range(n):
    t = time.time()
    try:
        s = socket.create_connection(("198.51.100.10", 80), timeout=5)
        s.sendall(req)
        ok = s.recv(12).startswith(b"HTTP/1.1 200")
        s.close()
        (http if ok else fails).append((time.time() - t) * 1000)
    except OSError as e:
        fails.append(str(e))
    t = time.time()
    try:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)
        u.sendto(q(i), ("8.8.8.8", 53))
        r = u.recv(512); u.close()
        ok = struct.unpack(">H", r[6:8])[0] > 0
        (dns if ok else fails).append((time.time() - t) * 1000)
    except OSError as e:
        fails.append(str(e))
    time.sleep(0.02)
print(json.dumps({"http": http, "dns": dns, "fails": fails}))
"#;

struct Latency {
    http_p50: f64,
    http_max: f64,
    dns_p50: f64,
    dns_max: f64,
    fails: usize,
}

fn latency(topo: &Topology, n: usize) -> Latency {
    let v = python(topo, PY_LATENCY, &[&n.to_string()], &[]);
    let stats = |k: &str| {
        let mut xs: Vec<f64> = v[k]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        xs.sort_by(f64::total_cmp);
        (
            xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN),
            xs.last().copied().unwrap_or(f64::NAN),
        )
    };
    let (http_p50, http_max) = stats("http");
    let (dns_p50, dns_max) = stats("dns");
    Latency {
        http_p50,
        http_max,
        dns_p50,
        dns_max,
        fails: v["fails"].as_array().unwrap().len(),
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "http p50 {:.1} ms max {:.1} ms, dns p50 {:.1} ms max {:.1} ms, {} failures",
            self.http_p50, self.http_max, self.dns_p50, self.dns_max, self.fails
        )
    }
}

/// The victim's latency under attack stays within generous bounds of its own baseline.
fn assert_unaffected(what: &str, before: &Latency, during: &Latency) {
    let ok = during.fails == 0
        && during.http_p50 < (before.http_p50 * 10.0).max(250.0)
        && during.dns_p50 < (before.dns_p50 * 10.0).max(250.0);
    threat("E", &format!("{what}: other containers unaffected"), ok);
    assert!(ok, "{what}: before: {before}; during: {during}");
}

#[test]
fn nine_thousand_held_connections_leave_memory_bounded_and_another_container_unaffected() {
    require_root!();
    // The agent holds two descriptors per connection, fakenet and probe one each.
    let nofile = egress_tests::sys::raise_nofile().unwrap_or(0);
    assert!(
        nofile >= 19_000,
        "RLIMIT_NOFILE hard limit {nofile} is too low for this test"
    );
    let attacker = Topology::new("exh_held_a");
    let victim = Topology::new("exh_held_b");
    let _net = attacker.start_fakenet();
    let agent = Agent::daemon(&[&attacker, &victim], &test_policy(&[]));
    let pid = agent.pid();
    let before = latency(&victim, 30);
    let rss0 = vm_rss_kib(pid);

    const N: usize = 9_000;
    let hold = {
        let mut cmd = attacker.ctr_command(egress_tests::bin_path("probe"));
        cmd.args([
            "--timeout-ms",
            "30000",
            "many",
            "198.51.100.10:80",
            "--count",
            &N.to_string(),
            "--concurrency",
            &N.to_string(),
            "--send",
            "GET /{i} HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n",
            "--no-shutdown",
            "--reply-max",
            "0",
        ]);
        std::thread::spawn(move || cmd.output().unwrap())
    };
    // Wait until every connection is held (client + upstream descriptor each).
    let t = Instant::now();
    let mut fds = 0;
    while t.elapsed() < Duration::from_secs(25) {
        fds = open_fds(pid);
        if fds >= 2 * N {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let held_after = t.elapsed();
    let rss_held = vm_rss_kib(pid);
    let during = latency(&victim, 30);
    let out = hold.join().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("probe many: {}", String::from_utf8_lossy(&out.stderr)));
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = vm_rss_kib(pid);
    eprintln!(
        "{N} held connections: agent fds {fds} after {held_after:?}; VmRSS {rss0} KiB idle, \
         {rss_held} KiB holding, {rss_after} KiB after; VmHWM {} KiB; probe errors {}",
        status_kib(pid, "VmHWM:"),
        v["errors"]
    );
    eprintln!("victim before: {before}");
    eprintln!("victim during: {during}");
    assert!(
        fds >= 2 * N,
        "only {fds} descriptors: not every connection was held"
    );
    // Every connection stayed open until the client's own timeout: none was refused or reset.
    assert_eq!(v["errors"]["110"], N, "{}", v["errors"]);
    assert!(alive(pid));
    // ~0 buffers per idle connection (the copy loop owns none while waiting): well under
    // 64 KiB per connection.
    assert!(
        rss_held < rss0 + (N as u64) * 64,
        "VmRSS {rss_held} KiB holding {N} connections (idle {rss0} KiB)"
    );
    assert_unaffected("9,000 held connections", &before, &during);
}

/// `n` connections of each kind at once: a ClientHello head then one byte a second, an HTTP
/// head one byte a second, nothing at all, and a 1 MiB header. Prints, per kind, how long
/// until the agent closed each connection (seconds; -1 when it was still open after 20 s).
const PY_SLOW: &str = r#"
import json, socket, sys, threading, time
n = int(sys.argv[1])
out = {"tls": [], "http": [], "silent": [], "huge": []}
lock = threading.Lock()
def closed(s):
    try:
        return s.recv(4096) == b""
    except socket.timeout:
        return False
    except OSError:
        return True
def trickle(kind, first, port, byte):
    t = time.time(); s = socket.socket(); s.settimeout(1)
    try:
        s.connect(("198.51.100.10", port)); s.sendall(first)
        while time.time() - t < 20:
            if closed(s):
                break
            s.send(byte)
        else:
            t = None
    except OSError:
        pass
    with lock:
        out[kind].append(-1 if t is None else time.time() - t)
def silent():
    t = time.time(); s = socket.socket(); s.settimeout(20)
    try:
        s.connect(("198.51.100.10", 80))
        closed(s)
    except OSError:
        pass
    with lock:
        out["silent"].append(time.time() - t)
def huge():
    t = time.time(); s = socket.socket(); s.settimeout(20)
    try:
        s.connect(("198.51.100.10", 80))
        s.sendall(b"GET / HTTP/1.1\r\nHost: allowed.test\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
        closed(s)
    except OSError:
        pass
    with lock:
        out["huge"].append(time.time() - t)
th = []
for i in range(n):
    th.append(threading.Thread(target=trickle, args=("tls", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 443, b"\x00")))
    th.append(threading.Thread(target=trickle, args=("http", b"GET / HTTP/1.1\r\nHost: allo", 80, b"a")))
    th.append(threading.Thread(target=silent))
    th.append(threading.Thread(target=huge))
for t in th: t.start()
for t in th: t.join()
print(json.dumps(out))
"#;

#[test]
fn slowloris_and_huge_heads_are_closed_within_the_peek_bounds() {
    require_root!();
    let topo = Topology::new("exh_slow");
    let net = topo.start_fakenet();
    let agent = Agent::attach(&topo, &test_policy(&[]));
    let pid = agent.pid();
    let rss0 = vm_rss_kib(pid);
    let v = python(&topo, PY_SLOW, &["100"], &[]);
    let rss1 = vm_rss_kib(pid);
    let times = |k: &str| -> Vec<f64> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let max = |xs: &[f64]| xs.iter().copied().fold(f64::MIN, f64::max);
    let min = |xs: &[f64]| xs.iter().copied().fold(f64::MAX, f64::min);
    for k in ["tls", "http", "silent", "huge"] {
        let xs = times(k);
        eprintln!(
            "{k}: {} connections closed after {:.2}..{:.2} s",
            xs.len(),
            min(&xs),
            max(&xs)
        );
    }
    eprintln!("agent VmRSS {rss0} KiB before, {rss1} KiB after 400 hostile connections");
    // Trickled heads: closed at the 10 s total peek deadline, never kept open.
    for k in ["tls", "http"] {
        let xs = times(k);
        let ok = xs.len() == 100 && min(&xs) >= 9.0 && max(&xs) < 14.0;
        threat(
            "E",
            &format!("slowloris {k} head closed at the peek deadline"),
            ok,
        );
        assert!(ok, "{k}: {xs:?}");
    }
    // Nothing sent, and no opaque rule could allow the destination (it has no name): the
    // client is waited for up to the total peek deadline (a slow client's ClientHello may
    // come late), then reset; never kept open.
    let xs = times("silent");
    let ok = xs.len() == 100 && min(&xs) >= 9.0 && max(&xs) < 14.0;
    threat("E", "idle connection without a first byte closed", ok);
    assert!(ok, "silent: {xs:?}");
    // 1 MiB of header: refused at the 64 KiB peek cap, at once.
    let xs = times("huge");
    let ok = xs.len() == 100 && max(&xs) < 5.0;
    threat("E", "1 MiB header refused at the peek cap", ok);
    assert!(ok, "huge: {xs:?}");
    assert!(alive(pid));
    assert!(rss1 < rss0 + 64 * 1024, "VmRSS {rss0} -> {rss1} KiB");
    // None of them reached the fake internet.
    assert!(net.connections_to(WEB1.into()).is_empty());
    let r = raw(
        &topo,
        &WEB1.to_string(),
        80,
        &http_get("allowed.test"),
        0,
        false,
    );
    assert_eq!(r.http_status(), Some(200), "after the attack: {r:?}");
}

/// Floods the agent's DNS for `secs` seconds from one process: random labels under an allowed
/// wildcard (each one a real upstream lookup) and under a denied zone, as fast as it can send,
/// reading whatever replies come back. Prints counts.
const PY_FLOOD: &str = r#"
import json, os, socket, struct, sys, time
secs = float(sys.argv[1])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.setblocking(False)
sent = recv = refused = 0
def q(i, name):
    labels = b"".join(bytes([len(l)]) + l for l in name.split(b"."))
    return struct.pack(">HHHHHH", i & 0xffff, 0x0100, 1, 0, 0, 0) + labels + b"\x00" + struct.pack(">HH", 1, 1)
end = time.time() + secs
i = 0
while time.time() < end:
    i += 1
    zone = b"allowed.test" if i % 2 else b"exfil.test"
    try:
        u.sendto(q(i, os.urandom(12).hex().encode() + b"." + zone), ("8.8.8.8", 53)); sent += 1
    except BlockingIOError:
        pass
    except OSError:
        pass
    while True:
        try:
            r = u.recv(1500); recv += 1
            if r[3] & 0xf == 5: refused += 1
        except (BlockingIOError, OSError):
            break
time.sleep(1)
while True:
    try:
        r = u.recv(1500); recv += 1
        if r[3] & 0xf == 5: refused += 1
    except (BlockingIOError, OSError):
        break
print(json.dumps({"sent": sent, "recv": recv, "refused": refused}))
"#;

#[test]
fn a_dns_flood_from_one_container_leaves_memory_bounded_and_others_unaffected() {
    require_root!();
    let attacker = Topology::new("exh_dns_a");
    let victim = Topology::new("exh_dns_b");
    let net = attacker.start_fakenet();
    let agent = Agent::daemon(&[&attacker, &victim], &test_policy(&[]));
    let pid = agent.pid();
    let before = latency(&victim, 30);
    let rss0 = vm_rss_kib(pid);
    let flood = {
        let mut cmd = attacker.ctr_command(PYTHON);
        cmd.args(["-c", PY_FLOOD, "8"]);
        std::thread::spawn(move || cmd.output().unwrap())
    };
    std::thread::sleep(Duration::from_secs(1));
    let during = latency(&victim, 30);
    let rss_during = vm_rss_kib(pid);
    let out = flood.join().unwrap();
    let v: Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or(""),
    )
    .unwrap_or_else(|_| panic!("flood: {}", String::from_utf8_lossy(&out.stderr)));
    let rss_after = vm_rss_kib(pid);
    eprintln!(
        "DNS flood: {v}; agent VmRSS {rss0} KiB before, {rss_during} KiB during, {rss_after} KiB \
         after, VmHWM {} KiB",
        status_kib(pid, "VmHWM:")
    );
    eprintln!("victim before: {before}");
    eprintln!("victim during: {during}");
    assert!(v["sent"].as_u64().unwrap() > 1000, "{v}");
    assert!(alive(pid));
    assert!(
        rss_during.max(rss_after) < rss0 + 128 * 1024,
        "VmRSS {rss0} -> {rss_during} -> {rss_after} KiB"
    );
    // Denied names were never forwarded: no tunnel through the flood.
    let tunnelled = net.was_queried(EXFIL_ZONE);
    threat(
        "D",
        "DNS flood of tunnelling labels never forwarded",
        !tunnelled,
    );
    assert!(!tunnelled, "a denied name was forwarded upstream");
    assert_unaffected("DNS flood", &before, &during);
}
