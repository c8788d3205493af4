//! Delivery status notifications (RFC 3464, multipart/report RFC 6522).

use crate::queue::Envelope;

/// One recipient the DSN reports on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRecipient {
    pub address: String,
    /// RFC 3463 status, e.g. `5.1.1`, `4.4.7` (expired), `5.1.10` (null MX).
    pub status: String,
    /// The remote reply or our own reason, for `Diagnostic-Code: smtp; ...`.
    pub diagnostic: String,
    /// The host that gave the reply, for `Remote-MTA: dns; ...`, when there was one.
    pub remote_mta: Option<String>,
}

/// Build the DSN message (headers and body, CRLF line endings) to send from `<>` to the
/// original envelope sender: a human-readable part, a message/delivery-status part with
/// `Action: failed` per recipient, and the original headers as text/rfc822-headers.
pub fn build(
    _hostname: &str,
    _original: &Envelope,
    _original_message: &[u8],
    _failed: &[FailedRecipient],
    _now: time::OffsetDateTime,
) -> Vec<u8> {
    todo!("dsn helper")
}
