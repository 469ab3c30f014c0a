// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * egress.bpf.c — the kernel half of egress-agent. Attached to one container's
 * cgroup v2 (one loaded copy per cgroup, maps pinned under
 * <bpffs>/egress-agent/<cgroup id>/). See shared DESIGN.md §2.
 *
 * Every entry point is thin: it calls a worker that returns REASON_NONE (go on)
 * or the REASON_* that forbids the operation; the entry point counts and reports
 * the reason and turns it into SYS_REJECT, which the kernel returns as EPERM.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "egress_maps.h"
#include "sock_common.h"
#include "classify.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct egress_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eg_config SEC(".maps");

/* The state of every socket connect4/6 or sendmsg4/6 redirected or held,
 * keyed by socket cookie. Preallocated: an update on the connect path takes a
 * ready element from a per-CPU free list (bpf_sk_storage_get with F_CREATE
 * allocated per socket: 75 % of the cgroup programs' cost per redirected
 * connect()). Every such socket was made by socket(2), so its entry is deleted
 * by sock_release when it is closed; one container that fills it has its own
 * connects refused (REASON_NO_AGENT), nobody else's. Pinned like the others: a
 * link re-attached after a detach (bpf::reattach, possibly by a restarted
 * agent) is a program of a new load, and must share this state with the links
 * that stayed, or connect4's record would be invisible to sockops and
 * getpeername. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SOCK_STATE_MAX);
	__type(key, __u64);
	__type(value, struct sock_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eg_sock_state SEC(".maps");

/* Sockets the container accepted itself (its own servers), whose replies may
 * leave. Not on the connect path; in the socket's storage because such a child
 * can die unreleased (its listener closed before accept), which no map entry
 * would survive cleanly. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eg_passive SEC(".maps");

/* Sized for the 9,000-idle-connection target with room for churn; LRU so a
 * client that never completes its handshake cannot fill it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct orig_dst_key);
	__type(value, struct orig_dst_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eg_orig_dst SEC(".maps");

/* Who sent each DNS datagram (see egress_maps.h). Small: an entry is read
 * within microseconds of being written, and a port reused by another sender
 * overwrites it with that sender's datagram, before the agent reads it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct orig_dst_key);
	__type(value, struct orig_dst_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eg_dns_src SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eg_events SEC(".maps");

/* Never used at run time. Ring buffer records have no BTF type of their own,
 * so this typed map makes clang emit struct egress_event into the object's BTF,
 * where the Rust mirror's layout test can check it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct egress_event);
} eg_event_btf SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eg_counters SEC(".maps");

/* ---- helpers -------------------------------------------------------------- */

static __always_inline const struct egress_config *config_get(void)
{
	__u32 zero = 0;
	const struct egress_config *cfg = bpf_map_lookup_elem(&eg_config, &zero);

	/* Fail closed: until the agent has created its listeners and said so, there
	 * is nowhere safe to send a connection. */
	if (!cfg || !(cfg->flags & CFG_F_CONFIGURED))
		return 0;
	return cfg;
}

static __always_inline void count(__u8 hook, __u32 reason)
{
	__u32 slot = (__u32)hook * REASON_MAX + reason;
	__u64 *c;

	if (reason >= REASON_MAX)
		return;
	c = bpf_map_lookup_elem(&eg_counters, &slot);
	if (c)
		*c += 1; /* per-CPU: no atomics needed */
}

static __always_inline int is_v4_mapped(const __u8 *a)
{
	return !word(a, 0) && !word(a, 1) && word(a, 2) == 0x0000ffff;
}

