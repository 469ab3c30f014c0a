//! W6 soak: each proxy process under steady half load with churn for a long time — its
//! passthrough and its inspect configuration at once (one agent process serves both, as does
//! one HAProxy and one Squid) — sampling the process's RSS, so a leak shows as a slope; every
//! client and upstream error is counted.
//!
//! Per configuration: `KEEPALIVE_CONNS` keep-alive connections POSTing 1 KiB at `w6_keepalive_rate`
//! (half the W1 rate) and, beside them, a churn of new TLS connections (one 1 KiB GET each) at
//! `w6_churn_rate`. The agent runs for `w6_seconds`, each peer for `w6_peer_seconds`.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::{
    env::{tree_rss_bytes, Config, Env},
    load::{self, Load},
    report::{Results, Vs},
    work::upstream_errors,
    Params,
};

const KEEPALIVE_CONNS: u32 = 4;
const CHURN_CONNS: u32 = 16;
/// The first part of a soak is warm-up (pools, caches, the allocator's arenas filling): the
/// slope and "RSS at start" are taken after it.
const WARMUP_FRACTION: f64 = 0.1;

/// One proxy process and the configurations it serves.
fn groups(configs: &[Config]) -> Vec<Vec<Config>> {
    let sets: [&[Config]; 5] = [
        // The control: the same load without a proxy (errors here are the load's or upstream's).
        &[Config::Direct],
        &[Config::Passthrough, Config::Inspect],
        &[Config::Haproxy, Config::HaproxyInspect],
        &[Config::Squid, Config::SquidInspect],
        &[Config::Mitmproxy],
    ];
    sets.iter()
        .map(|s| s.iter().copied().filter(|c| configs.contains(c)).collect())
        .filter(|g: &Vec<Config>| !g.is_empty())
        .collect()
}

pub fn w6(env: &mut Env, p: &Params, configs: &[Config], r: &mut Results) {
    for group in groups(configs) {
        let agent = group.contains(&Config::Passthrough) || group.contains(&Config::Inspect);
        if agent {
            // A fresh agent process: after W5's 9,000 connections its allocator keeps hundreds
            // of MiB that a leak could grow into without moving RSS at all.
            env.restart_agent();
        }
        // Direct (the control) and the peers soak for the peers' time.
        let seconds = if agent {
            p.w6_seconds
        } else {
            p.w6_peer_seconds
        };
        let name = format!(
            "W6 soak {}, {} req/s keep-alive + {} new conns/s per column",
            duration(seconds),
            p.w6_keepalive_rate,
            p.w6_churn_rate
        );
        soak(env, p, &group, seconds, &name, r);
    }
}

fn duration(seconds: f64) -> String {
    if seconds >= 120.0 {
        format!("{:.0} min", seconds / 60.0)
    } else {
        format!("{seconds:.0} s")
    }
}

