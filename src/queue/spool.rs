//! The durable spool: a message is acknowledged only after its files and the directory entry
//! are on disk (temp file, write, fsync, rename, directory fsync). See the module above for the
//! format. Every write goes through a [`SpoolIo`] ([`super::fsio`]). All calls here block;
//! async callers go through [`Spool::store`].
//!
//! # Start-up checks and quarantine
//!
//! [`Spool::open`] removes what an interrupted write left (`*.tmp`, a `.msg` without `.env`)
//! and moves every committed entry that cannot be delivered as it is into
//! `quarantine/` (mode 0700) beside the queue, logged at error level: an `.env` that does not
//! parse, has another version or names another ID, an `.env` whose `.msg` is missing, a `.msg`
//! shorter than the envelope's `size`. They are kept, not deleted: an operator may repair one
//! and move it back. Nothing else looks inside `quarantine/` (listing takes only top-level
//! `ID.env` files).

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::fsio::{RealIo, SpoolIo};
use super::id::QueueId;

/// The queue format version written by this build.
pub const FORMAT_VERSION: u32 = 1;

/// Where start-up moves queue entries that cannot be delivered, inside the queue directory.
pub const QUARANTINE_DIR: &str = "quarantine";

/// The envelope of one queued message (`ID.env`).
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
    /// Size of `ID.msg` in octets.
    pub size: u64,
    /// On hold (`submitd queue hold`): the scheduler makes no attempt until it is released.
    /// Absent (false) in files written before holds existed, and left out when false so that
    /// an older build still reads the file.
    #[serde(default, skip_serializing_if = "is_false")]
    pub held: bool,
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
            held: false,
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

    /// Parse an `.env` file's content: JSON of this format version. Pure; never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let envelope: Envelope =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Syntax(e.to_string()))?;
        if envelope.version != FORMAT_VERSION {
            return Err(EnvelopeError::Version(envelope.version));
        }
        Ok(envelope)
    }

    /// The `.env` file's content.
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
}

fn io_err<'a>(path: &'a Path, step: &'static str) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        step,
        source,
    }
}

