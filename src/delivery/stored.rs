//! Reading a queued message ([`StoredMessage`]) for relaying: in bounded pieces, never whole.
//!
//! The reads are positioned reads of the queue file, so they block. Callers in async code go
//! through [`blocking`]; [`Pieces`] feeds lettre's `message_iter`, whose iterator is
//! synchronous, and reports a failed read through a [`Fuse`] that the outbound stream checks
//! before every write, so that a message cut short by a read error is never followed by the
//! final dot.

use std::io;
use std::sync::{Arc, OnceLock};

use memchr::memmem;

use crate::queue::spool::StoredMessage;

/// The size of one piece read from the queue file and handed to the SMTP client: large
/// enough that a 25 MB message is about a hundred reads and writes, small enough to keep
/// a session's memory bounded (lettre makes one dot-stuffed copy of each piece).
pub const PIECE: usize = 256 << 10;

/// Run blocking file IO from async code without stalling the reactor.
///
/// On a multi-threaded runtime `block_in_place` hands this worker's other tasks to another
/// thread while the read runs. A current-thread runtime (tests, `queue` tools) cannot do that
/// (`block_in_place` panics there) and has no other task that could run on another thread
/// anyway; the read is a bounded pread of a file that was written (and so cached) moments ago,
/// so it runs in place. `spawn_blocking` is not an option: [`Pieces`] reads inside lettre's
/// synchronous iterator and cannot await.
///
/// A message [`StoredMessage::in_memory`] needs none of this: its reads make no system call.
pub fn blocking<T>(message: &StoredMessage, f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if message.in_memory() {
        return f();
    }
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Fill `buf` from `message` at `pos`; an error when the message ends first.
pub fn read_exact_at(message: &StoredMessage, mut pos: u64, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = message.read_at(pos, buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "queued message shorter than its envelope says",
            ));
        }
        pos += n as u64;
        buf = &mut buf[n..];
    }
    Ok(())
}

/// Call `f` on each piece of `message` in order, until it returns false. Blocks.
fn for_each_piece(
    message: &StoredMessage,
    mut f: impl FnMut(u64, &[u8]) -> bool,
) -> io::Result<()> {
    let len = message.len();
    let mut buf = vec![0u8; (len.min(PIECE as u64)) as usize];
    let mut pos = 0;
    while pos < len {
        let want = (len - pos).min(buf.len() as u64) as usize;
        read_exact_at(message, pos, &mut buf[..want])?;
        if !f(pos, &buf[..want]) {
            break;
        }
        pos += want as u64;
    }
    Ok(())
}

/// Whether every octet of the message is ASCII (a 7-bit body). Blocks.
pub fn is_ascii(message: &StoredMessage) -> io::Result<bool> {
    let mut ascii = true;
    for_each_piece(message, |_, piece| {
        ascii = piece.is_ascii();
        ascii
    })?;
    Ok(ascii)
}

/// Whether the header fields (up to the empty line, as [`crate::headers::header_fields`]
/// draws it) are all ASCII; reads no further than the end of the header section. Blocks.
pub fn header_fields_ascii(message: &StoredMessage) -> io::Result<bool> {
    let mut ascii = true;
    // The last (at most 3) octets before the current piece: the empty line may straddle two.
    let mut tail: Vec<u8> = Vec::with_capacity(6);
    for_each_piece(message, |pos, piece| {
        if pos == 0 && piece.starts_with(b"\r\n") {
            // Starts with the empty line: no header fields at all.
            return false;
        }
        let mut window = tail.clone();
        window.extend_from_slice(&piece[..piece.len().min(3)]);
        // Octets of this piece that are header fields, and whether the section ends here.
        let (fields, ends) = match memmem::find(&window, b"\r\n\r\n") {
            // The CRLF ending the last field may reach into this piece.
            Some(i) => ((i + 2).saturating_sub(tail.len()), true),
            None => match memmem::find(piece, b"\r\n\r\n") {
                Some(i) => (i + 2, true),
                None => (piece.len(), false),
            },
        };
        ascii = piece[..fields].is_ascii();
        if !ascii || ends {
            return false;
        }
        tail.extend_from_slice(&piece[piece.len().saturating_sub(3)..]);
        tail.drain(..tail.len().saturating_sub(3));
        true
    })?;
    Ok(ascii)
}

/// Shared between [`Pieces`] and the outbound stream: set when reading the queued message
/// failed, after which the stream refuses every write, so the final dot never goes out.
#[derive(Debug, Default)]
pub struct Fuse(OnceLock<String>);

impl Fuse {
    /// A new, intact fuse.
    pub fn new() -> Arc<Fuse> {
        Arc::new(Fuse::default())
    }

    /// Record why the data cannot be completed (the first reason stays).
    pub fn blow(&self, why: String) {
        let _ = self.0.set(why);
    }

    /// Why the fuse was blown, if it was.
    pub fn blown(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

/// The message one [`PIECE`] at a time, in order, for lettre's `message_iter`, without its
/// final CRLF (lettre's `CRLF.CRLF` puts it back). A failed read blows the fuse and ends the
/// iteration early; the stream under lettre then fails the write of the final dot.
pub struct Pieces<'a> {
    message: &'a StoredMessage,
    pos: u64,
    len: u64,
    /// Reused for every piece: lettre drops a piece (encoding it into its own buffer and
    /// writing that) before it asks for the next, so the count is back to one by then.
    buf: Arc<Vec<u8>>,
    fuse: Arc<Fuse>,
}

impl<'a> Pieces<'a> {
    /// The pieces of `message`; `fuse` is blown when one cannot be read.
    pub fn new(message: &'a StoredMessage, fuse: Arc<Fuse>) -> Pieces<'a> {
        Pieces {
            message,
            pos: 0,
            len: message.len(),
            buf: Arc::new(Vec::new()),
            fuse,
        }
    }
}

/// One piece of the message, sharing [`Pieces`]' buffer.
pub struct Piece(Arc<Vec<u8>>);

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Iterator for Pieces<'_> {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        if self.pos >= self.len || self.fuse.blown().is_some() {
            return None;
        }
        let rest = self.len - self.pos;
        let mut want = rest.min(PIECE as u64);
        if rest - want == 1 {
            // Never leave a last piece of one octet: the CRLF it may end is stripped from the
            // last piece, so both octets must be in it.
            want -= 1;
        }
        let want = want as usize;
        if Arc::get_mut(&mut self.buf).is_none() {
            // The previous piece is still held: never overwrite bytes someone may read.
            self.buf = Arc::new(Vec::new());
        }
        let buf = Arc::get_mut(&mut self.buf)?;
        buf.resize(want, 0);
        let (message, pos) = (self.message, self.pos);
        match blocking(message, || read_exact_at(message, pos, buf)) {
            Ok(()) => {
                self.pos += want as u64;
                if self.pos == self.len && buf.ends_with(b"\r\n") {
                    buf.truncate(want - 2);
                }
                Some(Piece(self.buf.clone()))
            }
            Err(e) => {
                self.fuse.blow(format!(
                    "reading the queued message failed at octet {pos}: {e}"
                ));
                None
            }
        }
    }
}
