/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * egress_maps.h — every map's key/value layout and every verdict reason, in one place.
 *
 * The Rust mirror lives in egress-agent/src/bpf/maps.rs (structs) and
 * egress-agent/src/addr.rs (`Reason`). They change together: a test
 * (`bpf::maps::tests`) checks every struct's size and field offsets against the
 * BTF of the compiled object, so a drift fails the build's tests, not production.
 *
 * Conventions: addresses are stored in network byte order as 16 bytes (IPv4 as
 * IPv4-mapped IPv6, ::ffff:a.b.c.d) so that one key type serves both families;
 * ports are stored in HOST byte order (the Rust side never byte-swaps); padding
 * is explicit; booleans are __u32 flags.
 */
#ifndef EGRESS_MAPS_H
#define EGRESS_MAPS_H

/* ---- Verdict reasons -----------------------------------------------------
 * Mirrored by `egress_agent::addr::Reason` (same numbers). 1..=31 are address
 * classes (the values stored in the deny tries, produced from the one table in
 * addr.rs); 32.. are reasons only the kernel hooks produce.
 */
#define REASON_NONE             0
#define REASON_LOOPBACK         1  /* 127/8, 0/8, ::1, :: */
#define REASON_PRIVATE          2  /* RFC 1918 */
#define REASON_SHARED           3  /* 100.64/10 carrier-grade NAT */
#define REASON_LINK_LOCAL       4  /* 169.254/16, fe80::/10 */
#define REASON_METADATA         5  /* cloud metadata endpoints: never exemptable */
#define REASON_MULTICAST        6  /* 224/4, ff00::/8 */
#define REASON_BROADCAST        7  /* 255.255.255.255 */
#define REASON_RESERVED         8  /* 240/4, non-global-unicast IPv6, deprecated ranges */
#define REASON_DOCUMENTATION    9  /* TEST-NETs, 2001:db8::/32, 3fff::/20 */
#define REASON_BENCHMARKING     10 /* 198.18/15 */
#define REASON_PROTOCOL_ASSIGN  11 /* 192.0.0/24, 2001::/23 */
#define REASON_UNIQUE_LOCAL     12 /* fc00::/7 */
#define REASON_DISCARD          13 /* 100::/64 */
#define REASON_SITE_LOCAL       14 /* fec0::/10 (deprecated) */
#define REASON_TRANSLATION      15 /* translation prefixes with no decodable IPv4 */
#define REASON_ADDR_MAX         31

#define REASON_UDP_NOT_DNS      32 /* UDP to a port other than 53 (QUIC, tunnels) */
#define REASON_SOCKET_TYPE      33 /* raw, ICMP ping, SCTP, MPTCP ... sockets */
#define REASON_SOCKOPT          34 /* IP_OPTIONS / IPV6_RTHDR (source routing) */
#define REASON_SKB_DROP         35 /* egress backstop: a packet not to the agent */
#define REASON_NO_AGENT         36 /* config not set: the agent never configured this cgroup */
#define REASON_PROTOCOL         37 /* a socket type the connect hooks do not handle */
#define REASON_NOT_ADOPTED      38 /* gate: a cgroup under a gated parent the agent has not adopted */
#define REASON_NOT_ENFORCED     39 /* gate: adopted, but not redirected (its own programs are gone) */
#define REASON_MAX              40

/* Hooks, for events and counters. Mirrored by `egress_agent::bpf::maps::Hook`. */
#define HOOK_CONNECT4     1
#define HOOK_CONNECT6     2
#define HOOK_SENDMSG4     3
#define HOOK_SENDMSG6     4
#define HOOK_SOCK_CREATE  5
#define HOOK_SETSOCKOPT   6
#define HOOK_SKB_EGRESS   7
#define HOOK_MAX          8

/* ---- Deny set: LPM tries filled from egress-agent/src/addr.rs -------------- */
struct lpm_v4_key {
	__u32 prefixlen;
	__be32 addr;
};

struct lpm_v6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

#define DENY_F_NO_EXEMPT 1 /* allow_ranges cannot exempt this entry (metadata) */

struct deny_value {
	__u32 reason; /* REASON_* address class */
	__u32 flags;  /* DENY_F_* */
};

/* exempt_v4 / exempt_v6 (allow_ranges) values are a __u32 set to 1. */

/* ---- Per-attachment configuration: array map, one entry at index 0 ------- */
#define CFG_F_CONFIGURED 1 /* set by the agent once its listeners exist */

struct egress_config {
	__u16 tcp_port4; /* agent's TCP listener on 127.0.0.1, host order */
	__u16 tcp_port6; /* agent's TCP listener on [::1] */
	__u16 dns_port4; /* agent's DNS (UDP) listener on 127.0.0.1 */
	__u16 dns_port6; /* agent's DNS (UDP) listener on [::1] */
	__u32 flags;     /* CFG_F_* */
	__be32 svc_addr4; /* egress.internal: redirected before classification (0 = none) */
};