/// Create the queue directory when missing: missing parents with the default mode (umask),
/// the queue directory itself 0700 (DESIGN.md).
fn create_dir(dir: &Path) -> io::Result<()> {
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

impl Spool {
    /// Open (creating with mode 0700 when missing, parents too) the queue directory, remove what an
    /// interrupted write left (`*.tmp` files, `.msg` files without an `.env`) and quarantine
    /// what cannot be delivered (see the module doc).
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        Spool::open_with_io(dir, Arc::new(RealIo))
    }

    /// [`Spool::open`] writing through `io` (the storage-fault tests pass a
    /// [`super::fsio::FaultyIo`]).
    pub fn open_with_io(dir: &Path, io: Arc<dyn SpoolIo>) -> Result<Spool, SpoolError> {
        create_dir(dir).map_err(io_err(dir, "create directory"))?;
        let spool = Spool {
            dir: dir.to_path_buf(),
            io,
        };
        for entry in fs::read_dir(dir).map_err(io_err(dir, "read directory"))? {
            let entry = entry.map_err(io_err(dir, "read directory"))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let orphan = name
                .strip_suffix(".msg")
                .is_some_and(|id| !dir.join(format!("{id}.env")).exists());
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            if is_file && (name.ends_with(".tmp") || orphan) {
                tracing::warn!(file = %entry.path().display(), "removing interrupted queue write");
                let _ = spool.io.remove(&entry.path());
            }
        }
        let mut moved = 0;
        for id in spool.list()? {
            if let Some(reason) = spool.check_entry(&id) {
                spool.quarantine(&id, &reason)?;
                moved += 1;
            }
        }
        if moved > 0 {
            let _ = spool.io.sync_dir(dir);
        }
        Ok(spool)
    }

    /// Why a committed entry cannot be delivered as it is; `None` when it is fine, or when it
    /// cannot be read right now (an IO error is not proof of garbage).
    fn check_entry(&self, id: &QueueId) -> Option<String> {
        let bytes = match fs::read(self.envelope_path(id)) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(queue_id = %id, error = %e, "queue: cannot read envelope");
                return None;
            }
        };
        let envelope = match Envelope::from_bytes(&bytes) {
            Ok(e) => e,
            Err(e) => return Some(format!("envelope: {e}")),
        };
        if envelope.id != id.as_str() {
            return Some(format!("envelope names another ID {:?}", envelope.id));
        }
        match fs::metadata(self.message_path(id)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some("message file missing".into()),
            Err(_) => None,
            Ok(meta) if meta.len() < envelope.size => Some(format!(
                "message file truncated: {} of {} octets",
                meta.len(),
                envelope.size
            )),
            Ok(_) => None,
        }
    }

    /// Move a message's files into [`QUARANTINE_DIR`] (the envelope first: once it is gone,
    /// the message is no longer queued).
    fn quarantine(&self, id: &QueueId, reason: &str) -> Result<(), SpoolError> {
        let qdir = self.quarantine_dir();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&qdir)
            .map_err(io_err(&qdir, "create directory"))?;
        for path in [self.envelope_path(id), self.message_path(id)] {
            let Some(name) = path.file_name() else {
                continue;
            };
            match self.io.rename(&path, &qdir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path, "quarantine")(e)),
            }
        }
        let _ = self.io.sync_dir(&qdir);
        tracing::error!(
            queue_id = %id,
            reason,
            dir = %qdir.display(),
            "queue: damaged queue entry moved to quarantine"
        );
        Ok(())
    }

    /// The queue directory as it is, without start-up cleanup: for the `queue` commands, which
    /// run beside a live server whose half-written files must not be touched.
    pub fn attach(dir: &Path) -> Spool {
        Spool {
            dir: dir.to_path_buf(),
            io: Arc::new(RealIo),
        }
    }

    /// The queue directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where damaged entries are moved at start-up.
    pub fn quarantine_dir(&self) -> PathBuf {
        self.dir.join(QUARANTINE_DIR)
    }

    /// Path of a message's body file.
    pub fn message_path(&self, id: &QueueId) -> PathBuf {
        self.dir.join(format!("{id}.msg"))
    }

    /// Path of a message's envelope file.
    pub fn envelope_path(&self, id: &QueueId) -> PathBuf {
        self.dir.join(format!("{id}.env"))
    }

    /// Store a message durably, off the async reactor. Returns only once both files and the
    /// directory entries are fsynced; on error nothing of the message is left behind.
    pub async fn store(&self, envelope: Envelope, message: Vec<u8>) -> Result<(), SpoolError> {
        let spool = self.clone();
        tokio::task::spawn_blocking(move || spool.store_blocking(&envelope, &message))
            .await
            .map_err(|e| SpoolError::Task(e.to_string()))?
    }

    /// The blocking body of [`Spool::store`]. Any failed step, the final directory fsync
    /// included, removes both files: a rename whose durability is not proven must not be
    /// acknowledged, and an entry left in place after a `451` would be delivered although the
    /// client was told it was not (and will send it again).
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
        let msg_path = self.message_path(&id);
        let env_path = self.envelope_path(&id);
        let result = (|| {
            self.write_atomically(&msg_path, message, false)?;
            self.write_atomically(&env_path, &envelope.to_bytes(), false)?;
            self.sync_dir()
        })();
        if result.is_err() {
            let _ = self.io.remove(&env_path);
            let _ = self.io.remove(&msg_path);
            let _ = self.io.sync_dir(&self.dir);
        }
        result
    }

    /// Rewrite a message's envelope atomically (delivery state changes).
    pub fn save_envelope(&self, envelope: &Envelope) -> Result<(), SpoolError> {
        let id = QueueId::parse(&envelope.id).ok_or_else(|| SpoolError::Invalid {
            path: self.dir.clone(),
            message: format!("bad queue id {:?}", envelope.id),
        })?;
        let path = self.envelope_path(&id);
        self.write_atomically(&path, &envelope.to_bytes(), true)
    }

    /// Read a message's envelope.
    pub fn load_envelope(&self, id: &QueueId) -> Result<Envelope, SpoolError> {
        let path = self.envelope_path(id);
        let bytes = fs::read(&path).map_err(io_err(&path, "read"))?;
        Envelope::from_bytes(&bytes).map_err(|e| SpoolError::Invalid {
            path,
            message: e.to_string(),
        })
    }

    /// Read a message's body.
    pub fn load_message(&self, id: &QueueId) -> Result<Vec<u8>, SpoolError> {
        let path = self.message_path(id);
        fs::read(&path).map_err(io_err(&path, "read"))
    }

    /// IDs of every committed message (those with an `.env`), oldest first. Only top-level
    /// files named `ID.env` count: `quarantine/` and anything else is ignored.
    pub fn list(&self) -> Result<Vec<QueueId>, SpoolError> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir, "read directory"))? {
            let entry = entry.map_err(io_err(&self.dir, "read directory"))?;
            let name = entry.file_name();
            if let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".env"))
                .and_then(QueueId::parse)
            {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Move a damaged entry into [`QUARANTINE_DIR`], logged with `reason` (the scheduler's
    /// start-up load finds them).
    pub fn quarantine_entry(&self, id: &QueueId, reason: &str) -> Result<(), SpoolError> {
        self.quarantine(id, reason)
    }
}

/// An exclusive lock on one queued message: `flock(LOCK_EX)` on its `.msg` file, which is
/// never replaced, so the lock holds across envelope rewrites. Every read-modify-write of an
/// envelope (the scheduler saving an attempt, `queue retry`, `queue delete`) holds it; readers
/// need none because envelopes are replaced by rename, never torn. Released on drop.
#[derive(Debug)]
pub struct MessageLock {
    _file: File,
}

impl Spool {
    /// Lock a message, waiting for any other holder. `Io` with `NotFound` when it is gone.
    pub fn lock(&self, id: &QueueId) -> Result<MessageLock, SpoolError> {
        use std::os::fd::AsRawFd;
        let path = self.message_path(id);
        let file = File::open(&path).map_err(io_err(&path, "open"))?;
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

    /// Remove a message (envelope first, so a crash in between leaves an orphan `.msg` that
    /// `open` cleans up, never an envelope without its message). Needs the message's lock.
    pub fn remove(&self, id: &QueueId, lock: &MessageLock) -> Result<(), SpoolError> {
        self.remove_unsynced(id, lock)?;
        self.sync_dir()
    }

    /// [`Spool::remove`] without the directory fsync, for a message whose delivery is done:
    /// should the removal not survive a crash, the message comes back and is delivered again (a
    /// duplicate, never a loss; Postfix makes the same trade). The scheduler makes removals
    /// durable in batches with [`Spool::sync`].
    pub fn remove_unsynced(&self, id: &QueueId, _lock: &MessageLock) -> Result<(), SpoolError> {
        for path in [self.envelope_path(id), self.message_path(id)] {
            match self.io.remove(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path, "remove")(e)),
            }
        }
        Ok(())
    }

    /// fsync the queue directory: removals before it survive a crash.
    pub fn sync(&self) -> Result<(), SpoolError> {
        self.sync_dir()
    }

    /// Write `bytes` to `path` through a temp file in the same directory: create, write,
    /// fsync, rename. With `sync_parent`, fsync the directory too. On failure the temp file
    /// is removed.
    fn write_atomically(
        &self,
        path: &Path,
        bytes: &[u8],
        sync_parent: bool,
    ) -> Result<(), SpoolError> {
        let tmp = path.with_extension(format!(
            "{}.tmp",
            path.extension().and_then(|e| e.to_str()).unwrap_or("")
        ));
        let io = &*self.io;
        let result = (|| {
            let mut file: File = io.create(&tmp).map_err(io_err(&tmp, "create"))?;
            // An envelope rewritten by root (`queue hold`) must stay the server's.
            crate::fsown::keep_owner(&file, path).map_err(io_err(path, "keep owner"))?;
            io.write_all(&tmp, &mut file, bytes)
                .map_err(io_err(&tmp, "write"))?;
            io.sync(&tmp, &file).map_err(io_err(&tmp, "fsync"))?;
            drop(file);
            io.rename(&tmp, path).map_err(io_err(path, "rename"))
        })();
        if result.is_err() {
            let _ = io.remove(&tmp);
            return result;
        }
        if sync_parent {
            self.sync_dir()?;
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
mod tests {
    use super::*;

    fn envelope(id: &QueueId) -> Envelope {
        Envelope {
            version: FORMAT_VERSION,
            id: id.to_string(),
            user: "alice@example.test".into(),
            sender: "alice@example.test".into(),
            recipients: vec![Recipient::pending("bob@example.net")],
            received_at: 1_700_000_000,
            helo: "client.test".into(),
            smtputf8: false,
            eight_bit: false,
            size: 5,
            held: false,
        }
    }

    #[test]
    fn store_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("q")).unwrap();
        let id = QueueId::generate();
        spool.store_blocking(&envelope(&id), b"hello").unwrap();
        assert_eq!(spool.load_envelope(&id).unwrap(), envelope(&id));
        assert_eq!(spool.load_message(&id).unwrap(), b"hello");
        assert_eq!(spool.list().unwrap(), vec![id]);
        let mode = fs::metadata(spool.dir()).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );
    }

    /// The start of an envelope whose write was interrupted.
    const HALF_WRITTEN_ENVELOPE: &[u8] = b"{";

    #[test]
    fn open_removes_interrupted_writes() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let done = QueueId::generate();
        spool.store_blocking(&envelope(&done), b"hello").unwrap();
        let orphan = QueueId::generate();
        fs::write(spool.message_path(&orphan), b"half").unwrap();
        fs::write(dir.path().join("X.env.tmp"), HALF_WRITTEN_ENVELOPE).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert!(!spool.message_path(&orphan).exists());
        assert!(!dir.path().join("X.env.tmp").exists());
        assert_eq!(spool.list().unwrap(), vec![done]);
    }

    #[test]
    fn failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = QueueId::generate();
        // A directory where the envelope should go makes the rename fail.
        fs::create_dir(spool.envelope_path(&id)).unwrap();
        fs::write(spool.envelope_path(&id).join("block"), b"").unwrap();
        assert!(spool.store_blocking(&envelope(&id), b"hello").is_err());
        assert!(!spool.message_path(&id).exists());
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn every_failed_step_leaves_nothing_and_classifies_the_errno() {
        use crate::queue::fsio::{Fault, FaultyIo, Op, Target};
        let steps = [
            (Op::Create, Target::Msg),
            (Op::Write, Target::Msg),
            (Op::Sync, Target::Msg),
            (Op::Rename, Target::Msg),
            (Op::Create, Target::Env),
            (Op::Write, Target::Env),
            (Op::Sync, Target::Env),
            (Op::Rename, Target::Env),
            (Op::SyncDir, Target::Any),
        ];
        for (op, target) in steps {
            for (errno, want) in [
                (libc::EIO, SpoolFailure::WriteError),
                (libc::ENOSPC, SpoolFailure::DiskFull),
                (libc::EDQUOT, SpoolFailure::DiskFull),
            ] {
                let dir = tempfile::tempdir().unwrap();
                let io = FaultyIo::new();
                let spool = Spool::open_with_io(dir.path(), Arc::new(io.clone())).unwrap();
                io.fail(Fault {
                    op,
                    target,
                    nth: 1,
                    errno,
                });
                let id = QueueId::generate();
                let err = spool.store_blocking(&envelope(&id), b"hello").unwrap_err();
                assert_eq!(io.injected(), 1, "{op:?} {target:?}");
                assert_eq!(err.failure(), want, "{op:?} {target:?} {errno}: {err}");
                let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
                assert!(left.is_empty(), "{op:?} {target:?}: {left:?}");
                // The next store works.
                spool.store_blocking(&envelope(&id), b"hello").unwrap();
                assert_eq!(spool.list().unwrap(), vec![id]);
            }
        }
    }

    #[test]
    fn envelope_bytes_round_trip_and_reject_garbage() {
        let env = envelope(&QueueId::generate());
        assert_eq!(Envelope::from_bytes(&env.to_bytes()), Ok(env.clone()));
        let mut v2 = env.clone();
        v2.version = 2;
        assert_eq!(
            Envelope::from_bytes(&v2.to_bytes()),
            Err(EnvelopeError::Version(2))
        );
        for garbage in [&b""[..], b"{", b"\x00\xff", b"[]", b"{\"version\":1}"] {
            assert!(Envelope::from_bytes(garbage).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn open_quarantines_damaged_entries() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let good = QueueId::generate();
        spool.store_blocking(&envelope(&good), b"hello").unwrap();
        // Garbage envelope, foreign version, missing message, truncated message, wrong ID.
        let garbage = QueueId::generate();
        fs::write(spool.envelope_path(&garbage), b"{\"version\":1,").unwrap();
        fs::write(spool.message_path(&garbage), b"x").unwrap();
        let version = QueueId::generate();
        let mut env = envelope(&version);
        env.version = 9;
        fs::write(spool.envelope_path(&version), env.to_bytes()).unwrap();
        fs::write(spool.message_path(&version), b"hello").unwrap();
        let missing = QueueId::generate();
        fs::write(spool.envelope_path(&missing), envelope(&missing).to_bytes()).unwrap();
        let short = QueueId::generate();
        spool.store_blocking(&envelope(&short), b"hel").unwrap();
        let other = QueueId::generate();
        fs::write(spool.envelope_path(&other), envelope(&good).to_bytes()).unwrap();
        fs::write(spool.message_path(&other), b"hello").unwrap();

        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.list().unwrap(), vec![good]);
        let q = spool.quarantine_dir();
        let mode = fs::metadata(&q).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );
        for id in [&garbage, &version, &missing, &short, &other] {
            assert!(q.join(format!("{id}.env")).exists(), "{id}");
            assert!(!spool.envelope_path(id).exists());
            assert!(!spool.message_path(id).exists());
        }
        assert!(q.join(format!("{short}.msg")).exists());
        // A second start leaves the quarantine alone.
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.list().unwrap().len(), 1);
        assert_eq!(fs::read_dir(&q).unwrap().count(), 9);
    }
}
