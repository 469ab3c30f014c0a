/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * sock_common.h — constants and context accessors shared by egress.bpf.c (a
 * container's programs) and gate.bpf.c (the gate on a parent cgroup). No maps
 * here: each object owns its own.
 */
#ifndef EGRESS_SOCK_COMMON_H
#define EGRESS_SOCK_COMMON_H

#define SYS_REJECT  0
#define SYS_PROCEED 1

/* From <sys/socket.h>, which does not build for the bpf target. */
#define AF_INET     2
#define AF_INET6    10
#define SOCK_STREAM 1
#define SOCK_DGRAM  2
#define SOL_IP      0
#define SOL_IPV6    41

#define DNS_PORT 53
#define LOOPBACK4 0x7f000001 /* 127.0.0.1, host order */

static __always_inline void v4_to_mapped(__u8 *out, __be32 addr)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &addr, 4);
}

/* The context only allows 4-byte accesses to address arrays, and clang likes to
 * merge two adjacent 4-byte loads into one 8-byte load, which the verifier
 * rejects ("invalid bpf_context access"): volatile keeps them apart. */
#define CTX_READ32(field) (*(volatile __u32 *)&(field))

static __always_inline void read_user_ip6(const struct bpf_sock_addr *ctx, __u8 *out)
{
	__u32 w[4] = { CTX_READ32(ctx->user_ip6[0]), CTX_READ32(ctx->user_ip6[1]),
		       CTX_READ32(ctx->user_ip6[2]), CTX_READ32(ctx->user_ip6[3]) };

	__builtin_memcpy(out, w, 16);
}

static __always_inline void write_user_ip6(struct bpf_sock_addr *ctx, const __u8 *in)
{
	__u32 w[4];

	__builtin_memcpy(w, in, 16);
	ctx->user_ip6[0] = w[0];
	ctx->user_ip6[1] = w[1];
	ctx->user_ip6[2] = w[2];
	ctx->user_ip6[3] = w[3];
}

/* Is this setsockopt one that re-routes a connection (IP_OPTIONS can carry
 * LSRR/SSRR; IPV6_RTHDR and its RFC 2292 forms a routing header)? */
static __always_inline int is_source_route_opt(int level, int opt)
{
	return (level == SOL_IP && opt == IP_OPTIONS) ||
	       (level == SOL_IPV6 &&
		(opt == IPV6_RTHDR || opt == IPV6_2292RTHDR || opt == IPV6_2292PKTOPTIONS));
}

#endif /* EGRESS_SOCK_COMMON_H */
