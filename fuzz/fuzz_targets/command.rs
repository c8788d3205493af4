//! The command parser never panics, and what it returns is clean enough for a header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use submitd::session::command::{Command, ReversePath, parse};

fn clean(s: &str) -> bool {
    !s.chars()
        .any(|c| c.is_control() || (c.is_whitespace() && c != ' '))
}

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Command::Ehlo(domain) | Command::Helo(domain)) => {
            assert!(
                clean(&domain) && !domain.contains(' ') && !domain.is_empty(),
                "{domain:?}"
            );
            assert!(domain.len() <= 255 || domain.starts_with('['));
        }
        Ok(Command::Mail { from, params }) => {
            if let ReversePath::Address(address) = from {
                assert!(
                    clean(&address) && address.len() <= 254 && address.contains('@'),
                    "{address:?}"
                );
            }
            if let Some(auth) = params.auth {
                assert!(!auth.chars().any(char::is_control), "{auth:?}");
            }
        }
        Ok(Command::Rcpt { to }) => assert!(clean(&to) && to.len() <= 254, "{to:?}"),
        Ok(Command::Auth { mechanism, initial }) => {
            assert!(mechanism.bytes().all(|b| b.is_ascii_graphic()));
            assert!(initial.is_none_or(|i| i.bytes().all(|b| b.is_ascii_graphic())));
        }
        _ => {}
    }
    if data.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        assert!(parse(data).is_err());
    }
});
