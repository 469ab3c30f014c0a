//! `cargo fuzz run client_hello` — the ClientHello reader must never panic, and its answers must
//! be self-consistent.
#![no_main]

use egress_agent::peek::{parse_client_hello, TlsPeekError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_client_hello(data) {
        Ok(hello) => {
            assert!(hello.consumed <= data.len());
            // The records that carried the hello are enough on their own.
            let again = parse_client_hello(&data[..hello.consumed]).expect("prefix reparses");
            assert_eq!(again.sni, hello.sni);
            if let Some(sni) = &hello.sni {
                assert!(!sni.is_empty() && !sni.contains('\0'));
            }
        }
        Err(TlsPeekError::Incomplete) => {
            // Incomplete is only ever "read more": no prefix of the input was already wrong.
            for cut in [0, data.len() / 2] {
                let r = parse_client_hello(&data[..cut]);
                assert!(
                    matches!(r, Err(TlsPeekError::Incomplete)),
                    "prefix {cut}: {r:?}"
                );
            }
        }
        Err(_) => {}
    }
});
