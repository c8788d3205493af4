//! Text from the network, made safe for a log line.
//!
//! A login, a HELO name, an address, a next hop's reply or a DNS name can carry CR, LF, ESC
//! and other control characters. Written raw into the text log (tracing-subscriber's `fmt`
//! writes `%`-formatted values as they are), a CR/LF starts a forged line that log scanners
//! (fail2ban and the like) believe, and an ESC drives the terminal of whoever reads the log.
//! Every value that came from a client or a remote server is logged through [`Escaped`] (text)
//! or [`EscapedBytes`] (bytes), which write control characters as visible escapes:
//! `\n`, `\r`, `\t`, `\\`, and `\x1b` / `\u{85}` / `\u{2028}` for the rest of C0, DEL, C1, and
//! the Unicode line and paragraph separators. The backslash itself is doubled, so an escape in
//! the log always means an escaped character, never one the sender typed.
//!
//! The JSON log format escapes control characters itself; the wrapper is applied there too
//! (one rule for both formats), so a CR in a login shows in JSON as `"\\r"`: the JSON string's
//! value is the same escaped text the text format shows.

use std::fmt::{self, Write as _};

/// A `Display` value (usually a `&str`) written with control characters escaped.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<T>(pub T);

/// Bytes written as text: UTF-8 as [`Escaped`] does, any other byte as `\xNN`.
#[derive(Debug, Clone, Copy)]
pub struct EscapedBytes<'a>(pub &'a [u8]);

/// The escape of `c`, or `None` when it is written as is.
fn escape(c: char, out: &mut impl fmt::Write) -> Option<fmt::Result> {
    Some(match c {
        '\n' => out.write_str("\\n"),
        '\r' => out.write_str("\\r"),
        '\t' => out.write_str("\\t"),
        '\\' => out.write_str("\\\\"),
        '\0'..='\x1f' | '\x7f' => write!(out, "\\x{:02x}", c as u32),
        '\u{80}'..='\u{9f}' | '\u{2028}' | '\u{2029}' => write!(out, "\\u{{{:x}}}", c as u32),
        _ => return None,
    })
}

/// Escapes what passes through it into `inner`.
struct EscapingWriter<'a, 'b> {
    inner: &'a mut fmt::Formatter<'b>,
}

impl fmt::Write for EscapingWriter<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Runs of plain characters in one write.
        let mut plain = 0;
        for (i, c) in s.char_indices() {
            let mut probe = String::new();
            if escape(c, &mut probe).is_some() {
                self.inner.write_str(&s[plain..i])?;
                self.inner.write_str(&probe)?;
                plain = i + c.len_utf8();
            }
        }
        self.inner.write_str(&s[plain..])
    }
}

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(EscapingWriter { inner: f }, "{}", self.0)
    }
}

impl fmt::Display for EscapedBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            Escaped(chunk.valid()).fmt(f)?;
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(s: &str) -> String {
        Escaped(s).to_string()
    }

    #[test]
    fn control_characters_become_visible_escapes() {
        assert_eq!(esc("alice@example.test"), "alice@example.test");
        assert_eq!(esc("a\r\nb"), "a\\r\\nb");
        assert_eq!(esc("\x1b[2J"), "\\x1b[2J");
        assert_eq!(
            esc("\0\x07\x08\t\x0b\x0c\x1f\x7f"),
            "\\x00\\x07\\x08\\t\\x0b\\x0c\\x1f\\x7f"
        );
        assert_eq!(
            esc("\u{85}\u{9b}x\u{2028}\u{2029}"),
            "\\u{85}\\u{9b}x\\u{2028}\\u{2029}"
        );
        // A backslash the sender typed cannot pass for an escape.
        assert_eq!(esc("a\\nb"), "a\\\\nb");
        // Printable non-ASCII stays readable.
        assert_eq!(esc("jürgen@bücher.example ✉"), "jürgen@bücher.example ✉");
        assert_eq!(esc(""), "");
    }

    #[test]
    fn any_display_value_and_bytes() {
        let e = std::io::Error::other("bad\r\n2025-01-01T00:00:00Z WARN forged");
        assert_eq!(
            Escaped(&e).to_string(),
            "bad\\r\\n2025-01-01T00:00:00Z WARN forged"
        );
        assert_eq!(
            EscapedBytes(b"ok\n\xff\xfe\x1b").to_string(),
            "ok\\n\\xff\\xfe\\x1b"
        );
        assert_eq!(EscapedBytes("é".as_bytes()).to_string(), "é");
    }

    #[test]
    fn the_output_never_holds_a_control_character() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let out = esc(&all);
        assert!(
            !out.chars()
                .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}'),
            "{out:?}"
        );
    }
}
