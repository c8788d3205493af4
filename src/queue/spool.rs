//! The durable spool: a message is acknowledged only after its file and the directory entry
//! are on disk (temp file, write, fsync, rename, directory fsync). One file per message,
//! `ID.q` ([`super::qfile`] has the layout). Every write goes through a [`SpoolIo`]
//! ([`super::fsio`]). All calls here block; async callers use `spawn_blocking`.
//!
//! # Start-up and quarantine
//!
//! [`Spool::open`] does only directory work, so that a large queue never delays the
//! listeners: it removes what an interrupted write left (`*.tmp`) and migrates a version 1
//! queue ([`super::migrate`]). Whoever reads an entry first (the scheduler's start-up load)
//! asks [`Spool::check`] and moves an entry that cannot be delivered as it is into
//! `quarantine/` (mode 0700) beside the queue with [`Spool::quarantine_entry`], logged at
//! error level: a file without a valid header or record, a record that does not parse, has
//! another version or names another ID, content shorter than the record says. They are kept,
//! not deleted: an operator may repair one and move it back. Nothing else looks inside
//! `quarantine/` (listing takes only `ID.q` files at the top level and in `deferred/`).
//!
//! # Where a message is
//!
//! A message is committed as `ID.q` in the queue directory. One that waits for a later attempt
//! moves to `deferred/XY/ID.q` ([`DEFERRED_DIR`], [`Spool::move_to_deferred`]), and never back:
//! every lookup tries the top directory first and then that one, so it finds a message that
//! moves meanwhile.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::fsio::{RealIo, SpoolIo};
use super::id::QueueId;
use super::qfile::{self, ReadAt};
use crate::dsn::{Notify, Ret};

/// The queue format version written by this build.
pub const FORMAT_VERSION: u32 = qfile::VERSION;

/// The suffix of a committed queue file, `ID.q`.
pub const SUFFIX: &str = ".q";

/// Where start-up moves queue entries that cannot be delivered, inside the queue directory.
pub const QUARANTINE_DIR: &str = "quarantine";

/// Where messages that wait for a later attempt are kept, inside the queue directory, in 256
/// subdirectories named after the last two hex digits of the ID (`deferred/D1/ID.q`): new
/// mail is created, renamed and removed in the top directory, which stays small however many
/// messages wait (a directory of a million entries makes each of those operations, and each
/// directory fsync, costlier). Postfix keeps its deferred queue apart, hashed, for the same
/// reason.
pub const DEFERRED_DIR: &str = "deferred";

/// The envelope of one queued message: the current record of its `ID.q`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Always [`FORMAT_VERSION`] when written by this build.
    pub version: u32,
    pub id: String,
    /// The authenticated login that submitted the message.
    pub user: String,
    /// MAIL FROM, without angle brackets; empty for the null sender (bounces).
    pub sender: String,
    pub recipients: Vec<Recipient>,
    /// Unix seconds when the message was accepted.
    pub received_at: u64,
    /// The client's EHLO name.
    pub helo: String,
    /// Submitted with the SMTPUTF8 parameter (RFC 6531): pass it on.
    #[serde(default)]
    pub smtputf8: bool,
    /// Submitted with BODY=8BITMIME (RFC 6152): pass it on.
    #[serde(default)]
    pub eight_bit: bool,
    /// Size of the message as relayed (`prefix` and content) in octets.
    pub size: u64,
    /// The header fields submitd adds in front of the submitted content when relaying it
    /// (`Received:`, `Date:` and `Message-ID:` when missing, `DKIM-Signature:`), CRLF-ended.
    /// Kept here rather than in the content so that the content is stored as it arrives.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// Octets of submitted content in the file, after the header.
    #[serde(default)]
    pub content_len: u64,
    /// On hold (`submitd queue hold`): the scheduler makes no attempt until it is released.
    /// Absent (false) in files written before holds existed, and left out when false so that
    /// an older build still reads the file.
    #[serde(default, skip_serializing_if = "is_false")]
    pub held: bool,
    /// `RET=` of MAIL FROM (RFC 3461 section 4.3). This and the following fields are absent
    /// from files written before the DSN extension, and left out when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<Ret>,
    /// `ENVID=` of MAIL FROM, as written (xtext, at most 100 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
    /// Submitted with REQUIRETLS (RFC 8689): relayed only over verified TLS to a next hop that
    /// offers REQUIRETLS.
    #[serde(default, skip_serializing_if = "is_false")]
    pub requiretls: bool,
    /// The message says `TLS-Required: No` (RFC 8689 section 5) and has no REQUIRETLS: the
    /// destination's TLS policy may fall back to opportunistic TLS.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tls_optional: bool,
    /// Who the message is for in the application layer (issue 16): tenant, HTTP API,
    /// metadata. Absent for a plain SMTP submission by a user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Box<Origin>>,
}

