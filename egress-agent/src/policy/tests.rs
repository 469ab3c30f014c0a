use super::*;
use crate::deny::DenyCode;

const SAMPLE: &str = r#"version = "2026-11-22.1"
mode = "enforce"
resolver = "203.0.113.53:53"
allow_ranges = ["203.0.113.0/24", "198.51.100.7"]
upstream_ca = "/etc/egress-agent/upstream.pem"
upstream_proxy = "http://Proxy.Corp:3128/"
upstream_proxy_auth = { file = "/etc/egress-agent/proxy-auth" }
no_upstream_proxy = ["*.svc.example.org", "db.example.net:5432"]

[profile.default]
allow = ["example.com", "*.example.org", "db.example.net:5432", "*.svc.example.org:8443"]
inspect = ["api.example.com", "*.inspect.example"]
passthrough = ["pinned.example.com", "pinned.inspect.example"]

[[profile.default.http]]
host = "api.example.com"
methods = ["GET", "post"]
paths = ["/v1/*", "/health", "/files/**"]
inject = { header = "Authorization", env = "EGRESS_TEST_TOKEN" }

[[profile.default.http]]
host = "api.example.com"
methods = ["DELETE"]
paths = ["/v1/items/*"]

[[profile.default.http]]
host = "*.inspect.example"
paths = ["/ok"]
inject = { header = "X-Key", file = "/etc/egress-agent/key" }

[profile.ci]
allow = ["crates.io", "*.crates.io", "github.com:22"]
"#;

fn sample() -> Policy {
    Policy::parse(SAMPLE, "sample.toml").expect("sample parses")
}

fn n(s: &str) -> CanonicalName {
    CanonicalName::parse(s).expect("name")
}

fn allow(p: &Policy, prof: &str, name: &str, port: u16, proto: Protocol) -> Option<(String, bool)> {
    match p.decide(prof, &n(name), port, proto) {
        Decision::Allow { rule, inspect } => Some((rule.as_str().to_string(), inspect)),
        Decision::Deny(_) => None,
    }
}

fn denied(p: &Policy, prof: &str, name: &str, port: u16, proto: Protocol) -> Denied {
    match p.decide(prof, &n(name), port, proto) {
        Decision::Deny(d) => d,
        Decision::Allow { rule, .. } => panic!("{name}:{port} allowed by {rule}"),
    }
}

fn err(src: &str) -> String {
    match Policy::parse(src, "p.toml") {
        Ok(_) => panic!("accepted:\n{src}"),
        Err(e) => {
            let s = e.to_string();
            assert!(!s.contains('\n'), "one line: {s}");
            s
        }
    }
}

#[test]
fn sample_accessors() {
    let p = sample();
    assert_eq!(p.version(), "2026-11-22.1");
    assert_eq!(p.mode(), Mode::Enforce);
    assert_eq!(p.resolver(), Some("203.0.113.53:53".parse().expect("sa")));
    assert_eq!(p.origin(), "sample.toml");
    assert_eq!(
        p.upstream_ca(),
        Some(Path::new("/etc/egress-agent/upstream.pem"))
    );
    assert_eq!(p.profile_names().collect::<Vec<_>>(), ["ci", "default"]);
    assert!(p.has_profile("ci") && !p.has_profile("nope"));
    let a = p.addr_policy();
    assert!(a.classify("203.0.113.9".parse().expect("ip")).is_allowed());
    assert!(a.classify("198.51.100.7".parse().expect("ip")).is_allowed());
    assert!(!a.classify("198.51.100.8".parse().expect("ip")).is_allowed());
    let proxy = p.upstream_proxy().expect("proxy");
    assert_eq!(proxy.url(), "http://proxy.corp:3128");
    assert_eq!(
        proxy.auth_file(),
        Some(Path::new("/etc/egress-agent/proxy-auth"))
    );
    assert!(matches!(p.route(&n("example.com"), 443), Route::Proxy(_)));
    assert!(matches!(
        p.route(&n("a.svc.example.org"), 8443),
        Route::Bypass(0, _)
    ));
    assert!(matches!(
        p.route(&n("db.example.net"), 5432),
        Route::Bypass(1, _)
    ));
    assert!(matches!(
        p.route(&n("db.example.net"), 443),
        Route::Proxy(_)
    ));
    // The proxy's credentials are a secret the sandbox must never see, like inject sources.
    assert!(p
        .inject_sources()
        .contains(&&SecretSource::File("/etc/egress-agent/proxy-auth".into())));
    let plain = Policy::parse("[profile.default]\nallow = [\"a.com\"]\n", "p").expect("ok");
    assert!(plain.upstream_proxy().is_none());
    assert_eq!(plain.route(&n("a.com"), 443), Route::Direct);
}

#[test]
fn defaults_and_monitor_mode() {
    let src = "mode = \"monitor\"\n[profile.default]\nallow = [\"example.com\"]\n";
    let p = Policy::parse(src, "m.toml").expect("ok");
    assert_eq!(p.mode(), Mode::Monitor);
    assert_eq!(p.resolver(), None);
    assert_eq!(p.dns_deny(), super::DnsDeny::Explain, "the default");
    let nx = Policy::parse(&format!("dns_deny = \"nxdomain\"\n{src}"), "x").expect("ok");
    assert_eq!(nx.dns_deny(), super::DnsDeny::Nxdomain);
    assert!(nx.show().contains("dns_deny = \"nxdomain\""));
    assert!(p.version().starts_with("fnv1a64:") && p.version().len() == 8 + 16);
    // Same bytes, same label; other bytes, other label.
    assert_eq!(p.version(), Policy::parse(src, "x").expect("ok").version());
    let other = Policy::parse(&format!("{src}\n"), "x").expect("ok");
    assert_ne!(p.version(), other.version());
    // Monitor still decides (callers report "would deny").
    assert!(matches!(
        p.decide("default", &n("evil.example"), 443, Protocol::Tls),
        Decision::Deny(_)
    ));
    let empty = Policy::parse("", "empty.toml").expect("empty policy");
    assert_eq!(empty.mode(), Mode::Enforce);
    assert_eq!(empty.profile_names().count(), 0);
}

