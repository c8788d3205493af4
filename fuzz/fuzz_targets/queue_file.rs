//! The queue file loader (`queue::Envelope::from_bytes`, what start-up and every scan run on
//! each `.env`) never panics on any content, and what it accepts survives a write/read
//! round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use submitd::queue::{Envelope, spool::FORMAT_VERSION};

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::from_bytes(data) {
        assert_eq!(envelope.version, FORMAT_VERSION);
        let bytes = envelope.to_bytes();
        let again = Envelope::from_bytes(&bytes).expect("a written envelope reads back");
        assert_eq!(again, envelope);
        assert_eq!(again.to_bytes(), bytes, "serialisation is stable");
    }
});