/// The application side of a message ([`Envelope::origin`]): whose suppression list and
/// webhooks apply, how it came in, and what the caller asked to be carried into events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// The tenant ([`crate::auth::users::User::tenant`]) when it is not [`Envelope::user`]
    /// (a key with an owner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Submitted over the HTTP API (`POST /v1/messages`), not SMTP.
    #[serde(default, skip_serializing_if = "is_false")]
    pub http: bool,
    /// The caller's `metadata` (a bounded string map), carried into webhook events.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Recipients the caller named that were on the tenant's suppression list at submission:
    /// never attempted, reported as `suppressed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppressed: Vec<String>,
}

impl Envelope {
    /// The tenant: [`Origin::owner`] when set, else [`Envelope::user`].
    pub fn tenant(&self) -> &str {
        self.origin
            .as_ref()
            .and_then(|o| o.owner.as_deref())
            .unwrap_or(&self.user)
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Why bytes are not an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("{0}")]
    Syntax(String),
    #[error("unsupported version {0}")]
    Version(u32),
}

impl Envelope {
    /// A new message's envelope: every recipient pending, 7-bit, not held; `size` 0 until the
    /// caller sets it (and `smtputf8`, `eight_bit`) from the message it stores.
    pub fn new(
        id: &QueueId,
        user: &str,
        sender: &str,
        recipients: &[String],
        helo: &str,
        received_at: u64,
    ) -> Envelope {
        Envelope {
            version: FORMAT_VERSION,
            id: id.to_string(),
            user: user.to_string(),
            sender: sender.to_string(),
            recipients: recipients.iter().map(Recipient::pending).collect(),
            received_at,
            helo: helo.to_string(),
            smtputf8: false,
            eight_bit: false,
            size: 0,
            prefix: String::new(),
            content_len: 0,
            held: false,
            ret: None,
            envid: None,
            requiretls: false,
            tls_optional: false,
            origin: None,
        }
    }

    /// Unix seconds when the next delivery attempt is due: 0 while a recipient is pending,
    /// else the earliest deferred recipient's next attempt; `None` when every recipient is
    /// delivered or failed (the message is done).
    pub fn next_due(&self) -> Option<u64> {
        self.recipients
            .iter()
            .filter_map(|r| match r.state {
                RecipientState::Pending => Some(0),
                RecipientState::Deferred => Some(r.next_attempt.unwrap_or(0)),
                RecipientState::Delivered | RecipientState::Failed => None,
            })
            .min()
    }

    /// When the scheduler should attempt the message: [`Envelope::next_due`], but never while
    /// it is held.
    pub fn attempt_due(&self) -> Option<u64> {
        if self.held { None } else { self.next_due() }
    }

    /// Parse an envelope record: JSON of this format version whose sizes agree. Pure; never
    /// panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let envelope: Envelope =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Syntax(e.to_string()))?;
        if envelope.version != FORMAT_VERSION {
            return Err(EnvelopeError::Version(envelope.version));
        }
        if Some(envelope.size)
            != envelope
                .content_len
                .checked_add(envelope.prefix.len() as u64)
        {
            return Err(EnvelopeError::Syntax(format!(
                "size {} is not prefix {} + content {}",
                envelope.size,
                envelope.prefix.len(),
                envelope.content_len
            )));
        }
        Ok(envelope)
    }

    /// A version 1 `ID.env` (the two-file format), as the version 2 envelope of the same
    /// message: its `ID.msg` becomes the content, with nothing in front.
    pub fn from_v1_bytes(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let mut envelope: Envelope =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Syntax(e.to_string()))?;
        if envelope.version != 1 {
            return Err(EnvelopeError::Version(envelope.version));
        }
        envelope.version = FORMAT_VERSION;
        envelope.prefix.clear();
        envelope.content_len = envelope.size;
        Ok(envelope)
    }

    /// The record's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain data with string keys: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// One recipient and where its delivery stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipient {
    pub address: String,
    pub state: RecipientState,
    #[serde(default)]
    pub attempts: u32,
    /// Unix seconds of the next attempt, for deferred recipients.
    #[serde(default)]
    pub next_attempt: Option<u64>,
    /// The last reply or error seen for this recipient.
    #[serde(default)]
    pub last_reply: Option<String>,
    /// `NOTIFY=` of RCPT TO (RFC 3461 section 4.1); absent from older files and when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    /// `ORCPT=` of RCPT TO, as written (`addr-type;xtext`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<String>,
    /// A delay DSN was sent for this recipient (`queue.delay_warning`): never a second one.
    #[serde(default, skip_serializing_if = "is_false")]
    pub warned: bool,
}

