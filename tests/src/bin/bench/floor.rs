//! The machine's own floor for a proxy on another CPU: the round trip of a one-byte message
//! from the load CPU to a thread sleeping on the proxy CPU and back (a Unix socket pair),
//! sent every 2 ms so the proxy CPU is idle in between — as it is between W1 requests. On a
//! bare-metal host this is a few µs; in a VM every wake-up of an idle vCPU is a trip through
//! the hypervisor, and the figure bounds what any proxy pinned to the other CPU (ours and
//! HAProxy alike) can add less than.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use crate::env::{LOAD_CPU, PROXY_CPU};
use crate::report::median_range;

fn pin(cpu: &str) {
    let cpu: usize = cpu.parse().expect("cpu number");
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// (p50, p99, max) in µs of `n` round trips, `gap` apart.
pub fn wakeup_round_trip(n: usize, gap: Duration) -> (f64, f64, f64) {
    let (mut a, mut b) = UnixStream::pair().expect("socketpair");
    let echo = std::thread::spawn(move || {
        pin(PROXY_CPU);
        let mut buf = [0u8; 1];
        while b.read_exact(&mut buf).is_ok() && buf[0] != b'q' {
            if b.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut rtts = Vec::with_capacity(n);
    let me = std::thread::spawn(move || {
        pin(LOAD_CPU);
        let mut buf = [0u8; 1];
        for _ in 0..n {
            std::thread::sleep(gap);
            let t = Instant::now();
            a.write_all(b"x").unwrap();
            a.read_exact(&mut buf).unwrap();
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let _ = a.write_all(b"q");
        rtts
    });
    let mut rtts = me.join().expect("ping thread");
    let _ = echo.join();
    rtts.sort_by(|x, y| x.total_cmp(y));
    let (p50, _, max) = median_range(&rtts);
    (p50, rtts[(rtts.len() * 99 / 100).min(rtts.len() - 1)], max)
}
