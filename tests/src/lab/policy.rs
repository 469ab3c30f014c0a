//! The lab's two policies, derived from the client table: every client's allowed entry, and
//! under inspection every HTTPS name inspected with its path rule.

use std::path::Path;

use super::clients::Client;

fn header(version: &str) -> String {
    format!(
        "version = {version:?}\nresolver = \"203.0.113.53:53\"\n\
         allow_ranges = [\"198.51.100.0/24\", \"203.0.113.0/24\", \"2001:db8:100::/48\"]\n"
    )
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let mut v: Vec<&str> = items.collect();
    v.sort();
    v.dedup();
    let quoted: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// Every client's `allowed` entry; nothing inspected.
pub fn passthrough(clients: &[Client]) -> String {
    let mut p = header("lab-passthrough");
    p.push_str(&format!(
        "\n[profile.default]\nallow = {}\n",
        list(clients.iter().map(|c| c.allowed))
    ));
    p
}

/// Every client's `allowed` entry; the HTTPS ones (port 443) inspected, each with a
/// `[[profile.default.http]]` rule allowing only its `paths`; upstreams verified with `upstream_ca`.
pub fn inspect(clients: &[Client], upstream_ca: &Path) -> String {
    let mut p = header("lab-inspect");
    p.push_str(&format!(
        "upstream_ca = {:?}\n",
        upstream_ca.display().to_string()
    ));
    let https = || clients.iter().filter(|c| c.port() == 443);
    p.push_str(&format!(
        "\n[profile.default]\nallow = {}\ninspect = {}\n",
        list(clients.iter().map(|c| c.allowed)),
        list(https().map(|c| c.allowed_name()))
    ));
    let mut seen: Vec<&str> = Vec::new();
    for c in https() {
        let Some(paths) = c.paths else { continue };
        if seen.contains(&c.allowed_name()) {
            continue;
        }
        seen.push(c.allowed_name());
        p.push_str(&format!(
            "\n[[profile.default.http]]\nhost = {:?}\npaths = {}\n",
            c.allowed_name(),
            list(paths.iter().copied())
        ));
    }
    p
}

#[cfg(test)]
mod tests {
    #[test]
    fn policies_name_every_client_and_one_rule_per_host() {
        let p = super::passthrough(super::super::clients::ALL);
        assert!(p.contains("\"git.lab.test:9418\""), "{p}");
        assert!(!p.contains("inspect"), "{p}");
        let i = super::inspect(super::super::clients::ALL, std::path::Path::new("/ca.pem"));
        assert!(i.contains("upstream_ca = \"/ca.pem\""), "{i}");
        assert_eq!(i.matches("host = \"allowed.test\"").count(), 1, "{i}");
        assert!(!i.contains("host = \"git.lab.test:9418\""), "{i}");
    }
}
