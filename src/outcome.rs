//! What a reply means, as types: the result of an AUTH and the kind of a refusal.
//!
//! The session decides an [`Outcome`] where the event happens and carries it inside the reply
//! it sends (`session::reply`, where each kind maps to its wire reply, as rustls maps its typed
//! errors to alerts); metrics count the outcome and never read reply text. This module is a
//! leaf: it imports nothing of the crate, so both sides can depend on it.

/// An event the counters know about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// An AUTH exchange ended (`submitd_auth_total{result}`).
    Auth(AuthResult),
    /// A transaction or message was refused (`submitd_messages_rejected_total{reason}`).
    Rejected(Refusal),
}

/// How an AUTH exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthResult {
    /// `235 2.7.0`.
    Success,
    /// `535 5.7.8`.
    BadCredentials,
    /// A bad password that reached `limits.max_auth_failures`: `421 4.7.0`, then close.
    TooManyFailures,
    /// Over the login throttle: `454 4.7.0` without running argon2.
    Throttled,
    /// No argon2 worker in time: `454 4.7.0`.
    Busy,
    /// The directory backend could not answer (down, slow, misconfigured): `454 4.7.0`.
    Unavailable,
    /// Undecodable or malformed response: `501 5.5.2`.
    Malformed,
    /// The client sent `*`: `501 5.7.0`.
    Cancelled,
}

impl AuthResult {
    /// Every result, for tests and for creating every series at zero.
    pub const ALL: [AuthResult; 8] = [
        AuthResult::Success,
        AuthResult::BadCredentials,
        AuthResult::TooManyFailures,
        AuthResult::Throttled,
        AuthResult::Busy,
        AuthResult::Unavailable,
        AuthResult::Malformed,
        AuthResult::Cancelled,
    ];

    /// The `result` label.
    pub const fn label(self) -> &'static str {
        match self {
            AuthResult::Success => "success",
            AuthResult::BadCredentials | AuthResult::TooManyFailures => "bad_credentials",
            AuthResult::Throttled => "throttled",
            AuthResult::Busy => "busy",
            AuthResult::Unavailable => "unavailable",
            AuthResult::Malformed => "malformed",
            AuthResult::Cancelled => "cancelled",
        }
    }
}

/// Why a transaction or message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Over `limits.max_message_size` (SIZE or the content): `552 5.3.4`.
    MessageTooBig,
    /// Header section over `limits.max_header_size`: `552 5.3.4`.
    HeaderTooBig,
    /// `MAIL FROM:<>` from an authenticated user: `553 5.7.1`.
    NullSender,
    /// MAIL FROM, From or Sender not owned by the user: `553 5.7.1`.
    SenderNotOwned,
    /// Group syntax in From or Sender: `553 5.7.1`.
    FromGroup,
    /// A non-ASCII address without SMTPUTF8: `553 5.6.7`.
    NeedSmtputf8,
    /// `RCPT TO:<postmaster>`-like address without a domain: `501 5.1.3`.
    RcptWithoutDomain,
    /// Over the user's messages per hour or day: `450 4.7.1`.
    MessageRateLimited,
    /// Over the user's recipients per hour or day: `450 4.7.1`.
    RecipientRateLimited,
    /// The account is suspended: `550 5.7.1`.
    Suspended,
    /// Over `limits.max_recipients`: `452 4.5.3`.
    TooManyRecipients,
    /// A bare CR or LF in the content (SMTP smuggling): `550 5.6.0`.
    BareLineEnding,
    /// No From header: `550 5.6.0`.
    NoFrom,
    /// A NUL octet in the content: `550 5.6.0`.
    NulInMessage,
    /// More `Received:` fields than `limits.max_hops`: `554 5.4.6`.
    TooManyHops,
    /// The spool write failed: `451 4.3.0`.
    QueueWrite,
    /// The spool's file system is full: `452 4.3.1`.
    InsufficientStorage,
    /// A DKIM key matched but signing failed: `451 4.3.0`.
    DkimSigningFailed,
    /// The recipient is on the tenant's suppression list: `550 5.1.1`.
    RecipientSuppressed,
}

impl Refusal {
    /// Every kind, for tests and for creating every series at zero.
    pub const ALL: [Refusal; 19] = [
        Refusal::MessageTooBig,
        Refusal::HeaderTooBig,
        Refusal::NullSender,
        Refusal::SenderNotOwned,
        Refusal::FromGroup,
        Refusal::NeedSmtputf8,
        Refusal::RcptWithoutDomain,
        Refusal::MessageRateLimited,
        Refusal::RecipientRateLimited,
        Refusal::Suspended,
        Refusal::TooManyRecipients,
        Refusal::BareLineEnding,
        Refusal::NoFrom,
        Refusal::NulInMessage,
        Refusal::TooManyHops,
        Refusal::QueueWrite,
        Refusal::InsufficientStorage,
        Refusal::DkimSigningFailed,
        Refusal::RecipientSuppressed,
    ];

    /// The `reason` label: kinds an operator acts on the same way share one.
    pub const fn label(self) -> &'static str {
        match self {
            Refusal::MessageTooBig | Refusal::HeaderTooBig => "size",
            Refusal::NullSender | Refusal::SenderNotOwned | Refusal::FromGroup => "sender",
            Refusal::NeedSmtputf8 | Refusal::RcptWithoutDomain => "address",
            Refusal::MessageRateLimited | Refusal::RecipientRateLimited => "rate_limit",
            Refusal::Suspended => "suspended",
            Refusal::TooManyRecipients => "too_many_recipients",
            Refusal::BareLineEnding => "bare_line_ending",
            Refusal::NoFrom | Refusal::NulInMessage | Refusal::TooManyHops => "content",
            Refusal::QueueWrite | Refusal::InsufficientStorage => "storage",
            Refusal::DkimSigningFailed => "dkim",
            Refusal::RecipientSuppressed => "suppressed_recipient",
        }
    }
}
