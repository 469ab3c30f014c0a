// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * gate.bpf.c — the fail-closed gate on a parent cgroup (kubepods.slice,
 * machine.slice, a runtime's --cgroup-parent): under it, a cgroup the agent has
 * not adopted has no network. One loaded copy per gated parent, links and maps
 * pinned under <bpffs>/egress-agent/gate/<parent cgroup id>/. See DESIGN.md §12
 * and egress-agent/src/bpf/gate.rs.
 *
 * A guard beside each container's own programs (egress.bpf.c), not a
 * replacement. Links to a cgroup have BPF_F_ALLOW_MULTI semantics: for a socket
 * of a container below the parent, the container's programs run first, then
 * these; all run, any SYS_REJECT is EPERM, and they share one context, so the
 * gate sees the address the container's connect4 already rewrote.
 *
 * Each operation is judged by the entry (gate_cgroups) of the shallowest cgroup
 * below the parent on the path of the calling task (of the socket, for
 * packets), so a child cgroup made inside an adopted container is covered by the
 * container's entry and cannot bring one of its own:
 *   no entry → REASON_NOT_ADOPTED;
 *   EXEMPT   → untouched;
 *   ADOPTED  → only what the container's own programs let through: a connection
 *              redirected to that container's agent. Anything else means those
 *              programs are gone (a `bpftool link detach`): REASON_NOT_ENFORCED.
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

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gate_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} gate_config SEC(".maps");

/* Preallocated: adoption (a map update on a container's start path) never fails
 * for want of memory, and lookups take no allocator locks. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct gate_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} gate_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} gate_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} gate_counters SEC(".maps");

/* ---- whose operation is it ------------------------------------------------ */

static __always_inline const struct gate_config *config_get(void)
{
	__u32 zero = 0;
	const struct gate_config *cfg = bpf_map_lookup_elem(&gate_config, &zero);

	/* Fail closed: the agent writes the config before it creates any link, so
	 * an unset one means something is badly wrong. */
	if (!cfg || !cfg->parent_id)
		return 0;
	return cfg;
}

/*
 * The entry of the calling task: walk its ancestors from the parent's level + 1
 * down to its own level and take the first with an entry. A task outside the
 * parent (a socket of the subtree used by a process elsewhere) has none. The
 * check at the parent's own level also makes a wrong parent_level fail closed.
 */
static __always_inline const struct gate_entry *entry_of_task(void)
{
	const struct gate_config *cfg = config_get();
	__u32 base;

	if (!cfg)
		return 0;
	base = cfg->parent_level;
	if (bpf_get_current_ancestor_cgroup_id(base) != cfg->parent_id)
		return 0;
	for (int i = 1; i <= GATE_MAX_DEPTH; i++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(base + i);
		const struct gate_entry *e;

		if (!id)
			return 0; /* below the task's own level */
		e = bpf_map_lookup_elem(&gate_cgroups, &id);
		if (e)
			return e;
	}
	return 0;
}

/* Same walk for a packet, over the cgroup of its socket (fixed at socket()). */
static __always_inline const struct gate_entry *entry_of_skb(struct __sk_buff *skb)
{
	const struct gate_config *cfg = config_get();
	__u32 base;

	if (!cfg)
		return 0;
	base = cfg->parent_level;
	if (bpf_skb_ancestor_cgroup_id(skb, base) != cfg->parent_id)
		return 0;
	for (int i = 1; i <= GATE_MAX_DEPTH; i++) {
		__u64 id = bpf_skb_ancestor_cgroup_id(skb, base + i);
		const struct gate_entry *e;

		if (!id)
			return 0;
		e = bpf_map_lookup_elem(&gate_cgroups, &id);
		if (e)
			return e;
	}
	return 0;
}

/* REASON_NONE when the entry lets the operation go on without further checks
 * (exempt), REASON_NOT_ADOPTED when there is no usable entry, else 0xff: the
 * caller checks what an adopted container may do. */
#define GATE_CHECK_ADOPTED 0xff

static __always_inline __u32 triage(const struct gate_entry *e)
{
	if (!e)
		return REASON_NOT_ADOPTED;
	if (e->flags & GATE_F_EXEMPT)
		return REASON_NONE;
	if (!(e->flags & GATE_F_ADOPTED))
		return REASON_NOT_ADOPTED;
	return GATE_CHECK_ADOPTED;
}

/* ---- reporting ------------------------------------------------------------ */

