//! egress-agent: a transparent, eBPF-based egress enforcer for Linux containers.
//!
//! One module per stage of the data path (see ARCHITECTURE.md):
//! kernel programs are loaded by `bpf`; a redirected connection is attributed by
//! `origdst`, accepted on listeners created in the container's namespace by `netns`,
//! decided by `policy` (names) and `addr` (addresses), and served by `interceptor`.

pub mod addr;
pub mod agent;
pub mod audit;
pub mod bpf;
pub mod cgroup;
pub mod cli;
pub mod control;
pub mod copy;
pub mod daemon;
pub mod deny;
pub mod dns;
pub mod exec;
pub mod http_proxy;
pub mod interceptor;
pub mod kube;
pub mod metrics;
pub mod netns;
pub mod peek;
pub mod policy;
pub mod resolve;
pub mod rewind;
pub mod sandbox;
pub mod shared_upstreams;
pub mod status;
pub mod suggest;
pub mod sys;
pub mod tls;

/// `egress.internal`: the agent's own address inside every sandbox (status page,
/// explicit proxy for clients that honour HTTPS_PROXY). From TEST-NET-1
/// (RFC 5737), which never routes anywhere real, so reserving it costs nothing;
/// the kernel redirects it to the agent before any classification.
pub const SERVICE_ADDR4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 0, 2, 1);
pub const SERVICE_NAME: &str = "egress.internal";
