//! egress-agent: a transparent, eBPF-based egress enforcer for Linux containers.
//!
//! One module per stage of the data path (see ARCHITECTURE.md): kernel programs are loaded
//! by `bpf`; a redirected connection is accepted on listeners `netns` created in the
//! container's namespace, attributed, peeked at and decided by `interceptor` (with `policy`
//! for names and `addr` for addresses), then served by `passthrough`, or by `inspect` and
//! `requests`, over an upstream that `upstream` resolved, screened and dialed itself.

// The commands (top: imported by nothing below them).
pub mod cli;
pub mod exec;
pub mod oci;
pub mod sandbox;
pub mod service;
pub mod suggest;

// The control plane: the daemon's state, its socket, the Kubernetes loop, shared wording.
pub mod control;
pub mod daemon;
pub mod kube;
pub mod report;
pub mod signals;

// A running attachment: kernel enforcement + listeners + the tasks that serve them.
pub mod agent;

// The data path, in the order a connection meets its rooms; each uses only those below it.
pub mod dns;
pub mod inspect;
pub mod interceptor;
pub mod passthrough;
pub mod requests;
pub mod status;
pub mod upstream;

// What every room reads or uses.
pub mod addr;
pub mod ask;
pub mod attachment;
pub mod audit;
pub mod budget;
pub mod copy;
pub mod deny;
pub mod metrics;
pub mod notify;
pub mod peek;
pub mod policy;
pub mod pool;
pub mod record;
pub mod resolve;
pub mod revocation;
pub mod rewind;

// The kernel and the host.
pub mod bpf;
pub mod cgroup;
pub mod netns;
pub mod sys;

/// `egress.internal`: the agent's own address inside every sandbox (status page,
/// explicit proxy for clients that honour HTTPS_PROXY). From TEST-NET-1
/// (RFC 5737), which never routes anywhere real, so reserving it costs nothing;
/// the kernel redirects it to the agent before any classification.
pub const SERVICE_ADDR4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 0, 2, 1);
pub const SERVICE_NAME: &str = "egress.internal";
