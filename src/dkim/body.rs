//! Body canonicalization (RFC 6376 sections 3.4.3 "simple" and 3.4.4 "relaxed") and its
//! SHA-256 hash, one chunk at a time, so that a message never has to be whole in memory.
//!
//! Both algorithms only change the end of the body (and, relaxed, whitespace), so the state
//! carried between chunks is small and bounded: how many CRLFs are held back (a count: a
//! body of a million empty lines costs nothing), whether whitespace is held back, and whether
//! the last chunk ended in a CR whose LF may come next. Trailing CRLFs are hashed only once
//! something other than empty lines follows them.
//!
//! Only CRLF ends a line. A bare CR or LF is an ordinary byte here (never whitespace): the
//! session refuses such messages (`crate::headers`), and the rule only has to be the same for
//! every split of the same bytes.
//!
//! Relaxed treats a line of nothing but whitespace as empty, so such lines at the end are
//! dropped like empty ones (RFC 6376 3.4.4 removes trailing whitespace before it removes
//! trailing empty lines; OpenDKIM, Gmail and Microsoft agree). mail-auth 0.13's one-shot
//! canonicalization keeps them: its `bh=` differs from ours for bodies ending that way.

use aws_lc_rs::digest::{self, SHA256};
use mail_auth::dkim::Canonicalization;

/// CRLFs emitted a block at a time when held-back empty lines turn out to be inside the body.
const CRLF_BLOCK: [u8; 128] = {
    let mut block = [b'\n'; 128];
    let mut i = 0;
    while i < block.len() {
        block[i] = b'\r';
        i += 2;
    }
    block
};

/// Canonical output is gathered here so that many short pieces (a word, a CRLF) reach the
/// digest as a few large updates; runs at least this long go to the digest directly.
const OUT_CAP: usize = 8 * 1024;

/// A SHA-256 digest of a canonical body (the `bh=` tag, before base64).
pub type BodyHash = [u8; 32];

/// The canonical form of a body in one canonicalization, hashed as it is produced.
pub struct CanonicalHasher {
    canonicalization: Canonicalization,
    /// CRLFs seen but not hashed: they end the body unless more than empty lines follows.
    held_crlfs: u64,
    /// Relaxed: whitespace since the line's last content byte; one SP if content follows.
    held_wsp: bool,
    /// The last chunk ended in CR: a CRLF or a bare CR, decided by the next byte.
    held_cr: bool,
    /// Relaxed: some content was hashed (a body of blank lines hashes as nothing at all).
    any_content: bool,
    out: Vec<u8>,
    digest: digest::Context,
}

impl std::fmt::Debug for CanonicalHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CanonicalHasher")
            .field("canonicalization", &self.canonicalization)
            .field("held_crlfs", &self.held_crlfs)
            .finish_non_exhaustive()
    }
}

impl CanonicalHasher {
    /// A hasher for an empty body so far.
    pub fn new(canonicalization: Canonicalization) -> CanonicalHasher {
        CanonicalHasher {
            canonicalization,
            held_crlfs: 0,
            held_wsp: false,
            held_cr: false,
            any_content: false,
            out: Vec::with_capacity(OUT_CAP),
            digest: digest::Context::new(&SHA256),
        }
    }

    /// The canonicalization this hasher applies.
    pub fn canonicalization(&self) -> Canonicalization {
        self.canonicalization
    }

    /// The next bytes of the body (after the header section's empty line), split anywhere.
    pub fn update(&mut self, chunk: &[u8]) {
        match self.canonicalization {
            Canonicalization::Simple => self.update_simple(chunk),
            Canonicalization::Relaxed => self.update_relaxed(chunk),
        }
    }

    /// The hash of the canonical body: `bh=`.
    pub fn finish(mut self) -> BodyHash {
        if std::mem::take(&mut self.held_cr) {
            self.content(b"\r");
        }
        // Simple: any run of CRLFs at the end becomes one, and an empty body is one CRLF.
        // Relaxed: the same, except that an empty body stays empty (RFC 6376 erratum 3133).
        if self.canonicalization == Canonicalization::Simple || self.any_content {
            self.emit(b"\r\n");
        }
        self.digest.update(&self.out);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(self.digest.finish().as_ref());
        hash
    }

