//! The DATA reader, fed in pieces, ends exactly at the first real `<CRLF>.<CRLF>` (after the
//! implicit CRLF of the DATA line) with the verdict of a naive reference, and never otherwise;
//! the content it hands out in pieces (small ones here, so that the reader stops often for a
//! drain) adds up to the reference's message, and what it kept for the checks (header section,
//! NUL flag, size) describes that message.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use submitd::session::data::{BodyError, BodyLimits, DataReader};
use submitd::submission;

type DataResult = Result<Vec<u8>, BodyError>;

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
    let limits = BodyLimits {
        max_size,
        max_header_size: u64::from(seed),
        piece_size: 1 + usize::from(seed % 61),
    };
    let mut reader = DataReader::new(limits);
    let (mut piece, mut content) = (Vec::new(), Vec::new());
    let mut consumed = 0;
    let mut result = None;
    'pieces: for read in common::pieces(input, seed) {
        let mut read = read;
        loop {
            let (n, r) = reader.feed(read, &mut piece);
            assert!(n <= read.len());
            assert!(piece.len() <= limits.piece_size + 2);
            consumed += n;
            read = &read[n..];
            if let Some(r) = r {
                content.append(&mut piece);
                result = Some(r.map(|body| {
                    assert_eq!(body.size, content.len() as u64);
                    assert_eq!(body.nul, content.contains(&0));
                    let section = submission::header_section(&content);
                    let fits = section.len() as u64 <= limits.max_header_size;
                    assert_eq!(body.headers.as_deref(), fits.then_some(section));
                    std::mem::take(&mut content)
                }));
                break 'pieces;
            }
            if read.is_empty() {
                break;
            }
            // Stopped short: only ever with a full piece to drain.
            assert!(piece.len() >= limits.piece_size);
            content.append(&mut piece);
        }
    }
    match reference(input, max_size) {
        Some((end, want)) => {
            assert_eq!(consumed, end);
            assert_eq!(result, Some(want));
            assert!(reader.is_done());
            assert_eq!(reader.feed(b".\r\n", &mut piece), (0, None));
        }
        None => {
            assert_eq!(consumed, input.len());
            assert!(result.is_none());
        }
    }
});