impl Recipient {
    /// A recipient not yet tried.
    pub fn pending(address: impl Into<String>) -> Recipient {
        Recipient {
            address: address.into(),
            state: RecipientState::Pending,
            attempts: 0,
            next_attempt: None,
            last_reply: None,
            notify: None,
            orcpt: None,
            warned: false,
        }
    }
}

/// Delivery state of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientState {
    Pending,
    Deferred,
    Delivered,
    Failed,
}

/// Why the spool could not take or give a message.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{path}: {step}: {source}")]
    Io {
        path: PathBuf,
        step: &'static str,
        source: io::Error,
    },
    #[error("{path}: invalid queue file: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("spool task failed: {0}")]
    Task(String),
}

/// How a failed store is reported to the client: `452 4.3.1` when the disk is full (ENOSPC,
/// EDQUOT), `451 4.3.0` for anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolFailure {
    WriteError,
    DiskFull,
}

impl SpoolError {
    /// The client-visible class of this error.
    pub fn failure(&self) -> SpoolFailure {
        match self {
            SpoolError::Io { source, .. }
                if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) =>
            {
                SpoolFailure::DiskFull
            }
            _ => SpoolFailure::WriteError,
        }
    }
}

/// The queue directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    io: Arc<dyn SpoolIo>,
    /// [`DEFERRED_DIR`] subdirectories with removals not yet fsynced ([`Spool::sync`]).
    unsynced: Arc<std::sync::Mutex<std::collections::BTreeSet<PathBuf>>>,
}

pub(super) fn io_err<'a>(
    path: &'a Path,
    step: &'static str,
) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        step,
        source,
    }
}

/// Create the queue directory when missing: missing parents with the default mode (umask),
/// the queue directory itself 0700 (DESIGN.md).
pub(super) fn create_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        other => other,
    }
}

/// The queue ID a committed queue file is named after (`ID.q`), if `name` is one.
pub fn id_of_file_name(name: &str) -> Option<QueueId> {
    name.strip_suffix(SUFFIX).and_then(QueueId::parse)
}

impl Spool {
    /// The spool with its directory and writer, nothing done on disk: [`Spool::open`]
    /// (`super::startup`) prepares the directory first.
    pub(super) fn with_io(dir: &Path, io: Arc<dyn SpoolIo>) -> Spool {
        Spool {
            dir: dir.to_path_buf(),
            io,
            unsynced: Arc::default(),
        }
    }

    /// The queue directory as it is, without start-up cleanup: for the `queue` commands, which
    /// run beside a live server whose half-written files must not be touched.
    pub fn attach(dir: &Path) -> Spool {
        Spool {
            dir: dir.to_path_buf(),
            io: Arc::new(RealIo),
            unsynced: Arc::default(),
        }
    }

    /// The queue directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What every write goes through.
    pub(super) fn io(&self) -> &dyn SpoolIo {
        &*self.io
    }

    /// Where damaged entries are moved.
    pub fn quarantine_dir(&self) -> PathBuf {
        self.dir.join(QUARANTINE_DIR)
    }

    /// Path of a message's queue file: `ID.q` in the top directory, or in its
    /// [`DEFERRED_DIR`] subdirectory when it is there (the top path when it is in neither).
    pub fn path(&self, id: &QueueId) -> PathBuf {
        let top = self.top_path(id);
        if fs::symlink_metadata(&top).is_err() {
            let deferred = self.deferred_path(id);
            if fs::symlink_metadata(&deferred).is_ok() {
                return deferred;
            }
        }
        top
    }

    /// `ID.q` in the top directory: where a message is committed.
    fn top_path(&self, id: &QueueId) -> PathBuf {
        self.dir.join(format!("{id}{SUFFIX}"))
    }

    /// The [`DEFERRED_DIR`] subdirectory for `id`.
    fn deferred_dir(&self, id: &QueueId) -> PathBuf {
        let text = id.as_str();
        let hash = &text[text.len().saturating_sub(2)..];
        self.dir.join(DEFERRED_DIR).join(hash)
    }

    /// `deferred/XY/ID.q`: where a message waits for a later attempt.
    fn deferred_path(&self, id: &QueueId) -> PathBuf {
        self.deferred_dir(id).join(format!("{id}{SUFFIX}"))
    }

