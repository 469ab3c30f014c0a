//! Kernel layer: Rust mirrors of `egress-ebpf/egress_maps.h`. They change together: the test
//! at the bottom checks every size and field offset against the BTF of the object
//! the build script compiled, so a drift fails `cargo test`, not production.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// `struct deny_value`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenyValue {
    pub reason: u32,
    pub flags: u32,
}
pub const DENY_F_NO_EXEMPT: u32 = 1;

/// `struct egress_config` (index 0 of `eg_config`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressConfig {
    pub tcp_port4: u16,
    pub tcp_port6: u16,
    pub dns_port4: u16,
    pub dns_port6: u16,
    pub flags: u32,
    /// egress.internal's IPv4 address, network order (as the kernel compares it).
    pub svc_addr4: [u8; 4],
}
pub const CFG_F_CONFIGURED: u32 = 1;

/// `struct orig_dst_key`: what the agent sees as the peer of an accepted socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OrigDstKey {
    pub netns_cookie: u64,
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: [u16; 3],
}

impl OrigDstKey {
    pub fn new(netns_cookie: u64, peer: SocketAddr) -> Self {
        Self {
            netns_cookie,
            addr: to_v6(peer.ip()).octets(),
            port: peer.port(),
            _pad: [0; 3],
        }
    }
}

/// `struct orig_dst_value`: the client's original destination and identity.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDstValue {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u16,
    pub pid: u32,
    pub tgid: u32,
    pub _pad: u32,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
}

impl OrigDstValue {
    /// The destination as the client spelled it: IPv4 for AF_INET sockets, the
    /// full IPv6 form (possibly ::ffff:a.b.c.d) for AF_INET6 ones.
    pub fn destination(&self) -> SocketAddr {
        SocketAddr::new(from_v6(self.addr, self.family), self.port)
    }
    pub fn comm(&self) -> &str {
        comm_str(&self.comm)
    }
}

/// `struct egress_event`: a kernel denial from the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressEvent {
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tgid: u32,
    pub comm: [u8; 16],
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u16,
    pub reason: u16,
    pub hook: u8,
    pub protocol: u8,
}

impl EgressEvent {
    pub fn destination(&self) -> Option<SocketAddr> {
        if self.addr == [0; 16] {
            return None;
        }
        Some(SocketAddr::new(from_v6(self.addr, self.family), self.port))
    }
    pub fn comm(&self) -> &str {
        comm_str(&self.comm)
    }
}

/// `struct gate_config` (index 0 of the gate's `gate_config`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateConfig {
    pub parent_id: u64,
    pub parent_level: u32,
    pub _pad: u32,
}

/// `struct gate_entry`: the value of `gate_cgroups`, keyed by cgroup id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateEntry {
    pub flags: u32,
    pub tcp_port4: u16,
    pub tcp_port6: u16,
    pub dns_port4: u16,
    pub dns_port6: u16,
    pub _pad: u32,
}
pub const GATE_F_ADOPTED: u32 = 1;
pub const GATE_F_EXEMPT: u32 = 2;
/// `GATE_MAX_DEPTH`: how many levels below the gated parent the gate looks.
pub const GATE_MAX_DEPTH: u32 = 16;

impl GateEntry {
    /// A container whose own programs are attached and point at these listeners.
    pub fn adopted(cfg: &EgressConfig) -> Self {
        Self {
            flags: GATE_F_ADOPTED,
            tcp_port4: cfg.tcp_port4,
            tcp_port6: cfg.tcp_port6,
            dns_port4: cfg.dns_port4,
            dns_port6: cfg.dns_port6,
            _pad: 0,
        }
    }
    /// A cgroup the gate leaves alone.
    pub fn exempt() -> Self {
        Self {
            flags: GATE_F_EXEMPT,
            ..Default::default()
        }
    }
    pub fn is_exempt(&self) -> bool {
        self.flags & GATE_F_EXEMPT != 0
    }
    pub fn is_adopted(&self) -> bool {
        !self.is_exempt() && self.flags & GATE_F_ADOPTED != 0
    }
}

