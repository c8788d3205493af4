//! The DATA reader and the BDAT accumulator. Sans-IO, bounded, smuggling-proof:
//! DATA ends only on `<CRLF>.<CRLF>` (RFC 5321 4.1.1.4), and any bare CR or bare LF in the
//! content marks the message for rejection (`550 5.6.0`), in DATA and BDAT alike.

/// Why a message body was refused once it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// A CR not followed by LF, or an LF not preceded by CR: `550 5.6.0`.
    BareLineEnding,
    /// More than `max_size` octets after dot-unstuffing: `552 5.3.4`.
    TooBig,
}

/// Where the message goes: counts octets, keeps them up to `max_size`, remembers why the message
/// will be refused. Once it is refused nothing more is stored (the bytes are still counted).
#[derive(Debug)]
struct Sink {
    max_size: u64,
    /// Octets of message seen so far (after unstuffing for DATA), stored or not.
    size: u64,
    data: Vec<u8>,
    bare: bool,
    too_big: bool,
}

impl Sink {
    fn new(max_size: u64) -> Sink {
        Sink {
            max_size,
            size: 0,
            data: Vec::new(),
            bare: false,
            too_big: false,
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len() as u64);
        if self.bare || self.too_big {
            return;
        }
        if self.size > self.max_size {
            self.too_big = true;
            self.data = Vec::new();
            return;
        }
        // Grow by doubling, but never past max_size: the limit bounds the allocation too.
        let needed = self.data.len() + bytes.len();
        if needed > self.data.capacity() {
            let max = usize::try_from(self.max_size).unwrap_or(usize::MAX);
            let target = self.data.capacity().saturating_mul(2).max(needed).min(max);
            self.data.reserve_exact(target - self.data.len());
        }
        self.data.extend_from_slice(bytes);
    }

    fn bare_line_ending(&mut self) {
        self.bare = true;
        self.data = Vec::new();
    }

