//! Delivery status notifications (RFC 3464, multipart/report RFC 6522): failures, and with
//! the DSN extension (RFC 3461) delays, relays and deliveries too, one report per message and
//! kind ([`Action`]).
//!
//! The DSN is built from text we do not control (remote replies, the original headers, the
//! addresses), so every piece goes through one of the sanitizers here: control characters
//! become spaces (no header or field injection through a reply), fields are folded at spaces
//! (RFC 5322 2.2.3) and bounded, and no line exceeds 998 octets (RFC 5322 2.1.1). The result
//! has CRLF line endings only.
//!
//! The result is 7-bit unless an address, a reply or the original headers are not ASCII; a
//! caller sending it should pass 8BITMIME (and SMTPUTF8 for a non-ASCII recipient) in that case.
//! [`queue`] stores it as a message of its own, from `<>`, which the scheduler then delivers.

use std::fmt::Write as _;
use std::io;

use super::id::QueueId;
use super::spool::{Envelope, Spool, SpoolError, StoredMessage};
use crate::clock::rfc5322_date;
use crate::dsn::{self, Ret};
use crate::headers::header_fields;

/// What a DSN reports of its recipients (RFC 3464 section 2.3.3, `Action:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    /// Could not be delivered, permanently or after `queue.max_age`.
    #[default]
    Failed,
    /// Still trying (`queue.delay_warning`).
    Delayed,
    /// Handed to a next hop that does not offer DSN, for a NOTIFY=SUCCESS recipient.
    Relayed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Relayed => "relayed",
        }
    }
}

/// One recipient the DSN reports on (the name is from when DSNs reported failures only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FailedRecipient {
    pub address: String,
    /// RFC 3463 status, e.g. `5.1.1`, `4.4.7` (expired), `5.1.10` (null MX).
    pub status: String,
    /// The remote reply or our own reason, for `Diagnostic-Code: smtp; ...`.
    pub diagnostic: String,
    /// The host that gave the reply, for `Remote-MTA: dns; ...`, when there was one.
    pub remote_mta: Option<String>,
    /// What the report says happened; every recipient of one DSN has the same.
    pub action: Action,
    /// The recipient's `ORCPT=` as submitted (`addr-type;xtext`), for `Original-Recipient`.
    pub orcpt: Option<String>,
}

/// The status of a message that stayed in the queue longer than `queue.max_age`.
pub const EXPIRED: &str = "4.4.7";

/// The `user` recorded on bounces.
pub const MAILER_DAEMON: &str = "MAILER-DAEMON";

/// Build the DSN for `failed` recipients of the message `id` (envelope `env`, which must not be
/// from `<>`) and store it durably as a new message from `<>` to `env.sender`; its ID.
pub fn queue(
    spool: &Spool,
    hostname: &str,
    id: &QueueId,
    env: &Envelope,
    failed: &[FailedRecipient],
    now: u64,
) -> Result<QueueId, SpoolError> {
    let (_, original) = spool.open_message(id)?;
    let action = failed.first().map(|r| r.action).unwrap_or_default();
    let returned = returned(&original, env, action).map_err(|source| SpoolError::Io {
        path: spool.path(id),
        step: "read",
        source,
    })?;
    let dsn = build_report(
        hostname,
        env,
        &returned,
        failed,
        time::OffsetDateTime::now_utc(),
    );
    let bounce_id = QueueId::generate();
    let mut bounce = Envelope::new(
        &bounce_id,
        MAILER_DAEMON,
        "",
        std::slice::from_ref(&env.sender),
        hostname,
        now,
    );
    // A DSN carrying non-ASCII text needs 8BITMIME (and SMTPUTF8 for a non-ASCII address) at
    // the next hop.
    bounce.smtputf8 = !env.sender.is_ascii() || !dsn.is_ascii();
    bounce.eight_bit = !dsn.is_ascii();
    // A report on a REQUIRETLS message travels under REQUIRETLS too (RFC 8689 section 5).
    bounce.requiretls = env.requiretls;
    bounce.size = dsn.len() as u64;
    spool.store_blocking(&bounce, &dsn)?;
    Ok(bounce_id)
}

/// The most of the original's header section read for a DSN: twice the default
/// `limits.max_header_size`, room for the fields submitd adds in front. A longer section is
/// quoted up to its last complete line within this.
const MAX_ORIGINAL_HEADERS: usize = 512 << 10;
/// The step in which the header section is read.
const HEADER_READ: usize = 64 << 10;
/// The largest message a `RET=FULL` report returns whole (Postfix's `bounce_size_limit` is
/// smaller; a megabyte keeps a typical text message and stays cheap to store twice).
pub const MAX_RETURNED: u64 = 1 << 20;

/// What a report carries of the original message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Returned {
    /// Its header section (text/rfc822-headers). `note`: why not more, when RET=FULL was asked.
    Headers {
        headers: Vec<u8>,
        note: Option<String>,
    },
    /// The whole message (message/rfc822), RET=FULL.
    Full(Vec<u8>),
}

