//! `cargo fuzz run http_head` — the HTTP/1.x head reader must never panic, and its answers must
//! be self-consistent.
#![no_main]

use egress_agent::peek::http::{looks_like_http, parse_request_head, HttpPeekError, MAX_HEAD_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = looks_like_http(data);
    match parse_request_head(data) {
        Ok(head) => {
            assert!(head.head_len <= data.len() && head.head_len <= MAX_HEAD_LEN);
            let again = parse_request_head(&data[..head.head_len]).expect("head reparses");
            assert_eq!(again, head);
            if let Some(host) = &head.host {
                assert!(!host.is_empty() && !host.bytes().any(|b| b <= b' ' || b == 0x7f));
            }
        }
        Err(HttpPeekError::Incomplete) => assert!(data.len() < MAX_HEAD_LEN),
        Err(_) => {}
    }
});
