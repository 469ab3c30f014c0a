//! THREATS B: the agent's host's own addresses. A name that resolves to an
//! address of the agent's host (here: a service in the agent's namespace on an
//! otherwise allowed, exempted address) must not be dialed: it would let the
//! sandbox reach host services or loop the proxy into itself.

use std::{process::Stdio, time::Duration};

use egress_tests::{
    agent::{test_policy, Agent},
    require_root,
    topology::Topology,
};

const HOST_ADDR: &str = "198.51.100.99";

#[test]
fn a_name_resolving_to_the_agents_own_host_is_refused() {
    if !require_root() {
        return;
    }
    let topo = Topology::new("host_loop");
    let _net = topo.start_fakenet_with(&["--record", &format!("hostself.test={HOST_ADDR}")]);
    // A "host service" on the agent's side.
    let ok = topo
        .ag_command("ip")
        .args(["addr", "add", &format!("{HOST_ADDR}/32"), "dev", "lo"])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let mut service = topo
        .ag_command("python3")
        .args(["-m", "http.server", "80", "--bind", HOST_ADDR])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let fetch = |cmd: &mut std::process::Command| {
        let o = cmd.output().unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    // The service is there (seen from the host side itself).
    let mut up = String::new();
    for _ in 0..50 {
        up = fetch(topo.ag_command("curl").args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{HOST_ADDR}/"),
        ]));
        if up == "200" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(up, "200", "the host service did not come up");

    let agent = Agent::attach(&topo, &test_policy(&["hostself.test"]));
    let _threat = egress_tests::threat_guard(
        "B",
        "a name resolving to the agent's own host (proxy loop, host services)",
    );
    // The sandbox's DNS does not hand the address out...
    let v = topo.probe(&["dns", "203.0.113.53", "hostself.test", "--type", "A"]);
    assert_eq!(v["rcode_num"], 3, "{v}");
    assert!(
        v["ede"][0]["extra_text"]
            .as_str()
            .unwrap_or("")
            .contains("agent's host"),
        "{v}"
    );
    // ...and a client that brings the address itself is refused by name.
    let resolve = format!("hostself.test:80:{HOST_ADDR}");
    let body = fetch(topo.ctr_command("curl").args([
        "-s",
        "-m",
        "5",
        "--resolve",
        &resolve,
        "http://hostself.test/",
    ]));
    let v: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|_| panic!("expected a JSON denial, got {body:?}"));
    assert_eq!(v["error"], "destination_ip_prohibited", "{v}");
    assert!(
        v["reason"].as_str().unwrap().contains("agent's host"),
        "{v}"
    );
    // And the allowed name next to it still works.
    let code = fetch(topo.ctr_command("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-m",
        "5",
        "http://allowed.test/",
    ]));
    assert_eq!(code, "200");
    drop(agent);
    let _ = service.kill();
    let _ = service.wait();
}
