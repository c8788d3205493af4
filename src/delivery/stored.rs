//! Reading a queued message ([`StoredMessage`]) for relaying: in bounded pieces, never whole.
//!
//! The reads are positioned reads of the queue file, so they block. Callers in async code go
//! through [`blocking`]; [`Pieces`] feeds the outbound DATA writer (`outbound::send_message`),
//! which dot-stuffs each piece ([`super::dotstuff`]) and writes it to the next hop's stream. A
//! read that fails there blows the connection's [`Fuse`], which the outbound stream checks
//! before every write, so that a message cut short is never followed by the final dot.

use std::io;
use std::sync::{Arc, OnceLock};

use memchr::memmem;

use crate::queue::spool::StoredMessage;

/// The size of one piece read from the queue file and written to the next hop: large enough
/// that a 25 MB message is about a hundred reads and writes, small enough to keep a session's
/// memory bounded (one buffer of this size per message being sent; no stuffed copy).
pub const PIECE: usize = 256 << 10;

/// Run blocking file IO from async code without stalling the reactor.
///
/// On a multi-threaded runtime `block_in_place` hands this worker's other tasks to another
/// thread while the read runs. A current-thread runtime (tests, `queue` tools) cannot do that
/// (`block_in_place` panics there) and has no other task that could run on another thread
/// anyway; the read is a bounded pread of a file that was written (and so cached) moments ago,
/// so it runs in place. `spawn_blocking` would cost a thread hand-off and a buffer moved in and
/// out for every piece.
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

/// Shared between the DATA writer and the outbound stream: set when reading the queued
/// message failed, after which the stream refuses every write, so the final dot never goes out.
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

/// The message one [`PIECE`] at a time, in order, without its final CRLF (the terminator
/// `CRLF.CRLF` puts it back), read into one buffer reused for every piece.
pub struct Pieces<'a> {
    message: &'a StoredMessage,
    pos: u64,
    len: u64,
    buf: Vec<u8>,
}

impl<'a> Pieces<'a> {
    /// The pieces of `message`.
    pub fn new(message: &'a StoredMessage) -> Pieces<'a> {
        Pieces {
            message,
            pos: 0,
            len: message.len(),
            buf: Vec::new(),
        }
    }

    /// The next piece (`None` after the last); an error names the octet where reading failed.
    /// Blocks, through [`blocking`].
    pub fn next_piece(&mut self) -> io::Result<Option<&[u8]>> {
        if self.pos >= self.len {
            return Ok(None);
        }
        let rest = self.len - self.pos;
        let mut want = rest.min(PIECE as u64);
        if rest - want == 1 {
            // Never leave a last piece of one octet: the CRLF it may end is stripped from the
            // last piece, so both octets must be in it.
            want -= 1;
        }
        let want = want as usize;
        self.buf.resize(want, 0);
        let (message, pos, buf) = (self.message, self.pos, &mut self.buf[..]);
        blocking(message, || read_exact_at(message, pos, buf)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("reading the queued message failed at octet {pos}: {e}"),
            )
        })?;
        self.pos += want as u64;
        let mut piece = &self.buf[..];
        if self.pos == self.len {
            piece = piece.strip_suffix(b"\r\n").unwrap_or(piece);
        }
        Ok(Some(piece))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{QueueId, Spool, spool::Envelope};

    /// `content` stored in a spool under a temp dir, opened for relaying.
    fn stored(content: &[u8]) -> StoredMessage {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = QueueId::generate();
        let env = Envelope::new(
            &id,
            "u",
            "a@example.test",
            &["b@example.test".into()],
            "h",
            0,
        );
        spool.store_blocking(&env, content).unwrap();
        // The open file outlives the directory's removal.
        spool.open_message(&id).unwrap().1
    }

    #[test]
    fn pieces_cover_the_message_without_its_final_crlf() {
        for (len, ending) in [
            (0, &b""[..]),
            (PIECE - 2, b"\r\n"),
            (PIECE - 1, b"\r\n"),
            (PIECE, b"\r\n"),
            (2 * PIECE - 1, b"x"),
            (PIECE + 1, b""),
        ] {
            let mut m = vec![b'a'; len];
            m.extend_from_slice(ending);
            let message = stored(&m);
            let whole = message.read_all().unwrap();
            let mut pieces = Pieces::new(&message);
            let mut got = Vec::new();
            while let Some(p) = pieces.next_piece().unwrap() {
                assert!(p.len() <= PIECE, "{len}");
                got.extend_from_slice(p);
            }
            let want = whole.strip_suffix(b"\r\n").unwrap_or(&whole);
            assert_eq!(got, want, "{len}");
        }
    }
}
