//! W1 latency, W2 bulk, W3 new connections, W5 idle: each round runs every configuration once
//! (A B C A B C ...), and every run checks the upstream's error counters.

use std::{
    io::{BufRead, BufReader, Write as _},
    process::Stdio,
    time::Duration,
};

use serde_json::json;

use crate::{
    env::{
        pin, slab_bytes, tree_context_switches, tree_cpu_seconds, tree_rss_bytes, Config, Env,
        Target, COLD_ZONE, LOAD_CPU, PROXY_CPU,
    },
    load::{self, Load},
    report::{Results, Vs},
    Params,
};

/// Upstream errors between two `Env::upstream()` readings.
pub fn upstream_errors(before: &serde_json::Value, after: &serde_json::Value) -> u64 {
    let d = |k: &str| {
        after[k]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(before[k].as_u64().unwrap_or(0))
    };
    d("tls_failed") + d("conn_errors")
}

/// One oha run through `c`, with the proxy's CPU seconds and the upstream's errors around it.
fn measured(env: &Env, c: Config, l: &Load) -> (load::Outcome, f64, u64) {
    measured_on(env, &env.target(c), l)
}

/// The same through a given target (W3 cold: the configuration's never-seen-name target).
fn measured_on(env: &Env, t: &Target, l: &Load) -> (load::Outcome, f64, u64) {
    let up0 = env.upstream();
    let cpu0 = t.proxy_pid.map(tree_cpu_seconds).unwrap_or(0.0);
    let o = load::run(env, t, l);
    let cpu = t.proxy_pid.map(tree_cpu_seconds).unwrap_or(0.0) - cpu0;
    let up = upstream_errors(&up0, &env.upstream());
    (o, cpu, up)
}

pub fn w1(env: &Env, p: &Params, configs: &[Config], r: &mut Results) {
    // (HTTPS, connections, proxy on the load CPU). The same-CPU rows move the proxy next to
    // the client and the upstream, so no request waits for an idle CPU to wake up: what is
    // left is the proxy's own work (see the machine-floor note).
    let variants = [
        (true, 4, false),
        (true, 16, false),
        (false, 4, false),
        (true, 4, true),
        (false, 4, true),
    ];
    for (https, conns, same_cpu) in variants {
        let name = format!(
            "W1 {} 1 KiB, {conns} conns @{}/s{}",
            if https { "HTTPS" } else { "HTTP" },
            p.w1_rate,
            if same_cpu {
                ", proxy on the load CPU"
            } else {
                ""
            }
        );
        for pct in ["p50", "p90", "p99", "max"] {
            r.metric(&format!("{name} · {pct}"), "µs", Vs::Delta);
        }
        // What a request costs the proxy: its CPU, and how often its threads went to sleep or
        // were preempted (each a trip through the scheduler, on the request's path or not).
        r.metric(&format!("{name} · proxy CPU"), "µs/req", Vs::None);
        r.metric(
            &format!("{name} · proxy context switches"),
            "per req",
            Vs::None,
        );
        for round in 0..p.rounds {
            for &c in configs {
                if !https && !c.plain_http() {
                    continue;
                }
                let proxy = env.target(c).proxy_pid;
                if let (true, Some(pid)) = (same_cpu, proxy) {
                    pin(pid, LOAD_CPU);
                }
                let l = Load {
                    https,
                    path: "/bytes/1024".into(),
                    conns,
                    rate: Some(p.w1_rate),
                    open_loop: true,
                    seconds: Some(p.w1_seconds),
                    requests: None,
                    keepalive: true,
                    post_1k: true,
                    host_regex: None,
                };
                let switches0 = proxy.map(tree_context_switches);
                let (o, cpu, up) = measured(env, c, &l);
                let switches = proxy
                    .zip(switches0)
                    .map(|(pid, s0)| tree_context_switches(pid).saturating_sub(s0));
                if let (true, Some(pid)) = (same_cpu, proxy) {
                    pin(pid, PROXY_CPU);
                }
                if let Some(s) = switches {
                    let n = o.ok.max(1) as f64;
                    r.add(&format!("{name} · proxy CPU"), c, cpu * 1e6 / n);
                    r.add(&format!("{name} · proxy context switches"), c, s as f64 / n);
                }
                for (pct, v) in [
                    ("p50", o.p50),
                    ("p90", o.p90),
                    ("p99", o.p99),
                    ("max", o.max),
                ] {
                    r.add(&format!("{name} · {pct}"), c, v);
                }
                r.errors("W1", c, o.errors, up);
                r.raw
                    .push(json!({"workload": "W1", "variant": name, "round": round,
                    "config": c.name(), "outcome": o, "proxy_cpu_s": cpu, "proxy_context_switches": switches, "upstream_errors": up}));
            }
        }
    }
}

