//! Benchmarks (/work/shared/BENCH.md): programs that report figures, never tests that pass or fail
//! on time. Configurations are interleaved in one run (A B C A B C ...) and every figure is stated
//! next to **direct** measured in that same run. `cargo xtask bench [--quick|--sanity]` installs
//! the tools, builds in release and runs this.
//!
//! Topology (one `Topology`): the client runs in the container's netns — in the enforced cgroup
//! for the agent's configurations, in a plain sibling cgroup for direct and HAProxy; the upstream
//! is fakenet `--bench` (rustls + hyper, ECDSA P-256 leaf, TLS 1.3 AES-128-GCM X25519 only, h1 +
//! h2) in up-*; the proxies run in ag-* and dial the upstream from there. The proxy is pinned to
//! CPU 0, the load generator and the upstream to CPU 1.
//!
//! Output: `bench/RESULTS.md`, `bench/results.json` (summary), `bench/raw/<time>.json` (every run).

mod env;
mod floor;
mod idle;
mod load;
mod mint;
mod peers;
mod report;
mod soak;
mod w4;
mod work;

use std::{process::Command, time::Instant};

use egress_tests::require_root;
use serde_json::json;

use env::{Config, Env, Tools};
use report::Results;

/// Sizes and durations of one run.
pub struct Params {
    pub mode: &'static str,
    pub rounds: usize,
    pub w1_rate: u32,
    pub w1_seconds: f64,
    pub w2_bytes: u64,
    pub w3_rates: Vec<u32>,
    pub w3_seconds: f64,
    pub w5_count: u64,
    /// W6: the agent's soak, each peer's soak (seconds), and the per-configuration load.
    pub w6_seconds: f64,
    pub w6_peer_seconds: f64,
    pub w6_keepalive_rate: u32,
    pub w6_churn_rate: u32,
}

impl Params {
    fn full() -> Params {
        Params {
            mode: "full",
            rounds: 5,
            w1_rate: 500,
            w1_seconds: 5.0,
            w2_bytes: 1 << 30,
            w3_rates: vec![100, 250, 500, 1000, 1500, 2000, 3000, 4000, 6000],
            w3_seconds: 2.0,
            w5_count: 9000,
            w6_seconds: 1800.0,
            w6_peer_seconds: 300.0,
            w6_keepalive_rate: 250,
            w6_churn_rate: 100,
        }
    }
    fn quick() -> Params {
        Params {
            mode: "quick",
            rounds: 3,
            w1_rate: 500,
            w1_seconds: 1.5,
            w2_bytes: 64 << 20,
            w3_rates: vec![100, 250, 500, 1000, 2000],
            w3_seconds: 1.0,
            w5_count: 1000,
            w6_seconds: 60.0,
            w6_peer_seconds: 20.0,
            w6_keepalive_rate: 250,
            w6_churn_rate: 100,
        }
    }
    /// Every configuration completes every workload once, tiny: for CI (`--sanity`).
    fn sanity() -> Params {
        Params {
            mode: "sanity",
            rounds: 1,
            w1_rate: 100,
            w1_seconds: 0.5,
            w2_bytes: 8 << 20,
            w3_rates: vec![100],
            w3_seconds: 0.5,
            w5_count: 50,
            w6_seconds: 10.0,
            w6_peer_seconds: 5.0,
            w6_keepalive_rate: 100,
            w6_churn_rate: 20,
        }
    }
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s).trim().to_string()
        })
        .unwrap_or_else(|e| format!("({cmd}: {e})"))
}

