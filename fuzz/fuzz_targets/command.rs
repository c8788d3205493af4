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
            if let Some(envid) = params.envid {
                // Passed on verbatim to the next hop: printable ASCII xtext, bounded.
                assert!(envid.len() <= 100 && envid.bytes().all(|b| b.is_ascii_graphic()));
                assert!(submitd::dsn::decode_xtext(&envid, false).is_some(), "{envid:?}");
            }
        }
        Ok(Command::Rcpt { to, params }) => {
            assert!(clean(&to) && to.len() <= 254, "{to:?}");
            if let Some(orcpt) = params.orcpt {
                assert!(orcpt.len() <= 500 && clean(&orcpt) && !orcpt.contains(' '));
                assert!(submitd::dsn::check_orcpt(&orcpt).is_ok(), "{orcpt:?}");
            }
        }
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