    /// Bare CR/LF wins over size: it is a protocol violation (possibly a smuggling attempt)
    /// that the client must not retry as is, whatever the size.
    fn finish(self) -> DataResult {
        if self.bare {
            Err(BodyError::BareLineEnding)
        } else if self.too_big {
            Err(BodyError::TooBig)
        } else {
            Ok(self.data)
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

/// Reads a DATA body after the 354 reply. Feed it bytes; it reports how many it consumed and
/// whether the terminating `<CRLF>.<CRLF>` was seen. Bytes after the terminator are not
/// consumed (they are the next pipelined command).
///
/// A byte-at-a-time state machine: input may be split anywhere, nothing is rescanned, memory is
/// bounded by `max_size`. A bare CR or LF never ends the message (SMTP smuggling: `\n.\n`,
/// `\r.\r`, `\r\n.\n`, ... are content); it marks the message `BareLineEnding` and scanning goes
/// on to the real `<CRLF>.<CRLF>`. When a message is both too big and has a bare line ending,
/// `BareLineEnding` is reported.
#[derive(Debug)]
pub struct DataReader {
    state: DataState,
    sink: Sink,
}

/// The end of a DATA body: the unstuffed message (CRLF line endings, without the final
/// `.CRLF`), or why it is refused.
pub type DataResult = Result<Vec<u8>, BodyError>;

impl DataReader {
    /// A reader keeping at most `max_size` octets of message (beyond that it only scans for
    /// the terminator and reports `TooBig`).
    pub fn new(max_size: u64) -> DataReader {
        DataReader {
            state: DataState::LineStart,
            sink: Sink::new(max_size),
        }
    }

    /// Consume bytes; returns `(consumed, Some(result))` once the terminator is seen,
    /// `(consumed, None)` when more input is needed (then `consumed == input.len()`).
    ///
    /// After the result was returned the reader is done: further calls consume nothing and
    /// return `(0, None)` (see [`is_done`](DataReader::is_done)).
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<DataResult>) {
        use DataState::*;
        if self.state == Done {
            return (0, None);
        }
        let mut i = 0;
        while let Some(&b) = input.get(i) {
            i += 1;
            self.state = match self.state {
                LineStart | Mid | Dot => match b {
                    b'\r' if self.state == Dot => DotCr,
                    b'\r' => Cr,
                    b'\n' => {
                        self.sink.bare_line_ending();
                        self.sink.emit(b"\n");
                        Mid
                    }
                    // RFC 5321 4.5.2: the first dot of a line is removed.
                    b'.' if self.state == LineStart => Dot,
                    _ => {
                        // Copy the run up to the next CR or LF in one go.
                        let rest = &input[i..];
                        let run = rest
                            .iter()
                            .position(|&c| c == b'\r' || c == b'\n')
                            .unwrap_or(rest.len());
                        self.sink.emit(&input[i - 1..i + run]);
                        i += run;
                        Mid
                    }
                },
                Cr | DotCr => match b {
                    b'\n' if self.state == DotCr => {
                        self.state = Done;
                        let sink = std::mem::replace(&mut self.sink, Sink::new(0));
                        return (i, Some(sink.finish()));
                    }
                    b'\n' => {
                        self.sink.emit(b"\r\n");
                        LineStart
                    }
                    b'\r' => {
                        // The earlier CR was bare; this one may still start a CRLF.
                        self.sink.bare_line_ending();
                        self.sink.emit(b"\r");
                        Cr
                    }
                    _ => {
                        self.sink.bare_line_ending();
                        self.sink.emit(&[b'\r', b]);
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
}

/// Accumulates BDAT chunks (RFC 3030) into one message, checking the same bare CR/LF rule
/// across chunk boundaries and the size limit.
#[derive(Debug)]
pub struct BdatAccumulator {
    sink: Sink,
    /// The last octet pushed was a CR: the next one must be an LF.
    pending_cr: bool,
}

impl BdatAccumulator {
    /// An accumulator keeping at most `max_size` octets of message.
    pub fn new(max_size: u64) -> BdatAccumulator {
        BdatAccumulator {
            sink: Sink::new(max_size),
            pending_cr: false,
        }
    }

    /// Append chunk bytes (a chunk may arrive in several pieces).
    pub fn push(&mut self, bytes: &[u8]) {
        let Some(&last) = bytes.last() else {
            return;
        };
        if !self.sink.bare {
            let mut after_cr = self.pending_cr;
            for &b in bytes {
                if after_cr != (b == b'\n') {
                    // A CR followed by something else than LF, or an LF without a CR before it.
                    self.sink.bare_line_ending();
                    break;
                }
                after_cr = b == b'\r';
            }
        }
        self.pending_cr = last == b'\r';
        self.sink.emit(bytes);
    }

    /// Octets accepted so far (counting those beyond the limit).
    pub fn len(&self) -> u64 {
        self.sink.size
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// After `BDAT n LAST`: the whole message, or why it is refused (`BareLineEnding` before
    /// `TooBig`, as for DATA).
    ///
    /// A CR that ends the message is bare (no LF can follow it any more).
    pub fn finish(mut self) -> DataResult {
        if self.pending_cr {
            self.sink.bare_line_ending();
        }
        self.sink.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BIG: u64 = 1 << 20;

    /// Feed `wire` in one piece; returns what was consumed and the result.
    fn read(wire: &[u8], max_size: u64) -> (usize, Option<DataResult>) {
        DataReader::new(max_size).feed(wire)
    }

    /// Feed `wire` one byte at a time.
    fn read_bytewise(wire: &[u8], max_size: u64) -> (usize, Option<DataResult>) {
        let mut reader = DataReader::new(max_size);
        for (i, b) in wire.iter().enumerate() {
            let (n, result) = reader.feed(std::slice::from_ref(b));
            assert_eq!(n, 1);
            if result.is_some() {
                return (i + 1, result);
            }
        }
        (wire.len(), None)
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
        let table: &[(&[u8], DataResult)] = &[
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
    fn storage_is_bounded_by_max_size() {
        let mut reader = DataReader::new(1000);
        let line = [b'x'; 98]
            .iter()
            .chain(b"\r\n")
            .copied()
            .collect::<Vec<u8>>();
        for _ in 0..10 {
            reader.feed(&line);
        }
        assert!(reader.sink.data.capacity() <= 1000);
        for _ in 0..1000 {
            assert_eq!(reader.feed(&line), (100, None));
        }
        assert_eq!(reader.sink.data.capacity(), 0);
        assert_eq!(reader.sink.size, 101_000);
        assert_eq!(reader.feed(b".\r\nQUIT"), (3, Some(Err(BodyError::TooBig))));
        assert!(reader.is_done());
        assert_eq!(reader.feed(b"QUIT\r\n"), (0, None));
    }

    #[test]
    fn bdat_chunks() {
        let table: &[(&[&[u8]], DataResult)] = &[
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
        ];
        for (chunks, want) in table {
            let mut acc = BdatAccumulator::new(BIG);
            for chunk in *chunks {
                acc.push(chunk);
            }
            assert_eq!(
                acc.len(),
                chunks.iter().map(|c| c.len() as u64).sum::<u64>()
            );
            assert_eq!(acc.is_empty(), chunks.iter().all(|c| c.is_empty()));
            assert_eq!(&acc.finish(), want, "{chunks:?}");
        }
    }

    #[test]
    fn bdat_size_limit() {
        let mut acc = BdatAccumulator::new(5);
        acc.push(b"abc\r\n");
        assert_eq!(acc.len(), 5);
        assert_eq!(acc.finish(), Ok(b"abc\r\n".to_vec()));
        let mut acc = BdatAccumulator::new(5);
        acc.push(b"abc\r\n");
        acc.push(&[b'x'; 100_000]);
        assert_eq!(acc.len(), 100_005);
        assert_eq!(acc.sink.data.capacity(), 0);
        assert_eq!(acc.finish(), Err(BodyError::TooBig));
        let mut acc = BdatAccumulator::new(5);
        acc.push(b"abcdefgh\n");
        assert_eq!(acc.finish(), Err(BodyError::BareLineEnding));
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

    /// Feed the pieces until the reader ends; (total consumed, result).
    fn feed_pieces(
        reader: &mut DataReader,
        pieces: &[&[u8]],
    ) -> Result<(usize, Option<DataResult>), TestCaseError> {
        let mut consumed = 0;
        for piece in pieces {
            let (n, result) = reader.feed(piece);
            consumed += n;
            if result.is_some() {
                return Ok((consumed, result));
            }
            prop_assert_eq!(n, piece.len());
        }
        Ok((consumed, None))
    }

    /// The reference DATA reader: search the whole input (after the implicit CRLF) for the
    /// first `<CRLF>.<CRLF>`, then check and unstuff the content before it.
    fn reference(input: &[u8], max_size: u64) -> Option<(usize, DataResult)> {
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
            let mut reader = DataReader::new(BIG);
            let (consumed, result) = feed_pieces(&mut reader, &pieces(&wire, &cuts))?;
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
            let mut reader = DataReader::new(max_size);
            let (consumed, result) = feed_pieces(&mut reader, &pieces(&input, &cuts))?;
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
            let mut reader = DataReader::new(BIG);
            let (consumed, result) = feed_pieces(&mut reader, &pieces(&input, &cuts))?;
            match reference(&input, BIG) {
                Some((end, want)) => {
                    prop_assert_eq!(consumed, end);
                    prop_assert_eq!(result, Some(want));
                }
                None => prop_assert_eq!((consumed, result), (input.len(), None)),
            }
        }

        /// (c) BDAT: any chunking gives the result of one push, which is the reference verdict.
        #[test]
        fn bdat_chunking_does_not_matter(
            input in proptest::collection::vec(wire_byte(), 0..200),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
            max_size in 0u64..150,
        ) {
            let mut whole = BdatAccumulator::new(max_size);
            whole.push(&input);
            let mut split = BdatAccumulator::new(max_size);
            for piece in pieces(&input, &cuts) {
                split.push(piece);
            }
            prop_assert_eq!(split.len(), input.len() as u64);
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
            let whole = whole.finish();
            prop_assert_eq!(&whole, &want);
            prop_assert_eq!(split.finish(), whole);
        }
    }
}