    /// Open a message's queue file wherever it is. A message only ever moves from the top
    /// directory into [`DEFERRED_DIR`] (a link there first, then the top name removed), so
    /// looking at the top first and then there never misses it while it moves.
    fn open_located(&self, id: &QueueId) -> Result<(PathBuf, File), SpoolError> {
        let top = self.top_path(id);
        match File::open(&top) {
            Ok(file) => Ok((top, file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let deferred = self.deferred_path(id);
                match File::open(&deferred) {
                    Ok(file) => Ok((deferred, file)),
                    // Named after the top path, as before messages moved.
                    Err(e) => Err(io_err(&top, "open")(e)),
                }
            }
            Err(e) => Err(io_err(&top, "open")(e)),
        }
    }

    /// Call `f` on each directory queue files are in: the top one first, then each
    /// [`DEFERRED_DIR`] subdirectory, listed only once `f` is done with the top one. Messages
    /// move only from the top into a subdirectory, created before the move: so one that was
    /// not in the top directory when `f` read it is in a subdirectory that is then listed, and
    /// a listing never misses a message that moves while it runs.
    pub fn visit_dirs(
        &self,
        mut f: impl FnMut(&Path) -> Result<(), SpoolError>,
    ) -> Result<(), SpoolError> {
        f(&self.dir)?;
        let deferred = self.dir.join(DEFERRED_DIR);
        let entries = match fs::read_dir(&deferred) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&deferred, "read directory")(e)),
        };
        let mut subdirs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&deferred, "read directory"))?;
            let name = entry.file_name();
            let hashed = name
                .to_str()
                .is_some_and(|n| n.len() == 2 && n.bytes().all(|b| b.is_ascii_hexdigit()));
            if hashed {
                subdirs.push(entry.path());
            }
        }
        subdirs.sort();
        subdirs.iter().try_for_each(|dir| f(dir))
    }

    /// Move a message that waits for a later attempt into its [`DEFERRED_DIR`] subdirectory
    /// (nothing to do when it is there already). Needs the message's lock. The new name is
    /// linked and its directory fsynced before the top name goes, so a crash at any point
    /// leaves the message under one name or both (the same file twice: listed once, and
    /// [`Spool::remove`] removes both), never under none.
    pub fn move_to_deferred(&self, id: &QueueId, _lock: &MessageLock) -> Result<(), SpoolError> {
        let top = self.top_path(id);
        let dir = self.deferred_dir(id);
        let dst = dir.join(format!("{id}{SUFFIX}"));
        let io = &*self.io;
        match io.link(&top, &dst) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if fs::symlink_metadata(&top).is_err() {
                    // Not in the top directory: moved (or removed) already.
                    return Ok(());
                }
                self.create_deferred_dir(&dir)?;
                match io.link(&top, &dst) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err(&dst, "link")(e)),
                }
            }
            Err(e) => return Err(io_err(&dst, "link")(e)),
        }
        io.sync_dir(&dir).map_err(io_err(&dir, "fsync directory"))?;
        // Not fsynced: should the removal be lost, the file has two names until it is removed.
        match io.remove(&top) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&top, "remove")(e)),
        }
    }

    /// Create `deferred/` and `deferred/XY/` (mode 0700) and make the new entries durable.
    fn create_deferred_dir(&self, dir: &Path) -> Result<(), SpoolError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir, "create directory"))?;
        let parent = self.dir.join(DEFERRED_DIR);
        self.io
            .sync_dir(&parent)
            .map_err(io_err(&parent, "fsync directory"))?;
        self.sync_dir()
    }

    /// Path of a message's queue file while it is written, `ID.q.tmp`.
    fn temp_path(&self, id: &QueueId) -> PathBuf {
        self.dir.join(format!("{id}{SUFFIX}.tmp"))
    }

    /// Why a committed entry cannot be delivered as it is; `None` when it is fine, or when it
    /// cannot be read right now (an IO error is not proof of garbage).
    pub fn check(&self, id: &QueueId) -> Option<String> {
        match self.load_envelope(id) {
            Ok(_) => None,
            Err(SpoolError::Invalid { message, .. }) => Some(message),
            Err(e) => {
                tracing::warn!(queue_id = %id, error = %e, "queue: cannot read queue file");
                None
            }
        }
    }

    /// Move a message's queue file into [`QUARANTINE_DIR`], logged with `reason`.
    pub fn quarantine_entry(&self, id: &QueueId, reason: &str) -> Result<(), SpoolError> {
        self.quarantine(&[self.path(id)], id, reason)
    }

    /// Move `paths` (one queue entry's files) into [`QUARANTINE_DIR`], in order.
    pub(super) fn quarantine(
        &self,
        paths: &[PathBuf],
        id: &QueueId,
        reason: &str,
    ) -> Result<(), SpoolError> {
        let qdir = self.quarantine_dir();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&qdir)
            .map_err(io_err(&qdir, "create directory"))?;
        for path in paths {
            let Some(name) = path.file_name() else {
                continue;
            };
            match self.io.rename(path, &qdir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(path, "quarantine")(e)),
            }
        }
        let _ = self.io.sync_dir(&qdir);
        let _ = self.io.sync_dir(&self.dir);
        for path in paths {
            if let Some(parent) = path.parent().filter(|p| *p != self.dir) {
                let _ = self.io.sync_dir(parent);
            }
        }
        tracing::error!(
            queue_id = %id,
            reason,
            dir = %qdir.display(),
            "queue: damaged queue entry moved to quarantine"
        );
        Ok(())
    }

    /// Start writing a new message: `ID.q.tmp` with the header, content to follow through
    /// [`SpoolWriter::write`], committed by [`SpoolWriter::commit`].
    pub fn create(&self, id: &QueueId) -> Result<SpoolWriter, SpoolError> {
        let tmp = self.temp_path(id);
        let io = &*self.io;
        let mut file = io.create(&tmp).map_err(io_err(&tmp, "create"))?;
        let mut writer = SpoolWriter {
            spool: self.clone(),
            id: id.clone(),
            tmp,
            file: None,
            written: 0,
        };
        io.write_all(&writer.tmp, &mut file, &qfile::header())
            .map_err(io_err(&writer.tmp, "write"))?;
        writer.file = Some(file);
        Ok(writer)
    }

    /// Store a message whose content is in memory (bounces, the queue tools, tests): the
    /// envelope's `prefix` goes in front of `message` when it is relayed. Returns once the
    /// file and the directory entry are fsynced; on error nothing of the message is left.
    ///
    /// Each writer runs its own directory fsync, concurrently with the others. A group commit
    /// (one fsync at a time covering every rename done while the previous one ran) was tried
    /// and measured with `examples/spool_bench.rs` (16 writers, 10 KB, ext4): it cut directory
    /// fsyncs from 1 per message to about 1 per 2.3, but gave no more messages per second
    /// under load and a third of the throughput on an idle disk. ext4's journal already
    /// merges concurrent fsyncs into one commit; serialising them in user space only made
    /// writers wait for a second commit.
    pub fn store_blocking(&self, envelope: &Envelope, message: &[u8]) -> Result<(), SpoolError> {
        let id = QueueId::parse(&envelope.id).ok_or_else(|| SpoolError::Invalid {
            path: self.dir.clone(),
            message: format!("bad queue id {:?}", envelope.id),
        })?;
        let mut writer = self.create(&id)?;
        writer.write(message)?;
        writer.commit(envelope.clone()).map(|_| ())
    }

    /// Record a message's new state: append its envelope as the current record and fsync. The
    /// caller holds the message's [`MessageLock`]. A failed or torn append leaves the previous
    /// record current. Returns the file's mtime after the append (what the scheduler's
    /// rescans compare), when the file system reports one.
    pub fn save_envelope(
        &self,
        envelope: &Envelope,
    ) -> Result<Option<std::time::SystemTime>, SpoolError> {
        let id = QueueId::parse(&envelope.id).ok_or_else(|| SpoolError::Invalid {
            path: self.dir.clone(),
            message: format!("bad queue id {:?}", envelope.id),
        })?;
        let io = &*self.io;
        // The top name first, then `deferred/` (as `open_located`): no stat before the open.
        let top = self.top_path(&id);
        let (path, mut file) = match io.open_append(&top) {
            Ok(file) => (top, file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let deferred = self.deferred_path(&id);
                match io.open_append(&deferred) {
                    Ok(file) => (deferred, file),
                    Err(e) => return Err(io_err(&top, "open")(e)),
                }
            }
            Err(e) => return Err(io_err(&top, "open")(e)),
        };
        let end = file.metadata().map_err(io_err(&path, "stat"))?.len();
        io.write_all(&path, &mut file, &qfile::record(end, &envelope.to_bytes()))
            .map_err(io_err(&path, "write"))?;
        io.sync(&path, &file).map_err(io_err(&path, "fsync"))?;
        Ok(file.metadata().and_then(|m| m.modified()).ok())
    }

    /// Read a message's current envelope.
    pub fn load_envelope(&self, id: &QueueId) -> Result<Envelope, SpoolError> {
        let (path, file) = self.open_located(id)?;
        read_envelope(&path, id, &file)
    }

    /// [`Spool::load_envelope`] with the file's mtime, taken from the open file before the
    /// record is read (a change after it shows as a newer mtime at the next rescan): one open
    /// and one stat per message for the scheduler's start-up load.
    pub fn load_envelope_stamped(
        &self,
        id: &QueueId,
    ) -> Result<(Envelope, Option<std::time::SystemTime>), SpoolError> {
        let (path, file) = self.open_located(id)?;
        let meta = file.metadata().map_err(io_err(&path, "stat"))?;
        let envelope = read_envelope_at(&path, id, &file, meta.len())?;
        Ok((envelope, meta.modified().ok()))
    }

    /// Open a message for relaying: its current envelope and its bytes.
    pub fn open_message(&self, id: &QueueId) -> Result<(Envelope, StoredMessage), SpoolError> {
        let (path, file) = self.open_located(id)?;
        let envelope = read_envelope(&path, id, &file)?;
        let message = StoredMessage {
            file,
            prefix: envelope.prefix.clone().into_bytes(),
            content_len: envelope.content_len,
            content: None,
        };
        Ok((envelope, message))
    }

    /// A message's bytes as relayed (prefix and content), whole in memory: for the queue tools
    /// and bounces of small messages; delivery streams through [`Spool::open_message`].
    pub fn load_message(&self, id: &QueueId) -> Result<Vec<u8>, SpoolError> {
        let path = self.path(id);
        let (_, message) = self.open_message(id)?;
        message.read_all().map_err(io_err(&path, "read"))
    }

    /// IDs of every committed message (`ID.q` at the top level and in [`DEFERRED_DIR`]),
    /// oldest first, each once.
    pub fn list(&self) -> Result<Vec<QueueId>, SpoolError> {
        let mut ids = Vec::new();
        self.visit_dirs(|dir| {
            for entry in fs::read_dir(dir).map_err(io_err(dir, "read directory"))? {
                let entry = entry.map_err(io_err(dir, "read directory"))?;
                if let Some(id) = entry.file_name().to_str().and_then(id_of_file_name) {
                    ids.push(id);
                }
            }
            Ok(())
        })?;
        ids.sort();
        ids.dedup();
        Ok(ids)
    }
}

