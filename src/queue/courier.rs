//! The seam between the queue and whatever carries its messages away.
//!
//! The scheduler holds a [`Courier`] (chasquid's shape), not the SMTP client: it decides when to
//! attempt a message and what the outcomes mean (retries, bounces), the courier only attempts.
//! `delivery::Delivery` is the server's courier (MX, smarthost or capture directory); the queue
//! never imports it, so delivery may import the queue's types ([`Job`], [`Outcome`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::spool::{Envelope, StoredMessage};
use crate::dsn::{RcptParams, Ret};

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
    /// The message as queued (CRLF line endings), read from its queue file in pieces; shared
    /// by the attempts to several destinations.
    pub message: Arc<StoredMessage>,
    /// Submitted with SMTPUTF8: needs SMTPUTF8 at the next hop when any address or header is
    /// non-ASCII.
    pub smtputf8: bool,
    /// Submitted with BODY=8BITMIME.
    pub eight_bit: bool,
    /// The queued envelope, for destinations that record it (capture writes it to `ID.json`).
    pub envelope: Option<&'a Envelope>,
    /// The DSN parameters (RFC 3461) passed on to a next hop that offers DSN.
    pub dsn: JobDsn<'a>,
    /// Submitted with REQUIRETLS (RFC 8689): only over TLS that is required and verified, and
    /// only to a next hop that offers REQUIRETLS; otherwise each recipient fails with `5.7.10`.
    pub requiretls: bool,
    /// `TLS-Required: No` without REQUIRETLS (RFC 8689 section 5): a destination policy that
    /// requires TLS (DANE, MTA-STS, `relay.tls = "required"`) falls back to opportunistic TLS.
    pub tls_optional: bool,
}

/// The DSN parameters of one job (RFC 3461 section 4).
#[derive(Debug, Clone, Copy, Default)]
pub struct JobDsn<'a> {
    /// MAIL FROM `RET=`.
    pub ret: Option<Ret>,
    /// MAIL FROM `ENVID=`, as written (xtext).
    pub envid: Option<&'a str>,
    /// `NOTIFY=` and `ORCPT=` of each recipient of the job, in the same order; empty when the
    /// submission gave none.
    pub rcpts: &'a [RcptParams],
}

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The next hop answered 250 to DATA for this recipient. `dsn_passed`: the next hop
    /// offers DSN and got the recipient's NOTIFY, so success reports are its job now
    /// (RFC 3461 section 5.2); otherwise a NOTIFY=SUCCESS recipient gets a `relayed` DSN.
    Delivered {
        host: String,
        reply: String,
        dsn_passed: bool,
    },
    /// Try again later: 4xx, connection failure, timeout, TLS failure under `required`, DNS
    /// SERVFAIL or timeout.
    Deferred { host: Option<String>, reply: String },
    /// Permanent for this recipient: 5xx (status = its enhanced code, else `5.0.0`), null MX
    /// (`5.1.10`), NXDOMAIN (`5.1.2`), next hop lacking SMTPUTF8/8BITMIME the message needs
    /// (`5.6.7` / `5.6.3`).
    Failed {
        host: Option<String>,
        reply: String,
        status: String,
    },
}

/// A future a courier returns; boxed so that `Arc<dyn Courier>` works (one allocation per
/// attempt, nothing next to the network round trips it waits for).
pub type CourierFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What carries a message to its next hop, as the scheduler sees it.
pub trait Courier: Send + Sync {
    /// Attempt `job`: exactly one outcome per recipient of the job, in order, each with its
    /// recipient. Must not hang: the courier bounds its own attempt.
    fn deliver<'a>(&'a self, job: &'a Job<'a>) -> CourierFuture<'a, Vec<(String, Outcome)>>;

    /// Close connections kept for reuse (at shutdown, after the last attempt).
    fn close_idle(&self) -> CourierFuture<'_, ()>;
}