fn machine(tools: &Tools) -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let ver = |r: &Result<std::path::PathBuf, String>, flag: &str| match r {
        Ok(p) => sh(&p.to_string_lossy(), &[flag])
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
        Err(e) => e.clone(),
    };
    json!({
        "cpu": model,
        "cpus": cpus,
        "uname": sh("uname", &["-srvm"]),
        "date": sh("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "loadavg_start": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "commit": sh("git", &["describe", "--always", "--dirty"]),
        "oha": sh(&tools.oha.to_string_lossy(), &["--version"]),
        "haproxy": ver(&tools.haproxy, "-v"),
        "squid": ver(&tools.squid, "-v"),
        "mitmproxy": ver(&tools.mitmdump, "--version"),
        "agent_binary": egress_tests::bin_path("egress-agent"),
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("idle-client") {
        return idle::main(&args[2..]);
    }
    if !require_root() {
        return;
    }
    let has = |f: &str| args.iter().any(|a| a == f);
    let value = |f: &str| {
        args.iter()
            .position(|a| a == f)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                v.parse::<f64>()
                    .unwrap_or_else(|_| panic!("{f} takes seconds, not {v:?}"))
            })
    };
    let mut p = if has("--sanity") {
        Params::sanity()
    } else if has("--quick") {
        Params::quick()
    } else {
        Params::full()
    };
    if has("--check") {
        // CI's check reads errors, not figures: one round of each workload keeps it inside
        // CI's budget with eight configurations; the 60 s soak is the long run.
        p.rounds = 1;
    }
    if let Some(s) = value("--soak-seconds") {
        p.w6_seconds = s;
    }
    if let Some(s) = value("--soak-peer-seconds") {
        p.w6_peer_seconds = s;
    }
    let only: Vec<String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| {
            s.split(',')
                .map(|w| w.trim().to_ascii_uppercase())
                .collect()
        })
        .unwrap_or_else(|| {
            ["W1", "W2", "W3", "W4", "W5", "W6"]
                .map(String::from)
                .to_vec()
        });
    let out_dir = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "bench".into());
    let started = Instant::now();
    let tools = Tools::find();
    let mut machine = machine(&tools);
    let mut env = Env::new(tools);
    let mut r = Results::default();
    let (f50, f99, fmax) = floor::wakeup_round_trip(1000, std::time::Duration::from_millis(2));
    machine["wakeup_round_trip_us"] = json!({"p50": f50, "p99": f99, "max": fmax});
    r.notes.push(format!(
        "Machine floor: a one-byte round trip from CPU {} to a thread sleeping on CPU {} and back (Unix socket pair, 1000 × every 2 ms,          measured at the start of this run) takes p50 {f50:.0} µs, p99 {f99:.0} µs, max {fmax:.0} µs. Each request through a proxy on the          other CPU wakes that CPU (and then the load CPU) about twice, so this — not the proxy's code — bounds the added W1 latency at low load,          for every proxy alike; the same-CPU W1 rows show the proxies' own cost without it.",
        env::LOAD_CPU, env::PROXY_CPU
    ));
    // `--configs direct,inspect`: only these (development; the notes say which were left out).
    let wanted: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--configs")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(|c| c.trim().to_string()).collect());
    let mut configs = Vec::new();
    for c in Config::ALL {
        if wanted
            .as_ref()
            .is_some_and(|w| !w.iter().any(|n| n == c.name()))
        {
            r.notes.push(format!(
                "**{}** not measured: left out by --configs",
                c.name()
            ));
            continue;
        }
        match env.available(c) {
            Ok(()) => configs.push(c),
            Err(why) => r
                .notes
                .push(format!("**{}** not measured: {why}", c.name())),
        }
    }
    let tls: Vec<String> = configs
        .iter()
        .map(|c| format!("{}: {}", c.name(), env.tls_seen(*c)))
        .collect();
    r.notes.push(format!(
        "TLS as each client saw it (`openssl s_client` from the client's cgroup to the address and name of the load, once per run): {}.",
        tls.join("; ")
    ));
    eprintln!(
        "bench ({}): configurations {:?}, workloads {only:?}",
        p.mode,
        configs.iter().map(|c| c.name()).collect::<Vec<_>>()
    );
    let mut timings = serde_json::Map::new();
    for w in &only {
        let t = Instant::now();
        eprintln!("bench: {w} ...");
        match w.as_str() {
            "W1" => work::w1(&env, &p, &configs, &mut r),
            "W2" => work::w2(&env, &p, &configs, &mut r),
            "W3" => work::w3(&env, &p, &configs, &mut r),
            "W4" => w4::w4(&env, &p, &mut r),
            "W5" => work::w5(&mut env, &p, &configs, &mut r),
            "W6" => soak::w6(&mut env, &p, &configs, &mut r),
            other => panic!("unknown workload {other}"),
        }
        for (peer, served) in env.dead_peers() {
            r.notes
                .push(format!("**{peer}** exited during {w}: counted as an error"));
            for c in served.into_iter().filter(|c| configs.contains(c)) {
                r.errors(w, c, 1, 0);
            }
        }
        timings.insert(w.clone(), json!(t.elapsed().as_secs_f64()));
        eprintln!("bench: {w} done in {:.0} s", t.elapsed().as_secs_f64());
    }
    machine["loadavg_end"] = json!(std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim());
    machine["seconds"] = json!(started.elapsed().as_secs_f64());
    machine["workload_seconds"] = json!(timings);
    machine["mode"] = json!(p.mode);
    machine["rounds"] = json!(p.rounds);
    r.notes.extend(method_notes(&p, &env));

    let header = format!(
        "# Benchmark results\n\n`cargo xtask bench{}` — {}, {} rounds, interleaved.\n\n\
         Machine: {} × {} · {} · {} · load average {} → {} · commit {} · {:.0} s.\n",
        match p.mode {
            "full" => "",
            "quick" => " --quick",
            _ => " --sanity",
        },
        p.mode,
        p.rounds,
        machine["cpus"],
        machine["cpu"].as_str().unwrap_or(""),
        machine["uname"].as_str().unwrap_or(""),
        machine["date"].as_str().unwrap_or(""),
        machine["loadavg_start"].as_str().unwrap_or(""),
        machine["loadavg_end"].as_str().unwrap_or(""),
        machine["commit"].as_str().unwrap_or(""),
        started.elapsed().as_secs_f64(),
    );
    let md = r.markdown(&configs, &header);
    println!("{md}");
    let raw_dir = std::path::Path::new(&out_dir).join("raw");
    std::fs::create_dir_all(&raw_dir).expect("create bench/raw");
    let stamp = machine["date"].as_str().unwrap_or("run").replace(':', "");
    let summary = r.summary_json(&configs, &machine);
    std::fs::write(
        raw_dir.join(format!("{stamp}-{}.json", p.mode)),
        serde_json::to_string_pretty(&json!({"summary": summary, "runs": r.raw})).unwrap(),
    )
    .expect("write raw samples");
    if p.mode != "sanity" {
        std::fs::write(std::path::Path::new(&out_dir).join("RESULTS.md"), &md)
            .expect("write RESULTS.md");
        std::fs::write(
            std::path::Path::new(&out_dir).join("results.json"),
            serde_json::to_string_pretty(&summary).unwrap(),
        )
        .expect("write results.json");
    }
    if p.mode == "full" && out_dir == "bench" {
        quote_in_readme(&md);
    }
    let ok = r.zero_errors();
    drop(env);
    if !ok {
        eprintln!("bench: ERRORS in some configuration (see the errors table)");
        if p.mode == "sanity" || has("--check") {
            std::process::exit(1);
        }
    }
}

