//! What the daemon must restore after a restart: one small JSON file per attachment under
//! `/run/egress-agent/attachments/` (tmpfs: gone with a reboot, as the pins are). The pins
//! keep the kernel enforcement across a restart; these files let the restarted daemon serve
//! those cgroups again (listeners, profile) instead of leaving them refused forever.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub const DEFAULT_DIR: &str = "/run/egress-agent/attachments";

/// One attachment as it must be re-created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub profile: String,
    /// The network namespace the operator named, if any; else it is found again from a
    /// process in the cgroup's subtree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// The container was given the agent's trust bundle (see `AdoptRequest::trusts_ca`).
    #[serde(default)]
    pub trusts_ca: bool,
}

/// The directory of saved attachments.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes (atomically: a temporary file renamed over) one attachment's record.
    pub fn save(&self, s: &Saved) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let tmp = self.dir.join(format!(".{}.tmp", s.cgroup_id));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(serde_json::to_string(s).unwrap_or_default().as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, self.path(s.cgroup_id))
    }

    pub fn remove(&self, id: u64) {
        let _ = fs::remove_file(self.path(id));
    }

    /// Every saved attachment; unreadable files are reported and skipped (kept for a look).
    pub fn load_all(&self) -> Vec<Saved> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match read(&p) {
                Ok(s) => out.push(s),
                Err(e) => {
                    tracing::warn!(file = %p.display(), error = %e, "skipping a saved attachment")
                }
            }
        }
        out.sort_by_key(|s| s.cgroup_id);
        out
    }
}

fn read(p: &Path) -> Result<Saved, String> {
    let text = fs::read_to_string(p).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_loads_and_removes() {
        let dir = std::env::temp_dir().join(format!("egress-state-{}", std::process::id()));
        let store = Store::new(&dir);
        let s = Saved {
            cgroup: "/sys/fs/cgroup/x".into(),
            cgroup_id: 42,
            profile: "default".into(),
            netns: None,
            trusts_ca: true,
        };
        store.save(&s).unwrap();
        fs::write(dir.join("junk.json"), "{").unwrap();
        assert_eq!(store.load_all(), vec![s]);
        store.remove(42);
        assert!(store.load_all().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
