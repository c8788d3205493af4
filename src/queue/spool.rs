//! The durable spool: a message is acknowledged only after its files and the directory entry
//! are on disk (temp file, write, fsync, rename, directory fsync). See the module above for the
//! format. All calls here block; async callers go through [`Spool::store`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::id::QueueId;

/// The queue format version written by this build.
pub const FORMAT_VERSION: u32 = 1;

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

/// The queue directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

fn io_err<'a>(path: &'a Path, step: &'static str) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        step,
        source,
    }
}

impl Spool {
    /// Open (creating with mode 0700 when missing) the queue directory and remove what an
    /// interrupted write left: `*.tmp` files and `.msg` files without an `.env`.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir, "create directory"))?;
        let spool = Spool {
            dir: dir.to_path_buf(),
        };
        for entry in fs::read_dir(dir).map_err(io_err(dir, "read directory"))? {
            let entry = entry.map_err(io_err(dir, "read directory"))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let orphan = name
                .strip_suffix(".msg")
                .is_some_and(|id| !dir.join(format!("{id}.env")).exists());
            if name.ends_with(".tmp") || orphan {
                tracing::warn!(file = %entry.path().display(), "removing interrupted queue write");
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(spool)
    }

    /// The queue directory as it is, without start-up cleanup: for the `queue` commands, which
    /// run beside a live server whose half-written files must not be touched.
    pub fn attach(dir: &Path) -> Spool {
        Spool {
            dir: dir.to_path_buf(),
        }
    }

    /// The queue directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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

    /// The blocking body of [`Spool::store`].
    pub fn store_blocking(&self, envelope: &Envelope, message: &[u8]) -> Result<(), SpoolError> {
        let id = QueueId::parse(&envelope.id).ok_or_else(|| SpoolError::Invalid {
            path: self.dir.clone(),
            message: format!("bad queue id {:?}", envelope.id),
        })?;
        let msg_path = self.message_path(&id);
        let env_path = self.envelope_path(&id);
        let result = (|| {
            write_atomically(&msg_path, message, false)?;
            let json = serde_json::to_vec(envelope).map_err(|e| SpoolError::Invalid {
                path: env_path.clone(),
                message: e.to_string(),
            })?;
            write_atomically(&env_path, &json, false)?;
            sync_dir(&self.dir)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&env_path);
            let _ = fs::remove_file(&msg_path);
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
        let json = serde_json::to_vec(envelope).map_err(|e| SpoolError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomically(&path, &json, true)
    }

    /// Read a message's envelope.
    pub fn load_envelope(&self, id: &QueueId) -> Result<Envelope, SpoolError> {
        let path = self.envelope_path(id);
        let bytes = fs::read(&path).map_err(io_err(&path, "read"))?;
        let envelope: Envelope =
            serde_json::from_slice(&bytes).map_err(|e| SpoolError::Invalid {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if envelope.version != FORMAT_VERSION {
            return Err(SpoolError::Invalid {
                path,
                message: format!("unsupported version {}", envelope.version),
            });
        }
        Ok(envelope)
    }

    /// Read a message's body.
    pub fn load_message(&self, id: &QueueId) -> Result<Vec<u8>, SpoolError> {
        let path = self.message_path(id);
        fs::read(&path).map_err(io_err(&path, "read"))
    }

    /// IDs of every committed message (those with an `.env`), oldest first.
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
    pub fn remove(&self, id: &QueueId, _lock: &MessageLock) -> Result<(), SpoolError> {
        let env = self.envelope_path(id);
        match fs::remove_file(&env) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(SpoolError::Io {
                    path: env,
                    step: "remove",
                    source: e,
                });
            }
        }
        let msg = self.message_path(id);
        match fs::remove_file(&msg) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(SpoolError::Io {
                    path: msg,
                    step: "remove",
                    source: e,
                });
            }
        }
        sync_dir(&self.dir)
    }
}

/// Write `bytes` to `path` through a temp file in the same directory: create, write, fsync,
/// rename. With `sync_parent`, fsync the directory too.
fn write_atomically(path: &Path, bytes: &[u8], sync_parent: bool) -> Result<(), SpoolError> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let result = (|| {
        let mut file: File = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp, "create"))?;
        file.write_all(bytes).map_err(io_err(&tmp, "write"))?;
        file.sync_all().map_err(io_err(&tmp, "fsync"))?;
        drop(file);
        fs::rename(&tmp, path).map_err(io_err(path, "rename"))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    if sync_parent {
        sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    }
    Ok(())
}

/// fsync a directory so that renames into it survive a crash.
fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync directory"))
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
            recipients: vec![Recipient {
                address: "bob@example.net".into(),
                state: RecipientState::Pending,
                attempts: 0,
                next_attempt: None,
                last_reply: None,
            }],
            received_at: 1_700_000_000,
            helo: "client.test".into(),
            smtputf8: false,
            eight_bit: false,
            size: 5,
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

    #[test]
    fn open_removes_interrupted_writes() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let done = QueueId::generate();
        spool.store_blocking(&envelope(&done), b"x").unwrap();
        let orphan = QueueId::generate();
        fs::write(spool.message_path(&orphan), b"half").unwrap();
        fs::write(dir.path().join("X.env.tmp"), b"{").unwrap();
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
}