// SAFETY: plain #[repr(C)] structs of integers and byte arrays with explicit
// padding: every bit pattern is valid.
unsafe impl aya::Pod for DenyValue {}
unsafe impl aya::Pod for EgressConfig {}
unsafe impl aya::Pod for OrigDstKey {}
unsafe impl aya::Pod for OrigDstValue {}
unsafe impl aya::Pod for EgressEvent {}
unsafe impl aya::Pod for GateConfig {}
unsafe impl aya::Pod for GateEntry {}

/// `HOOK_*` of egress_maps.h.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Connect4 = 1,
    Connect6 = 2,
    Sendmsg4 = 3,
    Sendmsg6 = 4,
    SockCreate = 5,
    Setsockopt = 6,
    SkbEgress = 7,
}

impl Hook {
    pub const MAX: usize = 8;
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Connect4,
            2 => Self::Connect6,
            3 => Self::Sendmsg4,
            4 => Self::Sendmsg6,
            5 => Self::SockCreate,
            6 => Self::Setsockopt,
            7 => Self::SkbEgress,
            _ => return None,
        })
    }
    pub fn label(self) -> &'static str {
        match self {
            Self::Connect4 => "connect4",
            Self::Connect6 => "connect6",
            Self::Sendmsg4 => "sendmsg4",
            Self::Sendmsg6 => "sendmsg6",
            Self::SockCreate => "sock_create",
            Self::Setsockopt => "setsockopt",
            Self::SkbEgress => "skb_egress",
        }
    }
}

/// `REASON_MAX`: counters are indexed by hook * REASON_MAX + reason.
pub const REASON_MAX: usize = 40;

const AF_INET: u16 = libc::AF_INET as u16;

pub fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn from_v6(addr: [u8; 16], family: u16) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    match (family, v6.to_ipv4_mapped()) {
        (AF_INET, Some(v4)) => IpAddr::V4(v4),
        _ => IpAddr::V6(v6),
    }
}