/* Report a denial from a hook that runs in the calling task's context. */
static __always_inline void report(__u8 hook, __u32 reason, __u16 family, const __u8 *addr,
				   __u16 port, __u8 protocol)
{
	struct egress_event *e;
	__u64 pid_tgid;

	count(hook, reason);
	e = bpf_ringbuf_reserve(&eg_events, sizeof(*e), 0);
	if (!e)
		return; /* ring full: the counter above still records it */
	pid_tgid = bpf_get_current_pid_tgid();
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->pid = (__u32)pid_tgid;
	e->tgid = pid_tgid >> 32;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	if (addr)
		__builtin_memcpy(e->addr, addr, 16);
	else
		__builtin_memset(e->addr, 0, 16);
	e->port = port;
	e->family = family;
	e->reason = reason;
	e->hook = hook;
	e->protocol = protocol;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void fill_orig(struct sock_state *st, const __u8 *orig, __u16 port,
				      __u16 family, __u64 netns_cookie)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	__builtin_memcpy(st->orig.addr, orig, 16);
	st->orig.port = port;
	st->orig.family = family;
	st->orig.pid = (__u32)pid_tgid;
	st->orig.tgid = pid_tgid >> 32;
	st->orig.cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(st->orig.comm, sizeof(st->orig.comm));
	st->netns_cookie = netns_cookie;
}

/* Remember where the client wanted to go (eg_sock_state, by socket cookie).
 * Returns 0 when the table is full: the caller refuses, since a connection the
 * agent cannot attribute would be refused anyway. */
static __always_inline int remember(struct bpf_sock_addr *ctx, const __u8 *orig, __u16 port,
				    __u16 family, __u32 flag)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct sock_state *st, fresh = {};

	/* A DNS socket sends again and again: its entry is rewritten in place. */
	st = bpf_map_lookup_elem(&eg_sock_state, &cookie);
	if (st) {
		fill_orig(st, orig, port, family, bpf_get_netns_cookie(ctx));
		st->flags |= flag;
		return 1;
	}
	fill_orig(&fresh, orig, port, family, bpf_get_netns_cookie(ctx));
	fresh.flags = flag;
	return bpf_map_update_elem(&eg_sock_state, &cookie, &fresh, BPF_ANY) == 0;
}

/* A UDP connect() to a port other than 53 sends nothing: gRPC and others connect
 * only to learn which source address the kernel would use. It is let through,
 * unredirected, and the socket is marked: the first datagram it sends is refused
 * by the egress backstop (EPERM, so QUIC clients fall back to TCP at once) and
 * reported there with this attribution. Without storage it is refused here. */
static __always_inline __u32 hold_udp(struct bpf_sock_addr *ctx, const __u8 *orig, __u16 port,
				      __u16 family)
{
	if (!remember(ctx, orig, port, family, SOCK_F_UDP_HELD))
		return REASON_UDP_NOT_DNS;
	return REASON_NONE;
}

/* ---- connect4 / connect6 -------------------------------------------------- */

/*
 * Connected sockets. Port 53 (UDP and TCP) goes to the agent's DNS handling
 * before any classification: resolv.conf usually names a private or loopback
 * resolver. Other TCP is classified against the deny set and, if not denied,
 * rewritten to the agent's listener, which decides by name. Other UDP is refused
 * (QUIC clients fall back to TCP at once).
 */
static __always_inline __u32 __egress_connect4(struct bpf_sock_addr *ctx)
{
	const struct egress_config *cfg = config_get();
	__u16 dport = bpf_ntohs(ctx->user_port);
	__be32 daddr = ctx->user_ip4;
	__u8 orig[16];
	__u32 flags = SOCK_F_REDIRECTED;
	__u16 to;
	__u32 reason;

	if (!cfg)
		return REASON_NO_AGENT;
	if (ctx->type == SOCK_DGRAM) {
		/* glibc's getaddrinfo connects a UDP socket to port 0 of every
		 * candidate to learn its source address (RFC 6724 sorting). Such a
		 * connect carries nothing; whatever is later sent on the socket is
		 * dropped by the egress backstop. Let it be, unredirected. */
		if (dport == 0)
			return REASON_NONE;
		if (dport != DNS_PORT) {
			v4_to_mapped(orig, daddr);
			return hold_udp(ctx, orig, dport, AF_INET);
		}
		to = cfg->dns_port4;
		flags |= SOCK_F_DNS;
	} else if (ctx->type == SOCK_STREAM) {
		/* Port 53 (DNS over TCP) and the agent's own service address
		 * (egress.internal: proxy + status page) skip classification. */
		if (dport != DNS_PORT && !(cfg->svc_addr4 && daddr == cfg->svc_addr4)) {
			reason = classify4(daddr);
			if (reason)
				return reason;
		}
		to = cfg->tcp_port4;
	} else {
		return REASON_PROTOCOL;
	}
	if (!to)
		return REASON_NO_AGENT;
	v4_to_mapped(orig, daddr);
	if (!remember(ctx, orig, dport, AF_INET, flags))
		return REASON_NO_AGENT;
	ctx->user_ip4 = bpf_htonl(LOOPBACK4);
	ctx->user_port = bpf_htons(to);
	return REASON_NONE;
}

