//! Host layer: the only module with `unsafe`: thin wrappers over Linux syscalls that neither
//! std nor a well-kept crate exposes (bpf map lookup-and-delete, setns,
//! SO_NETNS_COOKIE, SIOCOUTQ, bringing `lo` up, mounting bpffs, capabilities).

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, BorrowedFd, RawFd},
    os::unix::ffi::OsStrExt,
    path::Path,
};

fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `SIOCOUTQ` on a TCP socket: bytes written but not yet acknowledged by the peer.
pub fn unsent_bytes(fd: RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one int to the pointer it is given.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n as *mut libc::c_int) } as libc::c_long)?;
    Ok(n.max(0) as usize)
}

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (hash maps since 5.14): takes an entry
/// atomically, so two accepts can never consume the same original destination.
/// Returns Ok(false) when the key is absent.
pub fn bpf_map_lookup_and_delete<K, V>(
    map: BorrowedFd<'_>,
    key: &K,
    value: &mut V,
) -> io::Result<bool> {
    #[repr(C)]
    struct MapElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    let attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key as *const K as u64,
        value: value as *mut V as u64,
        flags: 0,
    };
    // SAFETY: attr points to valid key/value buffers of the map's sizes (the
    // caller's types mirror egress_maps.h, checked against BTF by a test).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            &attr as *const MapElemAttr,
            std::mem::size_of::<MapElemAttr>(),
        )
    };
    match cvt(r) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The network namespace cookie of a socket (SO_NETNS_COOKIE, Linux 5.14): the
/// same value `bpf_get_netns_cookie()` returns in the container's hooks.
pub fn netns_cookie(fd: RawFd) -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut v: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: v and len are valid for writes of their sizes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            &mut v as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    cvt(r as libc::c_long).map(|_| v)
}

/// Move the calling thread into the network namespace behind `fd`.
pub fn setns_net(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    cvt(unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } as libc::c_long).map(|_| ())
}

/// Bring the loopback interface up in the calling thread's network namespace
/// (a fresh namespace has `lo` down, and the agent's listeners live on it).
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: a datagram socket used only for the ioctl; ifreq is zeroed and
    // holds a NUL-terminated name.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, c) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *c as libc::c_char;
        }
        let mut r = libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr);
        if r == 0 && (ifr.ifr_ifru.ifru_flags & libc::IFF_UP as i16) == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as i16;
            r = libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr);
        }
        let err = io::Error::last_os_error();
        libc::close(s);
        if r < 0 {
            return Err(err);
        }
    }
    Ok(())
}

pub fn mount_bpffs(target: &Path) -> io::Result<()> {
    let t = CString::new(target.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let r = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            t.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    cvt(r as libc::c_long).map(|_| ())
}

/// Drop CAP_NET_RAW (and CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF) from the bounding
/// set and every capability set of the calling process, so the sandboxed command
/// cannot open AF_PACKET sockets, detach programs or re-enter other namespaces.
/// Meant for the child between fork and exec: only async-signal-safe calls.
pub fn drop_net_caps() -> io::Result<()> {
    const CAPS: [u32; 4] = [
        13, /* NET_RAW */
        12, /* NET_ADMIN */
        21, /* SYS_ADMIN */
        39, /* BPF */
    ];
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    // SAFETY: prctl/capget/capset with valid pointers to local structs.
    unsafe {
        for cap in CAPS {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(e);
                }
            }
            // Ambient capabilities would survive exec: clear them too.
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_LOWER as libc::c_ulong,
                cap as libc::c_ulong,
                0,
                0,
            );
        }
        let mut hdr = Header {
            version: VERSION_3,
            pid: 0,
        };
        let mut data = [Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if libc::syscall(libc::SYS_capget, &mut hdr as *mut Header, data.as_mut_ptr()) < 0 {
            return Err(io::Error::last_os_error());
        }
        for cap in CAPS {
            let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
            data[word].effective &= !bit;
            data[word].permitted &= !bit;
            data[word].inheritable &= !bit;
        }
        if libc::syscall(libc::SYS_capset, &mut hdr as *mut Header, data.as_ptr()) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Copy a plain-old-data struct out of a byte record (a ring buffer entry).
pub fn read_pod<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: T is Pod (every bit pattern valid) and the length was checked;
    // read_unaligned copes with the record's alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

/// Register an owned fd-holding object with tokio's reactor for readiness.
pub fn async_fd<T: std::os::fd::AsRawFd>(inner: T) -> io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `inner` owns its fd and moves into the AsyncFd, so the fd stays
    // open (and is not reused) for as long as it is registered.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)
}

