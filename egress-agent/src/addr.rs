//! Below every room: the one address classifier (smokescreen's `classifyAddr`, in spirit).
//!
//! Everything that decides whether an address may be reached goes through here: the kernel
//! deny tries are filled from [`SPECIAL_RANGES`] via [`deny_entries`], and the agent checks
//! every address it resolved itself with [`AddrPolicy::classify`]. The IPv6 decoding of
//! embedded IPv4 ([`embedded_ipv4`]) mirrors `classify6` in `egress-ebpf/classify.h` form
//! for form and in the same order, so the kernel and the agent never disagree.
//!
//! Semantics, exactly as the kernel's LPM tries: the longest (most specific) deny entry
//! containing the address gives the reason and whether `allow_ranges` may exempt it; an
//! exemption is any configured network containing the address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::OnceLock;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Why an address (or, from 32 on, a kernel hook) refused a destination.
///
/// Mirrors the `REASON_*` defines of `egress-ebpf/egress_maps.h`: same numbers, and the two
/// change together. 1..=31 are address classes (stored in the deny tries); 32.. are reasons
/// only the kernel hooks produce.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// 127/8, 0/8, ::1, ::
    Loopback = 1,
    /// RFC 1918
    Private = 2,
    /// 100.64/10 carrier-grade NAT
    Shared = 3,
    /// 169.254/16, fe80::/10
    LinkLocal = 4,
    /// Cloud metadata endpoints: never exemptable.
    Metadata = 5,
    /// 224/4, ff00::/8
    Multicast = 6,
    /// 255.255.255.255
    Broadcast = 7,
    /// 240/4, non-global-unicast IPv6, deprecated ranges
    Reserved = 8,
    /// TEST-NETs, 2001:db8::/32, 3fff::/20
    Documentation = 9,
    /// 198.18/15
    Benchmarking = 10,
    /// 192.0.0/24, 2001::/23
    ProtocolAssign = 11,
    /// fc00::/7
    UniqueLocal = 12,
    /// 100::/64
    Discard = 13,
    /// fec0::/10 (deprecated)
    SiteLocal = 14,
    /// Translation prefixes with no decodable IPv4.
    Translation = 15,
    /// UDP to a port other than 53 (QUIC, tunnels).
    UdpNotDns = 32,
    /// Raw, ICMP ping, SCTP, MPTCP ... sockets.
    SocketType = 33,
    /// IP_OPTIONS / IPV6_RTHDR (source routing).
    Sockopt = 34,
    /// Egress backstop: a packet not to the agent.
    SkbDrop = 35,
    /// The agent never configured this cgroup.
    NoAgent = 36,
    /// A socket type the connect hooks do not handle.
    Protocol = 37,
    /// Gate: a cgroup under a gated parent that the agent has not adopted.
    NotAdopted = 38,
    /// Gate: adopted, but the operation was not redirected to its agent (its programs are gone).
    NotEnforced = 39,
}

impl Reason {
    /// Every reason, in numeric order.
    pub const ALL: &'static [Reason] = &[
        Reason::Loopback,
        Reason::Private,
        Reason::Shared,
        Reason::LinkLocal,
        Reason::Metadata,
        Reason::Multicast,
        Reason::Broadcast,
        Reason::Reserved,
        Reason::Documentation,
        Reason::Benchmarking,
        Reason::ProtocolAssign,
        Reason::UniqueLocal,
        Reason::Discard,
        Reason::SiteLocal,
        Reason::Translation,
        Reason::UdpNotDns,
        Reason::SocketType,
        Reason::Sockopt,
        Reason::SkbDrop,
        Reason::NoAgent,
        Reason::Protocol,
        Reason::NotAdopted,
        Reason::NotEnforced,
    ];

    /// `REASON_ADDR_MAX` of egress_maps.h: address classes are `1..=ADDR_MAX`.
    pub const ADDR_MAX: u32 = 31;
    /// `REASON_MAX` of egress_maps.h: counters are indexed `hook * MAX + reason`.
    pub const MAX: u32 = 40;

    /// The number stored in the maps and events.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// The reason for a number from a map or an event; `None` for 0 (`REASON_NONE`) and
    /// for numbers this build does not know.
    pub fn from_u32(v: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.as_u32() == v)
    }

    /// True for address classes (the values of the deny tries).
    pub fn is_address_class(self) -> bool {
        self.as_u32() <= Self::ADDR_MAX
    }

    /// snake_case label for metrics and JSON.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Loopback => "loopback",
            Reason::Private => "private",
            Reason::Shared => "shared",
            Reason::LinkLocal => "link_local",
            Reason::Metadata => "metadata",
            Reason::Multicast => "multicast",
            Reason::Broadcast => "broadcast",
            Reason::Reserved => "reserved",
            Reason::Documentation => "documentation",
            Reason::Benchmarking => "benchmarking",
            Reason::ProtocolAssign => "protocol_assign",
            Reason::UniqueLocal => "unique_local",
            Reason::Discard => "discard",
            Reason::SiteLocal => "site_local",
            Reason::Translation => "translation",
            Reason::UdpNotDns => "udp_not_dns",
            Reason::SocketType => "socket_type",
            Reason::Sockopt => "sockopt",
            Reason::SkbDrop => "skb_drop",
            Reason::NoAgent => "no_agent",
            Reason::Protocol => "protocol",
            Reason::NotAdopted => "not_adopted",
            Reason::NotEnforced => "not_enforced",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Loopback => "loopback or unspecified address",
            Reason::Private => "private network address (RFC 1918)",
            Reason::Shared => "carrier-grade NAT shared address (RFC 6598)",
            Reason::LinkLocal => "link-local address",
            Reason::Metadata => "cloud metadata endpoint",
            Reason::Multicast => "multicast address",
            Reason::Broadcast => "broadcast address",
            Reason::Reserved => "reserved or non-global address",
            Reason::Documentation => "documentation address",
            Reason::Benchmarking => "benchmarking address",
            Reason::ProtocolAssign => "IETF protocol assignment address",
            Reason::UniqueLocal => "IPv6 unique local address",
            Reason::Discard => "IPv6 discard-only address",
            Reason::SiteLocal => "deprecated IPv6 site-local address",
            Reason::Translation => "local-use translation prefix",
            Reason::UdpNotDns => "UDP to a port other than 53",
            Reason::SocketType => "socket type not allowed",
            Reason::Sockopt => "socket option not allowed (source routing)",
            Reason::SkbDrop => "packet not addressed to the agent",
            Reason::NoAgent => "cgroup not configured by the agent",
            Reason::Protocol => "protocol not handled",
            Reason::NotAdopted => "cgroup not adopted under a gated parent",
            Reason::NotEnforced => "not redirected to the agent (enforcement detached)",
        })
    }
}

