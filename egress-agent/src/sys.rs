//! Host layer: the only module with `unsafe`: thin wrappers over Linux syscalls that neither
//! std nor a well-kept crate exposes (bpf map lookup-and-delete, setns,
//! SO_NETNS_COOKIE, bringing `lo` up, mounting bpffs, capabilities).

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
