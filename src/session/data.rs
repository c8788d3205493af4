//! The DATA reader and the BDAT accumulator. Sans-IO, bounded, smuggling-proof:
//! DATA ends only on `<CRLF>.<CRLF>` (RFC 5321 4.1.1.4), and any bare CR or bare LF in the
//! content marks the message for rejection (`550 5.6.0`), in DATA and BDAT alike.
//!
//! Neither holds the message: the content (after dot-unstuffing for DATA) is appended to an
//! output buffer the caller drains, and a reader stops consuming input once that buffer holds
//! [`BodyLimits::piece_size`] octets, so a session's memory does not grow with the message.
//! What the checks at the end need is kept on the side: the header section (bounded by
//! `max_header_size`), whether a NUL was seen, the size.

use memchr::{memchr, memchr2, memmem};

/// Octets of content handed out at a time: large enough that a spool write per piece costs
/// little, small enough that sixteen sessions in flight hold a few megabytes.
pub const PIECE_SIZE: usize = 256 * 1024;

/// Why a message body was refused once it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// A CR not followed by LF, or an LF not preceded by CR: `550 5.6.0`.
    BareLineEnding,
    /// More than `max_size` octets after dot-unstuffing: `552 5.3.4`.
    TooBig,
}

/// The bounds a body reader works within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// The largest message, in octets of content.
    pub max_size: u64,
    /// The largest header section kept for the checks at the end.
    pub max_header_size: u64,
    /// The reader stops consuming input while its output holds this many octets (at least 1).
    pub piece_size: usize,
}

impl BodyLimits {
    /// Limits with the default piece size.
    pub fn new(max_size: u64, max_header_size: u64) -> BodyLimits {
        BodyLimits {
            max_size,
            max_header_size,
            piece_size: PIECE_SIZE,
        }
    }
}

/// What remains of a message that ended within the limits and without a bare line ending: its
/// content went out in pieces; this is what the checks at the end look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    /// The header section through the empty line that ends it (the whole message when it has
    /// none, as `headers::header_section` defines it); `None` when it is longer than
    /// `max_header_size`.
    pub headers: Option<Vec<u8>>,
    /// The content has a NUL octet.
    pub nul: bool,
    /// Octets of content.
    pub size: u64,
}

/// The end of a body: what the checks need, or why it is refused.
pub type DataResult = Result<Body, BodyError>;

/// How far the header section has been seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeaderState {
    /// No end yet: `kept` is the whole content so far.
    Open,
    /// `kept` is the header section.
    Complete,
    /// Longer than the limit: nothing is kept.
    TooBig,
}

/// The header section, collected as the content streams past, never more than the limit + 1.
#[derive(Debug)]
struct HeaderSection {
    kept: Vec<u8>,
    limit: u64,
    state: HeaderState,
}

impl HeaderSection {
    fn track(&mut self, bytes: &[u8]) {
        if self.state != HeaderState::Open {
            return;
        }
        // One octet past the limit is enough to know it is exceeded.
        let cap = usize::try_from(self.limit)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        let take = bytes.len().min(cap.saturating_sub(self.kept.len()));
        // The end (CRLFCRLF) may straddle the previous piece.
        let from = self.kept.len().saturating_sub(3);
        self.kept.extend_from_slice(&bytes[..take]);
        // Same rule as `headers::split`: a leading CRLF is an empty header section.
        let end = if self.kept.starts_with(b"\r\n") {
            Some(2)
        } else {
            memmem::find(&self.kept[from..], b"\r\n\r\n").map(|i| from + i + 4)
        };
        match end {
            Some(end) if end as u64 <= self.limit => {
                self.kept.truncate(end);
                self.kept.shrink_to_fit();
                self.state = HeaderState::Complete;
            }
            Some(_) => self.too_big(),
            None if self.kept.len() as u64 > self.limit => self.too_big(),
            None => {}
        }
    }

    fn too_big(&mut self) {
        self.state = HeaderState::TooBig;
        self.kept = Vec::new();
    }

    fn finish(self) -> Option<Vec<u8>> {
        (self.state != HeaderState::TooBig).then_some(self.kept)
    }

    /// The header section once its end was seen within the limit.
    fn complete(&self) -> Option<&[u8]> {
        (self.state == HeaderState::Complete).then_some(self.kept.as_slice())
    }
}

/// Where the message goes: counts octets, appends them to the caller's output until the
/// message is refused (the bytes are still counted after that), remembers why it will be
/// refused, and keeps the header section and the NUL flag for the checks at the end.
#[derive(Debug)]
struct Sink {
    max_size: u64,
    piece_size: usize,
    /// Octets of message seen so far (after unstuffing for DATA), stored or not.
    size: u64,
    bare: bool,
    too_big: bool,
    nul: bool,
    headers: HeaderSection,
}

