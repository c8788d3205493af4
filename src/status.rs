//! Where a message stands, per recipient (issue 16, `GET /v1/messages/{id}`).
//!
//! INTERFACE STUB: reads the live envelope only. The real module also keeps a record of
//! finished messages (removed from the spool) for a while, and keeps these names.

use serde::Serialize;

use crate::queue::{Envelope, QueueId, RecipientState, Spool};

/// One recipient's state, as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecipientStatus {
    pub address: String,
    /// `queued`, `deferred`, `sent`, `bounced` or `suppressed`.
    pub state: &'static str,
    pub attempts: u32,
    pub last_reply: Option<String>,
}

/// A message's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageStatus {
    pub id: String,
    /// The login that submitted it (a key's name).
    pub user: String,
    pub tenant: String,
    /// Unix seconds.
    pub received_at: u64,
    pub recipients: Vec<RecipientStatus>,
}

impl MessageStatus {
    /// The status an envelope describes.
    pub fn of(env: &Envelope) -> MessageStatus {
        let mut recipients: Vec<RecipientStatus> = env
            .recipients
            .iter()
            .map(|r| RecipientStatus {
                address: r.address.clone(),
                state: match r.state {
                    RecipientState::Pending => "queued",
                    RecipientState::Deferred => "deferred",
                    RecipientState::Delivered => "sent",
                    RecipientState::Failed => "bounced",
                },
                attempts: r.attempts,
                last_reply: r.last_reply.clone(),
            })
            .collect();
        for address in env.origin.iter().flat_map(|o| &o.suppressed) {
            recipients.push(RecipientStatus {
                address: address.clone(),
                state: "suppressed",
                attempts: 0,
                last_reply: None,
            });
        }
        MessageStatus {
            id: env.id.clone(),
            user: env.user.clone(),
            tenant: env.tenant().to_owned(),
            received_at: env.received_at,
            recipients,
        }
    }
}

/// The state of message `id`, if it is known. Blocks (reads files).
pub fn lookup(spool: &Spool, id: &QueueId) -> Option<MessageStatus> {
    spool
        .load_envelope(id)
        .ok()
        .map(|env| MessageStatus::of(&env))
}