/// One row of the special-range table.
#[derive(Debug, Clone, Copy)]
pub struct Special {
    /// The network, in canonical CIDR form (parsed once, see `table()`).
    pub net: &'static str,
    /// The address class reported when this is the most specific match.
    pub reason: Reason,
    /// Whether `allow_ranges` may lift it (metadata and loopback never).
    pub exemptable: bool,
    /// Name in the IANA special-purpose registry, or the owner for metadata.
    pub registry_name: &'static str,
    /// Where it is defined.
    pub rfc: &'static str,
}

const fn sp(
    net: &'static str,
    reason: Reason,
    exemptable: bool,
    registry_name: &'static str,
    rfc: &'static str,
) -> Special {
    Special {
        net,
        reason,
        exemptable,
        registry_name,
        rfc,
    }
}

use Reason as R;

/// The deny set: every range an egress connection may not reach by address.
///
/// Loopback entries are not exemptable either: the agent's own listeners and the host's
/// services live there (proxy loops, THREATS.md B), and no test topology needs them.
///
/// IPv4 ranges of the IANA registry that are globally reachable are deliberately absent:
/// 192.31.196/24 (AS112-v4, RFC 7535), 192.52.193/24 (AMT, RFC 7450), 192.175.48/24
/// (Direct Delegation AS112, RFC 7534). The IPv4-mapped (::ffff:0:0/96), SIIT, NAT64
/// (64:ff9b::/96), 6to4 (2002::/16) and Teredo forms are decoded, not listed: see
/// [`embedded_ipv4`]. Note that 64:ff9b::/96 and ::/96 still fall under ::/3 (Reserved)
/// once their IPv4 is allowed, exactly as in the kernel.
#[rustfmt::skip]
pub static SPECIAL_RANGES: &[Special] = &[
    // ---- IPv4: IANA IPv4 Special-Purpose Address Registry (RFC 6890) ----
    // RFC 791 §3.2 "this network"; the kernel connects 0.0.0.0 to local listeners (THREATS A).
    sp("0.0.0.0/8", R::Loopback, false, "This network", "RFC 791"),
    sp("10.0.0.0/8", R::Private, true, "Private-Use", "RFC 1918"),
    sp("100.64.0.0/10", R::Shared, true, "Shared Address Space", "RFC 6598"),
    sp("127.0.0.0/8", R::Loopback, false, "Loopback", "RFC 1122"),
    sp("169.254.0.0/16", R::LinkLocal, true, "Link Local", "RFC 3927"),
    sp("172.16.0.0/12", R::Private, true, "Private-Use", "RFC 1918"),
    // Includes DS-Lite 192.0.0.0/29, 192.0.0.8/32, PCP/TURN anycast, NAT64 discovery.
    sp("192.0.0.0/24", R::ProtocolAssign, true, "IETF Protocol Assignments", "RFC 6890"),
    sp("192.0.2.0/24", R::Documentation, true, "Documentation (TEST-NET-1)", "RFC 5737"),
    sp("192.88.99.0/24", R::Reserved, true, "Deprecated 6to4 Relay Anycast", "RFC 7526"),
    sp("192.168.0.0/16", R::Private, true, "Private-Use", "RFC 1918"),
    sp("198.18.0.0/15", R::Benchmarking, true, "Benchmarking", "RFC 2544"),
    sp("198.51.100.0/24", R::Documentation, true, "Documentation (TEST-NET-2)", "RFC 5737"),
    sp("203.0.113.0/24", R::Documentation, true, "Documentation (TEST-NET-3)", "RFC 5737"),
    sp("224.0.0.0/4", R::Multicast, true, "Multicast", "RFC 5771"),
    sp("240.0.0.0/4", R::Reserved, true, "Reserved", "RFC 1112"),
    sp("255.255.255.255/32", R::Broadcast, true, "Limited Broadcast", "RFC 919"),
    // ---- IPv4 cloud metadata: never exemptable, even inside an exempted range ----
    // AWS, GCP, Azure, OCI, DigitalOcean, OpenStack instance metadata (IMDS).
    sp("169.254.169.254/32", R::Metadata, false, "Instance metadata (AWS, GCP, Azure, OCI, OpenStack)", "vendor"),
    // AWS Route 53 Resolver (VPC DNS) link-local address.
    sp("169.254.169.253/32", R::Metadata, false, "AWS VPC DNS resolver", "vendor"),
    // AWS Time Sync Service.
    sp("169.254.169.123/32", R::Metadata, false, "AWS Time Sync", "vendor"),
    // AWS ECS task metadata and task-role credentials.
    sp("169.254.170.2/32", R::Metadata, false, "AWS ECS task metadata", "vendor"),
    // AWS EKS Pod Identity Agent (credentials).
    sp("169.254.170.23/32", R::Metadata, false, "AWS EKS Pod Identity", "vendor"),
    // Tencent Cloud metadata (metadata.tencentyun.com).
    sp("169.254.0.23/32", R::Metadata, false, "Tencent Cloud metadata", "vendor"),
    // Alibaba Cloud metadata, inside 100.64/10.
    sp("100.100.100.200/32", R::Metadata, false, "Alibaba Cloud metadata", "vendor"),
    // Azure WireServer (a public-looking address).
    sp("168.63.129.16/32", R::Metadata, false, "Azure WireServer", "vendor"),
    // Oracle Cloud (Classic) metadata.
    sp("192.0.0.192/32", R::Metadata, false, "Oracle Cloud metadata", "vendor"),
    // ---- IPv6: IANA IPv6 Special-Purpose Address Registry (RFC 6890) ----
    sp("::/128", R::Loopback, false, "Unspecified Address", "RFC 4291"),
    sp("::1/128", R::Loopback, false, "Loopback Address", "RFC 4291"),
    sp("64:ff9b:1::/48", R::Translation, true, "IPv4-IPv6 Translat. (local use)", "RFC 8215"),
    sp("100::/64", R::Discard, true, "Discard-Only Address Block", "RFC 6666"),
    // Includes Teredo 2001::/32 (decoded first), ORCHID, AMT, AS112-v6.
    sp("2001::/23", R::ProtocolAssign, true, "IETF Protocol Assignments", "RFC 2928"),
    sp("2001:2::/48", R::Benchmarking, true, "Benchmarking", "RFC 5180"),
    sp("2001:db8::/32", R::Documentation, true, "Documentation", "RFC 3849"),
    sp("3fff::/20", R::Documentation, true, "Documentation", "RFC 9637"),
    sp("5f00::/16", R::Reserved, true, "Segment Routing (SRv6) SIDs", "RFC 9602"),
    sp("fc00::/7", R::UniqueLocal, true, "Unique-Local", "RFC 4193"),
    sp("fe80::/10", R::LinkLocal, true, "Link-Local Unicast", "RFC 4291"),
    sp("fec0::/10", R::SiteLocal, true, "Site-Local (deprecated)", "RFC 3879"),
    sp("ff00::/8", R::Multicast, true, "Multicast", "RFC 4291"),
    // "Global unicast 2000::/3 only": its complement, less specific than everything above.
    sp("::/3", R::Reserved, true, "Not global unicast", "RFC 4291"),
    sp("4000::/2", R::Reserved, true, "Not global unicast", "RFC 4291"),
    sp("8000::/1", R::Reserved, true, "Not global unicast", "RFC 4291"),
    // ---- IPv6 cloud metadata (AWS Nitro): never exemptable ----
    sp("fd00:ec2::254/128", R::Metadata, false, "AWS instance metadata (IPv6)", "vendor"),
    sp("fd00:ec2::23/128", R::Metadata, false, "AWS EKS Pod Identity (IPv6)", "vendor"),
    sp("fd00:ec2::123/128", R::Metadata, false, "AWS Time Sync (IPv6)", "vendor"),
];