/// What the report on `env`'s message returns: the whole message for RET=FULL on a failure or
/// relay report, when it is at most [`MAX_RETURNED`] octets and its lines fit RFC 5322; the
/// header section otherwise. Never the body of a REQUIRETLS message (RFC 8689 section 5), nor
/// in a delay warning. Blocks.
fn returned(message: &StoredMessage, env: &Envelope, action: Action) -> io::Result<Returned> {
    let headers = |note: Option<String>| -> io::Result<Returned> {
        // Read no further than the header section goes.
        let headers = read_header_section(message, MAX_ORIGINAL_HEADERS)?;
        Ok(Returned::Headers { headers, note })
    };
    if env.ret != Some(Ret::Full) || action == Action::Delayed {
        return headers(None);
    }
    if env.requiretls {
        return headers(Some(
            "The message was sent with REQUIRETLS: only its header fields are returned.".into(),
        ));
    }
    if message.len() > MAX_RETURNED {
        return headers(Some(format!(
            "The message ({} octets) is larger than the {MAX_RETURNED} octets returned whole: \
             only its header fields are returned.",
            message.len()
        )));
    }
    let whole = message.read_all()?;
    let fits = whole.is_empty()
        || whole
            .split(|&b| b == b'\n')
            .all(|line| line.len() <= MAX_LINE + 1);
    if !fits || !whole.ends_with(b"\r\n") {
        return headers(Some(
            "The message has lines too long to return whole: only its header fields are \
             returned."
                .into(),
        ));
    }
    Ok(Returned::Full(whole))
}

/// The start of `message` up to the end of its header section (the empty line included), at
/// most `max` octets; cut at the last line end when the section is longer than that.
fn read_header_section(message: &StoredMessage, max: usize) -> io::Result<Vec<u8>> {
    let len = usize::try_from(message.len())
        .unwrap_or(usize::MAX)
        .min(max);
    let mut out = Vec::new();
    while out.len() < len {
        let from = out.len();
        let want = (len - from).min(HEADER_READ);
        out.resize(from + want, 0);
        let n = message.read_at(from as u64, &mut out[from..])?;
        out.truncate(from + n);
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "queued message shorter than its envelope says",
            ));
        }
        // The empty line may straddle two reads.
        let scan = from.saturating_sub(3);
        if out.starts_with(b"\r\n") {
            out.truncate(2);
            return Ok(out);
        }
        if let Some(i) = memchr::memmem::find(&out[scan..], b"\r\n\r\n") {
            out.truncate(scan + i + 4);
            return Ok(out);
        }
    }
    if out.len() as u64 != message.len() {
        // Cut short by the bound: no partial last line.
        let keep = memchr::memmem::rfind(&out, b"\r\n").map_or(0, |i| i + 2);
        out.truncate(keep);
    }
    Ok(out)
}

/// Longest diagnostic text kept (characters); the rest is cut with `...`.
const MAX_DIAGNOSTIC: usize = 900;
/// Longest address kept (characters); RFC 5321 4.5.3.1.3 allows 256 octets in a path.
const MAX_ADDRESS: usize = 320;
/// Fold header fields and wrap text near this width (RFC 5322 2.1.1 "SHOULD be 78").
const FOLD_WIDTH: usize = 76;
/// The hard line limit of RFC 5322 2.1.1, without the CRLF.
const MAX_LINE: usize = 998;

/// Build the DSN message (headers and body, CRLF line endings) to send from `<>` to the
/// original envelope sender: a human-readable part, a message/delivery-status part with
/// `Action: failed` per recipient, and the original headers as text/rfc822-headers.
///
/// A recipient address that is not ASCII is reported as `utf-8; ADDR` inside a
/// `message/global-delivery-status` part (RFC 6533 3 and 6.2); original headers that are not
/// ASCII go in `message/global-headers` (RFC 6533 6.3).
pub fn build(
    hostname: &str,
    original: &Envelope,
    original_message: &[u8],
    failed: &[FailedRecipient],
    now: time::OffsetDateTime,
) -> Vec<u8> {
    let returned = Returned::Headers {
        headers: original_message.to_vec(),
        note: None,
    };
    build_report(hostname, original, &returned, failed, now)
}

