//! The session's input buffer: bytes from the socket in, command lines out, bounded.

/// The longest command line, CRLF included (RFC 5321 4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;
/// The longest AUTH continuation line, CRLF included (RFC 4954 section 4).
pub const MAX_AUTH_LINE: usize = 12288;

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
#[derive(Debug, Default)]
pub struct InputBuffer {
    _buf: Vec<u8>,
}

impl InputBuffer {
    pub fn new() -> InputBuffer {
        InputBuffer::default()
    }

    /// Append bytes read from the socket.
    pub fn extend(&mut self, _bytes: &[u8]) {
        todo!("parser helper")
    }

    /// Take the next line if a complete one is buffered. A line ends with LF (a CR before it is
    /// stripped); over `limit` octets (line ending included) the line is reported `TooLong`.
    /// Returns `None` when more input is needed.
    pub fn next_line(&mut self, _limit: usize) -> Option<LineEvent> {
        todo!("parser helper")
    }

    /// The buffered bytes not yet consumed (for DATA/BDAT readers).
    pub fn bytes(&self) -> &[u8] {
        todo!("parser helper")
    }

    /// Drop `n` bytes from the front (after a reader consumed them).
    pub fn consume(&mut self, _n: usize) {
        todo!("parser helper")
    }

    /// Discard everything buffered (STARTTLS: RFC 3207 section 4.2, no pipelined plaintext
    /// survives the handshake).
    pub fn clear(&mut self) {
        todo!("parser helper")
    }

    /// Whether nothing is buffered (RFC 2920: flush replies when the input is drained).
    pub fn is_empty(&self) -> bool {
        todo!("parser helper")
    }

    /// Number of buffered bytes.
    pub fn len(&self) -> usize {
        todo!("parser helper")
    }
}
