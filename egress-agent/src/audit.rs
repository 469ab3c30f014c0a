//! Below every room: the audit log: one JSON line per decision, allowed and denied, kernel and
//! userspace, each written with its own `write(2)` on an O_APPEND file (so a
//! crash loses nothing already decided, and concurrent writers never interleave).
//!
//! The data path only pushes onto a bounded channel; a dedicated thread
//! serialises and writes. If the disk is full or the channel overflows the
//! record is counted as lost and the agent keeps enforcing: enforcement never
//! waits on logging.

use std::{
    collections::VecDeque,
    fs::OpenOptions,
    io::Write,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
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
    tx: Option<mpsc::SyncSender<Record>>,
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
        let tx = match path {
            None => None,
            Some(p) => {
                use std::os::unix::fs::OpenOptionsExt;
                let mut file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(p)
                    .map_err(|source| AuditError {
                        path: p.to_owned(),
                        source,
                    })?;
                let (tx, rx) = mpsc::sync_channel::<Record>(CHANNEL_DEPTH);
                let written = written.clone();
                let p = p.to_owned();
                std::thread::Builder::new()
                    .name("audit".into())
                    .spawn(move || {
                        // Records that queued up while the last batch was written go out
                        // in one write: one syscall per burst, not per record.
                        let mut batch = Vec::with_capacity(64 * 1024);
                        let mut failing = false;
                        while let Ok(first) = rx.recv() {
                            batch.clear();
                            let mut n = 0u64;
                            let mut next = Some(first);
                            while let Some(rec) = next.take() {
                                if serde_json::to_writer(&mut batch, &rec).is_ok() {
                                    batch.push(b'\n');
                                    n += 1;
                                }
                                if batch.len() < 60 * 1024 {
                                    next = rx.try_recv().ok();
                                }
                            }
                            match file.write_all(&batch) {
                                Ok(()) => {
                                    written.fetch_add(n, Ordering::Relaxed);
                                    if failing {
                                        tracing::warn!(path = %p.display(), "audit log writable again");
                                        failing = false;
                                    }
                                }
                                Err(e) => {
                                    if !failing {
                                        tracing::error!(path = %p.display(), error = %e, "audit log write failed; enforcement continues, records are lost until it recovers");
                                        failing = true;
                                    }
                                }
                            }
                        }
                    })
                    .map_err(|source| AuditError {
                        path: path.unwrap_or(Path::new("")).to_owned(),
                        source,
                    })?;
                Some(tx)
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                tx,
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
        if let Some(tx) = &self.inner.tx {
            if tx.try_send(rec).is_err() {
                self.inner.lost.fetch_add(1, Ordering::Relaxed);
            }
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
}
