//! `Idempotency-Key` for `POST /v1/messages`: a retried request gets the first response and
//! queues nothing.
//!
//! A record per (key name, idempotency key) lives in `<queue.dir>/idempotency/`, named by the
//! SHA-256 of both, written with [`crate::fsown::write_atomic`] (fsync'd; it survives a
//! restart) and kept [`TTL`]. It holds the SHA-256 of the request body: the same key with
//! another body is refused (422).
//!
//! **Ordering with the commit.** The record is written *before* the message is committed,
//! in state `pending`, with the queue ID the message is about to get and the response it
//! will get; after the commit it is rewritten `done`, and a failed commit removes it. A
//! crash between the two leaves a `pending` record: the retry then looks for that queue ID
//! (`status::lookup`: in the spool, or in the status records once it has been delivered and
//! left the spool), and replays the response when the message is found. Writing the record
//! after the commit instead would leave a window where a crash queues the message twice.
//! What remains: a message whose status record was pruned (`queue.status_retention`, 7 days
//! by default, beyond the record's 24 h) cannot be found, but by then the record has expired.
//!
//! Two requests with the same key at once: the second gets 409 at once (in-process map),
//! never a second message. Records past [`TTL`] are pruned at most every
//! [`PRUNE_EVERY`] seconds; past [`MAX_RECORDS`] the oldest go first.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How long a record is kept.
pub const TTL: u64 = 24 * 3600;
/// Records kept at most; past it the oldest are removed.
pub const MAX_RECORDS: usize = 100_000;
/// Seconds between two prunes.
pub const PRUNE_EVERY: u64 = 600;
/// Octets of an `Idempotency-Key`.
pub const MAX_KEY: usize = 255;

/// An `Idempotency-Key` value: 1 to 255 printable ASCII characters.
pub fn valid_key(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_KEY
        && value.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}

/// Hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(digest(&SHA256, bytes).as_ref())
}

/// One stored record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// The API key's name (records are per key).
    pub key: String,
    pub body_hash: String,
    pub created: u64,
    /// `false` while the message's commit has not returned.
    pub done: bool,
    pub queue_id: String,
    pub status: u16,
    pub response: Value,
}

/// What a request with an `Idempotency-Key` does.
#[derive(Debug)]
pub enum Begin {
    /// First time: go on; the [`Slot`] holds the key until dropped.
    Fresh(Slot),
    /// Seen with the same body: answer this, queue nothing.
    Replay(Record),
    /// Seen with another body: 422.
    Mismatch,
    /// A request with this key is running now: 409.
    Busy,
}

/// The idempotency records of one server.
#[derive(Debug)]
pub struct Idempotency {
    dir: PathBuf,
    running: Mutex<HashSet<String>>,
    last_prune: AtomicU64,
}

/// A key being used by a running request; released when dropped.
#[derive(Debug)]
pub struct Slot {
    store: Arc<Idempotency>,
    file: String,
    key: String,
    body_hash: String,
}

