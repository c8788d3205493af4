//! What a Dovecot auth socket sends (handshake, then OK/FAIL/CONT replies) never panics the
//! client, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use submitd::auth::backend::dovecot::parse_transcript;

fuzz_target!(|data: &[u8]| {
    parse_transcript(data);
});