#[derive(Debug, Clone, Copy)]
struct Entry<N> {
    net: N,
    reason: Reason,
    exemptable: bool,
}

struct Table {
    all: Vec<(IpNet, Reason, bool)>,
    /// Sorted by prefix length, longest first: the first containing entry is the LPM.
    v4: Vec<Entry<Ipv4Net>>,
    v6: Vec<Entry<Ipv6Net>>,
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut all = Vec::with_capacity(SPECIAL_RANGES.len());
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for s in SPECIAL_RANGES {
            // A static table, checked by `tests::table_parses`; dropping a row silently
            // would open a hole, so a typo must fail loudly.
            let net = IpNet::from_str(s.net).expect("SPECIAL_RANGES holds valid CIDR");
            all.push((net, s.reason, s.exemptable));
            match net {
                IpNet::V4(n) => v4.push(Entry {
                    net: n,
                    reason: s.reason,
                    exemptable: s.exemptable,
                }),
                IpNet::V6(n) => v6.push(Entry {
                    net: n,
                    reason: s.reason,
                    exemptable: s.exemptable,
                }),
            }
        }
        v4.sort_by_key(|e| std::cmp::Reverse(e.net.prefix_len()));
        v6.sort_by_key(|e| std::cmp::Reverse(e.net.prefix_len()));
        Table { all, v4, v6 }
    })
}

/// The deny set for the BPF loader: `(network, reason, exemptable)` for every row of
/// [`SPECIAL_RANGES`], in table order, with the table's prefix lengths. A row that is not
/// exemptable gets `DENY_F_NO_EXEMPT`.
pub fn deny_entries() -> impl Iterator<Item = (IpNet, Reason, bool)> {
    table().all.iter().copied()
}

/// The outcome of classifying one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not in the deny set.
    Allowed,
    /// In the deny set, but lifted by this `allow_ranges` network (the most specific one).
    Exempted(IpNet),
    /// In the deny set. `range` is the most specific deny entry; `embedded` is the IPv4
    /// address decoded from an IPv6 one when that IPv4 is what was denied.
    Denied {
        reason: Reason,
        range: IpNet,
        embedded: Option<Ipv4Addr>,
    },
}

impl Verdict {
    /// True unless denied.
    pub fn is_allowed(&self) -> bool {
        !matches!(self, Verdict::Denied { .. })
    }

    /// The address class when denied.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Verdict::Denied { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Allowed => f.write_str("allowed"),
            Verdict::Exempted(net) => write!(f, "allowed: exempted by allow_ranges {net}"),
            Verdict::Denied {
                reason,
                range,
                embedded: None,
            } => write!(f, "denied: {reason} ({range})"),
            Verdict::Denied {
                reason,
                range,
                embedded: Some(v4),
            } => write!(f, "denied: embedded IPv4 {v4} is a {reason} ({range})"),
        }
    }
}

/// Errors building an [`AddrPolicy`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("invalid network {input:?}: expected an address or CIDR such as 203.0.113.0/24")]
    InvalidRange { input: String },
    #[error("network {input:?} has host bits set: did you mean {suggestion}?")]
    HostBitsSet { input: String, suggestion: IpNet },
}

/// The configured exemptions (`allow_ranges`) applied over the built-in deny set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrPolicy {
    /// As configured (order kept, for the loader and `policy show`).
    exempt: Vec<IpNet>,
    /// Longest prefix first.
    exempt4: Vec<Ipv4Net>,
    exempt6: Vec<Ipv6Net>,
}

impl AddrPolicy {
    /// Parses `allow_ranges`. Accepts CIDR (`203.0.113.0/24`) and bare addresses (a host
    /// route); rejects anything else, including non-canonical spellings and networks with
    /// host bits set (an ambiguous intent). Exemptions covering metadata or loopback are
    /// accepted: those entries simply stay denied.
    pub fn new<I, S>(ranges: I) -> Result<Self, AddrError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut nets = Vec::new();
        for r in ranges {
            nets.push(parse_range(r.as_ref())?);
        }
        Ok(Self::from_nets(nets))
    }

    /// From already-parsed networks (host bits are cleared).
    pub fn from_nets(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let exempt: Vec<IpNet> = nets.into_iter().map(|n| n.trunc()).collect();
        let mut exempt4: Vec<Ipv4Net> = Vec::new();
        let mut exempt6: Vec<Ipv6Net> = Vec::new();
        for n in &exempt {
            match n {
                IpNet::V4(n) => exempt4.push(*n),
                IpNet::V6(n) => exempt6.push(*n),
            }
        }
        exempt4.sort_by_key(|e| std::cmp::Reverse(e.prefix_len()));
        exempt6.sort_by_key(|e| std::cmp::Reverse(e.prefix_len()));
        Self {
            exempt,
            exempt4,
            exempt6,
        }
    }

    /// The exemptions as configured, for the loader's exempt tries.
    pub fn exempt_nets(&self) -> &[IpNet] {
        &self.exempt
    }

    /// Classifies one address, exactly as the kernel's `classify4` / `classify6` would.
    pub fn classify(&self, ip: IpAddr) -> Verdict {
        match ip {
            IpAddr::V4(v4) => self.classify4(v4),
            IpAddr::V6(v6) => self.classify6(v6),
        }
    }

    /// `classify4` of classify.h.
    pub fn classify4(&self, ip: Ipv4Addr) -> Verdict {
        let Some(e) = table().v4.iter().find(|e| e.net.contains(&ip)) else {
            return Verdict::Allowed;
        };
        if e.exemptable {
            if let Some(x) = self.exempt4.iter().find(|x| x.contains(&ip)) {
                return Verdict::Exempted(IpNet::V4(*x));
            }
        }
        Verdict::Denied {
            reason: e.reason,
            range: IpNet::V4(e.net),
            embedded: None,
        }
    }

    /// `classify6_table` of classify.h: the IPv6 table alone, no decoding.
    pub fn classify6_table(&self, ip: Ipv6Addr) -> Verdict {
        let Some(e) = table().v6.iter().find(|e| e.net.contains(&ip)) else {
            return Verdict::Allowed;
        };
        if e.exemptable {
            if let Some(x) = self.exempt6.iter().find(|x| x.contains(&ip)) {
                return Verdict::Exempted(IpNet::V6(*x));
            }
        }
        Verdict::Denied {
            reason: e.reason,
            range: IpNet::V6(e.net),
            embedded: None,
        }
    }

    fn classify4_embedded(&self, v4: Ipv4Addr) -> Verdict {
        match self.classify4(v4) {
            Verdict::Denied { reason, range, .. } => Verdict::Denied {
                reason,
                range,
                embedded: Some(v4),
            },
            other => other,
        }
    }

    /// `classify6` of classify.h: decode embedded IPv4 first (same forms, same order).
    pub fn classify6(&self, ip: Ipv6Addr) -> Verdict {
        if let Some(emb) = embedded_ipv4(&ip) {
            match emb.form {
                // The packet reaches the IPv4 host: IPv4 semantics only.
                EmbeddedForm::Mapped | EmbeddedForm::Siit | EmbeddedForm::Nat64 => {
                    return self.classify4_embedded(emb.addrs[0]);
                }
                // :: and ::1 are loopback in the table; other ::a.b.c.d are compatible.
                EmbeddedForm::Compatible => {
                    let t = self.classify6_table(ip);
                    if !t.is_allowed() {
                        return t;
                    }
                    return self.classify4_embedded(emb.addrs[0]);
                }
                // Deny if any candidate is denied; otherwise fall through to the table.
                EmbeddedForm::Nat64Local | EmbeddedForm::SixToFour | EmbeddedForm::Teredo => {
                    for v4 in emb.addrs() {
                        let v = self.classify4_embedded(*v4);
                        if !v.is_allowed() {
                            return v;
                        }
                    }
                }
            }
        }
        self.classify6_table(ip)
    }
}

