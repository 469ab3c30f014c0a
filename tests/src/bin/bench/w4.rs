//! W4 — connect() cost: the same blocking connect() to the same loopback
//! listener in the container's namespace, from a process in a plain cgroup
//! (direct) and from one in the enforced cgroup, whose connect to a public
//! address the programs classify, remember and rewrite to that listener. The
//! difference is what the cgroup programs add per call. The denied fast path
//! (EPERM for a private address) is reported too.

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