SEC("cgroup/connect4")
int egress_connect4(struct bpf_sock_addr *ctx)
{
	__u32 reason = __egress_connect4(ctx);
	__u8 a[16];

	if (reason == REASON_NONE)
		return SYS_PROCEED;
	v4_to_mapped(a, ctx->user_ip4);
	report(HOOK_CONNECT4, reason, AF_INET, a, bpf_ntohs(ctx->user_port), ctx->protocol);
	return SYS_REJECT;
}

/*
 * Same shape as connect4 (see the commentary there). An AF_INET6 TCP socket
 * connecting to ::ffff:a.b.c.d comes here, not to connect4: classify6 decodes it
 * and it is redirected to the agent's IPv4 listener through ::ffff:127.0.0.1, so a
 * container with IPv6 disabled still works.
 */
static __always_inline __u32 __egress_connect6(struct bpf_sock_addr *ctx, __u8 *daddr)
{
	const struct egress_config *cfg = config_get();
	__u16 dport = bpf_ntohs(ctx->user_port);
	__u32 flags = SOCK_F_REDIRECTED;
	int mapped = is_v4_mapped(daddr);
	__u8 target[16] = {};
	__u16 to;
	__u32 reason;

	if (!cfg)
		return REASON_NO_AGENT;
	if (ctx->type == SOCK_DGRAM) {
		if (dport == 0)
			return REASON_NONE; /* see __egress_connect4 */
		if (dport != DNS_PORT)
			return hold_udp(ctx, daddr, dport, AF_INET6);
		to = mapped ? cfg->dns_port4 : cfg->dns_port6;
		flags |= SOCK_F_DNS;
	} else if (ctx->type == SOCK_STREAM) {
		/* As in connect4: the service address skips classification, here as
		 * ::ffff:192.0.2.1 (an AF_INET6 socket, e.g. every JVM's). */
		if (dport != DNS_PORT && !(mapped && cfg->svc_addr4 && word(daddr, 3) == bpf_ntohl(cfg->svc_addr4))) {
			reason = classify6(daddr);
			if (reason)
				return reason;
		}
		to = mapped ? cfg->tcp_port4 : cfg->tcp_port6;
	} else {
		return REASON_PROTOCOL;
	}
	if (!to)
		return REASON_NO_AGENT;
	if (!remember(ctx, daddr, dport, AF_INET6, flags))
		return REASON_NO_AGENT;
	if (mapped)
		v4_to_mapped(target, bpf_htonl(LOOPBACK4));
	else
		target[15] = 1; /* ::1 */
	write_user_ip6(ctx, target);
	ctx->user_port = bpf_htons(to);
	return REASON_NONE;
}

SEC("cgroup/connect6")
int egress_connect6(struct bpf_sock_addr *ctx)
{
	__u8 daddr[16];
	__u32 reason;

	read_user_ip6(ctx, daddr);
	reason = __egress_connect6(ctx, daddr);
	if (reason == REASON_NONE)
		return SYS_PROCEED;
	report(HOOK_CONNECT6, reason, AF_INET6, daddr, bpf_ntohs(ctx->user_port), ctx->protocol);
	return SYS_REJECT;
}

