//! What an MSA does to a submitted message (RFC 6409 section 8) and the header check of
//! sender binding: every address in From (and Sender) must be the user's.
//!
//! submitd prepends a `Received:` trace header (RFC 5321 4.4, RFC 3848 `ESMTPSA`), and a
//! `Date:` and a `Message-ID:` when the message has none. Everything the client sent is kept
//! byte for byte after the prepended lines.

use mail_parser::{Address, HeaderName, HeaderValue, MessageParser};
use time::OffsetDateTime;

use crate::auth::senders::{SenderPattern, owns};
pub use crate::clock::rfc5322_date;
pub use crate::headers::header_section;

/// Why the header From check refused a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromProblem {
    /// No From header with an address: `550 5.6.0 Message has no From header`.
    Missing,
    /// An address in From or Sender the user does not own: `553 5.7.1`.
    NotOwned,
    /// Group syntax (`name: members;`) in From or Sender, which RFC 5322 section 3.6.2 does
    /// not allow there (`553 5.7.1`). Refused whatever the members: parsers disagree about
    /// what a group's display name is, and some turn a mailbox written before the colon into it.
    Group,
}

/// What the From check established: the domain of the first From address, the one DKIM signs
/// for (lowercase, IDNA `xn--` form). `None` when the domain has no ASCII form (nothing signs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedFrom {
    pub domain: Option<String>,
}

/// Check that the message has a From header and that every address in every From and Sender
/// header is owned by the user (DESIGN.md "Precise points").
///
/// Two views are checked, and both must pass:
/// - the raw field text, unfolded: no group syntax (a `:` or `;` outside quoted strings,
///   comments and domain literals), and every `local@domain` written anywhere in it, display
///   names and comments included, is owned;
/// - mail-parser's result: no group, every parsed address owned, and every decoded display
///   name free of addresses the user does not own (an RFC 2047 encoded word can hide one).
pub fn check_from(message: &[u8], senders: &[SenderPattern]) -> Result<CheckedFrom, FromProblem> {
    let headers = header_section(message);
    for (_, value) in sender_fields(headers) {
        let value = String::from_utf8_lossy(&value);
        if has_group_syntax(&value) {
            return Err(FromProblem::Group);
        }
        if !written_addresses_owned(&value, senders) {
            return Err(FromProblem::NotOwned);
        }
    }
    let parser = MessageParser::new()
        .header_address(HeaderName::From)
        .header_address(HeaderName::Sender);
    let Some(parsed) = parser.parse_headers(headers) else {
        return Err(FromProblem::Missing);
    };
    let mut first_from: Option<String> = None;
    for header in parsed.headers() {
        let is_from = match header.name {
            HeaderName::From => true,
            HeaderName::Sender => false,
            _ => continue,
        };
        let mut addresses: Vec<&str> = Vec::new();
        if let HeaderValue::Address(address) = &header.value {
            if matches!(address, Address::Group(_)) {
                return Err(FromProblem::Group);
            }
            for addr in address.iter() {
                if let Some(name) = addr.name.as_deref()
                    && !written_addresses_owned(name, senders)
                {
                    return Err(FromProblem::NotOwned);
                }
                if let Some(a) = addr.address.as_deref() {
                    addresses.push(a);
                }
            }
        }
        if !is_from && addresses.is_empty() {
            // A Sender header we cannot read could hide anything.
            return Err(FromProblem::NotOwned);
        }
        for address in &addresses {
            if !owns(senders, address) {
                return Err(FromProblem::NotOwned);
            }
        }
        if is_from && first_from.is_none() {
            first_from = addresses.first().map(|a| a.to_string());
        }
    }
    let Some(first) = first_from else {
        return Err(FromProblem::Missing);
    };
    Ok(CheckedFrom {
        domain: ascii_domain(&first),
    })
}

/// The domain of an address, lowercase ASCII (`xn--` form), one trailing dot removed.
fn ascii_domain(address: &str) -> Option<String> {
    let (_, domain) = address.rsplit_once('@')?;
    let domain = domain.trim().trim_end_matches('.');
    idna::domain_to_ascii(domain)
        .ok()
        .map(|d| d.to_ascii_lowercase())
}

