//! Dot-stuffing of message data on its way out (RFC 5321 section 4.5.2), without copying.
//!
//! A line of the message that starts with `.` gets a second `.` in front of it, so that no
//! line of the data reads as the final `CRLF.CRLF`. Sans-IO: [`DotStuffer::segments`] cuts a
//! piece of the message into slices of that piece whose concatenation is the stuffed piece;
//! the caller writes them as they are. A piece with no line starting with `.` is one slice,
//! the whole piece. Where a line does start with `.`, one slice ends with that dot and the
//! next starts with it, so the dot goes out twice: no per-octet loop, no copy.
//!
//! A line starts at the very beginning of the message and after CRLF, and only there (as
//! lettre's `ClientCodec` has it): a bare CR or LF ends no line. Stored messages never hold
//! one (the session refuses them), but the rule is the same for any bytes, so data that would
//! end the message early at a next hop reading bare LF as a line end cannot be written from a
//! message that reached the queue. The state crosses piece boundaries: a piece may end between
//! CR and LF, or right before the dot.

use memchr::memmem::Finder;

/// Where the bytes handed over so far leave the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// At the start of a line: the message's start, or right after CRLF.
    LineStart,
    /// Right after a CR: a LF next makes the octet after it a line start.
    AfterCr,
    /// Anywhere else.
    MidLine,
}

/// The dot-stuffing state of one message, fed its pieces in order (see the module doc).
#[derive(Debug, Clone)]
pub struct DotStuffer {
    at: At,
    /// `CRLF.`: a line starting with a dot inside a piece.
    finder: Finder<'static>,
}

impl Default for DotStuffer {
    fn default() -> DotStuffer {
        DotStuffer::new()
    }
}

impl DotStuffer {
    /// At the start of a message.
    pub fn new() -> DotStuffer {
        DotStuffer {
            at: At::LineStart,
            finder: Finder::new(b"\r\n."),
        }
    }

    /// The slices of `piece` to write, in order, for the next piece of the message: their
    /// concatenation is `piece` with every dot that starts a line doubled. Every slice is
    /// non-empty; an empty piece gives none.
    pub fn segments<'s, 'p>(&'s mut self, piece: &'p [u8]) -> Segments<'s, 'p> {
        // A line start at the piece's edge, which the search for `CRLF.` inside it misses.
        let first = match self.at {
            At::LineStart if piece.first() == Some(&b'.') => Some(0),
            At::AfterCr if piece.starts_with(b"\n.") => Some(1),
            _ => None,
        };
        self.at = match piece {
            [] => self.at,
            [.., b'\r', b'\n'] => At::LineStart,
            [b'\n'] if self.at == At::AfterCr => At::LineStart,
            [.., b'\r'] => At::AfterCr,
            _ => At::MidLine,
        };
        Segments {
            piece,
            start: 0,
            search: 0,
            first,
            finder: &self.finder,
            done: piece.is_empty(),
        }
    }
}

/// The slices of one piece, from [`DotStuffer::segments`].
#[derive(Debug)]
pub struct Segments<'s, 'p> {
    piece: &'p [u8],
    /// Where the next slice starts.
    start: usize,
    /// Where the search for the next `CRLF.` starts.
    search: usize,
    /// A dot to double at the piece's start (its position), found from the carried state.
    first: Option<usize>,
    finder: &'s Finder<'static>,
    done: bool,
}