fn soak(env: &Env, p: &Params, group: &[Config], seconds: f64, name: &str, r: &mut Results) {
    let rows = [
        ("RSS at start", "MiB", Vs::None),
        ("RSS at end", "MiB", Vs::None),
        ("RSS slope", "KiB/10 min", Vs::None),
        ("requests answered", "count", Vs::None),
    ];
    for (row, unit, vs) in rows {
        r.metric(&format!("{name} · {row}"), unit, vs);
    }
    let pid = env.target(group[0]).proxy_pid;
    let rss = || pid.map(tree_rss_bytes).unwrap_or(f64::NAN);
    eprintln!(
        "bench: W6 {} for {}",
        group
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(" + "),
        duration(seconds)
    );
    let up0 = env.upstream();
    let rss_before = rss();
    let mut children = Vec::new();
    for &c in group {
        let t = env.target(c);
        let keepalive = Load {
            https: true,
            path: "/bytes/1024".into(),
            conns: KEEPALIVE_CONNS,
            rate: Some(p.w6_keepalive_rate),
            open_loop: false,
            seconds: Some(seconds),
            requests: None,
            keepalive: true,
            post_1k: true,
            host_regex: None,
        };
        let churn = Load {
            conns: CHURN_CONNS,
            rate: Some(p.w6_churn_rate),
            keepalive: false,
            post_1k: false,
            ..keepalive.clone()
        };
        children.push((c, "keep-alive", load::spawn(env, &t, &keepalive)));
        children.push((c, "churn", load::spawn(env, &t, &churn)));
    }
    let started = Instant::now();
    let every = (seconds / 120.0).clamp(1.0, 10.0);
    let mut samples: Vec<(f64, f64)> = Vec::new();
    // (seconds, upstream TLS failures, upstream connection errors) so far, at each change: when
    // and of which kind errors happen tells a steady fault from a shutdown race.
    let mut upstream_trace: Vec<(f64, u64, u64)> = Vec::new();
    while started.elapsed().as_secs_f64() < seconds {
        std::thread::sleep(Duration::from_secs_f64(every));
        let t = started.elapsed().as_secs_f64();
        samples.push((t, rss()));
        let now = env.upstream_now();
        let d = |k: &str| {
            now[k]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(up0[k].as_u64().unwrap_or(0))
        };
        let e = (t, d("tls_failed"), d("conn_errors"));
        if upstream_trace
            .last()
            .is_none_or(|l| (l.1, l.2) != (e.1, e.2))
        {
            upstream_trace.push(e);
        }
    }
    let mut outcomes = Vec::new();
    for (c, kind, child) in children {
        outcomes.push((c, kind, load::finish(child)));
    }
    let up = upstream_errors(&up0, &env.upstream());
    let after_warmup: Vec<(f64, f64)> = samples
        .iter()
        .copied()
        .filter(|(t, _)| *t >= seconds * WARMUP_FRACTION)
        .collect();
    let start = after_warmup.first().map_or(f64::NAN, |s| s.1);
    let end = samples.last().map_or(f64::NAN, |s| s.1);
    let slope = slope_per_second(&after_warmup) * 600.0 / 1024.0;
    for &c in group {
        if pid.is_some() {
            r.add(&format!("{name} · RSS at start"), c, start / 1048576.0);
            r.add(&format!("{name} · RSS at end"), c, end / 1048576.0);
            r.add(&format!("{name} · RSS slope"), c, slope);
        }
        let mine = outcomes.iter().filter(|(oc, _, _)| *oc == c);
        let answered: u64 = mine.clone().map(|(_, _, o)| o.ok).sum();
        let errors: u64 = mine.map(|(_, _, o)| o.errors).sum();
        r.add(&format!("{name} · requests answered"), c, answered as f64);
        // The upstream's counters cannot tell the group's configurations apart: each carries
        // the whole soak's.
        r.errors("W6", c, errors, up);
    }
    r.raw.push(json!({
        "workload": "W6", "variant": name,
        "configs": group.iter().map(|c| c.name()).collect::<Vec<_>>(),
        "seconds": seconds, "rss_before_load": rss_before,
        "rss_samples": samples, "upstream_errors": up, "upstream_error_trace": upstream_trace,
        "outcomes": outcomes.iter().map(|(c, kind, o)| json!({"config": c.name(), "load": kind, "outcome": o})).collect::<Vec<_>>(),
    }));
}

/// Least-squares slope of (t, y) in y per second; NaN with fewer than two points.
fn slope_per_second(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return f64::NAN;
    }
    let (mt, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (t, y)| (a + t / n, b + y / n));
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (t, y)| {
        (a + (t - mt) * (y - my), b + (t - mt) * (t - mt))
    });
    if den == 0.0 {
        f64::NAN
    } else {
        num / den
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn slope_of_a_line_and_of_too_few_points() {
        let pts: Vec<(f64, f64)> = (0..10).map(|t| (t as f64, 3.0 * t as f64 + 7.0)).collect();
        assert!((super::slope_per_second(&pts) - 3.0).abs() < 1e-9);
        assert!(super::slope_per_second(&pts[..1]).is_nan());
    }
}