fn parse_range(s: &str) -> Result<IpNet, AddrError> {
    let t = s.trim();
    if let Ok(net) = IpNet::from_str(t) {
        if net.trunc() != net {
            return Err(AddrError::HostBitsSet {
                input: s.to_string(),
                suggestion: net.trunc(),
            });
        }
        return Ok(net);
    }
    match IpAddr::from_str(t) {
        Ok(ip) => Ok(IpNet::from(ip)),
        Err(_) => Err(AddrError::InvalidRange {
            input: s.to_string(),
        }),
    }
}

/// How an IPv4 address is carried inside an IPv6 one (see classify.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddedForm {
    /// `::ffff:0:0/96` IPv4-mapped.
    Mapped,
    /// `::/96` IPv4-compatible (deprecated); also matches `::` and `::1`.
    Compatible,
    /// `::ffff:0:0:0/96` SIIT (RFC 6145).
    Siit,
    /// `64:ff9b::/96` NAT64 well-known prefix (RFC 6052).
    Nat64,
    /// `64:ff9b:1::/48` NAT64 local use (RFC 8215): four candidate layouts.
    Nat64Local,
    /// `2002::/16` 6to4 (RFC 3056).
    SixToFour,
    /// `2001::/32` Teredo (RFC 4380): server, then de-obfuscated client.
    Teredo,
}

/// IPv4 candidates decoded from an IPv6 address, in the kernel's checking order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Embedded {
    pub form: EmbeddedForm,
    addrs: [Ipv4Addr; 4],
    len: usize,
}

impl Embedded {
    fn new(form: EmbeddedForm, list: &[Ipv4Addr]) -> Self {
        let mut addrs = [Ipv4Addr::UNSPECIFIED; 4];
        let len = list.len().min(4);
        addrs[..len].copy_from_slice(&list[..len]);
        Self { form, addrs, len }
    }

    /// The candidates: one for most forms, two for Teredo, four for NAT64 local use.
    pub fn addrs(&self) -> &[Ipv4Addr] {
        &self.addrs[..self.len]
    }
}

/// Decodes IPv4 embedded in an IPv6 address, exactly like `classify6` in classify.h
/// (same forms, same order, same byte positions).
pub fn embedded_ipv4(ip: &Ipv6Addr) -> Option<Embedded> {
    let a = ip.octets();
    let at = |i0: usize, i1: usize, i2: usize, i3: usize| Ipv4Addr::new(a[i0], a[i1], a[i2], a[i3]);
    let word = |i: usize| u32::from_be_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]);
    let (w0, w1, w2) = (word(0), word(1), word(2));
    let last = at(12, 13, 14, 15);

    if w0 == 0 && w1 == 0 && w2 == 0x0000_ffff {
        return Some(Embedded::new(EmbeddedForm::Mapped, &[last]));
    }
    if w0 == 0 && w1 == 0 && w2 == 0 {
        return Some(Embedded::new(EmbeddedForm::Compatible, &[last]));
    }
    if w0 == 0 && w1 == 0 && w2 == 0xffff_0000 {
        return Some(Embedded::new(EmbeddedForm::Siit, &[last]));
    }
    if w0 == 0x0064_ff9b {
        if w1 == 0 && w2 == 0 {
            return Some(Embedded::new(EmbeddedForm::Nat64, &[last]));
        }
        if (w1 >> 16) == 0x0001 {
            // RFC 6052 §2.2 layouts: byte 8 (bits 64..71) is always skipped.
            return Some(Embedded::new(
                EmbeddedForm::Nat64Local,
                &[
                    at(6, 7, 9, 10),   // /48
                    at(7, 9, 10, 11),  // /56
                    at(9, 10, 11, 12), // /64
                    last,              // /96
                ],
            ));
        }
        return None;
    }
    if (w0 >> 16) == 0x2002 {
        return Some(Embedded::new(EmbeddedForm::SixToFour, &[at(2, 3, 4, 5)]));
    }
    if w0 == 0x2001_0000 {
        let client = Ipv4Addr::from(!u32::from(last));
        return Some(Embedded::new(
            EmbeddedForm::Teredo,
            &[at(4, 5, 6, 7), client],
        ));
    }
    None
}

/// Parses every spelling of an IP address that the C resolver (`inet_aton`, `getaddrinfo`)
/// would accept, so that IP literals can be refused in SNI, Host and names.
///
/// IPv4: one to four parts (`a`, `a.b` = 8.24 bits, `a.b.c` = 8.8.16, `a.b.c.d`), each
/// decimal, octal (leading `0`) or hex (`0x`), an optional trailing dot, and anything after
/// ASCII whitespace ignored (as `inet_aton` does). IPv6: plain, bracketed (`[::1]`), with a
/// zone (`fe80::1%eth0`, `%25eth0`). Errs on the side of recognising an address: the
/// result is used to refuse, never to dial.
pub fn parse_ip_lenient(s: &str) -> Option<IpAddr> {
    let s = s.trim_matches(|c: char| c.is_ascii_whitespace());
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner.strip_suffix(']')?;
        return parse_v6_zoned(inner).map(IpAddr::V6);
    }
    if s.contains(':') {
        return parse_v6_zoned(s).map(IpAddr::V6);
    }
    parse_v4_lenient(s).map(IpAddr::V4)
}

