//! The DATA reader and BDAT accumulator as they were before they streamed: each keeps the
//! whole message. Test-only, the reference model the streaming readers are checked against
//! (their pieces, concatenated, must be exactly what this keeps).
#![allow(dead_code)]

use super::BodyError;

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
