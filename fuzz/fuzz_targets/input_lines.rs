//! The input buffer: any split gives the events of a whole-input reference, and it never holds
//! `limit` bytes of an incomplete line once `next_line` asked for more.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use submitd::session::input::{InputBuffer, LineEvent};

fn reference(input: &[u8], limit: usize) -> Vec<LineEvent> {
    let mut out = Vec::new();
    let mut rest = input;
    while let Some(lf) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..lf];
        out.push(if lf + 1 > limit {
            LineEvent::TooLong
        } else {
            LineEvent::Line(line.strip_suffix(b"\r").unwrap_or(line).to_vec())
        });
        rest = &rest[lf + 1..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((limit, seed, input)) = common::header(data) else {
        return;
    };
    let limit = usize::from(limit) + 1;
    let mut buf = InputBuffer::new();
    let mut events = Vec::new();
    for piece in common::pieces(input, seed) {
        buf.extend(piece);
        while let Some(event) = buf.next_line(limit) {
            if let LineEvent::Line(line) = &event {
                assert!(line.len() < limit);
            }
            events.push(event);
        }
        assert!(
            buf.len() < limit,
            "{} buffered with limit {limit}",
            buf.len()
        );
    }
    assert_eq!(events, reference(input, limit));
});
