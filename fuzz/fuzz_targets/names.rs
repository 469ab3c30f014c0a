//! `cargo fuzz run names` — name canonicalisation and wildcard matching,
//! differential: the policy's matcher against a naive reference on the same
//! canonical strings. Input: pattern and name separated by the first NUL.
#![no_main]

use egress_agent::policy::{CanonicalName, HostPattern};
use libfuzzer_sys::fuzz_target;

/// The obvious definition: exact equality, or `*.suffix` = at least one more
/// label in front of `suffix`.
fn reference(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name.len() > suffix.len() + 1 && name.ends_with(suffix) && name.as_bytes()[name.len() - suffix.len() - 1] == b'.',
        None => pattern == name,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (p, n) = text.split_once('\0').unwrap_or((text, text));
    let name = CanonicalName::parse(n);
    if let Ok(name) = &name {
        let s = name.as_str();
        // Canonical means idempotent, ASCII, lowercase, no trailing dot.
        assert_eq!(CanonicalName::parse(s).as_ref().map(CanonicalName::as_str), Ok(s));
        assert!(s.is_ascii() && !s.ends_with('.') && s == s.to_ascii_lowercase());
    }
    if let (Ok(pattern), Ok(name)) = (HostPattern::parse(p), name) {
        let canon_pattern = pattern.to_string();
        assert_eq!(pattern.matches(&name), reference(&canon_pattern, name.as_str()), "{canon_pattern} vs {}", name.as_str());
    }
});
