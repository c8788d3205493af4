//! The MTA-STS and TLS-RPT texts from the network never panic their parsers, and what the
//! policy parser accepts means the same after being written out again:
//! first byte 0 = a policy file (`delivery::mta_sts::policy::parse_policy`), 1 = `_mta-sts`
//! TXT records (`parse_txt`, records split at NUL), else `_smtp._tls` TXT records
//! (`delivery::tlsrpt::rua::parse_record`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use submitd::delivery::mta_sts::policy::{MAX_AGE_LIMIT, parse_policy, parse_txt};
use submitd::delivery::tlsrpt::rua::{MAX_RUA, parse_record};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let records: Vec<Vec<u8>> = rest.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
    match which % 3 {
        0 => {
            if let Ok(p) = parse_policy(rest) {
                assert!(p.max_age <= MAX_AGE_LIMIT);
                let again = parse_policy(p.lines().join("\n").as_bytes()).unwrap();
                assert_eq!(again, p);
                for name in rest.split(|&b| b == b'\n').take(4) {
                    let _ = p.matches(&String::from_utf8_lossy(name));
                }
            }
        }
        1 => {
            if let Ok(r) = parse_txt(&records) {
                assert!(!r.id.is_empty() && r.id.len() <= 32);
                assert!(r.id.bytes().all(|b| b.is_ascii_alphanumeric()));
            }
        }
        _ => {
            if let Some(rua) = parse_record(&records) {
                assert!(!rua.is_empty() && rua.len() <= MAX_RUA);
            }
        }
    }
});
