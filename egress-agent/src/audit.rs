//! Below every room: the audit log: one JSON line per decision, allowed and denied, kernel and
//! userspace, appended to an O_APPEND file in whole lines (concurrent writers never interleave).
//!
//! The data path only pushes onto a bounded channel; a dedicated thread serialises and writes
//! what arrived within [`LINGER`] of a record in one `write(2)`: a record is in the file at most
//! about 10 ms after it was made, and the commands [`Audit::flush`] before they exit. If the
//! disk is full or the channel overflows the record is counted as lost and the agent keeps
//! enforcing: enforcement never waits on logging.

use std::{
    collections::VecDeque,
    fs::OpenOptions,
    io::Write,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use crate::record::Record;

const CHANNEL_DEPTH: usize = 65_536;
const RECENT_DENIALS: usize = 256;
/// Recent decisions of every kind, for the control socket's `decisions`.
const RECENT_DECISIONS: usize = 256;

/// Handle to the audit log; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    inner: Arc<Inner>,
}

struct Inner {
    /// The writer thread's queue, and the thread (to cut its linger short, see [`Audit::flush`]).
    writer: Option<(mpsc::SyncSender<Record>, std::thread::Thread)>,
    /// Records queued for the writer, and those it has written or given up on.
    queued: AtomicU64,
    settled: Arc<AtomicU64>,
    path: Option<PathBuf>,
    lost: AtomicU64,
    written: Arc<AtomicU64>,
    /// Recent denials for `http://egress.internal/status`, newest last.
    recent: Mutex<VecDeque<Record>>,
    /// Recent decisions of every kind, newest last.
    decisions: Mutex<VecDeque<Record>>,
    metrics: crate::metrics::Metrics,
    /// Who else reads the stream (e.g. `notify`): each gets the records its filter keeps.
    subscribers: Mutex<Vec<Subscriber>>,
}

/// A reader of the audit stream: records its filter keeps go onto its bounded channel with
/// `try_send`, so a slow reader loses records (counted) and never slows the data path.
struct Subscriber {
    keep: fn(&Record) -> bool,
    tx: mpsc::SyncSender<Record>,
}

/// Records queued per subscriber before new ones are dropped.
const SUBSCRIBER_DEPTH: usize = 1024;

#[derive(Debug, thiserror::Error)]
#[error("opening audit log {path}: {source}")]
pub struct AuditError {
    path: PathBuf,
    source: std::io::Error,
}

