//! egress-agent: a transparent, eBPF-based egress enforcer for Linux containers.
//!
//! One module per stage of the data path (see ARCHITECTURE.md):
//! kernel programs are loaded by `bpf`; a redirected connection is attributed by
//! `origdst`, accepted on listeners created in the container's namespace by `netns`,
//! decided by `policy` (names) and `addr` (addresses), and served by `interceptor`.

pub mod addr;
pub mod deny;
pub mod policy;