fn parse_v6_zoned(s: &str) -> Option<Ipv6Addr> {
    let (addr, zone) = match s.split_once('%') {
        Some((a, z)) => (a, Some(z)),
        None => (s, None),
    };
    if zone.is_some_and(str::is_empty) {
        return None;
    }
    Ipv6Addr::from_str(addr).ok()
}

fn parse_v4_lenient(s: &str) -> Option<Ipv4Addr> {
    // inet_aton stops at the first whitespace and ignores what follows.
    let s = match s.find(|c: char| c.is_ascii_whitespace()) {
        Some(i) => &s[..i],
        None => s,
    };
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() {
        return None;
    }
    let mut parts = [0u32; 4];
    let mut n = 0usize;
    for p in s.split('.') {
        if n == 4 {
            return None;
        }
        parts[n] = parse_v4_part(p)?;
        n += 1;
    }
    let v = match n {
        1 => parts[0],
        2 if parts[0] <= 0xff && parts[1] <= 0xff_ffff => (parts[0] << 24) | parts[1],
        3 if parts[0] <= 0xff && parts[1] <= 0xff && parts[2] <= 0xffff => {
            (parts[0] << 24) | (parts[1] << 16) | parts[2]
        }
        4 if parts.iter().all(|p| *p <= 0xff) => {
            (parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]
        }
        _ => return None,
    };
    Some(Ipv4Addr::from(v))
}

