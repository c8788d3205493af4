//! The DATA reader, fed in pieces, ends exactly at the first real `<CRLF>.<CRLF>` (after the
//! implicit CRLF of the DATA line) with the verdict of a naive reference, and never otherwise.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use submitd::session::data::{BodyError, DataReader, DataResult};

fn reference(input: &[u8], max_size: u64) -> Option<(usize, DataResult)> {
    let prefixed = [&b"\r\n"[..], input].concat();
    let p = prefixed.windows(5).position(|w| w == b"\r\n.\r\n")?;
    let content = &input[..p];
    let end = p + 3;
    if common::has_bare_line_ending(content) {
        return Some((end, Err(BodyError::BareLineEnding)));
    }
    let mut body = Vec::new();
    for line in content.split_inclusive(|&b| b == b'\n') {
        body.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    if body.len() as u64 > max_size {
        return Some((end, Err(BodyError::TooBig)));
    }
    Some((end, Ok(body)))
}

fuzz_target!(|data: &[u8]| {
    let Some((max, seed, input)) = common::header(data) else {
        return;
    };
    let max_size = if max == 255 {
        u64::MAX
    } else {
        u64::from(max) * 4
    };
    let mut reader = DataReader::new(max_size);
    let mut consumed = 0;
    let mut result = None;
    for piece in common::pieces(input, seed) {
        let (n, r) = reader.feed(piece);
        assert!(n <= piece.len());
        consumed += n;
        if r.is_some() {
            result = r;
            break;
        }
        assert_eq!(n, piece.len());
    }
    match reference(input, max_size) {
        Some((end, want)) => {
            assert_eq!(consumed, end);
            assert_eq!(result, Some(want));
            assert!(reader.is_done());
            assert_eq!(reader.feed(b".\r\n"), (0, None));
        }
        None => {
            assert_eq!(consumed, input.len());
            assert!(result.is_none());
        }
    }
});
