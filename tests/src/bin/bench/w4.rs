//! W4 — connect() cost: the same blocking connect() to the same loopback
//! listener in the container's namespace, from a process in a plain cgroup
//! (direct) and from one in the enforced cgroup, whose connect to a public
//! address the programs classify, remember and rewrite to that listener. The
//! difference is what the cgroup programs add per call. The denied fast path
//! (EPERM for a private address) is reported too.
//!
//! The wall-clock difference of two ~10 µs syscalls is at the noise floor of a shared VM, so the
//! programs' own cost is also read from the kernel: with `kernel.bpf_stats_enabled` on for the
//! duration, every program's `run_time_ns` / `run_cnt` (bpftool) over the redirected loop gives
//! ns per call of connect4 and the total of every program that ran, per connect().

use std::time::Duration;

use egress_tests::topology::run_probe_in;
use serde_json::json;

use crate::{
    env::{Config, Env},
    report::{Results, Vs},
    Params,
};

const CALLS: &str = "2000";

pub fn w4(env: &Env, p: &Params, r: &mut Results) {
    let port: u16 = env
        .agent
        .banner
        .split("tcp=127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.parse().ok())
        .expect("listener port in the agent's banner");
    let listener = format!("127.0.0.1:{port}");
    let redirected = "W4 connect() · redirected (median of 2000 calls)";
    let denied = "W4 connect() · denied, EPERM (median of 2000 calls)";
    r.metric(redirected, "µs", Vs::Delta);
    r.metric(denied, "µs", Vs::Delta);
    let stats_connect4 = "W4 connect4 program, kernel run_time_ns per call";
    let stats_all = "W4 every cgroup program, kernel ns per redirected connect()";
    r.metric(stats_connect4, "ns", Vs::None);
    r.metric(stats_all, "ns", Vs::None);
    let stats = BpfStats::enable();
    let cgroup = env.topo.ctr_cgroup_path().to_path_buf();
    for round in 0..p.rounds {
        let before = prog_stats(&cgroup);
        let v = env
            .topo
            .probe(&["connect-loop", "198.51.100.10:80", "--count", CALLS]);
        let after = prog_stats(&cgroup);
        let calls: f64 = CALLS.parse().unwrap();
        let mut total = 0.0;
        let mut per_prog = serde_json::Map::new();
        for (name, (ns1, cnt1)) in &after {
            let (ns0, cnt0) = before.get(name).copied().unwrap_or((0, 0));
            let (ns, cnt) = (ns1.saturating_sub(ns0), cnt1.saturating_sub(cnt0));
            total += ns as f64;
            per_prog.insert(name.clone(), json!({"run_time_ns": ns, "run_cnt": cnt}));
            if name == "egress_connect4" && cnt > 0 {
                r.add(stats_connect4, Config::Passthrough, ns as f64 / cnt as f64);
            }
        }
        if stats.on {
            r.add(stats_all, Config::Passthrough, total / calls);
        }
        r.raw.push(
            json!({"workload": "W4", "round": round, "config": "passthrough",
            "variant": "bpf_stats", "probe": v, "programs": per_prog}),
        );
    }
    drop(stats);
    for round in 0..p.rounds {
        // Direct: the same connect() from the plain cgroup, to the listener itself.
        let runs: [(Config, &str, serde_json::Value); 3] = [
            (
                Config::Direct,
                "",
                run_probe_in(
                    &env.topo,
                    &env.plain,
                    &["connect-loop", &listener, "--count", CALLS],
                ),
            ),
            (
                Config::Passthrough,
                redirected,
                env.topo
                    .probe(&["connect-loop", "198.51.100.10:80", "--count", CALLS]),
            ),
            (
                Config::Passthrough,
                denied,
                env.topo
                    .probe(&["connect-loop", "10.1.2.3:80", "--count", CALLS]),
            ),
        ];
        for (c, id, v) in runs {
            let m = v["median_us"]
                .as_f64()
                .unwrap_or_else(|| panic!("W4 {id}: {v}"));
            if c == Config::Direct {
                // Direct is the baseline of both rows.
                r.add(redirected, c, m);
                r.add(denied, c, m);
            } else {
                r.add(id, c, m);
            }
            r.raw
                .push(json!({"workload": "W4", "round": round, "config": c.name(),
                "variant": id, "probe": v}));
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `kernel.bpf_stats_enabled` on while alive (the kernel counts it per holder; the sysctl is
/// restored to what it was).
struct BpfStats {
    on: bool,
    was: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> BpfStats {
        let was = std::fs::read_to_string(BPF_STATS).unwrap_or_default();
        let on = std::fs::write(BPF_STATS, "1").is_ok();
        BpfStats { on, was }
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if self.on {
            let _ = std::fs::write(BPF_STATS, self.was.trim());
        }
    }
}

/// Program name → (run_time_ns, run_cnt) of every program attached to `cgroup`.
fn prog_stats(cgroup: &std::path::Path) -> std::collections::BTreeMap<String, (u64, u64)> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(o) = std::process::Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
    else {
        return out;
    };
    let attached: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    for a in attached.as_array().into_iter().flatten() {
        let Some(id) = a["id"].as_u64() else { continue };
        let Ok(p) = std::process::Command::new("bpftool")
            .args(["-j", "prog", "show", "id", &id.to_string()])
            .output()
        else {
            continue;
        };
        let p: serde_json::Value = serde_json::from_slice(&p.stdout).unwrap_or_default();
        let name = p["name"].as_str().unwrap_or("?").to_string();
        let ns = p["run_time_ns"].as_u64().unwrap_or(0);
        let cnt = p["run_cnt"].as_u64().unwrap_or(0);
        let e = out.entry(name).or_insert((0, 0));
        e.0 += ns;
        e.1 += cnt;
    }
    out
}
