//! Where a message stands, per recipient (issue 16, `GET /v1/messages/{id}`).
//!
//! While the queue file exists, its envelope is the truth ([`MessageStatus::of`]). After the
//! last recipient is done the queue file is removed, so a record is kept in
//! `queue.dir/status/ID.jsonl`, written by [`StatusSink`] from the delivery events:
//!
//! - the first line is a snapshot ([`MessageStatus`] as JSON), taken from the queue file the
//!   first time an event names the message (the scheduler records events before it saves or
//!   removes the queue file, so the file is still there);
//! - every later line is one recipient's new state (`{"address","state","attempts",
//!   "last_reply"}`); the last line for an address wins.
//!
//! Cheap on the delivery path: one append (one `write`) per message per attempt. The file is
//! fsynced only when the batch holds a final state (`sent`, `bounced`, `suppressed`) — a
//! lost `deferred` line does not matter, as the queue file still says it — and the directory
//! only when such a batch created the file. Records older than `queue.status_retention`
//! (by modification time) are removed by [`prune`], hourly.
//!
//! [`lookup`] reads at most [`MAX_RECORD`] bytes and skips lines it cannot parse; it never
//! panics on what it finds on disk.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::events::{DeliveryEvent, EventKind, EventSink};
use crate::queue::{Envelope, QueueId, RecipientState, Spool};

/// The directory under `queue.dir`.
pub const STATUS_DIR: &str = "status";
/// The most of a record [`lookup`] reads.
pub const MAX_RECORD: u64 = 4 * 1024 * 1024;

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

/// The states, as named in the API and the records.
const STATES: [&str; 5] = ["queued", "deferred", "sent", "bounced", "suppressed"];

/// The `'static` name of a state read from disk.
fn state_name(s: &str) -> Option<&'static str> {
    STATES.into_iter().find(|n| *n == s)
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

    /// Apply one recipient line (a new recipient is appended).
    fn apply(&mut self, line: StoredRecipient) {
        let Some(state) = state_name(&line.state) else {
            return;
        };
        let new = RecipientStatus {
            address: line.address,
            state,
            attempts: line.attempts,
            last_reply: line.last_reply,
        };
        let full = self.recipients.len() >= 10_000;
        match self
            .recipients
            .iter_mut()
            .find(|r| r.address == new.address)
        {
            Some(r) => *r = new,
            None if !full => self.recipients.push(new),
            None => {}
        }
    }
}

/// The first line of a record.
#[derive(Debug, Serialize, Deserialize)]
struct StoredMessage {
    id: String,
    user: String,
    tenant: String,
    received_at: u64,
    recipients: Vec<StoredRecipient>,
}

/// Every later line.
#[derive(Debug, Serialize, Deserialize)]
struct StoredRecipient {
    address: String,
    state: String,
    attempts: u32,
    last_reply: Option<String>,
}

impl From<&RecipientStatus> for StoredRecipient {
    fn from(r: &RecipientStatus) -> Self {
        StoredRecipient {
            address: r.address.clone(),
            state: r.state.to_owned(),
            attempts: r.attempts,
            last_reply: r.last_reply.clone(),
        }
    }
}

/// The state of message `id`, if it is known: from its queue file while it is queued, else
/// from its status record. Blocks (reads files).
pub fn lookup(spool: &Spool, id: &QueueId) -> Option<MessageStatus> {
    if let Ok(env) = spool.load_envelope(id) {
        return Some(MessageStatus::of(&env));
    }
    let path = record_path(&spool.dir().join(STATUS_DIR), id);
    let mut bytes = Vec::new();
    File::open(&path)
        .and_then(|f| f.take(MAX_RECORD).read_to_end(&mut bytes))
        .ok()?;
    parse_record(&bytes)
}

/// The status a record's bytes describe: `None` when its first line is not a snapshot.
/// Complete lines only; a line that does not parse is skipped.
pub fn parse_record(bytes: &[u8]) -> Option<MessageStatus> {
    let mut lines = bytes.split(|&b| b == b'\n');
    let first: StoredMessage = serde_json::from_slice(lines.next()?).ok()?;
    let mut status = MessageStatus {
        id: first.id,
        user: first.user,
        tenant: first.tenant,
        received_at: first.received_at,
        recipients: Vec::new(),
    };
    for r in first.recipients {
        status.apply(r);
    }
    // The part after the last newline is torn (or empty): not a line.
    let complete = bytes.iter().filter(|&&b| b == b'\n').count();
    for line in lines.take(complete.saturating_sub(1)) {
        if let Ok(r) = serde_json::from_slice::<StoredRecipient>(line) {
            status.apply(r);
        }
    }
    Some(status)
}