impl Audit {
    /// Append to `path` (created 0600 if missing). `None`: keep only the
    /// in-memory recent denials (tests, `explain`).
    pub fn open(path: Option<&Path>) -> Result<Self, AuditError> {
        let written = Arc::new(AtomicU64::new(0));
        let settled = Arc::new(AtomicU64::new(0));
        let writer = match path {
            None => None,
            Some(p) => {
                use std::os::unix::fs::OpenOptionsExt;
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(p)
                    .map_err(|source| AuditError {
                        path: p.to_owned(),
                        source,
                    })?;
                let (tx, rx) = mpsc::sync_channel::<Record>(CHANNEL_DEPTH);
                let writer = Writer {
                    rx,
                    file,
                    path: p.to_owned(),
                    settled: settled.clone(),
                    written: written.clone(),
                };
                let thread = std::thread::Builder::new()
                    .name("audit".into())
                    .spawn(move || writer.run())
                    .map_err(|source| AuditError {
                        path: p.to_owned(),
                        source,
                    })?;
                Some((tx, thread.thread().clone()))
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                writer,
                queued: AtomicU64::new(0),
                settled,
                path: path.map(Path::to_owned),
                lost: AtomicU64::new(0),
                written,
                recent: Mutex::new(VecDeque::with_capacity(RECENT_DENIALS)),
                decisions: Mutex::new(VecDeque::with_capacity(RECENT_DECISIONS)),
                metrics: crate::metrics::Metrics::default(),
                subscribers: Mutex::new(Vec::new()),
            }),
        })
    }

    /// A new reader of the stream: every record from now on that `keep` accepts. The
    /// channel closes when the audit log's last handle is dropped.
    pub fn subscribe(&self, keep: fn(&Record) -> bool) -> mpsc::Receiver<Record> {
        let (tx, rx) = mpsc::sync_channel(SUBSCRIBER_DEPTH);
        let mut subs = self
            .inner
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        subs.push(Subscriber { keep, tx });
        rx
    }

    fn publish(&self, rec: &Record) {
        let mut subs = self
            .inner
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // A reader that went away is forgotten; a full one loses this record.
        subs.retain(|s| {
            !(s.keep)(rec)
                || !matches!(
                    s.tx.try_send(rec.clone()),
                    Err(mpsc::TrySendError::Disconnected(_))
                )
        });
    }

    pub fn record(&self, rec: Record) {
        self.inner.metrics.observe(&rec);
        self.publish(&rec);
        {
            let mut d = self
                .inner
                .decisions
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if d.len() == RECENT_DECISIONS {
                d.pop_front();
            }
            d.push_back(rec.clone());
        }
        if rec.is_denial() {
            let mut recent = self.inner.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() == RECENT_DENIALS {
                recent.pop_front();
            }
            recent.push_back(rec.clone());
        }
        if let Some((tx, _)) = &self.inner.writer {
            // Counted before it is sent, so that `settled` never passes `queued`.
            self.inner.queued.fetch_add(1, Ordering::Relaxed);
            if tx.try_send(rec).is_err() {
                self.inner.queued.fetch_sub(1, Ordering::Relaxed);
                self.inner.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits (at most [`FLUSH_WITHIN`]) until every record made so far is in the file: called
    /// before the process exits, so that the writer's linger loses nothing.
    pub fn flush(&self) {
        let Some((_, thread)) = &self.inner.writer else {
            return;
        };
        let deadline = Instant::now() + FLUSH_WITHIN;
        while self.inner.settled.load(Ordering::Acquire) < self.inner.queued.load(Ordering::Relaxed)
            && Instant::now() < deadline
        {
            thread.unpark();
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Recent denials of one cgroup, newest first.
    pub fn recent_denials(&self, cgroup_id: u64, max: usize) -> Vec<Record> {
        let recent = self.inner.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .iter()
            .rev()
            .filter(|r| r.cgroup_id == cgroup_id)
            .take(max)
            .cloned()
            .collect()
    }

    /// Recent decisions of every cgroup (or of one), newest first.
    pub fn recent_decisions(&self, cgroup_id: Option<u64>, max: usize) -> Vec<Record> {
        let d = self
            .inner
            .decisions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        d.iter()
            .rev()
            .filter(|r| cgroup_id.is_none_or(|id| r.cgroup_id == id))
            .take(max)
            .cloned()
            .collect()
    }

    /// The counters every record feeds.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }
    pub fn lost(&self) -> u64 {
        self.inner.lost.load(Ordering::Relaxed)
    }
    pub fn written(&self) -> u64 {
        self.inner.written.load(Ordering::Relaxed)
    }
}

/// How long the writer waits after a record wakes it, so that the records of the next few
/// milliseconds go out with it: one wake-up and one `write(2)` per linger, not one per record
/// (at 500 requests a second a wake-up per record was the audit's main cost to the data path).
const LINGER: Duration = Duration::from_millis(10);

/// How long a command waits at exit for the audit log to take its last records.
const FLUSH_WITHIN: Duration = Duration::from_secs(2);

/// The audit thread: serialises records and appends them to the file in batches.
struct Writer {
    rx: mpsc::Receiver<Record>,
    file: std::fs::File,
    path: PathBuf,
    settled: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self) {
        let mut batch = Vec::with_capacity(BATCH_BYTES + 4096);
        let mut failing = false;
        while let Ok(first) = self.rx.recv() {
            // `flush` unparks: then the linger ends at once.
            std::thread::park_timeout(LINGER);
            batch.clear();
            let mut taken = 0u64;
            let mut serialised = 0u64;
            let mut next = Some(first);
            while let Some(rec) = next.take() {
                taken += 1;
                if serde_json::to_writer(&mut batch, &rec).is_ok() {
                    batch.push(b'\n');
                    serialised += 1;
                }
                if batch.len() < BATCH_BYTES {
                    next = self.rx.try_recv().ok();
                }
            }
            match self.file.write_all(&batch) {
                Ok(()) => {
                    self.written.fetch_add(serialised, Ordering::Relaxed);
                    if failing {
                        tracing::warn!(path = %self.path.display(), "audit log writable again");
                        failing = false;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::error!(path = %self.path.display(), error = %e, "audit log write failed; enforcement continues, records are lost until it recovers");
                        failing = true;
                    }
                }
            }
            self.settled.fetch_add(taken, Ordering::Release);
        }
    }
}

/// A batch is written once it holds this much (a burst then takes several writes).
const BATCH_BYTES: usize = 60 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_one_json_line_per_record_and_keeps_recent_denials() {
        let dir = std::env::temp_dir().join(format!("egress-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let audit = Audit::open(Some(&path)).unwrap();
        for (i, decision) in ["allow", "deny", "deny"].into_iter().enumerate() {
            audit.record(Record {
                time: Record::now(),
                cgroup_id: 7,
                decision,
                protocol: "tls",
                name: Some(format!("n{i}.example")),
                ..Default::default()
            });
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while audit.written() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1]["decision"], "deny");
        let recent = audit.recent_denials(7, 10);
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0].name.as_deref(), Some("n2.example"));
        assert!(audit.recent_denials(8, 10).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn flush_writes_what_is_lingering_at_once() {
        let dir = std::env::temp_dir().join(format!("egress-audit-flush-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let audit = Audit::open(Some(&path)).unwrap();
        for _ in 0..6 {
            audit.record(Record::default());
        }
        // Without the flush the writer would still be lingering (10 ms) with all of them.
        audit.flush();
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(lines, 6);
        assert_eq!(audit.written(), 6);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
