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

/// The listeners of one enforced cgroup, created in its namespace.
#[derive(Debug)]
pub struct Listeners {
    pub tcp4: TcpListener,
    /// None when IPv6 is disabled in the namespace: IPv6 connections are then refused.
    pub tcp6: Option<TcpListener>,
    pub dns4: UdpSocket,
    pub dns6: Option<UdpSocket>,
}

impl Listeners {
    /// Bring `lo` up and bind ephemeral ports on 127.0.0.1 and [::1].
    pub fn create(ns: &Netns) -> Result<Self, NetnsError> {
        ns.run(|| {
            crate::sys::loopback_up()?;
            let tcp4 = tcp_listener("127.0.0.1:0".parse().unwrap())?;
            let dns4 = UdpSocket::bind("127.0.0.1:0")?;
            let tcp6 = tcp_listener("[::1]:0".parse().unwrap()).ok();
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
        let port = |a: io::Result<SocketAddr>| a.map(|a| a.port()).unwrap_or(0);
        crate::bpf::maps::EgressConfig {
            tcp_port4: port(self.tcp4.local_addr()),
            tcp_port6: self.tcp6.as_ref().map_or(0, |l| port(l.local_addr())),
            dns_port4: port(self.dns4.local_addr()),
            dns_port6: self.dns6.as_ref().map_or(0, |s| port(s.local_addr())),
            flags: crate::bpf::maps::CFG_F_CONFIGURED,
            svc_addr4: crate::SERVICE_ADDR4.octets(),
        }
    }
}

fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    // A deep backlog: bursts of thousands of connects must not see SYN drops.
    s.listen(4096)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}
