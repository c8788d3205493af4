//! The session's input buffer: bytes from the socket in, command lines out, bounded.

/// The longest command line, CRLF included (RFC 5321 4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;
/// The longest AUTH continuation line, CRLF included (RFC 4954 section 4).
pub const MAX_AUTH_LINE: usize = 12288;
/// The capacity [`InputBuffer::release_spare`] lets an empty buffer keep: enough for command
/// lines, far less than what a message body grows it to.
const IDLE_CAPACITY: usize = 1024;

/// What [`InputBuffer::next_line`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineEvent {
    /// A complete line, without its line ending.
    Line(Vec<u8>),
    /// A line longer than the limit; its bytes up to and including the line ending have been
    /// discarded (exactly one event per over-long line).
    TooLong,
}

/// Buffered input. The driver appends what it reads; the session takes lines or raw bytes.
/// Holds at most `limit` bytes of an incomplete line: beyond that it discards until the next
/// line ending, so a client cannot grow it without bound.
///
/// Over-long lines: as soon as an incomplete line reaches `limit` octets (it cannot fit any
/// more, since its line ending is still to come) its bytes are dropped and the buffer discards
/// input until the next LF. [`LineEvent::TooLong`] is returned when that LF arrives, not
/// before, so the session answers the over-long line where the client expects an answer to it
/// (after the client finished sending it) and exactly once.
///
/// [`extend`](InputBuffer::extend) never drops data: DATA and BDAT read raw bytes through
/// [`bytes`](InputBuffer::bytes) and [`consume`](InputBuffer::consume), and the driver bounds
/// how much it reads per call. Only [`next_line`](InputBuffer::next_line) enforces the limit.
#[derive(Debug, Default)]
pub struct InputBuffer {
    /// Buffered bytes; the unconsumed ones are `buf[start..]`.
    buf: Vec<u8>,
    /// Read offset: bytes before it are consumed and dropped at the next compaction.
    start: usize,
    /// How many unconsumed bytes are known to hold no LF, so a line that arrives in many small
    /// reads is scanned once (linear time).
    scanned: usize,
    /// Inside an over-long line: drop bytes up to and including the next LF.
    discarding: bool,
}

impl InputBuffer {
    /// An empty buffer.
    pub fn new() -> InputBuffer {
        InputBuffer::default()
    }

