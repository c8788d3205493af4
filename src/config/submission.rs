//! `[submission]`: what submitd adds to messages.

use serde::Deserialize;

/// `[submission]`: what submitd adds to messages.
#[derive(Debug, Clone, Default)]
pub struct SubmissionSettings {
    /// Put the client's IP address in the Received header (default false, RFC 6409 privacy).
    pub received_client_ip: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSubmission {
    #[serde(default)]
    received_client_ip: bool,
}

/// `[submission]` has nothing that a type check leaves to validate.
pub(super) fn parse(raw: &RawSubmission) -> SubmissionSettings {
    SubmissionSettings {
        received_client_ip: raw.received_client_ip,
    }
}
