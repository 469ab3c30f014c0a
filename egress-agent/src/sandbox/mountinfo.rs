//! `/proc/PID/mountinfo`, parsed: what the sandbox's mount plan starts from, and what
//! `attach` inspects in a container.

use std::path::{Path, PathBuf};

/// One line of mountinfo:
/// `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u32,
    pub parent: u32,
    /// `(major, minor)` of the filesystem.
    pub dev: (u32, u32),
    /// The directory of the filesystem mounted here (`/` unless a bind mount of a subtree).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`, `nosuid`, `relatime`, ...).
    pub options: Vec<String>,
    pub fstype: String,
}

impl MountEntry {
    pub fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }

    /// The per-mount flags to keep when remounting it (read-only) with `MS_BIND`: a bind
    /// remount replaces them all.
    pub fn kept_flags(&self) -> libc::c_ulong {
        self.options
            .iter()
            .map(|o| match o.as_str() {
                "nosuid" => libc::MS_NOSUID,
                "nodev" => libc::MS_NODEV,
                "noexec" => libc::MS_NOEXEC,
                "noatime" => libc::MS_NOATIME,
                "nodiratime" => libc::MS_NODIRATIME,
                "relatime" => libc::MS_RELATIME,
                _ => 0,
            })
            .fold(0, |a, b| a | b)
    }

    /// Whether `path` is this mount point or below it.
    pub fn covers(&self, path: &Path) -> bool {
        path.starts_with(&self.mount_point)
    }
}

/// Every well-formed line, in file order (parents before children).
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mut l = left.split_whitespace();
    let id = l.next()?.parse().ok()?;
    let parent = l.next()?.parse().ok()?;
    let (maj, min) = l.next()?.split_once(':')?;
    let dev = (maj.parse().ok()?, min.parse().ok()?);
    let root = PathBuf::from(unescape(l.next()?));
    let mount_point = PathBuf::from(unescape(l.next()?));
    let options = l.next()?.split(',').map(str::to_string).collect();
    let fstype = right.split_whitespace().next()?.to_string();
    Some(MountEntry {
        id,
        parent,
        dev,
        root,
        mount_point,
        options,
        fstype,
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`; bytes, not chars, so that
/// non-UTF-8 paths survive.
fn unescape(s: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
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
    std::ffi::OsString::from_vec(out)
}

/// The mount that serves `path` in a mount table: the last entry (the top of a stack) whose
/// mount point is the longest prefix of `path`.
pub fn serving<'a>(mounts: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    let mut best: Option<&MountEntry> = None;
    for m in mounts.iter().filter(|m| m.covers(path)) {
        let longer =
            best.is_none_or(|b| m.mount_point.as_os_str().len() >= b.mount_point.as_os_str().len());
        if longer {
            best = Some(m);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options_escapes_and_optional_fields() {
        let text = "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw\n\
                    42 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    60 27 0:45 / /mnt/with\\040space ro - tmpfs none rw\n\
                    garbage\n";
        let m = parse(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].mount_point, PathBuf::from("/"));
        assert_eq!(m[0].dev, (254, 0));
        assert_eq!(m[1].fstype, "cgroup2");
        assert_eq!(
            m[1].kept_flags(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RELATIME
        );
        assert_eq!(m[2].root, PathBuf::from("/run/netns"));
        assert_eq!(m[3].mount_point, PathBuf::from("/mnt/with space"));
        assert!(m[3].read_only() && !m[0].read_only());
        assert_eq!(serving(&m, Path::new("/run/netns/x")).unwrap().id, 42);
        assert_eq!(serving(&m, Path::new("/run/other")).unwrap().id, 27);
        // A stack: the later entry on the same mount point serves it.
        let stacked =
            format!("{text}70 41 0:50 / /sys/fs/cgroup/unified ro - cgroup2 cgroup2 rw\n");
        let m = parse(&stacked);
        assert_eq!(
            serving(&m, Path::new("/sys/fs/cgroup/unified/x"))
                .unwrap()
                .id,
            70
        );
    }
}