#[test]
fn resolv_conf() {
    let text = "# c\nsearch x\nnameserver fe80::1%eth0\nnameserver 10.255.255.53\n";
    assert_eq!(
        parse_resolv_conf(text),
        Some("[fe80::1]:53".parse().expect("sa"))
    );
    assert_eq!(
        parse_resolv_conf("nameserver bogus\nnameserver 10.0.0.2\n"),
        Some("10.0.0.2:53".parse().expect("sa"))
    );
    assert_eq!(parse_resolv_conf("options ndots:5\n"), None);
    let p = Policy::parse("resolver = \"2001:db8::53\"", "r").expect("ok");
    assert_eq!(p.resolver(), Some("[2001:db8::53]:53".parse().expect("sa")));
}

#[test]
fn exact_and_wildcard_boundaries() {
    let p = sample();
    let tls = Protocol::Tls;
    assert_eq!(
        allow(&p, "default", "example.com", 443, tls),
        Some(("profile.default.allow[0]".into(), false))
    );
    assert_eq!(
        denied(&p, "default", "a.example.com", 443, tls).code,
        DenyCode::HostNotAllowed
    );
    assert_eq!(
        allow(&p, "default", "a.example.org", 443, tls),
        Some(("profile.default.allow[1]".into(), false))
    );
    assert!(allow(&p, "default", "a.b.c.example.org", 80, tls).is_some());
    for bad in [
        "example.org",
        "evilexample.org",
        "example.org.evil",
        "xexample.org",
        "org",
    ] {
        let d = denied(&p, "default", bad, 443, tls);
        assert_eq!(d.code, DenyCode::HostNotAllowed, "{bad}");
        assert_eq!(d.rule, None);
        assert_eq!(d.hint, format!("add \"{bad}\" to [profile.default] allow"));
    }
    // Case, trailing dot, IDN and fullwidth all canonicalise to the same name.
    for spelling in [
        "EXAMPLE.COM",
        "example.com.",
        "ｅｘａｍｐｌｅ.ｃｏｍ",
        "Example.Com.",
    ] {
        assert!(
            allow(&p, "default", spelling, 443, tls).is_some(),
            "{spelling}"
        );
    }
    let idn = Policy::parse("[profile.default]\nallow = [\"*.BÜCHER.example.\"]", "i").expect("ok");
    assert!(allow(&idn, "default", "shop.xn--bcher-kva.example", 443, tls).is_some());
    assert!(allow(&idn, "default", "shop.bücher.example", 443, tls).is_some());
    assert!(allow(&idn, "default", "shop.bucher.example", 443, tls).is_none());
}

#[test]
fn ports_and_protocols() {
    let p = sample();
    use Protocol::*;
    assert!(allow(&p, "default", "example.com", 80, Http).is_some());
    let d = denied(&p, "default", "example.com", 8443, Tls);
    assert_eq!(d.code, DenyCode::PortNotAllowed);
    assert_eq!(
        d.rule.as_ref().map(RuleRef::as_str),
        Some("profile.default.allow[0]")
    );
    assert_eq!(
        d.hint,
        "add \"example.com:8443\" to [profile.default] allow"
    );
    // Explicit port only.
    assert_eq!(
        allow(&p, "default", "db.example.net", 5432, Opaque),
        Some(("profile.default.allow[2]".into(), false))
    );
    assert_eq!(
        denied(&p, "default", "db.example.net", 443, Tls).code,
        DenyCode::PortNotAllowed
    );
    // Opaque needs an explicit port.
    let d = denied(&p, "default", "example.com", 443, Opaque);
    assert_eq!(d.code, DenyCode::ProtocolNotAllowed);
    assert_eq!(
        d.rule.as_ref().map(RuleRef::as_str),
        Some("profile.default.allow[0]")
    );
    assert!(d.hint.contains("example.com:443"));
    // Wildcard with port: the longer suffix wins the rule reference.
    assert_eq!(
        allow(&p, "default", "x.svc.example.org", 8443, Opaque),
        Some(("profile.default.allow[3]".into(), false))
    );
    assert_eq!(
        allow(&p, "default", "x.svc.example.org", 443, Tls),
        Some(("profile.default.allow[1]".into(), false))
    );
    assert_eq!(
        denied(&p, "default", "x.example.org", 8443, Tls).code,
        DenyCode::PortNotAllowed
    );
}

#[test]
fn inspect_and_passthrough() {
    let p = sample();
    use Protocol::*;
    assert_eq!(
        allow(&p, "default", "api.example.com", 443, Tls),
        Some(("profile.default.inspect[0]".into(), true))
    );
    assert_eq!(
        allow(&p, "default", "api.example.com", 80, Http),
        Some(("profile.default.inspect[0]".into(), true))
    );
    assert_eq!(
        denied(&p, "default", "api.example.com", 8443, Tls).code,
        DenyCode::PortNotAllowed
    );
    assert_eq!(
        allow(&p, "default", "x.inspect.example", 443, Tls),
        Some(("profile.default.inspect[1]".into(), true))
    );
    // Passthrough wins over a matching inspect wildcard.
    assert_eq!(
        allow(&p, "default", "pinned.inspect.example", 443, Tls),
        Some(("profile.default.passthrough[1]".into(), false))
    );
    assert_eq!(
        allow(&p, "default", "pinned.example.com", 443, Tls),
        Some(("profile.default.passthrough[0]".into(), false))
    );
}

#[test]
fn profiles() {
    let p = sample();
    use Protocol::*;
    assert!(allow(&p, "ci", "crates.io", 443, Tls).is_some());
    assert!(allow(&p, "ci", "static.crates.io", 443, Tls).is_some());
    assert!(allow(&p, "ci", "github.com", 22, Opaque).is_some());
    assert_eq!(
        denied(&p, "ci", "github.com", 443, Tls).code,
        DenyCode::PortNotAllowed
    );
    assert_eq!(
        denied(&p, "ci", "example.com", 443, Tls).code,
        DenyCode::HostNotAllowed
    );
    assert_eq!(
        denied(&p, "default", "crates.io", 443, Tls).code,
        DenyCode::HostNotAllowed
    );
    let d = denied(&p, "nope", "example.com", 443, Tls);
    assert_eq!(d.code, DenyCode::HostNotAllowed);
    assert_eq!(d.reason, "profile \"nope\" is not defined in the policy");
    assert_eq!(d.rule, None);
    let den = d.to_denial("example.com", 443, &p);
    assert_eq!(den.policy, "2026-11-22.1");
    let v: serde_json::Value = serde_json::from_str(&den.json_body()).expect("json");
    assert_eq!(v["error"], "host_not_allowed");
}

