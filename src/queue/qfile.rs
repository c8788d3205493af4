//! The queue file, format version 2: one file per message, `ID.q`, holding the message and
//! every envelope state it went through. Pure byte layout and the search for the current
//! envelope; no IO beyond positioned reads through [`ReadAt`], so it is unit-tested and fuzzed
//! (`fuzz/fuzz_targets/queue_file.rs`) directly.
//!
//! ```text
//! offset 0   header   "SUBMITDQ" + version (u32 LE) + 4 zero octets          16 octets
//! offset 16  content  the message as submitted (CRLF, never a NUL)           content_len
//!            record   envelope JSON                                          len
//!            trailer  "\0SDQREC\n" + record offset (u64 LE) + len (u32 LE)   24 octets
//!                     + CRC-32 of the record (u32 LE)
//!            record, trailer, ...  (one more pair per state change)
//! ```
//!
//! The content is written as it arrives; the first record and trailer follow once the message
//! has ended, and only then is the file fsynced and renamed from `ID.q.tmp` to `ID.q` (the
//! commit). A state change appends one record and its trailer in one write and fsyncs: the
//! current envelope is the one named by the last valid trailer. An append torn by a crash
//! leaves garbage after the last good trailer; [`find_record`] then scans back to it.
//!
//! The trailer starts with a NUL, which neither the content (a NUL in a message is refused
//! before it is stored) nor a JSON record can hold, so no submitted byte can pose as a trailer.

use std::io;

/// What every version 2 queue file starts with.
pub const MAGIC: &[u8; 8] = b"SUBMITDQ";
/// The format version in the header.
pub const VERSION: u32 = 2;
/// Header size: where the content starts.
pub const CONTENT_OFFSET: u64 = 16;
/// Marks a trailer.
pub const TRAILER_MAGIC: &[u8; 8] = b"\0SDQREC\n";
/// Trailer size.
pub const TRAILER_LEN: u64 = 24;
/// The largest envelope record read back: far above any real envelope (a thousand recipients
/// with long replies is a few hundred KiB), small enough to allocate.
pub const MAX_RECORD: u64 = 16 << 20;
/// How far back from the end a torn tail is searched for the last good trailer: one torn
/// append (at most a record and a trailer) plus the good record before it.
const MAX_SCAN: u64 = 2 * (MAX_RECORD + TRAILER_LEN);
/// The block size of the backward scan.
const SCAN_BLOCK: usize = 64 << 10;

/// The 16-octet header of a version 2 queue file.
pub fn header() -> [u8; CONTENT_OFFSET as usize] {
    let mut h = [0u8; CONTENT_OFFSET as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Whether `bytes` (the file's first 16 octets) is a version 2 header.
pub fn is_header(bytes: &[u8]) -> bool {
    bytes.len() >= CONTENT_OFFSET as usize && bytes[..CONTENT_OFFSET as usize] == header()
}

/// A record followed by its trailer, to be written at `offset` (the current end of the file).
pub fn record(offset: u64, json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + TRAILER_LEN as usize);
    out.extend_from_slice(json);
    out.extend_from_slice(TRAILER_MAGIC);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(json).to_le_bytes());
    out
}

/// A whole queue file in memory: header, `content`, one record. For tools that fill a queue
/// without the spool's fsyncs (benchmarks); the server writes through `Spool`.
pub fn whole(content: &[u8], json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CONTENT_OFFSET as usize + content.len() + json.len() + 24);
    out.extend_from_slice(&header());
    out.extend_from_slice(content);
    let at = out.len() as u64;
    out.extend_from_slice(&record(at, json));
    out
}

/// Positioned reads: a queue file, or bytes in memory (tests, the fuzz target).
pub trait ReadAt {
    /// Read exactly `buf.len()` octets at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| short())?;
        let end = start.checked_add(buf.len()).ok_or_else(short)?;
        buf.copy_from_slice(self.get(start..end).ok_or_else(short)?);
        Ok(())
    }
}

fn short() -> io::Error {
    io::Error::from(io::ErrorKind::UnexpectedEof)
}

/// Why no current record was found.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not a version 2 queue file")]
    Header,
    #[error("no valid envelope record")]
    NoRecord,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Where a record is: its offset and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    pub offset: u64,
    pub len: u64,
}

/// The current envelope record of a queue file of `file_len` octets: the one named by the last
/// valid trailer. Returns its location and bytes (CRC checked). Reads the last 24 octets and
/// the record in the common case; after a torn append, scans back at most [`MAX_SCAN`].
pub fn find_record<R: ReadAt + ?Sized>(
    file: &R,
    file_len: u64,
) -> Result<(Located, Vec<u8>), RecordError> {
    let mut head = [0u8; CONTENT_OFFSET as usize];
    if file_len < CONTENT_OFFSET + TRAILER_LEN {
        return Err(RecordError::Header);
    }
    file.read_exact_at(&mut head, 0)?;
    if !is_header(&head) {
        return Err(RecordError::Header);
    }
    if let Some(found) = record_ending_at(file, file_len)? {
        return Ok(found);
    }
    scan_back(file, file_len)
}

