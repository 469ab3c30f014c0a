//! `egress-agent __sandbox-init SPEC_FD STATUS_FD`: the process `exec` starts in the
//! command's fresh cgroup, mount and pid namespaces (entered between fork and exec by
//! [`super::launch`]). It builds the mount namespace, forks pid 1 of the new pid namespace
//! and waits for it; pid 1 mounts /proc, forks the command as the target user, reaps
//! orphans and forwards signals. When the command exits, pid 1 exits with its status and
//! the kernel kills whatever the command left in the namespace.
//!
//! ```text
//! agent ─ init (outside the new pid ns) ─ pid 1 ─ command (uid, caps, no_new_privs)
//! ```
//!
//! A set-up failure is one line on STATUS_FD and exit 2; the command never runs.

use std::{
    ffi::{CString, OsString},
    fs::File,
    io::Write,
    os::{
        fd::{AsFd, OwnedFd},
        unix::ffi::{OsStrExt, OsStringExt},
    },
    path::{Path, PathBuf},
    process::ExitCode,
};

use super::{
    mounts::{self, Ctx, TrustFiles},
    plan::{self, Facts, Op},
    spec::Spec,
    SandboxError, INIT_ARG,
};
use crate::sys::{self, Forked};

/// Forwarded to the command; SIGCHLD wakes the reaper.
const FORWARDED: &[libc::c_int] = &[
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

fn waited() -> Vec<libc::c_int> {
    let mut v = FORWARDED.to_vec();
    v.push(libc::SIGCHLD);
    v
}

/// `main` calls this first: Some(exit code) when this process is a sandbox init.
pub fn dispatch() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != INIT_ARG {
        return None;
    }
    let fds: Vec<i32> = args.filter_map(|a| a.to_str()?.parse().ok()).collect();
    let (Some(&spec), Some(&status)) = (fds.first(), fds.get(1)) else {
        eprintln!("egress-agent: {INIT_ARG} is started by `egress-agent exec`, not by hand");
        return Some(ExitCode::from(2));
    };
    let (spec, status) = match (sys::take_inherited_fd(spec), sys::take_inherited_fd(status)) {
        (Ok(a), Ok(b)) => (a, File::from(b)),
        _ => {
            eprintln!("egress-agent: {INIT_ARG}: the spec and status descriptors are not open");
            return Some(ExitCode::from(2));
        }
    };
    Some(match init(spec, &status) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            report(&status, &e.to_string());
            ExitCode::from(2)
        }
    })
}

fn report(status: &File, msg: &str) {
    let mut line = msg.replace('\n', " ");
    line.push('\n');
    let _ = (&*status).write_all(line.as_bytes());
}

fn init(spec_fd: OwnedFd, status: &File) -> Result<u8, SandboxError> {
    let spec = Spec::from_fd(spec_fd)?;
    // Only the init and pid 1 report; the command must not inherit the descriptor.
    sys::set_cloexec(status.as_fd()).map_err(|e| SandboxError::io("status descriptor", e))?;
    // Blocked before pid 1 exists, so no signal is lost in between: pending until taken.
    sys::block_signals(&waited()).map_err(|e| SandboxError::io("blocking signals", e))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| SandboxError::io("reading /proc/self/mountinfo", e))?;
    let facts = Facts::gather(&spec, &mountinfo);
    let plan = plan::plan(&facts);
    let trust = spec.trust.as_ref().map(TrustFiles::read).transpose()?;
    let ctx = Ctx {
        trust: trust.as_ref(),
        creds: &spec.creds,
    };
    mounts::apply(&plan.init, &ctx)?;
    // The first process forked after unshare(CLONE_NEWPID) is the namespace's init: pid 1.
    match sys::fork_single_threaded().map_err(|e| SandboxError::io("forking pid 1", e))? {
        Forked::Child => sys::exit_now(pid1(&spec, &plan.pid1, &ctx, status)),
        Forked::Parent(pid) => Ok(supervise(pid)),
    }
}