#[test]
fn per_request_rules() {
    let p = sample();
    let host = n("api.example.com");
    let req = |m: &str, path: &str| p.decide_request("default", &host, m, path);
    let r = req("GET", "/v1/items").expect("allowed").expect("rule");
    assert_eq!(r.rule().as_str(), "profile.default.http[0]");
    let (hdr, src) = r.inject().expect("inject");
    assert_eq!(hdr, "Authorization");
    assert_eq!(src.to_string(), "env:EGRESS_TEST_TOKEN");
    assert_eq!(
        r.methods(),
        Some(&["GET".to_string(), "POST".to_string()][..])
    );
    assert!(req("POST", "/v1/items?x=/y").is_ok());
    assert!(req("GET", "/health").is_ok());
    assert!(req("GET", "/files/a/b/c").is_ok());
    // `*` does not cross `/`.
    let d = req("GET", "/v1/items/7").expect_err("deny");
    assert_eq!(d.code, DenyCode::MethodNotAllowed); // DELETE rule allows the path
    assert_eq!(
        d.rule.as_ref().map(RuleRef::as_str),
        Some("profile.default.http[1]")
    );
    let r = req("DELETE", "/v1/items/7").expect("ok").expect("rule");
    assert_eq!(r.rule().as_str(), "profile.default.http[1]");
    assert!(r.inject().is_none());
    let d = req("GET", "/admin").expect_err("deny");
    assert_eq!(d.code, DenyCode::PathNotAllowed);
    assert_eq!(
        d.rule.as_ref().map(RuleRef::as_str),
        Some("profile.default.http[0]")
    );
    let d = req("PUT", "/health").expect_err("deny");
    assert_eq!(d.code, DenyCode::MethodNotAllowed);
    assert!(d.hint.contains("\"PUT\""), "{}", d.hint);
    // Methods are case-sensitive (config upper-cased).
    assert_eq!(
        req("get", "/health").expect_err("deny").code,
        DenyCode::MethodNotAllowed
    );
    // Paths whose readings differ never match on the strength of one reading alone.
    for (bad, why) in [
        ("/v1/../admin", "act on \"/admin\""),
        ("/v1/./x", "as sent act on \"/v1/./x\""),
        ("/v1/%2e%2e/admin", "act on \"/admin\""),
        ("/v1/%2E%2E", "act on \"/\""),
        ("/v1/a%2fb", "encoded `/`"),
        ("/v1\\..\\admin", "backslash"),
        ("/files/..", "act on \"/\""),
    ] {
        let d = req("GET", bad).expect_err(bad);
        assert_eq!(d.code, DenyCode::PathNotAllowed, "{bad}");
        assert!(d.reason.contains(why), "{bad}: {}", d.reason);
    }
    // Hosts without rules: any request.
    assert!(p
        .decide_request("default", &n("example.com"), "DELETE", "/x")
        .expect("ok")
        .is_none());
    // Wildcard host rules.
    let w = n("a.inspect.example");
    let r = p
        .decide_request("default", &w, "PATCH", "/ok")
        .expect("ok")
        .expect("rule");
    assert_eq!(
        r.inject().map(|(_, s)| s.to_string()).as_deref(),
        Some("/etc/egress-agent/key")
    );
    assert_eq!(
        p.decide_request("default", &w, "GET", "/no")
            .expect_err("deny")
            .code,
        DenyCode::PathNotAllowed
    );
    assert!(p.decide_request("nope", &w, "GET", "/").is_err());
}