/// The record whose trailer ends exactly at `end`, when there is a valid one.
fn record_ending_at<R: ReadAt + ?Sized>(
    file: &R,
    end: u64,
) -> Result<Option<(Located, Vec<u8>)>, RecordError> {
    let Some(at) = end.checked_sub(TRAILER_LEN) else {
        return Ok(None);
    };
    if at < CONTENT_OFFSET {
        return Ok(None);
    }
    let mut t = [0u8; TRAILER_LEN as usize];
    file.read_exact_at(&mut t, at)?;
    if &t[..8] != TRAILER_MAGIC {
        return Ok(None);
    }
    let offset = u64::from_le_bytes(t[8..16].try_into().unwrap_or_default());
    let len = u64::from(u32::from_le_bytes(t[16..20].try_into().unwrap_or_default()));
    let crc = u32::from_le_bytes(t[20..24].try_into().unwrap_or_default());
    if len > MAX_RECORD || offset < CONTENT_OFFSET || offset.checked_add(len) != Some(at) {
        return Ok(None);
    }
    let mut json = vec![0u8; len as usize];
    file.read_exact_at(&mut json, offset)?;
    if crc32fast::hash(&json) != crc {
        return Ok(None);
    }
    Ok(Some((Located { offset, len }, json)))
}

/// After a torn append: the last valid trailer before the end, searched block by block
/// backwards (each block overlapping the next by a trailer, so none is split unseen).
fn scan_back<R: ReadAt + ?Sized>(
    file: &R,
    file_len: u64,
) -> Result<(Located, Vec<u8>), RecordError> {
    let floor = file_len.saturating_sub(MAX_SCAN).max(CONTENT_OFFSET);
    let mut hi = file_len;
    let mut block = vec![0u8; SCAN_BLOCK];
    while hi > floor {
        let lo = hi.saturating_sub(SCAN_BLOCK as u64).max(floor);
        let buf = &mut block[..(hi - lo) as usize];
        file.read_exact_at(buf, lo)?;
        // Candidates from the right: the first valid one is the current record.
        let mut end = buf.len();
        while let Some(i) = memchr::memmem::rfind(&buf[..end], TRAILER_MAGIC) {
            let trailer_end = lo + i as u64 + TRAILER_LEN;
            if trailer_end <= file_len
                && let Some(found) = record_ending_at(file, trailer_end)?
            {
                return Ok(found);
            }
            end = i + TRAILER_MAGIC.len() - 1;
        }
        if lo == floor {
            break;
        }
        hi = lo + TRAILER_LEN;
    }
    Err(RecordError::NoRecord)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: &[u8], records: &[&[u8]]) -> Vec<u8> {
        let mut f = header().to_vec();
        f.extend_from_slice(content);
        for r in records {
            let at = f.len() as u64;
            f.extend_from_slice(&record(at, r));
        }
        f
    }

    fn current(f: &[u8]) -> Result<Vec<u8>, String> {
        find_record(f, f.len() as u64)
            .map(|(_, json)| json)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_last_record_is_current() {
        let f = file(b"Subject: x\r\n\r\nbody\r\n", &[b"{\"a\":1}", b"{\"a\":2}"]);
        assert_eq!(current(&f).unwrap(), b"{\"a\":2}");
        let f = file(b"", &[b"{}"]);
        assert_eq!(current(&f).unwrap(), b"{}");
    }

    #[test]
    fn a_torn_append_falls_back_to_the_previous_record() {
        let good = file(b"hello\r\n", &[b"{\"a\":1}"]);
        let next = record(good.len() as u64, b"{\"a\":2}");
        for cut in 0..next.len() {
            let mut f = good.clone();
            f.extend_from_slice(&next[..cut]);
            assert_eq!(current(&f).unwrap(), b"{\"a\":1}", "cut at {cut}");
        }
        // A flipped bit in the newest record: its CRC fails, the older one is current.
        let mut f = good.clone();
        f.extend_from_slice(&next);
        let at = good.len() + 3;
        f[at] ^= 1;
        assert_eq!(current(&f).unwrap(), b"{\"a\":1}");
    }

    #[test]
    fn a_torn_tail_larger_than_a_block_is_still_searched() {
        let good = file(b"hello\r\n", &[b"{\"a\":1}"]);
        let big = vec![b'x'; 3 * SCAN_BLOCK];
        let mut f = good.clone();
        f.extend_from_slice(&big);
        assert_eq!(current(&f).unwrap(), b"{\"a\":1}");
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        assert!(current(b"").is_err());
        assert!(current(&header()).is_err());
        let mut f = file(b"x", &[]);
        f.extend_from_slice(&[0; 40]);
        assert!(current(&f).is_err());
        let mut wrong = file(b"x", &[b"{}"]);
        wrong[8] = 9;
        assert!(matches!(
            find_record(&wrong[..], wrong.len() as u64),
            Err(RecordError::Header)
        ));
        // A trailer whose record would overlap the header.
        let mut f = header().to_vec();
        f.extend_from_slice(TRAILER_MAGIC);
        f.extend_from_slice(&0u64.to_le_bytes());
        f.extend_from_slice(&16u32.to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        assert!(current(&f).is_err());
    }

    #[test]
    fn content_cannot_pose_as_a_trailer() {
        // Content never holds a NUL, so the trailer magic cannot appear in it; a record
        // after it is found whatever the content says.
        let fake = record(16, b"{\"evil\":1}");
        let content: Vec<u8> = fake
            .iter()
            .map(|&b| if b == 0 { b'0' } else { b })
            .collect();
        let f = file(&content, &[b"{\"a\":1}"]);
        assert_eq!(current(&f).unwrap(), b"{\"a\":1}");
    }
}