/// The From and Sender fields of a header section, unfolded (CRLF before WSP removed), as
/// (is_from, value). Field names compare case-insensitively; WSP before the colon is allowed
/// (RFC 5322 section 4.5.3, obsolete syntax), as parsers accept it.
fn sender_fields(headers: &[u8]) -> Vec<(bool, Vec<u8>)> {
    let mut fields: Vec<(bool, Vec<u8>)> = Vec::new();
    let mut current: Option<(bool, Vec<u8>)> = None;
    for line in headers.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if matches!(line.first(), Some(b' ' | b'\t')) {
            if let Some((_, value)) = current.as_mut() {
                value.extend_from_slice(line);
            }
            continue;
        }
        fields.extend(current.take());
        let Some((name, value)) = split_field(line) else {
            continue;
        };
        let is_from = name.eq_ignore_ascii_case(b"from");
        if is_from || name.eq_ignore_ascii_case(b"sender") {
            current = Some((is_from, value.to_vec()));
        }
    }
    fields.extend(current);
    fields
}

/// Whether a From or Sender value uses group syntax: a `:` or `;` outside quoted strings,
/// comments and domain literals. (Inside angle brackets a `:` would be an obsolete route,
/// RFC 5322 section 4.4, never to be generated: refused too.)
fn has_group_syntax(value: &str) -> bool {
    let mut quoted = false;
    let mut comment = 0usize;
    let mut literal = false;
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted || comment > 0 || literal => escaped = true,
            '"' if comment == 0 && !literal => quoted = !quoted,
            '(' if !quoted && !literal => comment += 1,
            ')' if !quoted && !literal && comment > 0 => comment -= 1,
            '[' if !quoted && comment == 0 => literal = true,
            ']' if literal => literal = false,
            ':' | ';' if !quoted && comment == 0 && !literal => return true,
            _ => {}
        }
    }
    false
}

/// Characters that end an address token written in header text.
fn ends_token(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(
            c,
            '<' | '>' | '(' | ')' | ',' | ';' | ':' | '"' | '\\' | '@' | '[' | ']'
        )
}

/// Whether every `local@domain` written in `text` (a raw field value or a decoded display
/// name) is owned. An `@` with nothing on either side is not an address (`Alice @ home`); one
/// with a side missing, or anything else malformed, is never owned.
fn written_addresses_owned(text: &str, senders: &[SenderPattern]) -> bool {
    let chars: Vec<char> = text.chars().collect();
    for (at, _) in chars.iter().enumerate().filter(|(_, c)| **c == '@') {
        let right: String = if chars.get(at + 1) == Some(&'[') {
            let end = chars[at + 1..]
                .iter()
                .position(|&c| c == ']')
                .map_or(chars.len(), |p| at + 1 + p + 1);
            chars[at + 1..end].iter().collect()
        } else {
            chars[at + 1..]
                .iter()
                .take_while(|&&c| !ends_token(c))
                .collect()
        };
        let left: String = if at > 0 && chars[at - 1] == '"' {
            quoted_before(&chars[..at])
        } else {
            let start = chars[..at]
                .iter()
                .rposition(|&c| ends_token(c))
                .map_or(0, |p| p + 1);
            chars[start..at].iter().collect()
        };
        if left.is_empty() && right.is_empty() {
            continue;
        }
        if !owns(senders, &format!("{left}@{right}")) {
            return false;
        }
    }
    true
}

/// The quoted string that ends `chars` (which ends with `"`), quotes included; the whole
/// prefix when its opening quote is missing.
fn quoted_before(chars: &[char]) -> String {
    let mut i = chars.len() - 1;
    while i > 0 {
        i -= 1;
        let escaped = chars[..i].iter().rev().take_while(|&&c| c == '\\').count() % 2 == 1;
        if chars[i] == '"' && !escaped {
            return chars[i..].iter().collect();
        }
    }
    chars.iter().collect()
}

/// How many trace fields (`Received:`) the header section holds: the hop count that
/// `limits.max_hops` bounds (RFC 5321 section 6.3, Postfix's `hopcount_limit`).
pub fn hop_count(headers: &[u8]) -> usize {
    field_names(headers)
        .filter(|name| name.eq_ignore_ascii_case(b"received"))
        .count()
}

/// A line that starts a header field: its name (WSP before the colon dropped, RFC 5322
/// section 4.5.3 obsolete syntax) and the value after the colon. `None` for a continuation
/// line (it starts with WSP) or a line without a colon.
fn split_field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return None;
    }
    let colon = line.iter().position(|&b| b == b':')?;
    let name = &line[..colon];
    let end = name.len()
        - name
            .iter()
            .rev()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count();
    Some((&name[..end], &line[colon + 1..]))
}

/// The names of the fields of a header section, in order.
fn field_names(headers: &[u8]) -> impl Iterator<Item = &[u8]> {
    headers
        .split(|&b| b == b'\n')
        .filter_map(|line| split_field(line).map(|(name, _)| name))
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
    /// Submitted over the HTTP API: `via HTTP with HTTPSA` (the client has no HELO name).
    pub http: bool,
}