impl Sink {
    fn new(limits: BodyLimits) -> Sink {
        Sink {
            max_size: limits.max_size,
            piece_size: limits.piece_size.max(1),
            size: 0,
            bare: false,
            too_big: false,
            nul: false,
            headers: HeaderSection {
                kept: Vec::new(),
                limit: limits.max_header_size,
                state: HeaderState::Open,
            },
        }
    }

    /// Whether the output holds a full piece: the reader must stop until it is drained. A
    /// refused message stores nothing, so it never waits.
    fn full(&self, out: &[u8]) -> bool {
        out.len() >= self.piece_size
    }

    /// Octets `out` takes before it is full.
    fn room(&self, out: &[u8]) -> usize {
        self.piece_size.saturating_sub(out.len())
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.size = self.size.saturating_add(bytes.len() as u64);
        if self.bare || self.too_big {
            return;
        }
        if self.size > self.max_size {
            self.too_big = true;
            out.clear();
            self.headers.too_big();
            return;
        }
        if !self.nul && memchr(0, bytes).is_some() {
            self.nul = true;
        }
        self.headers.track(bytes);
        // A piece, plus the two octets of a line ending that may follow a full run: the
        // output never grows past that, however it was used before.
        let needed = out.len() + bytes.len();
        if needed > out.capacity() {
            let target = out
                .capacity()
                .saturating_mul(2)
                .min(self.piece_size.saturating_add(2))
                .max(needed);
            out.reserve_exact(target - out.len());
        }
        out.extend_from_slice(bytes);
    }

    fn header_section(&self) -> Option<&[u8]> {
        if self.bare || self.too_big {
            return None;
        }
        self.headers.complete()
    }

    fn bare_line_ending(&mut self, out: &mut Vec<u8>) {
        self.bare = true;
        out.clear();
        self.headers.too_big();
    }

    /// Bare CR/LF wins over size: it is a protocol violation (possibly a smuggling attempt)
    /// that the client must not retry as is, whatever the size.
    fn finish(self) -> DataResult {
        if self.bare {
            Err(BodyError::BareLineEnding)
        } else if self.too_big {
            Err(BodyError::TooBig)
        } else {
            Ok(Body {
                headers: self.headers.finish(),
                nul: self.nul,
                size: self.size,
            })
        }
    }
}

/// Where the DATA scanner is, as a matcher of `<CRLF>.<CRLF>` (KMP states over that pattern)
/// that also knows line starts for dot-unstuffing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataState {
    /// Just after a CRLF (or at the start, after the implicit CRLF of the DATA line).
    LineStart,
    /// `<CRLF>.` seen; the dot is dropped (unstuffing) whatever follows.
    Dot,
    /// `<CRLF>.<CR>` seen: an LF now ends the message.
    DotCr,
    /// Inside a line.
    Mid,
    /// A CR inside a line, not yet emitted: an LF makes it a line ending, anything else bare.
    Cr,
    /// The terminator was seen and the result handed out.
    Done,
}

/// Reads a DATA body after the 354 reply. Feed it bytes and an output buffer; it appends the
/// unstuffed content to the buffer and reports how many input bytes it consumed and whether the
/// terminating `<CRLF>.<CRLF>` was seen. Bytes after the terminator are not consumed (they are
/// the next pipelined command).
///
/// A state machine over `<CRLF>.<CRLF>`: input may be split anywhere, nothing is rescanned.
/// Inside a line it jumps to the next CR or LF with `memchr2` and copies the run in one go. A
/// bare CR or LF never ends the message (SMTP smuggling: `\n.\n`, `\r.\r`, `\r\n.\n`, ... are
/// content); it marks the message `BareLineEnding` and scanning goes on to the real
/// `<CRLF>.<CRLF>`. When a message is both too big and has a bare line ending,
/// `BareLineEnding` is reported.
#[derive(Debug)]
pub struct DataReader {
    state: DataState,
    sink: Sink,
}

impl DataReader {
    /// A reader within these limits (beyond `max_size` it only scans for the terminator and
    /// reports `TooBig`).
    pub fn new(limits: BodyLimits) -> DataReader {
        DataReader {
            state: DataState::LineStart,
            sink: Sink::new(limits),
        }
    }