fn record_path(dir: &Path, id: &QueueId) -> PathBuf {
    dir.join(format!("{id}.jsonl"))
}

/// The [`EventSink`] that keeps the status records.
#[derive(Debug)]
pub struct StatusSink {
    spool: Spool,
    dir: PathBuf,
    /// Whether `dir` is known to exist.
    created: AtomicBool,
}

impl StatusSink {
    /// The records of `spool`'s messages, in `queue.dir/status`.
    pub fn new(spool: Spool) -> StatusSink {
        let dir = spool.dir().join(STATUS_DIR);
        StatusSink {
            spool,
            dir,
            created: AtomicBool::new(false),
        }
    }

    fn ensure_dir(&self) -> std::io::Result<()> {
        if self.created.load(Ordering::Relaxed) {
            return Ok(());
        }
        use std::os::unix::fs::DirBuilderExt as _;
        match std::fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        self.created.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Append one message's events to its record, creating it with a snapshot first.
    fn append(&self, id: &QueueId, events: &[&DeliveryEvent]) -> std::io::Result<()> {
        let path = record_path(&self.dir, id);
        let mut out = Vec::new();
        let (mut file, created) = match OpenOptions::new().append(true).open(&path) {
            Ok(f) => (f, false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.ensure_dir()?;
                let snapshot = self.snapshot(id, events);
                out = snapshot_line(&snapshot)?;
                out.push(b'\n');
                let f = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(&path)?;
                (f, true)
            }
            Err(e) => return Err(e),
        };
        let mut last = false;
        for e in events {
            let Some(state) = event_state(e.kind) else {
                continue;
            };
            last |= state != "deferred";
            let line = StoredRecipient {
                address: e.recipient.clone(),
                state: state.to_owned(),
                attempts: e.attempt,
                last_reply: Some(e.reply.clone()).filter(|r| !r.is_empty()),
            };
            serde_json::to_writer(&mut out, &line).map_err(std::io::Error::other)?;
            out.push(b'\n');
        }
        file.write_all(&out)?;
        if last {
            file.sync_data()?;
            if created {
                File::open(&self.dir)?.sync_all()?;
            }
        }
        Ok(())
    }

    /// The message as it stands before these events: its queue file (still there), or
    /// what the events say.
    fn snapshot(&self, id: &QueueId, events: &[&DeliveryEvent]) -> MessageStatus {
        if let Ok(env) = self.spool.load_envelope(id) {
            return MessageStatus::of(&env);
        }
        let first = events.first();
        MessageStatus {
            id: id.to_string(),
            user: first.map(|e| e.user.clone()).unwrap_or_default(),
            tenant: first.map(|e| e.tenant.clone()).unwrap_or_default(),
            // The ID starts with the arrival time in microseconds (`QueueId`).
            received_at: u64::from_str_radix(&id.as_str()[..14], 16).unwrap_or(0) / 1_000_000,
            recipients: Vec::new(),
        }
    }
}

fn snapshot_line(status: &MessageStatus) -> std::io::Result<Vec<u8>> {
    let stored = StoredMessage {
        id: status.id.clone(),
        user: status.user.clone(),
        tenant: status.tenant.clone(),
        received_at: status.received_at,
        recipients: status
            .recipients
            .iter()
            .map(StoredRecipient::from)
            .collect(),
    };
    serde_json::to_vec(&stored).map_err(std::io::Error::other)
}

/// The recipient state an event sets; `delayed` sets none (the recipient stays deferred).
fn event_state(kind: EventKind) -> Option<&'static str> {
    match kind {
        EventKind::Delivered => Some("sent"),
        EventKind::Deferred => Some("deferred"),
        EventKind::Bounced => Some("bounced"),
        EventKind::Suppressed => Some("suppressed"),
        EventKind::Delayed => None,
    }
}

impl EventSink for StatusSink {
    fn record_blocking(&self, events: &[DeliveryEvent]) {
        // One append per message, in the order the events came.
        let mut by_id: BTreeMap<&str, Vec<&DeliveryEvent>> = BTreeMap::new();
        for e in events {
            by_id.entry(&e.queue_id).or_default().push(e);
        }
        for (id, events) in by_id {
            let Some(qid) = QueueId::parse(id) else {
                continue;
            };
            if let Err(e) = self.append(&qid, &events) {
                warn!(queue_id = %qid, error = %e, "status: cannot write the status record");
            }
        }
    }
}