/// [`build`] for any [`Action`] (that of the first recipient; all should have the same) and
/// with what [`Returned`] says of the original: its header section (sanitised), or the whole
/// message as a message/rfc822 part (RET=FULL; the message as queued, CRLF, lines within
/// RFC 5322's limit).
pub fn build_report(
    hostname: &str,
    original: &Envelope,
    returned: &Returned,
    failed: &[FailedRecipient],
    now: time::OffsetDateTime,
) -> Vec<u8> {
    let hostname = one_line(hostname, 255).replace(' ', "");
    let action = failed.first().map(|r| r.action).unwrap_or_default();
    let (headers, note) = match returned {
        Returned::Headers { headers, note } => (sanitized_headers(headers), note.as_deref()),
        Returned::Full(whole) => (whole.clone(), None),
    };
    let human = human_readable(&hostname, original, failed, action, returned, note);
    let global_status = failed.iter().any(|r| !r.address.is_ascii());
    let status = delivery_status(&hostname, original, failed);

    let boundary = loop {
        let b = format!("=_submitd_{:032x}", rand::random::<u128>());
        let occurs = |hay: &[u8]| memchr::memmem::find(hay, b.as_bytes()).is_some();
        if !occurs(&headers) && !occurs(human.as_bytes()) && !occurs(status.as_bytes()) {
            break b;
        }
    };

    let mut out = String::new();
    let mut field = |name: &str, value: &str| out.push_str(&fold(&format!("{name}: {value}")));
    field(
        "From",
        &format!("Mail Delivery System <MAILER-DAEMON@{hostname}>"),
    );
    if original.sender.is_empty() {
        // Never sent (no bounce of a bounce), but keep the message well-formed.
        field("To", "undisclosed-recipients:;");
    } else {
        field(
            "To",
            &format!(
                "<{}>",
                one_line(&original.sender, MAX_ADDRESS).replace(['<', '>'], "")
            ),
        );
    }
    field(
        "Subject",
        match action {
            Action::Failed => "Undelivered Mail Returned to Sender",
            Action::Delayed => "Delayed Mail (still being retried)",
            Action::Relayed => "Successful Mail Delivery Report",
        },
    );
    field("Date", &rfc5322_date(now));
    field(
        "Message-ID",
        &format!(
            "<{}.{:016x}.dsn@{hostname}>",
            one_line(&original.id, 64).replace(' ', ""),
            rand::random::<u64>()
        ),
    );
    field("Auto-Submitted", "auto-replied");
    field("MIME-Version", "1.0");
    field(
        "Content-Type",
        &format!("multipart/report; report-type=delivery-status; boundary=\"{boundary}\""),
    );
    let mut out = out.into_bytes();
    out.extend_from_slice(b"\r\nThis is a MIME-encapsulated message.\r\n\r\n");

    let part = |out: &mut Vec<u8>, content_type: &str, body: &[u8]| {
        let encoding = if body.is_ascii() { "7bit" } else { "8bit" };
        let head = format!(
            "--{boundary}\r\nContent-Type: {content_type}\r\n\
             Content-Transfer-Encoding: {encoding}\r\n\r\n"
        );
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(body);
        // The CRLF before a delimiter belongs to the delimiter (RFC 2046 5.1.1): add one so
        // that the part keeps the CRLF of its last line.
        out.extend_from_slice(b"\r\n");
    };
    part(&mut out, "text/plain; charset=utf-8", human.as_bytes());
    let status_type = if global_status {
        "message/global-delivery-status"
    } else {
        "message/delivery-status"
    };
    part(&mut out, status_type, status.as_bytes());
    let headers_type = match (returned, headers.is_ascii()) {
        (Returned::Full(_), true) => "message/rfc822",
        (Returned::Full(_), false) => "message/global",
        (Returned::Headers { .. }, true) => "text/rfc822-headers",
        (Returned::Headers { .. }, false) => "message/global-headers",
    };
    part(&mut out, headers_type, &headers);
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

/// The human-readable first part (RFC 6522 3): who failed (or waits, or was relayed) and why.
fn human_readable(
    hostname: &str,
    original: &Envelope,
    failed: &[FailedRecipient],
    action: Action,
    returned: &Returned,
    note: Option<&str>,
) -> String {
    let mut text = String::new();
    let mut para = |p: &str| {
        for line in wrap(p, FOLD_WIDTH) {
            text.push_str(&line);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
    };
    para(&format!("This is the mail delivery system at {hostname}."));
    let attached = match returned {
        Returned::Full(_) => "It is attached below.",
        Returned::Headers { .. } => "It is attached below (headers only).",
    };
    let what = match action {
        Action::Failed => "could not be delivered to one or more recipients",
        Action::Delayed => {
            "has not yet been delivered to one or more recipients; delivery will be \
             retried, and you need not send it again"
        }
        Action::Relayed => {
            "was delivered to the next mail server for one or more recipients; that server \
             sends no delivery reports, so this is the last report you will get"
        }
    };
    para(&format!(
        "Your message (queue ID {}, received {}) {what}. {attached}",
        one_line(&original.id, 64),
        arrival(original)
    ));
    if let Some(note) = note {
        para(note);
    }
    for r in failed {
        let address = one_line(&r.address, MAX_ADDRESS);
        let reason = one_line(&r.diagnostic, MAX_DIAGNOSTIC);
        let from = r
            .remote_mta
            .as_deref()
            .map(|h| format!("host {} said: ", one_line(h, 255)))
            .unwrap_or_default();
        if action == Action::Relayed {
            para(&format!("<{address}>: relayed to {from}{reason}"));
        } else if action == Action::Delayed {
            para(&format!(
                "<{address}>: still trying; last error: {from}{reason}"
            ));
        } else if r.status == EXPIRED {
            para(&format!(
                "<{address}>: delivery expired: the message could not be delivered within the \
                 time it may stay in the queue. Last error: {from}{reason}"
            ));
        } else {
            para(&format!("<{address}>: {from}{reason}"));
        }
    }
    text
}

/// The message/delivery-status part (RFC 3464 2.2 and 2.3).
fn delivery_status(hostname: &str, original: &Envelope, failed: &[FailedRecipient]) -> String {
    let mut s = String::new();
    s.push_str(&fold(&format!("Reporting-MTA: dns; {hostname}")));
    if let Some(envid) = original
        .envid
        .as_deref()
        .and_then(|e| dsn::decode_xtext(e, false))
    {
        // RFC 3464 2.2.1: the ENVID decoded from xtext.
        s.push_str(&fold(&format!(
            "Original-Envelope-Id: {}",
            one_line(&envid, dsn::MAX_ENVID).replace(' ', "")
        )));
    }
    s.push_str(&fold(&format!(
        "X-Submitd-Queue-ID: {}",
        one_line(&original.id, 64)
    )));
    s.push_str(&fold(&format!("Arrival-Date: {}", arrival(original))));
    for r in failed {
        s.push_str("\r\n");
        let address = one_line(&r.address, MAX_ADDRESS);
        let recipient = if address.is_ascii() {
            format!("rfc822; {address}")
        } else {
            format!("utf-8; {}", utf8_addr_unitext(&address))
        };
        if let Some((kind, orcpt)) = r.orcpt.as_deref().and_then(dsn::orcpt_for_report) {
            // RFC 3464 2.3.1: the ORCPT's address type and its address decoded from xtext.
            let orcpt = one_line(&orcpt, MAX_ADDRESS).replace(' ', "");
            if orcpt.is_ascii() || !address.is_ascii() {
                s.push_str(&fold(&format!("Original-Recipient: {kind};{orcpt}")));
            }
        }
        s.push_str(&fold(&format!("Final-Recipient: {recipient}")));
        s.push_str(&format!("Action: {}\r\n", r.action.as_str()));
        s.push_str(&format!("Status: {}\r\n", status_code(&r.status)));
        if let Some(host) = &r.remote_mta {
            let host = one_line(host, 255).replace(' ', "");
            if !host.is_empty() {
                s.push_str(&fold(&format!("Remote-MTA: dns; {host}")));
            }
        }
        let mut diagnostic = one_line(&r.diagnostic, MAX_DIAGNOSTIC);
        if !address.is_ascii() {
            // utf-8 text is allowed in message/global-delivery-status only.
        } else if !diagnostic.is_ascii() {
            diagnostic = diagnostic
                .chars()
                .map(|c| if c.is_ascii() { c } else { '?' })
                .collect();
        }
        if !diagnostic.is_empty() {
            s.push_str(&fold(&format!("Diagnostic-Code: smtp; {diagnostic}")));
        }
    }
    s
}

/// RFC 5322 date of the original arrival.
fn arrival(original: &Envelope) -> String {
    let t = i64::try_from(original.received_at)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    rfc5322_date(t)
}

/// The status a delay report gives for a deferral's last reply: the first `4.x.y` in it (a
/// transient enhanced code from the next hop), else `4.0.0`.
pub fn deferred_status(reply: &str) -> String {
    reply
        .split_whitespace()
        .take(20)
        .map(|w| w.trim_end_matches([',', ';', ':']))
        .find(|w| w.starts_with("4.") && status_code(w) == *w)
        .unwrap_or("4.0.0")
        .to_string()
}

/// A valid RFC 3463 status (`class.subject.detail`, class 2, 4 or 5), else `5.0.0`.
fn status_code(status: &str) -> &str {
    let parts: Vec<&str> = status.split('.').collect();
    let numeric = |p: &str, max: usize| {
        !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
    };
    let ok = parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && numeric(parts[1], 3)
        && numeric(parts[2], 3);
    if ok { status } else { "5.0.0" }
}

/// RFC 6533 3 `utf-8-addr-unitext`: `\`, `+`, `=` and controls become `\x{HEX}`.
fn utf8_addr_unitext(address: &str) -> String {
    let mut s = String::with_capacity(address.len());
    for c in address.chars() {
        if matches!(c, '\\' | '+' | '=') || c.is_control() || c == ' ' {
            let _ = write!(s, "\\x{{{:X}}}", c as u32);
        } else {
            s.push(c);
        }
    }
    s
}

/// Untrusted text as one line: control characters (CR and LF included) become spaces, runs
/// of white space collapse, and text over `max` characters is cut with `...`.
fn one_line(text: &str, max: usize) -> String {
    let mut s = String::with_capacity(text.len().min(max + 3));
    let mut count = 0;
    for c in text.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' && (s.is_empty() || s.ends_with(' ')) {
            continue;
        }
        if count == max {
            s.truncate(s.trim_end().len());
            s.push_str("...");
            return s;
        }
        s.push(c);
        count += 1;
    }
    s.truncate(s.trim_end().len());
    s
}

