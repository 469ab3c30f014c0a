//! The gate (`egress-ebpf/gate.bpf.c`): on a *gated parent* cgroup
//! (`kubepods.slice`, `machine.slice`, a runtime's `--cgroup-parent`), every
//! descendant the agent has not adopted nor exempted has no network from its
//! first syscall (`EPERM`, reason `not_adopted`, reported with its cgroup id).
//!
//! It is a guard beside each container's own programs, not a replacement: the
//! container is still enforced by its [`Enforcement`](super::Enforcement), and
//! adoption is one map update made after that enforcement is attached and
//! configured. Once adopted, the gate lets through only what those programs
//! redirected to the container's agent, so a detach of the container's links
//! also fails closed (`not_enforced`).
//!
//! Links and maps are pinned under `<bpffs>/egress-agent/gate/<parent id>/`:
//! with the agent down, the gate stays, and a restarted agent adopts the pins
//! (and the adoption map with them) exactly as it adopts per-cgroup pins.
//! [`Gate::remove`] is the only way a gate ends.

use std::{fs, path::PathBuf};

use aya::{
    maps::{Array, HashMap, MapData, RingBuf},
    Ebpf,
};

use super::{
    io,
    maps::{EgressConfig, EgressEvent, GateConfig, GateEntry, Hook, CFG_F_CONFIGURED},
    BpfError,
};
use crate::cgroup::Cgroup;

/// The compiled gate object, embedded at build time by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gate.bpf.o"));

/// Every program of the gate object (ELF function name = pin file name).
pub const PROGRAMS: &[&str] = &[
    "gate_connect4",
    "gate_connect6",
    "gate_sendmsg4",
    "gate_sendmsg6",
    "gate_sock_create",
    "gate_setsockopt",
    "gate_skb",
];

/// `<bpffs>/egress-agent/gate`: not a cgroup id (see [`super::pinned_cgroups`]).
pub fn gate_root() -> Result<PathBuf, BpfError> {
    Ok(super::pin_root()?.join("gate"))
}

/// `<bpffs>/egress-agent/gate/<parent cgroup id>`
pub fn gate_dir(parent: &Cgroup) -> Result<PathBuf, BpfError> {
    Ok(gate_root()?.join(parent.id.to_string()))
}

/// Whether `parent` carries a pinned gate (from this or an earlier agent).
pub fn is_installed(parent: &Cgroup) -> Result<bool, BpfError> {
    Ok(gate_dir(parent)?.join("links").is_dir())
}

/// Cgroup ids of every gated parent with pins, for a restarted agent.
pub fn installed() -> Result<Vec<u64>, BpfError> {
    let mut ids: Vec<u64> = fs::read_dir(gate_root()?)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("links").is_dir())
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    ids.sort();
    Ok(ids)
}

/// One gated parent: its maps, and whether its links were adopted.
pub struct Gate {
    pub parent: Cgroup,
    pub pin_dir: PathBuf,
    /// True when every link was already pinned (and attached) by an earlier agent.
    pub adopted: bool,
    ebpf: Ebpf,
    links: super::HeldLinks,
    /// Held (flock) for as long as this process owns the gate.
    _lock: fs::File,
}

impl Gate {
    /// Gate `parent`: attach the programs with pinned links, or adopt the pins
    /// (and the entries) an earlier agent left. Every cgroup below without an
    /// entry loses its network at once: to keep running containers served,
    /// [`Gate::load`], [`Gate::adopt`] them, then [`Gate::arm`].
    pub fn install(parent: &Cgroup) -> Result<Self, BpfError> {
        let mut gate = Self::load(parent)?;
        gate.arm()?;
        Ok(gate)
    }