/// The current envelope of the queue file `file` (at `path`, for message `id`), checked
/// against the file: right ID, content inside the file.
fn read_envelope(path: &Path, id: &QueueId, file: &File) -> Result<Envelope, SpoolError> {
    let meta = file.metadata().map_err(io_err(path, "stat"))?;
    read_envelope_at(path, id, file, meta.len())
}

/// [`read_envelope`] of a file known to be `len` octets long.
fn read_envelope_at(
    path: &Path,
    id: &QueueId,
    file: &File,
    len: u64,
) -> Result<Envelope, SpoolError> {
    let invalid = |message: String| SpoolError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let (at, json) = qfile::find_record(file, len).map_err(|e| match e {
        qfile::RecordError::Io(e) => io_err(path, "read")(e),
        other => invalid(other.to_string()),
    })?;
    let envelope = Envelope::from_bytes(&json).map_err(|e| invalid(format!("envelope: {e}")))?;
    if envelope.id != id.as_str() {
        return Err(invalid(format!(
            "envelope names another ID {:?}",
            envelope.id
        )));
    }
    if qfile::CONTENT_OFFSET.checked_add(envelope.content_len) > Some(at.offset) {
        return Err(invalid(format!(
            "content truncated: the record says {} octets",
            envelope.content_len
        )));
    }
    Ok(envelope)
}

