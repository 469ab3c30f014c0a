//! The command's environment (issue 11 §3): the agent's, minus every variable an `inject`
//! rule reads and every `--unset-env VAR`, plus what `--trust-ca` and the user switch set.

use std::{collections::BTreeSet, ffi::OsString};

use crate::policy::{Policy, SecretSource};

/// Every credential source the policy's `inject` rules name, across profiles.
pub fn inject_sources(policy: &Policy) -> Vec<SecretSource> {
    policy.inject_sources().into_iter().cloned().collect()
}

/// The names to remove: the `inject` rules' variables and `--unset-env`.
pub fn scrubbed_names(sources: &[SecretSource], unset: &[String]) -> BTreeSet<OsString> {
    sources
        .iter()
        .filter_map(|s| match s {
            SecretSource::Env(n) => Some(OsString::from(n)),
            SecretSource::File(_) => None,
        })
        .chain(unset.iter().map(OsString::from))
        .collect()
}

/// `base` without the `scrub`bed names, then `set` (later entries win), sorted by name.
pub fn command_env(
    base: impl IntoIterator<Item = (OsString, OsString)>,
    scrub: &BTreeSet<OsString>,
    set: impl IntoIterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    let mut env: std::collections::BTreeMap<OsString, OsString> = base
        .into_iter()
        .filter(|(k, _)| !scrub.contains(k))
        .collect();
    for (k, v) in set {
        // A scrubbed name is never set again: the operator asked for it to be absent.
        if !scrub.contains(&k) {
            env.insert(k, v);
        }
    }
    env.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_inject_source_and_scrubs_them() {
        let p = Policy::parse(
            r#"
[profile.default]
inspect = ["api.example.com", "b.example.com"]
[[profile.default.http]]
host = "api.example.com"
inject = { header = "Authorization", env = "API_TOKEN" }
[[profile.default.http]]
host = "b.example.com"
inject = { header = "X-Key", file = "/etc/egress-agent/key" }
[profile.other]
inspect = ["c.example.com"]
[[profile.other.http]]
host = "c.example.com"
inject = { header = "X-Other", env = "OTHER_TOKEN" }
"#,
            "p.toml",
        )
        .unwrap();
        let s = inject_sources(&p);
        assert_eq!(
            s,
            vec![
                SecretSource::File("/etc/egress-agent/key".into()),
                SecretSource::Env("API_TOKEN".into()),
                SecretSource::Env("OTHER_TOKEN".into()),
            ]
        );
        let scrub = scrubbed_names(&s, &["EXTRA".into()]);
        let env = command_env(
            [
                ("API_TOKEN".into(), "s3cret".into()),
                ("OTHER_TOKEN".into(), "x".into()),
                ("EXTRA".into(), "y".into()),
                ("PATH".into(), "/usr/bin".into()),
            ],
            &scrub,
            [
                ("SSL_CERT_FILE".into(), "/b.pem".into()),
                ("EXTRA".into(), "again".into()),
            ],
        );
        let names: Vec<_> = env.iter().map(|(k, _)| k.to_str().unwrap()).collect();
        assert_eq!(names, ["PATH", "SSL_CERT_FILE"]);
        assert!(inject_sources(&Policy::from_allow_list(&["a.com".into()]).unwrap()).is_empty());
    }
}
