//! Host layer: sockets in another network namespace (ztunnel's in-pod socket factory).
//!
//! The agent's listeners live *inside* the container's namespace, so a container
//! with no network at all still works and nothing of the host is reachable from
//! it. `setns` only affects the calling thread, so each socket is created on a
//! short-lived thread that enters the namespace, creates it and exits; the rest
//! of the agent never sees namespaces. Upstream sockets stay in the agent's own.

use std::{
    fs::File,
    io,
    net::{SocketAddr, TcpListener, UdpSocket},
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("entering network namespace {path}: {source}")]
    Enter { path: PathBuf, source: io::Error },
    #[error("in network namespace {path}: {what}: {source}")]
    Socket {
        path: PathBuf,
        what: String,
        source: io::Error,
    },
}

/// A network namespace, identified by (dev, inode) of its nsfs file.
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    file: File,
    pub dev: u64,
    pub ino: u64,
}

impl Netns {
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let err = |source| NetnsError::Open {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(err)?;
        let md = file.metadata().map_err(err)?;
        Ok(Self {
            path: path.to_owned(),
            dev: md.dev(),
            ino: md.ino(),
            file,
        })
    }

    pub fn of_pid(pid: u32) -> Result<Self, NetnsError> {
        Self::open(&PathBuf::from(format!("/proc/{pid}/ns/net")))
    }

    /// The agent's own namespace.
    pub fn current() -> Result<Self, NetnsError> {
        Self::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// A new, empty network namespace (only `lo`, brought up), held open by
    /// this handle: it disappears when the handle and every process in it are gone.
    pub fn create() -> Result<Self, NetnsError> {
        let path = PathBuf::from("/proc/thread-self/ns/net");
        let p = path.clone();
        std::thread::spawn(move || {
            crate::sys::unshare_net().map_err(|source| NetnsError::Enter {
                path: p.clone(),
                source,
            })?;
            crate::sys::loopback_up().map_err(|source| NetnsError::Socket {
                path: p.clone(),
                what: "bringing lo up".into(),
                source,
            })?;
            Self::open(&p)
        })
        .join()
        .unwrap_or_else(|_| {
            Err(NetnsError::Open {
                path,
                source: io::Error::other("namespace thread panicked"),
            })
        })
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Another handle on the same namespace.
    pub fn try_clone(&self) -> Result<Netns, NetnsError> {
        Ok(Netns {
            path: self.path.clone(),
            file: self.file.try_clone().map_err(|source| NetnsError::Open {
                path: self.path.clone(),
                source,
            })?,
            dev: self.dev,
            ino: self.ino,
        })
    }

    pub fn same_as(&self, other: &Netns) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }

    /// Run `f` on a thread inside this namespace.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> Result<T, NetnsError> {
        let fd = self.file.try_clone().map_err(|source| NetnsError::Open {
            path: self.path.clone(),
            source,
        })?;
        let path = self.path.clone();
        std::thread::spawn(move || {
            crate::sys::setns_net(fd.as_fd()).map_err(|source| NetnsError::Enter {
                path: path.clone(),
                source,
            })?;
            f().map_err(|source| NetnsError::Socket {
                path,
                what: "creating sockets".into(),
                source,
            })
        })
        .join()
        .unwrap_or_else(|_| {
            Err(NetnsError::Socket {
                path: self.path.clone(),
                what: "socket thread panicked".into(),
                source: io::Error::other("panic"),
            })
        })
    }
}

/// The listeners of one enforced cgroup, created in its namespace. Each TCP address is a
/// SO_REUSEPORT group on one port (the kernel spreads new connections over its members) deep
/// enough that a burst of as many connects as the container may hold fits in the accept
/// queues: one listener's queue is capped by the namespace's `net.core.somaxconn` (4096 by
/// default), and an overflowing queue drops handshake ACKs; under a long enough overflow the
/// kernel expires those half-open requests early and answers the client's data with a reset.
/// A root process in the same container (same uid, no user namespace) could join the group
/// and be handed a share of that container's own connections; it gains no egress by it.
#[derive(Debug)]
pub struct Listeners {
    /// Never empty.
    pub tcp4: Vec<TcpListener>,
    /// Empty when IPv6 is disabled in the namespace: IPv6 connections are then refused.
    pub tcp6: Vec<TcpListener>,
    pub dns4: UdpSocket,
    pub dns6: Option<UdpSocket>,
}

/// At most this many listeners per group, however small somaxconn is.
const MAX_GROUP: usize = 16;

impl Listeners {
    /// Bring `lo` up and bind ephemeral ports on 127.0.0.1 and [::1]; each TCP group's
    /// accept queues together hold at least `depth` connections (when MAX_GROUP allows).
    pub fn create(ns: &Netns, depth: usize) -> Result<Self, NetnsError> {
        ns.run(move || {
            crate::sys::loopback_up()?;
            let per_listener = depth.min(somaxconn()).max(1);
            let n = depth.div_ceil(per_listener).clamp(1, MAX_GROUP);
            let tcp4 = tcp_group("127.0.0.1:0".parse().unwrap(), n, per_listener)?;
            let dns4 = UdpSocket::bind("127.0.0.1:0")?;
            let tcp6 = tcp_group("[::1]:0".parse().unwrap(), n, per_listener).unwrap_or_default();
            let dns6 = UdpSocket::bind("[::1]:0").ok();
            for s in [&dns4].into_iter().chain(dns6.as_ref()) {
                s.set_nonblocking(true)?;
            }
            Ok(Self {
                tcp4,
                tcp6,
                dns4,
                dns6,
            })
        })
    }

    pub fn config(&self) -> crate::bpf::maps::EgressConfig {
        let port = |g: &[TcpListener]| {
            g.first()
                .and_then(|l| l.local_addr().ok())
                .map_or(0, |a| a.port())
        };
        let udp = |a: io::Result<SocketAddr>| a.map(|a| a.port()).unwrap_or(0);
        crate::bpf::maps::EgressConfig {
            tcp_port4: port(&self.tcp4),
            tcp_port6: port(&self.tcp6),
            dns_port4: udp(self.dns4.local_addr()),
            dns_port6: self.dns6.as_ref().map_or(0, |s| udp(s.local_addr())),
            flags: crate::bpf::maps::CFG_F_CONFIGURED,
            svc_addr4: crate::SERVICE_ADDR4.octets(),
        }
    }
}

/// The calling thread's namespace's cap on a listen backlog (/proc/sys/net follows the
/// reader's namespace); 128, the smallest any kernel has used, if unreadable.
fn somaxconn() -> usize {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(128)
}

/// `n` listeners on one port of `addr` (the first picks an ephemeral port, the rest join it).
fn tcp_group(addr: SocketAddr, n: usize, backlog: usize) -> io::Result<Vec<TcpListener>> {
    let first = tcp_listener(addr, backlog)?;
    let bound = first.local_addr()?;
    let mut group = vec![first];
    for _ in 1..n {
        group.push(tcp_listener(bound, backlog)?);
    }
    Ok(group)
}

fn tcp_listener(addr: SocketAddr, backlog: usize) -> io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog.min(i32::MAX as usize) as i32)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}
