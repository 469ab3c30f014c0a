//! Below every room: the decision record: one per decision, allowed or denied, kernel or userspace. The audit
//! log writes it, the metrics count it, the status page and `decisions` show it; it sits below
//! all of them and knows none of them.

use std::time::SystemTime;

use serde::Serialize;

/// One decision. Field names are the JSONL schema documented in the README.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Record {
    pub time: String,
    pub cgroup_id: u64,
    pub profile: String,
    pub pid: u32,
    pub comm: String,
    /// The destination the client asked for (ip:port), as it asked.
    pub orig_dst: String,
    /// The client socket as the agent saw it (its local address after the
    /// kernel's rewrite: 127.0.0.1:<its port>).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub client: String,
    /// The name the decision was about (SNI, Host, CONNECT target, DNS question).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port the decision was about: the CONNECT target's, else the
    /// original destination's (absent for DNS and early refusals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// tls | https (inspected) | http | connect | opaque | dns | dns-tcp | kernel
    pub protocol: &'static str,
    /// allow | deny | would_deny (monitor mode)
    pub decision: &'static str,
    /// Version of the policy the decision was made with (a reload never
    /// changes a decision already made).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub policy: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A denial's fix: what an operator would add to the policy, or what the client lacks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The address the agent dialed (never the client's choice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Inspected HTTPS and plain HTTP: one record per request, with its method, path
    /// (without the query) and the status returned to the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    /// Ask mode: what became of the held decision (`approved:once#3`, `approved:session#3`,
    /// `approved:save#3`, `denied#3`, `timeout#3`, `overflow`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ask: Option<String>,
}

impl Record {
    pub fn now() -> String {
        humantime::format_rfc3339_millis(SystemTime::now()).to_string()
    }
    pub fn is_denial(&self) -> bool {
        self.decision != "allow"
    }

    /// Monitor mode let through what `code` would have refused, for `reason`.
    pub fn would_deny(&mut self, code: crate::deny::DenyCode, reason: String) {
        self.decision = "would_deny";
        self.code = Some(code.as_str().into());
        self.reason = Some(reason);
    }
}