    fn emit(&mut self, bytes: &[u8]) {
        if self.out.len() + bytes.len() > OUT_CAP {
            self.digest.update(&self.out);
            self.out.clear();
            if bytes.len() >= OUT_CAP {
                self.digest.update(bytes);
                return;
            }
        }
        self.out.extend_from_slice(bytes);
    }

    /// Content that is not whitespace: what was held back before it is part of the body.
    fn content(&mut self, run: &[u8]) {
        while self.held_crlfs > 0 {
            let n = self.held_crlfs.min(CRLF_BLOCK.len() as u64 / 2);
            self.emit(&CRLF_BLOCK[..2 * n as usize]);
            self.held_crlfs -= n;
        }
        if std::mem::take(&mut self.held_wsp) {
            self.emit(b" ");
        }
        self.emit(run);
        self.any_content = true;
    }

    /// A CRLF: whitespace before it is dropped (relaxed), the CRLF itself held back.
    fn line_end(&mut self) {
        self.held_wsp = false;
        self.held_crlfs += 1;
    }

    /// A chunk that starts with the LF of a held CR; false when the chunk is empty.
    fn resolve_cr(&mut self, chunk: &[u8]) -> Option<usize> {
        if !self.held_cr {
            return Some(0);
        }
        let first = *chunk.first()?;
        self.held_cr = false;
        if first == b'\n' {
            self.line_end();
            Some(1)
        } else {
            self.content(b"\r");
            Some(0)
        }
    }

    /// Simple changes nothing but the end: all but the chunk's trailing CRLFs (and a last
    /// CR) is hashed as it is, in one piece.
    fn update_simple(&mut self, chunk: &[u8]) {
        let Some(start) = self.resolve_cr(chunk) else {
            return;
        };
        let chunk = &chunk[start..];
        let mut end = chunk.len();
        let cr = chunk.last() == Some(&b'\r');
        if cr {
            end -= 1;
        }
        let mut crlfs = 0;
        while chunk[..end].ends_with(b"\r\n") {
            end -= 2;
            crlfs += 1;
        }
        if end > 0 {
            self.content(&chunk[..end]);
        }
        self.held_crlfs += crlfs;
        self.held_cr = cr;
    }

    /// Relaxed: stops only at SP, HTAB and CR (memchr); what is canonical already stays in
    /// one run, so a chunk of ordinary text reaches the digest in one piece.
    fn update_relaxed(&mut self, chunk: &[u8]) {
        let Some(start) = self.resolve_cr(chunk) else {
            return;
        };
        // Content from `run` on is not hashed yet; bytes before `next` are dealt with.
        let mut run = start;
        let mut next = start;
        for at in memchr::memchr3_iter(b' ', b'\t', b'\r', chunk) {
            if at < next {
                continue;
            }
            let byte = chunk[at];
            let after = chunk.get(at + 1).copied();
            let content_at = |i: usize| {
                chunk
                    .get(i)
                    .is_some_and(|b| !matches!(b, b' ' | b'\t' | b'\r'))
            };
            // Inside a run, a single SP before content and a CRLF before content (the line
            // before it had no trailing whitespace) are canonical already: the run goes on.
            if at > run
                && (byte == b' ' && content_at(at + 1)
                    || byte == b'\r' && after == Some(b'\n') && content_at(at + 2))
            {
                continue;
            }
            if at > run {
                self.content(&chunk[run..at]);
            }
            next = at + 1;
            run = next;
            match (byte, after) {
                (b'\r', Some(b'\n')) => {
                    self.line_end();
                    next = at + 2;
                    run = next;
                }
                // A bare CR is content: it starts the next run.
                (b'\r', Some(_)) => run = at,
                (b'\r', None) => self.held_cr = true,
                _ => self.held_wsp = true,
            }
        }
        if chunk.len() > run {
            self.content(&chunk[run..]);
        }
    }
}

/// The body hashes a set of keys needs: one per distinct body canonicalization.
#[derive(Debug)]
pub struct BodyLanes(Vec<CanonicalHasher>);