    /// Consume bytes, appending content to `out`; returns `(consumed, Some(result))` once the
    /// terminator is seen, `(consumed, None)` otherwise: then either all input was consumed or
    /// `out` holds a full piece and must be drained before the rest is fed again.
    ///
    /// After the result was returned the reader is done: further calls consume nothing and
    /// return `(0, None)` (see [`is_done`](DataReader::is_done)).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Option<DataResult>) {
        use DataState::*;
        if self.state == Done {
            return (0, None);
        }
        let mut i = 0;
        while let Some(&b) = input.get(i) {
            if self.sink.full(out) {
                return (i, None);
            }
            i += 1;
            self.state = match self.state {
                LineStart | Mid | Dot => match b {
                    b'\r' if self.state == Dot => DotCr,
                    b'\r' => Cr,
                    b'\n' => {
                        self.sink.bare_line_ending(out);
                        self.sink.emit(b"\n", out);
                        Mid
                    }
                    // RFC 5321 4.5.2: the first dot of a line is removed.
                    b'.' if self.state == LineStart => Dot,
                    _ => {
                        // The rest of the line up to the next CR or LF, at most what fills
                        // the piece, in one go.
                        let room = self.sink.room(out).saturating_sub(1);
                        let rest = &input[i..input.len().min(i + room)];
                        let run = memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
                        self.sink.emit(&input[i - 1..i + run], out);
                        i += run;
                        Mid
                    }
                },
                Cr | DotCr => match b {
                    b'\n' if self.state == DotCr => {
                        self.state = Done;
                        let sink = std::mem::replace(&mut self.sink, Sink::new(DONE));
                        return (i, Some(sink.finish()));
                    }
                    b'\n' => {
                        self.sink.emit(b"\r\n", out);
                        LineStart
                    }
                    b'\r' => {
                        // The earlier CR was bare; this one may still start a CRLF.
                        self.sink.bare_line_ending(out);
                        self.sink.emit(b"\r", out);
                        Cr
                    }
                    _ => {
                        self.sink.bare_line_ending(out);
                        self.sink.emit(&[b'\r', b], out);
                        Mid
                    }
                },
                Done => Done,
            };
        }
        (i, None)
    }

    /// Whether the terminator was seen and the result returned.
    pub fn is_done(&self) -> bool {
        self.state == DataState::Done
    }

    /// The header section, as [`Body::headers`] will hold it, as soon as its end went by
    /// (and nothing refused the message yet): what the driver needs to start hashing the body
    /// for DKIM while it is written.
    pub fn header_section(&self) -> Option<&[u8]> {
        self.sink.header_section()
    }
}

/// What a finished reader keeps: nothing.
const DONE: BodyLimits = BodyLimits {
    max_size: 0,
    max_header_size: 0,
    piece_size: 1,
};

/// Whether `bytes` has a CR not followed by LF or an LF not preceded by CR; `after_cr`: the
/// octet before `bytes` was a CR. A CR at the very end is left to the caller (the next octet
/// decides).
fn has_bare_line_ending(bytes: &[u8], after_cr: bool) -> bool {
    let mut i = 0;
    if after_cr {
        match bytes.first() {
            Some(b'\n') => i = 1,
            Some(_) => return true,
            None => return false,
        }
    }
    while let Some(j) = memchr2(b'\r', b'\n', &bytes[i..]) {
        let at = i + j;
        if bytes[at] == b'\n' {
            return true;
        }
        match bytes.get(at + 1) {
            Some(b'\n') => i = at + 2,
            Some(_) => return true,
            None => return false,
        }
    }
    false
}

/// Takes BDAT chunks (RFC 3030) as one message, checking the same bare CR/LF rule across
/// chunk boundaries and the size limit, and passing the content on like [`DataReader`].
#[derive(Debug)]
pub struct BdatAccumulator {
    sink: Sink,
    /// The last octet pushed was a CR: the next one must be an LF.
    pending_cr: bool,
}

impl BdatAccumulator {
    /// An accumulator within these limits.
    pub fn new(limits: BodyLimits) -> BdatAccumulator {
        BdatAccumulator {
            sink: Sink::new(limits),
            pending_cr: false,
        }
    }

    /// Append chunk bytes (a chunk may arrive in several pieces) to `out`; returns how many
    /// were taken: all of them, or as many as fill the piece in `out` (drain it, push the
    /// rest).
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> usize {
        let refused = self.sink.bare || self.sink.too_big;
        let take = if refused {
            bytes.len()
        } else {
            bytes.len().min(self.sink.room(out))
        };
        let part = &bytes[..take];
        if let Some(&last) = part.last() {
            if !self.sink.bare && has_bare_line_ending(part, self.pending_cr) {
                self.sink.bare_line_ending(out);
            }
            self.pending_cr = last == b'\r';
            self.sink.emit(part, out);
        }
        if !refused && (self.sink.bare || self.sink.too_big) && take < bytes.len() {
            // Refused by this part: nothing is stored any more, so nothing waits for a drain.
            return take + self.push(&bytes[take..], out);
        }
        take
    }