static __always_inline void count(__u8 hook, __u32 reason)
{
	__u32 slot = (__u32)hook * REASON_MAX + reason;
	__u64 *c;

	if (reason >= REASON_MAX)
		return;
	c = bpf_map_lookup_elem(&gate_counters, &slot);
	if (c)
		*c += 1; /* per-CPU: no atomics needed */
}

/* A denial from a hook that runs in the calling task's context. The cgroup id
 * is the task's own: the one to adopt (or a child of it). */
static __always_inline void report(__u8 hook, __u32 reason, __u16 family, const __u8 *addr,
				   __u16 port, __u8 protocol)
{
	struct egress_event *e;
	__u64 pid_tgid;

	count(hook, reason);
	e = bpf_ringbuf_reserve(&gate_events, sizeof(*e), 0);
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

/*
 * An earlier program in the chain (the container's own, which runs first)
 * already refused this operation and reported why: refuse silently, without a
 * second event. bpf_get_retval() reads the chain's return value so far
 * (-EPERM once any program returned 0); the kernel offers it to every cgroup
 * hook the gate uses except cgroup_skb (see gate_skb).
 */
static __always_inline int already_refused(void)
{
	return bpf_get_retval() < 0;
}

/* ---- connect4 / connect6 -------------------------------------------------- */

static __always_inline int is_lo4(__be32 a)
{
	return a == bpf_htonl(LOOPBACK4);
}

/*
 * What an adopted container's connect4 lets through, after its rewrite: TCP to
 * its agent's listener on 127.0.0.1, connected UDP to its DNS listener, and the
 * UDP connect to port 0 that getaddrinfo makes (see __egress_connect4; datagrams
 * sent on such a socket are dropped at egress, here too).
 */
static __always_inline __u32 __gate_connect4(struct bpf_sock_addr *ctx)
{
	const struct gate_entry *e = entry_of_task();
	__u32 t = triage(e);
	__u16 port = bpf_ntohs(ctx->user_port);

	if (t != GATE_CHECK_ADOPTED)
		return t;
	if (ctx->type == SOCK_STREAM)
		return is_lo4(ctx->user_ip4) && port == e->tcp_port4 ? REASON_NONE
								     : REASON_NOT_ENFORCED;
	if (ctx->type == SOCK_DGRAM) {
		if (port == 0)
			return REASON_NONE;
		return is_lo4(ctx->user_ip4) && port == e->dns_port4 ? REASON_NONE
								     : REASON_NOT_ENFORCED;
	}
	return REASON_NOT_ENFORCED;
}

SEC("cgroup/connect4")
int gate_connect4(struct bpf_sock_addr *ctx)
{
	__u32 reason;
	__u8 a[16];

	if (already_refused())
		return SYS_REJECT;
	reason = __gate_connect4(ctx);
	if (reason == REASON_NONE)
		return SYS_PROCEED;
	v4_to_mapped(a, ctx->user_ip4);
	report(HOOK_CONNECT4, reason, AF_INET, a, bpf_ntohs(ctx->user_port), ctx->protocol);
	return SYS_REJECT;
}

/* ::1 (which = 6) or ::ffff:127.0.0.1 (which = 4), from the four words of the
 * context in memory order; 0 for anything else. */
static __always_inline int loopback6_kind(const __u8 *a)
{
	__u32 w[4];

	__builtin_memcpy(w, a, 16);
	if (w[0] || w[1])
		return 0;
	if (!w[2] && w[3] == bpf_htonl(1))
		return 6;
	if (w[2] == bpf_htonl(0x0000ffff) && w[3] == bpf_htonl(LOOPBACK4))
		return 4;
	return 0;
}

/* Same shape as __gate_connect4. An AF_INET6 socket connecting to
 * ::ffff:a.b.c.d comes here and was redirected to ::ffff:127.0.0.1 and the
 * agent's IPv4 ports (see __egress_connect6). */
static __always_inline __u32 __gate_connect6(struct bpf_sock_addr *ctx, const __u8 *daddr)
{
	const struct gate_entry *e = entry_of_task();
	__u32 t = triage(e);
	__u16 port = bpf_ntohs(ctx->user_port);
	int lo = loopback6_kind(daddr);

	if (t != GATE_CHECK_ADOPTED)
		return t;
	if (ctx->type == SOCK_STREAM) {
		if ((lo == 6 && port == e->tcp_port6) || (lo == 4 && port == e->tcp_port4))
			return REASON_NONE;
		return REASON_NOT_ENFORCED;
	}
	if (ctx->type == SOCK_DGRAM) {
		if (port == 0)
			return REASON_NONE;
		if ((lo == 6 && port == e->dns_port6) || (lo == 4 && port == e->dns_port4))
			return REASON_NONE;
		return REASON_NOT_ENFORCED;
	}
	return REASON_NOT_ENFORCED;
}

SEC("cgroup/connect6")
int gate_connect6(struct bpf_sock_addr *ctx)
{
	__u8 daddr[16];
	__u32 reason;

	if (already_refused())
		return SYS_REJECT;
	read_user_ip6(ctx, daddr);
	reason = __gate_connect6(ctx, daddr);
	if (reason == REASON_NONE)
		return SYS_PROCEED;
	report(HOOK_CONNECT6, reason, AF_INET6, daddr, bpf_ntohs(ctx->user_port), ctx->protocol);
	return SYS_REJECT;
}

/* ---- sendmsg4 / sendmsg6: unconnected UDP ---------------------------------- */

/* An adopted container's sendmsg4 sends port 53 to its DNS listener on
 * 127.0.0.1 and refuses everything else. */
static __always_inline __u32 __gate_sendmsg4(struct bpf_sock_addr *ctx)
{
	const struct gate_entry *e = entry_of_task();
	__u32 t = triage(e);

	if (t != GATE_CHECK_ADOPTED)
		return t;
	if (is_lo4(ctx->user_ip4) && bpf_ntohs(ctx->user_port) == e->dns_port4)
		return REASON_NONE;
	return REASON_NOT_ENFORCED;
}

SEC("cgroup/sendmsg4")
int gate_sendmsg4(struct bpf_sock_addr *ctx)
{
	__u32 reason;
	__u8 a[16];

	if (already_refused())
		return SYS_REJECT;
	reason = __gate_sendmsg4(ctx);
	if (reason == REASON_NONE)
		return SYS_PROCEED;
	v4_to_mapped(a, ctx->user_ip4);
	report(HOOK_SENDMSG4, reason, AF_INET, a, bpf_ntohs(ctx->user_port), IPPROTO_UDP);
	return SYS_REJECT;
}

/* sendmsg6 only ever redirects to [::1]:dns6 (a v4-mapped destination is seen by
 * sendmsg4). */
static __always_inline __u32 __gate_sendmsg6(struct bpf_sock_addr *ctx, const __u8 *daddr)
{
	const struct gate_entry *e = entry_of_task();
	__u32 t = triage(e);

	if (t != GATE_CHECK_ADOPTED)
		return t;
	if (loopback6_kind(daddr) == 6 && bpf_ntohs(ctx->user_port) == e->dns_port6)
		return REASON_NONE;
	return REASON_NOT_ENFORCED;
}

SEC("cgroup/sendmsg6")
int gate_sendmsg6(struct bpf_sock_addr *ctx)
{
	__u8 daddr[16];
	__u32 reason;

	if (already_refused())
		return SYS_REJECT;
	read_user_ip6(ctx, daddr);
	reason = __gate_sendmsg6(ctx, daddr);
	if (reason == REASON_NONE)
		return SYS_PROCEED;
	report(HOOK_SENDMSG6, reason, AF_INET6, daddr, bpf_ntohs(ctx->user_port), IPPROTO_UDP);
	return SYS_REJECT;
}

/* ---- sock_create ----------------------------------------------------------- */

/*
 * An inet socket made by a task without an entry is refused at socket(), so an
 * unadopted container has no network from its first syscall. A socket's cgroup
 * is the creating task's and never changes, so this also covers "create the
 * socket, then move the task": the socket was never made. An adopted container
 * may create what its own sock_create allows (plain TCP and UDP).
 */
static __always_inline __u32 __gate_sock_create(struct bpf_sock *sk)
{
	__u32 t = triage(entry_of_task());

	if (t != GATE_CHECK_ADOPTED)
		return t;
	if (sk->type == SOCK_STREAM && sk->protocol == IPPROTO_TCP)
		return REASON_NONE;
	if (sk->type == SOCK_DGRAM && sk->protocol == IPPROTO_UDP)
		return REASON_NONE;
	return REASON_NOT_ENFORCED;
}

SEC("cgroup/sock_create")
int gate_sock_create(struct bpf_sock *sk)
{
	__u32 reason;

	if (already_refused())
		return SYS_REJECT;
	reason = __gate_sock_create(sk);
	if (reason == REASON_NONE)
		return SYS_PROCEED;
	report(HOOK_SOCK_CREATE, reason, sk->family, 0, 0, sk->protocol);
	return SYS_REJECT;
}

/* ---- setsockopt: no source routing ---------------------------------------- */

/*
 * Not in the first plan, needed for the fail-closed promise: with an adopted
 * container's setsockopt and skb programs both detached, a connection that the
 * gate saw go to 127.0.0.1:P would leave through its first source-route hop.
 * The option is checked before the entry: this hook runs for every
 * setsockopt() of the subtree (unix sockets included), which must stay cheap
 * and must keep working for unadopted cgroups too.
 */
SEC("cgroup/setsockopt")
int gate_setsockopt(struct bpf_sockopt *ctx)
{
	int level = ctx->level, opt = ctx->optname;
	__u32 t;

	if (!is_source_route_opt(level, opt))
		return SYS_PROCEED;
	if (already_refused())
		return SYS_REJECT;
	t = triage(entry_of_task());
	if (t == REASON_NONE)
		return SYS_PROCEED;
	report(HOOK_SETSOCKOPT, t == GATE_CHECK_ADOPTED ? REASON_NOT_ENFORCED : t,
	       level == SOL_IP ? AF_INET : AF_INET6, 0, (__u16)opt, (__u8)level);
	return SYS_REJECT;
}

/* ---- cgroup_skb/egress ----------------------------------------------------- */

/*
 * What an adopted container's backstop would also let out, as far as the gate
 * must care: every TCP connect already passed the gate's connect hooks (and
 * source routes its setsockopt), so TCP may go; UDP only to the container's DNS
 * listener on loopback (a datagram sent on the port-0 "connected" socket of
 * getaddrinfo would otherwise leave); nothing else at all (raw, ping: refused
 * at socket() anyway).
 */
static __always_inline int adopted_may_send(struct __sk_buff *skb, const struct gate_entry *e)
{
	__u16 dport;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr iph;

		if (bpf_skb_load_bytes(skb, 0, &iph, sizeof(iph)))
			return 0;
		if (iph.protocol == IPPROTO_TCP)
			return 1;
		if (iph.protocol != IPPROTO_UDP || iph.daddr != bpf_htonl(LOOPBACK4))
			return 0;
		if (bpf_skb_load_bytes(skb, iph.ihl * 4 + 2, &dport, 2))
			return 0;
		return bpf_ntohs(dport) == e->dns_port4;
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			return 0;
		if (ip6.nexthdr == IPPROTO_TCP)
			return 1;
		if (ip6.nexthdr != IPPROTO_UDP || loopback6_kind((const __u8 *)&ip6.daddr) != 6)
			return 0;
		if (bpf_skb_load_bytes(skb, sizeof(ip6) + 2, &dport, 2))
			return 0;
		return bpf_ntohs(dport) == e->dns_port6;
	}
	return 0;
}

