//! What discovery does with a pod: enforce it under a profile, exempt it from the gate, or
//! leave it gated (no network) — never open. Pure: the configuration and what the runtime said.

use super::{cri::Sandbox, HostNetwork, KubeConfig};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Attach the pod's cgroup under this profile. `fallback`: it is only `default_profile`,
    /// which never overrides the profile a pod is already served with (a RuntimeClass whose
    /// handler names its own, `egress-agent-runc.PROFILE`).
    Enforce { profile: String, fallback: bool },
    /// Exempt the pod's cgroup from the gate (the operator asked for it), saying why.
    Exempt { why: String },
    /// Neither: under a gate the pod has no network; the log says why, once.
    Gated { why: String },
}

/// The decision for one ready sandbox. Operator exemptions come first (a namespace, the
/// configured exemption annotation, hostNetwork when configured exempt), then the profile:
/// the pod's annotation, its namespace's configured profile, the default profile.
pub fn decide(cfg: &KubeConfig, pod: &Sandbox, host_network: bool) -> Decision {
    if cfg.exempt_namespaces.contains(&pod.namespace) {
        return Decision::Exempt {
            why: format!("namespace {} is exempt", pod.namespace),
        };
    }
    if let Some(key) = &cfg.exempt_annotation {
        if pod.annotations.get(key).is_some_and(|v| v.trim() == "true") {
            return Decision::Exempt {
                why: format!("annotation {key}=true"),
            };
        }
    }
    if host_network && cfg.host_network == HostNetwork::Exempt {
        return Decision::Exempt {
            why: "hostNetwork pod (host_network = \"exempt\")".into(),
        };
    }
    let annotated = pod
        .annotations
        .get(&cfg.annotation)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty());
    let chosen = annotated
        .or_else(|| {
            cfg.namespace_profiles
                .get(&pod.namespace)
                .map(String::as_str)
        })
        .map(|p| (p, false))
        .or_else(|| cfg.default_profile.as_deref().map(|p| (p, true)));
    match chosen {
        Some((p, fallback)) => Decision::Enforce {
            profile: p.to_string(),
            fallback,
        },
        None => Decision::Gated {
            why: format!(
                "no {} annotation, no profile for namespace {}, no default_profile, not exempt",
                cfg.annotation, pod.namespace
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, annotations: &[(&str, &str)]) -> Sandbox {
        Sandbox {
            id: "s1".into(),
            name: "p".into(),
            namespace: ns.into(),
            uid: "u".into(),
            ready: true,
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn cfg(extra: &str) -> KubeConfig {
        toml::from_str(extra).unwrap()
    }

    fn enforce(p: &str) -> Decision {
        Decision::Enforce {
            profile: p.into(),
            fallback: false,
        }
    }

    fn fallback(p: &str) -> Decision {
        Decision::Enforce {
            profile: p.into(),
            fallback: true,
        }
    }

    #[test]
    fn the_annotation_then_the_namespace_then_the_default_picks_the_profile() {
        let c = cfg("namespace_profiles = { team = \"ci\" }\n");
        let annotated = pod("team", &[("egress-agent.io/profile", " web ")]);
        assert_eq!(decide(&c, &annotated, false), enforce("web"));
        assert_eq!(decide(&c, &pod("team", &[]), false), enforce("ci"));
        // An empty value is no annotation.
        let empty = pod("team", &[("egress-agent.io/profile", "")]);
        assert_eq!(decide(&c, &empty, false), enforce("ci"));
        assert!(matches!(
            decide(&c, &pod("other", &[]), false),
            Decision::Gated { .. }
        ));
        let c = cfg("default_profile = \"default\"\n");
        assert_eq!(decide(&c, &pod("other", &[]), false), fallback("default"));
        // An annotation is explicit, the default only a fallback.
        let web = pod("other", &[("egress-agent.io/profile", "web")]);
        assert_eq!(decide(&c, &web, false), enforce("web"));
    }

    #[test]
    fn exemptions_are_the_operators_and_win() {
        let c = cfg(
            "exempt_namespaces = [\"kube-system\"]\nexempt_annotation = \"egress-agent.io/exempt\"\ndefault_profile = \"default\"\n",
        );
        let sys = pod("kube-system", &[("egress-agent.io/profile", "web")]);
        assert!(matches!(decide(&c, &sys, false), Decision::Exempt { .. }));
        let ex = pod("team", &[("egress-agent.io/exempt", "true")]);
        assert!(matches!(decide(&c, &ex, false), Decision::Exempt { .. }));
        let not = pod("team", &[("egress-agent.io/exempt", "yes")]);
        assert_eq!(decide(&c, &not, false), fallback("default"));
        // Without exempt_annotation configured, no annotation exempts a pod.
        let c = cfg("default_profile = \"default\"\n");
        assert_eq!(decide(&c, &ex, false), fallback("default"));
    }

    #[test]
    fn host_network_pods_are_enforced_unless_configured_exempt() {
        let hn = pod("team", &[("egress-agent.io/profile", "web")]);
        assert_eq!(decide(&cfg(""), &hn, true), enforce("web"));
        let c = cfg("host_network = \"exempt\"\n");
        assert!(matches!(decide(&c, &hn, true), Decision::Exempt { .. }));
        assert_eq!(decide(&c, &hn, false), enforce("web"));
        // Enforced but without a profile: gated, never open.
        assert!(matches!(
            decide(&cfg(""), &pod("team", &[]), true),
            Decision::Gated { .. }
        ));
    }
}
