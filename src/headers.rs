//! Where a message's header section ends (RFC 5322 section 2.1): the one definition the
//! submission fixes, DKIM, outbound SMTPUTF8 checks and DSNs share.
//!
//! Only CRLF ends a line here. The session refuses bare CR and bare LF (`550 5.6.0`), so every
//! message that reaches the spool has CRLF line endings, and a lone `\n\n` is not an empty line
//! in RFC 5322 terms: treating it as one would let the parts of the server disagree about
//! which lines are headers.

/// A message split at its header section (byte offsets into the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Split {
    /// End of the last header field, its CRLF included.
    fields_end: usize,
    /// Start of the body: after the empty line, or the end of a message that has none.
    body_start: usize,
}

fn split(message: &[u8]) -> Split {
    // A message that starts with the empty line has no header fields at all; a later CRLFCRLF
    // is in its body.
    if message.starts_with(b"\r\n") {
        return Split {
            fields_end: 0,
            body_start: 2,
        };
    }
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => Split {
            fields_end: i + 2,
            body_start: i + 4,
        },
        // No empty line: the whole message is header fields (RFC 5322 allows no body).
        None => Split {
            fields_end: message.len(),
            body_start: message.len(),
        },
    }
}

/// The header section with the empty line that ends it, or the whole message when it has
/// no empty line.
pub fn header_section(message: &[u8]) -> &[u8] {
    &message[..split(message).body_start]
}

/// The header fields alone: the header section without the empty line.
pub fn header_fields(message: &[u8]) -> &[u8] {
    &message[..split(message).fields_end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_cases() {
        // (message, header section, header fields)
        let cases: &[(&[u8], &[u8], &[u8])] = &[
            (b"A: b\r\n\r\nbody", b"A: b\r\n\r\n", b"A: b\r\n"),
            (
                b"A: b\r\nC: d\r\n\r\n",
                b"A: b\r\nC: d\r\n\r\n",
                b"A: b\r\nC: d\r\n",
            ),
            // No body and no empty line.
            (b"A: b\r\n", b"A: b\r\n", b"A: b\r\n"),
            (b"A: b", b"A: b", b"A: b"),
            (b"", b"", b""),
            // Starting with the empty line: no fields, even with a CRLFCRLF later on.
            (b"\r\nbody", b"\r\n", b""),
            (b"\r\nX: y\r\n\r\nbody", b"\r\n", b""),
            (b"\r\n\r\n", b"\r\n", b""),
            // The first empty line ends the section.
            (b"A: b\r\n\r\nC: d\r\n\r\n", b"A: b\r\n\r\n", b"A: b\r\n"),
            // Folded fields stay in.
            (
                b"A: b\r\n c\r\n\r\nx",
                b"A: b\r\n c\r\n\r\n",
                b"A: b\r\n c\r\n",
            ),
            // A lone LF is not a line ending (the session refuses it anyway).
            (
                b"A: b\n\nC: d\r\n\r\nx",
                b"A: b\n\nC: d\r\n\r\n",
                b"A: b\n\nC: d\r\n",
            ),
            (b"A: b\n\nbody", b"A: b\n\nbody", b"A: b\n\nbody"),
        ];
        for &(message, section, fields) in cases {
            let m = String::from_utf8_lossy(message);
            assert_eq!(header_section(message), section, "section of {m:?}");
            assert_eq!(header_fields(message), fields, "fields of {m:?}");
        }
    }
}
