//! Every reply submitd sends, in one place (RFC 5321 section 4.2, enhanced codes RFC 3463).
//!
//! A [`Reply`] is a code and its text lines; the text of a single-line reply starts with the
//! enhanced status code (RFC 2034) where one applies.

use std::borrow::Cow;

use crate::outcome::{AuthResult, Outcome, Refusal};

/// One SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    /// The enhanced status code (RFC 3463, announced by ENHANCEDSTATUSCODES, RFC 2034),
    /// written before the text.
    enhanced: Option<[u16; 3]>,
    text: Cow<'static, str>,
    /// What the reply means to the counters, when it means something.
    outcome: Option<Outcome>,
}

impl Reply {
    /// A reply with constant text and no enhanced code; `text` may hold several lines
    /// separated by `\n`.
    pub const fn new(code: u16, text: &'static str) -> Reply {
        Reply {
            code,
            enhanced: None,
            text: Cow::Borrowed(text),
            outcome: None,
        }
    }

    /// A one-line reply with an enhanced status code and constant text.
    pub const fn enhanced(code: u16, enhanced: [u16; 3], text: &'static str) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            text: Cow::Borrowed(text),
            outcome: None,
        }
    }

    /// A reply with computed text.
    pub fn owned(code: u16, text: String) -> Reply {
        Reply {
            code,
            enhanced: None,
            text: Cow::Owned(text),
            outcome: None,
        }
    }

    /// A one-line reply with an enhanced status code and computed text.
    pub fn owned_enhanced(code: u16, enhanced: [u16; 3], text: String) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            text: Cow::Owned(text),
            outcome: None,
        }
    }

    /// The same reply, counted as `outcome`.
    pub const fn counts(mut self, outcome: Outcome) -> Reply {
        self.outcome = Some(outcome);
        self
    }

    /// The same reply, refusing for this reason.
    pub const fn refuses(self, refusal: Refusal) -> Reply {
        self.counts(Outcome::Rejected(refusal))
    }

    /// The same reply, ending an AUTH exchange this way.
    pub const fn auth(self, result: AuthResult) -> Reply {
        self.counts(Outcome::Auth(result))
    }

    /// What the reply means to the counters.
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// The enhanced status code, `[class, subject, detail]`.
    pub fn enhanced_code(&self) -> Option<[u16; 3]> {
        self.enhanced
    }

    /// The three-digit code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The text after the enhanced code (lines joined with `\n`).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether this is a 2xx or 3xx reply.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Append the wire form (`code-text` continuation lines, `code text` last, each CRLF).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        // Without `format!`: this runs for every reply, and a string per line showed up in
        // profiles of short sessions.
        debug_assert!((100..1000).contains(&self.code), "{}", self.code);
        let c = self.code;
        let code = [
            b'0' + (c / 100 % 10) as u8,
            b'0' + (c / 10 % 10) as u8,
            b'0' + (c % 10) as u8,
        ];
        out.reserve(self.text.len() + 16);
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            out.extend_from_slice(&code);
            out.push(if lines.peek().is_some() { b'-' } else { b' ' });
            if let Some(enhanced) = self.enhanced {
                write_enhanced(out, enhanced);
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as a string (tests, logs).
    pub fn to_wire(&self) -> String {
        let mut out = Vec::new();
        self.write_to(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// `X.Y.Z ` (RFC 3463 section 2), without `format!`.
fn write_enhanced(out: &mut Vec<u8>, [class, subject, detail]: [u16; 3]) {
    for (i, part) in [class, subject, detail].into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        if part >= 100 {
            out.push(b'0' + (part / 100 % 10) as u8);
        }
        if part >= 10 {
            out.push(b'0' + (part / 10 % 10) as u8);
        }
        out.push(b'0' + (part % 10) as u8);
    }
    out.push(b' ');
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ", self.code)?;
        if let Some([class, subject, detail]) = self.enhanced {
            write!(f, "{class}.{subject}.{detail} ")?;
        }
        f.write_str(&self.text.replace('\n', " / "))
    }
}

/// `220 HOSTNAME ESMTP submitd`.
pub fn greeting(hostname: &str) -> Reply {
    Reply::owned(220, format!("{hostname} ESMTP submitd"))
}

/// The EHLO reply (RFC 5321 4.1.1.1). Before TLS on 587 it offers STARTTLS and never AUTH;
/// with TLS it offers AUTH and never STARTTLS.
pub fn ehlo(hostname: &str, tls: bool, max_size: u64) -> Reply {
    let mut text = format!("{hostname}\nPIPELINING\nSIZE {max_size}\n");
    if tls {
        // DSN (RFC 3461) and REQUIRETLS (RFC 8689 section 3: only over TLS) are offered
        // only where MAIL is possible at all.
        text.push_str("AUTH PLAIN LOGIN\nDSN\nREQUIRETLS\n");
    } else {
        text.push_str("STARTTLS\n");
    }
    text.push_str("ENHANCEDSTATUSCODES\n8BITMIME\nSMTPUTF8\nCHUNKING");
    Reply::owned(250, text)
}

/// `250 HOSTNAME` for HELO.
pub fn helo(hostname: &str) -> Reply {
    Reply::owned(250, hostname.to_string())
}

/// `250 2.0.0 Ok: queued as ID`.
pub fn queued(id: &str) -> Reply {
    Reply::owned_enhanced(250, [2, 0, 0], format!("Ok: queued as {id}"))
}

/// `250 2.0.0 Ok: N octets received` after a non-last BDAT chunk.
pub fn chunk_received(octets: u64) -> Reply {
    Reply::owned_enhanced(250, [2, 0, 0], format!("Ok: {octets} octets received"))
}

/// `553 5.7.1 Sender address rejected: not owned by user LOGIN`.
pub fn sender_not_owned(login: &str) -> Reply {
    Reply::owned_enhanced(
        553,
        [5, 7, 1],
        format!("Sender address rejected: not owned by user {login}"),
    )
    .refuses(Refusal::SenderNotOwned)
}

/// `421 4.4.2 HOSTNAME Error: timeout exceeded` (RFC 5321 4.5.3.2).
pub fn timeout(hostname: &str) -> Reply {
    Reply::owned_enhanced(
        421,
        [4, 4, 2],
        format!("{hostname} Error: timeout exceeded"),
    )
}

/// `421 4.4.2 HOSTNAME Error: session time limit exceeded` (`limits.max_session_time`).
pub fn session_time_exceeded(hostname: &str) -> Reply {
    Reply::owned_enhanced(
        421,
        [4, 4, 2],
        format!("{hostname} Error: session time limit exceeded"),
    )
}

/// `421 4.3.2 HOSTNAME Service shutting down`.
pub fn shutting_down(hostname: &str) -> Reply {
    Reply::owned_enhanced(421, [4, 3, 2], format!("{hostname} Service shutting down"))
}

/// `421 4.7.0 HOSTNAME Too many connections` (total limit).
pub fn too_many_connections(hostname: &str) -> Reply {
    Reply::owned_enhanced(
        421,
        [4, 7, 0],
        format!("{hostname} Too many connections, try again later"),
    )
}

/// `421 4.7.0 HOSTNAME Too many connections from your address` (per-IP limit).
pub fn too_many_connections_from_ip(hostname: &str) -> Reply {
    Reply::owned_enhanced(
        421,
        [4, 7, 0],
        format!("{hostname} Too many connections from your address"),
    )
}

pub const OK: Reply = Reply::enhanced(250, [2, 0, 0], "Ok");
pub const MAIL_OK: Reply = Reply::enhanced(250, [2, 1, 0], "Ok");
pub const RCPT_OK: Reply = Reply::enhanced(250, [2, 1, 5], "Ok");
pub const BYE: Reply = Reply::enhanced(221, [2, 0, 0], "Bye");
pub const HELP: Reply = Reply::enhanced(
    214,
    [2, 0, 0],
    "Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY",
);
pub const VRFY: Reply = Reply::enhanced(
    252,
    [2, 5, 2],
    "Cannot VRFY user; try RCPT to attempt delivery",
);
pub const EXPN: Reply = Reply::enhanced(502, [5, 5, 1], "EXPN not supported");
pub const START_TLS: Reply = Reply::enhanced(220, [2, 0, 0], "Ready to start TLS");
pub const START_DATA: Reply = Reply::new(354, "End data with <CR><LF>.<CR><LF>");
pub const AUTH_OK: Reply =
    Reply::enhanced(235, [2, 7, 0], "Authentication successful").auth(AuthResult::Success);
/// PLAIN without an initial response: an empty challenge (RFC 4954 section 4).
pub const AUTH_PLAIN_CHALLENGE: Reply = Reply::new(334, "");
/// LOGIN: base64 of `Username:`.
pub const AUTH_LOGIN_USERNAME: Reply = Reply::new(334, "VXNlcm5hbWU6");
/// LOGIN: base64 of `Password:`.
pub const AUTH_LOGIN_PASSWORD: Reply = Reply::new(334, "UGFzc3dvcmQ6");

pub const MUST_STARTTLS: Reply =
    Reply::enhanced(530, [5, 7, 0], "Must issue a STARTTLS command first");
pub const AUTH_REQUIRED: Reply = Reply::enhanced(530, [5, 7, 0], "Authentication required");
pub const AUTH_FAILED: Reply =
    Reply::enhanced(535, [5, 7, 8], "Authentication credentials invalid")
        .auth(AuthResult::BadCredentials);
pub const AUTH_TOO_MANY_FAILURES: Reply =
    Reply::enhanced(421, [4, 7, 0], "Too many authentication failures")
        .auth(AuthResult::TooManyFailures);
pub const AUTH_CANCELLED: Reply =
    Reply::enhanced(501, [5, 7, 0], "Authentication cancelled").auth(AuthResult::Cancelled);
pub const AUTH_BAD_BASE64: Reply =
    Reply::enhanced(501, [5, 5, 2], "Cannot decode response").auth(AuthResult::Malformed);
pub const AUTH_MALFORMED: Reply =
    Reply::enhanced(501, [5, 5, 2], "Malformed authentication response")
        .auth(AuthResult::Malformed);
pub const AUTH_UNKNOWN_MECHANISM: Reply =
    Reply::enhanced(504, [5, 5, 4], "Unrecognized authentication mechanism");
pub const ALREADY_AUTHENTICATED: Reply = Reply::enhanced(503, [5, 5, 1], "Already authenticated");
pub const AUTH_IN_TRANSACTION: Reply =
    Reply::enhanced(503, [5, 5, 1], "AUTH not allowed during a mail transaction");
/// Too many failed AUTHs from this address or for this login (no argon2 ran).
pub const AUTH_THROTTLED: Reply = Reply::enhanced(
    454,
    [4, 7, 0],
    "Too many failed authentications, try again later",
)
.auth(AuthResult::Throttled);
/// The argon2 wait queue is full (RFC 4954 section 6: 454 is a temporary failure).
pub const AUTH_BUSY: Reply =
    Reply::enhanced(454, [4, 7, 0], "Temporary authentication failure").auth(AuthResult::Busy);
/// The directory backend could not answer: the same reply (the client just retries later),
/// counted apart.
pub const AUTH_UNAVAILABLE: Reply =
    Reply::enhanced(454, [4, 7, 0], "Temporary authentication failure")
        .auth(AuthResult::Unavailable);
pub const ACCOUNT_SUSPENDED: Reply = Reply::enhanced(
    550,
    [5, 7, 1],
    "Account suspended, contact the administrator",
)
.refuses(Refusal::Suspended);

/// A recipient on the sender's tenant's suppression list (issue 16; `crate::suppression`).
pub const RECIPIENT_SUPPRESSED: Reply = Reply::enhanced(
    550,
    [5, 1, 1],
    "Recipient suppressed after a permanent failure",
)
.refuses(Refusal::RecipientSuppressed);

/// `450 4.7.1 Message rate limit exceeded for user LOGIN, try again later`.
pub fn message_rate_limited(login: &str) -> Reply {
    Reply::owned_enhanced(
        450,
        [4, 7, 1],
        format!("Message rate limit exceeded for user {login}, try again later"),
    )
    .refuses(Refusal::MessageRateLimited)
}

/// `450 4.7.1 Recipient rate limit exceeded for user LOGIN, try again later`.
pub fn recipient_rate_limited(login: &str) -> Reply {
    Reply::owned_enhanced(
        450,
        [4, 7, 1],
        format!("Recipient rate limit exceeded for user {login}, try again later"),
    )
    .refuses(Refusal::RecipientRateLimited)
}
pub const TLS_ALREADY_ACTIVE: Reply = Reply::enhanced(503, [5, 5, 1], "TLS already active");
pub const EHLO_FIRST: Reply = Reply::enhanced(503, [5, 5, 1], "EHLO first");
pub const NESTED_MAIL: Reply = Reply::enhanced(503, [5, 5, 1], "Nested MAIL command");
pub const NEED_MAIL: Reply = Reply::enhanced(503, [5, 5, 1], "Need MAIL command");
pub const NEED_RCPT: Reply = Reply::enhanced(503, [5, 5, 1], "Need RCPT command");
pub const DATA_AFTER_BDAT: Reply = Reply::enhanced(503, [5, 5, 1], "DATA not allowed after BDAT");
pub const NULL_SENDER_REFUSED: Reply = Reply::enhanced(
    553,
    [5, 7, 1],
    "Null sender not allowed for authenticated users",
)
.refuses(Refusal::NullSender);
pub const RCPT_AFTER_BDAT: Reply = Reply::enhanced(503, [5, 5, 1], "RCPT not allowed after BDAT");
pub const RCPT_WITHOUT_DOMAIN: Reply =
    Reply::enhanced(501, [5, 1, 3], "Recipient address must have a domain")
        .refuses(Refusal::RcptWithoutDomain);
pub const TOO_MANY_RECIPIENTS: Reply =
    Reply::enhanced(452, [4, 5, 3], "Too many recipients").refuses(Refusal::TooManyRecipients);
pub const MESSAGE_TOO_BIG: Reply =
    Reply::enhanced(552, [5, 3, 4], "Message size exceeds fixed limit")
        .refuses(Refusal::MessageTooBig);
pub const NEED_SMTPUTF8: Reply = Reply::enhanced(
    553,
    [5, 6, 7],
    "Non-ASCII address requires the SMTPUTF8 parameter",
)
.refuses(Refusal::NeedSmtputf8);
pub const BARE_LINE_ENDING: Reply =
    Reply::enhanced(550, [5, 6, 0], "Bare CR or LF in message").refuses(Refusal::BareLineEnding);
pub const NO_FROM: Reply =
    Reply::enhanced(550, [5, 6, 0], "Message has no From header").refuses(Refusal::NoFrom);
pub const LINE_TOO_LONG: Reply = Reply::enhanced(500, [5, 5, 2], "Line too long");
pub const UNKNOWN_COMMAND: Reply = Reply::enhanced(500, [5, 5, 1], "Command unrecognized");
pub const UNSUPPORTED_PARAMETER: Reply = Reply::enhanced(555, [5, 5, 4], "Unsupported parameter");
pub const BAD_BDAT: Reply =
    Reply::enhanced(501, [5, 5, 4], "Invalid BDAT size; closing connection");
/// Input before the greeting, or after a command that must end a pipelined group (RFC 2920
/// section 3.1); the connection closes (Postfix: postscreen, `smtpd_forbid_unauth_pipelining`).
pub const SYNC_ERROR: Reply = Reply::enhanced(554, [5, 5, 0], "Protocol synchronization error");
/// `limits.max_bad_commands` protocol errors; the connection closes.
pub const TOO_MANY_ERRORS: Reply = Reply::enhanced(421, [4, 7, 0], "Too many errors");
/// Group syntax in From or Sender (RFC 5322 section 3.6.2 allows none there).
pub const FROM_GROUP: Reply = Reply::enhanced(
    553,
    [5, 7, 1],
    "Sender address rejected: group syntax not allowed in From or Sender",
)
.refuses(Refusal::FromGroup);
/// More `Received:` fields than `limits.max_hops`: a mail loop (RFC 5321 section 6.3; Postfix
/// `hopcount_limit`, RFC 3463 5.4.6 routing loop).
pub const TOO_MANY_HOPS: Reply =
    Reply::enhanced(554, [5, 4, 6], "Too many hops").refuses(Refusal::TooManyHops);
/// The header section is larger than `limits.max_header_size`.
pub const HEADER_TOO_BIG: Reply =
    Reply::enhanced(552, [5, 3, 4], "Message header size exceeds limit")
        .refuses(Refusal::HeaderTooBig);
/// NUL in message content: RFC 5322 `text` (section 3.5) excludes it and only the obsolete
/// syntax (section 4.1) allowed it, never to be generated. Refused in DATA and BDAT alike.
pub const NUL_IN_MESSAGE: Reply =
    Reply::enhanced(550, [5, 6, 0], "NUL character in message").refuses(Refusal::NulInMessage);
pub const QUEUE_WRITE_ERROR: Reply =
    Reply::enhanced(451, [4, 3, 0], "Error: queue file write error").refuses(Refusal::QueueWrite);
/// The spool's file system is full (ENOSPC, EDQUOT): RFC 3463 4.3.1.
pub const INSUFFICIENT_STORAGE: Reply =
    Reply::enhanced(452, [4, 3, 1], "Insufficient system storage")
        .refuses(Refusal::InsufficientStorage);
/// A DKIM key matched but signing failed: try again rather than send unsigned (src/dkim.rs).
pub const DKIM_SIGNING_FAILED: Reply = Reply::enhanced(
    451,
    [4, 3, 0],
    "Error: message could not be DKIM-signed, try again later",
)
.refuses(Refusal::DkimSigningFailed);

/// `501 5.5.4 Syntax error: DETAIL` (the detail is ours, never echoed client input).
pub fn syntax(detail: &str) -> Reply {
    Reply::owned_enhanced(501, [5, 5, 4], format!("Syntax error: {detail}"))
}

/// The reply for each refusal kind (`login` names the user where the text does). The wire
/// form is decided by the type, as rustls maps its errors to alerts.
pub fn refusal(kind: Refusal, login: &str) -> Reply {
    match kind {
        Refusal::MessageTooBig => MESSAGE_TOO_BIG,
        Refusal::HeaderTooBig => HEADER_TOO_BIG,
        Refusal::NullSender => NULL_SENDER_REFUSED,
        Refusal::SenderNotOwned => sender_not_owned(login),
        Refusal::FromGroup => FROM_GROUP,
        Refusal::NeedSmtputf8 => NEED_SMTPUTF8,
        Refusal::RcptWithoutDomain => RCPT_WITHOUT_DOMAIN,
        Refusal::MessageRateLimited => message_rate_limited(login),
        Refusal::RecipientRateLimited => recipient_rate_limited(login),
        Refusal::Suspended => ACCOUNT_SUSPENDED,
        Refusal::TooManyRecipients => TOO_MANY_RECIPIENTS,
        Refusal::BareLineEnding => BARE_LINE_ENDING,
        Refusal::NoFrom => NO_FROM,
        Refusal::NulInMessage => NUL_IN_MESSAGE,
        Refusal::TooManyHops => TOO_MANY_HOPS,
        Refusal::QueueWrite => QUEUE_WRITE_ERROR,
        Refusal::InsufficientStorage => INSUFFICIENT_STORAGE,
        Refusal::DkimSigningFailed => DKIM_SIGNING_FAILED,
        Refusal::RecipientSuppressed => RECIPIENT_SUPPRESSED,
    }
}

/// The reply that ends an AUTH exchange this way.
pub fn auth_result(result: AuthResult) -> Reply {
    match result {
        AuthResult::Success => AUTH_OK,
        AuthResult::BadCredentials => AUTH_FAILED,
        AuthResult::TooManyFailures => AUTH_TOO_MANY_FAILURES,
        AuthResult::Throttled => AUTH_THROTTLED,
        AuthResult::Busy => AUTH_BUSY,
        AuthResult::Unavailable => AUTH_UNAVAILABLE,
        AuthResult::Malformed => AUTH_MALFORMED,
        AuthResult::Cancelled => AUTH_CANCELLED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind maps to a reply that carries it back, with the enhanced code its class
    /// implies.
    #[test]
    fn every_kind_maps_to_a_reply_that_carries_it() {
        for kind in Refusal::ALL {
            let r = refusal(kind, "alice@example.test");
            assert_eq!(r.outcome(), Some(Outcome::Rejected(kind)), "{r}");
            assert!(r.code() >= 400, "{r}");
            let [class, _, _] = r.enhanced_code().expect("refusals have an enhanced code");
            assert_eq!(class, r.code() / 100, "{r}");
        }
        for result in AuthResult::ALL {
            let r = auth_result(result);
            assert_eq!(r.outcome(), Some(Outcome::Auth(result)), "{r}");
        }
    }

    #[test]
    fn enhanced_code_is_written_before_the_text() {
        assert_eq!(
            sender_not_owned("a@b").to_wire(),
            "553 5.7.1 Sender address rejected: not owned by user a@b\r\n"
        );
        assert_eq!(
            Reply::enhanced(250, [2, 10, 123], "x").to_wire(),
            "250 2.10.123 x\r\n"
        );
        assert_eq!(TOO_MANY_HOPS.to_string(), "554 5.4.6 Too many hops");
    }

    #[test]
    fn single_line_wire_form() {
        assert_eq!(
            AUTH_FAILED.to_wire(),
            "535 5.7.8 Authentication credentials invalid\r\n"
        );
        assert_eq!(AUTH_PLAIN_CHALLENGE.to_wire(), "334 \r\n");
    }

    #[test]
    fn ehlo_after_tls_offers_auth_not_starttls() {
        let wire = ehlo("mx.test", true, 1000).to_wire();
        assert_eq!(
            wire,
            "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-AUTH PLAIN LOGIN\r\n\
             250-DSN\r\n250-REQUIRETLS\r\n\
             250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
        );
        let plain = ehlo("mx.test", false, 1000).to_wire();
        assert!(plain.contains("250-STARTTLS\r\n"));
        assert!(!plain.contains("AUTH"));
        assert!(
            !plain.contains("DSN") && !plain.contains("REQUIRETLS"),
            "{plain}"
        );
    }
}
