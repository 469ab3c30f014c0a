//! Below every room: what each container has used of its budgets (the limits are the
//! policy's, `policy/budget.rs`). One [`Budgets`] per attachment, so one container's use never
//! counts against another's; its accounts are kept by the budget's host pattern, so a reload
//! changes the limits and keeps the counts.
//!
//! A connection the policy allows is admitted by [`Budgets::admit`] (concurrency, connection
//! rate, a window already used up) and gets a [`Meter`]; every byte it carries and every
//! request it sends is charged to the meter ([`Meter::charge`], [`Meter::request`]), which
//! says how many bytes still fit, so a copy can stop exactly at the limit.
//!
//! The rates are token buckets holding one second's worth (hand-written: its state must
//! survive a reload that changes the rate, which a limiter built with a fixed quota, such as
//! `governor`'s, does not allow).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use smallvec::SmallVec;

use crate::{
    policy::{
        budget::{duration_text, size_text},
        Budget, CanonicalName, HostPattern, Policy, RuleRef,
    },
    record::Record,
};

/// The budgets one connection is charged to, locked together (almost always one or two).
type Locked<'a> = SmallVec<[MutexGuard<'a, State>; 2]>;

/// Which way bytes go: from the sandbox (up) or to it (down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Up,
    Down,
}

/// A budget the connection or request would go over.
#[derive(Debug, Clone)]
pub struct Exceeded {
    /// `profile.X.budget[i]`.
    pub rule: RuleRef,
    /// The key whose limit was reached (`bytes_up`, `connections_per_second`, ...).
    pub limit: &'static str,
    pub reason: String,
    pub hint: String,
    /// Of the bytes asked to be charged, how many still fitted (and were charged).
    pub allowed: u64,
}

impl Exceeded {
    /// Marks `rec` (a connection or request that was allowed, then cut) as this budget's
    /// denial.
    pub fn record_cut(&self, rec: &mut Record) {
        rec.decision = "deny";
        rec.code = Some(crate::deny::DenyCode::BudgetExceeded.as_str().into());
        rec.rule = Some(self.rule.to_string());
        rec.reason = Some(self.reason.clone());
        rec.hint = Some(self.hint.clone());
    }
}

/// One container's budgets.
#[derive(Default)]
pub struct Budgets {
    /// By the budget's `host` (`None`: the profile-wide budget).
    accounts: Mutex<HashMap<Option<HostPattern>, Arc<Account>>>,
}

#[derive(Default)]
struct Account {
    state: Mutex<State>,
    /// Connections and requests refused or cut by this budget.
    exceeded: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Start of the current bytes window (`None` until first used).
    window_start: Option<Instant>,
    up: u64,
    down: u64,
    connections: Bucket,
    requests: Bucket,
    /// Connections admitted and not yet ended.
    open: u32,
}

impl State {
    /// Starts a new window when the current one is over.
    fn roll(&mut self, window: Duration, now: Instant) {
        if self
            .window_start
            .is_none_or(|s| now.duration_since(s) >= window)
        {
            self.window_start = Some(now);
            self.up = 0;
            self.down = 0;
        }
    }

    fn resets_in(&self, window: Duration, now: Instant) -> Duration {
        self.window_start
            .map_or(window, |s| window.saturating_sub(now.duration_since(s)))
    }
}

/// A token bucket of capacity `rate`, refilled at `rate` per second.
#[derive(Default)]
struct Bucket {
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    fn available(&self, rate: u32, now: Instant) -> f64 {
        let cap = f64::from(rate);
        match self.at {
            None => cap,
            Some(at) => (self.tokens + now.duration_since(at).as_secs_f64() * cap).min(cap),
        }
    }

    fn take(&mut self, rate: u32, now: Instant) {
        self.tokens = self.available(rate, now) - 1.0;
        self.at = Some(now);
    }

