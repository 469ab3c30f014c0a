//! Budgets (issue 17 §3): how much one container may send and receive, and how fast it may
//! open connections and send requests. The limits live in the policy; what each container has
//! used lives with the container ([`crate::budget`]), so a reload changes the limits, never the
//! counts.
//!
//! ```toml
//! [[profile.default.budget]]
//! host = "*.example.com"           # optional: only connections to these names (default: all)
//! window = "1h"                    # the period of bytes_up / bytes_down (default 1h)
//! bytes_up = "100 MiB"             # per window, all of one container's matching connections
//! bytes_down = "1 GiB"
//! connection_bytes_up = "10 MiB"   # per connection
//! connection_bytes_down = "100 MiB"
//! connections_per_second = 20      # new connections (a burst of one second's worth)
//! concurrent_connections = 64
//! requests_per_second = 50         # inspected HTTPS and plain HTTP requests (same burst)
//! ```
//!
//! Sizes are a number of bytes or a string with a unit (`"64 KiB"`, `"10MB"`: `B` and `b` both
//! mean bytes). Every matching budget applies; each is counted per container.

use std::fmt::{self, Write as _};
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{HostPattern, RuleRef};

/// `window` when a budget sets none.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);
const WINDOW_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(31 * 24 * 3600));
const MAX_RATE: u64 = 1_000_000;
const MAX_CONCURRENT: u64 = 65_536;

/// `[[profile.X.budget]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudget {
    host: Option<Spanned<String>>,
    window: Option<Spanned<String>>,
    bytes_up: Option<Spanned<RawSize>>,
    bytes_down: Option<Spanned<RawSize>>,
    connection_bytes_up: Option<Spanned<RawSize>>,
    connection_bytes_down: Option<Spanned<RawSize>>,
    connections_per_second: Option<Spanned<i64>>,
    concurrent_connections: Option<Spanned<i64>>,
    requests_per_second: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawSize {
    Bytes(i64),
    Text(String),
}

/// A validated budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// `profile.X.budget[i]`: the `rule` of its denials.
    pub id: RuleRef,
    /// `None`: every connection of the profile.
    pub host: Option<HostPattern>,
    pub window: Duration,
    pub bytes_up: Option<u64>,
    pub bytes_down: Option<u64>,
    pub connection_bytes_up: Option<u64>,
    pub connection_bytes_down: Option<u64>,
    pub connections_per_second: Option<u32>,
    pub concurrent_connections: Option<u32>,
    pub requests_per_second: Option<u32>,
}

impl Budget {
    /// Its host pattern as written (`*` for the profile-wide budget). Its counters are kept
    /// by the pattern, so a reload that reorders or edits budgets keeps each one's counts.
    pub fn key(&self) -> String {
        self.host
            .as_ref()
            .map_or_else(|| "*".into(), |h| h.to_string())
    }

    pub fn applies_to(&self, name: &super::CanonicalName) -> bool {
        self.host.as_ref().is_none_or(|h| h.matches(name))
    }

    /// Whether it limits bytes (a metered copy is needed) rather than only admissions.
    pub fn meters_bytes(&self) -> bool {
        self.bytes_up.is_some()
            || self.bytes_down.is_some()
            || self.connection_bytes_up.is_some()
            || self.connection_bytes_down.is_some()
    }
}

/// An error about one key of one budget.
pub(super) struct BudgetError {
    pub span: Range<usize>,
    pub key: String,
    pub message: String,
}

