//! netns integration harness for egress-agent.
//!
//! - [`Topology`]: a test's own `ctr-*` (container netns + cgroup), `up-*` (fake internet) and `ag-*`
//!   (agent) namespaces, removed on drop.
//! - [`FakeNet`]: the `fakenet` binary running in `up-*` (HTTP/HTTPS echo, DNS, metadata, ...).
//! - the `probe` binary: one raw syscall sequence per run, one JSON line out.
//!
//! See `tests/README.md` for the topology diagram and how to run and clean up.

pub mod addrs;
pub mod agent;
#[cfg(target_os = "linux")]
pub mod clients;
#[cfg(target_os = "linux")]
pub mod lab;
pub mod procstat;
#[cfg(target_os = "linux")]
pub mod runtimes;
#[cfg(target_os = "linux")]
pub mod sys;
#[cfg(target_os = "linux")]
pub mod topology;

use std::path::PathBuf;

#[cfg(target_os = "linux")]
pub use topology::{cleanup_stale, resolv_nameservers, FakeNet, Topology};

/// Whether this run must not skip privileged tests (`CI=true`).
pub fn is_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// Returns true when privileged tests can run. When not root: prints a skip message and returns
/// false, except under `CI=true`, where it panics so that nothing is silently skipped.
pub fn require_root() -> bool {
    #[cfg(target_os = "linux")]
    let root = sys::geteuid() == 0;
    #[cfg(not(target_os = "linux"))]
    let root = false;
    if root {
        return true;
    }
    if is_ci() {
        panic!("privileged test needs root, and CI=true forbids skipping it");
    }
    eprintln!(
        "SKIPPED: privileged test needs root (Linux); run as root or with CI=true to enforce"
    );
    false
}

/// `if !require_root() { return; }` in one line.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::require_root() {
            return;
        }
    };
}

/// Environment variable naming the THREATS catalogue log (set by `cargo xtask test`).
pub const THREAT_LOG_ENV: &str = "EGRESS_THREAT_LOG";

/// Records one attack of the THREATS.md catalogue, run WITH the enforcer: `class` is the
/// catalogue's letter (A-F), `name` the attack, `blocked` whether it failed the documented way.
/// Call it right before the assertion, so a bypass is recorded before the test panics. Appends
/// one JSON line to the file named by `EGRESS_THREAT_LOG` (nothing when unset); `cargo xtask
/// test` summarises it as `threats: N attacks, N blocked, 0 bypassed`.
pub fn threat(class: &str, name: &str, blocked: bool) {
    let Some(path) = std::env::var_os(THREAT_LOG_ENV) else {
        return;
    };
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let mut line =
        serde_json::json!({"class": class, "name": name, "blocked": blocked, "test": test})
            .to_string();
    line.push('\n');
    // O_APPEND and one write per line: test threads and processes never interleave.
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// A [`threat`] recorded when dropped: blocked unless the test is panicking. For tests that
/// check one attack through many assertions: create it right after the enforcer starts.
pub struct ThreatGuard {
    class: &'static str,
    name: &'static str,
}

/// See [`ThreatGuard`].
pub fn threat_guard(class: &'static str, name: &'static str) -> ThreatGuard {
    ThreatGuard { class, name }
}

impl Drop for ThreatGuard {
    fn drop(&mut self) {
        threat(self.class, self.name, !std::thread::panicking());
    }
}

/// The cgroup v2 mount point, read from /proc/self/mountinfo (`/sys/fs/cgroup` on most hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_root() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_cgroup2_root(&text)
}

/// The first cgroup2 mount point in a mountinfo text.
pub fn parse_cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS`
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\NNN` octal.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Path of a binary of this workspace (`fakenet`, `probe`, `egress-agent`), found next to the running
/// executable's profile dir (`target/debug/deps/x` → `target/debug/NAME`). `EGRESS_BIN_DIR` overrides.
/// Panics with a hint when it is missing.
pub fn bin_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("EGRESS_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            let parent = exe.parent().expect("exe has a parent").to_path_buf();
            if parent.file_name().is_some_and(|n| n == "deps") {
                parent.parent().unwrap().to_path_buf()
            } else {
                parent
            }
        }
    };
    let path = dir.join(name);
    if !path.is_file() {
        panic!(
            "binary `{name}` not found at {}: run `cargo build --workspace` first",
            path.display()
        );
    }
    path
}

/// Waits for a server the test spawned (stdout piped) to print its first line, `READY`.
pub fn wait_ready(child: &mut std::process::Child, what: &str) {
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout piped");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(line.trim(), "READY", "{what} did not start");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup2_from_mountinfo() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_root(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_root(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let escaped = "30 23 0:26 / /mnt/cg\\040two rw - cgroup2 none rw\n";
        assert_eq!(
            parse_cgroup2_root(escaped),
            Some(PathBuf::from("/mnt/cg two"))
        );
        assert_eq!(
            parse_cgroup2_root("1 2 0:1 / / rw - ext4 /dev/sda rw\n"),
            None
        );
    }
}