/// The message as it will be queued: the headers submitd adds, then the submitted bytes.
pub fn prepend_headers(message: &[u8], trace: &Trace<'_>) -> Vec<u8> {
    let added = trace_headers(header_section(message), trace);
    let mut out = Vec::with_capacity(added.len() + message.len());
    out.extend_from_slice(added.as_bytes());
    out.extend_from_slice(message);
    out
}

/// The header fields [`prepend_headers`] puts in front of a message whose header section is
/// `headers`: `Received:`, then `Date:` and `Message-ID:` when the message has none.
pub fn trace_headers(headers: &[u8], trace: &Trace<'_>) -> String {
    let date = rfc5322_date(trace.now);
    let protocol = match (trace.http, trace.smtputf8) {
        (true, _) => "HTTPSA",
        (false, true) => "UTF8SMTPSA",
        (false, false) => "ESMTPSA",
    };
    let via = if trace.http { " via HTTP" } else { "" };
    // RFC 5321 4.1.3 address literals: [192.0.2.1], [IPv6:2001:db8::1].
    let literal = trace.client_ip.map(|ip| match ip {
        std::net::IpAddr::V4(ip) => format!("[{ip}]"),
        std::net::IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => format!("[{v4}]"),
            None => format!("[IPv6:{ip}]"),
        },
    });
    let from = match literal {
        // An HTTP client has no HELO name: the address literal stands alone.
        Some(literal) if trace.http => literal,
        Some(literal) => format!("{} ({literal})", trace.helo),
        None => trace.helo.to_string(),
    };
    let mut added = format!(
        "Received: from {from} by {host} (submitd){via} with {protocol} id {id};\r\n\t{date}\r\n",
        host = trace.hostname,
        id = trace.queue_id,
    );
    if !has_header(headers, b"date") {
        added.push_str(&format!("Date: {date}\r\n"));
    }
    if !has_header(headers, b"message-id") {
        added.push_str(&format!(
            "Message-ID: <{}@{}>\r\n",
            trace.queue_id, trace.hostname
        ));
    }
    added
}

