//! Benchmarks (../shared/BENCH.md): programs that report figures, never tests
//! that pass or fail on time. Configurations are interleaved in one run and every
//! figure is stated next to the baseline measured in that same run.
//!
//! W4 — connect() cost: the same blocking connect() to the same loopback
//! listener in the container's namespace, from a process in a plain cgroup
//! (direct) and from one in the enforced cgroup, whose connect to a public
//! address the programs classify, remember and rewrite to that listener. The
//! difference is what the cgroup programs add per call. The denied fast path
//! (EPERM for a private address) is reported too.

use std::{fmt::Write as _, time::Duration};

use egress_tests::{
    agent::{test_policy, Agent},
    require_root,
    topology::{run_probe_in, Topology},
};

const ROUNDS: usize = 7;
const CALLS: &str = "2000";

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if !require_root() {
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { ROUNDS };
    let topo = Topology::new("bench_w4");
    let agent = Agent::attach(&topo, &test_policy(&[]));
    let port: u16 = agent
        .banner
        .split("tcp=127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.parse().ok())
        .expect("listener port in the agent's banner");
    let plain = topo
        .ctr_cgroup_path()
        .with_file_name(format!("{}-plain", topo.id()));
    std::fs::create_dir_all(&plain).unwrap();

    let listener = format!("127.0.0.1:{port}");
    type Run<'a> = Box<dyn Fn() -> serde_json::Value + 'a>;
    let configs: [(&str, Run); 3] = [
        (
            "direct (no programs)",
            Box::new(|| {
                run_probe_in(
                    &topo,
                    &plain,
                    &["connect-loop", &listener, "--count", CALLS],
                )
            }),
        ),
        (
            "enforced, redirected",
            Box::new(|| topo.probe(&["connect-loop", "198.51.100.10:80", "--count", CALLS])),
        ),
        (
            "enforced, denied (EPERM)",
            Box::new(|| topo.probe(&["connect-loop", "10.1.2.3:80", "--count", CALLS])),
        ),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    for _ in 0..rounds {
        for (i, (name, run)) in configs.iter().enumerate() {
            let v = run();
            let m = v["median_us"]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}: {v}"));
            samples[i].push(m);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let direct = median(&mut samples[0].clone());
    let mut table = String::from("| configuration | median µs/connect (of per-round medians) | range | vs direct |\n|---|---|---|---|\n");
    for (i, (name, _)) in configs.iter().enumerate() {
        let mut s = samples[i].clone();
        let m = median(&mut s);
        let (lo, hi) = (s[0], s[s.len() - 1]);
        let _ = writeln!(
            table,
            "| {name} | {m:.2} | {lo:.2}–{hi:.2} | {:+.2} µs ({:.2}×) |",
            m - direct,
            m / direct
        );
    }
    println!("W4 connect() cost, {rounds} interleaved rounds × {CALLS} calls each\n\n{table}");
    let raw = serde_json::json!({
        "workload": "W4",
        "rounds": rounds,
        "calls_per_round": CALLS,
        "configs": configs.iter().map(|c| c.0).collect::<Vec<_>>(),
        "median_us_per_round": samples,
    });
    std::fs::create_dir_all("bench").ok();
    std::fs::write(
        "bench/w4-raw.json",
        serde_json::to_string_pretty(&raw).unwrap(),
    )
    .ok();
    let _ = std::fs::remove_dir(&plain);
    drop(agent);
}