    /// Octets accepted so far (counting those beyond the limit).
    pub fn len(&self) -> u64 {
        self.sink.size
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// As [`DataReader::header_section`].
    pub fn header_section(&self) -> Option<&[u8]> {
        self.sink.header_section()
    }

    /// After `BDAT n LAST`: what the checks need, or why the message is refused
    /// (`BareLineEnding` before `TooBig`, as for DATA). `out` is the output the pushes went to.
    ///
    /// A CR that ends the message is bare (no LF can follow it any more).
    pub fn finish(mut self, out: &mut Vec<u8>) -> DataResult {
        if self.pending_cr {
            self.sink.bare_line_ending(out);
        }
        self.sink.finish()
    }
}

/// The readers as they were before they streamed, the model the streaming ones are checked
/// against.
#[cfg(test)]
#[path = "data_model.rs"]
mod model;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BIG: u64 = 1 << 20;

    /// The model's verdict: the whole content, or why it is refused.
    type Old = model::DataResult;

    fn limits(max_size: u64) -> BodyLimits {
        BodyLimits::new(max_size, BIG)
    }

    /// Turn a streaming verdict into the model's terms: the content the pieces add up to, once
    /// what [`Body`] says about it is checked against that content.
    fn verdict(limits: BodyLimits, result: DataResult, content: Vec<u8>) -> Old {
        let body = result?;
        assert_eq!(body.size, content.len() as u64);
        assert_eq!(body.nul, content.contains(&0));
        let section = crate::headers::header_section(&content);
        let fits = section.len() as u64 <= limits.max_header_size;
        assert_eq!(body.headers.as_deref(), fits.then_some(section));
        Ok(content)
    }

    /// Drive a DATA reader over `pieces` as the session does: feed, and when it stops short,
    /// drain the full piece and feed the rest. (total consumed, verdict).
    fn run_data(limits: BodyLimits, pieces: &[&[u8]]) -> (usize, Option<Old>) {
        let mut reader = DataReader::new(limits);
        let (mut out, mut content, mut consumed) = (Vec::new(), Vec::new(), 0);
        for piece in pieces {
            let mut piece = *piece;
            loop {
                let (n, result) = reader.feed(piece, &mut out);
                assert!(out.len() <= limits.piece_size + 2, "{}", out.len());
                consumed += n;
                piece = &piece[n..];
                if let Some(result) = result {
                    content.append(&mut out);
                    assert!(reader.is_done());
                    assert_eq!(reader.feed(b".\r\n", &mut out), (0, None));
                    return (consumed, Some(verdict(limits, result, content)));
                }
                if piece.is_empty() {
                    break;
                }
                assert!(out.len() >= limits.piece_size, "stopped with room left");
                content.append(&mut out);
            }
        }
        (consumed, None)
    }

    /// Feed `wire` in one piece, with piece sizes from 1 octet up (all must agree).
    fn read(wire: &[u8], max_size: u64) -> (usize, Option<Old>) {
        let want = run_data(limits(max_size), &[wire]);
        for piece_size in [1, 2, 7] {
            let small = BodyLimits {
                piece_size,
                ..limits(max_size)
            };
            assert_eq!(run_data(small, &[wire]), want, "piece size {piece_size}");
        }
        want
    }

    /// Feed `wire` one byte at a time.
    fn read_bytewise(wire: &[u8], max_size: u64) -> (usize, Option<Old>) {
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        run_data(limits(max_size), &bytes)
    }

    /// Push `chunks` through a BDAT accumulator as the session does. (len, verdict).
    fn run_bdat(limits: BodyLimits, chunks: &[&[u8]]) -> (u64, Old) {
        let mut acc = BdatAccumulator::new(limits);
        let (mut out, mut content) = (Vec::new(), Vec::new());
        for chunk in chunks {
            let mut chunk = *chunk;
            while !chunk.is_empty() {
                let n = acc.push(chunk, &mut out);
                assert!(out.len() <= limits.piece_size);
                chunk = &chunk[n..];
                if !chunk.is_empty() {
                    assert_eq!(out.len(), limits.piece_size);
                    content.append(&mut out);
                }
            }
        }
        let len = acc.len();
        let result = acc.finish(&mut out);
        content.append(&mut out);
        (len, verdict(limits, result, content))
    }

