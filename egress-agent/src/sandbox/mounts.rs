//! Runs a [`Plan`](super::plan::Plan)'s operations in the command's mount namespace. Every
//! failure aborts the run (fail closed): the command never starts with half a sandbox.

use std::{
    fs, io,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use super::{
    plan::{Content, Op},
    spec::{Credentials, TrustSpec},
    trust, SandboxError,
};
use crate::sys;

const HIDE: libc::c_ulong = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
const PLAIN: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// The trust files' bytes and paths, read before anything is hidden.
pub struct TrustFiles {
    pub ca: Vec<u8>,
    pub bundle: Vec<u8>,
    pub jks: Vec<u8>,
    pub bundle_path: PathBuf,
    pub jks_path: PathBuf,
    pub ca_hash: String,
}

impl TrustFiles {
    pub fn read(t: &TrustSpec) -> Result<TrustFiles, SandboxError> {
        let read = |p: &std::ffi::OsString| {
            fs::read(p)
                .map_err(|e| SandboxError::io(format!("reading {}", Path::new(p).display()), e))
        };
        Ok(TrustFiles {
            ca: read(&t.ca)?,
            bundle: read(&t.bundle)?,
            jks: read(&t.jks)?,
            bundle_path: t.bundle.clone().into(),
            jks_path: t.jks.clone().into(),
            ca_hash: t.ca_hash.clone(),
        })
    }

    fn bytes(&self, c: Content) -> &[u8] {
        match c {
            Content::Bundle => &self.bundle,
            Content::Jks => &self.jks,
        }
    }
}

pub struct Ctx<'a> {
    pub trust: Option<&'a TrustFiles>,
    pub creds: &'a Credentials,
}

/// Runs `ops` in order; the first failure is the error. Warnings (things `--trust-ca`
/// could not do that do not weaken the boundary) are printed on stderr.
pub fn apply(ops: &[Op], ctx: &Ctx<'_>) -> Result<(), SandboxError> {
    for op in ops {
        match run(op, ctx) {
            Ok(Some(warning)) => eprintln!("egress-agent: --trust-ca: {warning}"),
            Ok(None) => {}
            Err(e) => return Err(SandboxError::io(op.to_string(), e)),
        }
    }
    Ok(())
}

fn remount_ro(target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    sys::mount(
        None,
        target,
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | flags,
        None,
    )
}

fn tmpfs(target: &Path, flags: libc::c_ulong, data: &str) -> io::Result<()> {
    sys::mount(
        Some(Path::new("tmpfs")),
        target,
        Some("tmpfs"),
        flags,
        Some(data),
    )
}

fn bind_ro(source: &Path, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    sys::mount(Some(source), target, None, libc::MS_BIND, None)?;
    remount_ro(target, flags)
}

/// An O_PATH descriptor: names a file or directory without opening it, and `/proc/self/fd/N`
/// reaches it after it has been covered.
fn o_path(p: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(p)
}

fn fd_path(f: &fs::File) -> PathBuf {
    PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(f)
    ))
}

fn run(op: &Op, ctx: &Ctx<'_>) -> io::Result<Option<String>> {
    match op {
        Op::MakePrivate => sys::mount(
            None,
            Path::new("/"),
            None,
            libc::MS_REC | libc::MS_PRIVATE,
            None,
        )?,
        Op::ReadOnly { target, flags } => remount_ro(target, *flags)?,
        Op::Cgroup2 { target } => {
            // The kernel refuses a cgroup2 mount on top of the host's (same superblock on the
            // same mount point: EBUSY), so the host's goes first; with it goes any view of
            // the cgroups outside the command's. Should another cgroup2 mount lie below it,
            // an empty tmpfs in between separates the two.
            sys::umount_detach(target)?;
            let cgroup2 = || {
                sys::mount(
                    Some(Path::new("cgroup2")),
                    target,
                    Some("cgroup2"),
                    HIDE,
                    None,
                )
            };
            match cgroup2() {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    tmpfs(target, HIDE, "size=4k,mode=755")?;
                    cgroup2()?
                }
                r => r?,
            }
        }
        Op::HideDir { target } => tmpfs(target, HIDE, "size=4k,mode=755")?,
        Op::HideFile { target } => bind_ro(
            Path::new("/dev/null"),
            target,
            libc::MS_NOSUID | libc::MS_NOEXEC,
        )?,
        Op::HideStateDir { target } => hide_state_dir(target)?,
        Op::CertDir { target, replace } => {
            let t = ctx
                .trust
                .ok_or_else(|| io::Error::other("no trust files"))?;
            cert_dir(target, replace, t)?
        }
        Op::BindTrust { content, target } => {
            let t = ctx
                .trust
                .ok_or_else(|| io::Error::other("no trust files"))?;
            let src = match content {
                Content::Bundle => &t.bundle_path,
                Content::Jks => &t.jks_path,
            };
            bind_ro(src, target, PLAIN)?
        }
        Op::MinimalDev => minimal_dev()?,
        Op::Proc { target } => {
            sys::mount(Some(Path::new("proc")), target, Some("proc"), PLAIN, None)?
        }
        Op::ProcReadOnly { target } => match fs::symlink_metadata(target) {
            Ok(_) => {
                sys::mount(
                    Some(target),
                    target,
                    None,
                    libc::MS_BIND | libc::MS_REC,
                    None,
                )?;
                remount_ro(target, PLAIN)?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        },
        Op::Nss { dir } => {
            let ca = Path::new(trust::VIEW_DIR).join("ca.pem");
            return trust::install_nss(dir, &ca, ctx.creds);
        }
    }
    Ok(None)
}

