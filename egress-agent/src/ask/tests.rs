use std::sync::Arc;

use super::*;

fn want(name: &str, port: Option<u16>) -> Want {
    Want {
        profile: "default".into(),
        name: CanonicalName::parse(name).unwrap(),
        port,
        protocol: port.map(|_| Protocol::Tls),
        cgroup_id: 7,
        comm: "curl".into(),
        pid: 1,
    }
}

const LONG: Duration = Duration::from_secs(600);

/// Waits (without a clock) until `n` decisions are pending.
async fn pending(asks: &Asks, n: usize) -> Vec<Shown> {
    loop {
        let l = asks.list();
        if l.len() == n && l.iter().all(|s| s.waiting > 0) {
            return l;
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn once_answers_every_waiter_then_the_next_is_held_again() {
    let asks = Arc::new(Asks::default());
    let (a, b) = (asks.clone(), asks.clone());
    let dns = tokio::spawn(async move { a.hold(want("x.test", None), LONG, 8).await });
    let conn = tokio::spawn(async move { b.hold(want("x.test", Some(443)), LONG, 8).await });
    let shown = loop {
        let l = pending(&asks, 1).await;
        if l[0].waiting == 2 {
            break l;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(shown[0].rule, "x.test");
    let by = "ops".to_string();
    asks.decide(
        shown[0].id,
        Verdict::Approved {
            scope: Scope::Once,
            by,
        },
    )
    .unwrap();
    for h in [dns, conn] {
        assert!(matches!(
            h.await.unwrap(),
            Outcome::Approved {
                scope: Scope::Once,
                ..
            }
        ));
    }
    assert_eq!(asks.pending_count(), 0);
    // The next connection is held again (no ticket: a connection waited for the approval).
    let c = asks.clone();
    let next = tokio::spawn(async move { c.hold(want("x.test", Some(443)), LONG, 8).await });
    let again = pending(&asks, 1).await;
    assert_ne!(again[0].id, shown[0].id);
    asks.decide(again[0].id, Verdict::Denied { by: "ops".into() })
        .unwrap();
    assert!(matches!(next.await.unwrap(), Outcome::Denied { .. }));
}

#[tokio::test]
async fn a_dns_only_approval_lets_exactly_the_following_connection_through() {
    let asks = Arc::new(Asks::default());
    let a = asks.clone();
    let dns = tokio::spawn(async move { a.hold(want("y.test", None), LONG, 8).await });
    let id = pending(&asks, 1).await[0].id;
    asks.decide(
        id,
        Verdict::Approved {
            scope: Scope::Once,
            by: "ops".into(),
        },
    )
    .unwrap();
    assert!(matches!(dns.await.unwrap(), Outcome::Approved { .. }));
    // Another port is not what was approved: held (and here it times out).
    let short = Duration::from_millis(20);
    assert!(matches!(
        asks.hold(want("y.test", Some(8443)), short, 8).await,
        Outcome::TimedOut { .. }
    ));
    assert!(matches!(
        asks.hold(want("y.test", Some(443)), short, 8).await,
        Outcome::Approved { id: i, .. } if i == id
    ));
    assert!(matches!(
        asks.hold(want("y.test", Some(443)), short, 8).await,
        Outcome::TimedOut { .. }
    ));
    assert_eq!(
        asks.pending_count(),
        0,
        "nothing is left once every waiter gave up"
    );
}

#[tokio::test]
async fn session_grants_last_and_overflow_is_denied_at_once() {
    let asks = Arc::new(Asks::default());
    let a = asks.clone();
    let h = tokio::spawn(async move { a.hold(want("z.test", Some(5432)), LONG, 8).await });
    let id = pending(&asks, 1).await[0].id;
    assert_eq!(asks.get(id).unwrap().rule, "z.test:5432");
    asks.decide(
        id,
        Verdict::Approved {
            scope: Scope::Session,
            by: "ops".into(),
        },
    )
    .unwrap();
    assert!(matches!(h.await.unwrap(), Outcome::Approved { .. }));
    for _ in 0..3 {
        assert!(matches!(
            asks.hold(want("z.test", Some(5432)), LONG, 8).await,
            Outcome::Approved {
                scope: Scope::Session,
                ..
            }
        ));
    }
    // Full: a new name is refused without waiting.
    let short = Duration::from_millis(20);
    assert_eq!(
        asks.hold(want("w.test", Some(443)), short, 0).await,
        Outcome::Overflow { max: 0 }
    );
    assert!(asks
        .decide(999, Verdict::Denied { by: "x".into() })
        .is_err());
}

#[tokio::test]
async fn a_reload_that_allows_a_held_name_releases_it_unless_it_is_being_saved() {
    let asks = Arc::new(Asks::default());
    let held = |name: &'static str| {
        let asks = asks.clone();
        tokio::spawn(async move { asks.hold(want(name, Some(443)), LONG, 8).await })
    };
    let (a, b, c) = (held("a.test"), held("b.test"), held("c.test"));
    let shown = pending(&asks, 3).await;
    let saved = shown.iter().find(|s| s.name == "c.test").unwrap().id;
    let policy = Policy::parse(
        "version = \"v2\"\n[profile.default]\nallow = [\"a.test\", \"c.test\"]\n",
        "t.toml",
    )
    .unwrap();
    let saving = asks.saving(saved);
    assert_eq!(asks.release_allowed(&policy), 1, "a.test only");
    let got = a.await.unwrap();
    assert!(
        matches!(&got, Outcome::Approved { scope: Scope::Once, rule, .. } if rule.contains("by policy reload (v2)")),
        "{got:?}"
    );
    // b.test is still not allowed; c.test waits for its own (saving) approval.
    assert_eq!(asks.pending_count(), 2);
    asks.decide(
        saved,
        Verdict::Approved {
            scope: Scope::Save,
            by: "root".into(),
        },
    )
    .unwrap();
    drop(saving);
    assert!(matches!(
        c.await.unwrap(),
        Outcome::Approved {
            scope: Scope::Save,
            ..
        }
    ));
    b.abort();
}