    /// How long until a token is there.
    fn wait(&self, rate: u32, now: Instant) -> Duration {
        let missing = (1.0 - self.available(rate, now)).max(0.0);
        Duration::from_secs_f64(missing / f64::from(rate))
    }
}

impl Budgets {
    /// Admits a connection to `name` the policy allowed: `Ok(None)` when no budget covers
    /// it, `Ok(meter)` to charge it to, or the budget it would go over (nothing is charged).
    pub fn admit(
        &self,
        policy: &Policy,
        profile: &str,
        name: &CanonicalName,
    ) -> Result<Option<Arc<Meter>>, Exceeded> {
        let mut parts: Vec<Part> = policy
            .budgets_for(profile, name)
            .map(|b| Part {
                budget: b.clone(),
                account: self.account(&b.host),
            })
            .collect();
        if parts.is_empty() {
            return Ok(None);
        }
        // One locking order for every meter of every snapshot: by account address.
        parts.sort_by_key(|p| Arc::as_ptr(&p.account) as usize);
        let name = name.as_str().to_string();
        {
            let now = Instant::now();
            let mut states: Locked<'_> = parts.iter().map(|p| lock(&p.account.state)).collect();
            for (p, s) in parts.iter().zip(states.iter_mut()) {
                s.roll(p.budget.window, now);
                if let Some(x) = refuses_connection(&name, p, s, now) {
                    p.account.exceeded.fetch_add(1, Ordering::Relaxed);
                    return Err(x);
                }
            }
            for (p, s) in parts.iter().zip(states.iter_mut()) {
                if let Some(rate) = p.budget.connections_per_second {
                    s.connections.take(rate, now);
                }
                s.open += 1;
            }
        }
        Ok(Some(Arc::new(Meter {
            bytes: parts.iter().any(|p| p.budget.meters_bytes()),
            parts,
            name,
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
        })))
    }

    /// The account of the budget for `host`; made on first use (a lookup allocates nothing).
    fn account(&self, host: &Option<HostPattern>) -> Arc<Account> {
        let mut m = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = m.get(host) {
            return a.clone();
        }
        m.entry(host.clone()).or_default().clone()
    }

    /// Every budget of `profile` with what this container has used of it (`status`).
    pub fn describe(&self, policy: &Policy, profile: &str) -> Vec<serde_json::Value> {
        let now = Instant::now();
        policy
            .budgets(profile)
            .iter()
            .map(|b| {
                let account = self.account(&b.host);
                let mut s = lock(&account.state);
                s.roll(b.window, now);
                serde_json::json!({
                    "rule": b.id.as_str(),
                    "host": b.host.as_ref().map(ToString::to_string),
                    "limits": b.to_string(),
                    "window_s": b.window.as_secs(),
                    "window_resets_in_s": s.resets_in(b.window, now).as_secs(),
                    "used_bytes_up": s.up,
                    "used_bytes_down": s.down,
                    "open_connections": s.open,
                    "exceeded": account.exceeded.load(Ordering::Relaxed),
                })
            })
            .collect()
    }
}

struct Part {
    budget: Arc<Budget>,
    account: Arc<Account>,
}

/// One admitted connection's share of its budgets; its drop ends the connection's count.
pub struct Meter {
    /// Sorted by account address (the locking order).
    parts: Vec<Part>,
    /// Whether any part limits bytes (else [`Meter::charge`] has nothing to do).
    bytes: bool,
    name: String,
    /// This connection's bytes so far, for `connection_bytes_*`.
    up: AtomicU64,
    down: AtomicU64,
}

