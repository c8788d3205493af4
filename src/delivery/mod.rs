//! Delivery: where a message goes next and the SMTP conversation that takes it there.
//!
//! - [`mx`]: MX resolution (RFC 5321 section 5.1, RFC 7505 null MX) with hickory-resolver.
//! - [`outbound`]: one delivery attempt over lettre's `AsyncSmtpConnection`, with an outcome
//!   per recipient (MX mode with `relay.tls`, or the smarthost with `smarthost_tls` and AUTH).
//! - [`dsn`]: RFC 3464 delivery status notifications for failed and expired recipients.
//!
//! The queue scheduler (`queue::scheduler`) decides when to call [`Delivery::attempt`] and
//! what to do with the outcomes.

pub mod dsn;
pub mod mx;
pub mod outbound;

use std::sync::Arc;

use crate::config::Settings;

/// One attempt's work: one message to recipients that share a destination (one domain in MX
/// mode; all of them for the smarthost).
#[derive(Debug, Clone)]
pub struct Job<'a> {
    pub queue_id: &'a str,
    /// Envelope sender; empty for the null sender (bounces).
    pub sender: &'a str,
    pub recipients: &'a [String],
    /// The recipients' domain (MX mode), as written after the last `@`.
    pub domain: &'a str,
    /// The message as queued (CRLF line endings).
    pub message: &'a [u8],
    /// Submitted with SMTPUTF8: needs SMTPUTF8 at the next hop when any address or header is
    /// non-ASCII.
    pub smtputf8: bool,
    /// Submitted with BODY=8BITMIME.
    pub eight_bit: bool,
}

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The next hop answered 250 to DATA for this recipient.
    Delivered { host: String, reply: String },
    /// Try again later: 4xx, connection failure, timeout, TLS failure under `required`, DNS
    /// SERVFAIL or timeout.
    Deferred { host: Option<String>, reply: String },
    /// Permanent for this recipient: 5xx (status = its enhanced code, else `5.0.0`), null MX
    /// (`5.1.10`), NXDOMAIN (`5.1.2`), next hop lacking SMTPUTF8/8BITMIME the message needs
    /// (`5.6.7` / `5.6.3`).
    Failed { host: Option<String>, reply: String, status: String },
}

/// Why delivery could not be set up (bad CA file, resolver config).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeliveryError(pub String);

/// Everything needed to deliver: relay settings, the resolver, TLS parameters built once.
#[derive(Clone)]
pub struct Delivery {
    _inner: Arc<()>,
}

impl Delivery {
    /// Build from the settings (`relay.*` and `hostname`).
    pub fn new(_settings: &Settings) -> Result<Delivery, DeliveryError> {
        todo!("delivery helper")
    }

    /// Attempt delivery of `job`; returns exactly one outcome per recipient of the job, in
    /// order. Never panics, never hangs longer than the `relay.timeout` steps allow.
    pub async fn attempt(&self, _job: &Job<'_>) -> Vec<(String, Outcome)> {
        todo!("delivery helper")
    }
}
