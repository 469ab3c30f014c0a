//! The kernel layer: loads the C programs of `egress-ebpf/` with aya, attaches
//! them to one container cgroup, pins everything under
//! `<bpffs>/egress-agent/<cgroup id>/` so enforcement outlives the agent (fail
//! closed), adopts those pins on restart instead of attaching twice, and gives the
//! rest of the agent typed access to the maps.

pub mod events;
pub mod maps;

use std::{
    fs,
    net::IpAddr,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, Map, MapData, PerCpuArray, RingBuf},
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode, CgroupSkbAttachType, Program,
    },
    Ebpf, EbpfLoader,
};
use ipnet::IpNet;

use crate::cgroup::{self, Cgroup};
use maps::{DenyValue, EgressConfig, OrigDstKey, OrigDstValue};

/// The compiled object, embedded at build time by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egress.bpf.o"));

/// Every program of the object: (ELF function name, pin file name).
pub const PROGRAMS: &[&str] = &[
    "egress_connect4",
    "egress_connect6",
    "egress_sendmsg4",
    "egress_sendmsg6",
    "egress_recvmsg4",
    "egress_recvmsg6",
    "egress_getpeername4",
    "egress_getpeername6",
    "egress_sockops",
    "egress_sock_create",
    "egress_setsockopt",
    "egress_skb",
];

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("pinned link {path}: {source}")]
    Link {
        path: PathBuf,
        source: aya::programs::links::LinkError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("map {0} missing from the object")]
    MissingMap(&'static str),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is already enforced by a running egress-agent ({holder}); stop it first, or use its control socket")]
    AlreadyServed { path: PathBuf, holder: String },
    #[error("{0} is not enforced by egress-agent (no pins under {1})")]
    NotAttached(PathBuf, PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BpfError + '_ {
    move |source| BpfError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `<bpffs>/egress-agent`
pub fn pin_root() -> Result<PathBuf, BpfError> {
    Ok(cgroup::bpffs_mount()?.join("egress-agent"))
}

/// `<bpffs>/egress-agent/<cgroup id>`
pub fn pin_dir(cg: &Cgroup) -> Result<PathBuf, BpfError> {
    Ok(pin_root()?.join(cg.id.to_string()))
}

/// Whether a cgroup carries our pinned links (from this or an earlier agent).
pub fn is_attached(cg: &Cgroup) -> Result<bool, BpfError> {
    Ok(pin_dir(cg)?.join("links").is_dir())
}

/// One enforced cgroup: its maps, and whether its links were adopted.
pub struct Enforcement {
    pub cgroup: Cgroup,
    pub pin_dir: PathBuf,
    /// True when every link was already pinned by an earlier agent.
    pub adopted: bool,
    ebpf: Ebpf,
    /// Held (flock) for as long as this process serves the cgroup; see [`serve_lock`].
    _lock: fs::File,
}

/// Where the per-cgroup serve locks live (regular files: bpffs cannot hold them).
pub const LOCK_DIR: &str = "/run/egress-agent/locks";

/// One agent per cgroup: adopting the pins is right after a crash, but a second
/// live agent would re-point the programs at its own listeners under the first
/// one's feet. An exclusive flock on `<LOCK_DIR>/<cgroup id>.lock`, released by
/// the kernel when the holder exits however it exits (kill -9 included), so a
/// restart is never refused by a stale lock.
pub fn serve_lock(cg: &Cgroup) -> Result<fs::File, BpfError> {
    let dir = Path::new(LOCK_DIR);
    fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(format!("{}.lock", cg.id));
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io(&path))?;
    match crate::sys::try_flock_exclusive(&f) {
        Ok(true) => {
            use std::io::Write;
            let _ = f.set_len(0);
            let _ = writeln!(f, "{}", std::process::id());
            Ok(f)
        }
        Ok(false) => {
            let pid = fs::read_to_string(&path).unwrap_or_default();
            Err(BpfError::AlreadyServed {
                path: cg.path.clone(),
                holder: format!("pid {}, lock {}", pid.trim(), path.display()),
            })
        }
        Err(e) => Err(BpfError::Io { path, source: e }),
    }
}

impl Enforcement {
    /// Attach the programs to `cg` with pinned links, or adopt the pins an
    /// earlier agent left (a restart must neither leave a gap nor attach twice).
    pub fn attach(cg: &Cgroup) -> Result<Self, BpfError> {
        cg.check_enforceable()?;
        // Before anything is touched: a refused second agent changes nothing.
        let lock = serve_lock(cg)?;
        let pin_dir = pin_dir(cg)?;
        let maps_dir = pin_dir.join("maps");
        let links_dir = pin_dir.join("links");
        fs::create_dir_all(&maps_dir).map_err(io(&maps_dir))?;
        fs::create_dir_all(&links_dir).map_err(io(&links_dir))?;

        // Maps marked LIBBPF_PIN_BY_NAME are reused from maps_dir when present.
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(OBJECT)?;

        let cgroup_fd = fs::File::open(&cg.path).map_err(io(&cg.path))?;
        let mut adopted = true;
        let mut created: Vec<PathBuf> = Vec::new();
        // All or nothing: a program that fails to load or attach must not leave
        // the cgroup half-enforced by the ones before it.
        let rollback = |created: &[PathBuf]| {
            for p in created {
                let _ = fs::remove_file(p);
            }
        };
        for &name in PROGRAMS {
            let pin = links_dir.join(name);
            if pin.exists() {
                // Validate the pin is a live link; a stale file is replaced.
                match PinnedLink::from_pin(&pin) {
                    Ok(_) => continue,
                    Err(_) => fs::remove_file(&pin).map_err(io(&pin))?,
                }
            }
            adopted = false;
            let Some(prog) = ebpf.program_mut(name) else {
                rollback(&created);
                return Err(BpfError::MissingMap(name));
            };
            if let Err(e) = attach_program(name, prog, cgroup_fd.as_fd(), &pin) {
                rollback(&created);
                return Err(e);
            }
            created.push(pin);
        }
        Ok(Self {
            cgroup: cg.clone(),
            pin_dir,
            adopted,
            ebpf,
            _lock: lock,
        })
    }

    /// Tell the programs where the agent's listeners are. Until this is called
    /// with CFG_F_CONFIGURED every redirected operation is refused.
    pub fn configure(&mut self, cfg: EgressConfig) -> Result<(), BpfError> {
        let map = self
            .ebpf
            .map_mut("eg_config")
            .ok_or(BpfError::MissingMap("eg_config"))?;
        let mut arr: Array<_, EgressConfig> =
            Array::try_from(map).map_err(|source| BpfError::Map {
                name: "eg_config",
                source,
            })?;
        arr.set(0, cfg, 0).map_err(|source| BpfError::Map {
            name: "eg_config",
            source,
        })
    }

    /// Make the deny and exempt tries hold exactly `deny` and `exempt`, without a
    /// window where less is denied than either the old or the new set: new deny
    /// entries go in before stale ones leave; stale exemptions leave before new
    /// ones go in.
    pub fn sync_deny_set(
        &mut self,
        deny: impl IntoIterator<Item = (IpNet, DenyValue)>,
        exempt: impl IntoIterator<Item = IpNet>,
    ) -> Result<(), BpfError> {
        let (mut deny4, mut deny6) = (Vec::new(), Vec::new());
        for (net, v) in deny {
            match net.trunc() {
                IpNet::V4(n) => {
                    deny4.push((Key::new(n.prefix_len() as u32, n.network().octets()), v))
                }
                IpNet::V6(n) => {
                    deny6.push((Key::new(n.prefix_len() as u32, n.network().octets()), v))
                }
            }
        }
        let (mut ex4, mut ex6) = (Vec::new(), Vec::new());
        for net in exempt {
            match net.trunc() {
                IpNet::V4(n) => {
                    ex4.push((Key::new(n.prefix_len() as u32, n.network().octets()), 1u32))
                }
                IpNet::V6(n) => {
                    ex6.push((Key::new(n.prefix_len() as u32, n.network().octets()), 1u32))
                }
            }
        }
        self.sync_trie("eg_exempt4", &ex4, false)?;
        self.sync_trie("eg_exempt6", &ex6, false)?;
        self.sync_trie("eg_deny4", &deny4, true)?;
        self.sync_trie("eg_deny6", &deny6, true)?;
        Ok(())
    }

    fn sync_trie<K: aya::Pod + PartialEq, V: aya::Pod>(
        &mut self,
        name: &'static str,
        want: &[(Key<K>, V)],
        insert_first: bool,
    ) -> Result<(), BpfError> {
        let e = |source| BpfError::Map { name, source };
        let map = self.ebpf.map_mut(name).ok_or(BpfError::MissingMap(name))?;
        let mut trie: LpmTrie<_, K, V> = LpmTrie::try_from(map).map_err(e)?;
        let have: Vec<Key<K>> = trie.keys().filter_map(Result::ok).collect();
        let stale: Vec<&Key<K>> = have
            .iter()
            .filter(|k| !want.iter().any(|(w, _)| same_key(w, k)))
            .collect();
        if !insert_first {
            for k in &stale {
                trie.remove(k).map_err(e)?;
            }
        }
        for (k, v) in want {
            trie.insert(k, *v, 0).map_err(e)?;
        }
        if insert_first {
            for k in &stale {
                trie.remove(k).map_err(e)?;
            }
        }
        Ok(())
    }

    /// The original-destination table, for the interceptor's accept path.
    pub fn take_orig_dst(&mut self) -> Result<OrigDstTable, BpfError> {
        match self.ebpf.take_map("eg_orig_dst") {
            Some(Map::LruHashMap(data)) => Ok(OrigDstTable { map: data }),
            _ => Err(BpfError::MissingMap("eg_orig_dst")),
        }
    }

    /// The ring buffer of kernel denials.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, BpfError> {
        let map = self
            .ebpf
            .take_map("eg_events")
            .ok_or(BpfError::MissingMap("eg_events"))?;
        RingBuf::try_from(map).map_err(|source| BpfError::Map {
            name: "eg_events",
            source,
        })
    }

    /// Kernel denial counters summed over CPUs: (hook, reason, count), non-zero only.
    pub fn counters(&self) -> Result<Vec<(maps::Hook, u32, u64)>, BpfError> {
        let map = self
            .ebpf
            .map("eg_counters")
            .ok_or(BpfError::MissingMap("eg_counters"))?;
        let arr: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| BpfError::Map {
                name: "eg_counters",
                source,
            })?;
        let mut out = Vec::new();
        for hook in 1..maps::Hook::MAX {
            for reason in 0..maps::REASON_MAX {
                let slot = (hook * maps::REASON_MAX + reason) as u32;
                if let Ok(values) = arr.get(&slot, 0) {
                    let n: u64 = values.iter().sum();
                    if n > 0 {
                        if let Some(h) = maps::Hook::from_u8(hook as u8) {
                            out.push((h, reason as u32, n));
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

fn same_key<K: aya::Pod + PartialEq>(a: &Key<K>, b: &Key<K>) -> bool {
    a.prefix_len() == b.prefix_len() && a.data() == b.data()
}

fn attach_program(
    name: &'static str,
    prog: &mut Program,
    cgroup: std::os::fd::BorrowedFd<'_>,
    pin: &Path,
) -> Result<(), BpfError> {
    let e = |source| BpfError::Program { name, source };
    // Links to a cgroup always have BPF_F_ALLOW_MULTI semantics: a child cgroup
    // may add programs of its own, but ours still run (after the child's, on the
    // final address) and only the holder of the pin can detach them.
    let mode = CgroupAttachMode::Single;
    macro_rules! attach {
        ($p:expr, $($arg:expr),*) => {{
            $p.load().map_err(e)?;
            let id = $p.attach(cgroup, $($arg),*).map_err(e)?;
            let link = $p.take_link(id).map_err(e)?;
            let link = FdLink::try_from(link).map_err(|source| BpfError::Link { path: pin.to_owned(), source })?;
            link.pin(pin).map_err(|source| BpfError::Pin { path: pin.to_owned(), source })?;
        }};
    }
    match prog {
        Program::CgroupSockAddr(p) => attach!(p, mode),
        Program::SockOps(p) => attach!(p, mode),
        Program::CgroupSock(p) => attach!(p, mode),
        Program::CgroupSkb(p) => attach!(p, CgroupSkbAttachType::Egress, mode),
        Program::CgroupSockopt(p) => {
            // aya 0.14 cannot turn a sockopt link into an FdLink: create it by hand.
            const BPF_CGROUP_SETSOCKOPT: u32 = 22;
            p.load().map_err(e)?;
            let fd = p.fd().map_err(e)?;
            crate::sys::bpf_link_create_and_pin(fd.as_fd(), cgroup, BPF_CGROUP_SETSOCKOPT, pin)
                .map_err(io(pin))?;
        }
        _ => unreachable!("egress.bpf.c defines only cgroup programs"),
    }
    Ok(())
}

/// Remove every pinned link and map of a cgroup: the only way enforcement ends.
/// Links detach as soon as no pin and no open fd refers to them.
pub fn detach(cg: &Cgroup) -> Result<(), BpfError> {
    let dir = pin_dir(cg)?;
    let links = dir.join("links");
    if !links.is_dir() {
        return Err(BpfError::NotAttached(cg.path.clone(), dir));
    }
    // Links first, so enforcement never runs against half-removed maps.
    for sub in ["links", "maps"] {
        let d = dir.join(sub);
        if let Ok(entries) = fs::read_dir(&d) {
            for entry in entries.flatten() {
                fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
            }
        }
        fs::remove_dir(&d).map_err(io(&d))?;
    }
    fs::remove_dir(&dir).map_err(io(&dir))?;
    Ok(())
}

/// `eg_orig_dst`: client 4-tuple (as the agent sees it) -> original destination.
/// Shared by every accept task without a lock: each take is one syscall.
pub struct OrigDstTable {
    map: MapData,
}

impl OrigDstTable {
    /// Take (look up and delete) the entry for an accepted connection.
    pub fn take(
        &self,
        netns_cookie: u64,
        peer: std::net::SocketAddr,
    ) -> std::io::Result<Option<OrigDstValue>> {
        let key = OrigDstKey::new(netns_cookie, peer);
        let mut value = OrigDstValue::default();
        let found = crate::sys::bpf_map_lookup_and_delete(self.map.fd().as_fd(), &key, &mut value)?;
        Ok(found.then_some(value))
    }
}

/// Is `ip` one of the agent's own loopback listener addresses?
pub fn is_listener_addr(ip: IpAddr) -> bool {
    maps::to_v6(ip) == std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped()
        || ip == IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
}