impl Meter {
    fn lock(&self) -> Locked<'_> {
        self.parts.iter().map(|p| lock(&p.account.state)).collect()
    }

    /// Charges `n` bytes going `dir`. `Err`: only `allowed` of them fit (and were charged);
    /// the connection must stop after them.
    pub fn charge(&self, dir: Dir, n: u64) -> Result<(), Exceeded> {
        if !self.bytes {
            return Ok(());
        }
        let now = Instant::now();
        let mut states = self.lock();
        let mine = match dir {
            Dir::Up => &self.up,
            Dir::Down => &self.down,
        };
        let so_far = mine.load(Ordering::Relaxed);
        let mut allowed = n;
        let mut limiting: Option<(usize, bool)> = None;
        for (i, (p, s)) in self.parts.iter().zip(states.iter_mut()).enumerate() {
            s.roll(p.budget.window, now);
            let (window, conn, used) = match dir {
                Dir::Up => (p.budget.bytes_up, p.budget.connection_bytes_up, s.up),
                Dir::Down => (p.budget.bytes_down, p.budget.connection_bytes_down, s.down),
            };
            if let Some(left) = window.map(|l| l.saturating_sub(used)) {
                if left < allowed {
                    (allowed, limiting) = (left, Some((i, true)));
                }
            }
            if let Some(left) = conn.map(|l| l.saturating_sub(so_far)) {
                if left < allowed {
                    (allowed, limiting) = (left, Some((i, false)));
                }
            }
        }
        for s in states.iter_mut() {
            match dir {
                Dir::Up => s.up += allowed,
                Dir::Down => s.down += allowed,
            }
        }
        mine.fetch_add(allowed, Ordering::Relaxed);
        let Some((i, window)) = limiting else {
            return Ok(());
        };
        let p = &self.parts[i];
        p.account.exceeded.fetch_add(1, Ordering::Relaxed);
        let total = so_far + allowed;
        let way = if dir == Dir::Up { "up" } else { "down" };
        let mut x = if window {
            window_used_up(&self.name, p, &states[i], dir, now)
        } else {
            connection_used_up(&self.name, p, dir)
        };
        x.reason = format!("cut after {total} bytes {way}: {}", x.reason);
        x.allowed = allowed;
        Err(x)
    }

    /// Admits one HTTP request whose body declares `body` bytes (0 when it declares none):
    /// `requests_per_second`, a window used up, a declared body larger than what is left.
    pub fn request(&self, body: u64) -> Result<(), Exceeded> {
        let now = Instant::now();
        let mut states = self.lock();
        let so_far = self.up.load(Ordering::Relaxed);
        for (p, s) in self.parts.iter().zip(states.iter_mut()) {
            s.roll(p.budget.window, now);
            if let Some(x) = refuses_request(&self.name, p, s, body, so_far, now) {
                p.account.exceeded.fetch_add(1, Ordering::Relaxed);
                return Err(x);
            }
        }
        for (p, s) in self.parts.iter().zip(states.iter_mut()) {
            if let Some(rate) = p.budget.requests_per_second {
                s.requests.take(rate, now);
            }
        }
        Ok(())
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        for s in self.lock().iter_mut() {
            s.open = s.open.saturating_sub(1);
        }
    }
}

/// Whether budget `p` refuses one more connection to `name` now.
fn refuses_connection(name: &str, p: &Part, s: &State, now: Instant) -> Option<Exceeded> {
    let b = &p.budget;
    if let Some(max) = b.concurrent_connections {
        if s.open >= max {
            return Some(exceeded(
                p,
                "concurrent_connections",
                format!(
                    "{name}: {} allows {max} concurrent connections and {} are open",
                    b.id, s.open
                ),
                "wait for one to end".into(),
            ));
        }
    }
    let rate = b.connections_per_second.map(|r| (r, &s.connections));
    rate_refusal(
        name,
        p,
        rate,
        "connections_per_second",
        "new connections",
        now,
    )
    .or_else(|| window_refusal(name, p, s, now))
}