/* ---- sendmsg4 / sendmsg6: unconnected UDP ---------------------------------- */

/*
 * Only port 53 may leave, and only to the agent's DNS listener; recvmsg4/6 then
 * restore the source address the client expects. An AF_INET6 socket sending to
 * ::ffff:a.b.c.d is seen here (sendmsg4), not in sendmsg6.
 */
static __always_inline __u32 __egress_sendmsg4(struct bpf_sock_addr *ctx)
{
	const struct egress_config *cfg = config_get();
	__u8 orig[16];

	if (bpf_ntohs(ctx->user_port) != DNS_PORT)
		return REASON_UDP_NOT_DNS;
	if (!cfg || !cfg->dns_port4)
		return REASON_NO_AGENT;
	v4_to_mapped(orig, ctx->user_ip4);
	if (!remember(ctx, orig, DNS_PORT, AF_INET, SOCK_F_DNS))
		return REASON_NO_AGENT;
	ctx->user_ip4 = bpf_htonl(LOOPBACK4);
	ctx->user_port = bpf_htons(cfg->dns_port4);
	return REASON_NONE;
}

SEC("cgroup/sendmsg4")
int egress_sendmsg4(struct bpf_sock_addr *ctx)
{
	__u32 reason = __egress_sendmsg4(ctx);
	__u8 a[16];

	if (reason == REASON_NONE)
		return SYS_PROCEED;
	v4_to_mapped(a, ctx->user_ip4);
	report(HOOK_SENDMSG4, reason, AF_INET, a, bpf_ntohs(ctx->user_port), IPPROTO_UDP);
	return SYS_REJECT;
}

static __always_inline __u32 __egress_sendmsg6(struct bpf_sock_addr *ctx, const __u8 *daddr)
{
	const struct egress_config *cfg = config_get();
	__u8 target[16] = {};

	if (bpf_ntohs(ctx->user_port) != DNS_PORT)
		return REASON_UDP_NOT_DNS;
	if (!cfg || !cfg->dns_port6)
		return REASON_NO_AGENT;
	if (!remember(ctx, daddr, DNS_PORT, AF_INET6, SOCK_F_DNS))
		return REASON_NO_AGENT;
	target[15] = 1;
	write_user_ip6(ctx, target);
	ctx->user_port = bpf_htons(cfg->dns_port6);
	return REASON_NONE;
}

SEC("cgroup/sendmsg6")
int egress_sendmsg6(struct bpf_sock_addr *ctx)
{
	__u8 daddr[16];
	__u32 reason;

	read_user_ip6(ctx, daddr);
	reason = __egress_sendmsg6(ctx, daddr);
	if (reason == REASON_NONE)
		return SYS_PROCEED;
	report(HOOK_SENDMSG6, reason, AF_INET6, daddr, bpf_ntohs(ctx->user_port), IPPROTO_UDP);
	return SYS_REJECT;
}

/* ---- recvmsg4 / recvmsg6: make DNS replies come from the resolver asked ---- */

static __always_inline struct sock_state *dns_state(struct bpf_sock_addr *ctx)
{
	struct sock_state *st;

	__u64 cookie = bpf_get_socket_cookie(ctx);

	st = bpf_map_lookup_elem(&eg_sock_state, &cookie);
	if (!st || !(st->flags & SOCK_F_DNS))
		return 0;
	return st;
}

SEC("cgroup/recvmsg4")
int egress_recvmsg4(struct bpf_sock_addr *ctx)
{
	const struct egress_config *cfg = config_get();
	struct sock_state *st = dns_state(ctx);
	__be32 orig;

	if (!cfg || !st)
		return SYS_PROCEED;
	if (ctx->user_ip4 != bpf_htonl(LOOPBACK4) || bpf_ntohs(ctx->user_port) != cfg->dns_port4)
		return SYS_PROCEED;
	__builtin_memcpy(&orig, st->orig.addr + 12, 4);
	ctx->user_ip4 = orig;
	ctx->user_port = bpf_htons(st->orig.port);
	return SYS_PROCEED; /* recvmsg programs must not reject */
}