    /// Append bytes read from the socket.
    pub fn extend(&mut self, bytes: &[u8]) {
        // Compact when the consumed prefix is at least as large as what is left: each byte is
        // moved at most a bounded number of times (amortised linear).
        if self.start > 0 && self.start >= self.buf.len() - self.start {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Take the next line if a complete one is buffered. A line ends with LF (a CR before it is
    /// stripped); over `limit` octets (line ending included) the line is reported `TooLong`.
    /// Returns `None` when more input is needed.
    pub fn next_line(&mut self, limit: usize) -> Option<LineEvent> {
        let pending = &self.buf[self.start..];
        let Some(lf) = pending[self.scanned..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| i + self.scanned)
        else {
            if self.discarding || pending.len() >= limit {
                // An incomplete line of `limit` octets cannot end within the limit.
                self.discarding = true;
                self.consume(pending.len());
            } else {
                self.scanned = pending.len();
            }
            return None;
        };
        let event = if self.discarding || lf + 1 > limit {
            LineEvent::TooLong
        } else {
            let line = &pending[..lf];
            LineEvent::Line(line.strip_suffix(b"\r").unwrap_or(line).to_vec())
        };
        self.discarding = false;
        self.consume(lf + 1);
        Some(event)
    }

    /// The buffered bytes not yet consumed (for DATA/BDAT readers).
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Drop `n` bytes from the front (after a reader consumed them). `n` larger than
    /// [`len`](InputBuffer::len) drops everything.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len());
        self.start += n;
        self.scanned = self.scanned.saturating_sub(n);
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Discard everything buffered (STARTTLS: RFC 3207 section 4.2, no pipelined plaintext
    /// survives the handshake).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.scanned = 0;
        self.discarding = false;
    }

    /// Give back memory a message body or long line left behind, once nothing is buffered: a
    /// connection that waits for its next command should not hold it.
    pub fn release_spare(&mut self) {
        if self.is_empty() && self.buf.capacity() > IDLE_CAPACITY {
            self.buf = Vec::new();
            self.start = 0;
            self.scanned = 0;
        }
    }

    /// The buffer's capacity in bytes (memory held, buffered or not).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Whether nothing is buffered (RFC 2920: flush replies when the input is drained).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of buffered bytes.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(s: &[u8]) -> Option<LineEvent> {
        Some(LineEvent::Line(s.to_vec()))
    }

    /// Feed `input` in one piece and collect every event.
    fn events(input: &[u8], limit: usize) -> Vec<LineEvent> {
        let mut buf = InputBuffer::new();
        buf.extend(input);
        std::iter::from_fn(|| buf.next_line(limit)).collect()
    }

    #[test]
    fn lines_and_endings() {
        let mut buf = InputBuffer::new();
        assert!(buf.is_empty());
        buf.extend(b"EHLO a\r\nNOOP\nQUIT\r\r\n\r\n\nDATA");
        assert_eq!(buf.next_line(512), line(b"EHLO a"));
        assert_eq!(buf.next_line(512), line(b"NOOP"));
        // Only one CR is stripped; the parser refuses the other.
        assert_eq!(buf.next_line(512), line(b"QUIT\r"));
        assert_eq!(buf.next_line(512), line(b""));
        assert_eq!(buf.next_line(512), line(b""));
        assert_eq!(buf.next_line(512), None);
        assert_eq!(buf.len(), 4);
        assert_eq!(buf.bytes(), b"DATA");
        buf.extend(b"\r");
        assert_eq!(buf.next_line(512), None);
        buf.extend(b"\n");
        assert_eq!(buf.next_line(512), line(b"DATA"));
        assert!(buf.is_empty());
    }

    #[test]
    fn limit_counts_the_line_ending() {
        // limit 6: "abcd\r\n" (6) fits, "abcde\r\n" (7) and "abcdef\n" (7) do not.
        let table: &[(&[u8], Vec<LineEvent>)] = &[
            (b"abcd\r\n", vec![LineEvent::Line(b"abcd".to_vec())]),
            (b"abcde\n", vec![LineEvent::Line(b"abcde".to_vec())]),
            (b"abcde\r\n", vec![LineEvent::TooLong]),
            (b"abcdef\n", vec![LineEvent::TooLong]),
            (
                b"abcdefghijklmnop\r\nok\r\n",
                vec![LineEvent::TooLong, LineEvent::Line(b"ok".to_vec())],
            ),
            (b"abcdefghijklmnop", vec![]),
        ];
        for (input, want) in table {
            assert_eq!(
                &events(input, 6),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn over_long_line_is_reported_once_when_it_ends() {
        let mut buf = InputBuffer::new();
        buf.extend(&[b'x'; 600]);
        assert_eq!(buf.next_line(512), None);
        assert!(buf.is_empty(), "the incomplete over-long line is dropped");
        for _ in 0..100 {
            buf.extend(&[b'y'; 1000]);
            assert_eq!(buf.next_line(512), None);
            assert!(buf.len() < 512);
        }
        buf.extend(b"still the same line\r\nNOOP\r\n");
        assert_eq!(buf.next_line(512), Some(LineEvent::TooLong));
        assert_eq!(buf.next_line(512), line(b"NOOP"));
        assert_eq!(buf.next_line(512), None);
    }

    #[test]
    fn raw_bytes_are_never_dropped_by_extend() {
        let mut buf = InputBuffer::new();
        let body = vec![b'z'; 100_000];
        buf.extend(&body);
        assert_eq!(buf.len(), 100_000);
        buf.consume(40_000);
        buf.extend(b"\r\n.\r\nQUIT\r\n");
        assert_eq!(buf.len(), 60_011);
        assert!(buf.bytes().starts_with(b"zzz"));
        buf.consume(60_005);
        assert_eq!(buf.next_line(512), line(b"QUIT"));
        buf.consume(10);
        assert!(buf.is_empty());
    }

    #[test]
    fn release_spare_frees_a_large_empty_buffer_only() {
        let mut buf = InputBuffer::new();
        buf.extend(&[b'z'; 50_000]);
        buf.consume(49_990);
        buf.release_spare();
        assert!(buf.capacity() >= 50_000, "10 bytes still buffered");
        assert_eq!(buf.len(), 10);
        buf.consume(10);
        buf.release_spare();
        assert_eq!(buf.capacity(), 0);
        buf.extend(b"NOOP\r\n");
        assert_eq!(buf.next_line(512), line(b"NOOP"));
        let small = buf.capacity();
        buf.release_spare();
        assert_eq!(buf.capacity(), small, "a command-sized buffer is kept");
    }

    #[test]
    fn clear_drops_everything_and_the_discard_state() {
        let mut buf = InputBuffer::new();
        buf.extend(&[b'x'; 600]);
        assert_eq!(buf.next_line(512), None);
        buf.extend(b"STARTTLS\r\nEHLO evil\r\n");
        buf.clear();
        assert!(buf.is_empty());
        buf.extend(b"EHLO a\r\n");
        assert_eq!(buf.next_line(512), line(b"EHLO a"));
    }

    /// The reference: what a line splitter that sees the whole input at once reports.
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

    proptest! {
        #[test]
        fn any_split_gives_the_same_events(
            input in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'a'), any::<u8>()], 0..400),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
            limit in 1usize..40,
        ) {
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            cuts.push(input.len());
            cuts.sort_unstable();
            let mut buf = InputBuffer::new();
            let mut got = Vec::new();
            let mut from = 0;
            for cut in cuts {
                buf.extend(&input[from..cut]);
                from = cut;
                while let Some(event) = buf.next_line(limit) {
                    got.push(event);
                }
                // Bounded: never `limit` bytes of an incomplete line once next_line said None.
                prop_assert!(buf.len() < limit);
            }
            prop_assert_eq!(&got, &reference(&input, limit));
            prop_assert_eq!(got, events(&input, limit));
        }
    }
}