/// A rate limit (`rate` tokens a second in `bucket`) with no token left now.
fn rate_refusal(
    name: &str,
    p: &Part,
    rate: Option<(u32, &Bucket)>,
    limit: &'static str,
    what: &str,
    now: Instant,
) -> Option<Exceeded> {
    let (rate, bucket) = rate?;
    if bucket.available(rate, now) >= 1.0 {
        return None;
    }
    let wait = bucket.wait(rate, now).as_millis().max(1);
    Some(exceeded(
        p,
        limit,
        format!(
            "{name}: {} allows {rate} {what} per second; the next one in {wait} ms",
            p.budget.id
        ),
        format!("wait {wait} ms"),
    ))
}

/// A bytes window already used up, either way.
fn window_refusal(name: &str, p: &Part, s: &State, now: Instant) -> Option<Exceeded> {
    let b = &p.budget;
    [
        (Dir::Up, b.bytes_up, s.up),
        (Dir::Down, b.bytes_down, s.down),
    ]
    .into_iter()
    .find(|(_, limit, used)| limit.is_some_and(|l| *used >= l))
    .map(|(dir, _, _)| window_used_up(name, p, s, dir, now))
}

/// Whether budget `p` refuses one more request with a body of `body` bytes on a connection
/// that has sent `so_far` bytes.
fn refuses_request(
    name: &str,
    p: &Part,
    s: &State,
    body: u64,
    so_far: u64,
    now: Instant,
) -> Option<Exceeded> {
    let b = &p.budget;
    let rate = b.requests_per_second.map(|r| (r, &s.requests));
    if let Some(x) = rate_refusal(name, p, rate, "requests_per_second", "requests", now)
        .or_else(|| window_refusal(name, p, s, now))
    {
        return Some(x);
    }
    if let Some(l) = b.connection_bytes_up {
        if so_far >= l {
            return Some(connection_used_up(name, p, Dir::Up));
        }
    }
    let left = [
        ("bytes_up", b.bytes_up.map(|l| l - s.up.min(l))),
        (
            "connection_bytes_up",
            b.connection_bytes_up.map(|l| l - so_far.min(l)),
        ),
    ];
    let (limit, left) = left
        .into_iter()
        .find_map(|(k, left)| left.filter(|left| body > *left).map(|left| (k, left)))?;
    Some(exceeded(
        p,
        limit,
        format!(
            "{name}: the request's body of {body} bytes is more than the {left} bytes left of {limit} of {} ({b})",
            b.id
        ),
        "send less".into(),
    ))
}

fn exceeded(p: &Part, limit: &'static str, reason: String, wait: String) -> Exceeded {
    Exceeded {
        rule: p.budget.id.clone(),
        limit,
        reason,
        hint: format!("{wait}, or raise `{limit}` of {}", p.budget.id),
        allowed: 0,
    }
}

fn window_used_up(name: &str, p: &Part, s: &State, dir: Dir, now: Instant) -> Exceeded {
    let b = &p.budget;
    let (limit, n) = match dir {
        Dir::Up => ("bytes_up", b.bytes_up.unwrap_or(0)),
        Dir::Down => ("bytes_down", b.bytes_down.unwrap_or(0)),
    };
    let resets = duration_text(Duration::from_secs(
        s.resets_in(b.window, now).as_secs().max(1),
    ));
    exceeded(
        p,
        limit,
        format!(
            "{name}: {} {limit} of {} per {} is used up; the window resets in {resets}",
            b.id,
            size_text(n),
            duration_text(b.window)
        ),
        format!("wait {resets}"),
    )
}

fn connection_used_up(name: &str, p: &Part, dir: Dir) -> Exceeded {
    let (limit, n) = match dir {
        Dir::Up => ("connection_bytes_up", p.budget.connection_bytes_up),
        Dir::Down => ("connection_bytes_down", p.budget.connection_bytes_down),
    };
    exceeded(
        p,
        limit,
        format!(
            "{name}: {} {limit} of {} per connection is used up",
            p.budget.id,
            size_text(n.unwrap_or(0))
        ),
        "open a new connection".into(),
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