SEC("cgroup/recvmsg6")
int egress_recvmsg6(struct bpf_sock_addr *ctx)
{
	const struct egress_config *cfg = config_get();
	struct sock_state *st = dns_state(ctx);
	__u8 src[16], lo6[16] = {}, lo4[16];
	__u16 sport = bpf_ntohs(ctx->user_port);

	if (!cfg || !st)
		return SYS_PROCEED;
	read_user_ip6(ctx, src);
	lo6[15] = 1;
	v4_to_mapped(lo4, bpf_htonl(LOOPBACK4));
	if (!((sport == cfg->dns_port6 && !__builtin_memcmp(src, lo6, 16)) ||
	      (sport == cfg->dns_port4 && !__builtin_memcmp(src, lo4, 16))))
		return SYS_PROCEED;
	write_user_ip6(ctx, st->orig.addr);
	ctx->user_port = bpf_htons(st->orig.port);
	return SYS_PROCEED;
}

/* ---- getpeername4 / getpeername6: the redirect is invisible --------------- */

static __always_inline struct sock_state *redirected_state(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct sock_state *st = bpf_map_lookup_elem(&eg_sock_state, &cookie);

	if (!st || !(st->flags & SOCK_F_REDIRECTED))
		return 0;
	return st;
}

SEC("cgroup/getpeername4")
int egress_getpeername4(struct bpf_sock_addr *ctx)
{
	struct sock_state *st;
	__be32 orig;

	st = redirected_state(ctx);
	if (!st)
		return SYS_PROCEED;
	__builtin_memcpy(&orig, st->orig.addr + 12, 4);
	ctx->user_ip4 = orig;
	ctx->user_port = bpf_htons(st->orig.port);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername6")
int egress_getpeername6(struct bpf_sock_addr *ctx)
{
	struct sock_state *st;

	st = redirected_state(ctx);
	if (!st)
		return SYS_PROCEED;
	write_user_ip6(ctx, st->orig.addr);
	ctx->user_port = bpf_htons(st->orig.port);
	return SYS_PROCEED;
}

/* ---- sockops: re-key the original destination by the client's 4-tuple ----- */

static __always_inline void rekey(struct bpf_sock_ops *skops)
{
	struct orig_dst_key key = {};
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct sock_state *st = bpf_map_lookup_elem(&eg_sock_state, &cookie);

	if (!st || !(st->flags & SOCK_F_REDIRECTED))
		return;
	key.netns_cookie = st->netns_cookie;
	if (skops->family == AF_INET) {
		v4_to_mapped(key.addr, skops->local_ip4);
	} else {
		__u32 w[4] = { CTX_READ32(skops->local_ip6[0]), CTX_READ32(skops->local_ip6[1]),
			       CTX_READ32(skops->local_ip6[2]), CTX_READ32(skops->local_ip6[3]) };
		__builtin_memcpy(key.addr, w, 16);
	}
	key.port = (__u16)skops->local_port; /* host order in bpf_sock_ops */
	bpf_map_update_elem(&eg_orig_dst, &key, &st->orig, BPF_ANY);
}

static __always_inline void mark_passive(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	__u32 *st;

	if (!sk)
		return;
	st = bpf_sk_storage_get(&eg_passive, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (st)
		*st = 1;
}

SEC("sockops")
int egress_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		rekey(skops);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		mark_passive(skops);
		break;
	}
	return SYS_PROCEED;
}

/* ---- sock_release: the socket's state goes with it ------------------------ */

SEC("cgroup/sock_release")
int egress_sock_release(struct bpf_sock *sk)
{
	__u64 cookie = bpf_get_socket_cookie(sk);

	bpf_map_delete_elem(&eg_sock_state, &cookie);
	return SYS_PROCEED;
}

/* ---- sock_create: plain TCP and UDP over IP only --------------------------- */

