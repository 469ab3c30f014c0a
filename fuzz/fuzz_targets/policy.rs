//! `cargo fuzz run policy` — the policy parser on arbitrary text: an error is a
//! one-line message, never a panic; an accepted policy re-parses from its own
//! `show()` output.
#![no_main]

use egress_agent::policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Policy::parse(text, "fuzz.toml") {
        Err(e) => assert!(!e.to_string().contains('\n'), "multi-line error: {e}"),
        Ok(p) => {
            let shown = p.show();
            Policy::parse(&shown, "shown.toml").unwrap_or_else(|e| panic!("show() does not re-parse: {e}\n{shown}"));
        }
    }
});