impl Idempotency {
    /// Records under `queue_dir/idempotency/` (created when missing, on first use).
    pub fn new(queue_dir: &Path) -> Idempotency {
        Idempotency {
            dir: queue_dir.join("idempotency"),
            running: Mutex::new(HashSet::new()),
            last_prune: AtomicU64::new(0),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Look up `idem_key` of API key `key` for a body hashing to `body_hash`. Blocks (file
    /// IO). `committed` says whether a queue ID was committed (for a `pending` record).
    pub fn begin(
        self: &Arc<Self>,
        key: &str,
        idem_key: &str,
        body_hash: &str,
        now: u64,
        committed: impl Fn(&str) -> bool,
    ) -> std::io::Result<Begin> {
        self.maybe_prune(now);
        let file = sha256_hex(format!("{key}\0{idem_key}").as_bytes());
        if !self.running().insert(file.clone()) {
            return Ok(Begin::Busy);
        }
        let slot = Slot {
            store: self.clone(),
            file,
            key: key.to_owned(),
            body_hash: body_hash.to_owned(),
        };
        let record = match std::fs::read(self.dir.join(&slot.file)) {
            Ok(bytes) => serde_json::from_slice::<Record>(&bytes).ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let Some(record) = record.filter(|r| r.created + TTL > now && r.key == key) else {
            return Ok(Begin::Fresh(slot));
        };
        if record.body_hash != body_hash {
            return Ok(Begin::Mismatch);
        }
        if record.done || committed(&record.queue_id) {
            return Ok(Begin::Replay(record));
        }
        // A pending record whose message never reached the spool: the request failed or
        // the server stopped before the commit. Start again.
        Ok(Begin::Fresh(slot))
    }

    /// Remove records past [`TTL`], then the oldest past [`MAX_RECORDS`]. Blocks.
    fn maybe_prune(&self, now: u64) {
        let last = self.last_prune.load(Ordering::Relaxed);
        if now < last + PRUNE_EVERY
            || self
                .last_prune
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut kept = Vec::new();
        for entry in entries.flatten().take(MAX_RECORDS * 2) {
            let name = entry.file_name();
            if name.len() != 64 {
                continue;
            }
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            if modified + TTL <= now {
                let _ = std::fs::remove_file(entry.path());
            } else {
                kept.push((modified, entry.path()));
            }
        }
        if kept.len() > MAX_RECORDS {
            kept.sort();
            for (_, path) in &kept[..kept.len() - MAX_RECORDS] {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

impl Slot {
    /// Write the record (`done` or not) of the response `response` for `queue_id`, durably.
    /// Blocks.
    pub fn write(
        &self,
        queue_id: &str,
        status: u16,
        response: &Value,
        now: u64,
        done: bool,
    ) -> std::io::Result<()> {
        let record = Record {
            key: self.key.clone(),
            body_hash: self.body_hash.clone(),
            created: now,
            done,
            queue_id: queue_id.to_owned(),
            status,
            response: response.clone(),
        };
        // The records name recipients: the directory is the server's alone (an EEXIST when
        // it is there already).
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&self.store.dir)?;
        let bytes = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
        crate::fsown::write_atomic(&self.store.dir.join(&self.file), &bytes)
    }

    /// Remove the record (the commit failed). Blocks.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(self.store.dir.join(&self.file));
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.store.running().remove(&self.file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replay_mismatch_busy_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Idempotency::new(dir.path()));
        let never = |_: &str| false;
        let Begin::Fresh(slot) = store.begin("k", "a", "h1", 100, never).unwrap() else {
            panic!("fresh")
        };
        assert!(matches!(
            store.begin("k", "a", "h1", 100, never).unwrap(),
            Begin::Busy
        ));
        // Another key name, same idempotency key: its own record.
        assert!(matches!(
            store.begin("k2", "a", "h1", 100, never).unwrap(),
            Begin::Fresh(_)
        ));
        slot.write("Q1", 202, &json!({"id": "Q1"}), 100, false)
            .unwrap();
        drop(slot);
        // Pending and not in the spool: fresh again; in the spool: replayed.
        assert!(matches!(
            store.begin("k", "a", "h1", 101, never).unwrap(),
            Begin::Fresh(_)
        ));
        let Begin::Replay(r) = store.begin("k", "a", "h1", 101, |id| id == "Q1").unwrap() else {
            panic!("replay")
        };
        assert_eq!(r.response, json!({"id": "Q1"}));
        // A new process sees the same record.
        let again = Arc::new(Idempotency::new(dir.path()));
        assert!(matches!(
            again.begin("k", "a", "h2", 102, never).unwrap(),
            Begin::Mismatch
        ));
        // Expired.
        assert!(matches!(
            again.begin("k", "a", "h2", 100 + TTL, never).unwrap(),
            Begin::Fresh(_)
        ));
        assert!(valid_key("abc-123"));
        assert!(!valid_key(""));
        assert!(!valid_key("a\nb"));
        assert!(!valid_key(&"x".repeat(256)));
    }
}