SEC("cgroup/sock_create")
int egress_sock_create(struct bpf_sock *sk)
{
	/* The hook runs for inet sockets only (AF_PACKET never comes here: the
	 * sandbox must not hold CAP_NET_RAW). By now protocol 0 has been resolved. */
	if (sk->type == SOCK_STREAM && sk->protocol == IPPROTO_TCP)
		return SYS_PROCEED;
	if (sk->type == SOCK_DGRAM && sk->protocol == IPPROTO_UDP)
		return SYS_PROCEED;
	report(HOOK_SOCK_CREATE, REASON_SOCKET_TYPE, sk->family, 0, 0, sk->protocol);
	return SYS_REJECT;
}

/* ---- setsockopt: no source routing ---------------------------------------- */

SEC("cgroup/setsockopt")
int egress_setsockopt(struct bpf_sockopt *ctx)
{
	int level = ctx->level, opt = ctx->optname;

	/* Either sends a redirected connection somewhere else. */
	if (is_source_route_opt(level, opt)) {
		report(HOOK_SETSOCKOPT, REASON_SOCKOPT, level == SOL_IP ? AF_INET : AF_INET6, 0,
		       (__u16)opt, (__u8)level);
		return SYS_REJECT;
	}
	return SYS_PROCEED;
}

/* ---- cgroup_skb/egress: the backstop -------------------------------------- */

static __always_inline int to_agent_port(const struct egress_config *cfg, __u16 dport)
{
	return dport == cfg->tcp_port4 || dport == cfg->tcp_port6 || dport == cfg->dns_port4 ||
	       dport == cfg->dns_port6;
}

static __always_inline int skb_to_agent(struct __sk_buff *skb, const struct egress_config *cfg)
{
	__u16 dport;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr iph;

		if (bpf_skb_load_bytes(skb, 0, &iph, sizeof(iph)))
			return 0;
		if (iph.daddr != bpf_htonl(LOOPBACK4))
			return 0;
		if (iph.protocol != IPPROTO_TCP && iph.protocol != IPPROTO_UDP)
			return 0;
		if (bpf_skb_load_bytes(skb, iph.ihl * 4 + 2, &dport, 2))
			return 0;
		return to_agent_port(cfg, bpf_ntohs(dport));
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		__u8 lo6[16] = {};

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			return 0;
		lo6[15] = 1;
		if (__builtin_memcmp(&ip6.daddr, lo6, 16))
			return 0;
		/* No extension headers: a routing header is exactly what we refuse. */
		if (ip6.nexthdr != IPPROTO_TCP && ip6.nexthdr != IPPROTO_UDP)
			return 0;
		if (bpf_skb_load_bytes(skb, sizeof(ip6) + 2, &dport, 2))
			return 0;
		return to_agent_port(cfg, bpf_ntohs(dport));
	}
	return 0;
}

/* Read the source (address, port) of a UDP datagram: 1 when it is one. */
static __always_inline int udp_source(struct __sk_buff *skb, struct orig_dst_key *key)
{
	__u16 sport;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr iph;

		if (bpf_skb_load_bytes(skb, 0, &iph, sizeof(iph)) || iph.protocol != IPPROTO_UDP)
			return 0;
		if (bpf_skb_load_bytes(skb, iph.ihl * 4, &sport, 2))
			return 0;
		v4_to_mapped(key->addr, iph.saddr);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)) || ip6.nexthdr != IPPROTO_UDP)
			return 0;
		if (bpf_skb_load_bytes(skb, sizeof(ip6), &sport, 2))
			return 0;
		__builtin_memcpy(key->addr, &ip6.saddr, 16);
	} else {
		return 0;
	}
	key->port = bpf_ntohs(sport);
	return 1;
}

/* A DNS datagram on its way to the agent: note who sent it (eg_dns_src), by
 * the source the agent will see. The attribution is the socket's, kept by
 * connect4/6 or sendmsg4/6 (this hook may run outside the sender's task). */
