//! Below the commands: denials told to the person at the terminal as they happen (`exec`), one
//! line each, with the reason and the fix. A subscriber of the audit stream
//! ([`crate::audit::Audit::subscribe`]): the data path only queues the record; a thread of its
//! own formats, rate-limits and writes.
//!
//! Rate limit: one line per (code, what was denied) per [`WINDOW`]; repeats inside the window
//! are counted, and the next line for that key (or the summary written when the notifier is
//! dropped) says how many were left out. A client retrying in a loop costs one line per window.

use std::{
    collections::HashMap,
    io::Write,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use crate::{audit::Audit, record::Record};

/// One line per (code, subject) per window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Keys remembered at once; past it, keys whose window is over are forgotten first.
const MAX_KEYS: usize = 1024;

/// The one-line account of a denial: who, what, why, and how to allow it.
pub fn line(rec: &Record) -> String {
    let verb = if rec.decision == "would_deny" {
        "would deny (monitor mode)"
    } else {
        "denied"
    };
    let code = rec.code.as_deref().unwrap_or("denied");
    let who = match (rec.comm.is_empty(), rec.pid) {
        (true, 0) => String::new(),
        (false, 0) => format!(" for {}", rec.comm),
        (_, pid) => format!(" for {}[{pid}]", rec.comm),
    };
    let mut l = format!(
        "egress-agent: {verb} {} ({}){who}: {code}",
        subject(rec),
        rec.protocol
    );
    if let Some(r) = &rec.reason {
        l.push_str(": ");
        l.push_str(r);
    }
    if let Some(h) = hint(rec) {
        l.push_str(" — to allow: ");
        l.push_str(&h);
    }
    l.retain(|c| c != '\n' && c != '\r');
    l
}

/// What was denied: the name (and port), a request's method and path, else the address.
fn subject(rec: &Record) -> String {
    let mut s = match (&rec.name, rec.port) {
        (Some(n), Some(p)) => format!("{n}:{p}"),
        (Some(n), None) => n.clone(),
        (None, _) if !rec.orig_dst.is_empty() => rec.orig_dst.clone(),
        _ => "a connection".into(),
    };
    if let (Some(m), Some(p)) = (&rec.method, &rec.path) {
        s = format!("{m} {s}{p}");
    }
    s
}

/// What the rate limit counts as "the same denial": the name whatever the port or way (the
/// DNS answer for a denied name and the connection that follows are one line), else the
/// destination address.
fn key_subject(rec: &Record) -> String {
    let s = match &rec.name {
        Some(n) => n.as_str(),
        None => rec.orig_dst.as_str(),
    };
    s.chars().take(300).collect()
}

/// The record's own hint, else the fix for a kernel refusal (no policy rule made those).
pub fn hint(rec: &Record) -> Option<String> {
    if let Some(h) = rec.hint.as_ref().filter(|h| !h.is_empty()) {
        return Some(h.clone());
    }
    let code = rec.code.as_deref()?;
    let h = match code {
        "udp_not_dns" => "nothing: only DNS may use UDP; QUIC/HTTP3 clients fall back to TCP",
        "socket_type" => "nothing: raw, ICMP and SCTP sockets are never allowed",
        "metadata" => "nothing: cloud metadata endpoints are never reachable",
        "loopback" => "nothing: the host's loopback is never reachable from the sandbox",
        "sockopt" => "nothing: source routing is never allowed",
        "skb_drop" | "no_agent" | "protocol" | "not_adopted" | "not_enforced" => return None,
        _ if rec.protocol == "kernel" => {
            "add the address range to `allow_ranges` if this destination is meant to be reachable"
        }
        _ => return None,
    };
    Some(h.into())
}

/// Writes denial lines until dropped; the drop writes what is still queued, then what the rate
/// limit held back.
pub struct Notifier {
    queue: Arc<Mutex<mpsc::Receiver<Record>>>,
    limiter: Arc<Mutex<Limiter>>,
    stopped: Arc<AtomicBool>,
}

/// How long the writer waits for a record before it lets the drop in (see [`Notifier::drop`]).
const POLL: Duration = Duration::from_millis(100);

/// Tells `out` about every denial `audit` records from now on. `None` when `quiet`.
pub fn start(audit: &Audit, quiet: bool, out: Box<dyn Write + Send>) -> Option<Notifier> {
    if quiet {
        return None;
    }
    let queue = Arc::new(Mutex::new(audit.subscribe(Record::is_denial)));
    let limiter = Arc::new(Mutex::new(Limiter::new(out)));
    let stopped = Arc::new(AtomicBool::new(false));
    let (q, l, s) = (queue.clone(), limiter.clone(), stopped.clone());
    std::thread::Builder::new()
        .name("notify".into())
        .spawn(move || run(&q, &l, &s))
        .ok()?;
    Some(Notifier {
        queue,
        limiter,
        stopped,
    })
}

/// `start` on the process's stderr.
pub fn to_stderr(audit: &Audit, quiet: bool) -> Option<Notifier> {
    start(audit, quiet, Box::new(std::io::stderr()))
}

/// Takes and writes one record at a time, holding the queue while it does, so that the drop
/// finds every record either written or still queued (never half-way).
fn run(queue: &Mutex<mpsc::Receiver<Record>>, limiter: &Mutex<Limiter>, stopped: &AtomicBool) {
    while !stopped.load(Ordering::Acquire) {
        let q = queue.lock().unwrap_or_else(|e| e.into_inner());
        match q.recv_timeout(POLL) {
            Ok(rec) => {
                let mut l = limiter.lock().unwrap_or_else(|e| e.into_inner());
                l.offer(&rec, Instant::now());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        // Every denial recorded before now is queued (the audit publishes synchronously):
        // the command's last ones are written here, in order, before the summary.
        let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        self.stopped.store(true, Ordering::Release);
        let mut l = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while let Ok(rec) = q.try_recv() {
            l.offer(&rec, now);
        }
        l.summary();
    }
}

/// The rate limit and the writer.
pub struct Limiter {
    out: Box<dyn Write + Send>,
    keys: HashMap<(String, String), Seen>,
}

struct Seen {
    printed: Instant,
    suppressed: u64,
}

impl Limiter {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out,
            keys: HashMap::new(),
        }
    }

    /// Writes the record's line unless its key was written within [`WINDOW`] of `now`.
    pub fn offer(&mut self, rec: &Record, now: Instant) {
        let key = (rec.code.clone().unwrap_or_default(), key_subject(rec));
        if let Some(seen) = self.keys.get_mut(&key) {
            if now.duration_since(seen.printed) < WINDOW {
                seen.suppressed += 1;
                return;
            }
        }
        if self.keys.len() >= MAX_KEYS {
            self.keys
                .retain(|_, s| now.duration_since(s.printed) < WINDOW && s.suppressed > 0);
            if self.keys.len() >= MAX_KEYS {
                self.keys.clear();
            }
        }
        let before = self.keys.get(&key).map_or(0, |s| s.suppressed);
        let mut l = line(rec);
        if before > 0 {
            l.push_str(&format!(
                " (and {before} more like it in the previous {} s)",
                WINDOW.as_secs()
            ));
        }
        let _ = writeln!(self.out, "{l}");
        let _ = self.out.flush();
        self.keys.insert(
            key,
            Seen {
                printed: now,
                suppressed: 0,
            },
        );
    }

    /// One line for each key with repeats not yet told.
    pub fn summary(&mut self) {
        let mut held: Vec<_> = self
            .keys
            .iter()
            .filter(|(_, s)| s.suppressed > 0)
            .map(|((code, subject), s)| (code.clone(), subject.clone(), s.suppressed))
            .collect();
        held.sort();
        for (code, subject, n) in held {
            let _ = writeln!(
                self.out,
                "egress-agent: {n} more {code} denial(s) of {subject} were not shown (one line per {} s)",
                WINDOW.as_secs()
            );
        }
        let _ = self.out.flush();
        self.keys.values_mut().for_each(|s| s.suppressed = 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Buf {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(String::from)
                .collect()
        }
    }

    fn denial(name: &str, code: &str) -> Record {
        Record {
            decision: "deny",
            protocol: "tls",
            comm: "curl".into(),
            pid: 42,
            name: Some(name.into()),
            port: Some(443),
            code: Some(code.into()),
            reason: Some(format!(
                "{name} is not in the allow list of profile default"
            )),
            hint: Some(format!("add \"{name}\" to [profile.default] allow")),
            ..Default::default()
        }
    }

    #[test]
    fn a_line_names_who_what_why_and_the_fix() {
        let l = line(&denial("other.test", "host_not_allowed"));
        assert_eq!(
            l,
            "egress-agent: denied other.test:443 (tls) for curl[42]: host_not_allowed: \
             other.test is not in the allow list of profile default — to allow: add \
             \"other.test\" to [profile.default] allow"
        );
        let mut k = Record {
            protocol: "kernel",
            decision: "deny",
            orig_dst: "198.51.100.10:4433".into(),
            code: Some("udp_not_dns".into()),
            ..Default::default()
        };
        assert!(line(&k).contains("198.51.100.10:4433 (kernel): udp_not_dns"));
        assert!(line(&k).contains("QUIC"), "{}", line(&k));
        k.decision = "would_deny";
        assert!(line(&k).starts_with("egress-agent: would deny (monitor mode)"));
    }

    #[test]
    fn every_denial_recorded_before_the_drop_is_written() {
        // The command's last denials race its exit: none may be lost to timing, however
        // busy the machine (a dropped notifier drains what is still queued).
        for round in 0..50 {
            let audit = Audit::open(None).unwrap();
            let buf = Buf::default();
            let n = start(&audit, false, Box::new(buf.clone())).unwrap();
            for i in 0..20 {
                audit.record(denial(&format!("n{i}.test"), "host_not_allowed"));
            }
            drop(n);
            assert_eq!(buf.lines().len(), 20, "round {round}: {:?}", buf.lines());
        }
    }

    #[test]
    fn one_line_per_key_per_window_and_the_rest_counted() {
        let buf = Buf::default();
        let mut l = Limiter::new(Box::new(buf.clone()));
        let t0 = Instant::now();
        let a = denial("a.test", "host_not_allowed");
        for i in 0..5 {
            l.offer(&a, t0 + Duration::from_millis(i * 100));
        }
        // Another name, and another code for the same name: their own lines.
        l.offer(&denial("b.test", "host_not_allowed"), t0);
        l.offer(&denial("a.test", "port_not_allowed"), t0);
        assert_eq!(buf.lines().len(), 3, "{:?}", buf.lines());
        // After the window the next one is written, with the count of those left out.
        l.offer(&a, t0 + WINDOW + Duration::from_millis(1));
        let lines = buf.lines();
        assert_eq!(lines.len(), 4);
        assert!(
            lines[3].ends_with("(and 4 more like it in the previous 10 s)"),
            "{}",
            lines[3]
        );
        l.offer(&a, t0 + WINDOW + Duration::from_millis(2));
        l.summary();
        let lines = buf.lines();
        assert_eq!(
            lines.last().unwrap(),
            "egress-agent: 1 more host_not_allowed denial(s) of a.test were not shown (one line per 10 s)"
        );
        l.summary();
        assert_eq!(buf.lines().len(), lines.len(), "told once");
    }

    #[test]
    fn the_audit_stream_feeds_it_and_quiet_turns_it_off() {
        let audit = Audit::open(None).unwrap();
        assert!(start(&audit, true, Box::new(Buf::default())).is_none());
        let buf = Buf::default();
        let n = start(&audit, false, Box::new(buf.clone())).unwrap();
        let mut allowed = denial("ok.test", "x");
        allowed.decision = "allow";
        audit.record(allowed);
        audit.record(denial("c.test", "host_not_allowed"));
        audit.record(denial("c.test", "host_not_allowed"));
        drop(n);
        let lines = buf.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("c.test:443"), "{lines:?}");
        assert!(lines[1].contains("1 more host_not_allowed"), "{lines:?}");
    }
}
