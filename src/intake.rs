//! Message admission: from the first octet of a message's data to the `250`.
//!
//! The content goes to the spool as it arrives: [`Intake::begin`] opens a [`Draft`] (the
//! message's queue file, not yet committed) and the session driver [`Draft::write`]s each
//! piece the session hands out, off the reactor, so that no session holds a message whole.
//! Once the session has checked the message (sender binding, size, hops, From),
//! [`Intake::accept`] carries it through four steps, in order:
//!
//! 1. **prepare**: the headers an MSA adds (RFC 6409 section 8: `Received:`, and `Date:` and
//!    `Message-ID:` when missing), `submission::trace_headers`, kept in the envelope's
//!    `prefix` (they go out in front of the stored content);
//! 2. **sign**: DKIM, for the From domain the header check passed and no other, off the
//!    reactor (`dkim::SharedSigner`); the signature joins the prefix;
//! 3. **store**: commit the draft (envelope record, file fsync, rename, directory fsync,
//!    `queue::SpoolWriter::commit`); a failure removes the file;
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
use crate::dsn::{self, RcptParams, Ret};
use crate::logsafe::Escaped;
use crate::metrics::Metrics;
use crate::outcome::Refusal;
use crate::queue::scheduler::QueueHandle;
use crate::queue::spool::SpoolWriter;
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
    /// The DSN parameters (RFC 3461) of each of `recipients`, in the same order.
    pub rcpt_params: Vec<RcptParams>,
    /// MAIL FROM carried SMTPUTF8 (RFC 6531): pass it on.
    pub smtputf8: bool,
    /// MAIL FROM carried BODY=8BITMIME (RFC 6152): pass it on.
    pub eight_bit: bool,
    /// MAIL FROM's `RET=` (RFC 3461 section 4.3).
    pub ret: Option<Ret>,
    /// MAIL FROM's `ENVID=`, as written (xtext).
    pub envid: Option<String>,
    /// MAIL FROM carried REQUIRETLS (RFC 8689).
    pub requiretls: bool,
    /// The message's header section as received (through the empty line that ends it; the
    /// whole message when it has no body), at most `limits.max_header_size` octets. The whole
    /// content, this included, went to the [`Draft`].
    pub headers: Vec<u8>,
    /// The domain of the From address the header check passed: the only domain DKIM may sign
    /// for.
    pub from_domain: Option<String>,
    /// Where the message came from beyond SMTP (a key's owner, the HTTP API, its metadata
    /// and suppressed recipients): stored in [`Envelope::origin`]. `None` for plain SMTP.
    pub origin: Option<Box<crate::queue::spool::Origin>>,
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

    /// Open the queue file of a new message, off the reactor.
    pub async fn begin(&self) -> Result<Draft, AcceptError> {
        let spool = self.spool.clone();
        let writer = tokio::task::spawn_blocking(move || spool.create(&QueueId::generate()))
            .await
            .map_err(|e| SpoolError::Task(e.to_string()))?
            .inspect_err(|e| warn!(error = %e, "queue write failed"))?;
        Ok(Draft {
            writer: Some(writer),
            memory: None,
            error: None,
            written: 0,
            pass: None,
            pass_decided: false,
        })
    }

    /// Prepare, sign, store and announce one message whose content is in `draft`; its queue
    /// ID once it is durable.
    pub async fn accept(
        &self,
        accepted: Accepted,
        mut draft: Draft,
        client: IpAddr,
    ) -> Result<QueueId, AcceptError> {
        let content = match (draft.writer.take(), draft.memory.take(), draft.error.take()) {
            (_, _, Some(e)) => {
                warn!(error = %e, user = %Escaped(&accepted.user.login), "queue write failed");
                return Err(e.into());
            }
            (Some(w), _, None) => Content::File(w),
            (None, Some((id, bytes)), None) => Content::Memory(id, bytes),
            (None, None, None) => {
                return Err(SpoolError::Task("message already committed".into()).into());
            }
        };
        let id = content.id().clone();
        let now = time::OffsetDateTime::now_utc();
        let trace = submission::trace_headers(
            &accepted.headers,
            &Trace {
                helo: &accepted.helo,
                client_ip: self.received_client_ip.then_some(client),
                hostname: &self.hostname,
                queue_id: id.as_str(),
                smtputf8: accepted.smtputf8,
                now,
                http: accepted.origin.as_ref().is_some_and(|o| o.http),
            },
        );
        let (content, prefix) = self
            .sign(
                content,
                draft.pass.take(),
                trace,
                &accepted.headers,
                accepted.from_domain.as_deref(),
            )
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
        envelope.prefix = prefix;
        envelope.origin = accepted.origin.clone();
        set_dsn(&mut envelope, &accepted);
        let admission = self.admit(&accepted).await?;
        let spool = self.spool.clone();
        let committed = tokio::task::spawn_blocking(move || content.commit(&spool, envelope))
            .await
            .map_err(|e| SpoolError::Task(e.to_string()))
            .and_then(|r| r);
        let size = match committed {
            Ok(envelope) => envelope.size as usize,
            Err(e) => {
                warn!(error = %e, user = %Escaped(&accepted.user.login), "queue write failed");
                if let (Some(quota), Some(a)) = (&self.quota, admission) {
                    quota
                        .release(&accepted.user, accepted.recipients.len(), a)
                        .await;
                }
                return Err(e.into());
            }
        };
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

    /// The prefix: DKIM signatures for `domain` (when a key is for it) over `trace`, the
    /// header section and the body, then `trace`. Hands the content back for the commit.
    async fn sign(
        &self,
        content: Content,
        in_pass: Option<BodyPass>,
        trace: String,
        headers: &[u8],
        domain: Option<&str>,
    ) -> Result<(Content, String), AcceptError> {
        let body_start = headers.len();
        // The hash made while the content was written, when it was made for this message's
        // From domain and header section (always, unless the header section ended after the
        // first piece was written or a reload came in between).
        let in_pass = in_pass
            .filter(|p| Some(p.hasher.domain()) == domain && p.body_start == body_start as u64);
        let mut section = trace.clone().into_bytes();
        section.extend_from_slice(headers);
        let (content, signatures) = match (in_pass, self.dkim.body_hasher(domain)) {
            (_, None) => return Ok((content, trace)),
            (Some(pass), Some(_)) => {
                let signed = self
                    .dkim
                    .sign_header_section(section, pass.hasher.finish())
                    .await?;
                (content, signed)
            }
            (None, Some(mut hasher)) => match content {
                // Hashed and signed in one blocking task: the body hash is CPU time, kept
                // off the reactor.
                Content::Memory(id, bytes) => {
                    let done = tokio::task::spawn_blocking(move || {
                        hasher.update(bytes.get(body_start..).unwrap_or_default());
                        let signed = hasher.finish().sign(&section);
                        (bytes, signed)
                    })
                    .await
                    .map_err(|e| DkimError::Task(e.to_string()))?;
                    (Content::Memory(id, done.0), done.1?)
                }
                Content::File(writer) => {
                    let (writer, hashed) = hash_file(writer, hasher, body_start as u64).await?;
                    let hashes = hashed.map_err(|e| SpoolError::Io {
                        path: self.spool.dir().to_path_buf(),
                        step: "read back",
                        source: e,
                    })?;
                    let signed = self.dkim.sign_header_section(section, hashes).await?;
                    (Content::File(writer), signed)
                }
            },
        };
        let mut prefix = String::from_utf8_lossy(&signatures).into_owned();
        prefix.push_str(&trace);
        Ok((content, prefix))
    }

    /// A draft for a message whose whole content arrived before it needed a file (at most
    /// one piece): no IO now; [`Intake::accept`] writes and commits it in one blocking task.
    pub fn in_memory(&self, content: Vec<u8>) -> Draft {
        Draft {
            writer: None,
            memory: Some((QueueId::generate(), content)),
            error: None,
            written: 0,
            pass: None,
            pass_decided: true,
        }
    }
}