#[test]
fn secrets_are_resolved_lazily_and_redacted() {
    let src = SecretSource::Env("EGRESS_AGENT_TEST_SECRET_UNSET_XYZ".into());
    assert!(src.resolve().is_err());
    let dir = std::env::temp_dir().join(format!("egress-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let f = dir.join("token");
    std::fs::write(&f, "Bearer s3cr3t\n").expect("write");
    let s = SecretSource::File(f.clone()).resolve().expect("read");
    assert_eq!(s.expose(), "Bearer s3cr3t");
    assert!(!format!("{s:?} {s}").contains("s3cr3t"));
    std::fs::write(&f, "a\r\nX-Evil: 1").expect("write");
    assert!(SecretSource::File(f.clone()).resolve().is_err());
    let _ = std::fs::remove_dir_all(&dir);
    // The policy's Debug and show() never hold values, only sources.
    let p = sample();
    let shown = p.show();
    assert!(shown.contains("env = \"EGRESS_TEST_TOKEN\""));
    assert!(shown.contains("file = \"/etc/egress-agent/key\""));
}

/// Issue 17 §6: a rule allowing only `/ok/**` refuses each class of spelling that some server
/// resolves outside `/ok/`, and still allows every legitimate path under it.
#[test]
fn path_rules_judge_what_the_server_acts_on() {
    let p = Policy::parse(
        r#"
[profile.default]
inspect = ["api.example.com", "files.example.com"]
[[profile.default.http]]
host = "api.example.com"
paths = ["/ok/**"]
[[profile.default.http]]
host = "files.example.com"
paths = ["/pub/*.txt"]
"#,
        "p.toml",
    )
    .expect("policy");
    let req = |host: &str, path: &str| p.decide_request("default", &n(host), "GET", path);
    // (class, spelling, what the reason says)
    let refused: &[(&str, &str, &str)] = &[
        ("dot segments", "/ok/../admin", "act on \"/admin\""),
        ("dot segments", "/ok/a/../../admin", "act on \"/admin\""),
        ("dot segments", "/ok/..", "act on \"/\""),
        (
            "dot segments before the prefix",
            "/admin/../ok/x",
            "as sent act on \"/admin/../ok/x\"",
        ),
        ("encoded dots", "/ok/%2e%2e/admin", "act on \"/admin\""),
        ("encoded dots", "/ok/.%2E/admin", "act on \"/admin\""),
        ("path parameters", "/ok/..;/admin", "`..;`"),
        ("path parameters", "/ok/..;jsessionid=1/admin", "`..;`"),
        ("path parameters", "/ok/.;/../admin", "`..;`"),
        ("path parameters", "/ok/..%3b/admin", "`..;`"),
        ("double encoding", "/ok/%252e%252e/admin", "encoded `%`"),
        ("double encoding", "/ok/%252fadmin", "encoded `%`"),
        ("invalid UTF-8", "/ok/%c0%ae%c0%ae/admin", "UTF-8"),
        ("invalid UTF-8", "/ok/%e0%80%ae%e0%80%ae/admin", "UTF-8"),
        ("invalid UTF-8", "/ok/%ff", "UTF-8"),
        ("NUL", "/ok/x%00", "NUL"),
        ("NUL", "/ok/..%00/admin", "NUL"),
        ("encoded separators", "/ok/..%2fadmin", "encoded `/`"),
        ("encoded separators", "/ok/..%5Cadmin", "encoded `/`"),
        ("backslash", "/ok\\..\\admin", "backslash"),
        ("bad escape", "/ok/%u002e%u002e/admin", "two hex digits"),
        (
            "encoded control",
            "/ok/a%0d%0aX-Injected:1",
            "control character",
        ),
        (
            "outside",
            "/admin",
            "not allowed for api.example.com by profile.default.http[0]",
        ),
        ("outside", "/okay", "not allowed"),
        ("outside", "/ok", "not allowed"),
    ];
    for (class, path, why) in refused {
        let d = req("api.example.com", path).expect_err(path);
        assert_eq!(d.code, DenyCode::PathNotAllowed, "{class}: {path}");
        assert!(d.reason.contains(why), "{class}: {path}: {}", d.reason);
        assert_eq!(
            d.rule.as_ref().map(RuleRef::as_str),
            Some("profile.default.http[0]")
        );
        assert!(!d.hint.is_empty());
    }
    let allowed = [
        "/ok/",
        "/ok/a",
        "/ok/a/b/c.json",
        "/ok/a?next=/admin/../x",
        "/ok/a?q=%252e%00",
        "/ok/%7Euser",
        "/ok/%41bc",
        "/ok/a%2Db_c",
        "/ok/%2e%2e%2e",
        "/ok/a%20b",
        "/ok/caf%C3%A9",
        "/ok/caf\u{e9}",
        "/ok/a/./b",
        "/ok/a/../b",
        "/ok/%2e/b",
        "/ok/a;v=1",
        "/ok/.well-known/x",
        "/ok/...",
        "/ok//x",
    ];
    for path in allowed {
        assert!(
            matches!(req("api.example.com", path), Ok(Some(_))),
            "{path}: {:?}",
            req("api.example.com", path)
        );
    }
    // Servlet containers strip `;` parameters: `a.conf;.txt` is `a.conf` to them.
    assert!(req("files.example.com", "/pub/a.txt").is_ok());
    let d = req("files.example.com", "/pub/secret.conf;.txt").expect_err("servlet");
    assert!(d.reason.contains("Tomcat"), "{}", d.reason);
    assert!(d.reason.contains("\"/pub/secret.conf\""), "{}", d.reason);
    // A glob is normalised like a path, and one that could never match is refused.
    let p2 = Policy::parse(
        "[profile.default]\ninspect = [\"a.example\"]\n[[profile.default.http]]\nhost = \"a.example\"\npaths = [\"/%7Euser/*\"]\n",
        "p.toml",
    )
    .expect("policy");
    assert!(
        p2.show().contains("paths = [\"/~user/*\"]"),
        "{}",
        p2.show()
    );
    assert!(p2
        .decide_request("default", &n("a.example"), "GET", "/%7euser/x")
        .is_ok());
}

#[test]
fn path_globs() {
    let g = |s: &str| PathGlob::parse(s).expect("glob");
    assert!(g("/v1/*").matches("/v1/x"));
    assert!(g("/v1/*").matches("/v1/"));
    assert!(!g("/v1/*").matches("/v1/x/y"));
    assert!(!g("/v1/*").matches("/v1"));
    assert!(g("/v1/**").matches("/v1/x/y/z"));
    assert!(g("/**").matches("/"));
    assert!(g("/a/*/c").matches("/a/b/c"));
    assert!(!g("/a/*/c").matches("/a/b/b/c"));
    assert!(g("/a/**/c").matches("/a/b/b/c"));
    assert!(g("/a/**/c").matches("/a//c"));
    assert!(g("/*.json").matches("/x.json"));
    assert!(!g("/*.json").matches("/x.jsonx"));
    assert!(g("/health").matches("/health"));
    assert!(!g("/health").matches("/healthz"));
    assert!(!g("/health").matches("/health/"));
    // Pathological globs stay linear.
    let many = format!("/{}x", "*".repeat(60));
    let glob = PathGlob::parse(&many).expect("ok");
    assert!(!glob.matches(&format!("/{}", "a".repeat(10_000))));
    assert!(PathGlob::parse("v1").is_err());
    assert!(PathGlob::parse("/a?b").is_err());
    assert!(PathGlob::parse(&format!("/{}", "a".repeat(200))).is_err());
}

#[test]
fn errors_name_file_line_column_and_key() {
    let cases: &[(&str, &str)] = &[
        (
            "mode = \"enforce\"\nalow = []\n",
            "p.toml:2:1: key `alow`: unknown field `alow`",
        ),
        (
            "[profile.default]\nallow = [\"a.com\"]\nallowed = [\"b.com\"]\n",
            "p.toml:3:1: key `profile.default.allowed`: unknown field `allowed`",
        ),
        (
            "[profile.default]\nallow = [\"a.com\",\n  \"b.com\", \"*\"]\n",
            "p.toml:3:12: key `profile.default.allow[2]`: a bare `*` would allow every name",
        ),
        (
            "allow_ranges = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n",
            "p.toml:1:31: key `allow_ranges[1]`: invalid network \"10.0.0.0/33\"",
        ),
        (
            "allow_ranges = [\"10.1.0.0/8\"]\n",
            "p.toml:1:17: key `allow_ranges[0]`: network \"10.1.0.0/8\" has host bits set: did you mean 10.0.0.0/8?",
        ),
        (
            "upstream_proxy = \"https://proxy.corp:3128\"\n",
            "p.toml:1:18: key `upstream_proxy`: scheme \"https\": only http:// proxies are supported",
        ),
        (
            "upstream_proxy = \"proxy.corp:3128\"\n",
            "p.toml:1:18: key `upstream_proxy`: \"proxy.corp:3128\" is not a URL",
        ),
        (
            "upstream_proxy = \"http://u:p@proxy.corp:3128\"\n",
            "p.toml:1:18: key `upstream_proxy`: credentials do not belong in the URL",
        ),
        (
            "upstream_proxy = \"http://10.1.2.3:3128\"\n",
            "p.toml:1:18: key `upstream_proxy`: 10.1.2.3 is in the deny set",
        ),
        (
            "upstream_proxy = \"http://127.0.0.1:3128\"\nallow_ranges = [\"10.0.0.0/8\"]\n",
            "p.toml:1:18: key `upstream_proxy`: 127.0.0.1 is in the deny set",
        ),
        (
            "upstream_proxy = 3128\n",
            "p.toml:1:18: key `upstream_proxy`: invalid type: integer `3128`, expected a string",
        ),
        (
            "upstream_proxy = \"http://p.corp:3128\"\nupstream_proxy_auth = { file = \"auth\" }\n",
            "p.toml:2:32: key `upstream_proxy_auth.file`: \"auth\" must be an absolute path",
        ),
        (
            "upstream_proxy = \"http://p.corp:3128\"\nupstream_proxy_auth = { env = \"PW\" }\n",
            "p.toml:2:25: key `upstream_proxy_auth.env`: unknown field `env`, expected `file`",
        ),
        (
            "upstream_proxy_auth = { file = \"/a\" }\n",
            "p.toml:1:23: key `upstream_proxy_auth`: credentials without `upstream_proxy`",
        ),
        (
            "no_upstream_proxy = [\"a.corp\"]\n",
            "p.toml:1:22: key `no_upstream_proxy[0]`: exceptions without `upstream_proxy`",
        ),
        (
            "upstream_proxy = \"http://p.corp:3128\"\nno_upstream_proxy = [\"a.corp\", \"10.0.0.1\"]\n",
            "p.toml:2:32: key `no_upstream_proxy[1]`: 10.0.0.1 is an IP address",
        ),
        (
            "upstream_proxy = \"http://p.corp:3128\"\nno_upstream_proxy = [\"a.corp\", \"A.corp.\"]\n",
            "p.toml:2:32: key `no_upstream_proxy[1]`: \"a.corp\" is listed twice",
        ),
        (
            "[profile.default]\ninspect = [\"x.com\"]\n[[profile.default.http]]\nhost = \"x.com\"\npaths = [\"/ok/..;/x\"]\n",
            "p.toml:5:10: key `profile.default.http[0].paths[0]`: path glob \"/ok/..;/x\" can never match",
        ),
        (
            "mode = \"block\"\n",
            "p.toml:1:8: key `mode`: unknown mode \"block\": expected \"enforce\" or \"monitor\"",
        ),
        (
            "mode = \"enforce\"\ndns_deny = \"refuse\"\n",
            "p.toml:2:12: key `dns_deny`: unknown value \"refuse\": expected \"explain\" or \"nxdomain\"",
        ),
        (
            "resolver = \"dns.example:53\"\n",
            "p.toml:1:12: key `resolver`: invalid resolver \"dns.example:53\"",
        ),
        (
            "[profile.default]\nallow = \"example.com\"\n",
            "p.toml:2:9: key `profile.default.allow`: invalid type: string \"example.com\", expected a sequence",
        ),
        ("[profile.default\nallow = []\n", "p.toml:1:17: invalid TOML:"),
        (
            "[profile.default]\nallow = [\"db:*\"]\n",
            "p.toml:2:10: key `profile.default.allow[0]`: port `*` in \"db:*\" is not supported",
        ),
        (
            "[profile.default]\nallow = [\"10.0.0.1:80\"]\n",
            "p.toml:2:10: key `profile.default.allow[0]`: 10.0.0.1 is an IP address: patterns name hosts",
        ),
        (
            "[profile.default]\nallow = [\"0x7f.1\"]\n",
            "p.toml:2:10: key `profile.default.allow[0]`: 127.0.0.1 is an IP address",
        ),
        (
            "[profile.default]\nallow = [\"a b.com\"]\n",
            "p.toml:2:10: key `profile.default.allow[0]`: name \"a b.com\" contains the forbidden character ' '",
        ),
        (
            "[profile.default]\ninspect = [\"x.com\"]\npassthrough = [\"y.com\", \"x.com:443\"]\n",
            "p.toml:3:25: key `profile.default.passthrough[1]`: \"x.com\" is both in `profile.default.inspect[0]` (line 2) and `profile.default.passthrough[1]`",
        ),
        (
            "[profile.default]\nallow = [\"x.com\", \"X.COM.\"]\n",
            "p.toml:2:19: key `profile.default.allow[1]`: \"x.com\" is listed twice (also `profile.default.allow[0]`, line 2)",
        ),
        (
            "[profile.default]\nallow = [\"x.com\"]\n[[profile.default.http]]\nhost = \"y.com\"\n",
            "p.toml:4:8: key `profile.default.http[0].host`: http rule for \"y.com\", which [profile.default] does not allow",
        ),
        (
            "[profile.default]\nallow = [\"x.com\"]\n[[profile.default.http]]\nhost = \"x.com\"\n",
            "p.toml:4:8: key `profile.default.http[0].host`: \"x.com\" is allowed but not inspected",
        ),
        (
            "[profile.default]\ninspect = [\"*.x.com\"]\npassthrough = [\"a.x.com\"]\n[[profile.default.http]]\nhost = \"a.x.com\"\n",
            "p.toml:5:8: key `profile.default.http[0].host`: \"a.x.com\" is passed through by `profile.default.passthrough[0]`",
        ),
        (
            "[profile.default]\ninspect = [\"x.com\"]\n[[profile.default.http]]\nhost = \"x.com:443\"\n",
            "p.toml:4:8: key `profile.default.http[0].host`: \"x.com:443\": http rules apply to every port of a host",
        ),
        (
            "[profile.default]\ninspect = [\"x.com\"]\n[[profile.default.http]]\nhost = \"x.com\"\nmethod = [\"GET\"]\n",
            "p.toml:5:1: key `profile.default.http[0].method`: unknown field `method`",
        ),
        (
            "[profile.default]\ninspect = [\"x.com\"]\n[[profile.default.http]]\nhost = \"x.com\"\nmethods = [\"GET\", \"G T\"]\n",
            "p.toml:5:19: key `profile.default.http[0].methods[1]`: \"G T\" is not an HTTP method",
        ),
        (
            "[profile.default]\ninspect = [\"x.com\"]\n[[profile.default.http]]\nhost = \"x.com\"\nmethods = []\n",
            "p.toml:5:11: key `profile.default.http[0].methods`: an empty list would refuse every request",
        ),
        (
            "[profile.default]\ninspect = [\"x.com\"]\n[[profile.default.http]]\nhost = \"x.com\"\npaths = [\"/ok\", \"v1/*\"]\n",
            "p.toml:5:17: key `profile.default.http[0].paths[1]`: path glob \"v1/*\" must start with `/`",
        ),
        (
            "[profile.default]\ninspect = [\"x.com\"]\n[[profile.default.http]]\nhost = \"x.com\"\ninject = { header = \"Authorization\", env = \"A\", file = \"/f\" }\n",
            "p.toml:5:10: key `profile.default.http[0].inject`: give exactly one of `env` or `file`",
        ),
        (
            "[profile.default]\ninspect = [\"x.com\"]\n[[profile.default.http]]\nhost = \"x.com\"\ninject = { header = \"Host\", env = \"A\" }\n",
            "p.toml:5:21: key `profile.default.http[0].inject.header`: \"Host\" is managed by the agent",
        ),
        (
            "[profile.default]\ninspect = [\"x.com\"]\n[[profile.default.http]]\nhost = \"x.com\"\ninject = { header = \"A\", file = \"tok\" }\n",
            "p.toml:5:33: key `profile.default.http[0].inject.file`: \"tok\" must be an absolute path",
        ),
        (
            "[profile.default]\ninspect = [\"x.com\"]\n[[profile.default.http]]\nhost = \"x.com\"\ninject = { header = \"A\", env = \"A\", extra = 1 }\n",
            "key `profile.default.http[0].inject.extra`: unknown field `extra`",
        ),
        (
            "[profile.\"a b\"]\nallow = [\"x.com\"]\n",
            "key `profile.\"a b\"`: profile names are 1 to 64 letters",
        ),
        (
            "version = \"\"\n",
            "p.toml:1:11: key `version`: expected 1 to 64 printable ASCII characters",
        ),
    ];
    for (src, want) in cases {
        let got = err(src);
        assert!(
            got.contains(want),
            "\nsource:\n{src}\nwant: {want}\ngot:  {got}"
        );
    }
    // Accessors.
    let e = Policy::parse("[profile.default]\nallow = [\"*\"]\n", "p").expect_err("bad");
    assert_eq!(e.position(), Some((2, 10)));
    assert_eq!(e.key(), Some("profile.default.allow[0]"));
}

#[test]
fn load_and_allow_list() {
    let e = Policy::load("/nonexistent/egress-policy.toml").expect_err("missing");
    assert!(e
        .to_string()
        .starts_with("/nonexistent/egress-policy.toml: cannot read"));
    let p =
        Policy::from_allow_list(&["example.com".into(), "*.example.org:8443".into()]).expect("ok");
    assert_eq!(p.profile_names().collect::<Vec<_>>(), ["default"]);
    assert!(p.version().starts_with("cli:fnv1a64:"));
    assert!(allow(&p, "default", "example.com", 443, Protocol::Tls).is_some());
    assert!(allow(&p, "default", "a.example.org", 8443, Protocol::Opaque).is_some());
    let e = Policy::from_allow_list(&["ok.com".into(), "*".into()]).expect_err("bad");
    assert_eq!(
        e.to_string(),
        "--allow \"*\": a bare `*` would allow every name: use a suffix such as `*.example.com`"
    );
}

fn battery(p: &Policy) -> Vec<String> {
    let names = [
        "example.com",
        "a.example.com",
        "example.org",
        "a.example.org",
        "db.example.net",
        "x.svc.example.org",
        "api.example.com",
        "x.inspect.example",
        "pinned.inspect.example",
        "pinned.example.com",
        "crates.io",
        "static.crates.io",
        "github.com",
        "evil.example",
    ];
    let mut out = Vec::new();
    for prof in ["default", "ci", "nope"] {
        for name in names {
            for port in [22, 80, 443, 5432, 8443] {
                for proto in [Protocol::Tls, Protocol::Http, Protocol::Opaque] {
                    out.push(format!("{:?}", p.decide(prof, &n(name), port, proto)));
                }
            }
            for (m, path) in [
                ("GET", "/v1/x"),
                ("DELETE", "/v1/items/1"),
                ("GET", "/ok"),
                ("PUT", "/"),
            ] {
                let r = p.decide_request(prof, &n(name), m, path).map(|r| {
                    r.map(|r| {
                        (
                            r.rule().clone(),
                            r.inject().map(|(h, s)| (h.to_string(), s.clone())),
                        )
                    })
                });
                out.push(format!("{r:?}"));
            }
        }
    }
    out
}

#[test]
fn show_round_trips() {
    let p = sample();
    let shown = p.show();
    let q = Policy::parse(&shown, "shown.toml").unwrap_or_else(|e| panic!("{e}\n{shown}"));
    assert_eq!(battery(&p), battery(&q));
    assert_eq!(q.version(), p.version());
    assert_eq!(q.resolver(), p.resolver());
    assert_eq!(q.addr_policy(), p.addr_policy());
    assert_eq!(q.upstream_ca(), p.upstream_ca());
    assert_eq!(q.upstream_proxy(), p.upstream_proxy());
    assert!(
        shown.contains("upstream_proxy = \"http://proxy.corp:3128\"\nupstream_proxy_auth = { file = \"/etc/egress-agent/proxy-auth\" }\nno_upstream_proxy = [\"*.svc.example.org\", \"db.example.net:5432\"]\n"),
        "{shown}"
    );
    assert_eq!(q.show(), shown.replace("sample.toml", "shown.toml"));
    // Normalised, nothing added: methods upper-cased, patterns canonical.
    assert!(shown.contains("methods = [\"GET\", \"POST\"]"), "{shown}");
    assert!(shown.contains("allow_ranges = [\"203.0.113.0/24\", \"198.51.100.7/32\"]"));
    let idn = Policy::parse(
        "mode = \"monitor\"\n[profile.p]\nallow = [\"*.BÜCHER.example.:8443\"]\n",
        "i",
    )
    .expect("ok");
    let s = idn.show();
    assert!(
        s.contains("allow = [\"*.xn--bcher-kva.example:8443\"]"),
        "{s}"
    );
    assert!(s.contains("mode = \"monitor\""));
    assert!(s.contains("# version (default"));
    let again = Policy::parse(&s, "again").expect("ok");
    assert_eq!(again.mode(), Mode::Monitor);
}

/// Deterministic xorshift, no extra crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// The naive matcher: linear scan, string operations only.
fn naive(
    rules: &[(RuleKind, String, Option<u16>)],
    name: &str,
    port: u16,
    proto: Protocol,
) -> Result<bool, DenyCode> {
    let host_matches = |pat: &str| match pat.strip_prefix("*.") {
        Some(suffix) => name.ends_with(&format!(".{suffix}")),
        None => pat == name,
    };
    let covers = |p: Option<u16>| match p {
        Some(x) => x == port,
        None => port == 80 || port == 443,
    };
    let matching: Vec<_> = rules.iter().filter(|r| host_matches(&r.1)).collect();
    if matching.is_empty() {
        return Err(DenyCode::HostNotAllowed);
    }
    if !matching.iter().any(|r| covers(r.2)) {
        return Err(DenyCode::PortNotAllowed);
    }
    let ok: Vec<_> = matching
        .iter()
        .filter(|r| covers(r.2) && (proto != Protocol::Opaque || r.2.is_some()))
        .collect();
    if ok.is_empty() {
        return Err(DenyCode::ProtocolNotAllowed);
    }
    let passthrough = matching.iter().any(|r| r.0 == RuleKind::Passthrough);
    let inspect =
        proto != Protocol::Opaque && !passthrough && ok.iter().any(|r| r.0 == RuleKind::Inspect);
    Ok(inspect)
}

#[test]
fn indexed_matcher_agrees_with_naive_scan() {
    let labels = [
        "a",
        "b",
        "api",
        "www",
        "example",
        "evil",
        "org",
        "com",
        "io",
        "x-y",
        "xn--bcher-kva",
    ];
    let ports: [Option<u16>; 5] = [None, None, Some(443), Some(8443), Some(22)];
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for round in 0..40 {
        // A random profile of up to 60 patterns.
        let mut rules: Vec<(RuleKind, String, Option<u16>)> = Vec::new();
        let mut toml = String::from("[profile.p]\n");
        let mut lists: [Vec<String>; 3] = Default::default();
        let count = 1 + rng.next() % 60;
        for _ in 0..count {
            let depth = 1 + rng.next() % 3;
            let host: Vec<&str> = (0..depth).map(|_| rng.pick(&labels)).collect();
            let host = host.join(".");
            let host = if rng.next().is_multiple_of(3) {
                format!("*.{host}")
            } else {
                host
            };
            let port = ports[(rng.next() % ports.len() as u64) as usize];
            let kind = match rng.next() % 6 {
                0 => RuleKind::Inspect,
                1 => RuleKind::Passthrough,
                _ => RuleKind::Allow,
            };
            let text = match port {
                Some(p) => format!("{host}:{p}"),
                None => host.clone(),
            };
            let li = kind as usize;
            // Keep the file valid: no duplicates, no inspect/passthrough on the same host.
            let conflict = lists[li].contains(&text)
                || rules.iter().any(|r| {
                    r.1 == host
                        && ((r.0 == RuleKind::Inspect && kind == RuleKind::Passthrough)
                            || (r.0 == RuleKind::Passthrough && kind == RuleKind::Inspect))
                });
            if conflict {
                continue;
            }
            lists[li].push(text);
            rules.push((kind, host, port));
        }
        for (kind, list) in [RuleKind::Allow, RuleKind::Inspect, RuleKind::Passthrough]
            .iter()
            .zip(&lists)
        {
            if !list.is_empty() {
                let quoted: Vec<String> = list.iter().map(|s| format!("{s:?}")).collect();
                toml.push_str(&format!("{} = [{}]\n", kind.key(), quoted.join(", ")));
            }
        }
        let policy = Policy::parse(&toml, "gen.toml").unwrap_or_else(|e| panic!("{e}\n{toml}"));
        for _ in 0..100 {
            let depth = 1 + rng.next() % 4;
            let name: Vec<&str> = (0..depth).map(|_| rng.pick(&labels)).collect();
            let name = name.join(".");
            let Ok(cn) = CanonicalName::parse(&name) else {
                continue;
            };
            let port = [22u16, 80, 443, 8443, 5432][(rng.next() % 5) as usize];
            let proto =
                [Protocol::Tls, Protocol::Http, Protocol::Opaque][(rng.next() % 3) as usize];
            let want = naive(&rules, &name, port, proto);
            let got = match policy.decide("p", &cn, port, proto) {
                Decision::Allow { inspect, rule } => {
                    // The reported rule must itself match and cover the port.
                    let r = &policy.profiles["p"].rules;
                    let rr = r.iter().find(|x| x.id == rule).expect("rule exists");
                    assert!(rr.pattern.host.matches(&cn) && rr.pattern.covers_port(port));
                    Ok(inspect)
                }
                Decision::Deny(d) => Err(d.code),
            };
            assert_eq!(got, want, "round {round}: {name}:{port} {proto:?}\n{toml}");
        }
    }
}

#[test]
fn ask_mode_keys_and_their_rendering() {
    let src = "version = \"v\"\nask_max_pending = 7\n[profile.a]\nmode = \"ask\"\nask_timeout = \"2m\"\nallow = [\"x.test\"]\n[profile.b]\nmode = \"ask\"\n[profile.c]\nmode = \"enforce\"\n";
    let p = Policy::parse(src, "ask.toml").unwrap();
    assert_eq!(
        p.ask_timeout("a"),
        Some(std::time::Duration::from_secs(120))
    );
    assert_eq!(p.ask_timeout("b"), Some(super::DEFAULT_ASK_TIMEOUT));
    assert_eq!(p.ask_timeout("c"), None);
    assert_eq!(p.ask_max_pending(), 7);
    let shown = p.show();
    assert!(shown.contains("ask_max_pending = 7"), "{shown}");
    assert!(
        shown.contains("[profile.a]\nmode = \"ask\"\nask_timeout = \"2m\""),
        "{shown}"
    );
    let q = Policy::parse(&shown, "shown").unwrap();
    assert_eq!(q.ask_timeout("a"), p.ask_timeout("a"));
    assert_eq!(q.show(), shown.replace("ask.toml", "shown"));
    // `exec --ask` forces it; monitor mode never asks.
    let e = Policy::parse("[profile.d]\nallow = []\n", "e")
        .unwrap()
        .asking("d");
    assert_eq!(e.ask_timeout("d"), Some(super::DEFAULT_ASK_TIMEOUT));
    let m = Policy::parse("mode = \"monitor\"\n[profile.d]\n", "m")
        .unwrap()
        .asking("d");
    assert_eq!(m.ask_timeout("d"), None);
    assert_eq!(
        Policy::parse("[profile.d]\n", "d")
            .unwrap()
            .ask_max_pending(),
        1024
    );
}

#[test]
fn local_services_decide_by_their_entry_only() {
    let src = "[profile.p]\nallow = [\"x.test\"]\nlocal = [\"otel-collector:4317 -> 127.0.0.1:4317\", \"db.internal:5432 -> [::1]:5433\"]\n";
    let p = Policy::parse(src, "local.toml").unwrap();
    let otel = CanonicalName::parse("otel-collector").unwrap();
    for proto in [Protocol::Tls, Protocol::Http, Protocol::Opaque] {
        match p.decide("p", &otel, 4317, proto) {
            Decision::Allow { rule, inspect } => {
                assert_eq!(rule.as_str(), "profile.p.local[0]");
                assert!(!inspect);
            }
            d => panic!("{d:?}"),
        }
        match p.decide("p", &otel, 4318, proto) {
            Decision::Deny(d) => {
                assert_eq!(d.code, DenyCode::PortNotAllowed);
                assert!(
                    d.reason.contains("local service on port 4317 only"),
                    "{}",
                    d.reason
                );
            }
            d => panic!("{d:?}"),
        }
    }
    let l = p.local_service("p", &otel, 4317).unwrap();
    assert_eq!(l.target, "127.0.0.1:4317".parse().unwrap());
    assert!(p.local_service("p", &otel, 4318).is_none());
    assert!(p.is_local_name("p", &otel));
    assert!(!p.is_local_name("q", &otel));
    assert_eq!(p.local_services("p").len(), 2);
    let shown = p.show();
    assert!(
        shown.contains("local = [\"otel-collector:4317 -> 127.0.0.1:4317\", \"db.internal:5432 -> [::1]:5433\"]"),
        "{shown}"
    );
    let q = Policy::parse(&shown, "shown").unwrap();
    assert_eq!(q.local_services("p"), p.local_services("p"));
    // A name is a local service or an internet host, never both.
    let e = Policy::parse(
        "[profile.p]\nallow = [\"*.internal\"]\nlocal = [\"db.internal:5432 -> 127.0.0.1:5432\"]\n",
        "c.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("c.toml:3:10: key `profile.p.local[0]`: ")
            && e.contains("profile.p.allow[0]"),
        "{e}"
    );
}

#[test]
fn budgets_are_checked_key_by_key() {
    let base =
        "[profile.default]\nallow = [\"a.test\", \"db.test:5432\"]\n[[profile.default.budget]]\n";
    let cases: &[(&str, &str, &str)] = &[
        (
            "bytes_up = \"lots\"",
            "profile.default.budget[0].bytes_up",
            "is not a size",
        ),
        (
            "bytes_up = 0",
            "profile.default.budget[0].bytes_up",
            "allows nothing",
        ),
        (
            "bytes_up = -5",
            "profile.default.budget[0].bytes_up",
            "is negative",
        ),
        (
            "bytes_down = true",
            "profile.default.budget[0].bytes_down",
            "did not match any variant",
        ),
        (
            "bytes_up = 10\nwindow = \"forever\"",
            "profile.default.budget[0].window",
            "is not a duration",
        ),
        (
            "bytes_up = 10\nwindow = \"100d\"",
            "profile.default.budget[0].window",
            "expected 1s to 31 days",
        ),
        (
            "concurrent_connections = 2\nwindow = \"1h\"",
            "profile.default.budget[0].window",
            "sets neither",
        ),
        (
            "connections_per_second = 0",
            "profile.default.budget[0].connections_per_second",
            "expected 1 to 1000000",
        ),
        (
            "concurrent_connections = 70000",
            "profile.default.budget[0].concurrent_connections",
            "expected 1 to 65536",
        ),
        (
            "requests_per_second = \"5\"",
            "profile.default.budget[0].requests_per_second",
            "invalid type",
        ),
        (
            "host = \"other.test\"\nbytes_up = 10",
            "profile.default.budget[0].host",
            "would never apply",
        ),
        (
            "host = \"a.test:443\"\nbytes_up = 10",
            "profile.default.budget[0].host",
            "remove the port",
        ),
        (
            "host = \"*\"\nbytes_up = 10",
            "profile.default.budget[0].host",
            "",
        ),
        (
            "host = \"a.test\"",
            "profile.default.budget[0]",
            "without a limit",
        ),
        (
            "byte_up = 10",
            "profile.default.budget[0].byte_up",
            "unknown field `byte_up`",
        ),
        (
            "bytes_up = 10\n[[profile.default.budget]]\nbytes_down = 10",
            "profile.default.budget[1]",
            "one budget per host pattern",
        ),
    ];
    for (body, key, says) in cases {
        let src = format!("{base}{body}\n");
        let e = Policy::parse(&src, "p.toml").expect_err(body).to_string();
        assert!(e.starts_with("p.toml:"), "{body}: {e}");
        assert!(e.contains(&format!("key `{key}`")), "{body}: {e}");
        assert!(e.contains(says), "{body}: {e}");
        assert_eq!(e.lines().count(), 1, "{body}: {e}");
    }
}

#[test]
fn budgets_are_shown_as_they_parse() {
    let src = "[profile.default]\nallow = [\"a.test\", \"*.b.test\"]\n[[profile.default.budget]]\nbytes_up = \"1 MiB\"\nwindow = \"10m\"\nconnections_per_second = 5\n[[profile.default.budget]]\nhost = \"*.b.test\"\nconnection_bytes_down = \"64KiB\"\nrequests_per_second = 7\n";
    let p = Policy::parse(src, "p.toml").unwrap();
    let shown = p.show();
    assert!(shown.contains("[[profile.default.budget]]  # profile.default.budget[0]: bytes_up 1 MiB per 10m, connections_per_second 5"), "{shown}");
    assert!(
        shown.contains(
            "host = \"*.b.test\"\nconnection_bytes_down = 65536\nrequests_per_second = 7"
        ),
        "{shown}"
    );
    let again = Policy::parse(&shown, "shown.toml").unwrap();
    assert_eq!(again.budgets("default"), p.budgets("default"));
    let x = CanonicalName::parse("x.b.test").unwrap();
    let ids: Vec<&str> = p
        .budgets_for("default", &x)
        .map(|b| b.id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["profile.default.budget[0]", "profile.default.budget[1]"]
    );
}