/// `BPF_LINK_CREATE` for a cgroup, then `BPF_OBJ_PIN` of the new link at `pin`.
/// Used where aya has no `FdLink` conversion (cgroup sockopt links in 0.14).
pub fn bpf_link_create_and_pin(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
    pin: &Path,
) -> io::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    #[repr(C)]
    struct LinkCreateAttr {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
        _rest: [u64; 6],
    }
    #[repr(C)]
    struct ObjPinAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_LINK_CREATE: libc::c_long = 28;
    let attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        flags: 0,
        _rest: [0; 6],
    };
    // SAFETY: attr is a valid, zero-padded bpf_attr prefix for BPF_LINK_CREATE.
    let fd = cvt(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &attr as *const LinkCreateAttr,
            std::mem::size_of::<LinkCreateAttr>(),
        )
    })?;
    // SAFETY: the syscall returned a new fd that we now own.
    let link = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let path = CString::new(pin.as_os_str().as_bytes())?;
    let attr = ObjPinAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: link.as_raw_fd() as u32,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: pathname is a live NUL-terminated string; bpf_fd is our link.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &attr as *const ObjPinAttr,
            std::mem::size_of::<ObjPinAttr>(),
        )
    })?;
    Ok(())
}

/// Give the calling thread a new, empty network namespace.
pub fn unshare_net() -> io::Result<()> {
    // SAFETY: plain syscall; affects only the calling thread.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWNET) } as libc::c_long).map(|_| ())
}

/// In a forked child before exec: join the cgroup whose `cgroup.procs` is open
/// at `procs_fd`. Async-signal-safe (write of a formatted pid, no allocation).
pub fn join_cgroup_raw(procs_fd: RawFd) -> io::Result<()> {
    // SAFETY: getpid and write on a valid fd with a stack buffer.
    unsafe {
        let mut pid = libc::getpid() as u32;
        let mut buf = [0u8; 12];
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (pid % 10) as u8;
            pid /= 10;
            if pid == 0 {
                break;
            }
        }
        let n = buf.len() - i;
        if libc::write(procs_fd, buf[i..].as_ptr() as *const libc::c_void, n) != n as isize {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// In a forked child before exec: enter a network namespace by raw fd.
pub fn setns_net_raw(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall, async-signal-safe.
    cvt(unsafe { libc::setns(fd, libc::CLONE_NEWNET) } as libc::c_long).map(|_| ())
}

/// Send a signal to a process.
pub fn kill(pid: u32, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::kill(pid as libc::pid_t, sig) } as libc::c_long).map(|_| ())
}