    #[test]
    fn unstuffing_and_line_endings() {
        let table: &[(&[u8], &[u8])] = &[
            (b".\r\n", b""),
            (b"Hello\r\n.\r\n", b"Hello\r\n"),
            (b"a\r\nb\r\n.\r\n", b"a\r\nb\r\n"),
            (b"\r\n.\r\n", b"\r\n"),
            (b"..\r\n.\r\n", b".\r\n"),
            (b"...\r\n.\r\n", b"..\r\n"),
            (b".a\r\n.\r\n", b"a\r\n"),
            (b"x\r\n.hidden\r\n..\r\n.\r\n", b"x\r\nhidden\r\n.\r\n"),
            (b"a.b\r\n.\r\n", b"a.b\r\n"),
            (b"a\r\n\r\n.\r\n", b"a\r\n\r\n"),
            // NUL is content, even where it makes the line look like a terminator.
            (b"a\r\n\x00.\r\n.\r\n", b"a\r\n\x00.\r\n"),
            (b"\xff\xfe\x80\r\n.\r\n", b"\xff\xfe\x80\r\n"),
        ];
        for (wire, body) in table {
            for pipelined in [&b""[..], b"QUIT\r\n", b".\r\n"] {
                let input = [*wire, pipelined].concat();
                let want = (wire.len(), Some(Ok(body.to_vec())));
                assert_eq!(
                    read(&input, BIG),
                    want,
                    "{:?}",
                    String::from_utf8_lossy(&input)
                );
                assert_eq!(
                    read_bytewise(&input, BIG),
                    want,
                    "{:?}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
    }

    #[test]
    fn smuggling_sequences_do_not_end_the_message() {
        let bare = Err(BodyError::BareLineEnding);
        let table: &[(&[u8], Old)] = &[
            (b"\n.\n", bare.clone()),
            (b"\n.\r\n", bare.clone()),
            (b"\r.\r", bare.clone()),
            (b"\r\n.\r", bare.clone()),
            (b"\r\n.\n", bare.clone()),
            (b"\r.\n", bare.clone()),
            (b"\n.\r", bare.clone()),
            (b"\r\r\n.\r\r\n", bare.clone()),
            (b"\r.\r\n", bare.clone()),
            (b"\n\r\n", bare.clone()),
            (b"\r", bare.clone()),
            (b"\n", bare.clone()),
            (
                b"\r\n\x00.\r\n",
                Ok(b"Hello\r\n\x00.\r\nWorld\r\n".to_vec()),
            ),
        ];
        for (sequence, want) in table {
            let wire = [&b"Hello"[..], sequence, b"World\r\n.\r\n"].concat();
            let input = [&wire[..], b"MAIL FROM:<a@b.test>\r\n"].concat();
            let expected = (wire.len(), Some(want.clone()));
            assert_eq!(
                read(&input, BIG),
                expected,
                "{:?}",
                String::from_utf8_lossy(sequence)
            );
            assert_eq!(
                read_bytewise(&input, BIG),
                expected,
                "{:?}",
                String::from_utf8_lossy(sequence)
            );
            // Right after the 354 (the implicit CRLF) as well.
            let wire = [&sequence[..], b"World\r\n.\r\n"].concat();
            let (n, result) = read(&wire, BIG);
            assert_eq!(n, wire.len(), "{:?}", String::from_utf8_lossy(sequence));
            assert!(result.is_some());
        }
        // The sequences alone never end the message.
        for (sequence, _) in table {
            let (n, result) = read(&[&b"Hello"[..], sequence].concat(), BIG);
            assert_eq!(
                (n, result),
                (5 + sequence.len(), None),
                "{:?}",
                String::from_utf8_lossy(sequence)
            );
        }
        // A leading bare dot line, with the implicit CRLF.
        for start in [&b".\n"[..], b".\r", b".\rX", b".\r\r\n"] {
            let wire = [start, b"x\r\n.\r\n"].concat();
            assert_eq!(
                read(&wire, BIG),
                (wire.len(), Some(bare.clone())),
                "{:?}",
                String::from_utf8_lossy(start)
            );
        }
    }

    #[test]
    fn size_limit() {
        // 5 octets after unstuffing fit in 5; 6 do not. The dot removed by unstuffing does not
        // count, the terminator does not count.
        assert_eq!(read(b"abc\r\n.\r\n", 5), (8, Some(Ok(b"abc\r\n".to_vec()))));
        assert_eq!(
            read(b"..bc\r\n.\r\n", 5),
            (9, Some(Ok(b".bc\r\n".to_vec())))
        );
        assert_eq!(read(b"abcd\r\n.\r\n", 5), (9, Some(Err(BodyError::TooBig))));
        assert_eq!(read(b".\r\n", 0), (3, Some(Ok(Vec::new()))));
        assert_eq!(read(b"a\r\n.\r\n", 0), (6, Some(Err(BodyError::TooBig))));
        // Both: bare line ending wins.
        assert_eq!(
            read(b"abcd\nefgh\r\n.\r\n", 5),
            (14, Some(Err(BodyError::BareLineEnding)))
        );
        assert_eq!(
            read(b"abcdefgh\r\nx\n\r\n.\r\n", 5),
            (17, Some(Err(BodyError::BareLineEnding)))
        );
    }

    #[test]
    fn storage_is_bounded_by_the_piece_and_max_size() {
        let limits = BodyLimits {
            max_size: 1000,
            max_header_size: 150,
            piece_size: 300,
        };
        let mut reader = DataReader::new(limits);
        let mut out = Vec::new();
        let line = [b'x'; 98]
            .iter()
            .chain(b"\r\n")
            .copied()
            .collect::<Vec<u8>>();
        // Three lines fill the piece: the fourth is not taken until it is drained.
        for _ in 0..3 {
            assert_eq!(reader.feed(&line, &mut out), (100, None));
        }
        assert_eq!(reader.feed(&line, &mut out), (0, None));
        assert!(out.capacity() <= 302, "{}", out.capacity());
        out.clear();
        for _ in 0..1000 {
            let (n, result) = reader.feed(&line, &mut out);
            assert!(result.is_none());
            if n < 100 {
                out.clear();
                assert_eq!(reader.feed(&line[n..], &mut out).0, 100 - n);
            }
        }
        // Past max_size nothing is stored and nothing waits for a drain.
        assert!(out.is_empty());
        assert_eq!(reader.sink.size, 100_300);
        assert_eq!(reader.sink.headers.state, HeaderState::TooBig);
        assert_eq!(reader.sink.headers.kept.capacity(), 0);
        assert_eq!(
            reader.feed(b".\r\nQUIT", &mut out),
            (3, Some(Err(BodyError::TooBig)))
        );
        assert!(reader.is_done());
        assert_eq!(reader.feed(b"QUIT\r\n", &mut out), (0, None));
    }

    #[test]
    fn header_section_is_kept_within_its_limit() {
        let at = |max_header_size: u64, wire: &[u8]| {
            let limits = BodyLimits {
                max_size: BIG,
                max_header_size,
                piece_size: 4,
            };
            let mut out = Vec::new();
            let mut reader = DataReader::new(limits);
            let mut wire = wire;
            loop {
                let (n, result) = reader.feed(wire, &mut out);
                wire = &wire[n..];
                out.clear();
                if let Some(result) = result {
                    return result.unwrap().headers;
                }
                assert!(reader.sink.headers.kept.len() as u64 <= max_header_size + 1);
            }
        };
        let wire = b"A: b\r\nC: d\r\n\r\nbody\r\n\r\nmore\r\n.\r\n";
        assert_eq!(at(14, wire).as_deref(), Some(&b"A: b\r\nC: d\r\n\r\n"[..]));
        assert_eq!(at(13, wire), None);
        assert_eq!(at(0, b"\r\nX: y\r\n\r\n.\r\n"), None);
        assert_eq!(
            at(2, b"\r\nX: y\r\n\r\n.\r\n").as_deref(),
            Some(&b"\r\n"[..])
        );
        assert_eq!(at(6, b"A: b\r\n.\r\n").as_deref(), Some(&b"A: b\r\n"[..]));
        assert_eq!(at(5, b"A: b\r\n.\r\n"), None);
        // A dot-stuffed line in the header section is kept unstuffed.
        assert_eq!(
            at(99, b"..X\r\n\r\n.\r\n").as_deref(),
            Some(&b".X\r\n\r\n"[..])
        );
    }

    #[test]
    fn bdat_chunks() {
        let table: &[(&[&[u8]], Old)] = &[
            (&[], Ok(Vec::new())),
            (&[b"", b""], Ok(Vec::new())),
            (
                &[b"Hello\r\n", b"World\r\n"],
                Ok(b"Hello\r\nWorld\r\n".to_vec()),
            ),
            (
                &[b"Hello\r", b"\nWorld\r\n"],
                Ok(b"Hello\r\nWorld\r\n".to_vec()),
            ),
            (&[b"Hello\r", b"", b"\n"], Ok(b"Hello\r\n".to_vec())),
            // No unstuffing in BDAT: dots are data.
            (&[b".\r\n..\r\n"], Ok(b".\r\n..\r\n".to_vec())),
            (
                &[b"no final line ending"],
                Ok(b"no final line ending".to_vec()),
            ),
            (&[b"a\nb"], Err(BodyError::BareLineEnding)),
            (&[b"a\rb"], Err(BodyError::BareLineEnding)),
            (&[b"a\r", b"b"], Err(BodyError::BareLineEnding)),
            (&[b"a\r", b"\r\n"], Err(BodyError::BareLineEnding)),
            (&[b"a", b"\nb"], Err(BodyError::BareLineEnding)),
            (&[b"\n"], Err(BodyError::BareLineEnding)),
            (&[b"a\r\n", b"\r"], Err(BodyError::BareLineEnding)),
            (&[b"a\r"], Err(BodyError::BareLineEnding)),
            (&[b"a\r\r\n"], Err(BodyError::BareLineEnding)),
            (&[b"\r\n\r\n\n"], Err(BodyError::BareLineEnding)),
        ];
        for (chunks, want) in table {
            let total = chunks.iter().map(|c| c.len() as u64).sum::<u64>();
            for piece_size in [1, 3, PIECE_SIZE] {
                let limits = BodyLimits {
                    piece_size,
                    ..limits(BIG)
                };
                let (len, result) = run_bdat(limits, chunks);
                assert_eq!(len, total);
                assert_eq!(&result, want, "{chunks:?}");
            }
            let mut acc = BdatAccumulator::new(limits(BIG));
            let mut out = Vec::new();
            for chunk in *chunks {
                acc.push(chunk, &mut out);
            }
            assert_eq!(acc.is_empty(), total == 0);
        }
    }

    #[test]
    fn bdat_size_limit() {
        assert_eq!(
            run_bdat(limits(5), &[b"abc\r\n"]),
            (5, Ok(b"abc\r\n".to_vec()))
        );
        let mut acc = BdatAccumulator::new(limits(5));
        let mut out = Vec::new();
        assert_eq!(acc.push(b"abc\r\n", &mut out), 5);
        assert_eq!(acc.push(&[b'x'; 100_000], &mut out), 100_000);
        assert_eq!(acc.len(), 100_005);
        assert!(out.is_empty());
        assert_eq!(acc.finish(&mut out), Err(BodyError::TooBig));
        assert_eq!(
            run_bdat(limits(5), &[b"abcdefgh\n"]).1,
            Err(BodyError::BareLineEnding)
        );
    }

    /// Cut `input` at the given points (any order, duplicates allowed).
    fn pieces<'a>(input: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        cuts.push(input.len());
        cuts.sort_unstable();
        let mut from = 0;
        cuts.into_iter()
            .map(|cut| {
                let piece = &input[from..cut];
                from = cut;
                piece
            })
            .collect()
    }

    /// The reference DATA reader: search the whole input (after the implicit CRLF) for the
    /// first `<CRLF>.<CRLF>`, then check and unstuff the content before it.
    fn reference(input: &[u8], max_size: u64) -> Option<(usize, Old)> {
        let prefixed = [&b"\r\n"[..], input].concat();
        let p = prefixed.windows(5).position(|w| w == b"\r\n.\r\n")?;
        let content = &input[..p];
        let end = p + 3;
        let bare = content.iter().enumerate().any(|(i, &b)| {
            (b == b'\r' && content.get(i + 1) != Some(&b'\n'))
                || (b == b'\n' && (i == 0 || content[i - 1] != b'\r'))
        });
        if bare {
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

    fn wire_byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            Just(b'\r'),
            Just(b'\n'),
            Just(b'.'),
            Just(0u8),
            Just(b'a'),
            any::<u8>()
        ]
    }

    /// The model DATA reader over the same pieces: (total consumed, verdict).
    fn run_model(max_size: u64, pieces: &[&[u8]]) -> (usize, Option<Old>) {
        let mut reader = model::DataReader::new(max_size);
        let mut consumed = 0;
        for piece in pieces {
            let (n, result) = reader.feed(piece);
            consumed += n;
            if result.is_some() {
                return (consumed, result);
            }
        }
        (consumed, None)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// (a) Dot-stuffing then reading, split anywhere, gives the message back and stops
        /// exactly after the terminator.
        #[test]
        fn stuffed_message_round_trips(
            lines in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![Just(b'.'), Just(b'a'), Just(0u8), any::<u8>()
                    .prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n')], 0..12),
                0..12),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
            piece_size in 1usize..40,
        ) {
            let mut message = Vec::new();
            let mut wire = Vec::new();
            for line in &lines {
                message.extend_from_slice(line);
                message.extend_from_slice(b"\r\n");
                if line.first() == Some(&b'.') {
                    wire.push(b'.');
                }
                wire.extend_from_slice(line);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b".\r\n");
            let end = wire.len();
            wire.extend_from_slice(b"RSET\r\n.\r\n");
            let limits = BodyLimits { piece_size, ..limits(BIG) };
            let (consumed, result) = run_data(limits, &pieces(&wire, &cuts));
            prop_assert_eq!(consumed, end);
            prop_assert_eq!(result, Some(Ok(message)));
        }

        /// (b) On any input the reader ends exactly where the reference search finds the first
        /// `<CRLF>.<CRLF>`, with the same verdict, and never ends otherwise.
        #[test]
        fn ends_only_at_the_first_real_terminator(
            input in proptest::collection::vec(wire_byte(), 0..200),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
            max_size in 0u64..100,
        ) {
            let (consumed, result) = run_data(limits(max_size), &pieces(&input, &cuts));
            match reference(&input, max_size) {
                Some((end, want)) => {
                    prop_assert_eq!(consumed, end);
                    prop_assert_eq!(result, Some(want));
                }
                None => {
                    prop_assert_eq!(consumed, input.len());
                    prop_assert!(result.is_none());
                }
            }
        }

        /// (b') The same on input built from the smuggling alphabet only, where terminators and
        /// near-terminators are dense.
        #[test]
        fn ends_only_at_the_first_real_terminator_dense(
            input in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'x')], 0..60),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let (consumed, result) = run_data(limits(BIG), &pieces(&input, &cuts));
            match reference(&input, BIG) {
                Some((end, want)) => {
                    prop_assert_eq!(consumed, end);
                    prop_assert_eq!(result, Some(want));
                }
                None => prop_assert_eq!((consumed, result), (input.len(), None)),
            }
        }

