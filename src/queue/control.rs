//! The `submitd queue` commands as library calls: list, show, retry, delete, hold and release
//! queued messages (DESIGN.md "Command line").
//!
//! # Safe while the server runs
//!
//! - Everything goes through [`Spool::attach`], never [`Spool::open`]: open's start-up cleanup
//!   would delete the half-written files of a message the server is receiving right now.
//! - Readers ([`list`], [`show`]) take no lock: envelopes are replaced by rename, never torn,
//!   so a read sees the old or the new envelope. A message that vanishes between the directory
//!   listing and the read was delivered (or deleted) meanwhile and is skipped.
//! - Writers ([`retry`], [`delete`], [`set_held`]) follow the protocol of
//!   [`super::spool::MessageLock`]: take the message's flock (waiting while the scheduler holds it for a delivery attempt),
//!   re-read the envelope under the lock, change it, append it as the current record, release.
//!   The scheduler rescans the directory (every second on a small queue, at once when the CLI
//!   asks for it through the control socket's `rescan`) and re-reads queue files whose mtime
//!   changed.
//! - A message still being written is an `ID.q.tmp`: it is not committed, so it is neither
//!   listed nor deletable.

use std::io;

use serde::Serialize;

use super::id::QueueId;
use super::spool::{Envelope, RecipientState, Spool, SpoolError};

/// One queued message as the listing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: QueueId,
    /// The envelope, or why it could not be read (a damaged file is listed, not fatal).
    pub envelope: Result<Envelope, String>,
}

/// A message's envelope and its header section, for `queue show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub envelope: Envelope,
    /// The message up to (not including) the first empty line, as stored.
    pub headers: Vec<u8>,
}

/// What [`retry`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retried {
    /// Messages whose envelope was rewritten.
    pub messages: usize,
    /// Deferred recipients now due.
    pub recipients: usize,
    /// Messages left alone because their envelope could not be read or written.
    pub skipped: usize,
}

/// Why a queue command failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The ID is not a queue ID at all.
    #[error("{0:?} is not a queue ID (20 hex digits)")]
    BadId(String),
    /// No committed message has this ID (never existed, or delivered/deleted meanwhile).
    #[error("{0}: no such message in the queue")]
    NotFound(QueueId),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// Parse a queue ID given by a user; lower-case hex is accepted.
pub fn parse_id(text: &str) -> Result<QueueId, ControlError> {
    QueueId::parse(&text.trim().to_ascii_uppercase())
        .ok_or_else(|| ControlError::BadId(text.to_string()))
}

/// Every committed message, oldest first. A missing queue directory is an empty queue. Holds
/// every envelope at once: [`entries`] reads them one at a time.
pub fn list(spool: &Spool) -> Result<Vec<Entry>, SpoolError> {
    Ok(entries(spool)?.collect())
}

/// Every committed message, oldest first, each envelope read when the iterator reaches it: a
/// million-message queue is listed in the memory of its IDs. A message that vanishes before
/// its turn (delivered or deleted meanwhile) is skipped. A missing queue directory is an empty
/// queue.
pub fn entries(spool: &Spool) -> Result<impl Iterator<Item = Entry> + '_, SpoolError> {
    let ids = match spool.list() {
        Ok(ids) => ids,
        Err(SpoolError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    Ok(ids.into_iter().filter_map(move |id| {
        let envelope = match spool.load_envelope(&id) {
            Ok(envelope) => Ok(envelope),
            Err(e) if is_not_found(&e) => return None,
            Err(SpoolError::Invalid { message, .. }) => Err(message),
            Err(e) => Err(e.to_string()),
        };
        Some(Entry { id, envelope })
    }))
}

/// A message's envelope and header section.
pub fn show(spool: &Spool, id: &QueueId) -> Result<Shown, ControlError> {
    let envelope = spool.load_envelope(id).map_err(|e| not_found(e, id))?;
    let message = spool.load_message(id).map_err(|e| not_found(e, id))?;
    Ok(Shown {
        envelope,
        headers: header_section(&message).to_vec(),
    })
}

/// Make the deferred recipients of one message (`Some(id)`) or of every message (`None`) due
/// at `now` (unix seconds). Pending recipients are already due and stay as they are. With
/// `None`, messages that vanish or whose envelope is unreadable are skipped.
pub fn retry(spool: &Spool, id: Option<&QueueId>, now: u64) -> Result<Retried, ControlError> {
    let mut total = Retried::default();
    if let Some(id) = id {
        let n = retry_one(spool, id, now)?;
        if n > 0 {
            total.messages = 1;
            total.recipients = n;
        }
        return Ok(total);
    }
    let ids: Vec<QueueId> = entries(spool)?
        .filter(|e| e.envelope.as_ref().is_ok_and(has_deferred))
        .map(|e| e.id)
        .collect();
    // Each rewrite ends in an fsync. Done one after another, 3,000 deferred messages took
    // most of 20 s here; several at once share the filesystem's journal commits.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let total = std::sync::Mutex::new(total);
    let workers = RETRY_WORKERS.min(ids.len());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(each) = ids.get(i) else {
                        break;
                    };
                    let result = retry_one(spool, each, now);
                    let mut total = total.lock().unwrap_or_else(|p| p.into_inner());
                    match result {
                        Ok(0) | Err(ControlError::NotFound(_)) => {}
                        Ok(n) => {
                            total.messages += 1;
                            total.recipients += n;
                        }
                        Err(e) => {
                            tracing::warn!(queue_id = %each, error = %e, "retry skipped");
                            total.skipped += 1;
                        }
                    }
                }
            });
        }
    });
    let total = total.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(total)
}

