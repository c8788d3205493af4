//! BDAT: pushing in pieces, drained in small pieces, gives the result of one push, which is the
//! reference verdict, and the pieces add up to the message.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use submitd::session::data::{BdatAccumulator, BodyError, BodyLimits};

/// Push `reads` in order, draining full pieces; (octets counted, verdict with the content).
fn run(limits: BodyLimits, reads: &[&[u8]]) -> (u64, Result<Vec<u8>, BodyError>) {
    let mut acc = BdatAccumulator::new(limits);
    let (mut piece, mut content) = (Vec::new(), Vec::new());
    for read in reads {
        let mut read = *read;
        while !read.is_empty() {
            let n = acc.push(read, &mut piece);
            assert!(piece.len() <= limits.piece_size);
            read = &read[n..];
            if !read.is_empty() {
                assert_eq!(piece.len(), limits.piece_size);
                content.append(&mut piece);
            }
        }
    }
    let len = acc.len();
    let result = acc.finish(&mut piece);
    content.append(&mut piece);
    (len, result.map(|body| {
        assert_eq!(body.size, content.len() as u64);
        assert_eq!(body.nul, content.contains(&0));
        content
    }))
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
        max_header_size: u64::MAX,
        piece_size: 1 + usize::from(seed % 61),
    };
    let (len, split) = run(limits, &common::pieces(input, seed));
    assert_eq!(len, input.len() as u64);
    let want = if common::has_bare_line_ending(input) {
        Err(BodyError::BareLineEnding)
    } else if input.len() as u64 > max_size {
        Err(BodyError::TooBig)
    } else {
        Ok(input.to_vec())
    };
    let whole = BodyLimits { piece_size: usize::MAX, ..limits };
    assert_eq!(run(whole, &[input]).1, want);
    assert_eq!(split, want);
});