pub fn w2(env: &Env, p: &Params, configs: &[Config], r: &mut Results) {
    let total = p.w2_bytes;
    let gib = total as f64 / (1u64 << 30) as f64;
    for streams in [1u32, 4] {
        let name = format!("W2 bulk {} MiB, {streams} stream(s)", total >> 20);
        r.metric(&format!("{name} · throughput"), "Gbit/s", Vs::Ratio);
        r.metric(&format!("{name} · proxy CPU"), "s/GiB", Vs::None);
        for round in 0..p.rounds {
            for &c in configs {
                let l = Load {
                    https: true,
                    path: format!("/bytes/{}", total / u64::from(streams)),
                    conns: streams,
                    rate: None,
                    open_loop: false,
                    seconds: None,
                    requests: Some(u64::from(streams)),
                    keepalive: true,
                    post_1k: false,
                    host_regex: None,
                };
                let (o, cpu, up) = measured(env, c, &l);
                let gbit = o.bytes * 8.0 / o.seconds / 1e9;
                r.add(&format!("{name} · throughput"), c, gbit);
                if c != Config::Direct {
                    r.add(&format!("{name} · proxy CPU"), c, cpu / gib);
                }
                let short = if o.bytes as u64 == total { 0 } else { 1 };
                r.errors("W2", c, o.errors + short, up);
                r.raw
                    .push(json!({"workload": "W2", "variant": name, "round": round,
                    "config": c.name(), "outcome": o, "proxy_cpu_s": cpu, "upstream_errors": up}));
            }
        }
    }
}

/// W3: the highest rate of the ladder with p99 < 10 ms and zero errors, one request per connection.
pub fn w3(env: &Env, p: &Params, configs: &[Config], r: &mut Results) {
    let warm = "W3 new conns (warm)";
    let cold = "W3 new conns, never-seen names (cold cert cache)";
    r.metric(&format!("{warm} · max rate"), "conn/s", Vs::Ratio);
    r.metric(&format!("{warm} · proxy CPU"), "µs/conn", Vs::None);
    let cold_configs: Vec<Config> = configs
        .iter()
        .copied()
        .filter(|c| env.cold_target(*c).is_some())
        .collect();
    let with_cold = !cold_configs.is_empty();
    capacity_metrics(r, warm);
    if with_cold {
        r.metric(&format!("{cold} · max rate"), "conn/s", Vs::Ratio);
        r.metric(&format!("{cold} · proxy CPU"), "µs/conn", Vs::None);
        capacity_metrics(r, cold);
    }
    for round in 0..p.rounds {
        let mut runs: Vec<(Config, bool)> = configs.iter().map(|c| (*c, false)).collect();
        runs.extend(cold_configs.iter().map(|c| (*c, true)));
        for (c, is_cold) in runs {
            let name = if is_cold { cold } else { warm };
            let mut best: Option<(u32, f64)> = None;
            let mut first_cpu = f64::NAN;
            for &rate in &p.w3_rates {
                let l = Load {
                    https: true,
                    path: "/bytes/1024".into(),
                    conns: 64,
                    rate: Some(rate),
                    // Paced, not corrected: one scheduler stall of the shared load CPU would
                    // otherwise fail a whole step; the achieved-rate check catches a slow proxy.
                    open_loop: false,
                    seconds: Some(p.w3_seconds),
                    requests: None,
                    keepalive: false,
                    post_1k: false,
                    // oha's regex URLs take `.` literally (and a `\\` would end the host).
                    host_regex: is_cold.then(|| format!("c{round}[a-z0-9]{{12}}.{COLD_ZONE}")),
                };
                let t = if is_cold {
                    env.cold_target(c).expect("a cold target")
                } else {
                    env.target(c)
                };
                let (o, cpu, up) = measured_on(env, &t, &l);
                let per_conn = cpu * 1e6 / o.ok.max(1) as f64;
                if first_cpu.is_nan() {
                    first_cpu = per_conn;
                }
                let achieved = o.ok as f64 >= 0.9 * f64::from(rate) * p.w3_seconds;
                let pass = o.errors == 0 && up == 0 && o.p99 < 10_000.0 && achieved;
                r.raw
                    .push(json!({"workload": "W3", "variant": name, "round": round,
                    "config": c.name(), "rate": rate, "pass": pass, "outcome": o,
                    "proxy_cpu_s": cpu, "upstream_errors": up}));
                if !pass {
                    break;
                }
                best = Some((rate, per_conn));
            }
            let (rate, per_conn) = best.unwrap_or((0, first_cpu));
            capacity(env, p, r, c, is_cold, round, name);
            r.add(&format!("{name} · max rate"), c, f64::from(rate));
            if c != Config::Direct {
                r.add(&format!("{name} · proxy CPU"), c, per_conn);
            }
            // Errors count at the passing steps only: a failing step is how the search ends.
            r.errors("W3", c, 0, 0);
        }
    }
    if with_cold && configs.contains(&Config::Inspect) {
        crate::mint::mint_cost(p, r, cold);
    }
}

