//! Stage: status — `http://egress.internal/status` (DESIGN.md §10): shows the calling container
//! its own recent denials, each with its fix and the line `exec` printed for it
//! ([`crate::notify::line`]). It does not list the allowlist (an allowlist is an
//! exfiltration map).

use crate::{attachment::Attachment, policy::Policy};

pub fn page(att: &Attachment, policy: &Policy) -> String {
    let denials = att.shared.audit.recent_denials(att.cgroup.id, 50);
    let recent: Vec<serde_json::Value> = denials
        .iter()
        .map(|r| {
            serde_json::json!({
                "time": r.time, "comm": r.comm, "pid": r.pid, "destination": r.orig_dst,
                "name": r.name, "port": r.port, "protocol": r.protocol, "code": r.code, "reason": r.reason,
                "rule": r.rule, "hint": crate::notify::hint(r), "line": crate::notify::line(r),
            })
        })
        .collect();
    serde_json::json!({
        "agent": "egress-agent",
        "version": env!("CARGO_PKG_VERSION"),
        "profile": att.profile,
        "cgroup_id": att.cgroup.id,
        "policy": policy.version(),
        "mode": if policy.mode() == crate::policy::Mode::Monitor { "monitor" } else { "enforce" },
        "trusts_ca": att.trusts_ca(),
        "recent_denials": recent,
        "budgets": att.budgets.describe(policy, &att.profile),
        "proxy": format!("http://{}:3128 (HTTPS_PROXY, optional: all traffic is intercepted anyway)", crate::SERVICE_NAME),
    })
    .to_string()
}
