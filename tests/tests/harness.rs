//! Proves the harness itself, with no enforcer: every server of the fake internet is reachable from the
//! container by every client the attack tests use, and a topology leaves nothing behind.

use std::process::Output;

use egress_tests::addrs::*;
use egress_tests::{require_root, Topology};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn curl(topo: &Topology, args: &[&str]) -> Output {
    topo.ctr_command("curl")
        .args(["-sS", "--max-time", "5", "--noproxy", "*"])
        .args(args)
        .output()
        .expect("run curl (apt-get install curl)")
}

#[test]
fn http_reaches_fake_internet() {
    require_root!();
    let topo = Topology::new("http_reaches_fake_internet");
    let fake = topo.start_fakenet();
    let out = curl(
        &topo,
        &["http://198.51.100.10/hello?x=1", "-H", "Host: allowed.test"],
    );
    assert!(out.status.success(), "curl failed: {out:?}");
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["path"], "/hello?x=1");
    assert_eq!(v["host"], "allowed.test");
    assert_eq!(v["server"], "198.51.100.10:80");
    assert!(v["peer"]
        .as_str()
        .unwrap()
        .starts_with(&CTR_LINK.to_string()));
    assert_eq!(fake.connections_to(WEB1.into()).len(), 1);
}