/*
 * Packets are judged by their socket's cgroup. A socket without an entry exists
 * only if it predates the gate or its cgroup's adoption was released: its
 * packets are dropped and reported. bpf_get_retval() is not offered to
 * cgroup_skb programs, so the gate cannot tell whether an adopted container's
 * backstop already dropped (and reported) a packet; since everything dropped
 * here for an adopted container would have been dropped there too, those drops
 * are only counted (REASON_NOT_ENFORCED), never reported twice. A detach is
 * reported by the agent's link check instead.
 */
SEC("cgroup_skb/egress")
int gate_skb(struct __sk_buff *skb)
{
	const struct gate_entry *e = entry_of_skb(skb);
	__u32 t = triage(e);
	struct egress_event *ev;

	if (t == REASON_NONE)
		return SYS_PROCEED;
	if (t == GATE_CHECK_ADOPTED) {
		if (adopted_may_send(skb, e))
			return SYS_PROCEED;
		count(HOOK_SKB_EGRESS, REASON_NOT_ENFORCED);
		return SYS_REJECT;
	}
	count(HOOK_SKB_EGRESS, t);
	ev = bpf_ringbuf_reserve(&gate_events, sizeof(*ev), 0);
	if (ev) {
		/* Softirq context may not be the sender's task: no pid or comm here. */
		__builtin_memset(ev, 0, sizeof(*ev));
		ev->ts_ns = bpf_ktime_get_ns();
		ev->cgroup_id = bpf_skb_cgroup_id(skb);
		ev->reason = t;
		ev->hook = HOOK_SKB_EGRESS;
		ev->family = skb->family;
		bpf_ringbuf_submit(ev, 0);
	}
	return SYS_REJECT;
}
