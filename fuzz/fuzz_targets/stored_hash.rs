//! A stored password hash read from a directory (PostgreSQL rows; Dovecot's `{SCHEME}`
//! prefixes) is parsed without panicking, whatever the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use submitd::auth::backend::scheme;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = scheme::parse(&text);
});