        /// (d) The streaming reader against the model it replaced (the whole-message reader):
        /// same end, same verdict, and its pieces add up to exactly what the model kept, for
        /// any split of the input, any piece size and any header limit (the header section,
        /// NUL flag and size it reports are checked against that content in `verdict`).
        #[test]
        fn streaming_matches_the_whole_message_model(
            input in proptest::collection::vec(prop_oneof![
                4 => proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'.'), Just(b':'), Just(0u8)], 1..80),
                4 => prop_oneof![Just(b"\r\n".to_vec()), Just(b"\r\n.".to_vec()), Just(b"\r\n\r\n".to_vec())],
                1 => proptest::collection::vec(wire_byte(), 1..4),
            ], 0..40).prop_map(|parts| parts.concat()),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
            piece_size in 1usize..64,
            max_size in prop_oneof![Just(BIG), 0u64..400],
            max_header_size in prop_oneof![Just(BIG), 0u64..80],
            terminate in any::<bool>(),
        ) {
            let mut input = input;
            if terminate {
                input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
            }
            let pieces = pieces(&input, &cuts);
            let limits = BodyLimits { max_size, max_header_size, piece_size };
            prop_assert_eq!(run_data(limits, &pieces), run_model(max_size, &pieces));
        }

        /// (c) BDAT: any chunking and any piece size give the model's verdict on one push,
        /// which is the reference verdict.
        #[test]
        fn bdat_chunking_does_not_matter(
            input in proptest::collection::vec(wire_byte(), 0..200),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
            max_size in 0u64..150,
            piece_size in 1usize..64,
            max_header_size in prop_oneof![Just(BIG), 0u64..80],
        ) {
            let limits = BodyLimits { max_size, max_header_size, piece_size };
            let (len, split) = run_bdat(limits, &pieces(&input, &cuts));
            prop_assert_eq!(len, input.len() as u64);
            let bare = input.iter().enumerate().any(|(i, &b)| {
                (b == b'\r' && input.get(i + 1) != Some(&b'\n')) || (b == b'\n' && (i == 0 || input[i - 1] != b'\r'))
            });
            let want = if bare {
                Err(BodyError::BareLineEnding)
            } else if input.len() as u64 > max_size {
                Err(BodyError::TooBig)
            } else {
                Ok(input.clone())
            };
            let mut model = model::BdatAccumulator::new(max_size);
            for piece in pieces(&input, &cuts) {
                model.push(piece);
            }
            prop_assert_eq!(&model.finish(), &want);
            prop_assert_eq!(split, want);
        }
    }
}