/// A message being written to the spool: content in, then [`SpoolWriter::commit`]. Dropped
/// without a commit, its temp file is removed (nothing of it stays in the queue).
#[derive(Debug)]
pub struct SpoolWriter {
    spool: Spool,
    id: QueueId,
    tmp: PathBuf,
    /// `None` once committed or failed.
    file: Option<File>,
    written: u64,
}

impl SpoolWriter {
    /// The queue ID the message will have.
    pub fn id(&self) -> &QueueId {
        &self.id
    }

    /// Octets of content written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Append content. After an error the writer is spent: commit fails, drop removes it.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        let Some(file) = self.file.as_mut() else {
            return Err(spent(&self.tmp));
        };
        if let Err(e) = self.spool.io.write_all(&self.tmp, file, bytes) {
            self.file = None;
            return Err(io_err(&self.tmp, "write")(e));
        }
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Read back content written so far, at content offset `pos` (DKIM hashes the body from
    /// here); returns how many octets were read, 0 at the end.
    pub fn read_content_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        let Some(file) = self.file.as_ref() else {
            return Err(io::Error::other("spool writer is spent"));
        };
        let n = (self.written.saturating_sub(pos)).min(buf.len() as u64) as usize;
        std::os::unix::fs::FileExt::read_exact_at(
            file,
            &mut buf[..n],
            qfile::CONTENT_OFFSET + pos,
        )?;
        Ok(n)
    }

    /// Commit: append the first envelope record (with this content's sizes), fsync, rename to
    /// `ID.q`, fsync the directory. Returns the envelope as stored. Any failed step removes the
    /// file: a rename whose durability is not proven must not be acknowledged, and an entry
    /// left in place after a `451` would be delivered although the client was told it was not.
    pub fn commit(self, envelope: Envelope) -> Result<Envelope, SpoolError> {
        self.commit_into(envelope, false)
    }

    /// [`SpoolWriter::commit`] straight into the message's [`DEFERRED_DIR`] subdirectory:
    /// for offline tools that fill a queue with waiting messages (the benchmarks).
    pub fn commit_deferred(self, envelope: Envelope) -> Result<Envelope, SpoolError> {
        self.commit_into(envelope, true)
    }

    fn commit_into(
        mut self,
        mut envelope: Envelope,
        deferred: bool,
    ) -> Result<Envelope, SpoolError> {
        let Some(mut file) = self.file.take() else {
            return Err(spent(&self.tmp));
        };
        envelope.version = FORMAT_VERSION;
        envelope.id = self.id.to_string();
        envelope.content_len = self.written;
        envelope.size = self.written + envelope.prefix.len() as u64;
        let spool = self.spool.clone();
        let io = &*spool.io;
        let tmp = self.tmp.clone();
        let (path, dir) = if deferred {
            let dir = spool.deferred_dir(&self.id);
            if !dir.is_dir() {
                spool.create_deferred_dir(&dir)?;
            }
            (spool.deferred_path(&self.id), dir)
        } else {
            (spool.top_path(&self.id), spool.dir.clone())
        };
        let result = (|| {
            let at = qfile::CONTENT_OFFSET + self.written;
            io.write_all(&tmp, &mut file, &qfile::record(at, &envelope.to_bytes()))
                .map_err(io_err(&tmp, "write"))?;
            // A message the CLI queues as root must stay the server's.
            crate::fsown::keep_owner(&file, &path).map_err(io_err(&path, "keep owner"))?;
            io.sync(&tmp, &file).map_err(io_err(&tmp, "fsync"))?;
            drop(file);
            io.rename(&tmp, &path).map_err(io_err(&path, "rename"))?;
            io.sync_dir(&dir).map_err(io_err(&dir, "fsync directory"))
        })();
        match result {
            Ok(()) => {
                // Committed: nothing for drop to remove.
                self.tmp = PathBuf::new();
                Ok(envelope)
            }
            Err(e) => {
                let _ = io.remove(&path);
                let _ = io.sync_dir(&dir);
                Err(e)
            }
        }
    }
}

