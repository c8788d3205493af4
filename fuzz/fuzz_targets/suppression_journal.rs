//! The on-disk parsers of issue 16 never panic on any bytes: the suppression journal
//! (`suppression::parse_journal`, read at start and once a second by the server) and a status
//! record (`status::parse_record`, read by `GET /v1/messages/{id}`). The journal parser
//! consumes complete lines only, whatever follows the last one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use submitd::status::parse_record;
use submitd::suppression::parse_journal;

fuzz_target!(|data: &[u8]| {
    let parsed = parse_journal(data);
    assert!(parsed.consumed <= data.len());
    assert!(parsed.consumed == 0 || data[parsed.consumed - 1] == b'\n');
    assert!(!data[parsed.consumed..].contains(&b'\n'));
    // A torn tail never hides the complete lines before it.
    let whole = parse_journal(&data[..parsed.consumed]);
    assert_eq!(whole.records, parsed.records);
    let _ = parse_record(data);
});