static __always_inline void note_dns_sender(struct __sk_buff *skb, const struct sock_state *st)
{
	struct orig_dst_key key = {};

	struct orig_dst_value *v;

	if (!udp_source(skb, &key))
		return;
	key.netns_cookie = st->netns_cookie;
	/* A socket asks again and again (A, AAAA, retries, the next name): its entry is
	 * rewritten in place only when the sender changed. An LRU update allocates a
	 * node and frees the old one, several times the cost of this lookup. */
	v = bpf_map_lookup_elem(&eg_dns_src, &key);
	if (v) {
		if (v->pid != st->orig.pid || v->tgid != st->orig.tgid ||
		    v->cgroup_id != st->orig.cgroup_id)
			__builtin_memcpy(v, &st->orig, sizeof(*v));
		return;
	}
	bpf_map_update_elem(&eg_dns_src, &key, &st->orig, BPF_ANY);
}

/* A datagram from a socket whose UDP connect() was let through (hold_udp):
 * reported as what it is, with the connect's attribution and destination. */
static __always_inline void report_held_udp(const struct sock_state *st)
{
	struct egress_event *e;

	count(HOOK_SKB_EGRESS, REASON_UDP_NOT_DNS);
	e = bpf_ringbuf_reserve(&eg_events, sizeof(*e), 0);
	if (!e)
		return;
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = st->orig.cgroup_id;
	e->pid = st->orig.pid;
	e->tgid = st->orig.tgid;
	__builtin_memcpy(e->comm, st->orig.comm, sizeof(e->comm));
	__builtin_memcpy(e->addr, st->orig.addr, 16);
	e->port = st->orig.port;
	e->family = st->orig.family;
	e->reason = REASON_UDP_NOT_DNS;
	e->hook = HOOK_SKB_EGRESS;
	e->protocol = IPPROTO_UDP;
	bpf_ringbuf_submit(e, 0);
}

/* The state of the (full) socket that sent skb, if connect4/6 or sendmsg4/6 kept one. */
static __always_inline struct sock_state *skb_state(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);

	return bpf_map_lookup_elem(&eg_sock_state, &cookie);
}

/*
 * Drop any packet that is not to the agent's listeners, whatever path put it
 * here (source routes, a future kernel path around the socket hooks). Replies on
 * connections the container accepted itself keep flowing.
 */
SEC("cgroup_skb/egress")
int egress_skb(struct __sk_buff *skb)
{
	const struct egress_config *cfg = config_get();
	struct bpf_sock *sk = skb->sk;
	struct sock_state *st = 0;
	struct egress_event *e;

	if (sk)
		sk = bpf_sk_fullsock(sk);
	if (sk && sk->state == BPF_TCP_LISTEN)
		return SYS_PROCEED; /* SYN-ACK of the container's own server */
	if (cfg && skb_to_agent(skb, cfg)) {
		/* Every packet of a redirected connection: only a DNS datagram needs
		 * its socket's state (who sent it), so TCP looks nothing up. */
		if (sk && sk->protocol == IPPROTO_UDP) {
			st = skb_state(skb);
			if (st && (st->flags & SOCK_F_DNS))
				note_dns_sender(skb, st);
		}
		return SYS_PROCEED;
	}
	if (sk) {
		if (bpf_sk_storage_get(&eg_passive, sk, 0, 0))
			return SYS_PROCEED;
		st = skb_state(skb);
		if (st && (st->flags & SOCK_F_UDP_HELD)) {
			report_held_udp(st);
			return SYS_REJECT;
		}
	}

	count(HOOK_SKB_EGRESS, REASON_SKB_DROP);
	e = bpf_ringbuf_reserve(&eg_events, sizeof(*e), 0);
	if (e) {
		/* Softirq context may not be the sender's task: no pid or comm here. */
		__builtin_memset(e, 0, sizeof(*e));
		e->ts_ns = bpf_ktime_get_ns();
		e->cgroup_id = bpf_skb_cgroup_id(skb);
		e->reason = REASON_SKB_DROP;
		e->hook = HOOK_SKB_EGRESS;
		e->family = skb->family;
		bpf_ringbuf_submit(e, 0);
	}
	return SYS_REJECT;
}