/// The state directory becomes an empty read-only tmpfs with only `trust/` (certificates,
/// bound read-only from the original through an O_PATH descriptor taken before covering).
fn hide_state_dir(target: &Path) -> io::Result<()> {
    let trust_dir = target.join("trust");
    let keep = match fs::symlink_metadata(&trust_dir) {
        Ok(m) if m.is_dir() => Some(o_path(&trust_dir)?),
        _ => None,
    };
    tmpfs(target, PLAIN, "size=16k,mode=755")?;
    if let Some(src) = &keep {
        fs::create_dir(&trust_dir)?;
        bind_ro(&fd_path(src), &trust_dir, PLAIN)?;
    }
    remount_ro(target, PLAIN)
}

/// A tmpfs copy of the hashed directory: the same links and files (the bundles and
/// truststores in `replace` swapped for ours), plus `<hash>.N` and [`trust::VIEW_DIR`].
fn cert_dir(target: &Path, replace: &[(PathBuf, Content)], t: &TrustFiles) -> io::Result<()> {
    let mut budget = 64 << 20;
    let nodes = trust::snapshot(target, 2, &mut budget)?;
    let hash_name = (!t.ca_hash.is_empty()).then(|| trust::hash_entry(&nodes, &t.ca_hash));
    tmpfs(target, PLAIN, "mode=755")?;
    let replace: Vec<(PathBuf, &[u8])> = replace
        .iter()
        .map(|(p, c)| (p.clone(), t.bytes(*c)))
        .collect();
    trust::materialize(target, Path::new(""), &nodes, &replace)?;
    if let Some(name) = hash_name {
        trust::write_new(&target.join(name), &t.ca, 0o644)?;
    }
    let view = Path::new(trust::VIEW_DIR);
    // VIEW_DIR is inside CERT_DIR; a host whose CERT_DIR is a link elsewhere gets it there.
    let view = target.join(view.strip_prefix(trust::CERT_DIR).unwrap_or(view));
    fs::create_dir(&view)?;
    fs::set_permissions(&view, fs::Permissions::from_mode(0o755))?;
    trust::write_new(&view.join("ca.pem"), &t.ca, 0o644)?;
    trust::write_new(&view.join("bundle.pem"), &t.bundle, 0o644)?;
    trust::write_new(&view.join("truststore.jks"), &t.jks, 0o644)?;
    fs::create_dir(view.join("nssdb"))?;
    remount_ro(target, PLAIN)
}

/// The device nodes a command needs, bound from the host's; no disks, no /dev/mem, no
/// /dev/kmsg. Root inside owns every device node of the host's /dev: its disks would show
/// the CA key's blocks.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

fn minimal_dev() -> io::Result<()> {
    let dev = Path::new("/dev");
    let mut keep = Vec::new();
    for d in DEVICES {
        if let Ok(f) = o_path(&dev.join(d)) {
            keep.push((*d, f));
        }
    }
    tmpfs(
        dev,
        libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV,
        "size=64k,mode=755",
    )?;
    for (name, src) in &keep {
        let node = dev.join(name);
        trust::write_new(&node, b"", 0o666)?;
        // A bind mount has its own flags: the device works although the tmpfs is nodev.
        sys::mount(Some(&fd_path(src)), &node, None, libc::MS_BIND, None)?;
    }
    let pts = dev.join("pts");
    fs::create_dir(&pts)?;
    sys::mount(
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    std::os::unix::fs::symlink("pts/ptmx", dev.join("ptmx"))?;
    let shm = dev.join("shm");
    fs::create_dir(&shm)?;
    tmpfs(&shm, PLAIN, "mode=1777")?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(name))?;
    }
    remount_ro(dev, libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV)
}
