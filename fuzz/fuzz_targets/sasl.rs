//! SASL PLAIN and LOGIN decoding never panic on a client's line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use submitd::auth::sasl::{decode_login_field, decode_plain};

fuzz_target!(|data: &[u8]| {
    if let Ok(credentials) = decode_plain(data) {
        assert!(!credentials.login.is_empty());
    }
    let _ = decode_login_field(data);
});