/// The README quotes the latest full table between its `bench-table` markers.
fn quote_in_readme(md: &str) {
    const BEGIN: &str = "<!-- bench-table:begin (written by `cargo xtask bench`) -->";
    const END: &str = "<!-- bench-table:end -->";
    let path = std::path::Path::new("README.md");
    let Ok(readme) = std::fs::read_to_string(path) else {
        return;
    };
    let (Some(b), Some(e)) = (readme.find(BEGIN), readme.find(END)) else {
        eprintln!("bench: README.md has no bench-table markers; not quoted");
        return;
    };
    let machine = md.lines().find(|l| l.starts_with("Machine:")).unwrap_or("");
    let table = md
        .find("| workload · figure")
        .map(|i| &md[i..md.find("\n### Errors").unwrap_or(md.len())])
        .unwrap_or("");
    let quoted = format!("{BEGIN}\n{machine}\n\n{}\n{END}", table.trim_end());
    let updated = format!("{}{quoted}{}", &readme[..b], &readme[e + END.len()..]);
    if let Err(err) = std::fs::write(path, updated) {
        eprintln!("bench: README.md not updated: {err}");
    }
}

fn method_notes(p: &Params, env: &Env) -> Vec<String> {
    let mut n = vec![
        format!(
            "Pinning: proxy under test on CPU {}, load generator (oha) and upstream (fakenet) on CPU {}; direct uses the same pinning. \
             The agent runs its default tokio runtime ({} threads at start); HAProxy gets `nbthread` = the agent's worker count; Squid runs \
             one process (no SMP workers) and its certificate helpers, mitmproxy its one Python process — all on the proxy CPU. \
             Proxy CPU and memory are those of the process and every process it forked (Squid's helpers).",
            env::PROXY_CPU, env::LOAD_CPU, env.agent_threads
        ),
        "Client: oha in the container's netns; in the enforced cgroup for passthrough/inspect, in a plain sibling cgroup for direct and \
         haproxy, in a sibling cgroup of their own for Squid's and mitmproxy's clients. TCP goes to 198.51.100.10 (`--connect-to`, no DNS) \
         except HAProxy's (its listener's address) and W3 cold, which resolves never-seen names (through the agent's DNS for inspect, \
         through the fake internet's for the peers)."
            .into(),
        "HAProxy 2.6 (Debian): runs in the agent's netns; its listeners are bound in the container's netns (`bind 127.0.0.1:P namespace ctr-…`) \
         so the client-side hop is the same loopback hop as the agent's redirected connections; the client reaches it by address (`--connect-to`). \
         Passthrough: `mode tcp`, `req_ssl_sni` routing, `tune.bufsize 65536`, `option splice-auto` (`maxpipes 500`, `maxconn 9100`: RLIMIT_NOFILE is 20,000); \
         plain HTTP: `mode http`, Host routing. **haproxy inspect**: `mode http`, `bind … ssl crt <P-256 leaf> generate-certificates ca-sign-file <peers' CA>` \
         (one generated certificate per SNI, cached), requests allowed by SNI with Host held to the SNI (`strcmp`), upstream `ssl verify required ca-file <fakenet CA> sni ssl_fc_sni alpn h2,http/1.1`, \
         `http-reuse always` (idle upstream connections shared across clients, as the agent shares its upstream)."
            .into(),
        "Squid 5.7 (Debian `squid-openssl`): transparent, in the container's netns — an iptables `REDIRECT` keyed by its clients' cgroup \
         (`-m cgroup --path`) sends their port 443/80 connections to its `https_port … intercept ssl-bump` / `http_port … intercept`, and \
         everything else in that netns is `NOTRACK` (so the nat table's conntrack costs the other configurations nothing). `ssl_bump peek` at \
         step 1, then `splice` by SNI (**squid**) or `bump` (**squid inspect**: `generate-host-certificates` with the peers' P-256 CA, \
         `security_file_certgen` helpers, upstream verified with `tls_outgoing_options cafile=<fakenet CA>`); no cache, no access log, \
         `via off`. HTTP/1.1 only (Squid has no HTTP/2). Plain HTTP is one intercept port for both columns, measured under **squid**."
            .into(),
        format!(
            "**mitmproxy** (PyPI, {}) is a reference: single-core Python inspector, not a competitor to match. Transparent mode behind the same \
             cgroup-keyed `REDIRECT` as Squid, no addons, `stream_large_bodies=1m`, the peers' P-256 CA, upstream verified \
             (`ssl_verify_upstream_trusted_ca=<fakenet CA>`), TLS 1.3 only on both legs.",
            env.tools.mitmdump.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
        ),
        "**httpjail** (the closest agent-sandbox peer) cannot be built here: its only rule engine links `v8`, whose build script downloads a \
         prebuilt static library from github.com (outside the registries this project may use), and no feature leaves it out. It is not \
         attempted."
            .into(),
        "TLS everywhere: TLS 1.3, TLS_AES_128_GCM_SHA256, X25519, ECDSA P-256 certificates (fakenet `--bench` accepts nothing else); the client \
         verifies the upstream (fakenet's CA) or the inspector (the agent's or the peers' CA). The agent's client-facing leg picks AES-128-GCM \
         whatever the client's order; the OpenSSL peers are held to the profile by `ssl-default-*` (HAProxy) and an `OPENSSL_CONF` with \
         `MinProtocol = TLSv1.3`, `Ciphersuites = TLS_AES_128_GCM_SHA256`, `Groups = X25519` (all three)."
            .into(),
        format!(
            "W1: oha open loop `-q {} --latency-correction`, {} s per run, keep-alive, POST 1 KiB → 1 KiB response (`/bytes/1024`); \
             per answered request, the proxy's CPU (utime+stime of its process tree, in 10 ms ticks: a run's figure is ± 10 ms / requests) and its context switches \
             (every thread of the tree, /proc/P/task/T/status: each time one went to sleep, voluntary, or was preempted, involuntary), on the request's path or beside it. \
             W2: `/bytes/N`, {} MiB total split over the streams; Gbit/s from oha's elapsed time; proxy CPU = utime+stime from /proc/PID/stat. \
             W3: `--disable-keepalive`, paced by `-q` without latency correction, ladder {:?} conn/s × {} s, 64 workers; a step passes with p99 (time to the whole 1 KiB response, ≈ TTFB) < 10 ms, \
             zero client and upstream errors and ≥ 90 % of the rate achieved; CPU µs/conn at the highest passing step (at the first step if none passes); a max rate of 0 means not even the first step passed \
             (on this VM even direct rarely passes: scheduler stalls of 10–60 ms put ≥ 2 of ~100–200 samples over 10 ms). \
             W3 saturated: closed loop, 32 connections in flight, no pacing, {} s: achieved conn/s, proxy CPU µs per connection, and \
             10⁶ / that = new connections per proxy core (the BENCH.md target's figure; inspect shares one upstream HTTP/2 connection per name, so its \
             cost is the client-side handshake). \
             W5: a helper opens {} TLS connections (one request each) and holds them; proxy VmRSS delta and /proc/meminfo Slab delta \
             (machine-wide: noisy on a shared machine) per connection; the agent is restarted (same pins, adopted) before each of its W5 runs, \
             the peers are not (HAProxy's pools are preallocated: its figure is a lower bound; a peer's inspect column follows its passthrough column in the same process).",
            p.w1_rate, p.w1_seconds, p.w2_bytes >> 20, p.w3_rates, p.w3_seconds, p.w3_seconds.max(1.0) * 2.0, p.w5_count
        ),
        "W4: 2,000 blocking connect() calls per round from the probe (median per round): direct from the plain cgroup to the agent's \
         loopback listener, redirected from the enforced cgroup to 198.51.100.10:80 (rewritten to that same listener), denied to 10.1.2.3:80. \
         The two program rows come from the kernel itself (`kernel.bpf_stats_enabled` on for those rounds only, run_time_ns / run_cnt \
         of every program attached to the cgroup, via bpftool): the connect4 program per call, and all programs that ran (connect4, \
         sock_create, sockops, getpeername, cgroup_skb on the handshake's packets) divided by the connect() calls. The peers have no such hook."
            .into(),
        "W3 cold: every connection uses a never-seen name `c<random>.cold.exfil.test` (one certificate mint each) in the same proxy process; \
         inspect resolves it through the agent's DNS, squid inspect and mitmproxy through the fake internet's. **haproxy inspect** has no cold \
         row: it is reached by address (`--connect-to`), which cannot follow a new name per connection. Warm uses one name. The mint row is the agent's own minter (its code, a CA of its own) asked for 1000 never-seen names in the bench process on the proxy CPU: the certificate alone, without the DNS answer and the upstream handshake a cold connection also pays. \
         The plain-HTTP rows of **haproxy inspect** and **squid inspect** are `—`: plain HTTP takes the same frontend as their passthrough column."
            .into(),
        format!(
            "W6 soak: per proxy process, its passthrough and inspect configurations at once (one agent, one HAProxy, one Squid serve both of \
             their columns; the RSS rows are that process's, shown in both): per configuration {KA} keep-alive connections POSTing 1 KiB at \
             {} req/s (half the W1 rate) plus a churn of new TLS connections, one 1 KiB GET each, at {} conn/s ({CH} workers); the agent for \
             {} s, each peer — and **direct**, the control: the same load with no proxy — for {} s. RSS of the process (and its helpers) sampled every 1–10 s; start = the first sample after the first \
             10 % (warm-up), slope = least squares over the rest, in KiB per 10 minutes. Upstream errors are the soak's (the group's \
             configurations share them). The agent is restarted (same pins, adopted) before its soak, so its RSS is not W5's left-over heap; \
             the peers carry W5's memory into theirs.",
            p.w6_keepalive_rate, p.w6_churn_rate, p.w6_seconds, p.w6_peer_seconds,
            KA = 4, CH = 16
        ),
        "Zero errors: every run reads fakenet's counters (TLS handshake failures, HTTP connection errors) before and after; the errors table sums them \
         with oha's errors and non-200 answers (W3: the passing steps only, a failing step is how the search ends)."
            .into(),
    ];
    if p.mode != "full" {
        n.push(format!(
            "`--{}` run: fewer rounds and smaller sizes; figures are for checking the machinery, not for comparison.",
            p.mode
        ));
    }
    if p.rounds == 1 && p.mode == "quick" {
        n.push(
            "`--check`: one round of each workload (errors are what it checks) and the soak."
                .into(),
        );
    }
    n
}