impl Draft {
    /// The queue ID the message will have once committed.
    pub fn id(&self) -> Option<&QueueId> {
        match (&self.writer, &self.memory) {
            (Some(w), _) => Some(w.id()),
            (None, Some((id, _))) => Some(id),
            (None, None) => None,
        }
    }
}

/// Hash the stored body for DKIM from the file in bounded pieces (page cache, no second copy
/// of the message in memory), off the reactor.
async fn hash_file(
    writer: SpoolWriter,
    mut hasher: crate::dkim::BodyHasher,
    body_start: u64,
) -> Result<(SpoolWriter, std::io::Result<crate::dkim::BodyHashes>), AcceptError> {
    let done = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; DKIM_READ_PIECE];
        let mut pos = body_start;
        let result = loop {
            match writer.read_content_at(pos, &mut buf) {
                Ok(0) => break Ok(hasher.finish()),
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    pos += n as u64;
                }
                Err(e) => break Err(e),
            }
        };
        (writer, result)
    })
    .await
    .map_err(|e| SpoolError::Task(e.to_string()))?;
    Ok(done)
}

/// Where an accepted message's content is until the commit.
enum Content {
    /// Written to its queue file as it arrived.
    File(SpoolWriter),
    /// Small enough to have stayed in memory: written with the commit.
    Memory(QueueId, Vec<u8>),
}

impl Content {
    fn id(&self) -> &QueueId {
        match self {
            Content::File(w) => w.id(),
            Content::Memory(id, _) => id,
        }
    }

    /// The commit ([`SpoolWriter::commit`]), after writing the content when it is in memory.
    /// Blocks.
    fn commit(self, spool: &Spool, envelope: Envelope) -> Result<Envelope, SpoolError> {
        match self {
            Content::File(writer) => writer.commit(envelope),
            Content::Memory(id, bytes) => {
                let mut writer = spool.create(&id)?;
                writer.write(&bytes)?;
                writer.commit(envelope)
            }
        }
    }
}

