//! The kernel layer: loads the C programs of `egress-ebpf/` with aya, attaches
//! them to one container cgroup, pins everything under
//! `<bpffs>/egress-agent/<cgroup id>/` so enforcement outlives the agent (fail
//! closed), adopts those pins on restart instead of attaching twice, and gives the
//! rest of the agent typed access to the maps.

pub mod events;
pub mod gate;
pub mod maps;

use std::{
    fs,
    net::IpAddr,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, Map, MapData, PerCpuArray, RingBuf},
    programs::{links::FdLink, CgroupAttachMode, CgroupSkbAttachType, Program},
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
    "egress_sock_release",
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
    #[error("{0} no longer exists: its links went with it")]
    CgroupGone(PathBuf),
    #[error("gate: {0}")]
    Gate(String),
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

/// Ids of the cgroups with per-cgroup pins under [`pin_root`], with their pin
/// directories. Only numeric names are cgroup ids: `gate/` (see [`gate`]) and
/// anything else that may live beside them are not.
pub fn pinned_cgroups() -> Result<Vec<(u64, PathBuf)>, BpfError> {
    let root = pin_root()?;
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(&root) {
        for e in entries.flatten() {
            if let Some(id) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
                out.push((id, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Loads `object` with its pinned maps under `maps_dir`. One loader serves every load: aya's
/// `EbpfLoader::new()` parses the kernel's BTF (`/sys/kernel/btf/vmlinux`, megabytes) each
/// time, and with a container adopted per start that parse was most of an attach's
/// userspace cost and kept the allocator's arenas growing.
pub(crate) fn load(object: &[u8], maps_dir: &Path) -> Result<Ebpf, BpfError> {
    static LOADER: std::sync::OnceLock<std::sync::Mutex<EbpfLoader<'static>>> =
        std::sync::OnceLock::new();
    let mut loader = LOADER
        .get_or_init(|| std::sync::Mutex::new(EbpfLoader::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    Ok(loader.default_map_pin_directory(maps_dir).load(object)?)
}

/// One enforced cgroup: its maps, and whether its links were adopted.
pub struct Enforcement {
    pub cgroup: Cgroup,
    pub pin_dir: PathBuf,
    /// True when every link was already pinned by an earlier agent.
    pub adopted: bool,
    ebpf: Ebpf,
    links: HeldLinks,
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
    serve_lock_named(&cg.id.to_string(), &cg.path)
}

/// [`serve_lock`] on `<LOCK_DIR>/<name>.lock`, for `subject` (named in the error).
pub fn serve_lock_named(name: &str, subject: &Path) -> Result<fs::File, BpfError> {
    let dir = Path::new(LOCK_DIR);
    fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(format!("{name}.lock"));
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
                path: subject.to_owned(),
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
        let mut ebpf = load(OBJECT, &maps_dir)?;

        let adopted = attach_or_adopt(&mut ebpf, PROGRAMS, cg, &links_dir)?;
        Ok(Self {
            cgroup: cg.clone(),
            pin_dir,
            adopted,
            ebpf,
            links: HeldLinks::new(links_dir, PROGRAMS),
            _lock: lock,
        })
    }

    /// The tamper check: the programs whose link is no longer pinned or no
    /// longer attached to this cgroup (`bpftool link detach`, a removed pin), in
    /// [`PROGRAMS`] order. The links are held open, so a check is one listing of
    /// the pin directory and one `BPF_OBJ_GET_INFO_BY_FD` per link.
    /// [`BpfError::CgroupGone`] when the cgroup itself was removed (its links
    /// detach with it): a container that exited, to be detached, not repaired.
    pub fn missing_links(&self) -> Result<Vec<&'static str>, BpfError> {
        self.links.missing(&self.cgroup)
    }

    /// Attach `names` (from [`Enforcement::missing_links`]) again, replacing
    /// their pins; the programs share the pinned maps with the links that stayed.
    pub fn reattach(&mut self, names: &[&'static str]) -> Result<(), BpfError> {
        self.links.release(names);
        reattach(
            &mut self.ebpf,
            names,
            &self.cgroup,
            &self.pin_dir.join("links"),
        )
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

    /// Who sent each DNS question (`eg_dns_src`), for the agent's DNS listener. `None` when
    /// the object has no such map (it is created with the others; logged, not fatal: DNS
    /// records then carry no pid).
    pub fn take_dns_senders(&mut self) -> Option<DnsSenderTable> {
        let map = self.ebpf.take_map("eg_dns_src");
        match map.map(aya::maps::HashMap::try_from) {
            Some(Ok(map)) => Some(DnsSenderTable { map }),
            _ => {
                tracing::warn!("no eg_dns_src map: DNS records carry no pid or comm");
                None
            }
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
        read_counters(&self.ebpf, "eg_counters")
    }

    /// Kernel run-time statistics of this cgroup's programs.
    pub fn program_stats(&self) -> Result<Vec<ProgramStats>, BpfError> {
        program_stats(PROGRAMS, &self.pin_dir.join("links"))
    }
}

/// A `hook * REASON_MAX + reason` per-CPU counter array, summed over CPUs:
/// (hook, reason, count), non-zero only.
pub(crate) fn read_counters(
    ebpf: &Ebpf,
    name: &'static str,
) -> Result<Vec<(maps::Hook, u32, u64)>, BpfError> {
    let map = ebpf.map(name).ok_or(BpfError::MissingMap(name))?;
    let arr: PerCpuArray<_, u64> =
        PerCpuArray::try_from(map).map_err(|source| BpfError::Map { name, source })?;
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

/// Whether the link pinned at `pin` is attached to cgroup `cgroup_id`. A pin
/// whose link was detached (`bpftool link detach`) still opens: only the
/// kernel's link info (cgroup id 0) tells.
fn link_attached(pin: &Path, cgroup_id: u64) -> Result<bool, BpfError> {
    match crate::sys::pinned_cgroup_link(pin) {
        Ok(info) => Ok(info.cgroup_id == cgroup_id),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        // A pin that is not a cgroup link (or not a bpf object at all) is stale.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) || e.raw_os_error().is_none() => Ok(false),
        Err(e) => Err(io(pin)(e)),
    }
}

/// Attach every program of `programs` to `cg` with a pinned link, or adopt the
/// pin an earlier agent left when it is still attached to `cg`. Returns true
/// when every link was adopted. All or nothing: a program that fails to load or
/// attach must not leave the cgroup half-enforced by the ones before it.
pub(crate) fn attach_or_adopt(
    ebpf: &mut Ebpf,
    programs: &[&'static str],
    cg: &Cgroup,
    links_dir: &Path,
) -> Result<bool, BpfError> {
    let cgroup_fd = fs::File::open(&cg.path).map_err(io(&cg.path))?;
    let mut adopted = true;
    let mut created: Vec<PathBuf> = Vec::new();
    let rollback = |created: &[PathBuf]| {
        for p in created {
            let _ = fs::remove_file(p);
        }
    };
    for &name in programs {
        let pin = links_dir.join(name);
        if pin.exists() {
            // A live link is adopted; a stale or detached one is replaced, so a
            // restart also repairs what was detached while the agent was down.
            if link_attached(&pin, cg.id)? {
                continue;
            }
            fs::remove_file(&pin).map_err(io(&pin))?;
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
    Ok(adopted)
}

/// The pinned links of one attachment (a cgroup's or a gate's), held open for
/// the tamper check: opening a pin (`BPF_OBJ_GET`, a path walk) costs several
/// times what asking the kernel about an open link does, and the check runs
/// every second for every attachment.
pub(crate) struct HeldLinks {
    dir: PathBuf,
    programs: &'static [&'static str],
    /// One slot per program, opened on the first check.
    held: std::sync::Mutex<Vec<Option<std::os::fd::OwnedFd>>>,
}

impl HeldLinks {
    pub(crate) fn new(dir: PathBuf, programs: &'static [&'static str]) -> Self {
        let held = std::sync::Mutex::new(programs.iter().map(|_| None).collect());
        Self {
            dir,
            programs,
            held,
        }
    }

    /// The programs whose link is not pinned, or not attached to `cg`: one
    /// directory listing plus one `BPF_OBJ_GET_INFO_BY_FD` per link.
    pub(crate) fn missing(&self, cg: &Cgroup) -> Result<Vec<&'static str>, BpfError> {
        let pinned: Vec<std::ffi::OsString> = match fs::read_dir(&self.dir) {
            Ok(d) => d.flatten().map(|e| e.file_name()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let mut missing = Vec::new();
        for (slot, &name) in held.iter_mut().zip(self.programs) {
            let pin = self.dir.join(name);
            if !pinned.iter().any(|p| p == name) {
                // Unpinned: the link lives on only through the fd held here,
                // and would go with it when the agent exits. It is released by
                // the re-attach, not before, so it keeps enforcing until then.
                missing.push(name);
                continue;
            }
            if slot.is_none() {
                *slot = match crate::sys::bpf_obj_get(&pin) {
                    Ok(fd) => Some(fd),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(io(&pin)(e)),
                };
            }
            let attached = slot.as_ref().is_some_and(|fd| {
                crate::sys::cgroup_link_info(fd.as_fd(), &pin).is_ok_and(|i| i.cgroup_id == cg.id)
            });
            if !attached {
                *slot = None; // a detached link is dead: open the pin afresh next time
                missing.push(name);
            }
        }
        if !missing.is_empty() && !cgroup_still_there(cg) {
            return Err(BpfError::CgroupGone(cg.path.clone()));
        }
        Ok(missing)
    }

    /// Close the held fds of `names` before they are re-attached: a still
    /// attached but unpinned link must not run beside its replacement.
    pub(crate) fn release(&self, names: &[&'static str]) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        for (slot, name) in held.iter_mut().zip(self.programs) {
            if names.contains(name) {
                *slot = None;
            }
        }
    }
}

/// The same cgroup (not a new one at the same path) still exists.
fn cgroup_still_there(cg: &Cgroup) -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(&cg.path).is_ok_and(|m| m.ino() == cg.id)
}

/// Attach `names` to `cg` again, each replacing its pin under `links_dir`.
pub(crate) fn reattach(
    ebpf: &mut Ebpf,
    names: &[&'static str],
    cg: &Cgroup,
    links_dir: &Path,
) -> Result<(), BpfError> {
    let cgroup_fd = fs::File::open(&cg.path).map_err(io(&cg.path))?;
    for &name in names {
        let pin = links_dir.join(name);
        match fs::remove_file(&pin) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&pin)(e)),
        }
        let prog = ebpf.program_mut(name).ok_or(BpfError::MissingMap(name))?;
        attach_program(name, prog, cgroup_fd.as_fd(), &pin)?;
    }
    Ok(())
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
    // A program is loaded once per object: a re-attach after a detach reuses it.
    macro_rules! attach {
        ($p:expr, $($arg:expr),*) => {{
            if $p.fd().is_err() {
                $p.load().map_err(e)?;
            }
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
            if p.fd().is_err() {
                p.load().map_err(e)?;
            }
            let fd = p.fd().map_err(e)?;
            crate::sys::bpf_link_create_and_pin(fd.as_fd(), cgroup, BPF_CGROUP_SETSOCKOPT, pin)
                .map_err(io(pin))?;
        }
        _ => unreachable!("egress.bpf.c and gate.bpf.c define only cgroup programs"),
    }
    Ok(())
}

/// Remove every pinned link and map of a cgroup: the only way enforcement ends.
/// Links detach as soon as no pin and no open fd refers to them. The cgroup's
/// serve lock file goes too, unless an agent still holds it.
pub fn detach(cg: &Cgroup) -> Result<(), BpfError> {
    let dir = pin_dir(cg)?;
    let links = dir.join("links");
    if !links.is_dir() {
        return Err(BpfError::NotAttached(cg.path.clone(), dir));
    }
    remove_pin_dir(&dir)?;
    remove_free_lock(&cg.id.to_string());
    Ok(())
}

/// Remove `<dir>/links/*`, `<dir>/maps/*` and `dir`: links first, so programs
/// never run against half-removed maps.
pub(crate) fn remove_pin_dir(dir: &Path) -> Result<(), BpfError> {
    for sub in ["links", "maps"] {
        let d = dir.join(sub);
        if let Ok(entries) = fs::read_dir(&d) {
            for entry in entries.flatten() {
                fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
            }
        }
        match fs::remove_dir(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&d)(e)),
        }
    }
    fs::remove_dir(dir).map_err(io(dir))?;
    Ok(())
}

/// Delete `<LOCK_DIR>/<name>.lock` if no agent holds it (taking it first, so a
/// holder's lock is never pulled from under it). Best effort. A process forked
/// by this one shares the lock's open file until it execs, even after the
/// holder here closed it (the fd is close-on-exec, not close-on-fork): a few
/// short retries let that window pass.
pub(crate) fn remove_free_lock(name: &str) {
    let path = Path::new(LOCK_DIR).join(format!("{name}.lock"));
    let Ok(f) = fs::OpenOptions::new().read(true).write(true).open(&path) else {
        return;
    };
    for _ in 0..20 {
        match crate::sys::try_flock_exclusive(&f) {
            Ok(true) => {
                let _ = fs::remove_file(&path);
                return;
            }
            Ok(false) => std::thread::sleep(std::time::Duration::from_millis(1)),
            Err(_) => return,
        }
    }
}

/// Kernel statistics of one pinned program (zero unless stats are enabled,
/// see [`enable_run_time_stats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    pub name: &'static str,
    pub prog_id: u32,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// `BPF_ENABLE_STATS`: the kernel counts run time and runs of every program
/// for as long as the returned fd is open (per holder, unlike the
/// `kernel.bpf_stats_enabled` sysctl, which would also be left on by a crash).
pub fn enable_run_time_stats() -> Result<std::os::fd::OwnedFd, BpfError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| BpfError::Io {
        path: PathBuf::from("BPF_ENABLE_STATS"),
        source: e.io_error,
    })
}

/// Statistics of the programs behind the links pinned under `links_dir`.
pub(crate) fn program_stats(
    programs: &[&'static str],
    links_dir: &Path,
) -> Result<Vec<ProgramStats>, BpfError> {
    let mut ids = Vec::new();
    for &name in programs {
        let pin = links_dir.join(name);
        let info = crate::sys::pinned_cgroup_link(&pin).map_err(io(&pin))?;
        ids.push((name, info.prog_id));
    }
    let mut out = Vec::new();
    for info in aya::programs::loaded_programs().flatten() {
        if let Some((name, id)) = ids.iter().find(|(_, id)| *id == info.id()) {
            out.push(ProgramStats {
                name,
                prog_id: *id,
                run_time_ns: info.run_time().as_nanos() as u64,
                run_cnt: info.run_count(),
            });
        }
    }
    Ok(out)
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

/// `eg_dns_src`: a DNS datagram's source (as the agent's DNS listener sees it) -> the
/// kernel's attribution of its sender. Read, not taken: a socket asks A and AAAA at once.
pub struct DnsSenderTable {
    map: aya::maps::HashMap<MapData, OrigDstKey, OrigDstValue>,
}

impl DnsSenderTable {
    /// The sender of the datagram that came from `from`, if the kernel noted it.
    pub fn get(&self, netns_cookie: u64, from: std::net::SocketAddr) -> Option<OrigDstValue> {
        self.map.get(&OrigDstKey::new(netns_cookie, from), 0).ok()
    }
}

/// Is `ip` one of the agent's own loopback listener addresses?
pub fn is_listener_addr(ip: IpAddr) -> bool {
    maps::to_v6(ip) == std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped()
        || ip == IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
}