/// Every address configured on an interface of the calling thread's network
/// namespace (getifaddrs).
pub fn local_addresses() -> io::Result<Vec<std::net::IpAddr>> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs allocates a list we walk read-only and free once; each
    // sockaddr is read according to its family.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cur = head;
        while !cur.is_null() {
            let sa = (*cur).ifa_addr;
            if !sa.is_null() {
                match (*sa).sa_family as i32 {
                    libc::AF_INET => {
                        let a = &*(sa as *const libc::sockaddr_in);
                        out.push(std::net::IpAddr::V4(std::net::Ipv4Addr::from(
                            u32::from_be(a.sin_addr.s_addr),
                        )));
                    }
                    libc::AF_INET6 => {
                        let a = &*(sa as *const libc::sockaddr_in6);
                        out.push(std::net::IpAddr::V6(std::net::Ipv6Addr::from(
                            a.sin6_addr.s6_addr,
                        )));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    Ok(out)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (as Go's runtime and most
/// daemons do: the soft 1024 default is for select(2) users, not for a proxy
/// holding two descriptors per connection); returns the new soft limit.
pub fn raise_nofile() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// The soft RLIMIT_NOFILE.
pub fn nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim.rlim_cur)
}

/// `flock(LOCK_EX | LOCK_NB)`: Ok(true) when taken, Ok(false) when another open
/// file description holds it. (std's `File::try_lock` is newer than our MSRV.)
pub fn try_flock_exclusive(f: &std::fs::File) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own for the duration of the call.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

// ---- Pinned cgroup links, as the kernel sees them (tamper check) -------------

/// What the kernel reports for a pinned cgroup link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLinkInfo {
    pub link_id: u32,
    pub prog_id: u32,
    /// The cgroup the link is attached to; 0 once it was detached
    /// (`bpftool link detach`, or its cgroup was removed): the pin outlives it.
    pub cgroup_id: u64,
    pub attach_type: u32,
}

/// `BPF_OBJ_GET` then `BPF_OBJ_GET_INFO_BY_FD`: what the kernel says of the link
/// pinned at `pin`. `NotFound` when the pin is gone.
pub fn pinned_cgroup_link(pin: &Path) -> io::Result<CgroupLinkInfo> {
    cgroup_link_info(std::os::fd::AsFd::as_fd(&bpf_obj_get(pin)?), pin)
}

/// `BPF_OBJ_GET`: open the bpf object pinned at `pin` (aya opens pinned links
/// into an `FdLink` that does not lend its fd).
pub fn bpf_obj_get(pin: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    let path = CString::new(pin.as_os_str().as_bytes())?;
    let attr = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: pathname is a live NUL-terminated string; the kernel only reads attr.
    let fd = cvt(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGetAttr,
            std::mem::size_of::<ObjGetAttr>(),
        )
    })?;
    // SAFETY: the syscall returned a new fd that we now own (closed on drop).
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `BPF_OBJ_GET_INFO_BY_FD` of a cgroup link (`what` names it in errors). By
/// hand because aya's `LinkInfo` does not expose the cgroup of a link, which is
/// exactly what says whether it is still attached.
pub fn cgroup_link_info(link: BorrowedFd<'_>, what: &Path) -> io::Result<CgroupLinkInfo> {
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_TYPE_CGROUP: u32 = 3;
    // struct bpf_link_info: type, id, prog_id, then (8-aligned) the union whose
    // cgroup member is { __u64 cgroup_id; __u32 attach_type; }. A zeroed buffer
    // larger than this kernel's struct is accepted (tail must be zero).
    let mut info = [0u64; 16];
    let attr = InfoAttr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: info points to a writable buffer of info_len bytes.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    })?;
    // Two u32 fields share each u64 word: which half is which follows the byte order.
    let half = |w: u64, second: bool| {
        let high = second == cfg!(target_endian = "little");
        (if high { w >> 32 } else { w & 0xffff_ffff }) as u32
    };
    let first = |w| half(w, false);
    let second = |w| half(w, true);
    let link_type = first(info[0]);
    if link_type != BPF_LINK_TYPE_CGROUP {
        return Err(io::Error::other(format!(
            "{} is a bpf link of type {link_type}, not a cgroup link",
            what.display()
        )));
    }
    Ok(CgroupLinkInfo {
        link_id: second(info[0]),
        prog_id: first(info[1]),
        cgroup_id: info[2],
        attach_type: first(info[3]),
    })
}
// ---- sandbox (`exec`, see `crate::sandbox`): namespaces, mounts, credentials, processes ----
// Thin wrappers written by hand: the workspace has no `nix`, and the `_raw` ones run between
// fork and exec, where only async-signal-safe calls (no allocation, no locks) are allowed.

/// In a forked child before exec: `unshare(flags)`. Async-signal-safe.
pub fn unshare_raw(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall; affects only the calling process.
    cvt(unsafe { libc::unshare(flags) } as libc::c_long).map(|_| ())
}

/// In a forked child before exec: let `fd` survive the exec (clear FD_CLOEXEC).
/// Async-signal-safe.
pub fn inherit_fd_raw(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd number; no memory is passed.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } as libc::c_long).map(|_| ())
}

/// Best-effort write of a short message (a failure report) to `fd`. Async-signal-safe.
pub fn write_raw(fd: RawFd, msg: &[u8]) {
    // SAFETY: writes an initialised buffer to an fd number; the result is ignored on purpose
    // (the caller is already failing and has nowhere else to report).
    let _ = unsafe { libc::write(fd, msg.as_ptr() as *const libc::c_void, msg.len()) };
}

