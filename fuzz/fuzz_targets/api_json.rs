//! `POST /v1/messages` bodies: any bytes as a JSON request or a `message/rfc822` one never
//! panic, and what they compose is a message the rest of the server can take: a sender, at
//! least one recipient, CRLF line endings only, no `Bcc:` field, and (JSON) a message that
//! parses back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use submitd::api::compose::{Composed, from_json, from_rfc822};

fn check(c: &Composed) {
    assert!(!c.recipients.is_empty());
    let head = submitd::headers::header_section(&c.message);
    for (i, &b) in c.message.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && c.message[i - 1] == b'\r', "bare LF at {i}");
        }
    }
    let lower = head.to_ascii_lowercase();
    assert!(!lower.starts_with(b"bcc:"));
    assert!(!lower.windows(5).any(|w| w == b"\nbcc:"));
}

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = from_json(data) {
        check(&c);
        assert!(!c.sender.is_empty());
        let parsed = mail_parser::MessageParser::default().parse(&c.message);
        assert!(parsed.is_some(), "lettre built an unparseable message");
    }
    // The second half as raw MIME with envelope headers from the first bytes.
    let (env, raw) = data.split_at(data.len().min(40));
    let env = String::from_utf8_lossy(env);
    let (from, to) = env.split_once('|').unwrap_or((&env, ""));
    for (f, t) in [(None, None), (Some(from), Some(to))] {
        if let Ok(c) = from_rfc822(raw, f, t) {
            check(&c);
        }
    }
});