fn spent(path: &Path) -> SpoolError {
    SpoolError::Io {
        path: path.to_path_buf(),
        step: "write",
        source: io::Error::other("an earlier write to this message failed"),
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            self.file = None;
            let _ = self.spool.io.remove(&self.tmp);
        }
    }
}

/// A queued message opened for relaying: the envelope's prefix, then the content read from
/// the queue file in pieces, so that a large message is never held whole.
#[derive(Debug)]
pub struct StoredMessage {
    file: File,
    prefix: Vec<u8>,
    content_len: u64,
    /// The content, when [`StoredMessage::preload`] read it (small messages): reads then
    /// make no system call and need no blocking section.
    content: Option<Vec<u8>>,
}

impl StoredMessage {
    /// Octets of the message as relayed.
    pub fn len(&self) -> u64 {
        self.prefix.len() as u64 + self.content_len
    }

    /// Whether the message has no octets at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The header fields submitd puts in front of the content.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// Read the content into memory now when it is at most `limit` octets, so that relaying
    /// it blocks nowhere else (most messages are small: one read here, in the caller's
    /// blocking task, instead of blocking sections inside the SMTP conversation). Blocks.
    pub fn preload(&mut self, limit: u64) -> io::Result<()> {
        if self.content.is_some() || self.content_len > limit {
            return Ok(());
        }
        let mut content = vec![0u8; self.content_len as usize];
        self.file
            .read_exact_at(&mut content, qfile::CONTENT_OFFSET)?;
        self.content = Some(content);
        Ok(())
    }