/// Whether a header field named `name` (lowercase) starts a line of the header section.
fn has_header(headers: &[u8], name: &[u8]) -> bool {
    field_names(headers).any(|n| n.eq_ignore_ascii_case(name))
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
            http: false,
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

    fn ok(domain: &str) -> Result<CheckedFrom, FromProblem> {
        Ok(CheckedFrom {
            domain: Some(domain.to_string()),
        })
    }

    fn domain_owner() -> Vec<SenderPattern> {
        vec![SenderPattern::Domain("example.test".into())]
    }

    #[test]
    fn from_check() {
        let ok_msg = b"From: Alice <Alice@EXAMPLE.test>\r\n\r\nx";
        assert_eq!(check_from(ok_msg, &alice()), ok("example.test"));
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

    #[test]
    fn legitimate_from_forms_pass() {
        for value in [
            "alice@example.test",
            "Alice <alice@example.test>",
            "\"Smith, Alice\" <alice@example.test>",
            "\"Alice (work)\" <alice@example.test>",
            "alice@example.test (Alice)",
            "Alice @ home <alice@example.test>",
            "=?utf-8?q?Al=C3=AFce?= <alice@example.test>",
            // Not `"alice"@example.test`: mail-parser 0.11 reads it as the name "alice" and the
            // address "@example.test", which is refused (safe, and as before).
            "Alice\r\n <alice@example.test>",
            "\"alice@example.test\" <alice@example.test>",
        ] {
            let msg = format!("From: {value}\r\nSubject: x\r\n\r\nbody\r\n");
            assert_eq!(
                check_from(msg.as_bytes(), &alice()),
                ok("example.test"),
                "{value}"
            );
        }
        let idn = "From: alice@B\u{fc}cher.example\r\n\r\n";
        let owner = vec![SenderPattern::Domain("b\u{fc}cher.example".into())];
        assert_eq!(
            check_from(idn.as_bytes(), &owner),
            ok("xn--bcher-kva.example")
        );
    }

    /// The review's reproductions: group syntax puts a foreign mailbox where parsers disagree
    /// about what it is (mail-parser 0.11 turns it into the group's name).
    #[test]
    fn group_syntax_in_from_or_sender_is_refused() {
        let cases: &[&[u8]] = &[
            b"From: Mallory <mallory@evil.test>: alice@example.test;\r\n\r\nx",
            b"From: alice@example.test\r\nSender: Mallory <mallory@evil.test>: alice@example.test;\r\n\r\nx",
            b"From: mallory@evil.test: alice@example.test;\r\n\r\nx",
            b"From: alice@example.test\r\nFrom: Mallory <mallory@evil.test>:;\r\n\r\nx",
            b"From: Friends: alice@example.test;\r\n\r\nx",
            b"From: undisclosed-recipients:;\r\n\r\nx",
            b"From: Team:\r\n alice@example.test;\r\n\r\nx",
            b"FROM : Friends: alice@example.test;\r\n\r\nx",
            b"From: <@evil.test:alice@example.test>\r\n\r\nx",
        ];
        for case in cases {
            let got = check_from(case, &domain_owner());
            assert!(
                matches!(got, Err(FromProblem::Group | FromProblem::NotOwned)),
                "{}: {got:?}",
                String::from_utf8_lossy(case)
            );
        }
        // Inside quotes, comments and domain literals a colon is just text.
        for value in [
            "\"Re: Alice\" <alice@example.test>",
            "alice@example.test (note: work)",
        ] {
            let msg = format!("From: {value}\r\n\r\nx");
            assert_eq!(
                check_from(msg.as_bytes(), &domain_owner()),
                ok("example.test")
            );
        }
    }

    #[test]
    fn addresses_hidden_in_names_and_comments_are_checked() {
        for value in [
            "mallory@evil.test <alice@example.test>",
            "\"mallory@evil.test\" <alice@example.test>",
            "alice@example.test (mallory@evil.test)",
            "=?utf-8?q?mallory=40evil.test?= <alice@example.test>",
            "=?utf-8?b?bWFsbG9yeUBldmlsLnRlc3Q=?= <alice@example.test>",
            "\"mallory\"@evil.test",
        ] {
            let msg = format!("From: {value}\r\n\r\nx");
            assert_eq!(
                check_from(msg.as_bytes(), &domain_owner()),
                Err(FromProblem::NotOwned),
                "{value}"
            );
        }
    }

    #[test]
    fn hops_are_received_fields_of_the_header_section() {
        let msg = b"Received: a\r\nreceived : b\r\n\tReceived: folded\r\nX-Received: c\r\n\r\nReceived: body\r\n";
        assert_eq!(hop_count(header_section(msg)), 2);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// Text around the foreign address: whatever a forger might try.
        fn fragment() -> impl Strategy<Value = String> {
            prop_oneof![
                Just(String::new()),
                Just("alice@example.test".to_string()),
                Just("<alice@example.test>".to_string()),
                Just("Alice ".to_string()),
                Just("\"".to_string()),
                Just("(".to_string()),
                Just(")".to_string()),
                Just("<".to_string()),
                Just(">".to_string()),
                Just(":".to_string()),
                Just(";".to_string()),
                Just(",".to_string()),
                Just(" ".to_string()),
                Just("\\".to_string()),
                Just("\r\n ".to_string()),
                Just("=?utf-8?q?x?=".to_string()),
                "[ -~]{0,6}",
            ]
        }

        /// A foreign address as it might be written.
        fn foreign() -> impl Strategy<Value = String> {
            let local = "[a-z][a-z0-9.+_-]{0,8}";
            let domain = "[a-z][a-z0-9-]{0,8}\\.(test|net|example)";
            (local, domain, 0..4usize)
                .prop_filter("not the owned domain", |(_, d, _)| d != "example.test")
                .prop_map(|(l, d, form)| match form {
                    0 => format!("{l}@{d}"),
                    1 => format!("<{l}@{d}>"),
                    2 => format!("\"{l}\"@{d}"),
                    _ => format!("{l}@{}", d.to_uppercase()),
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            /// Any From or Sender value in which an address the user does not own appears is
            /// refused, whatever surrounds it.
            #[test]
            fn a_foreign_address_anywhere_is_refused(
                before in proptest::collection::vec(fragment(), 0..4),
                address in foreign(),
                after in proptest::collection::vec(fragment(), 0..4),
                in_sender in any::<bool>(),
            ) {
                let value = format!("{}{address}{}", before.concat(), after.concat());
                let msg = if in_sender {
                    format!("From: alice@example.test\r\nSender: {value}\r\n\r\nbody\r\n")
                } else {
                    format!("From: {value}\r\nSubject: x\r\n\r\nbody\r\n")
                };
                let got = check_from(msg.as_bytes(), &domain_owner());
                prop_assert!(got.is_err(), "{msg:?} -> {got:?}");
            }
        }
    }
}
