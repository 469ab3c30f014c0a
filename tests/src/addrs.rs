//! Every address of the test topology, shared by the harness, `fakenet` and the tests.
//!
//! The fake internet lives in the `up-*` namespace; see `tests/README.md` for the diagram.

use std::net::{Ipv4Addr, Ipv6Addr};

/// HTTP/HTTPS echo servers ("public" web servers), TEST-NET-2.
pub const WEB1: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const WEB2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
pub const WEB3: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 12);
pub const WEB_V4: [Ipv4Addr; 3] = [WEB1, WEB2, WEB3];
/// IPv6 echo servers (documentation prefix).
pub const WEB1_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);
pub const WEB2_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x11);
pub const WEB3_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x12);
pub const WEB_V6: [Ipv6Addr; 3] = [WEB1_V6, WEB2_V6, WEB3_V6];
/// A second echo server in TEST-NET-3 (for `allow_ranges` tests).
pub const ALT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The fake DNS server (UDP and TCP 53).
pub const DNS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 53);
/// Fake cloud metadata servers (`:80`, return a fake IAM credential).
pub const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
pub const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
/// "Private" servers (`:80`, answer `private`).
pub const PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 10);
pub const PRIVATE_V6: Ipv6Addr = Ipv6Addr::new(0xfd66, 0, 0, 0, 0, 0, 0, 0x10);

/// Plain HTTP ports of the echo servers.
pub const HTTP_PORTS: [u16; 2] = [80, 8080];
/// HTTPS ports of the echo servers.
pub const HTTPS_PORTS: [u16; 2] = [443, 8443];
/// An HTTPS echo server that speaks HTTP/2 alone (ALPN `h2` only, on WEB1 and WEB1_V6): a client
/// that offers only `http/1.1` gets the `no_application_protocol` alert.
pub const H2_ONLY_PORT: u16 = 9443;
/// TCP echo (on WEB1 and WEB1_V6).
pub const TCP_ECHO_PORT: u16 = 7;
/// Banner-first server, `220 fake smtp` (on WEB1 and WEB1_V6).
pub const BANNER_PORT: u16 = 25;
/// UDP echo ports (on WEB1 and WEB1_V6), stand-ins for QUIC.
pub const UDP_ECHO_PORTS: [u16; 2] = [4433, 443];

/// Accepts, reads the request, then resets the connection (on WEB1 and WEB1_V6): an upstream that
/// fails mid-exchange.
pub const RESET_PORT: u16 = 81;
/// Accepts and reads, never answers (on WEB1 and WEB1_V6): an upstream that hangs.
pub const SILENT_PORT: u16 = 82;
/// Routed to a blackhole in up-* (SYNs and datagrams vanish, no ICMP): an upstream whose connect
/// times out. `blackhole.test` resolves to it.
pub const BLACKHOLE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 99);
pub const BLACKHOLE_NAME: &str = "blackhole.test";
/// Nothing answers here and up-* has no route for it (ICMP unreachable): a resolver that is down.
pub const DEAD_RESOLVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 54);

/// The banner the `:25` server sends first.
pub const BANNER: &str = "220 fake smtp\r\n";
/// The body the private server answers.
pub const PRIVATE_BODY: &str = "private";
/// A marker inside the metadata server's fake credential (assert it never reaches a client).
pub const METADATA_SECRET: &str = "FAKE-METADATA-SECRET-d0ntleak";

/// Link ctr <-> up: ctr side, up side (/30) and v6 (/64).
pub const CTR_LINK: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
pub const UP_CTR_LINK: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
pub const CTR_LINK_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 2);
pub const UP_CTR_LINK_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1);
/// Link ag <-> up.
pub const AG_LINK: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
pub const UP_AG_LINK: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
pub const AG_LINK_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x201, 0, 0, 0, 0, 0, 2);
pub const UP_AG_LINK_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x201, 0, 0, 0, 0, 0, 1);

/// The default zone of the fake DNS (names → A, AAAA). `rebind.test` and `*.exfil.test` are dynamic
/// (see `fakenet`).
pub const ZONE: &[(&str, &[Ipv4Addr], &[Ipv6Addr])] = &[
    ("allowed.test", &[WEB1], &[WEB1_V6]),
    ("www.allowed.test", &[WEB1], &[WEB1_V6]),
    ("api.allowed.test", &[WEB1], &[WEB1_V6]),
    ("other.test", &[WEB2], &[WEB2_V6]),
    ("cdn.test", &[WEB3], &[WEB3_V6]),
    ("alt.test", &[ALT], &[]),
    ("internal.test", &[PRIVATE], &[PRIVATE_V6]),
    ("metadata.test", &[METADATA], &[METADATA_V6]),
    (BLACKHOLE_NAME, &[BLACKHOLE], &[]),
];
/// Alternates WEB1 / PRIVATE per A query, TTL 0.
pub const REBIND_NAME: &str = "rebind.test";
/// Any name at or under this zone is answered (A → ALT, TTL 0): a tunnelling target.
pub const EXFIL_ZONE: &str = "exfil.test";
