//! PROXY protocol header reader: `proxy::HeaderReader` offered the input in pieces (as peeks of
//! a socket) consumes exactly the header's bytes, whatever the split, with the verdict of one
//! `proxy::parse` over the whole input; a header's end depends on its own bytes only.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use submitd::proxy::{self, HeaderReader, MAX_HEADER, Offer, Parsed};

fuzz_target!(|data: &[u8]| {
    let Some((_, seed, input)) = common::header(data) else {
        return;
    };
    let whole = proxy::parse(input);
    if let Ok(Parsed::Complete { header, len }) = whole {
        assert!(len <= input.len() && len <= MAX_HEADER);
        // No over-read: the header alone decides, and every strict prefix waits for more.
        assert_eq!(
            proxy::parse(&input[..len]),
            Ok(Parsed::Complete { header, len })
        );
        for n in 0..len {
            assert_eq!(proxy::parse(&input[..n]), Ok(Parsed::Incomplete));
        }
    }

    // The reader over pieces: each piece is what a peek returns (bounded by `room`).
    let mut reader = HeaderReader::new();
    let mut consumed = 0;
    let mut verdict = None;
    for piece in common::pieces(input, seed) {
        let mut rest = piece;
        while !rest.is_empty() && verdict.is_none() {
            let offered = &rest[..rest.len().min(reader.room())];
            match reader.offer(offered) {
                Ok(Offer::NeedMore) => {
                    consumed += offered.len();
                    rest = &rest[offered.len()..];
                }
                Ok(Offer::Done { header, consume }) => {
                    assert!(consume <= offered.len());
                    consumed += consume;
                    verdict = Some(Ok((header, consumed)));
                }
                Err(e) => verdict = Some(Err(e)),
            }
        }
        if verdict.is_some() {
            break;
        }
    }
    match (whole, verdict) {
        (Ok(Parsed::Complete { header, len }), Some(Ok(got))) => assert_eq!(got, (header, len)),
        (Err(e), Some(Err(got))) => assert_eq!(got, e),
        // Input ended inside a valid header: the reader is still waiting, holding less than
        // the longest header.
        (Ok(Parsed::Incomplete), None) => assert!(consumed == input.len() && consumed < MAX_HEADER),
        (w, r) => panic!("whole input {w:?}, reader {r:?}"),
    }
});
