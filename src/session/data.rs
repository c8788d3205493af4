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

/// Reads a DATA body after the 354 reply. Feed it bytes; it reports how many it consumed and
/// whether the terminating `<CRLF>.<CRLF>` was seen. Bytes after the terminator are not
/// consumed (they are the next pipelined command).
#[derive(Debug)]
pub struct DataReader {
    _max_size: u64,
}

/// The end of a DATA body: the unstuffed message (CRLF line endings, without the final
/// `.CRLF`), or why it is refused.
pub type DataResult = Result<Vec<u8>, BodyError>;

impl DataReader {
    /// A reader keeping at most `max_size` octets of message (beyond that it only scans for
    /// the terminator and reports `TooBig`).
    pub fn new(_max_size: u64) -> DataReader {
        todo!("parser helper")
    }

    /// Consume bytes; returns `(consumed, Some(result))` once the terminator is seen,
    /// `(consumed, None)` when more input is needed (then `consumed == input.len()`).
    pub fn feed(&mut self, _input: &[u8]) -> (usize, Option<DataResult>) {
        todo!("parser helper")
    }
}

/// Accumulates BDAT chunks (RFC 3030) into one message, checking the same bare CR/LF rule
/// across chunk boundaries and the size limit.
#[derive(Debug)]
pub struct BdatAccumulator {
    _max_size: u64,
}

impl BdatAccumulator {
    pub fn new(_max_size: u64) -> BdatAccumulator {
        todo!("parser helper")
    }

    /// Append chunk bytes (a chunk may arrive in several pieces).
    pub fn push(&mut self, _bytes: &[u8]) {
        todo!("parser helper")
    }

    /// Octets accepted so far (counting those beyond the limit).
    pub fn len(&self) -> u64 {
        todo!("parser helper")
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// After `BDAT n LAST`: the whole message, or why it is refused.
    pub fn finish(self) -> DataResult {
        todo!("parser helper")
    }
}