    /// Whether reads are served from memory ([`StoredMessage::preload`]): they never block.
    pub fn in_memory(&self) -> bool {
        self.content.is_some() || self.content_len == 0
    }

    /// Fill `buf` from the message as relayed at `pos`; how many octets (0 at the end). Blocks.
    pub fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        let plen = self.prefix.len() as u64;
        if pos < plen {
            let from = &self.prefix[pos as usize..];
            let n = from.len().min(buf.len());
            buf[..n].copy_from_slice(&from[..n]);
            return Ok(n);
        }
        let at = pos - plen;
        let n = self.content_len.saturating_sub(at).min(buf.len() as u64) as usize;
        if let Some(content) = &self.content {
            let at = at as usize;
            buf[..n].copy_from_slice(&content[at..at + n]);
            return Ok(n);
        }
        self.file
            .read_exact_at(&mut buf[..n], qfile::CONTENT_OFFSET + at)?;
        Ok(n)
    }

    /// The whole message in memory.
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.len()).map_err(io::Error::other)?;
        let mut out = vec![0u8; len];
        let mut pos = 0;
        while pos < len {
            let n = self.read_at(pos as u64, &mut out[pos..])?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            pos += n;
        }
        Ok(out)
    }
}

/// An exclusive lock on one queued message: `flock(LOCK_EX)` on its `ID.q`, which is never
/// replaced (state changes are appended), so the lock holds across them. Every
/// read-modify-write of an envelope (the scheduler saving an attempt, `queue retry`,
/// `queue delete`) holds it; readers need none: a reader sees the last complete record.
/// Released on drop.
#[derive(Debug)]
pub struct MessageLock {
    _file: File,
}

impl Spool {
    /// Lock a message, waiting for any other holder. `Io` with `NotFound` when it is gone.
    pub fn lock(&self, id: &QueueId) -> Result<MessageLock, SpoolError> {
        use std::os::fd::AsRawFd;
        let (path, file) = self.open_located(id)?;
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is shared.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(SpoolError::Io {
                    path,
                    step: "lock",
                    source: e,
                });
            }
        }
        Ok(MessageLock { _file: file })
    }

    /// Remove a message and fsync the directory. Needs the message's lock.
    pub fn remove(&self, id: &QueueId, lock: &MessageLock) -> Result<(), SpoolError> {
        self.remove_unsynced(id, lock)?;
        self.sync_dir()?;
        let dir = self.deferred_dir(id);
        if dir.is_dir() {
            self.io
                .sync_dir(&dir)
                .map_err(io_err(&dir, "fsync directory"))?;
        }
        Ok(())
    }

    /// [`Spool::remove`] without the directory fsync, for a message whose delivery is done:
    /// should the removal not survive a crash, the message comes back and is delivered again (a
    /// duplicate, never a loss; Postfix makes the same trade). The scheduler makes removals
    /// durable in batches with [`Spool::sync`].
    pub fn remove_unsynced(&self, id: &QueueId, _lock: &MessageLock) -> Result<(), SpoolError> {
        // Both names: a crash while it moved may have left it under both.
        for (deferred, path) in [(false, self.top_path(id)), (true, self.deferred_path(id))] {
            match self.io.remove(&path) {
                Ok(()) if deferred => {
                    let mut dirs = self.unsynced.lock().unwrap_or_else(|e| e.into_inner());
                    dirs.insert(self.deferred_dir(id));
                }
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path, "remove")(e)),
            }
        }
        Ok(())
    }

    /// fsync the queue directory, and the [`DEFERRED_DIR`] subdirectories messages were
    /// removed from since the last call: removals before it survive a crash.
    pub fn sync(&self) -> Result<(), SpoolError> {
        self.sync_dir()?;
        let dirs = std::mem::take(&mut *self.unsynced.lock().unwrap_or_else(|e| e.into_inner()));
        for dir in dirs {
            self.io
                .sync_dir(&dir)
                .map_err(io_err(&dir, "fsync directory"))?;
        }
        Ok(())
    }

    /// fsync the queue directory so that renames into it survive a crash.
    fn sync_dir(&self) -> Result<(), SpoolError> {
        self.io
            .sync_dir(&self.dir)
            .map_err(io_err(&self.dir, "fsync directory"))
    }
}

#[cfg(test)]
mod tests;
