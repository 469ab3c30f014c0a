//! Below every room: counters in the Prometheus text format (exposition format 0.0.4), served on
//! the daemon's control socket (`GET /metrics`) and, with `daemon --metrics
//! ADDR`, on a loopback TCP port.
//!
//! The data path only touches atomics: every decision already passes through
//! [`crate::audit::Audit::record`], which calls [`Metrics::observe`], so the
//! decision counters and the audit log are the same events counted twice (the
//! DESIGN §6 rule "every denial is also an audit record and a counter"). Per
//! profile counters sit behind an `ArcSwap` of a small vector: a lookup is a
//! lock-free load and a scan; only the first record of a new profile takes the
//! registration mutex. Kernel denials are counted by the programs themselves
//! (`eg_counters`, per CPU) and read at scrape time.

use std::{
    collections::BTreeMap,
    fmt::Write,
    net::SocketAddr,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use arc_swap::ArcSwap;

use crate::{deny::DenyCode, record::Record};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics listener {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics listener {0}: only loopback addresses are allowed (the counters name profiles and hosts' outcomes)")]
    NotLoopback(SocketAddr),
}

/// `decision` label values, in counter-array order.
const DECISIONS: [&str; 3] = ["allow", "deny", "would_deny"];
/// Codes beyond the deny contract's that records carry.
const EXTRA_CODES: [&str; 2] = ["none", "no_original_destination"];
/// Index of the catch-all code label.
const OTHER: usize = DenyCode::ALL.len() + EXTRA_CODES.len();
const CODES: usize = OTHER + 1;

fn code_index(code: Option<&str>) -> usize {
    let Some(code) = code else { return 0 };
    if let Some(i) = DenyCode::ALL.iter().position(|c| c.as_str() == code) {
        return EXTRA_CODES.len() + i;
    }
    match code {
        "none" => 0,
        "no_original_destination" => 1,
        _ => OTHER,
    }
}

fn code_label(i: usize) -> &'static str {
    if i < EXTRA_CODES.len() {
        EXTRA_CODES[i]
    } else if i < OTHER {
        DenyCode::ALL[i - EXTRA_CODES.len()].as_str()
    } else {
        "other"
    }
}

#[derive(Default)]
struct ProfileCounters {
    decisions: [[AtomicU64; CODES]; DECISIONS.len()],
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    dns_answers: AtomicU64,
    dns_refusals: AtomicU64,
    /// Ask mode outcomes, in [`ASK_OUTCOMES`] order.
    ask: [AtomicU64; ASK_OUTCOMES.len()],
}

/// `outcome` label values of `egress_ask_decisions_total` (the record's `ask` field up to `#`).
const ASK_OUTCOMES: [&str; 6] = [
    "approved:once",
    "approved:session",
    "approved:save",
    "denied",
    "timeout",
    "overflow",
];

/// Every counter of one agent process.
#[derive(Default)]
pub struct Metrics {
    profiles: ArcSwap<Vec<(String, Arc<ProfileCounters>)>>,
    register: Mutex<()>,
    active: AtomicI64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// Links found detached (by someone else) and re-attached, per attachment or gate.
    tamper_repairs: AtomicU64,
    /// Attachments ended because their cgroup went away (the container exited).
    exited: AtomicU64,
    /// Kernel counters of attachments already detached (their maps are gone).
    kernel_retired: Mutex<BTreeMap<(&'static str, u32), u64>>,
}

/// Held for the life of one intercepted connection.
pub struct ConnectionGuard<'a>(&'a Metrics);

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    fn profile(&self, name: &str) -> Arc<ProfileCounters> {
        if let Some((_, c)) = self.profiles.load().iter().find(|(n, _)| n == name) {
            return c.clone();
        }
        let _g = self.register.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.profiles.load_full();
        if let Some((_, c)) = cur.iter().find(|(n, _)| n == name) {
            return c.clone();
        }
        let c = Arc::new(ProfileCounters::default());
        let mut next = (*cur).clone();
        next.push((name.to_string(), c.clone()));
        next.sort_by(|a, b| a.0.cmp(&b.0));
        self.profiles.store(Arc::new(next));
        c
    }

    /// Count one audit record (called by `Audit::record`, for every record).
    pub fn observe(&self, rec: &Record) {
        // Kernel denials are counted exactly by the programs (per hook and
        // reason); the ring-buffer events that become records may be dropped.
        if rec.protocol == "kernel" {
            return;
        }
        let c = self.profile(&rec.profile);
        let d = DECISIONS
            .iter()
            .position(|d| *d == rec.decision)
            .unwrap_or(1);
        let code = if rec.decision == "allow" {
            0
        } else {
            code_index(rec.code.as_deref())
        };
        c.decisions[d][code].fetch_add(1, Ordering::Relaxed);
        c.bytes_up.fetch_add(rec.bytes_up, Ordering::Relaxed);
        c.bytes_down.fetch_add(rec.bytes_down, Ordering::Relaxed);
        if let Some(ask) = rec.ask.as_deref() {
            let kind = ask.split('#').next().unwrap_or(ask);
            if let Some(i) = ASK_OUTCOMES.iter().position(|o| *o == kind) {
                c.ask[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        if rec.protocol.starts_with("dns") {
            if rec.decision == "deny" {
                c.dns_refusals.fetch_add(1, Ordering::Relaxed);
            } else {
                c.dns_answers.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Count an intercepted connection as active until the guard is dropped.
    pub fn connection(&self) -> ConnectionGuard<'_> {
        self.active.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self)
    }

    pub fn reloaded(&self, ok: bool) {
        if ok {
            self.reloads_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.reloads_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One tampered attachment or gate found and repaired (its links re-attached).
    pub fn tamper_repaired(&self) {
        self.tamper_repairs.fetch_add(1, Ordering::Relaxed);
    }

    /// One attachment ended because its cgroup was removed.
    pub fn exited(&self) {
        self.exited.fetch_add(1, Ordering::Relaxed);
    }

    /// Keep the kernel counters of an attachment that is going away.
    pub fn retire_kernel(&self, counters: &[(&'static str, u32, u64)]) {
        let mut m = self
            .kernel_retired
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (hook, reason, n) in counters {
            *m.entry((hook, *reason)).or_default() += n;
        }
    }

    /// The exposition text. `kernel` holds the live attachments' counters
    /// (hook label, reason, count); `audit_lost` and `ask_pending` are the
    /// caller's (the audit log's loss count, ask mode's pending decisions).
    pub fn render(
        &self,
        kernel: &[(&'static str, u32, u64)],
        audit_lost: u64,
        ask_pending: usize,
    ) -> String {
        let mut o = String::with_capacity(4096);
        let profiles = self.profiles.load_full();
        header(
            &mut o,
            "egress_decisions_total",
            "counter",
            "Decisions on intercepted connections and DNS questions (kernel denials excluded), by profile, decision and code.",
        );
        for (name, c) in profiles.iter() {
            for (d, decision) in DECISIONS.iter().enumerate() {
                for code in 0..CODES {
                    let n = c.decisions[d][code].load(Ordering::Relaxed);
                    if n > 0 {
                        let _ = writeln!(
                            o,
                            "egress_decisions_total{{profile=\"{}\",decision=\"{decision}\",code=\"{}\"}} {n}",
                            escape(name),
                            code_label(code)
                        );
                    }
                }
            }
        }
        header(
            &mut o,
            "egress_ask_decisions_total",
            "counter",
            "Ask mode: connections and DNS questions held for an operator, by profile and outcome.",
        );
        for (name, c) in profiles.iter() {
            for (i, outcome) in ASK_OUTCOMES.iter().enumerate() {
                let n = c.ask[i].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        o,
                        "egress_ask_decisions_total{{profile=\"{}\",outcome=\"{outcome}\"}} {n}",
                        escape(name)
                    );
                }
            }
        }
        header(
            &mut o,
            "egress_active_connections",
            "gauge",
            "Intercepted TCP connections being served now.",
        );
        let _ = writeln!(
            o,
            "egress_active_connections {}",
            self.active.load(Ordering::Relaxed).max(0)
        );
        header(
            &mut o,
            "egress_bytes_total",
            "counter",
            "Bytes copied for finished connections, by profile and direction (up: client to upstream).",
        );
        for (name, c) in profiles.iter() {
            for (dir, v) in [("up", &c.bytes_up), ("down", &c.bytes_down)] {
                let _ = writeln!(
                    o,
                    "egress_bytes_total{{profile=\"{}\",direction=\"{dir}\"}} {}",
                    escape(name),
                    v.load(Ordering::Relaxed)
                );
            }
        }
        header(
            &mut o,
            "egress_dns_answers_total",
            "counter",
            "DNS questions answered (including NODATA and monitor-mode would-deny answers), by profile.",
        );
        for (name, c) in profiles.iter() {
            let _ = writeln!(
                o,
                "egress_dns_answers_total{{profile=\"{}\"}} {}",
                escape(name),
                c.dns_answers.load(Ordering::Relaxed)
            );
        }
        header(
            &mut o,
            "egress_dns_refusals_total",
            "counter",
            "DNS questions refused (NXDOMAIN/SERVFAIL with a reason), by profile.",
        );
        for (name, c) in profiles.iter() {
            let _ = writeln!(
                o,
                "egress_dns_refusals_total{{profile=\"{}\"}} {}",
                escape(name),
                c.dns_refusals.load(Ordering::Relaxed)
            );
        }
        header(
            &mut o,
            "egress_kernel_denials_total",
            "counter",
            "Operations refused by the eBPF programs, by hook and reason.",
        );
        let mut k = self
            .kernel_retired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (hook, reason, n) in kernel {
            *k.entry((hook, *reason)).or_default() += n;
        }
        for ((hook, reason), n) in k {
            let label = crate::addr::Reason::from_u32(reason)
                .map(|r| r.label().to_string())
                .unwrap_or_else(|| reason.to_string());
            let _ = writeln!(
                o,
                "egress_kernel_denials_total{{hook=\"{hook}\",reason=\"{}\"}} {n}",
                escape(&label)
            );
        }
        header(
            &mut o,
            "egress_reloads_total",
            "counter",
            "Policy reloads, by result (a failed reload changes nothing).",
        );
        let _ = writeln!(
            o,
            "egress_reloads_total{{result=\"ok\"}} {}",
            self.reloads_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "egress_reloads_total{{result=\"failed\"}} {}",
            self.reloads_failed.load(Ordering::Relaxed)
        );
        header(
            &mut o,
            "egress_tamper_repairs_total",
            "counter",
            "Attachments or gates whose links someone detached, found and re-attached (the cgroup frozen meanwhile).",
        );
        let _ = writeln!(
            o,
            "egress_tamper_repairs_total {}",
            self.tamper_repairs.load(Ordering::Relaxed)
        );
        header(
            &mut o,
            "egress_exited_detached_total",
            "counter",
            "Attachments detached because their cgroup went away (the container exited).",
        );
        let _ = writeln!(
            o,
            "egress_exited_detached_total {}",
            self.exited.load(Ordering::Relaxed)
        );
        header(
            &mut o,
            "egress_audit_records_lost_total",
            "counter",
            "Audit records dropped (channel full or log unwritable); enforcement never waits on the log.",
        );
        let _ = writeln!(o, "egress_audit_records_lost_total {audit_lost}");
        header(
            &mut o,
            "egress_ask_pending",
            "gauge",
            "Decisions held for an operator now (ask mode), agent-wide.",
        );
        let _ = writeln!(o, "egress_ask_pending {ask_pending}");
        o
    }
}

fn header(o: &mut String, name: &str, ty: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {ty}");
}

/// Label values: backslash, double quote and newline are escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Produces the exposition text at scrape time.
pub type Render = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>> + Send + Sync,
>;

/// Serve `GET /metrics` (any path, in fact) on a loopback TCP address.
pub async fn serve_tcp(
    addr: SocketAddr,
    render: Render,
) -> Result<tokio::task::JoinHandle<()>, MetricsError> {
    if !addr.ip().is_loopback() {
        return Err(MetricsError::NotLoopback(addr));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let render = render.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let body = render();
                    async move { Ok::<_, std::convert::Infallible>(text_response(body.await)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    }))
}

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn text_response(body: String) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(
        profile: &str,
        protocol: &'static str,
        decision: &'static str,
        code: Option<&str>,
    ) -> Record {
        Record {
            profile: profile.into(),
            protocol,
            decision,
            code: code.map(str::to_string),
            bytes_up: 3,
            bytes_down: 5,
            ..Default::default()
        }
    }

    #[test]
    fn counts_records_by_profile_decision_and_code() {
        let m = Metrics::default();
        m.observe(&rec("default", "http", "allow", None));
        m.observe(&rec("default", "http", "deny", Some("host_not_allowed")));
        m.observe(&rec("ci", "dns", "deny", Some("host_not_allowed")));
        m.observe(&rec("ci", "dns", "would_deny", Some("host_not_allowed")));
        m.observe(&rec("ci", "kernel", "deny", Some("metadata")));
        m.observe(&rec("ci", "tls", "deny", Some("weird_code")));
        m.reloaded(true);
        m.reloaded(false);
        {
            let _g = m.connection();
            assert!(m
                .render(&[], 0, 0)
                .contains("egress_active_connections 1\n"));
        }
        let t = m.render(&[("connect4", 3, 2)], 7, 2);
        assert!(t.contains("egress_ask_pending 2\n"), "{t}");
        for line in [
            "egress_decisions_total{profile=\"default\",decision=\"allow\",code=\"none\"} 1",
            "egress_decisions_total{profile=\"default\",decision=\"deny\",code=\"host_not_allowed\"} 1",
            "egress_decisions_total{profile=\"ci\",decision=\"deny\",code=\"host_not_allowed\"} 1",
            "egress_decisions_total{profile=\"ci\",decision=\"would_deny\",code=\"host_not_allowed\"} 1",
            "egress_decisions_total{profile=\"ci\",decision=\"deny\",code=\"other\"} 1",
            "egress_bytes_total{profile=\"default\",direction=\"up\"} 6",
            "egress_dns_answers_total{profile=\"ci\"} 1",
            "egress_dns_refusals_total{profile=\"ci\"} 1",
            "egress_reloads_total{result=\"ok\"} 1",
            "egress_reloads_total{result=\"failed\"} 1",
            "egress_active_connections 0",
            "egress_audit_records_lost_total 7",
        ] {
            assert!(t.lines().any(|l| l == line), "missing {line:?} in\n{t}");
        }
        assert!(t.contains("egress_kernel_denials_total{hook=\"connect4\""));
        // Kernel records are not decisions here (the programs count them).
        assert!(!t.contains("code=\"metadata\""));
    }
}