/// Envelope rewrites `queue retry` (all) runs at once.
const RETRY_WORKERS: usize = 16;

fn retry_one(spool: &Spool, id: &QueueId, now: u64) -> Result<usize, ControlError> {
    let _lock = spool.lock(id).map_err(|e| not_found(e, id))?;
    let mut envelope = spool.load_envelope(id).map_err(|e| not_found(e, id))?;
    let mut touched = 0;
    for r in &mut envelope.recipients {
        if r.state == RecipientState::Deferred {
            r.next_attempt = Some(now);
            touched += 1;
        }
    }
    if touched > 0 {
        spool.save_envelope(&envelope)?;
    }
    Ok(touched)
}

/// Remove a message, waiting for its lock. Its file may be garbage: deleting is how an
/// operator gets rid of it.
pub fn delete(spool: &Spool, id: &QueueId) -> Result<(), ControlError> {
    let lock = spool.lock(id).map_err(|e| not_found(e, id))?;
    // Under the lock: the scheduler may have finished the message while we waited.
    if !spool.path(id).exists() {
        return Err(ControlError::NotFound(id.clone()));
    }
    spool.remove(id, &lock)?;
    Ok(())
}

/// Put a message on hold (`hold = true`) or release it. Returns whether the state changed
/// (false: it already was). Written under the message's lock like [`retry`]; the scheduler
/// re-reads the envelope before every attempt, so no attempt starts after this returns. An
/// attempt already under way is not interrupted (its outcome is saved, the hold kept).
/// Releasing does not move retry times: pending recipients are due at once, deferred ones at
/// their `next_attempt` (use [`retry`] for now).
pub fn set_held(spool: &Spool, id: &QueueId, hold: bool) -> Result<bool, ControlError> {
    let _lock = spool.lock(id).map_err(|e| not_found(e, id))?;
    let mut envelope = spool.load_envelope(id).map_err(|e| not_found(e, id))?;
    if envelope.held == hold {
        return Ok(false);
    }
    envelope.held = hold;
    spool.save_envelope(&envelope)?;
    Ok(true)
}

fn has_deferred(e: &Envelope) -> bool {
    e.recipients
        .iter()
        .any(|r| r.state == RecipientState::Deferred)
}