/// One part in C notation: `0x..` hex, `0..` octal, else decimal; at most 32 bits.
fn parse_v4_part(p: &str) -> Option<u32> {
    let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
        (h, 16)
    } else if p.len() > 1 && p.starts_with('0') {
        (&p[1..], 8)
    } else {
        (p, 10)
    };
    if digits.is_empty() && radix != 16 {
        return None;
    }
    let mut v: u32 = 0;
    for c in digits.chars() {
        let d = c.to_digit(radix)?;
        v = v.checked_mul(radix)?.checked_add(d)?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        IpAddr::from_str(s).expect("test address")
    }
    fn net(s: &str) -> IpNet {
        IpNet::from_str(s).expect("test net")
    }
    fn none() -> AddrPolicy {
        AddrPolicy::default()
    }
    fn reason_of(p: &AddrPolicy, s: &str) -> Option<Reason> {
        p.classify(ip(s)).reason()
    }

    /// (address, expected reason or None for allowed), with no exemptions.
    fn check(cases: &[(&str, Option<Reason>)]) {
        let p = none();
        for (a, want) in cases {
            assert_eq!(reason_of(&p, a), *want, "{a}: {}", p.classify(ip(a)));
        }
    }

    #[test]
    fn reason_numbers_match_egress_maps_h() {
        // Parse the header itself so a drift fails here.
        let h = include_str!("../../egress-ebpf/egress_maps.h");
        let mut seen = 0;
        for line in h.lines() {
            let mut it = line.split_whitespace();
            if it.next() != Some("#define") {
                continue;
            }
            let (Some(name), Some(num)) = (it.next(), it.next()) else {
                continue;
            };
            let Some(name) = name.strip_prefix("REASON_") else {
                continue;
            };
            let Ok(num) = num.parse::<u32>() else {
                continue;
            };
            match name {
                "NONE" => assert_eq!(Reason::from_u32(num), None),
                "ADDR_MAX" => assert_eq!(num, Reason::ADDR_MAX),
                "MAX" => assert_eq!(num, Reason::MAX),
                _ => {
                    let r = Reason::from_u32(num).unwrap_or_else(|| panic!("no Reason for {name}"));
                    assert_eq!(r.label().to_ascii_uppercase(), name, "{name}={num}");
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, Reason::ALL.len());
        for r in Reason::ALL {
            assert_eq!(Reason::from_u32(r.as_u32()), Some(*r));
            assert!(!r.to_string().is_empty());
            assert_eq!(r.is_address_class(), r.as_u32() <= 31);
        }
        assert_eq!(Reason::from_u32(0), None);
        assert_eq!(Reason::from_u32(16), None);
        assert_eq!(Reason::from_u32(u32::MAX), None);
    }

    #[test]
    fn table_parses_and_has_no_duplicates() {
        let entries: Vec<_> = deny_entries().collect();
        assert_eq!(entries.len(), SPECIAL_RANGES.len());
        for (i, (n, r, _)) in entries.iter().enumerate() {
            assert_eq!(n.trunc(), *n, "{n} has host bits");
            assert_eq!(
                n.to_string(),
                SPECIAL_RANGES[i].net,
                "non-canonical spelling"
            );
            assert!(r.is_address_class());
            for (m, _, _) in &entries[i + 1..] {
                assert_ne!(n, m, "duplicate {n}");
            }
        }
        // Fits the tries (max_entries 512 each).
        assert!(entries.len() < 512);
        // Exactly the metadata and loopback rows are not exemptable.
        for (n, r, ex) in &entries {
            let want = !matches!(r, Reason::Metadata | Reason::Loopback);
            assert_eq!(*ex, want, "{n}");
        }
        let meta = entries.iter().filter(|e| e.1 == Reason::Metadata).count();
        assert_eq!(meta, 12);
    }

    #[test]
    fn ipv4_registry_edges() {
        use Reason::*;
        check(&[
            // RFC 791 "this network": loopback by design.
            ("0.0.0.0", Some(Loopback)),
            ("0.255.255.255", Some(Loopback)),
            ("1.0.0.0", None),
            // RFC 1918
            ("9.255.255.255", None),
            ("10.0.0.0", Some(Private)),
            ("10.255.255.255", Some(Private)),
            ("11.0.0.0", None),
            ("172.15.255.255", None),
            ("172.16.0.0", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("172.32.0.0", None),
            ("192.167.255.255", None),
            ("192.168.0.0", Some(Private)),
            ("192.168.255.255", Some(Private)),
            ("192.169.0.0", None),
            // RFC 6598 shared
            ("100.63.255.255", None),
            ("100.64.0.0", Some(Shared)),
            ("100.127.255.255", Some(Shared)),
            ("100.128.0.0", None),
            // RFC 1122 loopback
            ("126.255.255.255", None),
            ("127.0.0.0", Some(Loopback)),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.255", Some(Loopback)),
            ("128.0.0.0", None),
            // RFC 3927 link local
            ("169.253.255.255", None),
            ("169.254.0.0", Some(LinkLocal)),
            ("169.254.255.255", Some(LinkLocal)),
            ("169.255.0.0", None),
            // RFC 6890 protocol assignments
            ("191.255.255.255", None),
            ("192.0.0.0", Some(ProtocolAssign)),
            ("192.0.0.255", Some(ProtocolAssign)),
            ("192.0.1.0", None),
            // RFC 5737 documentation
            ("192.0.1.255", None),
            ("192.0.2.0", Some(Documentation)),
            ("192.0.2.255", Some(Documentation)),
            ("192.0.3.0", None),
            ("198.51.99.255", None),
            ("198.51.100.0", Some(Documentation)),
            ("198.51.100.255", Some(Documentation)),
            ("198.51.101.0", None),
            ("203.0.112.255", None),
            ("203.0.113.0", Some(Documentation)),
            ("203.0.113.255", Some(Documentation)),
            ("203.0.114.0", None),
            // RFC 7526 deprecated 6to4 relay anycast
            ("192.88.98.255", None),
            ("192.88.99.0", Some(Reserved)),
            ("192.88.99.255", Some(Reserved)),
            ("192.88.100.0", None),
            // RFC 2544 benchmarking
            ("198.17.255.255", None),
            ("198.18.0.0", Some(Benchmarking)),
            ("198.19.255.255", Some(Benchmarking)),
            ("198.20.0.0", None),
            // RFC 5771 multicast, RFC 1112 reserved, RFC 919 broadcast
            ("223.255.255.255", None),
            ("224.0.0.0", Some(Multicast)),
            ("239.255.255.255", Some(Multicast)),
            ("240.0.0.0", Some(Reserved)),
            ("255.255.255.254", Some(Reserved)),
            ("255.255.255.255", Some(Broadcast)),
            // Public addresses.
            ("8.8.8.8", None),
            ("93.184.216.34", None),
            ("1.1.1.1", None),
        ]);
    }

    #[test]
    fn metadata_edges() {
        use Reason::*;
        check(&[
            ("169.254.169.254", Some(Metadata)),
            ("169.254.169.253", Some(Metadata)),
            ("169.254.169.255", Some(LinkLocal)),
            ("169.254.169.123", Some(Metadata)),
            ("169.254.170.2", Some(Metadata)),
            ("169.254.170.3", Some(LinkLocal)),
            ("169.254.170.23", Some(Metadata)),
            ("169.254.0.23", Some(Metadata)),
            ("100.100.100.200", Some(Metadata)),
            ("100.100.100.201", Some(Shared)),
            // Public-looking: only the /32.
            ("168.63.129.16", Some(Metadata)),
            ("168.63.129.15", None),
            ("168.63.129.17", None),
            ("192.0.0.192", Some(Metadata)),
            ("192.0.0.193", Some(ProtocolAssign)),
            ("fd00:ec2::254", Some(Metadata)),
            ("fd00:ec2::23", Some(Metadata)),
            ("fd00:ec2::123", Some(Metadata)),
            ("fd00:ec2::255", Some(UniqueLocal)),
            // Metadata hidden in IPv6 forms.
            ("::ffff:169.254.169.254", Some(Metadata)),
            ("64:ff9b::a9fe:a9fe", Some(Metadata)),
            ("2002:a9fe:a9fe::1", Some(Metadata)),
        ]);
    }

    #[test]
    fn ipv6_registry_edges() {
        use Reason::*;
        check(&[
            // RFC 4291 unspecified / loopback (loopback by design), then ::/3 reserved.
            ("::", Some(Loopback)),
            ("::1", Some(Loopback)),
            ("::2", Some(Reserved)),
            // RFC 6666 discard
            ("100::", Some(Discard)),
            ("100::ffff:ffff:ffff:ffff", Some(Discard)),
            ("100:0:0:1::", Some(Reserved)),
            ("ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
            // RFC 8215 local-use translation
            // (embedded candidates are checked first: all-zero decodes to 0.0.0.0, loopback)
            ("64:ff9b:1::", Some(Loopback)),
            ("64:ff9b:1:808:8:808:808:808", Some(Translation)),
            ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", Some(Broadcast)),
            ("64:ff9b:0:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
            ("64:ff9b:2::", Some(Reserved)),
            ("64:ff9b:2::808:808", Some(Reserved)),
            // Global unicast 2000::/3 only.
            ("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
            ("2000::", None),
            ("3fff:1000::", None),
            ("3ffe:ffff::1", None),
            ("4000::", Some(Reserved)),
            ("7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
            ("8000::", Some(Reserved)),
            ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
            // RFC 2928 protocol assignments (Teredo inside: see embedded tests).
            ("2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
            ("2001:1::1", Some(ProtocolAssign)),
            (
                "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",
                Some(ProtocolAssign),
            ),
            ("2001:200::", None),
            // RFC 5180 benchmarking
            ("2001:2::", Some(Benchmarking)),
            ("2001:2:0:ffff:ffff:ffff:ffff:ffff", Some(Benchmarking)),
            ("2001:2:1::", Some(ProtocolAssign)),
            // RFC 3849 / RFC 9637 documentation
            ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", None),
            ("2001:db8::", Some(Documentation)),
            (
                "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
                Some(Documentation),
            ),
            ("2001:db9::", None),
            ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
            ("3fff::", Some(Documentation)),
            (
                "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff",
                Some(Documentation),
            ),
            ("3fff:1000::", None),
            // RFC 9602 SRv6 SIDs (inside 4000::/2 anyway)
            ("5f00::", Some(Reserved)),
            // RFC 4193 unique local
            ("fc00::", Some(UniqueLocal)),
            ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(UniqueLocal)),
            ("fe00::", Some(Reserved)),
            // RFC 4291 link local, RFC 3879 site local
            ("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
            ("fe80::", Some(LinkLocal)),
            ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(LinkLocal)),
            ("fec0::", Some(SiteLocal)),
            ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(SiteLocal)),
            // RFC 4291 multicast
            ("ff00::", Some(Multicast)),
            ("ff02::1", Some(Multicast)),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Multicast)),
            // Public.
            ("2606:4700:4700::1111", None),
            ("2a00:1450:4001:80b::200e", None),
        ]);
    }

    #[test]
    fn embedded_forms_decode_like_classify_h() {
        let e = |s: &str| match ip(s) {
            IpAddr::V6(v6) => embedded_ipv4(&v6),
            IpAddr::V4(_) => None,
        };
        let v4 = |s: &str| Ipv4Addr::from_str(s).expect("v4");
        let one = |s: &str| e(s).map(|x| (x.form, x.addrs().to_vec()));
        use EmbeddedForm::*;
        assert_eq!(one("::ffff:10.1.2.3"), Some((Mapped, vec![v4("10.1.2.3")])));
        assert_eq!(one("::10.1.2.3"), Some((Compatible, vec![v4("10.1.2.3")])));
        assert_eq!(one("::1"), Some((Compatible, vec![v4("0.0.0.1")])));
        assert_eq!(one("::ffff:0:10.1.2.3"), Some((Siit, vec![v4("10.1.2.3")])));
        assert_eq!(
            one("64:ff9b::10.1.2.3"),
            Some((Nat64, vec![v4("10.1.2.3")]))
        );
        assert_eq!(one("64:ff9b:0:1::10.1.2.3"), None);
        assert_eq!(one("64:ff9b:2::"), None);
        // Bytes 6..=15 = aa bb | cc (byte 8, skipped) | 00 dd ee ff 11 22 33.
        assert_eq!(
            one("64:ff9b:1:aabb:cc00:ddee:ff11:2233"),
            Some((
                Nat64Local,
                vec![
                    v4("170.187.0.221"), // /48: 6,7,9,10
                    v4("187.0.221.238"), // /56: 7,9,10,11
                    v4("0.221.238.255"), // /64: 9,10,11,12
                    v4("255.17.34.51"),  // /96: 12..15
                ]
            ))
        );
        assert_eq!(
            one("2002:0a01:0203::1"),
            Some((SixToFour, vec![v4("10.1.2.3")]))
        );
        // Teredo: server 65.54.227.120, client 192.0.2.45 obfuscated (RFC 4380 example).
        assert_eq!(
            one("2001:0:4136:e378:8000:63bf:3fff:fdd2"),
            Some((Teredo, vec![v4("65.54.227.120"), v4("192.0.2.45")]))
        );
        assert_eq!(one("2001:1::1"), None);
        assert_eq!(one("2606:4700::1"), None);
    }

    #[test]
    fn embedded_classification() {
        let p = none();
        let c = |s: &str| p.classify(ip(s));
        let v4 = |s: &str| Ipv4Addr::from_str(s).expect("v4");
        // Mapped: IPv4 semantics only, public is allowed (no v6 table).
        assert_eq!(c("::ffff:8.8.8.8"), Verdict::Allowed);
        assert_eq!(
            c("::ffff:127.0.0.1"),
            Verdict::Denied {
                reason: Reason::Loopback,
                range: net("127.0.0.0/8"),
                embedded: Some(v4("127.0.0.1"))
            }
        );
        assert_eq!(c("::ffff:0.0.0.0").reason(), Some(Reason::Loopback));
        // SIIT likewise.
        assert_eq!(c("::ffff:0:8.8.8.8"), Verdict::Allowed);
        assert_eq!(c("::ffff:0:10.0.0.1").reason(), Some(Reason::Private));
        // Compatible: table first (:: and ::1 loopback, then ::/3 reserved).
        assert_eq!(
            c("::10.0.0.1"),
            Verdict::Denied {
                reason: Reason::Reserved,
                range: net("::/3"),
                embedded: None
            }
        );
        assert_eq!(c("::8.8.8.8").reason(), Some(Reason::Reserved));
        // NAT64 well known: IPv4 semantics only (the translator reaches that IPv4 host).
        assert_eq!(
            c("64:ff9b::10.0.0.1"),
            Verdict::Denied {
                reason: Reason::Private,
                range: net("10.0.0.0/8"),
                embedded: Some(v4("10.0.0.1"))
            }
        );
        assert_eq!(c("64:ff9b::8.8.8.8"), Verdict::Allowed);
        // NAT64 local use: any denied layout denies.
        // /48 layout: bytes 6,7,9,10 = 0a 00 01 00 -> 10.0.1.0.
        assert_eq!(c("64:ff9b:1:a00:1::").reason(), Some(Reason::Private));
        // /56 layout of 127.0.0.1 (byte 7, then 9..11), /48 candidate 8.127.0.0 public.
        assert_eq!(
            c("64:ff9b:1:87f:0:1::"),
            Verdict::Denied {
                reason: Reason::Loopback,
                range: net("127.0.0.0/8"),
                embedded: Some(v4("127.0.0.1"))
            }
        );
        // /64 layout of 169.254.169.254: bytes 9..12 (byte 8 skipped); /48 and /56
        // candidates (8.8.169.254, 8.169.254.169) are public.
        assert_eq!(
            c("64:ff9b:1:808:a9:fea9:fe00:0").reason(),
            Some(Reason::Metadata)
        );
        // /96 layout of 192.168.1.1, other layouts decode to public addresses.
        assert_eq!(
            c("64:ff9b:1:0808:0008:0808:c0a8:0101").reason(),
            Some(Reason::Private)
        );
        // All candidates public: the table's translation entry.
        assert_eq!(
            c("64:ff9b:1:0808:0008:0808:0808:0808").reason(),
            Some(Reason::Translation)
        );
        // 6to4: embedded, then table (2002::/16 itself is not listed).
        assert_eq!(c("2002:0808:0808::1"), Verdict::Allowed);
        assert_eq!(c("2002:c0a8:0101::1").reason(), Some(Reason::Private));
        assert_eq!(c("2002:7f00:1::").reason(), Some(Reason::Loopback));
        // Teredo: server then client; then 2001::/23 in the table.
        assert_eq!(
            c("2001:0:a00:1:8000:63bf:3fff:fdd2").reason(),
            Some(Reason::Private)
        );
        // Client 10.0.0.1 xor 0xff = f5ff:fffe.
        assert_eq!(
            c("2001:0:808:808::f5ff:fffe"),
            Verdict::Denied {
                reason: Reason::Private,
                range: net("10.0.0.0/8"),
                embedded: Some(v4("10.0.0.1"))
            }
        );
        // RFC 4380's example client is 192.0.2.45: documentation.
        assert_eq!(
            c("2001:0:4136:e378:8000:63bf:3fff:fdd2").reason(),
            Some(Reason::Documentation)
        );
        // Both public (client 8.8.8.8 = f7f7:f7f7): the table's 2001::/23.
        assert_eq!(
            c("2001:0:808:808::f7f7:f7f7").reason(),
            Some(Reason::ProtocolAssign)
        );
    }

    #[test]
    fn exemptions_lift_exemptable_entries_only() {
        let p = AddrPolicy::new(["203.0.113.0/24", "10.0.0.0/8", "169.254.0.0/16", "fd00::/8"])
            .expect("valid");
        let c = |s: &str| p.classify(ip(s));
        assert_eq!(c("203.0.113.7"), Verdict::Exempted(net("203.0.113.0/24")));
        assert_eq!(c("203.0.114.7"), Verdict::Allowed);
        assert_eq!(c("198.51.100.7").reason(), Some(Reason::Documentation));
        assert_eq!(c("10.1.2.3"), Verdict::Exempted(net("10.0.0.0/8")));
        assert_eq!(c("169.254.1.1"), Verdict::Exempted(net("169.254.0.0/16")));
        // Metadata inside an exempted range stays denied.
        assert_eq!(c("169.254.169.254").reason(), Some(Reason::Metadata));
        assert_eq!(c("169.254.170.2").reason(), Some(Reason::Metadata));
        assert_eq!(c("fd00:ec2::254").reason(), Some(Reason::Metadata));
        assert_eq!(c("fd12::1"), Verdict::Exempted(net("fd00::/8")));
        assert_eq!(c("fc00::1").reason(), Some(Reason::UniqueLocal));
        // Embedded forms see the v4 exemptions (as the kernel's classify4 does).
        assert_eq!(c("::ffff:10.1.2.3"), Verdict::Exempted(net("10.0.0.0/8")));
        assert_eq!(c("2002:0a01:0203::1"), Verdict::Allowed);
        assert_eq!(c("::ffff:169.254.169.254").reason(), Some(Reason::Metadata));
        // An exemption of a metadata address itself does nothing.
        let p = AddrPolicy::new(["169.254.169.254/32", "168.63.129.16", "0.0.0.0/0"]).expect("ok");
        assert_eq!(
            p.classify(ip("169.254.169.254")).reason(),
            Some(Reason::Metadata)
        );
        assert_eq!(
            p.classify(ip("168.63.129.16")).reason(),
            Some(Reason::Metadata)
        );
        // Loopback is not exemptable either (the agent's own listeners).
        assert_eq!(p.classify(ip("127.0.0.1")).reason(), Some(Reason::Loopback));
        assert_eq!(p.classify(ip("0.0.0.0")).reason(), Some(Reason::Loopback));
        assert_eq!(
            p.classify(ip("10.0.0.1")),
            Verdict::Exempted(net("0.0.0.0/0"))
        );
        // Most specific exemption is reported.
        let p = AddrPolicy::new(["10.0.0.0/8", "10.1.0.0/16"]).expect("ok");
        assert_eq!(
            p.classify(ip("10.1.2.3")),
            Verdict::Exempted(net("10.1.0.0/16"))
        );
        // Exempting TEST-NET-3 does not touch its neighbours or other TEST-NETs.
        let p = AddrPolicy::new(["198.51.100.0/24"]).expect("ok");
        assert!(p.classify(ip("198.51.100.0")).is_allowed());
        assert!(p.classify(ip("198.51.100.255")).is_allowed());
        assert!(!p.classify(ip("192.0.2.1")).is_allowed());
        // Exempting 2000::/3-complement ranges is honoured (v6 table).
        let p = AddrPolicy::new(["2001:db8::/32"]).expect("ok");
        assert_eq!(
            p.classify(ip("2001:db8::1")),
            Verdict::Exempted(net("2001:db8::/32"))
        );
        assert!(p.classify(ip("2001:db9::1")).is_allowed());
        assert!(!p.classify(ip("3fff::1")).is_allowed());
    }

    #[test]
    fn exemption_parsing() {
        assert_eq!(
            AddrPolicy::new(["203.0.113.5"])
                .expect("host")
                .exempt_nets(),
            &[net("203.0.113.5/32")]
        );
        assert_eq!(
            AddrPolicy::new(["2001:db8::1"])
                .expect("host")
                .exempt_nets(),
            &[net("2001:db8::1/128")]
        );
        for bad in [
            "",
            "example.com",
            "10.0.0.0/33",
            "10.0.0/8",
            "0x0a.0.0.0/8",
            "::/129",
            "1.2.3.4/",
        ] {
            assert!(
                matches!(AddrPolicy::new([bad]), Err(AddrError::InvalidRange { .. })),
                "{bad:?}"
            );
        }
        let err = AddrPolicy::new(["10.1.2.3/8"]).expect_err("host bits");
        assert_eq!(
            err.to_string(),
            "network \"10.1.2.3/8\" has host bits set: did you mean 10.0.0.0/8?"
        );
    }

    #[test]
    fn verdict_display() {
        let p = AddrPolicy::new(["10.0.0.0/8"]).expect("ok");
        assert_eq!(p.classify(ip("8.8.8.8")).to_string(), "allowed");
        assert_eq!(
            p.classify(ip("10.0.0.1")).to_string(),
            "allowed: exempted by allow_ranges 10.0.0.0/8"
        );
        assert_eq!(
            p.classify(ip("::ffff:127.0.0.1")).to_string(),
            "denied: embedded IPv4 127.0.0.1 is a loopback or unspecified address (127.0.0.0/8)"
        );
    }

    #[test]
    fn lenient_parser_accepts_c_resolver_spellings() {
        let v4 = |s: &str| Some(IpAddr::V4(Ipv4Addr::from_str(s).expect("v4")));
        let cases: &[(&str, Option<IpAddr>)] = &[
            ("127.0.0.1", v4("127.0.0.1")),
            ("127.1", v4("127.0.0.1")),
            ("127.0.1", v4("127.0.0.1")),
            ("2130706433", v4("127.0.0.1")),
            ("0x7f000001", v4("127.0.0.1")),
            ("0X7F000001", v4("127.0.0.1")),
            ("017700000001", v4("127.0.0.1")),
            ("0177.0.0.01", v4("127.0.0.1")),
            ("0x7f.0x0.0x0.0x1", v4("127.0.0.1")),
            ("0x7f.1", v4("127.0.0.1")),
            ("127.0.0.1.", v4("127.0.0.1")),
            ("127.1.", v4("127.0.0.1")),
            ("169.254.43518", v4("169.254.169.254")),
            ("0251.0376.0251.0376", v4("169.254.169.254")),
            ("0xa9fea9fe", v4("169.254.169.254")),
            ("0", v4("0.0.0.0")),
            ("00", v4("0.0.0.0")),
            ("0x", v4("0.0.0.0")),
            ("4294967295", v4("255.255.255.255")),
            ("0000000000000000000000000000000000000010.1", v4("8.0.0.1")),
            ("1.2.3.4 trailing", v4("1.2.3.4")),
            (" 10.0.0.1 ", v4("10.0.0.1")),
            ("::1", Some(ip("::1"))),
            ("[::1]", Some(ip("::1"))),
            ("::ffff:127.0.0.1", Some(ip("::ffff:127.0.0.1"))),
            ("fe80::1%eth0", Some(ip("fe80::1"))),
            ("[fe80::1%25eth0]", Some(ip("fe80::1"))),
            // Not addresses.
            ("4294967296", None),
            ("99999999999999999999999999", None),
            ("0x100000000", None),
            ("256.0.0.1", None),
            ("1.256.0.1", None),
            ("1.2.65536", None),
            ("1.16777216", None),
            ("08.0.0.1", None),
            ("09", None),
            ("0xg", None),
            ("1.2.3.4.5", None),
            ("1..2", None),
            ("1.2.3.4..", None),
            (".1.2.3", None),
            ("", None),
            (".", None),
            ("-1", None),
            ("+1", None),
            ("example.com", None),
            ("1.2.3.com", None),
            ("[::1", None),
            ("::1]", None),
            ("[127.0.0.1]", None),
            ("fe80::1%", None),
            (":::", None),
            ("١٢٧.0.0.1", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_ip_lenient(s), *want, "{s:?}");
        }
    }

    #[test]
    fn lenient_parser_never_panics() {
        // Deterministic junk over the interesting alphabet.
        let alphabet = b"0123456789abcdefxX.:[]%  \t";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 24) as usize;
            let s: String = (0..len)
                .map(|i| alphabet[((x >> (i % 8 * 8)) as usize + i) % alphabet.len()] as char)
                .collect();
            let _ = parse_ip_lenient(&s);
        }
    }
}