/// pid 1 of the command's pid namespace. Returns its exit status.
fn pid1(spec: &Spec, ops: &[Op], ctx: &Ctx<'_>, status: &File) -> i32 {
    // The init waits for us; if it is killed, so are we (and with us the namespace).
    let _ = sys::set_parent_death_signal(libc::SIGKILL);
    if let Err(e) = mounts::apply(ops, ctx) {
        report(status, &e.to_string());
        return 2;
    }
    // Root inside keeps CAP_KILL but never CAP_SYS_PTRACE: with a non-dumpable pid 1 its
    // /proc/1 is root's and it cannot be traced.
    let _ = sys::set_dumpable(false);
    match sys::fork_single_threaded() {
        Ok(Forked::Child) => {
            let e = exec_command(spec);
            report(status, &e);
            sys::exit_now(2)
        }
        Ok(Forked::Parent(pid)) => supervise(pid) as i32,
        Err(e) => {
            report(
                status,
                &SandboxError::io("forking the command", e).to_string(),
            );
            2
        }
    }
}

/// Waits for `child`, reaping every other child on the way and forwarding signals sent by
/// processes (a terminal's Ctrl-C already reached the command: it is in the foreground
/// process group). Returns its exit code (128 + signal when killed).
fn supervise(child: u32) -> u8 {
    let sigs = waited();
    loop {
        match sys::wait_signal(&sigs) {
            Ok((libc::SIGCHLD, _)) => loop {
                match sys::try_wait(-1) {
                    Ok(Some((pid, st))) if pid == child => return exit_code(st),
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    // No child at all: ours is gone without a status we saw.
                    Err(_) => return 2,
                }
            },
            Ok((sig, code)) if code <= 0 => {
                let _ = sys::kill(child, sig);
            }
            Ok(_) => {}
            Err(_) => return 2,
        }
    }
}

fn exit_code(st: libc::c_int) -> u8 {
    if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st) as u8
    } else if libc::WIFSIGNALED(st) {
        (128 + libc::WTERMSIG(st)).clamp(0, 255) as u8
    } else {
        1
    }
}

/// In the command's process: become the target user, enter its working directory and exec.
/// Returns the failure (one line) when it could not.
fn exec_command(spec: &Spec) -> String {
    let c = &spec.creds;
    let creds = (|| -> std::io::Result<()> {
        sys::reset_signals()?;
        sys::set_groups(&c.groups)?;
        sys::set_gid(c.gid)?;
        sys::limit_bounding_set(c.capabilities)?;
        sys::set_uid(c.uid)?;
        sys::set_capabilities(c.capabilities)?;
        sys::set_no_new_privs()
    })();
    if let Err(e) = creds {
        return SandboxError::io(format!("switching to uid {} gid {}", c.uid, c.gid), e)
            .to_string();
    }
    let cwd = spec.cwd();
    if let Err(e) = std::env::set_current_dir(&cwd) {
        return format!(
            "the working directory {} is not accessible to uid {}: {e} (cd somewhere it may enter, or pick another --user)",
            cwd.display(),
            c.uid
        );
    }
    let argv0 = &spec.argv[0];
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    let envp: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.clone().into_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).unwrap_or_default()
        })
        .collect();
    let e = match find_program(argv0, spec.path_var()) {
        Ok(p) => {
            let p = CString::new(p.into_os_string().into_vec()).unwrap_or_default();
            sys::execve(&p, &argv, &envp)
        }
        Err(e) => e,
    };
    format!("starting {argv0}: {e}")
}

/// argv[0] as execvp(3) finds it, with the command's own PATH (not the init's).
fn find_program(name: &str, path: Option<&OsString>) -> std::io::Result<PathBuf> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let default = OsString::from("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let path = path.unwrap_or(&default);
    let mut denied = None;
    for dir in path.as_bytes().split(|b| *b == b':') {
        let dir = if dir.is_empty() {
            Path::new(".")
        } else {
            Path::new(std::ffi::OsStr::from_bytes(dir))
        };
        let p = dir.join(name);
        if !p.is_file() {
            continue;
        }
        match sys::access(&p, libc::X_OK) {
            Ok(()) => return Ok(p),
            Err(e) => denied = Some(e),
        }
    }
    Err(denied.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT)))
}