/// Remove records not modified for `retention` (at `now`, unix seconds); how many went.
/// Blocks (reads the directory).
pub fn prune_blocking(queue_dir: &Path, retention: Duration, now: u64) -> usize {
    let dir = queue_dir.join(STATUS_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let cutoff = now.saturating_sub(retention.as_secs());
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_record = name.to_str().is_some_and(|n| n.ends_with(".jsonl"));
        let old = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .is_some_and(|t| t.as_secs() < cutoff);
        if is_record && old && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Prune the status records of `queue_dir` at start and then hourly, until `shutdown`.
pub async fn prune(queue_dir: PathBuf, retention: Duration, shutdown: CancellationToken) {
    loop {
        let dir = queue_dir.clone();
        let now = crate::clock::unix_now();
        if let Ok(n) =
            tokio::task::spawn_blocking(move || prune_blocking(&dir, retention, now)).await
            && n > 0
        {
            info!(removed = n, "status: old status records removed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(id: &QueueId, kind: EventKind, to: &str, attempt: u32, reply: &str) -> DeliveryEvent {
        DeliveryEvent {
            kind,
            queue_id: id.to_string(),
            user: "alice".into(),
            tenant: "alice".into(),
            recipient: to.into(),
            reply: reply.into(),
            status: None,
            host: None,
            attempt,
            at: 100,
            envid: None,
            metadata: Default::default(),
        }
    }

    #[test]
    fn the_record_outlives_the_queue_file() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = Spool::attach(tmp.path());
        let id = QueueId::generate();
        let rcpts = vec!["a@x.test".to_string(), "b@x.test".to_string()];
        let env = Envelope::new(&id, "alice", "alice@x.test", &rcpts, "h", 1234);
        spool
            .store_blocking(&env, b"Subject: x\r\n\r\nx\r\n")
            .unwrap();
        assert_eq!(lookup(&spool, &id).unwrap().recipients[0].state, "queued");

        let sink = StatusSink::new(spool.clone());
        sink.record_blocking(&[
            event(&id, EventKind::Deferred, "a@x.test", 1, "451 4.3.0 later"),
            event(&id, EventKind::Bounced, "b@x.test", 1, "550 5.1.1 no"),
        ]);
        sink.record_blocking(&[
            event(&id, EventKind::Delivered, "a@x.test", 2, "250 ok"),
            event(&id, EventKind::Delayed, "a@x.test", 2, "ignored"),
        ]);
        std::fs::remove_file(spool.path(&id)).unwrap();
        let status = lookup(&spool, &id).unwrap();
        assert_eq!(status.id, id.to_string());
        assert_eq!(status.received_at, 1234);
        assert_eq!(status.tenant, "alice");
        let got: Vec<(&str, &str, u32, Option<&str>)> = status
            .recipients
            .iter()
            .map(|r| {
                (
                    r.address.as_str(),
                    r.state,
                    r.attempts,
                    r.last_reply.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a@x.test", "sent", 2, Some("250 ok")),
                ("b@x.test", "bounced", 1, Some("550 5.1.1 no")),
            ]
        );
        assert!(lookup(&spool, &QueueId::generate()).is_none());

        // Pruned once older than the retention, not before.
        let now = crate::clock::unix_now();
        assert_eq!(
            prune_blocking(tmp.path(), Duration::from_secs(3600), now),
            0
        );
        assert_eq!(
            prune_blocking(tmp.path(), Duration::from_secs(60), now + 120),
            1
        );
        assert!(lookup(&spool, &id).is_none());
    }

    #[test]
    fn a_torn_or_garbled_line_is_skipped() {
        let snapshot = br#"{"id":"X","user":"u","tenant":"t","received_at":1,"recipients":[{"address":"a","state":"queued","attempts":0,"last_reply":null}]}"#;
        let mut bytes = snapshot.to_vec();
        bytes.extend_from_slice(b"\n{garbage}\n");
        bytes.extend_from_slice(
            br#"{"address":"a","state":"nonsense","attempts":1,"last_reply":null}"#,
        );
        bytes.extend_from_slice(b"\n");
        bytes
            .extend_from_slice(br#"{"address":"a","state":"sent","attempts":1,"last_reply":null}"#);
        let s = parse_record(&bytes).unwrap();
        assert_eq!(s.recipients[0].state, "queued");
        bytes.push(b'\n');
        assert_eq!(parse_record(&bytes).unwrap().recipients[0].state, "sent");
        assert!(parse_record(b"").is_none());
    }

    proptest! {
        #[test]
        fn parse_record_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_record(&bytes);
        }
    }
}