/// `prctl(PR_SET_PDEATHSIG, sig)`: `sig` is sent to this process when the thread that forked
/// it exits. Async-signal-safe.
pub fn set_parent_death_signal(sig: libc::c_int) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    cvt(
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) }
            as libc::c_long,
    )
    .map(|_| ())
}

/// The parent's pid. Async-signal-safe.
pub fn getppid() -> u32 {
    // SAFETY: getppid cannot fail.
    unsafe { libc::getppid() as u32 }
}

/// Mark `fd` close-on-exec.
pub fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl on a valid borrowed fd.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } as libc::c_long)
        .map(|_| ())
}

/// A memfd holding `data`, sealed against every change (write, grow, shrink, further seals):
/// whoever inherits it reads exactly what was written. Close-on-exec.
pub fn sealed_memfd(name: &std::ffi::CStr, data: &[u8]) -> io::Result<std::os::fd::OwnedFd> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    // SAFETY: valid NUL-terminated name; the returned fd is new and owned below.
    let fd = cvt(unsafe {
        libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
    } as libc::c_long)?;
    // SAFETY: the syscall returned a fresh fd that nothing else owns.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as RawFd) };
    let mut f = std::fs::File::from(owned);
    f.write_all(data)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl with an integer argument on the fd we own.
    cvt(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, seals) } as libc::c_long)?;
    Ok(f.into())
}

/// `mount(2)`. `source`, `fstype` and `data` are optional as in C.
pub fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let src = source
        .map(|s| CString::new(s.as_os_str().as_bytes()))
        .transpose()?;
    let tgt = CString::new(target.as_os_str().as_bytes())?;
    let ty = fstype.map(CString::new).transpose()?;
    let dat = data.map(CString::new).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is a live NUL-terminated string or NULL.
    let r = unsafe {
        libc::mount(
            ptr(&src),
            tgt.as_ptr(),
            ptr(&ty),
            flags,
            ptr(&dat) as *const libc::c_void,
        )
    };
    cvt(r as libc::c_long).map(|_| ())
}

/// The two sides of a fork.
pub enum Forked {
    Child,
    Parent(u32),
}

/// `fork(2)`. Only for a single-threaded caller (the sandbox init): the child of a
/// multi-threaded process may only make async-signal-safe calls, and the init's children
/// allocate.
pub fn fork_single_threaded() -> io::Result<Forked> {
    // SAFETY: the caller is single-threaded (documented above), so the child inherits no
    // lock held by another thread.
    let pid = cvt(unsafe { libc::fork() } as libc::c_long)?;
    Ok(if pid == 0 {
        Forked::Child
    } else {
        Forked::Parent(pid as u32)
    })
}

/// `waitpid(pid, WNOHANG)` (`pid` -1: any child): Ok(None) when no child has changed state,
/// Err(ECHILD) when there is no child left.
pub fn try_wait(pid: i32) -> io::Result<Option<(u32, libc::c_int)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: status is a valid out-pointer.
    let r = cvt(unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } as libc::c_long)?;
    Ok((r != 0).then_some((r as u32, status)))
}

fn sigset(sigs: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill the local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in sigs {
            libc::sigaddset(&mut set, *s);
        }
        set
    }
}

/// Block `sigs` for the calling thread (they stay pending until [`wait_signal`] takes them).
pub fn block_signals(sigs: &[libc::c_int]) -> io::Result<()> {
    let set = sigset(sigs);
    // SAFETY: valid set pointer; the old mask is not needed.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Unblock every signal and restore SIGPIPE's default action (the Rust runtime ignores it,
/// and an ignored signal stays ignored across exec).
pub fn reset_signals() -> io::Result<()> {
    let set = sigset(&[]);
    // SAFETY: valid set pointer; signal() with SIG_DFL installs no handler code.
    unsafe {
        let r = libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    Ok(())
}

/// Take the next of `sigs` (which must be blocked): `sigwaitinfo`, retried on EINTR.
/// Returns the signal and its `si_code` (> 0: sent by the kernel, e.g. a terminal's Ctrl-C;
/// <= 0: sent by a process with kill/tgkill/sigqueue).
pub fn wait_signal(sigs: &[libc::c_int]) -> io::Result<(libc::c_int, libc::c_int)> {
    let set = sigset(sigs);
    loop {
        // SAFETY: valid set pointer and siginfo out-buffer.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::sigwaitinfo(&set, &mut info) };
        if r >= 0 {
            return Ok((r, info.si_code));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// `setgroups(2)`.
pub fn set_groups(groups: &[u32]) -> io::Result<()> {
    // SAFETY: pointer and length of a live slice of gid_t (u32).
    cvt(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } as libc::c_long).map(|_| ())
}

/// `setresgid(gid, gid, gid)`.
pub fn set_gid(gid: u32) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::setresgid(gid, gid, gid) } as libc::c_long).map(|_| ())
}

/// `setresuid(uid, uid, uid)`. Leaving uid 0 clears the permitted, effective and ambient
/// capability sets.
pub fn set_uid(uid: u32) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::setresuid(uid, uid, uid) } as libc::c_long).map(|_| ())
}

