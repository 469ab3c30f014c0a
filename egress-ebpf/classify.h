/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * classify.h — the kernel half of address classification.
 *
 * The ranges themselves are not here: egress-agent/src/addr.rs holds the one table
 * (IANA special-purpose registries + cloud metadata) and fills the tries below.
 * What is here is the decoding of IPv4 hidden inside IPv6, which must match
 * `addr::embedded_ipv4` in Rust exactly (same forms, same order).
 */
#ifndef EGRESS_CLASSIFY_H
#define EGRESS_CLASSIFY_H

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 512);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v4_key);
	__type(value, struct deny_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eg_deny4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 512);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v6_key);
	__type(value, struct deny_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eg_deny6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v4_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eg_exempt4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v6_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eg_exempt6 SEC(".maps");

/* Returns REASON_NONE when the IPv4 address (network order) may be redirected to
 * the agent, else the address class that forbids it. An exemption (allow_ranges)
 * only lifts entries without DENY_F_NO_EXEMPT, so metadata stays denied even inside
 * an exempted range: the deny trie's longest match is the metadata /32.
 */
static __always_inline __u32 classify4(__be32 addr)
{
	struct lpm_v4_key key = { .prefixlen = 32, .addr = addr };
	struct deny_value *deny;

	deny = bpf_map_lookup_elem(&eg_deny4, &key);
	if (!deny)
		return REASON_NONE;
	if (!(deny->flags & DENY_F_NO_EXEMPT) && bpf_map_lookup_elem(&eg_exempt4, &key))
		return REASON_NONE;
	return deny->reason;
}

static __always_inline __u32 classify6_table(const __u8 *addr)
{
	struct lpm_v6_key key = { .prefixlen = 128 };
	struct deny_value *deny;

	__builtin_memcpy(key.addr, addr, 16);
	deny = bpf_map_lookup_elem(&eg_deny6, &key);
	if (!deny)
		return REASON_NONE;
	if (!(deny->flags & DENY_F_NO_EXEMPT) && bpf_map_lookup_elem(&eg_exempt6, &key))
		return REASON_NONE;
	return deny->reason;
}

static __always_inline __be32 v4_at(const __u8 *a, int i0, int i1, int i2, int i3)
{
	/* Assemble in memory order, which is network order for the result. */
	__u32 v = (__u32)a[i0] | ((__u32)a[i1] << 8) | ((__u32)a[i2] << 16) | ((__u32)a[i3] << 24);
	return (__be32)v;
}

static __always_inline __u32 word(const __u8 *a, int i)
{
	__u32 w;

	__builtin_memcpy(&w, a + 4 * i, 4);
	return bpf_ntohl(w); /* host order, so the constants below read like addresses */
}

/* Deny if any candidate is denied: first non-zero reason wins. */
#define CHECK4(v4)                                   \
	do {                                         \
		__u32 __r = classify4(v4);           \
		if (__r)                             \
			return __r;                  \
	} while (0)

/*
 * IPv6 classification. IPv4 embedded in IPv6 is decoded and classified as IPv4,
 * because the packet (after translation, relaying or the dual-stack socket
 * layer) reaches that IPv4 host:
 *   ::ffff:0:0/96     IPv4-mapped             a.b.c.d in bytes 12..15
 *   ::/96             IPv4-compatible (deprecated); :: and ::1 are in the table
 *   ::ffff:0:0:0/96   SIIT (RFC 6145)
 *   64:ff9b::/96      NAT64 well-known prefix (RFC 6052): IPv4 semantics only
 *   64:ff9b:1::/48    NAT64 local-use (RFC 8215): the operator picks the length
 *                     inside it, so every RFC 6052 layout (/48 /56 /64 /96) is tried
 *   2002::/16         6to4: bytes 2..5
 *   2001::/32         Teredo: server in bytes 4..7, client obfuscated (xor) in 12..15
 * A form whose IPv4 is allowed falls through to the IPv6 table (6to4 and Teredo
 * themselves may be listed there).
 */
static __always_inline __u32 classify6(const __u8 *a)
{
	__u32 r;

	__u32 w0 = word(a, 0), w1 = word(a, 1), w2 = word(a, 2);

	if (!w0 && !w1 && w2 == 0x0000ffff)
		return classify4(v4_at(a, 12, 13, 14, 15)); /* mapped: IPv4 semantics only */
	if (!w0 && !w1 && !w2) {
		/* :: and ::1 are loopback in the table; other ::a.b.c.d are compatible. */
		r = classify6_table(a);
		if (r)
			return r;
		return classify4(v4_at(a, 12, 13, 14, 15));
	}
	if (!w0 && !w1 && w2 == 0xffff0000)
		return classify4(v4_at(a, 12, 13, 14, 15)); /* SIIT */
	if (w0 == 0x0064ff9b) {
		/* 64:ff9b::/96 reaches exactly that IPv4 host through the translator:
		 * IPv4 semantics only, like mapped (it lies inside ::/3, which the
		 * IPv6 table denies as not global unicast). */
		if (!w1 && !w2)
			return classify4(v4_at(a, 12, 13, 14, 15));
		if ((w1 >> 16) == 0x0001) {
			CHECK4(v4_at(a, 6, 7, 9, 10));    /* /48 */
			CHECK4(v4_at(a, 7, 9, 10, 11));   /* /56 */
			CHECK4(v4_at(a, 9, 10, 11, 12));  /* /64 */
			CHECK4(v4_at(a, 12, 13, 14, 15)); /* /96 */
		}
	}
	if ((w0 >> 16) == 0x2002)
		CHECK4(v4_at(a, 2, 3, 4, 5)); /* 6to4 */
	if (w0 == 0x20010000) {
		CHECK4(v4_at(a, 4, 5, 6, 7)); /* Teredo server */
		CHECK4(~v4_at(a, 12, 13, 14, 15)); /* Teredo client, obfuscated */
	}
	return classify6_table(a);
}

#endif /* EGRESS_CLASSIFY_H */