/// Split `text` (one line, single spaces) into lines of at most `width` characters, breaking
/// at spaces; a word longer than `width` stays whole on its own line.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    let mut len = 0;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let n = word.chars().count();
        if len > 0 && len + 1 + n > width {
            lines.push(std::mem::take(&mut line));
            len = 0;
        }
        if len > 0 {
            line.push(' ');
            len += 1;
        }
        line.push_str(word);
        len += n;
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// A header field (one line, single spaces) folded at spaces (RFC 5322 2.2.3), CRLF-terminated.
/// Unfolding (removing each CRLF) gives the field back exactly. A single word cannot exceed
/// [`MAX_LINE`] because every value here is bounded before it is folded.
fn fold(field: &str) -> String {
    let lines = wrap(field, FOLD_WIDTH);
    let mut s = String::with_capacity(field.len() + 3 * lines.len());
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(line);
        s.push_str("\r\n");
    }
    debug_assert!(s.split("\r\n").all(|l| l.len() <= MAX_LINE));
    s
}

/// The original header fields ([`header_fields`]), CRLF line endings, each line cut to
/// [`MAX_LINE`] octets (at a UTF-8 boundary) and bare CRs replaced by spaces.
fn sanitized_headers(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = header_fields(message);
    while !rest.is_empty() {
        let (mut line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        if let Some(l) = line.strip_suffix(b"\r") {
            line = l;
        }
        // Only a bare LF can make an empty line here (the spool has none): it must not end
        // up inside the headers part either.
        if line.is_empty() {
            break;
        }
        let mut cut = line.len().min(MAX_LINE);
        // Back off to a character boundary: never leave half of a UTF-8 sequence.
        while cut < line.len() && cut > 0 && (line[cut] & 0xC0) == 0x80 {
            cut -= 1;
        }
        out.extend(
            line[..cut]
                .iter()
                .map(|&b| if b == b'\r' { b' ' } else { b }),
        );
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Recipient, RecipientState};
    use mail_parser::{MessageParser, MimeHeaders};

    const ORIGINAL: &[u8] = b"Received: from client.test by mail.example.test\r\n\
        \twith ESMTPSA id 0123456789ABCDEF0123\r\n\
        From: Alice <alice@example.test>\r\n\
        To: bob@example.net\r\n\
        Subject: hello\r\n\
        Message-ID: <m1@example.test>\r\n\
        \r\n\
        Body line.\r\n";

    fn envelope(sender: &str) -> Envelope {
        Envelope {
            version: 1,
            id: "0123456789ABCDEF0123".into(),
            user: "alice@example.test".into(),
            sender: sender.into(),
            recipients: vec![Recipient {
                address: "bob@example.net".into(),
                state: RecipientState::Failed,
                attempts: 1,
                next_attempt: None,
                last_reply: None,
                notify: None,
                orcpt: None,
                warned: false,
            }],
            received_at: 1_700_000_000,
            helo: "client.test".into(),
            smtputf8: false,
            eight_bit: false,
            size: ORIGINAL.len() as u64,
            held: false,
            prefix: String::new(),
            content_len: 0,
            ret: None,
            envid: None,
            requiretls: false,
            tls_optional: false,
            origin: None,
        }
    }

    fn now() -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(1_700_100_000).unwrap()
    }

    fn failed() -> Vec<FailedRecipient> {
        vec![
            FailedRecipient {
                address: "bob@example.net".into(),
                status: "5.1.1".into(),
                diagnostic: "550 5.1.1 <bob@example.net>: Recipient address rejected".into(),
                remote_mta: Some("mx.example.net".into()),
                ..FailedRecipient::default()
            },
            FailedRecipient {
                address: "carol@example.org".into(),
                status: EXPIRED.into(),
                diagnostic: "451 4.7.1 Try again later".into(),
                remote_mta: None,
                ..FailedRecipient::default()
            },
        ]
    }

    /// Every line ends in CRLF, there is no bare CR or LF, and no line exceeds 998 octets.
    fn assert_wire_clean(dsn: &[u8]) {
        assert!(dsn.ends_with(b"\r\n"));
        for (i, &b) in dsn.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && dsn[i - 1] == b'\r', "bare LF at {i}");
            }
            if b == b'\r' {
                assert_eq!(dsn.get(i + 1), Some(&b'\n'), "bare CR at {i}");
            }
        }
        for line in dsn.split(|&b| b == b'\n') {
            assert!(line.len() <= MAX_LINE + 1, "line of {} octets", line.len());
        }
    }

    fn part_text(dsn: &[u8], index: usize) -> (String, String) {
        let msg = MessageParser::default().parse(dsn).expect("parses");
        let part = &msg.parts[index];
        let ct = part.content_type().expect("content type");
        let ct = format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""));
        (ct, String::from_utf8_lossy(part.contents()).into_owned())
    }

    /// Undo RFC 5322 folding.
    fn unfold(s: &str) -> String {
        s.replace("\r\n ", " ").replace("\r\n\t", "\t")
    }

    #[test]
    fn is_a_multipart_report_with_three_parts() {
        let dsn = build(
            "mail.example.test",
            &envelope("alice@example.test"),
            ORIGINAL,
            &failed(),
            now(),
        );
        assert_wire_clean(&dsn);
        let msg = MessageParser::default().parse(&dsn[..]).unwrap();
        let ct = msg.content_type().unwrap();
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        assert_eq!(msg.parts.len(), 4, "root and three parts");
        assert_eq!(
            msg.from().unwrap().first().unwrap().address(),
            Some("MAILER-DAEMON@mail.example.test")
        );
        assert_eq!(
            msg.to().unwrap().first().unwrap().address(),
            Some("alice@example.test")
        );
        assert_eq!(msg.subject(), Some("Undelivered Mail Returned to Sender"));
        assert!(msg.date().is_some());
        assert!(msg.message_id().unwrap().ends_with("@mail.example.test"));
        assert_eq!(
            msg.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-replied")
        );

        let (ct, human) = part_text(&dsn, 1);
        assert_eq!(ct, "text/plain");
        let human = unfold(&human).replace("\r\n", " ");
        assert!(human.contains("<bob@example.net>: host mx.example.net said: 550 5.1.1"));
        assert!(human.contains("<carol@example.org>: delivery expired"));

        let (ct, status) = part_text(&dsn, 2);
        assert_eq!(ct, "message/delivery-status");
        let status = unfold(&status);
        assert!(status.starts_with(
            "Reporting-MTA: dns; mail.example.test\r\n\
             X-Submitd-Queue-ID: 0123456789ABCDEF0123\r\n\
             Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\r\n"
        ));
        assert!(status.contains(
            "Final-Recipient: rfc822; bob@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n\
             Remote-MTA: dns; mx.example.net\r\n\
             Diagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected\r\n"
        ));
        assert!(status.contains(
            "\r\n\r\nFinal-Recipient: rfc822; carol@example.org\r\nAction: failed\r\n\
             Status: 4.4.7\r\nDiagnostic-Code: smtp; 451 4.7.1 Try again later\r\n"
        ));

        let (ct, headers) = part_text(&dsn, 3);
        assert_eq!(ct, "text/rfc822-headers");
        let end = ORIGINAL.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 2;
        assert_eq!(headers.as_bytes(), &ORIGINAL[..end]);
    }

    #[test]
    fn message_ids_and_boundaries_are_unique() {
        let a = build("h.test", &envelope("a@h.test"), ORIGINAL, &failed(), now());
        let b = build("h.test", &envelope("a@h.test"), ORIGINAL, &failed(), now());
        let ma = MessageParser::default().parse(&a[..]).unwrap();
        let mb = MessageParser::default().parse(&b[..]).unwrap();
        assert_ne!(ma.message_id(), mb.message_id());
        assert_ne!(
            ma.content_type().unwrap().attribute("boundary"),
            mb.content_type().unwrap().attribute("boundary")
        );
    }

    #[test]
    fn hostile_input_stays_on_the_wire_rules() {
        let mut original = Vec::new();
        original.extend_from_slice(b"Subject: ");
        original.extend(std::iter::repeat_n(b'x', 2000));
        original.extend_from_slice(b"\r\nX-Long: ");
        original.extend(std::iter::repeat_n("\u{e9}", 1000).flat_map(|s| s.bytes()));
        original.extend_from_slice(b"\r\nX-Bare: a\rb\nX-After-Bare-LF: c\r\n\r\nbody\r\n");
        let injected = FailedRecipient {
            address: "bob@example.net\r\nBcc: evil@example.com".into(),
            status: "5.7.1\r\nX-Evil: 1".into(),
            diagnostic: format!(
                "550 5.7.1 no\r\n\r\nFinal-Recipient: rfc822; forged@example.com\r\n{}",
                "y".repeat(3000)
            ),
            remote_mta: Some("mx.example.net\r\nX-Evil: 2".into()),
            orcpt: Some("rfc822;x+0D+0ABcc:evil@example.com".into()),
            ..FailedRecipient::default()
        };
        let dsn = build(
            "mail.example.test",
            &envelope("alice@example.test\r\nX-Evil: 3"),
            &original,
            &[injected],
            now(),
        );
        assert_wire_clean(&dsn);
        let text = String::from_utf8(dsn.clone()).expect("cut at a character boundary");
        assert!(
            !text.contains("Original-Recipient"),
            "an invalid ORCPT is left out"
        );
        for evil in [
            "\r\nBcc:",
            "\r\nX-Evil",
            "\r\nFinal-Recipient: rfc822; forged",
        ] {
            assert!(!text.contains(evil), "{evil:?} injected");
        }
        let (_, status) = part_text(&dsn, 2);
        assert!(status.contains("Status: 5.0.0\r\n"));
        let (ct, headers) = part_text(&dsn, 3);
        assert_eq!(ct, "message/global-headers");
        assert!(headers.starts_with(&format!("Subject: {}\r\n", "x".repeat(989))));
        assert!(
            headers.contains("X-Bare: a b\r\nX-After-Bare-LF: c\r\n"),
            "{headers:?}"
        );
    }

    #[test]
    fn non_ascii_recipient_uses_utf8_address_type() {
        let r = FailedRecipient {
            address: "j\u{f6}rg+tag@example.de".into(),
            status: "5.1.1".into(),
            diagnostic: "550 5.1.1 unknown".into(),
            remote_mta: None,
            ..FailedRecipient::default()
        };
        let dsn = build("h.test", &envelope("a@h.test"), ORIGINAL, &[r], now());
        assert_wire_clean(&dsn);
        let (ct, status) = part_text(&dsn, 2);
        assert_eq!(ct, "message/global-delivery-status");
        assert!(status.contains("Final-Recipient: utf-8; j\u{f6}rg\\x{2B}tag@example.de\r\n"));
    }

    #[test]
    fn folds_long_fields_and_wraps_text() {
        let long = (0..200)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let f = fold(&format!("Diagnostic-Code: smtp; {long}"));
        assert!(f.split("\r\n").all(|l| l.len() <= FOLD_WIDTH + 1));
        assert_eq!(unfold(&f), format!("Diagnostic-Code: smtp; {long}\r\n"));
        assert_eq!(one_line(" a\r\n\tb  c ", 100), "a b c");
        assert_eq!(one_line("abcdef", 3), "abc...");
        assert_eq!(status_code("5.1.10"), "5.1.10");
        assert_eq!(status_code("2.0"), "5.0.0");
    }

    /// `content` behind `prefix` in a fresh spool, opened for relaying.
    fn stored(prefix: &str, content: &[u8]) -> StoredMessage {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = QueueId::generate();
        let mut env = Envelope::new(&id, "u", "a@example.test", &[], "h", 0);
        env.prefix = prefix.to_string();
        spool.store_blocking(&env, content).unwrap();
        spool.open_message(&id).unwrap().1
    }

    #[test]
    fn reads_the_header_section_only_and_bounded() {
        let body = vec![b'x'; 300 << 10];
        let mut m = b"Subject: s\r\n\r\n".to_vec();
        m.extend_from_slice(&body);
        let head = read_header_section(&stored("Received: r\r\n", &m), 1 << 20).unwrap();
        assert_eq!(head, b"Received: r\r\nSubject: s\r\n\r\n");
        // The empty line straddling two reads.
        let mut m = vec![b'X'; HEADER_READ - 2];
        m[..2].copy_from_slice(b"A:");
        m.extend_from_slice(b"\r\n\r\nbody");
        let head = read_header_section(&stored("", &m), 1 << 20).unwrap();
        assert_eq!(head.len(), HEADER_READ + 2);
        // A header section longer than the bound: cut at its last line end within it.
        let mut m = Vec::new();
        while m.len() < 3 * HEADER_READ {
            m.extend_from_slice(b"X-Long: 0123456789\r\n");
        }
        let head = read_header_section(&stored("", &m), 2 * HEADER_READ).unwrap();
        assert!(head.len() <= 2 * HEADER_READ && head.ends_with(b"\r\n"));
        assert!(head.len() > 2 * HEADER_READ - 30);
        // Starting with the empty line: nothing but it.
        let head = read_header_section(&stored("", b"\r\nbody\r\n"), 1 << 20).unwrap();
        assert_eq!(head, b"\r\n");
    }

    fn with_ret(ret: Option<Ret>, requiretls: bool) -> Envelope {
        let mut env = envelope("alice@example.test");
        env.ret = ret;
        env.requiretls = requiretls;
        env
    }

    const FULL: &[u8] = b"Subject: s\r\nFrom: a@example.test\r\n\r\nThe body 42.\r\n";

    #[test]
    fn what_a_report_returns_of_the_message() {
        let message = stored("Received: r\r\n", FULL);
        let full = |env: &Envelope, action| returned(&message, env, action).unwrap();
        let whole = [b"Received: r\r\n".as_slice(), FULL].concat();
        assert_eq!(
            full(&with_ret(Some(Ret::Full), false), Action::Failed),
            Returned::Full(whole.clone())
        );
        assert_eq!(
            full(&with_ret(Some(Ret::Full), false), Action::Relayed),
            Returned::Full(whole)
        );
        let headers = b"Received: r\r\nSubject: s\r\nFrom: a@example.test\r\n\r\n".to_vec();
        for (env, action) in [
            (with_ret(None, false), Action::Failed),
            (with_ret(Some(Ret::Hdrs), false), Action::Failed),
            (with_ret(Some(Ret::Full), false), Action::Delayed),
        ] {
            assert_eq!(
                full(&env, action),
                Returned::Headers {
                    headers: headers.clone(),
                    note: None
                }
            );
        }
        // REQUIRETLS: never the body (RFC 8689 section 5), and the report says so.
        match full(&with_ret(Some(Ret::Full), true), Action::Failed) {
            Returned::Headers { headers: h, note } => {
                assert_eq!(h, headers);
                assert!(note.unwrap().contains("REQUIRETLS"));
            }
            other => panic!("{other:?}"),
        }
        // Too large, or lines too long: headers only, with the reason.
        let mut big = b"Subject: big\r\n\r\n".to_vec();
        while big.len() as u64 <= MAX_RETURNED {
            big.extend_from_slice(&[b'x'; 500]);
            big.extend_from_slice(b"\r\n");
        }
        let big = stored("", &big);
        match returned(&big, &with_ret(Some(Ret::Full), false), Action::Failed).unwrap() {
            Returned::Headers { headers, note } => {
                assert_eq!(headers, b"Subject: big\r\n\r\n");
                assert!(note.unwrap().contains("larger than"));
            }
            other => panic!("{other:?}"),
        }
        let mut long = b"Subject: long\r\n\r\n".to_vec();
        long.extend_from_slice(&[b'y'; 1200]);
        long.extend_from_slice(b"\r\n");
        let long = stored("", &long);
        match returned(&long, &with_ret(Some(Ret::Full), false), Action::Failed).unwrap() {
            Returned::Headers { note, .. } => assert!(note.unwrap().contains("too long")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_full_report_carries_the_message_as_message_rfc822() {
        let report = build_report(
            "h.test",
            &with_ret(Some(Ret::Full), false),
            &Returned::Full(FULL.to_vec()),
            &failed(),
            now(),
        );
        assert_wire_clean(&report);
        let (ct, text) = part_text(&report, 3);
        assert_eq!(ct, "message/rfc822");
        let (_, human) = part_text(&report, 1);
        let human = unfold(&human).replace("\r\n", " ");
        assert!(
            human.contains("attached below.") && !human.contains("headers only"),
            "{human}"
        );
        assert!(
            String::from_utf8_lossy(&report).contains("The body 42."),
            "{text}"
        );
    }

    #[test]
    fn relayed_and_delayed_reports_with_envid_and_orcpt() {
        let mut env = envelope("alice@example.test");
        env.envid = Some("QQ+2B31".into());
        let relayed = FailedRecipient {
            address: "bob@example.net".into(),
            status: "2.0.0".into(),
            diagnostic: "250 2.0.0 Ok: queued as X".into(),
            remote_mta: Some("mx.example.net".into()),
            action: Action::Relayed,
            orcpt: Some("rfc822;Bob+2Bx@example.net".into()),
        };
        let returned = Returned::Headers {
            headers: ORIGINAL.to_vec(),
            note: None,
        };
        let report = build_report("h.test", &env, &returned, &[relayed], now());
        assert_wire_clean(&report);
        let text = String::from_utf8_lossy(&report);
        assert!(text.contains("Subject: Successful Mail Delivery Report\r\n"));
        let (_, status) = part_text(&report, 2);
        assert!(
            status.contains("Original-Envelope-Id: QQ+31\r\n"),
            "{status}"
        );
        assert!(
            status.contains(
                "Original-Recipient: rfc822;Bob+x@example.net\r\n\
                 Final-Recipient: rfc822; bob@example.net\r\nAction: relayed\r\nStatus: 2.0.0\r\n"
            ),
            "{status}"
        );
        let delayed = FailedRecipient {
            address: "bob@example.net".into(),
            status: deferred_status("451 4.2.1 busy"),
            diagnostic: "451 4.2.1 busy".into(),
            action: Action::Delayed,
            ..FailedRecipient::default()
        };
        let report = build_report("h.test", &env, &returned, &[delayed], now());
        let (_, status) = part_text(&report, 2);
        assert!(
            status.contains("Action: delayed\r\nStatus: 4.2.1\r\n"),
            "{status}"
        );
        assert!(String::from_utf8_lossy(&report).contains("Subject: Delayed Mail"));
    }

    #[test]
    fn deferred_statuses() {
        assert_eq!(deferred_status("451 4.2.1 busy"), "4.2.1");
        assert_eq!(
            deferred_status("MAIL FROM at mx: 421 4.7.28 slow down"),
            "4.7.28"
        );
        assert_eq!(deferred_status("connection refused"), "4.0.0");
        assert_eq!(deferred_status("550 5.1.1 no"), "4.0.0");
        assert_eq!(deferred_status("451 4.x.1"), "4.0.0");
    }
}