/// `PR_SET_NO_NEW_PRIVS`: no exec after this can gain privileges (setuid/setgid bits and
/// file capabilities are ignored). Inherited by every descendant, irreversible.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } as libc::c_long).map(|_| ())
}

/// `PR_SET_DUMPABLE`: a non-dumpable process's /proc files belong to root and it cannot be
/// ptraced without CAP_SYS_PTRACE.
pub fn set_dumpable(on: bool) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, on as libc::c_ulong, 0, 0, 0) } as libc::c_long)
        .map(|_| ())
}

/// Drop every capability outside `keep` (bit n = capability n) from the bounding set and
/// clear the ambient set. Needs CAP_SETPCAP; the current sets are untouched (see
/// [`set_capabilities`]).
pub fn limit_bounding_set(keep: u64) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    unsafe {
        for cap in 0..64u32 {
            if keep & (1u64 << cap) != 0 {
                continue;
            }
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) < 0 {
                let e = io::Error::last_os_error();
                // EINVAL: beyond the kernel's last capability.
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(e);
                }
            }
        }
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Set the effective and permitted capability sets to (current permitted ∩ `keep`) and the
/// inheritable set to empty.
pub fn set_capabilities(keep: u64) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with valid pointers to a v3 header and two data words.
    unsafe {
        if libc::syscall(libc::SYS_capget, &mut hdr as *mut Header, data.as_mut_ptr()) < 0 {
            return Err(io::Error::last_os_error());
        }
        for (i, d) in data.iter_mut().enumerate() {
            let k = (keep >> (32 * i)) as u32;
            d.permitted &= k;
            d.effective = d.permitted;
            d.inheritable = 0;
        }
        if libc::syscall(libc::SYS_capset, &mut hdr as *mut Header, data.as_ptr()) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `execve(2)`; returns only on failure.
pub fn execve(path: &std::ffi::CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut a: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    a.push(std::ptr::null());
    let mut e: Vec<*const libc::c_char> = envp.iter().map(|s| s.as_ptr()).collect();
    e.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of live NUL-terminated strings.
    unsafe { libc::execve(path.as_ptr(), a.as_ptr(), e.as_ptr()) };
    io::Error::last_os_error()
}

/// `_exit(2)`: end a forked child at once, without running the parent's exit handlers.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no shared state.
    unsafe { libc::_exit(code) }
}

/// `access(2)` with the real uid and gid (the target user's, after the switch).
pub fn access(path: &Path, mode: libc::c_int) -> io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated path.
    cvt(unsafe { libc::access(p.as_ptr(), mode) } as libc::c_long).map(|_| ())
}

/// `lchown(2)`.
pub fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated path.
    cvt(unsafe { libc::lchown(p.as_ptr(), uid, gid) } as libc::c_long).map(|_| ())
}

/// A passwd entry (through NSS, as `id` and `sudo` see it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passwd {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: std::path::PathBuf,
}

fn nss_buffer() -> Vec<libc::c_char> {
    vec![0; 4096]
}

