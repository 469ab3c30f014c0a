use super::*;

fn policy(budget: &str) -> Policy {
    let src = format!(
        "[profile.default]\nallow = [\"a.test\", \"b.test\", \"db.test:5432\"]\n[[profile.default.budget]]\nhost = \"a.test\"\n{budget}\n"
    );
    Policy::parse(&src, "t.toml").expect("valid policy")
}

fn name(n: &str) -> CanonicalName {
    CanonicalName::parse(n).unwrap()
}

fn admit(b: &Budgets, p: &Policy, n: &str) -> Result<Option<Arc<Meter>>, Exceeded> {
    b.admit(p, "default", &name(n))
}

#[test]
fn bytes_are_cut_exactly_at_the_window_limit_across_connections() {
    let p = policy("bytes_up = 1000");
    let b = Budgets::default();
    let m1 = admit(&b, &p, "a.test").unwrap().expect("a meter");
    m1.charge(Dir::Up, 600).unwrap();
    m1.charge(Dir::Down, 1 << 20).unwrap();
    let m2 = admit(&b, &p, "a.test").unwrap().expect("a meter");
    let x = m2.charge(Dir::Up, 600).unwrap_err();
    assert_eq!((x.allowed, x.limit), (400, "bytes_up"));
    assert!(x.reason.starts_with("cut after 400 bytes up: a.test: profile.default.budget[0] bytes_up of 1000 B per 1h is used up"), "{}", x.reason);
    assert_eq!(m1.charge(Dir::Up, 1).unwrap_err().allowed, 0);
    // A used-up window refuses new connections, with when it resets.
    let x = admit(&b, &p, "a.test").err().expect("refused");
    assert!(x.reason.contains("resets in"), "{}", x.reason);
    // Names the budget does not cover are not counted.
    assert!(admit(&b, &p, "b.test").unwrap().is_none());
}

#[test]
fn connection_bytes_are_per_connection() {
    let p = policy("connection_bytes_down = \"1 KiB\"");
    let b = Budgets::default();
    for _ in 0..3 {
        let m = admit(&b, &p, "a.test").unwrap().unwrap();
        m.charge(Dir::Down, 1000).unwrap();
        let x = m.charge(Dir::Down, 100).unwrap_err();
        assert_eq!((x.allowed, x.limit), (24, "connection_bytes_down"));
    }
}

#[test]
fn the_connection_rate_holds_under_a_burst_and_refills() {
    let p = policy("connections_per_second = 3");
    let b = Budgets::default();
    let admitted = (0..20).filter(|_| admit(&b, &p, "a.test").is_ok()).count();
    assert_eq!(admitted, 3);
    let x = admit(&b, &p, "a.test").err().unwrap();
    assert_eq!(x.limit, "connections_per_second");
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        admit(&b, &p, "a.test").is_ok(),
        "one token back after a third of a second"
    );
}

#[test]
fn concurrency_counts_open_connections_only() {
    let p = policy("concurrent_connections = 2");
    let b = Budgets::default();
    let m1 = admit(&b, &p, "a.test").unwrap();
    let _m2 = admit(&b, &p, "a.test").unwrap();
    assert_eq!(
        admit(&b, &p, "a.test").err().unwrap().limit,
        "concurrent_connections"
    );
    drop(m1);
    assert!(admit(&b, &p, "a.test").is_ok());
}

#[test]
fn requests_are_judged_by_rate_and_declared_body() {
    let p = policy("bytes_up = 100\nrequests_per_second = 2");
    let b = Budgets::default();
    let m = admit(&b, &p, "a.test").unwrap().unwrap();
    let x = m.request(101).unwrap_err();
    assert_eq!(x.limit, "bytes_up");
    assert!(
        x.reason
            .contains("body of 101 bytes is more than the 100 bytes left"),
        "{}",
        x.reason
    );
    m.request(100).unwrap();
    // The refused request took no token; the next one takes the second.
    m.request(0).unwrap();
    assert_eq!(m.request(0).unwrap_err().limit, "requests_per_second");
}

#[test]
fn counts_survive_a_reload_and_stay_with_their_container() {
    let b = Budgets::default();
    let other = Budgets::default();
    let m = admit(&b, &policy("bytes_up = 1000"), "a.test")
        .unwrap()
        .unwrap();
    m.charge(Dir::Up, 900).unwrap();
    drop(m);
    // The reloaded file reorders and raises it: the 900 bytes still count.
    let reloaded = Policy::parse(
        "[profile.default]\nallow = [\"a.test\", \"b.test\"]\n[[profile.default.budget]]\nhost = \"b.test\"\nconcurrent_connections = 1\n[[profile.default.budget]]\nhost = \"a.test\"\nbytes_up = 2000\n",
        "t.toml",
    )
    .unwrap();
    let m = admit(&b, &reloaded, "a.test").unwrap().unwrap();
    assert_eq!(m.charge(Dir::Up, 2000).unwrap_err().allowed, 1100);
    let s = b.describe(&reloaded, "default");
    assert_eq!(s[1]["rule"], "profile.default.budget[1]");
    assert_eq!(s[1]["used_bytes_up"], 2000);
    assert_eq!(s[1]["open_connections"], 1);
    // Another container's budget is its own.
    let m = admit(&other, &reloaded, "a.test").unwrap().unwrap();
    m.charge(Dir::Up, 2000).unwrap();
}

#[test]
fn a_window_ends() {
    let p = policy("bytes_down = 10\nwindow = \"1s\"");
    let b = Budgets::default();
    let m = admit(&b, &p, "a.test").unwrap().unwrap();
    assert!(m.charge(Dir::Down, 11).is_err());
    assert!(admit(&b, &p, "a.test").is_err());
    std::thread::sleep(Duration::from_millis(1100));
    let m = admit(&b, &p, "a.test").unwrap().unwrap();
    m.charge(Dir::Down, 10).unwrap();
}
