//! The users file parser never panics, whatever the file holds.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = submitd::auth::users::parse(&text, Path::new("fuzz"));
});