fn passwd_lookup(
    mut call: impl FnMut(
        *mut libc::passwd,
        *mut libc::c_char,
        libc::size_t,
        *mut *mut libc::passwd,
    ) -> libc::c_int,
) -> io::Result<Option<Passwd>> {
    let mut buf = nss_buffer();
    loop {
        // SAFETY: pwd, buf and result are valid for the call; the strings read afterwards
        // point into buf, which outlives them.
        unsafe {
            let mut pwd: libc::passwd = std::mem::zeroed();
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            let r = call(&mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
            if r == libc::ERANGE && buf.len() < (1 << 20) {
                buf = vec![0; buf.len() * 4];
                continue;
            }
            if r != 0 {
                return Err(io::Error::from_raw_os_error(r));
            }
            if result.is_null() {
                return Ok(None);
            }
            let s =
                |p: *const libc::c_char| std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned();
            return Ok(Some(Passwd {
                name: s(pwd.pw_name),
                uid: pwd.pw_uid,
                gid: pwd.pw_gid,
                home: std::path::PathBuf::from(std::ffi::OsStr::from_bytes(
                    std::ffi::CStr::from_ptr(pwd.pw_dir).to_bytes(),
                )),
            }));
        }
    }
}

/// `getpwnam_r`.
pub fn passwd_by_name(name: &str) -> io::Result<Option<Passwd>> {
    let n = CString::new(name)?;
    // SAFETY: forwarded to getpwnam_r with the buffers passwd_lookup provides.
    passwd_lookup(|p, b, l, r| unsafe { libc::getpwnam_r(n.as_ptr(), p, b, l, r) })
}

/// `getpwuid_r`.
pub fn passwd_by_uid(uid: u32) -> io::Result<Option<Passwd>> {
    // SAFETY: forwarded to getpwuid_r with the buffers passwd_lookup provides.
    passwd_lookup(|p, b, l, r| unsafe { libc::getpwuid_r(uid, p, b, l, r) })
}

/// `getgrnam_r`: the gid of group `name`.
pub fn group_by_name(name: &str) -> io::Result<Option<u32>> {
    let n = CString::new(name)?;
    let mut buf = nss_buffer();
    loop {
        // SAFETY: grp, buf and result are valid for the call; only gr_gid is read.
        unsafe {
            let mut grp: libc::group = std::mem::zeroed();
            let mut result: *mut libc::group = std::ptr::null_mut();
            let r = libc::getgrnam_r(
                n.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            );
            if r == libc::ERANGE && buf.len() < (1 << 22) {
                buf = vec![0; buf.len() * 4];
                continue;
            }
            if r != 0 {
                return Err(io::Error::from_raw_os_error(r));
            }
            return Ok((!result.is_null()).then_some(grp.gr_gid));
        }
    }
}

/// `getgrouplist`: `gid` plus every group that lists `user` as a member.
pub fn group_list(user: &str, gid: u32) -> io::Result<Vec<u32>> {
    let n = CString::new(user)?;
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut count = groups.len() as libc::c_int;
        // SAFETY: groups has room for `count` entries; count is updated by the call.
        let r = unsafe { libc::getgrouplist(n.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if r >= 0 {
            groups.truncate(count.max(0) as usize);
            return Ok(groups);
        }
        if count as usize <= groups.len() || groups.len() > 65_536 {
            return Err(io::Error::other("getgrouplist failed"));
        }
        groups = vec![0; count as usize];
    }
}

/// `umount2(target, MNT_DETACH)`.
pub fn umount_detach(target: &Path) -> io::Result<()> {
    let t = CString::new(target.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated path.
    cvt(unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) } as libc::c_long).map(|_| ())
}

/// `waitpid(pid, 0)`: the raw wait status.
pub fn wait_blocking(pid: u32) -> io::Result<libc::c_int> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        if r >= 0 {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Point stdin, stdout and stderr at /dev/null (a helper whose chatter nobody reads).
pub fn quiet_stdio() -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for fd in 0..3 {
        // SAFETY: dup2 of a valid fd onto a standard descriptor number.
        cvt(unsafe { libc::dup2(null.as_raw_fd(), fd) } as libc::c_long)?;
    }
    Ok(())
}

/// Set O_NONBLOCK on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments on a valid borrowed fd.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        cvt(libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) as libc::c_long)
            .map(|_| ())
    }
}

/// Take ownership of a descriptor this process inherited by number (named on its command
/// line by the process that started it). Fails if `fd` is not open.
pub fn take_inherited_fd(fd: RawFd) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_GETFD only checks that the number is open.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) } as libc::c_long)?;
    // SAFETY: the fd is open, and by the calling convention (inherited, named once on the
    // command line) nothing else in this process owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}
