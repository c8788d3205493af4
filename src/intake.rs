//! Message admission: what happens between the end of a message's data and the `250`.
//!
//! [`Intake::accept`] takes a message the session has checked (sender binding, size, hops) and
//! carries it through four steps, in order:
//!
//! 1. **prepare**: the headers an MSA adds (RFC 6409 section 8: `Received:`, and `Date:` and
//!    `Message-ID:` when missing), `submission::prepend_headers`;
//! 2. **sign**: DKIM, for the From domain the header check passed and no other, off the
//!    reactor (`dkim::SharedSigner`);
//! 3. **store**: envelope and message durably in the spool (file fsync, rename, directory
//!    fsync, `queue::Spool::store`); a failure removes both files;
//! 4. **notify**: the committed message is handed to the scheduler, the per-user sending
//!    ledger records it, the `queued` line is logged.
//!
//! Nothing here touches a socket: the session driver calls it and turns the result into the
//! reply ([`AcceptError::refusal`]).

use std::net::IpAddr;
use std::sync::Arc;

use tracing::{info, warn};

use crate::auth::quota::{Admission, Quota, Refusal as QuotaRefusal};
use crate::auth::users::User;
use crate::dkim::{DkimError, SharedSigner};
use crate::logsafe::Escaped;
use crate::metrics::Metrics;
use crate::outcome::Refusal;
use crate::queue::scheduler::QueueHandle;
use crate::queue::{Envelope, QueueId, Spool, SpoolError, SpoolFailure};
use crate::submission::{self, Trace};

/// A message that passed every check of the session and only needs to be made durable.
#[derive(Debug)]
pub struct Accepted {
    pub user: Arc<User>,
    /// The client's EHLO or HELO name.
    pub helo: String,
    /// MAIL FROM, without angle brackets.
    pub sender: String,
    pub recipients: Vec<String>,
    /// MAIL FROM carried SMTPUTF8 (RFC 6531): pass it on.
    pub smtputf8: bool,
    /// MAIL FROM carried BODY=8BITMIME (RFC 6152): pass it on.
    pub eight_bit: bool,
    /// The message as received (dot-unstuffed / chunks joined), without submitd's headers.
    pub message: Vec<u8>,
    /// The domain of the From address the header check passed: the only domain DKIM may sign
    /// for.
    pub from_domain: Option<String>,
}

/// Why a message was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// A DKIM key matched the From domain but signing failed: not stored, so that it is never
    /// sent unsigned (`451 4.3.0`, the client tries again).
    #[error(transparent)]
    Dkim(#[from] DkimError),
    /// The spool write failed and left nothing behind (`451 4.3.0`, `452 4.3.1` when full).
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// Over the user's sending limits in the shared store (`450 4.7.1`): the replicas
    /// together reached them while this message was on its way.
    #[error("over the user's sending limits across the replicas")]
    Limited(Refusal),
}

impl AcceptError {
    /// The refusal the client is told.
    pub fn refusal(&self) -> Refusal {
        match self {
            AcceptError::Dkim(_) => Refusal::DkimSigningFailed,
            AcceptError::Spool(e) => match e.failure() {
                SpoolFailure::DiskFull => Refusal::InsufficientStorage,
                SpoolFailure::WriteError => Refusal::QueueWrite,
            },
            AcceptError::Limited(refusal) => *refusal,
        }
    }
}

/// Everything admission needs, shared by the sessions of one server configuration.
#[derive(Clone)]
pub struct Intake {
    /// The name in the `Received:` header and in generated Message-IDs.
    pub hostname: String,
    /// `submission.received_client_ip`: the client address in `Received:`.
    pub received_client_ip: bool,
    pub spool: Spool,
    /// Announces committed messages to the queue scheduler.
    pub queue: QueueHandle,
    /// `[[dkim]]` keys, replaced as a whole on reload.
    pub dkim: SharedSigner,
    /// The per-user sending ledger (hour and day windows, automatic suspension).
    pub quota: Option<Arc<Quota>>,
    pub metrics: Arc<Metrics>,
}

impl Intake {
    /// With a shared store, count the message in the user's windows there before it is
    /// stored (all replicas, one limit); over them, it is refused.
    async fn admit(&self, accepted: &Accepted) -> Result<Option<Admission>, AcceptError> {
        let Some(quota) = &self.quota else {
            return Ok(None);
        };
        quota
            .admit(&accepted.user, accepted.recipients.len())
            .await
            .map_err(|refusal| {
                warn!(user = %Escaped(&accepted.user.login), "message refused: over the sending limits across the replicas");
                AcceptError::Limited(match refusal {
                    QuotaRefusal::Recipients => Refusal::RecipientRateLimited,
                    QuotaRefusal::Suspended => Refusal::Suspended,
                    QuotaRefusal::Messages => Refusal::MessageRateLimited,
                })
            })
    }

    /// Prepare, sign, store and announce one message; its queue ID once it is durable.
    pub async fn accept(&self, accepted: Accepted, client: IpAddr) -> Result<QueueId, AcceptError> {
        let id = QueueId::generate();
        let now = time::OffsetDateTime::now_utc();
        let message = submission::prepend_headers(
            &accepted.message,
            &Trace {
                helo: &accepted.helo,
                client_ip: self.received_client_ip.then_some(client),
                hostname: &self.hostname,
                queue_id: id.as_str(),
                smtputf8: accepted.smtputf8,
                now,
            },
        );
        let message = self
            .dkim
            .sign(message, accepted.from_domain.clone())
            .await
            .inspect_err(|e| {
                tracing::error!(error = %e, "DKIM signing failed; message refused with 451");
            })?;
        let mut envelope = Envelope::new(
            &id,
            &accepted.user.login,
            &accepted.sender,
            &accepted.recipients,
            &accepted.helo,
            now.unix_timestamp().max(0) as u64,
        );
        envelope.smtputf8 = accepted.smtputf8;
        envelope.eight_bit = accepted.eight_bit;
        envelope.size = message.len() as u64;
        let size = message.len();
        let admission = self.admit(&accepted).await?;
        if let Err(e) = self.spool.store(envelope, message).await {
            warn!(error = %e, user = %Escaped(&accepted.user.login), "queue write failed");
            if let (Some(quota), Some(a)) = (&self.quota, admission) {
                quota
                    .release(&accepted.user, accepted.recipients.len(), a)
                    .await;
            }
            return Err(e.into());
        }
        info!(
            queue_id = %id,
            user = %Escaped(&accepted.user.login),
            from = %Escaped(&accepted.sender),
            size,
            rcpts = accepted.recipients.len(),
            "queued"
        );
        self.metrics.message_accepted(size);
        self.queue.notify(id.clone());
        if let Some(quota) = &self.quota {
            quota
                .queued(&accepted.user, accepted.recipients.len())
                .await;
        }
        Ok(id)
    }
}
