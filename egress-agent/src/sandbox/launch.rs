//! Starting the sandbox init from the agent: the spec in a sealed memfd, a status pipe for
//! one-line failures, and between fork and exec (async-signal-safe calls only) the
//! enforced cgroup, the network namespace and the new cgroup, mount and pid namespaces.

use std::{
    io::Read,
    os::{
        fd::{AsFd, AsRawFd, RawFd},
        unix::process::CommandExt as _,
    },
    process::ExitStatus,
};

use super::{spec::Spec, SandboxError, INIT_ARG};
use crate::sys;

/// The running sandbox, as the agent sees it: the init process and the status pipe.
pub struct Sandbox {
    child: tokio::process::Child,
    status: std::io::PipeReader,
}

/// Stage labels written to the status pipe by the pre-exec hook when a step fails (it can
/// return only an errno).
const STAGE_CGROUP: &[u8] = b"joining the exec cgroup";
const STAGE_NETNS: &[u8] = b"entering the network namespace";
const STAGE_CGROUPNS: &[u8] = b"unshare(CLONE_NEWCGROUP)";
const STAGE_MNTNS: &[u8] = b"unshare(CLONE_NEWNS)";
const STAGE_PIDNS: &[u8] = b"unshare(CLONE_NEWPID)";
const STAGE_FDS: &[u8] = b"passing the spec to the init";
const STAGE_PARENT: &[u8] = b"the agent exited";

/// Starts `/proc/self/exe __sandbox-init` as the command's sandbox. `procs` is the enforced
/// cgroup's `cgroup.procs` (open for writing), `netns` the command's network namespace
/// (None: the agent's own).
pub fn launch(spec: &Spec, procs: RawFd, netns: Option<RawFd>) -> Result<Sandbox, SandboxError> {
    let memfd = spec.to_memfd()?;
    let (reader, writer) =
        std::io::pipe().map_err(|e| SandboxError::io("creating the status pipe", e))?;
    let spec_fd = memfd.as_raw_fd();
    let status_fd = writer.as_raw_fd();
    let agent = std::process::id();
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg0("egress-agent")
        .arg(INIT_ARG)
        .arg(spec_fd.to_string())
        .arg(status_fd.to_string())
        // Everything the command needs is in the spec; the agent's environment (which
        // holds the injected secrets) stays with the agent.
        .env_clear();
    // SAFETY: the hook only makes async-signal-safe syscalls on fds and constants
    // captured by value (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            let fail = |stage: &[u8], e: std::io::Error| {
                sys::write_raw(status_fd, stage);
                Err(e)
            };
            // If the agent dies, the init dies (and with it pid 1 and the command).
            sys::set_parent_death_signal(libc::SIGKILL)?;
            if sys::getppid() != agent {
                return fail(STAGE_PARENT, std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            // Enforced before anything of the command's runs.
            if let Err(e) = sys::join_cgroup_raw(procs) {
                return fail(STAGE_CGROUP, e);
            }
            if let Some(fd) = netns {
                if let Err(e) = sys::setns_net_raw(fd) {
                    return fail(STAGE_NETNS, e);
                }
            }
            // The cgroup namespace is rooted at the cgroup we just joined.
            for (flag, stage) in [
                (libc::CLONE_NEWCGROUP, STAGE_CGROUPNS),
                (libc::CLONE_NEWNS, STAGE_MNTNS),
                (libc::CLONE_NEWPID, STAGE_PIDNS),
            ] {
                if let Err(e) = sys::unshare_raw(flag) {
                    return fail(stage, e);
                }
            }
            for fd in [spec_fd, status_fd] {
                if let Err(e) = sys::inherit_fd_raw(fd) {
                    return fail(STAGE_FDS, e);
                }
            }
            Ok(())
        });
    }
    let mut cmd = tokio::process::Command::from(cmd);
    // An agent that fails before waiting must not leave the init behind.
    cmd.kill_on_drop(true);
    let spawned = cmd.spawn();
    drop(writer);
    drop(memfd);
    let _ = sys::set_nonblocking(reader.as_fd());
    match spawned {
        Ok(child) => Ok(Sandbox {
            child,
            status: reader,
        }),
        Err(source) => {
            let mut stage = String::new();
            let _ = (&reader).read_to_string(&mut stage);
            if stage.is_empty() {
                stage = "starting the sandbox init (/proc/self/exe)".into();
            }
            Err(SandboxError::Namespace { stage, source })
        }
    }
}

impl Sandbox {
    /// The init's pid (signals sent to it are forwarded to the command).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// After the init exited: the command's status, or the set-up failure it reported.
    pub fn outcome(self, status: ExitStatus) -> Result<ExitStatus, SandboxError> {
        let mut msg = String::new();
        let _ = (&self.status).read_to_string(&mut msg);
        let msg = msg.trim();
        if msg.is_empty() {
            Ok(status)
        } else {
            Err(SandboxError::Reported(
                msg.lines().next().unwrap_or(msg).to_string(),
            ))
        }
    }
}