fn capacity_metrics(r: &mut Results, name: &str) {
    r.metric(&format!("{name} · saturated rate"), "conn/s", Vs::Ratio);
    r.metric(
        &format!("{name} · saturated proxy CPU"),
        "µs/conn",
        Vs::None,
    );
    r.metric(
        &format!("{name} · new conns per proxy core"),
        "conn/s",
        Vs::None,
    );
}

/// W3 capacity: closed loop (no pacing, `CAPACITY_CONNS` in flight) for `w3_seconds`, so the
/// proxy is busy the whole run; its CPU per connection then has no idle wake-ups to amortise,
/// and 10⁶ / (CPU µs per connection) is what one proxy core sustains. This is the figure the
/// "new connections/s per proxy core" target is about; the paced ladder's p99 < 10 ms criterion
/// is, on this VM, bound by scheduler stalls even for direct (see the notes).
fn capacity(
    env: &Env,
    p: &Params,
    r: &mut Results,
    c: Config,
    cold: bool,
    round: usize,
    name: &str,
) {
    const CAPACITY_CONNS: u32 = 32;
    let l = Load {
        https: true,
        path: "/bytes/1024".into(),
        conns: CAPACITY_CONNS,
        rate: None,
        open_loop: false,
        seconds: Some(p.w3_seconds.max(1.0) * 2.0),
        requests: None,
        keepalive: false,
        post_1k: false,
        host_regex: cold.then(|| format!("s{round}[a-z0-9]{{12}}.{COLD_ZONE}")),
    };
    let t = if cold {
        env.cold_target(c).expect("a cold target")
    } else {
        env.target(c)
    };
    let (o, cpu, up) = measured_on(env, &t, &l);
    r.add(&format!("{name} · saturated rate"), c, o.rps);
    if c != Config::Direct {
        let per_conn = cpu * 1e6 / o.ok.max(1) as f64;
        r.add(&format!("{name} · saturated proxy CPU"), c, per_conn);
        r.add(
            &format!("{name} · new conns per proxy core"),
            c,
            1e6 / per_conn,
        );
    }
    r.errors("W3", c, o.errors, up);
    r.raw.push(json!({"workload": "W3", "variant": format!("{name} · saturated"), "round": round,
        "config": c.name(), "conns": CAPACITY_CONNS, "outcome": o, "proxy_cpu_s": cpu, "upstream_errors": up}));
}

/// W5: `count` idle TLS connections (each did one request), held by a helper in the client's
/// cgroup: proxy VmRSS and machine-wide Slab, before and after, per connection.
pub fn w5(env: &mut Env, p: &Params, configs: &[Config], r: &mut Results) {
    let name = format!("W5 {} idle TLS conns", p.w5_count);
    r.metric(&format!("{name} · proxy RSS"), "KiB/conn", Vs::None);
    r.metric(
        &format!("{name} · kernel Slab (machine-wide)"),
        "KiB/conn",
        Vs::Delta,
    );
    let exe = std::env::current_exe().expect("current exe");
    for round in 0..p.rounds {
        for &c in configs {
            if matches!(c, Config::Passthrough | Config::Inspect) {
                // A fresh agent process: one that already carried W1–W3 (or the previous
                // round) serves new connections from memory its allocator kept, and its RSS
                // would not grow at all.
                env.restart_agent();
            }
            let t = env.target(c);
            let up0 = env.upstream();
            std::thread::sleep(Duration::from_millis(300));
            let rss0 = t.proxy_pid.map(tree_rss_bytes).unwrap_or(0.0);
            let slab0 = slab_bytes();
            let connect = t.connect_https.clone().expect("a connect address");
            let mut child = env
                .topo
                .ctr_command_in(&t.cgroup, "taskset")
                .args(["-c", LOAD_CPU])
                .arg(&exe)
                .args(["idle-client", "--count", &p.w5_count.to_string()])
                .args(["--connect", &connect, "--host", &t.host, "--ca"])
                .arg(&env.bundle)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("idle client");
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            std::thread::sleep(Duration::from_millis(500));
            let ok = v["ok"].as_u64().unwrap_or(0);
            let failed = v["failed"].as_u64().unwrap_or(p.w5_count);
            let rss = t.proxy_pid.map(tree_rss_bytes).unwrap_or(0.0) - rss0;
            let slab = slab_bytes() - slab0;
            let _ = child.stdin.take().map(|mut s| s.write_all(b"q\n"));
            let _ = child.wait();
            let up = upstream_errors(&up0, &env.upstream());
            let n = ok.max(1) as f64;
            if c != Config::Direct {
                r.add(&format!("{name} · proxy RSS"), c, rss / n / 1024.0);
            }
            r.add(
                &format!("{name} · kernel Slab (machine-wide)"),
                c,
                slab / n / 1024.0,
            );
            r.errors("W5", c, failed, up);
            r.raw
                .push(json!({"workload": "W5", "round": round, "config": c.name(),
                "client": v, "proxy_rss_delta": rss, "slab_delta": slab, "upstream_errors": up}));
            // Let the proxy and the upstream see every close before the next configuration.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}