fn comm_str(c: &[u8; 16]) -> &str {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    std::str::from_utf8(&c[..end]).unwrap_or("?")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{collections::HashMap, mem::offset_of, process::Command};

    /// Struct name -> (size, member name -> byte offset).
    type BtfStructs = HashMap<String, (usize, HashMap<String, usize>)>;

    /// An object's structs, from `bpftool btf dump`.
    fn btf_structs(object: &[u8], name: &str) -> Option<BtfStructs> {
        let obj = std::env::temp_dir().join(format!("{name}-btf-{}.o", std::process::id()));
        std::fs::write(&obj, object).ok()?;
        let out = Command::new("bpftool")
            .args(["btf", "dump", "file"])
            .arg(&obj)
            .args(["format", "raw"])
            .output();
        let _ = std::fs::remove_file(&obj);
        let out = out.ok()?;
        assert!(
            out.status.success(),
            "bpftool btf dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).ok()?;
        let mut structs = HashMap::new();
        let mut current: Option<(String, usize, HashMap<String, usize>)> = None;
        for line in text.lines() {
            if line.starts_with('[') {
                if let Some((n, s, m)) = current.take() {
                    structs.insert(n, (s, m));
                }
                // [12] STRUCT 'orig_dst_key' size=32 vlen=4
                let mut parts = line.split_whitespace();
                let _id = parts.next();
                if parts.next() == Some("STRUCT") {
                    let name = parts.next()?.trim_matches('\'').to_string();
                    let size = parts.next()?.strip_prefix("size=")?.parse().ok()?;
                    current = Some((name, size, HashMap::new()));
                }
            } else if let Some((_, _, members)) = current.as_mut() {
                // 	'port' type_id=7 bits_offset=192
                let t = line.trim();
                let name = t.split_whitespace().next()?.trim_matches('\'').to_string();
                let bits: usize = t
                    .split("bits_offset=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()?;
                members.insert(name, bits / 8);
            }
        }
        if let Some((n, s, m)) = current.take() {
            structs.insert(n, (s, m));
        }
        Some(structs)
    }

    macro_rules! check {
        ($btf:expr, $c:literal, $t:ty, [$($f:ident),*]) => {{
            let (size, members) = $btf.get($c).unwrap_or_else(|| panic!("struct {} not in BTF", $c));
            assert_eq!(*size, std::mem::size_of::<$t>(), "size of {}", $c);
            $(
                assert_eq!(members[stringify!($f)], offset_of!($t, $f), "{}.{}", $c, stringify!($f));
            )*
        }};
    }

    #[test]
    fn mirrors_match_the_object_btf() {
        let Some(btf) = btf_structs(crate::bpf::OBJECT, "egress") else {
            assert!(std::env::var("CI").is_err(), "bpftool is required under CI");
            eprintln!("skipping: bpftool not installed");
            return;
        };
        check!(btf, "deny_value", DenyValue, [reason, flags]);
        check!(
            btf,
            "egress_config",
            EgressConfig,
            [tcp_port4, tcp_port6, dns_port4, dns_port6, flags]
        );
        check!(btf, "orig_dst_key", OrigDstKey, [netns_cookie, addr, port]);
        check!(
            btf,
            "orig_dst_value",
            OrigDstValue,
            [addr, port, family, pid, tgid, cgroup_id, comm]
        );
        check!(
            btf,
            "egress_event",
            EgressEvent,
            [ts_ns, cgroup_id, pid, tgid, comm, addr, port, family, reason, hook, protocol]
        );
    }

    #[test]
    fn gate_mirrors_match_the_gate_object_btf() {
        let Some(btf) = btf_structs(crate::bpf::gate::OBJECT, "gate") else {
            assert!(std::env::var("CI").is_err(), "bpftool is required under CI");
            eprintln!("skipping: bpftool not installed");
            return;
        };
        check!(
            btf,
            "gate_config",
            GateConfig,
            [parent_id, parent_level, _pad]
        );
        check!(
            btf,
            "gate_entry",
            GateEntry,
            [flags, tcp_port4, tcp_port6, dns_port4, dns_port6, _pad]
        );
        // Its events are `struct egress_event` of the same header, checked above
        // against the object that has BTF for it.
    }

    #[test]
    fn gate_limits_match_egress_maps_h() {
        let h = include_str!("../../../egress-ebpf/egress_maps.h");
        let define = |name: &str| -> u32 {
            h.lines()
                .find_map(|l| {
                    let mut it = l.split_whitespace();
                    (it.next() == Some("#define") && it.next() == Some(name))
                        .then(|| it.next()?.parse().ok())?
                })
                .unwrap_or_else(|| panic!("{name} not in egress_maps.h"))
        };
        assert_eq!(define("GATE_F_ADOPTED"), GATE_F_ADOPTED);
        assert_eq!(define("GATE_F_EXEMPT"), GATE_F_EXEMPT);
        assert_eq!(define("GATE_MAX_DEPTH"), GATE_MAX_DEPTH);
        assert_eq!(define("REASON_MAX") as usize, REASON_MAX);
    }

    #[test]
    fn destination_keeps_the_family_the_client_used() {
        let mut v = OrigDstValue {
            port: 443,
            family: AF_INET,
            ..Default::default()
        };
        v.addr = "198.51.100.7"
            .parse::<std::net::Ipv4Addr>()
            .unwrap()
            .to_ipv6_mapped()
            .octets();
        assert_eq!(v.destination(), "198.51.100.7:443".parse().unwrap());
        v.family = libc::AF_INET6 as u16;
        assert_eq!(
            v.destination(),
            "[::ffff:198.51.100.7]:443".parse().unwrap()
        );
    }
}