impl<'p> Iterator for Segments<'_, 'p> {
    type Item = &'p [u8];

    fn next(&mut self) -> Option<&'p [u8]> {
        if self.done {
            return None;
        }
        let piece = self.piece;
        let dot = self.first.take().or_else(|| {
            let from = self.search;
            self.finder.find(&piece[from..]).map(|i| from + i + 2)
        });
        match dot {
            Some(dot) => {
                // Up to and including the dot; the next slice starts at it again.
                let slice = &piece[self.start..=dot];
                self.start = dot;
                self.search = dot + 1;
                Some(slice)
            }
            None => {
                self.done = true;
                Some(&piece[self.start..])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// lettre's `ClientCodec::encode`, octet by octet: the behaviour to match.
    fn reference(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len());
        let mut at = At::LineStart;
        for &b in input {
            if b == b'.' && at == At::LineStart {
                out.push(b'.');
            }
            out.push(b);
            at = match (b, at) {
                (b'\r', _) => At::AfterCr,
                (b'\n', At::AfterCr) => At::LineStart,
                _ => At::MidLine,
            };
        }
        out
    }

    /// What a receiver does (RFC 5321 4.5.2): drop the first octet of a line when it is a dot.
    fn unstuff(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        let mut at = At::LineStart;
        for &b in data {
            let dropped = b == b'.' && at == At::LineStart;
            at = match (b, at) {
                (b'\r', _) => At::AfterCr,
                (b'\n', At::AfterCr) => At::LineStart,
                _ => At::MidLine,
            };
            if !dropped {
                out.push(b);
            }
        }
        out
    }

    /// `input` cut at `cuts` (sorted, within bounds), stuffed piece by piece and concatenated;
    /// also checks that no slice is empty and each is a slice of its piece.
    fn stuffed(input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&input.len())) {
            let piece = &input[from..to];
            for slice in s.segments(piece) {
                assert!(!slice.is_empty());
                let range = piece.as_ptr_range();
                assert!(range.start <= slice.as_ptr() && slice.as_ptr() < range.end);
                out.extend_from_slice(slice);
            }
            from = to;
        }
        out
    }

    #[test]
    fn lettres_own_codec_test() {
        // lettre's `test_codec`, one piece per `encode` call.
        let pieces: [&[u8]; 15] = [
            b".\r\n",
            b"test\r\n",
            b"test\r\n\r\n",
            b".\r\n",
            b"\r\ntest",
            b"te\r\n.\r\nst",
            b"test",
            b"test.",
            b"test\n",
            b".test\n",
            b"test",
            b"test",
            b"test\r\n",
            b".test\r\n",
            b"test.\r\n",
        ];
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        for p in pieces {
            out.extend(s.segments(p).flatten());
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "..\r\ntest\r\ntest\r\n\r\n..\r\n\r\ntestte\r\n..\r\nsttesttest.test\n.test\n\
             testtesttest\r\n..test\r\ntest.\r\n"
        );
    }

    #[test]
    fn a_piece_without_dot_lines_is_one_slice() {
        let mut s = DotStuffer::new();
        let piece = b"Subject: x\r\n\r\nbody. .\r\nmore\r\n";
        let slices: Vec<&[u8]> = s.segments(piece).collect();
        assert_eq!(slices, [&piece[..]]);
        assert_eq!(s.segments(b"").count(), 0);
    }

    #[test]
    fn dots_at_piece_boundaries() {
        let cases: &[(&[&[u8]], &[u8])] = &[
            (&[b"."], b".."),
            (&[b"a\r\n", b".b"], b"a\r\n..b"),
            (&[b"a\r", b"\n.b"], b"a\r\n..b"),
            (&[b"a\r", b"\n", b".b"], b"a\r\n..b"),
            (&[b"a\r\n.", b".b"], b"a\r\n...b"),
            (&[b"a.", b"\r\n."], b"a.\r\n.."),
            // No line start: bare LF, bare CR, CR CR LF only after the LF.
            (&[b"a\n", b".b"], b"a\n.b"),
            (&[b"a\r", b".b"], b"a\r.b"),
            (&[b"a\r", b"\r\n."], b"a\r\r\n.."),
            (&[b"", b".", b""], b".."),
        ];
        for (pieces, want) in cases {
            let mut s = DotStuffer::new();
            let mut got: Vec<u8> = Vec::new();
            for p in *pieces {
                got.extend(s.segments(p).flatten());
            }
            assert_eq!(got, *want, "{pieces:?}");
        }
    }

    fn octets() -> impl Strategy<Value = Vec<u8>> {
        // Mostly the octets that matter, with anything else mixed in.
        let octet = prop_oneof![
            4 => Just(b'.'),
            4 => Just(b'\r'),
            4 => Just(b'\n'),
            2 => Just(b'a'),
            1 => any::<u8>(),
        ];
        prop::collection::vec(octet, 0..200)
    }

    proptest! {
        #[test]
        fn matches_lettre_and_unstuffs_back(
            input in octets(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            cuts.sort_unstable();
            let out = stuffed(&input, &cuts);
            prop_assert_eq!(&out, &reference(&input));
            prop_assert_eq!(unstuff(&out), input);
        }
    }
}