impl BodyLanes {
    /// One hasher per distinct canonicalization in `wanted`.
    pub fn new(wanted: impl IntoIterator<Item = Canonicalization>) -> BodyLanes {
        let mut lanes: Vec<CanonicalHasher> = Vec::new();
        for c in wanted {
            if !lanes.iter().any(|l| l.canonicalization == c) {
                lanes.push(CanonicalHasher::new(c));
            }
        }
        BodyLanes(lanes)
    }

    /// The next body bytes, for every canonicalization.
    pub fn update(&mut self, chunk: &[u8]) {
        for lane in &mut self.0 {
            lane.update(chunk);
        }
    }

    /// Each canonicalization with its body hash.
    pub fn finish(self) -> Vec<(Canonicalization, BodyHash)> {
        self.0
            .into_iter()
            .map(|lane| (lane.canonicalization, lane.finish()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_auth::common::crypto::{HashContext as _, HashImpl as _, Sha256};
    use mail_auth::common::headers::Writable as _;
    use proptest::prelude::*;

    /// RFC 6376 3.4.3/3.4.4 read literally, on the whole body: lines, then whitespace, then
    /// trailing empty lines.
    fn reference(body: &[u8], c: Canonicalization) -> Vec<u8> {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut rest = body;
        while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
            lines.push(rest[..i].to_vec());
            rest = &rest[i + 2..];
        }
        if !rest.is_empty() {
            lines.push(rest.to_vec());
        }
        if c == Canonicalization::Relaxed {
            for line in &mut lines {
                let mut out = Vec::new();
                let mut wsp = false;
                for &b in line.iter() {
                    if b == b' ' || b == b'\t' {
                        wsp = true;
                        continue;
                    }
                    if wsp {
                        out.push(b' ');
                        wsp = false;
                    }
                    out.push(b);
                }
                *line = out;
            }
        }
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        if lines.is_empty() && c == Canonicalization::Simple {
            return b"\r\n".to_vec();
        }
        lines
            .iter()
            .flat_map(|l| [&l[..], b"\r\n"].concat())
            .collect()
    }

    fn sha256(bytes: &[u8]) -> BodyHash {
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest::digest(&SHA256, bytes).as_ref());
        hash
    }

    fn streamed(body: &[u8], c: Canonicalization, splits: &[usize]) -> BodyHash {
        let mut hasher = CanonicalHasher::new(c);
        let mut at = 0;
        for &s in splits {
            let s = s.clamp(at, body.len());
            hasher.update(&body[at..s]);
            at = s;
        }
        hasher.update(&body[at..]);
        hasher.finish()
    }

    /// mail-auth 0.13's one-shot body hash (what the old signing path put in `bh=`).
    fn mail_auth_hash(body: &[u8], c: Canonicalization) -> BodyHash {
        let mut hasher = Sha256::hasher();
        c.canonical_body(body, 0).write(&mut hasher);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(hasher.complete().as_ref());
        hash
    }

    /// Where mail-auth 0.13 keeps whitespace-only lines (or a whitespace-only body) that
    /// RFC 6376 3.4.4 drops: the last line before the trailing CRLFs is all WSP.
    fn ends_in_blank_line(body: &[u8]) -> bool {
        let mut end = body.len();
        while body[..end].ends_with(b"\r\n") {
            end -= 2;
        }
        let start = body[..end]
            .windows(2)
            .rposition(|w| w == b"\r\n")
            .map_or(0, |i| i + 2);
        end > start && body[start..end].iter().all(|b| matches!(b, b' ' | b'\t'))
    }

    const BOTH: [Canonicalization; 2] = [Canonicalization::Simple, Canonicalization::Relaxed];

    #[test]
    fn known_bodies() {
        let relaxed = Canonicalization::Relaxed;
        let simple = Canonicalization::Simple;
        let cases: &[(&[u8], &[u8], &[u8])] = &[
            // (body, simple, relaxed)
            (b"", b"\r\n", b""),
            (b"\r\n", b"\r\n", b""),
            (b"\r\n\r\n\r\n", b"\r\n", b""),
            (b" \t \r\n\t\r\n", b" \t \r\n\t\r\n", b""),
            (b"  ", b"  \r\n", b""),
            (b"abc", b"abc\r\n", b"abc\r\n"),
            // RFC 6376 3.4.5's example.
            (
                b" C \r\nD \t E\r\n\r\n\r\n",
                b" C \r\nD \t E\r\n",
                b" C\r\nD E\r\n",
            ),
            (b"a \r\n  \r\n\r\n", b"a \r\n  \r\n", b"a\r\n"),
            (
                b"a\r\n \r\nb\t\t\r\n",
                b"a\r\n \r\nb\t\t\r\n",
                b"a\r\n\r\nb\r\n",
            ),
            (b"\tx", b"\tx\r\n", b" x\r\n"),
            // Bare CR and LF are content, never line ends or whitespace.
            (b"a \r b\n", b"a \r b\n\r\n", b"a \r b\n\r\n"),
            (b"a\r", b"a\r\r\n", b"a\r\r\n"),
        ];
        for &(body, want_simple, want_relaxed) in cases {
            for (c, want) in [(simple, want_simple), (relaxed, want_relaxed)] {
                assert_eq!(reference(body, c), want, "{c:?} {body:?}");
                for split in 0..=body.len() {
                    assert_eq!(streamed(body, c, &[split]), sha256(want), "{c:?} {body:?}");
                }
                let bytes: Vec<usize> = (0..body.len()).collect();
                assert_eq!(streamed(body, c, &bytes), sha256(want), "{c:?} {body:?}");
            }
        }
        // Empty-body hashes of RFC 6376 3.4.3 and erratum 3133, as verifiers know them.
        use base64::Engine as _;
        let b64 = |h: BodyHash| base64::engine::general_purpose::STANDARD.encode(h);
        assert_eq!(
            b64(streamed(b"", relaxed, &[])),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        assert_eq!(
            b64(streamed(b"", simple, &[])),
            "frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY="
        );
    }

    #[test]
    fn mail_auth_keeps_trailing_blank_lines_that_the_rfc_drops() {
        let body = b"Hello\r\n  \r\n\r\n";
        let relaxed = Canonicalization::Relaxed;
        assert_eq!(streamed(body, relaxed, &[]), sha256(b"Hello\r\n"));
        assert_ne!(mail_auth_hash(body, relaxed), sha256(b"Hello\r\n"));
    }

    #[test]
    fn long_runs_cost_a_count_not_memory() {
        let mut hasher = CanonicalHasher::new(Canonicalization::Relaxed);
        hasher.update(b"x");
        for _ in 0..10_000 {
            hasher.update(&[b'\r', b'\n', b' ', b'\t'].repeat(64));
        }
        assert!(
            hasher.out.capacity() <= OUT_CAP,
            "{}",
            hasher.out.capacity()
        );
        hasher.update(b"y");
        let mut want = b"x".to_vec();
        want.extend_from_slice(&b"\r\n".repeat(640_000));
        // The last line's " \t" comes before content: one SP.
        want.extend_from_slice(b" y\r\n");
        assert_eq!(hasher.finish(), sha256(&want));
    }

    fn tricky_body() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(&b"a"[..]),
            Just(&b" "[..]),
            Just(&b"\t"[..]),
            Just(&b"\r\n"[..]),
        ];
        proptest::collection::vec(piece, 0..64).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn any_split_hashes_like_the_whole(
            body in tricky_body(),
            mut splits in proptest::collection::vec(0usize..140, 0..8),
        ) {
            splits.sort_unstable();
            for c in BOTH {
                let want = sha256(&reference(&body, c));
                prop_assert_eq!(streamed(&body, c, &splits), want);
                prop_assert_eq!(streamed(&body, c, &[]), want);
                if c == Canonicalization::Simple || !ends_in_blank_line(&body) {
                    prop_assert_eq!(mail_auth_hash(&body, c), want);
                }
            }
        }

        #[test]
        fn bare_cr_and_lf_split_anywhere_agree(
            body in proptest::collection::vec(
                prop_oneof![Just(b'a'), Just(b' '), Just(b'\t'), Just(b'\r'), Just(b'\n')],
                0..48,
            ),
            mut splits in proptest::collection::vec(0usize..48, 0..8),
        ) {
            splits.sort_unstable();
            for c in BOTH {
                let want = sha256(&reference(&body, c));
                prop_assert_eq!(streamed(&body, c, &splits), want);
            }
        }
    }
}
