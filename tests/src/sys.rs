//! Every `unsafe` line of the harness lives here: thin wrappers over Linux syscalls that the harness and
//! the `probe` / `fakenet` binaries call through safe signatures. Linux only.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use socket2::SockAddr;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Effective uid of this process.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Moves the *calling thread* into the network namespace behind `fd`.
pub fn setns_net(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a valid, borrowed fd.
    cvt(unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) }).map(drop)
}

/// Runs `f` on a fresh thread that has entered the network namespace at `netns` (a /run/netns path or
/// /proc/PID/ns/net). The caller's threads never change namespace.
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let file = File::open(netns)?;
    std::thread::spawn(move || {
        setns_net(std::os::fd::AsFd::as_fd(&file))?;
        f()
    })
    .join()
    .map_err(|_| io::Error::other("netns worker thread panicked"))?
}

/// Arranges for the child of `cmd` to join the cgroup whose `cgroup.procs` is open as `cgroup_procs`
/// (if any) and then the network namespace open as `netns`, between fork and exec.
///
/// Both fds are opened by the caller before fork (O_CLOEXEC, so the program never inherits them); the
/// closure only uses async-signal-safe calls: getpid, write, setns.
pub fn pre_exec_enter(cmd: &mut Command, netns: OwnedFd, cgroup_procs: Option<OwnedFd>) {
    let hook = move || -> io::Result<()> {
        if let Some(procs) = &cgroup_procs {
            // Format our pid into a stack buffer: no allocation after fork.
            let mut buf = [0u8; 24];
            // SAFETY: getpid is async-signal-safe and cannot fail.
            let mut pid = unsafe { libc::getpid() } as u32;
            let mut i = buf.len();
            loop {
                i -= 1;
                buf[i] = b'0' + (pid % 10) as u8;
                pid /= 10;
                if pid == 0 {
                    break;
                }
            }
            let digits = &buf[i..];
            // SAFETY: writing an initialised stack buffer to an fd we own.
            let n = unsafe { libc::write(procs.as_raw_fd(), digits.as_ptr().cast(), digits.len()) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: plain syscall on an fd we own.
        cvt(unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) })?;
        Ok(())
    };
    // SAFETY: the hook only performs async-signal-safe syscalls on fds that stay open for the life of
    // the Command, and allocates nothing.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Sends `sig` to `pid`. ESRCH (already gone) counts as success.
pub fn kill(pid: i32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall.
    match cvt(unsafe { libc::kill(pid, sig) }) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        r => r.map(drop),
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: valid in-pointer.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    Ok(lim.rlim_cur)
}

/// setsockopt with an arbitrary byte payload.
pub fn setsockopt_bytes(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    val: &[u8],
) -> io::Result<()> {
    // SAFETY: val is a valid initialised buffer of the given length.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            val.as_ptr().cast(),
            val.len() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// setsockopt with an int payload.
pub fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    val: libc::c_int,
) -> io::Result<()> {
    setsockopt_bytes(fd, level, name, &val.to_ne_bytes())
}

/// One sendmmsg(2) call carrying every payload to `addr`; returns how many messages the kernel took.
pub fn sendmmsg_to(fd: BorrowedFd<'_>, addr: &SockAddr, payloads: &[&[u8]]) -> io::Result<usize> {
    let mut iovs: Vec<libc::iovec> = payloads
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: all-zero is a valid mmsghdr.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
            m.msg_hdr.msg_namelen = addr.len();
            m.msg_hdr.msg_iov = iov as *mut libc::iovec;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: msgs, iovs, payloads and addr outlive the call.
    let n = cvt(unsafe {
        libc::sendmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            0,
        )
    })?;
    Ok(n as usize)
}

/// unshare(2). Note CLONE_NEWUSER requires a single-threaded caller.
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::unshare(flags) }).map(drop)
}

/// Sets IFF_UP on interface `name` in the calling thread's network namespace (SIOCSIFFLAGS).
pub fn link_up(name: &str) -> io::Result<()> {
    let cname = CString::new(name).map_err(io::Error::other)?;
    let bytes = cname.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    // SAFETY: all-zero is a valid ifreq.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: ifr is a valid ifreq for these ioctls.
    unsafe {
        cvt(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr))?;
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        cvt(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr))?;
    }
    Ok(())
}

/// connect(2) submitted as io_uring IORING_OP_CONNECT, linked to a timeout.
pub fn uring_connect(fd: BorrowedFd<'_>, addr: &SockAddr, timeout: Duration) -> io::Result<()> {
    use io_uring::{opcode, squeue, types, IoUring};
    let mut ring = IoUring::new(4)?;
    let ts = types::Timespec::new()
        .sec(timeout.as_secs())
        .nsec(timeout.subsec_nanos());
    let connect = opcode::Connect::new(
        types::Fd(fd.as_raw_fd()),
        addr.as_ptr() as *const libc::sockaddr,
        addr.len(),
    )
    .build()
    .flags(squeue::Flags::IO_LINK)
    .user_data(1);
    let link_timeout = opcode::LinkTimeout::new(&ts).build().user_data(2);
    // SAFETY: the entries point at `addr` and `ts`, both alive until submit_and_wait returns with both
    // completions reaped.
    unsafe {
        let mut sq = ring.submission();
        sq.push(&connect).map_err(io::Error::other)?;
        sq.push(&link_timeout).map_err(io::Error::other)?;
    }
    ring.submit_and_wait(2)?;
    let mut result = None;
    for cqe in ring.completion() {
        if cqe.user_data() == 1 {
            result = Some(cqe.result());
        }
    }
    match result {
        Some(r) if r >= 0 => Ok(()),
        Some(r) if -r == libc::ECANCELED => Err(io::Error::from_raw_os_error(libc::ETIMEDOUT)),
        Some(r) => Err(io::Error::from_raw_os_error(-r)),
        None => Err(io::Error::other("io_uring: no completion for connect")),
    }
}

/// recvfrom(2) into an initialised buffer; returns the length and the source address.
pub fn recv_from(
    sock: &socket2::Socket,
    buf: &mut [u8],
) -> io::Result<(usize, Option<std::net::SocketAddr>)> {
    // SAFETY: u8 and MaybeUninit<u8> have the same layout, and recv_from only writes initialised
    // bytes into the buffer, so it stays initialised.
    let uninit = unsafe {
        std::slice::from_raw_parts_mut(
            buf.as_mut_ptr() as *mut std::mem::MaybeUninit<u8>,
            buf.len(),
        )
    };
    let (n, from) = sock.recv_from(uninit)?;
    Ok((n, from.as_socket()))
}
