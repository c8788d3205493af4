//! What an MSA does to a submitted message (RFC 6409 section 8) and the header check of
//! sender binding: every address in From (and Sender) must be the user's.
//!
//! submitd prepends a `Received:` trace header (RFC 5321 4.4, RFC 3848 `ESMTPSA`), and a
//! `Date:` and a `Message-ID:` when the message has none. Everything the client sent is kept
//! byte for byte after the prepended lines.

use mail_parser::{HeaderName, HeaderValue, MessageParser};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

use crate::auth::senders::{SenderPattern, owns};

/// Why the header From check refused a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromProblem {
    /// No From header with an address: `550 5.6.0 Message has no From header`.
    Missing,
    /// An address in From or Sender the user does not own: `553 5.7.1`.
    NotOwned,
}

/// The header section of a message: everything up to and including the empty line, or the
/// whole message when it has no body.
pub fn header_section(message: &[u8]) -> &[u8] {
    match find(message, b"\r\n\r\n") {
        Some(i) => &message[..i + 4],
        None if message.starts_with(b"\r\n") => &message[..2],
        None => message,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Check that the message has a From header and that every address in every From and Sender
/// header is owned by the user (DESIGN.md "Precise points").
pub fn check_from(message: &[u8], senders: &[SenderPattern]) -> Result<(), FromProblem> {
    let headers = header_section(message);
    let parser = MessageParser::new()
        .header_address(HeaderName::From)
        .header_address(HeaderName::Sender);
    let Some(parsed) = parser.parse_headers(headers) else {
        return Err(FromProblem::Missing);
    };
    let mut from_addresses = 0usize;
    for header in parsed.headers() {
        let is_from = match header.name {
            HeaderName::From => true,
            HeaderName::Sender => false,
            _ => continue,
        };
        let addresses: Vec<&str> = match &header.value {
            HeaderValue::Address(address) => address
                .iter()
                .filter_map(|a| a.address.as_deref())
                .collect(),
            _ => Vec::new(),
        };
        if !is_from && addresses.is_empty() {
            // A Sender header we cannot read could hide anything.
            return Err(FromProblem::NotOwned);
        }
        for address in &addresses {
            if !owns(senders, address) {
                return Err(FromProblem::NotOwned);
            }
        }
        if is_from {
            from_addresses += addresses.len();
        }
    }
    if from_addresses == 0 {
        return Err(FromProblem::Missing);
    }
    Ok(())
}

/// What goes into the trace header.
#[derive(Debug, Clone)]
pub struct Trace<'a> {
    /// The client's EHLO/HELO name (validated by the command parser).
    pub helo: &'a str,
    /// The client address, only when `submission.received_client_ip` is on.
    pub client_ip: Option<std::net::IpAddr>,
    pub hostname: &'a str,
    pub queue_id: &'a str,
    /// SMTPUTF8 was used (RFC 6531 3.7.3: `UTF8SMTPSA`).
    pub smtputf8: bool,
    pub now: OffsetDateTime,
}

/// RFC 5322 date-time (`Tue, 24 Nov 2026 13:31:00 +0000`).
pub fn rfc5322_date(t: OffsetDateTime) -> String {
    t.format(&Rfc2822)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".to_string())
}

/// The message as it will be queued: the headers submitd adds, then the submitted bytes.
pub fn prepend_headers(message: &[u8], trace: &Trace<'_>) -> Vec<u8> {
    let date = rfc5322_date(trace.now);
    let protocol = if trace.smtputf8 {
        "UTF8SMTPSA"
    } else {
        "ESMTPSA"
    };
    let from = match trace.client_ip {
        // RFC 5321 4.1.3 address literals: [192.0.2.1], [IPv6:2001:db8::1].
        Some(std::net::IpAddr::V4(ip)) => format!("{} ([{ip}])", trace.helo),
        Some(std::net::IpAddr::V6(ip)) => match ip.to_ipv4_mapped() {
            Some(v4) => format!("{} ([{v4}])", trace.helo),
            None => format!("{} ([IPv6:{ip}])", trace.helo),
        },
        None => trace.helo.to_string(),
    };
    let mut added = format!(
        "Received: from {from} by {host} (submitd) with {protocol} id {id};\r\n\t{date}\r\n",
        host = trace.hostname,
        id = trace.queue_id,
    );
    let headers = header_section(message);
    if !has_header(headers, b"date") {
        added.push_str(&format!("Date: {date}\r\n"));
    }
    if !has_header(headers, b"message-id") {
        added.push_str(&format!(
            "Message-ID: <{}@{}>\r\n",
            trace.queue_id, trace.hostname
        ));
    }
    let mut out = Vec::with_capacity(added.len() + message.len());
    out.extend_from_slice(added.as_bytes());
    out.extend_from_slice(message);
    out
}

/// Whether a header field named `name` (lowercase) starts a line of the header section.
fn has_header(headers: &[u8], name: &[u8]) -> bool {
    headers.split(|&b| b == b'\n').any(|line| {
        line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name)
            && line[name.len()..]
                .iter()
                .find(|b| !matches!(b, b' ' | b'\t'))
                == Some(&b':')
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn alice() -> Vec<SenderPattern> {
        vec![SenderPattern::Address {
            local: "alice".into(),
            domain: "example.test".into(),
        }]
    }

    fn trace() -> Trace<'static> {
        Trace {
            helo: "client.test",
            client_ip: None,
            hostname: "mail.example.test",
            queue_id: "0123456789ABCDEF0123",
            smtputf8: false,
            now: datetime!(2026-11-24 13:31:00 UTC),
        }
    }

    #[test]
    fn prepends_received_date_and_message_id_when_missing() {
        let msg = b"From: alice@example.test\r\nSubject: hi\r\n\r\nbody\r\n";
        let out = prepend_headers(msg, &trace());
        let expected = "Received: from client.test by mail.example.test (submitd) with ESMTPSA id \
                        0123456789ABCDEF0123;\r\n\tTue, 24 Nov 2026 13:31:00 +0000\r\n\
                        Date: Tue, 24 Nov 2026 13:31:00 +0000\r\n\
                        Message-ID: <0123456789ABCDEF0123@mail.example.test>\r\n";
        assert_eq!(String::from_utf8_lossy(&out[..expected.len()]), expected);
        assert_eq!(&out[expected.len()..], msg);
    }

    #[test]
    fn keeps_existing_date_and_message_id() {
        let msg =
            b"DATE : Mon, 1 Jan 2024 00:00:00 +0000\r\nmessage-id: <x@y>\r\nFrom: a@b\r\n\r\n";
        let out = String::from_utf8(prepend_headers(msg, &trace())).unwrap();
        assert_eq!(out.matches("Date:").count(), 0);
        assert!(!out.contains("Message-ID:"));
        // A body line that looks like a header does not count.
        let msg = b"From: a@b\r\n\r\nDate: not a header\r\n";
        let out = String::from_utf8(prepend_headers(msg, &trace())).unwrap();
        assert!(out.contains("\r\nDate: Tue"));
    }

    #[test]
    fn from_check() {
        let ok = b"From: Alice <Alice@EXAMPLE.test>\r\n\r\nx";
        assert_eq!(check_from(ok, &alice()), Ok(()));
        let missing = b"Subject: x\r\n\r\nFrom: alice@example.test\r\n";
        assert_eq!(check_from(missing, &alice()), Err(FromProblem::Missing));
        let foreign = b"From: alice@example.test, mallory@evil.test\r\n\r\n";
        assert_eq!(check_from(foreign, &alice()), Err(FromProblem::NotOwned));
        let second = b"From: alice@example.test\r\nFrom: mallory@evil.test\r\n\r\n";
        assert_eq!(check_from(second, &alice()), Err(FromProblem::NotOwned));
        let sender = b"From: alice@example.test\r\nSender: mallory@evil.test\r\n\r\n";
        assert_eq!(check_from(sender, &alice()), Err(FromProblem::NotOwned));
        let display = b"From: \"alice@example.test\" <mallory@evil.test>\r\n\r\n";
        assert_eq!(check_from(display, &alice()), Err(FromProblem::NotOwned));
        assert_eq!(check_from(b"", &alice()), Err(FromProblem::Missing));
    }
}