    /// Load the programs and pin (or reuse) the maps, without attaching
    /// anything yet. Refuses the root cgroup and any cgroup holding the agent:
    /// gating either would cut the agent's own network.
    pub fn load(parent: &Cgroup) -> Result<Self, BpfError> {
        parent.check_enforceable()?;
        let lock = super::serve_lock_named(&format!("gate-{}", parent.id), &parent.path)?;
        let pin_dir = gate_dir(parent)?;
        let maps_dir = pin_dir.join("maps");
        let links_dir = pin_dir.join("links");
        // A concurrent Gate::remove of another parent may delete gate/ between
        // the two mkdirs of create_dir_all: try again.
        let mut made = fs::create_dir_all(&maps_dir);
        for _ in 0..3 {
            if made.is_ok() {
                break;
            }
            made = fs::create_dir_all(&maps_dir);
        }
        made.map_err(io(&maps_dir))?;
        fs::create_dir_all(&links_dir).map_err(io(&links_dir))?;
        let mut ebpf = super::load(OBJECT, &maps_dir)?;
        // Before any link exists (the programs refuse everything without it).
        let config = GateConfig {
            parent_id: parent.id,
            parent_level: parent.level()?,
            _pad: 0,
        };
        let e = |source| BpfError::Map {
            name: "gate_config",
            source,
        };
        let map = ebpf
            .map_mut("gate_config")
            .ok_or(BpfError::MissingMap("gate_config"))?;
        let mut arr: Array<_, GateConfig> = Array::try_from(map).map_err(e)?;
        arr.set(0, config, 0).map_err(e)?;
        Ok(Self {
            parent: parent.clone(),
            links: super::HeldLinks::new(links_dir, PROGRAMS),
            pin_dir,
            adopted: false,
            ebpf,
            _lock: lock,
        })
    }

    /// Attach (or adopt) the links: from here on the gate is in force.
    pub fn arm(&mut self) -> Result<(), BpfError> {
        let links_dir = self.pin_dir.join("links");
        self.adopted = super::attach_or_adopt(&mut self.ebpf, PROGRAMS, &self.parent, &links_dir)?;
        Ok(())
    }

    /// Adopt the cgroup `cgroup_id` (below the parent), whose own programs are
    /// attached and configured with `cfg`: from now on it, and every cgroup
    /// below it, may do exactly what those programs redirect to its agent.
    /// Call it only after [`Enforcement::configure`](super::Enforcement::configure):
    /// earlier, the gate would pass connections the container's programs do
    /// not yet redirect.
    pub fn adopt(&mut self, cgroup_id: u64, cfg: &EgressConfig) -> Result<(), BpfError> {
        self.check_below(cgroup_id)?;
        if cfg.flags & CFG_F_CONFIGURED == 0 || cfg.tcp_port4 == 0 || cfg.dns_port4 == 0 {
            return Err(BpfError::Gate(format!(
                "refusing to adopt cgroup id {cgroup_id}: its enforcement has no listeners configured ({cfg:?})"
            )));
        }
        self.put(cgroup_id, GateEntry::adopted(cfg))
    }

    /// Leave `cgroup_id` (and everything below it) alone: an operator's explicit
    /// choice, e.g. a node agent that must reach the network unenforced.
    pub fn exempt(&mut self, cgroup_id: u64) -> Result<(), BpfError> {
        self.check_below(cgroup_id)?;
        self.put(cgroup_id, GateEntry::exempt())
    }

