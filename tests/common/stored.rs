//! Queued messages for delivery tests: bytes stored in a spool of their own and opened for
//! relaying as the scheduler opens them.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use submitd::queue::spool::{Envelope, StoredMessage};
use submitd::queue::{QueueId, Spool};

/// A message in its own spool (removed when dropped).
pub struct Stored {
    pub dir: tempfile::TempDir,
    /// The queue file.
    pub path: PathBuf,
    pub message: Arc<StoredMessage>,
}

/// Store `content` behind the envelope prefix `prefix` and open it for relaying.
pub fn stored_with_prefix(prefix: &str, content: &[u8]) -> Stored {
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = Spool::open(dir.path()).expect("spool");
    let id = QueueId::generate();
    let mut env = Envelope::new(&id, "alice", "alice@example.net", &[], "client.test", 0);
    env.prefix = prefix.to_string();
    spool.store_blocking(&env, content).expect("store");
    let (_, message) = spool.open_message(&id).expect("open");
    Stored {
        path: spool.path(&id),
        dir,
        message: Arc::new(message),
    }
}

/// `content` stored with no prefix, opened for relaying (its spool is already removed: the
/// open file stays readable).
pub fn stored(content: &[u8]) -> Arc<StoredMessage> {
    stored_with_prefix("", content).message
}

/// A delivery job of `message` to `recipients` at `domain`, from alice@example.net, with
/// nothing else asked (no SMTPUTF8, 8BITMIME, DSN or REQUIRETLS); tests change what they
/// need with struct update syntax.
pub fn job<'a>(
    recipients: &'a [String],
    domain: &'a str,
    message: Arc<StoredMessage>,
) -> submitd::queue::Job<'a> {
    submitd::queue::Job {
        queue_id: "TESTJOB",
        sender: "alice@example.net",
        recipients,
        domain,
        message,
        smtputf8: false,
        eight_bit: false,
        envelope: None,
        dsn: Default::default(),
        requiretls: false,
        tls_optional: false,
    }
}