fn is_not_found(e: &SpoolError) -> bool {
    matches!(e, SpoolError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
}

fn not_found(e: SpoolError, id: &QueueId) -> ControlError {
    if is_not_found(&e) {
        ControlError::NotFound(id.clone())
    } else {
        ControlError::Spool(e)
    }
}

/// The header section of a message: everything before the first empty line.
pub fn header_section(message: &[u8]) -> &[u8] {
    if message.starts_with(b"\r\n") || message.starts_with(b"\n") {
        return &[];
    }
    for (i, w) in message.windows(2).enumerate() {
        if w == b"\n\n" {
            return &message[..i + 1];
        }
        if w == b"\n\r" && message.get(i + 2) == Some(&b'\n') {
            return &message[..i + 1];
        }
    }
    message
}

/// A duration as the largest whole unit: `42s`, `3m`, `2h`, `1d`.
pub fn human_age(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The most telling last reply: of a deferred recipient, else a failed one, else any.
fn last_reply(envelope: &Envelope) -> Option<&str> {
    let of = |state: Option<RecipientState>| {
        envelope
            .recipients
            .iter()
            .filter(|r| state.is_none_or(|s| r.state == s))
            .find_map(|r| r.last_reply.as_deref())
    };
    of(Some(RecipientState::Deferred))
        .or_else(|| of(Some(RecipientState::Failed)))
        .or_else(|| of(None))
}

/// Longest `last=` text in a listing line.
const LAST_REPLY_WIDTH: usize = 60;

/// One `queue list` line:
/// `ID  AGE  SENDER  ADDR(state) ADDR(state)...  next=WHEN[ last=REPLY]`, fields separated by
/// two spaces; SENDER is `<>` for the null sender; WHEN is `held` for a held message, else
/// `now`, a [`human_age`] or `-` when nothing is waiting; REPLY is cut to 60 characters. An unreadable envelope gives
/// `ID  invalid envelope: REASON`.
pub fn format_line(entry: &Entry, now: u64) -> String {
    let envelope = match &entry.envelope {
        Ok(e) => e,
        Err(reason) => {
            return format!(
                "{}  invalid envelope: {}",
                entry.id,
                printable(reason, usize::MAX)
            );
        }
    };
    let sender = if envelope.sender.is_empty() {
        "<>".to_string()
    } else {
        printable(&envelope.sender, usize::MAX)
    };
    let recipients: Vec<String> = envelope
        .recipients
        .iter()
        .map(|r| {
            format!(
                "{}({})",
                printable(&r.address, usize::MAX),
                state_name(r.state)
            )
        })
        .collect();
    let next = match envelope.next_due() {
        _ if envelope.held => "held".to_string(),
        None => "-".to_string(),
        Some(t) if t <= now => "now".to_string(),
        Some(t) => human_age(t - now),
    };
    let mut line = format!(
        "{}  {}  {}  {}  next={}",
        entry.id,
        human_age(now.saturating_sub(envelope.received_at)),
        sender,
        recipients.join(" "),
        next
    );
    if let Some(reply) = last_reply(envelope) {
        line.push_str(" last=");
        line.push_str(&printable(reply, LAST_REPLY_WIDTH));
    }
    line
}

/// One message in `queue list --json` and `queue show --json`; field names are stable (README
/// "Queue commands for scripts").
#[derive(Serialize)]
struct MessageJson<'a> {
    id: &'a str,
    /// `"held"` or `"queued"`.
    status: &'static str,
    held: bool,
    age_seconds: u64,
    received_at: u64,
    /// Unix seconds of the next attempt were the message not held; `null` when nothing waits.
    next_due: Option<u64>,
    sender: &'a str,
    user: &'a str,
    size: u64,
    recipients: &'a [super::spool::Recipient],
}

impl<'a> MessageJson<'a> {
    fn new(id: &'a str, e: &'a Envelope, now: u64) -> Self {
        MessageJson {
            id,
            status: if e.held { "held" } else { "queued" },
            held: e.held,
            age_seconds: now.saturating_sub(e.received_at),
            received_at: e.received_at,
            next_due: e.next_due(),
            sender: &e.sender,
            user: &e.user,
            size: e.size,
            recipients: &e.recipients,
        }
    }
}

/// One line of `queue list --json` (JSON Lines: one object per message, one message per
/// line); an unreadable envelope is `{"id", "error"}`.
pub fn entry_json(entry: &Entry, now: u64) -> serde_json::Value {
    match &entry.envelope {
        Ok(e) => serde_json::to_value(MessageJson::new(entry.id.as_str(), e, now))
            .unwrap_or(serde_json::Value::Null),
        Err(reason) => serde_json::json!({ "id": entry.id.as_str(), "error": reason }),
    }
}

/// The JSON of `queue show --json`: the `queue list --json` object plus `helo`, `smtputf8`,
/// `eight_bit` and `headers` (the header section as text, invalid UTF-8 replaced).
pub fn shown_json(shown: &Shown, now: u64) -> serde_json::Value {
    #[derive(Serialize)]
    struct Json<'a> {
        #[serde(flatten)]
        message: MessageJson<'a>,
        helo: &'a str,
        smtputf8: bool,
        eight_bit: bool,
        headers: String,
    }
    let e = &shown.envelope;
    serde_json::to_value(Json {
        message: MessageJson::new(&e.id, e, now),
        helo: &e.helo,
        smtputf8: e.smtputf8,
        eight_bit: e.eight_bit,
        headers: String::from_utf8_lossy(&shown.headers).into_owned(),
    })
    .unwrap_or(serde_json::Value::Null)
}