/// Octets of body read back per step when hashing it for DKIM.
const DKIM_READ_PIECE: usize = 256 << 10;

/// A message being received: its queue file, written as the data arrives and committed by
/// [`Intake::accept`]. Dropped without a commit, the file is removed.
#[derive(Debug)]
pub struct Draft {
    writer: Option<SpoolWriter>,
    /// A small message's ID and whole content, not yet on disk ([`Intake::in_memory`]).
    memory: Option<(QueueId, Vec<u8>)>,
    /// The first failed write: later pieces are dropped, and accepting reports it (`451`, or
    /// `452` when the disk is full) once the client has sent the whole message.
    error: Option<SpoolError>,
    /// Octets of content written so far.
    written: u64,
    /// The DKIM body hash, made as the pieces are written (see [`Draft::hash_body`]).
    pass: Option<BodyPass>,
    /// Whether [`Draft::hash_body`] made its choice (it looks once).
    pass_decided: bool,
}

/// A body hash made while the content is written: the body is hashed from the same buffer,
/// in the same blocking task, as it goes to the queue file, rather than read back afterwards.
#[derive(Debug)]
struct BodyPass {
    /// Where the body starts: the length of the header section.
    body_start: u64,
    hasher: crate::dkim::BodyHasher,
}

impl BodyPass {
    /// Hash the body octets of a piece written at `offset`.
    fn update(&mut self, offset: u64, piece: &[u8]) {
        let skip = self.body_start.saturating_sub(offset);
        if let Some(body) = piece.get(usize::try_from(skip).unwrap_or(usize::MAX)..) {
            self.hasher.update(body);
        }
    }
}

impl Draft {
    /// Start hashing the body for DKIM as it is written, once the header section is known
    /// and before any of the body was written: when a key signs for the From domain that
    /// `user` may use. Looks once per message; the header checks at the end of the message
    /// stay what decides, and [`Intake::accept`] uses this hash only for the same domain and
    /// header section (otherwise it reads the body back, as for a message whose header
    /// section ended in a later piece).
    pub fn hash_body(&mut self, intake: &Intake, header_section: &[u8], user: &User) {
        if std::mem::replace(&mut self.pass_decided, true)
            || self.writer.is_none()
            || self.written > header_section.len() as u64
            || intake.dkim.current().is_empty()
        {
            return;
        }
        let Ok(checked) = submission::check_from(header_section, &user.senders) else {
            return;
        };
        self.pass = intake
            .dkim
            .body_hasher(checked.domain.as_deref())
            .map(|hasher| BodyPass {
                body_start: header_section.len() as u64,
                hasher,
            });
    }

    /// Whether [`Draft::hash_body`] still wants a look at the header section.
    pub fn wants_header_section(&self) -> bool {
        !self.pass_decided
    }

    /// Append a piece of content, off the reactor. Returns the buffer, emptied, for reuse.
    pub async fn write(&mut self, mut piece: Vec<u8>) -> Vec<u8> {
        let Some(mut writer) = self.writer.take() else {
            piece.clear();
            return piece;
        };
        let mut pass = self.pass.take();
        let offset = self.written;
        self.written += piece.len() as u64;
        let done = tokio::task::spawn_blocking(move || {
            // Hashed while the piece is still in the cache, then written.
            if let Some(pass) = &mut pass {
                pass.update(offset, &piece);
            }
            let result = writer.write(&piece);
            piece.clear();
            // A failed writer is dropped here, off the reactor (drop removes its file).
            (result.is_ok().then_some(writer), piece, result, pass)
        })
        .await;
        match done {
            Ok((writer, piece, result, pass)) => {
                self.writer = writer;
                self.pass = pass;
                if let Err(e) = result {
                    self.error.get_or_insert(e);
                }
                piece
            }
            Err(e) => {
                self.error.get_or_insert(SpoolError::Task(e.to_string()));
                Vec::new()
            }
        }
    }
}

impl Drop for Draft {
    fn drop(&mut self) {
        // Removing the file blocks: off the reactor when there is one.
        if let Some(writer) = self.writer.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn_blocking(move || drop(writer));
        }
    }
}

/// The DSN and REQUIRETLS parameters of the submission into its envelope. `TLS-Required: No`
/// counts only without the REQUIRETLS parameter, which wins (RFC 8689 section 5).
fn set_dsn(envelope: &mut Envelope, accepted: &Accepted) {
    envelope.ret = accepted.ret;
    envelope.envid = accepted.envid.clone();
    envelope.requiretls = accepted.requiretls;
    envelope.tls_optional = !accepted.requiretls && dsn::tls_required_no(&accepted.headers);
    for (r, p) in envelope.recipients.iter_mut().zip(&accepted.rcpt_params) {
        r.notify = p.notify;
        r.orcpt = p.orcpt.clone();
    }
}
