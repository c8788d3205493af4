//! Helpers shared by the fuzz targets: turning the fuzzer's bytes into parameters and split
//! points, and the reference checks.

#![allow(dead_code)]

/// Split `data` into a header byte and the payload; `None` when too short.
pub fn header(data: &[u8]) -> Option<(u8, u8, &[u8])> {
    match data {
        [a, b, rest @ ..] => Some((*a, *b, rest)),
        _ => None,
    }
}

/// Cut `input` into pieces whose lengths come from a small xorshift generator seeded by `seed`,
/// so the fuzzer explores splits without spending input bytes on them.
pub fn pieces(input: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut state = u32::from(seed) | 0x9e37_7900;
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        // Mostly small pieces (splits at every interesting byte), sometimes large ones.
        let max = if state % 8 == 0 { 256 } else { 4 };
        let n = ((state >> 8) as usize % max).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        out.push(piece);
        rest = tail;
    }
    out
}

/// Whether `content` has a CR not followed by LF or an LF not preceded by CR.
pub fn has_bare_line_ending(content: &[u8]) -> bool {
    content.iter().enumerate().any(|(i, &b)| {
        (b == b'\r' && content.get(i + 1) != Some(&b'\n'))
            || (b == b'\n' && (i == 0 || content[i - 1] != b'\r'))
    })
}