/// Validates `[[profile.{profile}.budget]][i]`. `allowed`: whether any rule of the profile
/// could allow a name matched by a host pattern (a budget nothing reaches is a mistake).
pub(super) fn build(
    profile: &str,
    i: usize,
    raw: &Spanned<RawBudget>,
    allowed: impl Fn(&HostPattern) -> bool,
) -> Result<Budget, BudgetError> {
    let base = format!("profile.{profile}.budget[{i}]");
    let err = |span: Range<usize>, k: &str, message: String| BudgetError {
        span,
        key: format!("{base}.{k}"),
        message,
    };
    let r = raw.get_ref();
    let host = match &r.host {
        None => None,
        Some(h) => {
            let text = h.get_ref();
            if text.contains(':') && !text.starts_with('[') {
                return Err(err(
                    h.span(),
                    "host",
                    format!("{text:?}: a budget covers every port of a host, remove the port"),
                ));
            }
            let p = HostPattern::parse(text).map_err(|e| err(h.span(), "host", e.to_string()))?;
            if !allowed(&p) {
                return Err(err(
                    h.span(),
                    "host",
                    format!("no rule of profile {profile} allows \"{p}\": this budget would never apply"),
                ));
            }
            Some(p)
        }
    };
    let size = |v: &Option<Spanned<RawSize>>, k: &str| -> Result<Option<u64>, BudgetError> {
        v.as_ref()
            .map(|s| parse_size(s.get_ref()).map_err(|m| err(s.span(), k, m)))
            .transpose()
    };
    let count = |v: &Option<Spanned<i64>>, k: &str, max: u64| -> Result<Option<u32>, BudgetError> {
        v.as_ref()
            .map(|n| match u64::try_from(*n.get_ref()) {
                Ok(x) if (1..=max).contains(&x) => Ok(x as u32),
                _ => Err(err(
                    n.span(),
                    k,
                    format!("{} is out of range: expected 1 to {max}", n.get_ref()),
                )),
            })
            .transpose()
    };
    let b = Budget {
        id: RuleRef::new(base.clone()),
        host,
        window: DEFAULT_WINDOW,
        bytes_up: size(&r.bytes_up, "bytes_up")?,
        bytes_down: size(&r.bytes_down, "bytes_down")?,
        connection_bytes_up: size(&r.connection_bytes_up, "connection_bytes_up")?,
        connection_bytes_down: size(&r.connection_bytes_down, "connection_bytes_down")?,
        connections_per_second: count(
            &r.connections_per_second,
            "connections_per_second",
            MAX_RATE,
        )?,
        concurrent_connections: count(
            &r.concurrent_connections,
            "concurrent_connections",
            MAX_CONCURRENT,
        )?,
        requests_per_second: count(&r.requests_per_second, "requests_per_second", MAX_RATE)?,
    };
    let window = match &r.window {
        None => DEFAULT_WINDOW,
        Some(_) if b.bytes_up.is_none() && b.bytes_down.is_none() => {
            let w = r.window.as_ref().map_or(0..0, Spanned::span);
            return Err(err(
                w,
                "window",
                "window is the period of bytes_up and bytes_down, and this budget sets neither"
                    .into(),
            ));
        }
        Some(w) => parse_window(w.get_ref()).map_err(|m| err(w.span(), "window", m))?,
    };
    let none = [
        b.bytes_up,
        b.bytes_down,
        b.connection_bytes_up,
        b.connection_bytes_down,
    ]
    .iter()
    .all(Option::is_none)
        && [
            b.connections_per_second,
            b.concurrent_connections,
            b.requests_per_second,
        ]
        .iter()
        .all(Option::is_none);
    if none {
        return Err(BudgetError {
            span: raw.span(),
            key: base,
            message: "a budget without a limit: set bytes_up, bytes_down, connection_bytes_up, connection_bytes_down, connections_per_second, concurrent_connections or requests_per_second".into(),
        });
    }
    Ok(Budget { window, ..b })
}

fn parse_size(raw: &RawSize) -> Result<u64, String> {
    let n = match raw {
        RawSize::Bytes(n) => u64::try_from(*n).map_err(|_| format!("{n} is negative"))?,
        RawSize::Text(s) => byte_unit::Byte::parse_str(s, true)
            .map_err(|e| format!("{s:?} is not a size such as \"64 KiB\" or \"10MB\": {e}"))?
            .as_u64(),
    };
    if n == 0 {
        return Err("a budget of 0 bytes allows nothing: deny the host instead".into());
    }
    Ok(n)
}

fn parse_window(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration such as \"1h\" or \"10m\": {e}"))?;
    if d < WINDOW_RANGE.0 || d > WINDOW_RANGE.1 {
        return Err(format!("{s:?}: expected 1s to 31 days"));
    }
    Ok(d)
}

/// A size as people read it: in the largest binary unit that divides it, else in bytes.
pub fn size_text(n: u64) -> String {
    for (unit, k) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= k && n.is_multiple_of(k) {
            return format!("{} {unit}", n / k);
        }
    }
    format!("{n} B")
}

/// A duration as the policy file writes it.
pub fn duration_text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl fmt::Display for Budget {
    /// One line: the limits, e.g. `bytes_up 1 MiB per 1h, connections_per_second 5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = duration_text(self.window);
        let mut parts: Vec<String> = Vec::new();
        if let Some(n) = self.bytes_up {
            parts.push(format!("bytes_up {} per {w}", size_text(n)));
        }
        if let Some(n) = self.bytes_down {
            parts.push(format!("bytes_down {} per {w}", size_text(n)));
        }
        if let Some(n) = self.connection_bytes_up {
            parts.push(format!("connection_bytes_up {}", size_text(n)));
        }
        if let Some(n) = self.connection_bytes_down {
            parts.push(format!("connection_bytes_down {}", size_text(n)));
        }
        for (k, v) in [
            ("connections_per_second", self.connections_per_second),
            ("concurrent_connections", self.concurrent_connections),
            ("requests_per_second", self.requests_per_second),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k} {v}"));
            }
        }
        f.write_str(&parts.join(", "))
    }
}

/// `[[profile.X.budget]]` as `policy show` prints it (sizes in bytes: exact, parseable).
pub(super) fn show(o: &mut String, profile: &str, b: &Budget) {
    let _ = writeln!(o, "\n[[profile.{profile}.budget]]  # {}: {b}", b.id);
    if let Some(h) = &b.host {
        let _ = writeln!(o, "host = \"{h}\"");
    }
    if b.bytes_up.is_some() || b.bytes_down.is_some() {
        let _ = writeln!(o, "window = \"{}\"", duration_text(b.window));
    }
    for (k, v) in [
        ("bytes_up", b.bytes_up),
        ("bytes_down", b.bytes_down),
        ("connection_bytes_up", b.connection_bytes_up),
        ("connection_bytes_down", b.connection_bytes_down),
        (
            "connections_per_second",
            b.connections_per_second.map(u64::from),
        ),
        (
            "concurrent_connections",
            b.concurrent_connections.map(u64::from),
        ),
        ("requests_per_second", b.requests_per_second.map(u64::from)),
    ] {
        if let Some(v) = v {
            let _ = writeln!(o, "{k} = {v}");
        }
    }
}