/// The state as written in the envelope file.
pub fn state_name(state: RecipientState) -> &'static str {
    match state {
        RecipientState::Pending => "pending",
        RecipientState::Deferred => "deferred",
        RecipientState::Delivered => "delivered",
        RecipientState::Failed => "failed",
    }
}

/// Text safe for a terminal line: control characters become spaces; cut to `max` characters
/// with `...`.
pub fn printable(text: &str, max: usize) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.chars().count() <= max {
        return clean;
    }
    let mut cut: String = clean.chars().take(max.saturating_sub(3)).collect();
    cut.push_str("...");
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Recipient;
    use crate::queue::spool::FORMAT_VERSION;

    fn recipient(address: &str, state: RecipientState, next: Option<u64>) -> Recipient {
        Recipient {
            address: address.into(),
            state,
            attempts: u32::from(state != RecipientState::Pending),
            next_attempt: next,
            last_reply: (state != RecipientState::Pending).then(|| format!("reply for {address}")),
            notify: None,
            orcpt: None,
            warned: false,
        }
    }

    fn store(spool: &Spool, recipients: Vec<Recipient>) -> QueueId {
        let id = QueueId::generate();
        let envelope = Envelope {
            version: FORMAT_VERSION,
            id: id.to_string(),
            user: "alice@example.test".into(),
            sender: "alice@example.test".into(),
            recipients,
            received_at: 1_000,
            helo: "client.test".into(),
            smtputf8: false,
            eight_bit: false,
            size: 30,
            held: false,
            prefix: String::new(),
            content_len: 30,
            ret: None,
            envid: None,
            requiretls: false,
            tls_optional: false,
            origin: None,
        };
        spool
            .store_blocking(&envelope, b"Subject: hi\r\nFrom: a@b\r\n\r\nbody\r\n")
            .unwrap();
        id
    }

    fn queue() -> (tempfile::TempDir, Spool) {
        let dir = tempfile::tempdir().unwrap();
        Spool::open(dir.path()).unwrap();
        let spool = Spool::attach(dir.path());
        (dir, spool)
    }

    /// An envelope file that is not JSON.
    const GARBAGE_ENVELOPE: &[u8] = b"{not json";

    #[test]
    fn list_skips_nothing_and_flags_garbage() {
        let (_dir, spool) = queue();
        let a = store(
            &spool,
            vec![recipient("b@x.test", RecipientState::Pending, None)],
        );
        let bad = QueueId::generate();
        std::fs::write(spool.path(&bad), GARBAGE_ENVELOPE).unwrap();
        let entries = list(&spool).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, a);
        assert!(entries[0].envelope.is_ok());
        assert_eq!(entries[1].id, bad);
        assert!(entries[1].envelope.is_err());
        assert!(format_line(&entries[1], 0).starts_with(&format!("{bad}  invalid envelope: ")));
    }

    #[test]
    fn missing_directory_is_an_empty_queue() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::attach(&dir.path().join("nope"));
        assert!(list(&spool).unwrap().is_empty());
    }

    #[test]
    fn line_format() {
        let (_dir, spool) = queue();
        let id = store(
            &spool,
            vec![
                recipient(
                    "b@x.test",
                    RecipientState::Deferred,
                    Some(1_000 + 7_200 + 300),
                ),
                recipient("c@x.test", RecipientState::Failed, None),
            ],
        );
        let entries = list(&spool).unwrap();
        assert_eq!(
            format_line(&entries[0], 1_000 + 300),
            format!(
                "{id}  5m  alice@example.test  b@x.test(deferred) c@x.test(failed)  next=2h \
                 last=reply for b@x.test"
            )
        );
        assert!(format_line(&entries[0], 20_000).contains("next=now"));
    }

    #[test]
    fn retry_touches_only_deferred() {
        let (_dir, spool) = queue();
        let a = store(
            &spool,
            vec![
                recipient("b@x.test", RecipientState::Deferred, Some(99_999)),
                recipient("c@x.test", RecipientState::Pending, None),
                recipient("d@x.test", RecipientState::Failed, None),
            ],
        );
        let b = store(
            &spool,
            vec![recipient("e@x.test", RecipientState::Deferred, Some(5))],
        );
        let c = store(
            &spool,
            vec![recipient("f@x.test", RecipientState::Pending, None)],
        );
        assert_eq!(
            retry(&spool, Some(&a), 50).unwrap(),
            Retried {
                messages: 1,
                recipients: 1,
                skipped: 0
            }
        );
        let env = spool.load_envelope(&a).unwrap();
        assert_eq!(env.recipients[0].next_attempt, Some(50));
        assert_eq!(env.recipients[1].next_attempt, None);
        assert_eq!(env.recipients[1].state, RecipientState::Pending);
        assert_eq!(
            retry(&spool, None, 60).unwrap(),
            Retried {
                messages: 2,
                recipients: 2,
                skipped: 0
            }
        );
        assert_eq!(
            spool.load_envelope(&b).unwrap().recipients[0].next_attempt,
            Some(60)
        );
        assert_eq!(
            spool.load_envelope(&c).unwrap().recipients[0].next_attempt,
            None
        );
    }

    #[test]
    fn delete_and_unknown_ids() {
        let (_dir, spool) = queue();
        let a = store(
            &spool,
            vec![recipient("b@x.test", RecipientState::Pending, None)],
        );
        assert_eq!(
            show(&spool, &a).unwrap().headers,
            b"Subject: hi\r\nFrom: a@b\r\n"
        );
        delete(&spool, &a).unwrap();
        assert!(!spool.path(&a).exists());
        assert!(matches!(delete(&spool, &a), Err(ControlError::NotFound(_))));
        assert!(matches!(show(&spool, &a), Err(ControlError::NotFound(_))));
        assert!(matches!(
            retry(&spool, Some(&a), 0),
            Err(ControlError::NotFound(_))
        ));
        assert!(matches!(parse_id("../x"), Err(ControlError::BadId(_))));
        assert_eq!(parse_id(&a.as_str().to_lowercase()).unwrap(), a);
    }

    #[test]
    fn hold_and_release() {
        let (_dir, spool) = queue();
        let id = store(
            &spool,
            vec![recipient("b@x.test", RecipientState::Pending, None)],
        );
        assert!(set_held(&spool, &id, true).unwrap());
        assert!(!set_held(&spool, &id, true).unwrap(), "already held");
        let env = spool.load_envelope(&id).unwrap();
        assert!(env.held);
        assert_eq!(env.attempt_due(), None);
        assert_eq!(env.next_due(), Some(0));
        let entries = list(&spool).unwrap();
        assert!(format_line(&entries[0], 2_000).contains("  next=held"));
        let json = entry_json(&entries[0], 2_000);
        assert_eq!(json["status"], "held");
        assert_eq!(json["held"], true);
        assert!(set_held(&spool, &id, false).unwrap());
        let env = spool.load_envelope(&id).unwrap();
        assert!(!env.held);
        assert_eq!(env.attempt_due(), Some(0));
        // Not held: the field is left out, so older builds still read the file.
        let raw = std::fs::read(spool.path(&id)).unwrap();
        let last = raw.rsplit(|&b| b == b'{').next().unwrap();
        assert!(!String::from_utf8_lossy(last).contains("held"), "{raw:?}");
        let gone = QueueId::generate();
        assert!(matches!(
            set_held(&spool, &gone, true),
            Err(ControlError::NotFound(_))
        ));
    }

    #[test]
    fn envelope_without_held_loads() {
        let text = br#"{"version":2,"id":"0123456789ABCDEF0123","user":"u","sender":"s@x",
            "recipients":[{"address":"a@b","state":"pending"}],"received_at":5,"helo":"h",
            "size":3,"content_len":3}"#;
        assert!(!Envelope::from_bytes(text).unwrap().held);
    }

    #[test]
    fn in_flight_message_is_not_deletable() {
        let (_dir, spool) = queue();
        let id = QueueId::generate();
        let mut writer = spool.create(&id).unwrap();
        writer.write(b"half").unwrap();
        assert!(matches!(
            delete(&spool, &id),
            Err(ControlError::NotFound(_))
        ));
        assert_eq!(writer.written(), 4);
    }

    #[test]
    fn helpers() {
        assert_eq!(human_age(59), "59s");
        assert_eq!(human_age(180), "3m");
        assert_eq!(human_age(7_200), "2h");
        assert_eq!(human_age(86_400 * 3 + 5), "3d");
        assert_eq!(
            header_section(b"A: 1\r\nB: 2\r\n\r\nbody"),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(header_section(b"A: 1\nB: 2\n\nbody"), b"A: 1\nB: 2\n");
        assert_eq!(header_section(b"A: 1\r\n"), b"A: 1\r\n");
        assert_eq!(header_section(b"\r\nbody"), b"");
        assert_eq!(printable("a\r\nb", 10), "a  b");
        assert_eq!(printable("abcdefgh", 6), "abc...");
    }
}