/* ---- Original destination ------------------------------------------------
 * connect4/6 write the client's original destination into eg_sock_state (a
 * preallocated hash keyed by socket cookie, entry deleted at sock_release);
 * the sockops program, at TCP_CONNECT_CB (after the
 * source port is chosen, before the SYN leaves), copies it into orig_dst keyed
 * by what the agent sees as the peer of the accepted socket.
 */
struct orig_dst_key {
	__u64 netns_cookie; /* network namespace of the client socket */
	__u8 addr[16];      /* client's local address (IPv4 as ::ffff:a.b.c.d) */
	__u16 port;         /* client's local port, host order */
	__u16 _pad[3];
};

struct orig_dst_value {
	__u8 addr[16];   /* original destination (IPv4 as ::ffff:a.b.c.d) */
	__u16 port;      /* original destination port, host order */
	__u16 family;    /* AF_INET or AF_INET6 as the client asked */
	__u32 pid;       /* thread id of the connect() caller */
	__u32 tgid;      /* process id of the connect() caller */
	__u32 _pad;
	__u64 cgroup_id; /* cgroup v2 id of the caller */
	char comm[16];
};

#define SOCK_F_REDIRECTED 1 /* connect() was rewritten to the agent: getpeername restores orig */
#define SOCK_F_DNS        2 /* the last UDP datagram went to the agent's DNS listener */
/* 4 was SOCK_F_PASSIVE: accepted sockets are marked in eg_passive instead. */
#define SOCK_F_UDP_HELD   8 /* UDP connect() to a port other than 53, left unredirected: the
			     * connect only picks a source address; a datagram sent is refused */

/* ---- DNS senders ---------------------------------------------------------
 * eg_dns_src: LRU hash, struct orig_dst_key -> struct orig_dst_value. The egress
 * backstop fills it for every DNS datagram a socket sends to the agent's DNS
 * listener, keyed by the datagram's source (netns, address, port) — what the
 * agent sees as the sender — with the attribution connect4/6 or sendmsg4/6 kept
 * in the socket's storage (pid, tgid, comm, cgroup, the resolver asked). The
 * agent reads it (without deleting: one socket sends A and AAAA at once) for
 * each question.
 */

/* Sockets eg_sock_state holds at once per container: twice the agent's
 * per-container connection cap (16,384), leaving room for DNS and UDP sockets. */
#define SOCK_STATE_MAX 32768

struct sock_state {
	struct orig_dst_value orig;
	__u64 netns_cookie;
	__u32 flags; /* SOCK_F_* */
	__u32 _pad;
};

/* ---- Events: ring buffer of kernel denials ------------------------------- */
struct egress_event {
	__u64 ts_ns;      /* bpf_ktime_get_ns() */
	__u64 cgroup_id;
	__u32 pid;
	__u32 tgid;
	char comm[16];
	__u8 addr[16];    /* destination (IPv4 as ::ffff:a.b.c.d); zero when not known */
	__u16 port;       /* destination port, host order */
	__u16 family;     /* AF_INET / AF_INET6 */
	__u16 reason;     /* REASON_* */
	__u8 hook;        /* HOOK_* */
	__u8 protocol;    /* IPPROTO_* (or the socket type for sock_create) */
};

/* Counters: per-CPU array indexed by hook * REASON_MAX + reason. */
#define COUNTER_SLOTS (HOOK_MAX * REASON_MAX)

/* ---- The gate (gate.bpf.c): one copy per gated parent cgroup ---------------
 * Mirrored by egress-agent/src/bpf/maps.rs (GateConfig, GateEntry). Events and
 * counters have the layouts above (struct egress_event, COUNTER_SLOTS).
 */

/* gate_config: array map, one entry at index 0, written before any link exists. */
struct gate_config {
	__u64 parent_id;    /* cgroup id of the gated parent */
	__u32 parent_level; /* its depth in the cgroup v2 hierarchy (the root is 0) */
	__u32 _pad;
};

#define GATE_F_ADOPTED 1 /* the container's own programs are attached and configured */
#define GATE_F_EXEMPT  2 /* left alone by the gate (an operator's explicit choice) */

/* gate_cgroups: hash map, cgroup id (__u64) -> entry. The entry of the shallowest
 * cgroup below the parent on a task's path governs the task. */
struct gate_entry {
	__u32 flags;     /* GATE_F_* */
	__u16 tcp_port4; /* the adopted container's listeners (egress_config), host order */
	__u16 tcp_port6;
	__u16 dns_port4;
	__u16 dns_port6;
	__u32 _pad;
};

/* Deepest cgroup below the parent the gate looks at: a task nested deeper whose
 * first GATE_MAX_DEPTH levels have no entry is not adopted. */
#define GATE_MAX_DEPTH 16

#endif /* EGRESS_MAPS_H */