    /// Remove `cgroup_id`'s entry (it had one: true): it is unadopted again, its
    /// sockets' packets are dropped and new ones refused. For a container that
    /// exited, or before detaching its enforcement.
    pub fn release(&mut self, cgroup_id: u64) -> Result<bool, BpfError> {
        let mut map = self.cgroups_mut()?;
        match map.remove(&cgroup_id) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(false)
            }
            Err(source) => Err(BpfError::Map {
                name: "gate_cgroups",
                source,
            }),
        }
    }

    /// The entry of one cgroup, if it has one.
    pub fn entry(&self, cgroup_id: u64) -> Result<Option<GateEntry>, BpfError> {
        let map = self
            .ebpf
            .map("gate_cgroups")
            .ok_or(BpfError::MissingMap("gate_cgroups"))?;
        let e = |source| BpfError::Map {
            name: "gate_cgroups",
            source,
        };
        let map: HashMap<_, u64, GateEntry> = HashMap::try_from(map).map_err(e)?;
        match map.get(&cgroup_id, 0) {
            Ok(entry) => Ok(Some(entry)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(e(source)),
        }
    }

    /// Every entry (cgroup id, entry), by cgroup id.
    pub fn entries(&self) -> Result<Vec<(u64, GateEntry)>, BpfError> {
        let map = self
            .ebpf
            .map("gate_cgroups")
            .ok_or(BpfError::MissingMap("gate_cgroups"))?;
        let e = |source| BpfError::Map {
            name: "gate_cgroups",
            source,
        };
        let map: HashMap<_, u64, GateEntry> = HashMap::try_from(map).map_err(e)?;
        let mut out = map.iter().collect::<Result<Vec<_>, _>>().map_err(e)?;
        out.sort_by_key(|(id, _)| *id);
        Ok(out)
    }

    /// The ring buffer of the gate's denials (`not_adopted`, `not_enforced`),
    /// in the layout of the container programs' events; see [`drain_events`].
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, BpfError> {
        let map = self
            .ebpf
            .take_map("gate_events")
            .ok_or(BpfError::MissingMap("gate_events"))?;
        RingBuf::try_from(map).map_err(|source| BpfError::Map {
            name: "gate_events",
            source,
        })
    }

    /// The gate's denial counters: (hook, reason, count), non-zero only.
    pub fn counters(&self) -> Result<Vec<(Hook, u32, u64)>, BpfError> {
        super::read_counters(&self.ebpf, "gate_counters")
    }

    /// The gate's own tamper check (see [`Enforcement::missing_links`](super::Enforcement::missing_links)).
    pub fn missing_links(&self) -> Result<Vec<&'static str>, BpfError> {
        self.links.missing(&self.parent)
    }

    /// Attach `names` again, replacing their pins.
    pub fn reattach(&mut self, names: &[&'static str]) -> Result<(), BpfError> {
        self.links.release(names);
        super::reattach(
            &mut self.ebpf,
            names,
            &self.parent,
            &self.pin_dir.join("links"),
        )
    }

    /// Kernel run-time statistics of the gate's programs (see [`super::program_stats`]).
    pub fn program_stats(&self) -> Result<Vec<super::ProgramStats>, BpfError> {
        super::program_stats(PROGRAMS, &self.pin_dir.join("links"))
    }

    /// Remove the gate of `parent`, links first: the only way a gate ends. The
    /// cgroups below keep whatever enforcement they have of their own.
    pub fn remove(parent: &Cgroup) -> Result<(), BpfError> {
        let dir = gate_dir(parent)?;
        if !dir.join("links").is_dir() && !dir.join("maps").is_dir() {
            return Err(BpfError::NotAttached(parent.path.clone(), dir));
        }
        super::remove_pin_dir(&dir)?;
        // The shared gate/ directory goes with the last gate (fails while
        // another exists, which is what we want).
        let _ = fs::remove_dir(gate_root()?);
        super::remove_free_lock(&format!("gate-{}", parent.id));
        Ok(())
    }

    fn check_below(&self, cgroup_id: u64) -> Result<(), BpfError> {
        if cgroup_id == 0 || cgroup_id == self.parent.id {
            return Err(BpfError::Gate(format!(
                "cgroup id {cgroup_id} is not a cgroup below the gated parent {}",
                self.parent.path.display()
            )));
        }
        Ok(())
    }

    fn cgroups_mut(&mut self) -> Result<HashMap<&mut MapData, u64, GateEntry>, BpfError> {
        let map = self
            .ebpf
            .map_mut("gate_cgroups")
            .ok_or(BpfError::MissingMap("gate_cgroups"))?;
        HashMap::try_from(map).map_err(|source| BpfError::Map {
            name: "gate_cgroups",
            source,
        })
    }

    fn put(&mut self, cgroup_id: u64, entry: GateEntry) -> Result<(), BpfError> {
        let mut map = self.cgroups_mut()?;
        map.insert(cgroup_id, entry, 0)
            .map_err(|source| BpfError::Map {
                name: "gate_cgroups",
                source,
            })
    }
}

/// Every event waiting in a ring buffer, without blocking.
pub fn drain_events(ring: &mut RingBuf<MapData>) -> Vec<EgressEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        if let Some(ev) = crate::sys::read_pod::<EgressEvent>(&item) {
            out.push(ev);
        }
    }
    out
}
