//! W3 cold, the certificate alone: the agent's own minter (`egress_agent::inspect::mint`,
//! with a CA of its own in a temporary directory) asked for never-seen names in this process,
//! on the proxy CPU. What a cold connection costs beyond this is its DNS answer and its
//! upstream's TLS handshake, which the W3 cold rows include.

use std::{process::Command, sync::Arc, time::Instant};

use egress_agent::inspect::{ca::Ca, mint::Minter};

use crate::{
    env::{Config, PROXY_CPU},
    report::{Results, Vs},
    Params,
};

const NAMES: usize = 1000;

pub fn mint_cost(p: &Params, r: &mut Results, cold: &str) {
    let id = format!("{cold} · leaf certificate mint (in-process, median of {NAMES} names)");
    r.metric(&id, "µs", Vs::None);
    let dir = std::env::temp_dir().join(format!("egress-bench-mint-{}", std::process::id()));
    let rounds = p.rounds;
    let medians = std::thread::spawn(move || {
        // This thread only, on the CPU the agent runs on.
        let tid = unsafe { libc::gettid() };
        let _ = Command::new("taskset")
            .args(["-p", "-c", PROXY_CPU, &tid.to_string()])
            .output();
        let ca = Arc::new(Ca::load_or_create(&dir, None).expect("a CA for the mint bench"));
        let minter = Minter::new(ca).expect("a minter");
        let medians: Vec<f64> = (0..rounds)
            .map(|round| {
                let mut us: Vec<f64> = (0..NAMES)
                    .map(|i| {
                        let t = Instant::now();
                        minter
                            .get(&format!("m{round}-{i}.mint.test"))
                            .expect("a minted leaf");
                        t.elapsed().as_secs_f64() * 1e6
                    })
                    .collect();
                us.sort_by(f64::total_cmp);
                us[NAMES / 2]
            })
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
        medians
    })
    .join()
    .expect("the mint bench thread");
    for m in medians {
        r.add(&id, Config::Inspect, m);
    }
}
