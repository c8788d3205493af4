//! BDAT: pushing in pieces gives the result of one push, which is the reference verdict.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use submitd::session::data::{BdatAccumulator, BodyError};

fuzz_target!(|data: &[u8]| {
    let Some((max, seed, input)) = common::header(data) else {
        return;
    };
    let max_size = if max == 255 {
        u64::MAX
    } else {
        u64::from(max) * 4
    };
    let mut split = BdatAccumulator::new(max_size);
    for piece in common::pieces(input, seed) {
        split.push(piece);
    }
    assert_eq!(split.len(), input.len() as u64);
    let want = if common::has_bare_line_ending(input) {
        Err(BodyError::BareLineEnding)
    } else if input.len() as u64 > max_size {
        Err(BodyError::TooBig)
    } else {
        Ok(input.to_vec())
    };
    let mut whole = BdatAccumulator::new(max_size);
    whole.push(input);
    assert_eq!(whole.finish(), want);
    assert_eq!(split.finish(), want);
});
