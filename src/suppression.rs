//! The suppression list (issue 16): recipients that failed permanently, per tenant
//! ([`crate::auth::users::User::tenant`]), so that later mail to them is not attempted.
//!
//! ## Store
//!
//! `queue.dir/suppressions/journal.jsonl`: one JSON record per line, `{"op":"add",...}` (an
//! [`Entry`]) or `{"op":"del","tenant":..,"address":..}`; the last record for a tenant and
//! address wins. Every writer (the server's [`BounceSink`], the CLI) takes the exclusive lock on
//! `suppressions/lock`, catches up with the file, appends its record with one `write` on an
//! `O_APPEND` descriptor and fsyncs before [`Suppressions::add`] or [`Suppressions::remove`]
//! returns. When the journal holds more than twice the live entries (plus a slack of 64), or
//! on open when a crash left a torn last line, it is compacted: the live entries written to
//! a new file with [`crate::fsown::write_atomic`] (fsync, rename, directory fsync).
//!
//! Readers need no lock: a reader takes complete lines only (a torn or garbled line is
//! skipped, never a panic), and notices a compaction by the inode changing or, should the
//! new file get a reused inode number, by the random `{"op":"epoch"}` line a compaction
//! writes first.
//!
//! ## Lookups
//!
//! [`Suppressions::check`] is an in-memory lookup (a `HashMap` keyed by tenant and lowercase
//! address) and never does IO, so sessions call it on the reactor. The server learns of
//! changes made by other processes (the CLI) through [`follow`], a task that calls
//! [`Suppressions::refresh_blocking`] once a second on the blocking pool: it `fstat`s the
//! journal and reads only the appended tail, or the whole file after a compaction. Doing the
//! reload there rather than inside `check` keeps a re-read of a large file (after a
//! compaction by the CLI) off the reactor entirely; the price is that a CLI change reaches the
//! server within about a second.
//!
//! ## Bounds
//!
//! `suppression.max_entries` (over it, the oldest entries go, a hundredth more at once so the
//! scan is amortised), a line is at most [`MAX_LINE`] bytes, a reply kept at most 1000
//! characters, addresses and tenants at most 512 bytes. Entries expire (`suppression.ttl`):
//! expired ones are ignored and dropped at compaction.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::events::{DeliveryEvent, EventKind, EventSink};
use crate::logsafe::Escaped;

/// The longest journal line read; longer ones are skipped.
pub const MAX_LINE: usize = 64 * 1024;
/// The longest tenant or address stored.
const MAX_NAME: usize = 512;
/// Journal records allowed beyond twice the live entries before a compaction.
const SLACK: usize = 64;

/// One suppressed recipient of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub tenant: String,
    /// Lowercase.
    pub address: String,
    /// The reply that caused it (or the reason given to `add`).
    pub reply: String,
    /// Unix seconds.
    pub added: u64,
    /// Unix seconds after which the entry no longer applies.
    pub expires: u64,
}

/// Why the list could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SuppressionError {
    #[error("{0}")]
    Io(String),
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> SuppressionError {
    SuppressionError::Io(format!("{what} {}: {e}", path.display()))
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Record {
    Add(Entry),
    Del {
        tenant: String,
        address: String,
    },
    /// The first line of a compacted journal, random: a reader that sees another epoch at
    /// the start of "its" file knows the file was replaced (even when the new one got the
    /// old one's inode number) and reads it whole.
    Epoch {
        epoch: u64,
    },
}

/// The records in the complete lines of `bytes` and how many bytes those lines take. A last
/// line without its `\n` (a crash cut it, or a writer is still at it) is not consumed; a line
/// that does not parse, or is longer than [`MAX_LINE`], is skipped (counted in `bad`).
pub fn parse_journal(bytes: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    let mut start = 0;
    while let Some(n) = memchr::memchr(b'\n', &bytes[start..]) {
        let line = &bytes[start..start + n];
        start += n + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Record>(line) {
            Ok(r) if line.len() <= MAX_LINE && r.is_sane() => parsed.records.push(r),
            _ => parsed.bad += 1,
        }
    }
    parsed.consumed = start;
    parsed
}

/// What [`parse_journal`] found.
#[derive(Debug, Default)]
pub struct Parsed {
    pub records: Vec<Record>,
    /// Bytes of complete lines.
    pub consumed: usize,
    /// Complete lines skipped.
    pub bad: usize,
}

impl Record {
    fn is_sane(&self) -> bool {
        let (tenant, address) = match self {
            Record::Add(e) => (&e.tenant, &e.address),
            Record::Del { tenant, address } => (tenant, address),
            Record::Epoch { .. } => return true,
        };
        !address.is_empty() && tenant.len() <= MAX_NAME && address.len() <= MAX_NAME
    }
}

type Key = (String, String);

fn key(tenant: &str, address: &str) -> Key {
    (tenant.to_owned(), address.to_ascii_lowercase())
}

/// What this process has read of the journal.
#[derive(Debug, Default)]
struct Cursor {
    /// The journal's device and inode when read; `None` before the first read.
    file: Option<(u64, u64)>,
    /// Bytes read (always at a line end).
    offset: u64,
    /// Records in the journal (for the compaction ratio).
    records: usize,
    /// Whether the journal ends in a torn line (compact at the next write).
    torn: bool,
    /// The file's [`Record::Epoch`] (`None`: never compacted).
    epoch: Option<u64>,
}

/// The tenant of an entry that applies to every tenant: one an operator added with
/// `submitd suppression add ADDRESS` and no tenant.
pub const EVERY_TENANT: &str = "*";

/// The list the server checks.
#[derive(Debug)]
pub struct Suppressions {
    /// `None`: in memory only.
    dir: Option<PathBuf>,
    ttl: Duration,
    max_entries: usize,
    entries: RwLock<HashMap<Key, Entry>>,
    /// Held while reading or writing the journal (never by `check`).
    cursor: Mutex<Cursor>,
}

impl Suppressions {
    /// An empty list whose entries live `ttl`, kept in memory only.
    pub fn in_memory(ttl: Duration) -> Suppressions {
        Suppressions {
            dir: None,
            ttl,
            max_entries: usize::MAX,
            entries: RwLock::new(HashMap::new()),
            cursor: Mutex::new(Cursor::default()),
        }
    }

    /// Open (creating it, mode 0700) the store in `dir` (`queue.dir/suppressions`), read it,
    /// and compact it when it needs it. Blocks.
    pub fn open(
        dir: &Path,
        ttl: Duration,
        max_entries: usize,
    ) -> Result<Suppressions, SuppressionError> {
        create_dir(dir)?;
        let store = Suppressions {
            dir: Some(dir.to_path_buf()),
            ttl,
            max_entries: max_entries.max(1),
            entries: RwLock::new(HashMap::new()),
            cursor: Mutex::new(Cursor::default()),
        };
        {
            let _lock = store.lock_dir()?;
            let mut cursor = store.cursor();
            store.catch_up(&mut cursor)?;
            if store.wants_compaction(&cursor) {
                store.compact(&mut cursor)?;
            }
        }
        Ok(store)
    }

    /// The store of `queue_dir` (its `suppressions/` directory).
    pub fn open_in_queue(
        queue_dir: &Path,
        ttl: Duration,
        max_entries: usize,
    ) -> Result<Suppressions, SuppressionError> {
        Suppressions::open(&queue_dir.join("suppressions"), ttl, max_entries)
    }

    /// The entry for `address` in `tenant`'s list, if one applies at `now`. In memory only.
    pub fn check(&self, tenant: &str, address: &str, now: u64) -> Option<Entry> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let live = |t: &str| entries.get(&key(t, address)).filter(|e| e.expires > now);
        live(tenant).or_else(|| live(EVERY_TENANT)).cloned()
    }

    /// Add (or refresh) `address` to `tenant`'s list. Blocks (a durable write).
    pub fn add(
        &self,
        tenant: &str,
        address: &str,
        reply: &str,
        now: u64,
    ) -> Result<(), SuppressionError> {
        if address.is_empty() || address.len() > MAX_NAME || tenant.len() > MAX_NAME {
            return Err(SuppressionError::Io(format!(
                "address and tenant must be 1 to {MAX_NAME} bytes"
            )));
        }
        let entry = Entry {
            tenant: tenant.to_owned(),
            address: address.to_ascii_lowercase(),
            reply: reply.chars().take(1000).collect(),
            added: now,
            expires: now.saturating_add(self.ttl.as_secs()),
        };
        self.write(Record::Add(entry))
    }

    /// Remove `address` from `tenant`'s list; whether it was there (in force or not). Blocks.
    pub fn remove(&self, tenant: &str, address: &str) -> Result<bool, SuppressionError> {
        let (tenant, address) = key(tenant, address);
        let there = {
            // Catch up first, so that an entry the CLI added a moment ago is found.
            let _lock = self.lock_dir()?;
            let mut cursor = self.cursor();
            self.catch_up(&mut cursor)?;
            let there = self
                .read_entries()
                .contains_key(&(tenant.clone(), address.clone()));
            if there {
                self.append(&mut cursor, &Record::Del { tenant, address })?;
            }
            there
        };
        Ok(there)
    }

    /// The entries in force at `now`, of one tenant or of all, by tenant and address.
    pub fn list(&self, tenant: Option<&str>, now: u64) -> Vec<Entry> {
        let entries = self.read_entries();
        let mut out: Vec<Entry> = entries
            .values()
            .filter(|e| e.expires > now && tenant.is_none_or(|t| t == e.tenant))
            .cloned()
            .collect();
        out.sort_by(|a, b| (&a.tenant, &a.address).cmp(&(&b.tenant, &b.address)));
        out
    }

    /// Read what other processes wrote since the last look. Blocks (an `fstat`, the new bytes).
    pub fn refresh_blocking(&self) -> Result<(), SuppressionError> {
        if self.dir.is_none() {
            return Ok(());
        }
        let mut cursor = self.cursor();
        self.catch_up(&mut cursor)
    }

    fn write(&self, record: Record) -> Result<(), SuppressionError> {
        if self.dir.is_none() {
            let mut cursor = self.cursor();
            self.apply(&mut cursor, vec![record], false);
            return Ok(());
        }
        let _lock = self.lock_dir()?;
        let mut cursor = self.cursor();
        self.catch_up(&mut cursor)?;
        self.append(&mut cursor, &record)
    }

    /// Append `record` (under the directory lock, after a catch-up), fsync, apply it, and
    /// compact when the journal has grown past twice the live entries.
    fn append(&self, cursor: &mut Cursor, record: &Record) -> Result<(), SuppressionError> {
        let Some(dir) = &self.dir else {
            self.apply(cursor, vec![record.clone()], false);
            return Ok(());
        };
        if cursor.torn {
            // New lines must not be glued to a torn one: rewrite first.
            self.compact(cursor)?;
        }
        let path = dir.join("journal.jsonl");
        let mut line = serde_json::to_vec(record)
            .map_err(|e| SuppressionError::Io(format!("cannot encode a record: {e}")))?;
        line.push(b'\n');
        let mut file = open_journal(&path, true)?;
        let meta = file
            .metadata()
            .map_err(|e| io_error("cannot stat", &path, e))?;
        // Created just now: it is the file this process reads from here on.
        if cursor.file != Some((meta.dev(), meta.ino())) {
            cursor.file = Some((meta.dev(), meta.ino()));
            cursor.offset = meta.len();
            cursor.epoch = None;
        }
        file.write_all(&line)
            .and_then(|()| file.sync_data())
            .map_err(|e| io_error("cannot append to", &path, e))?;
        if meta.len() == 0 {
            sync_dir(dir)?;
        }
        cursor.offset = meta.len() + line.len() as u64;
        self.apply(cursor, vec![record.clone()], false);
        if self.wants_compaction(cursor) {
            self.compact(cursor)?;
        }
        Ok(())
    }

    /// Read the journal from where this process left off, or whole when it was replaced.
    fn catch_up(&self, cursor: &mut Cursor) -> Result<(), SuppressionError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let path = dir.join("journal.jsonl");
        let mut file = match open_journal(&path, false) {
            Ok(f) => f,
            Err(_) if !path.exists() => {
                if cursor.file.is_some() {
                    *cursor = Cursor::default();
                    self.write_entries().clear();
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let meta = file
            .metadata()
            .map_err(|e| io_error("cannot stat", &path, e))?;
        let epoch = file_epoch(&file);
        let same = cursor.file == Some((meta.dev(), meta.ino()))
            && meta.len() >= cursor.offset
            && epoch == cursor.epoch;
        if same && meta.len() == cursor.offset {
            return Ok(());
        }
        let from = if same { cursor.offset } else { 0 };
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(from))
            .and_then(|_| file.take(meta.len() - from).read_to_end(&mut bytes))
            .map_err(|e| io_error("cannot read", &path, e))?;
        let parsed = parse_journal(&bytes);
        if parsed.bad > 0 {
            warn!(file = %path.display(), lines = parsed.bad, "suppression: unreadable journal lines skipped");
        }
        if !same {
            *cursor = Cursor {
                file: Some((meta.dev(), meta.ino())),
                epoch,
                ..Cursor::default()
            };
        }
        cursor.offset = from + parsed.consumed as u64;
        cursor.torn = parsed.consumed < bytes.len();
        cursor.records += parsed.bad;
        self.apply(cursor, parsed.records, !same);
        Ok(())
    }

    /// Apply records to the map (replacing it when `whole`), then drop the oldest entries
    /// beyond `max_entries`.
    fn apply(&self, cursor: &mut Cursor, records: Vec<Record>, whole: bool) {
        cursor.records += records.len();
        let mut entries = self.write_entries();
        if whole {
            entries.clear();
        }
        for record in records {
            match record {
                Record::Add(mut e) => {
                    e.address.make_ascii_lowercase();
                    entries.insert((e.tenant.clone(), e.address.clone()), e);
                }
                Record::Del { tenant, address } => {
                    entries.remove(&key(&tenant, &address));
                }
                Record::Epoch { .. } => {}
            }
        }
        if entries.len() > self.max_entries {
            let over = entries.len() - self.max_entries + self.max_entries / 100;
            let mut by_age: Vec<(u64, Key)> =
                entries.iter().map(|(k, e)| (e.added, k.clone())).collect();
            by_age.sort_unstable();
            for (_, k) in by_age.into_iter().take(over) {
                entries.remove(&k);
            }
        }
    }

    fn wants_compaction(&self, cursor: &Cursor) -> bool {
        cursor.torn || cursor.records > 2 * self.read_entries().len() + SLACK
    }

    /// Replace the journal with the entries in force (under the directory lock).
    fn compact(&self, cursor: &mut Cursor) -> Result<(), SuppressionError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let now = crate::clock::unix_now();
        let epoch = rand::random::<u64>();
        let mut out = Vec::new();
        serde_json::to_writer(&mut out, &Record::Epoch { epoch })
            .map_err(|e| SuppressionError::Io(format!("cannot encode a record: {e}")))?;
        out.push(b'\n');
        let mut live = 0;
        {
            let mut entries = self.write_entries();
            entries.retain(|_, e| e.expires > now);
            let mut sorted: Vec<&Entry> = entries.values().collect();
            sorted.sort_by_key(|e| e.added);
            for e in sorted {
                if serde_json::to_writer(&mut out, &Record::Add(e.clone())).is_ok() {
                    out.push(b'\n');
                    live += 1;
                }
            }
        }
        let path = dir.join("journal.jsonl");
        crate::fsown::write_atomic(&path, &out)
            .map_err(|e| io_error("cannot rewrite", &path, e))?;
        let meta = std::fs::metadata(&path).map_err(|e| io_error("cannot stat", &path, e))?;
        *cursor = Cursor {
            file: Some((meta.dev(), meta.ino())),
            offset: out.len() as u64,
            records: live + 1,
            torn: false,
            epoch: Some(epoch),
        };
        info!(entries = live, "suppression: journal compacted");
        Ok(())
    }

    fn lock_dir(&self) -> Result<Option<File>, SuppressionError> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let path = dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_error("cannot open", &path, e))?;
        file.lock().map_err(|e| io_error("cannot lock", &path, e))?;
        Ok(Some(file))
    }

    fn cursor(&self) -> std::sync::MutexGuard<'_, Cursor> {
        self.cursor.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_entries(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Key, Entry>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_entries(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Key, Entry>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The [`Record::Epoch`] on the first line of `file`, if it starts with one.
fn file_epoch(file: &File) -> Option<u64> {
    use std::os::unix::fs::FileExt as _;
    let mut head = [0u8; 64];
    let n = file.read_at(&mut head, 0).ok()?;
    let line = &head[..memchr::memchr(b'\n', &head[..n])?];
    match serde_json::from_slice(line).ok()? {
        Record::Epoch { epoch } => Some(epoch),
        _ => None,
    }
}

fn open_journal(path: &Path, append: bool) -> Result<File, SuppressionError> {
    let mut options = OpenOptions::new();
    if append {
        options.append(true).create(true).mode(0o600);
    } else {
        options.read(true);
    }
    let file = options
        .open(path)
        .map_err(|e| io_error("cannot open", path, e))?;
    if append {
        crate::fsown::keep_owner(&file, path).map_err(|e| io_error("cannot own", path, e))?;
    }
    Ok(file)
}

/// Create `dir` (0700) with the owner of its parent (the queue directory) when we are root,
/// so that a CLI run as root leaves a store the server can still write.
fn create_dir(dir: &Path) -> Result<(), SuppressionError> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error("cannot create", dir, e))?;
    if crate::fsown::is_root()
        && let Some(parent) = dir.parent()
        && let Ok(m) = std::fs::metadata(parent)
    {
        std::os::unix::fs::chown(dir, Some(m.uid()), Some(m.gid()))
            .map_err(|e| io_error("cannot chown", dir, e))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), SuppressionError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("cannot fsync", dir, e))
}

/// Keep `store` up to date with what other processes (the CLI) write: a look once a second,
/// on the blocking pool, until `shutdown`.
pub async fn follow(store: Arc<Suppressions>, shutdown: CancellationToken) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.refresh_blocking()).await {
            Ok(Ok(())) => failing = false,
            Ok(Err(e)) if !failing => {
                failing = true;
                warn!(error = %e, "suppression: cannot re-read the list");
            }
            _ => {}
        }
    }
}

/// Whether a bounce event should suppress its recipient: a permanent failure that says the
/// *mailbox* is bad, for a tenant's message (not a bounce of a bounce). The rule, by the
/// enhanced status code (RFC 3463):
///
/// - `5.1.x` (addressing: no such user 5.1.1, no such domain 5.1.2, null MX 5.1.10, moved
///   5.1.6), except 5.1.7 and 5.1.8, which are about the *sender*;
/// - `5.2.0` and `5.2.1` (mailbox unavailable or disabled); not 5.2.2 (mailbox full, which
///   clears), 5.2.3 (message too long) or 5.2.4 (list expansion);
/// - `5.0.0` (a next hop without enhanced codes) only when its basic code is 550 or 551
///   (RFC 5321 section 4.2.3: mailbox unavailable, user not local);
/// - nothing else: not 5.3.x (their system; 5.3.4 too big), 5.4.x (routing), 5.5.x
///   (protocol), 5.6.x (content, SMTPUTF8, 8BITMIME), 5.7.x (policy and TLS: spam refusals,
///   5.7.10 REQUIRETLS), and no 4.x.x (4.4.7: retries ran out at `queue.max_age`).
pub fn suppresses(event: &DeliveryEvent) -> bool {
    if event.kind != EventKind::Bounced
        || event.tenant.is_empty()
        || event.tenant == crate::queue::bounce::MAILER_DAEMON
        || event.recipient.is_empty()
    {
        return false;
    }
    let Some(status) = event.status.as_deref() else {
        return false;
    };
    let mut parts = status.split('.');
    let (Some(class), Some(subject), Some(detail), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    if class != "5" {
        return false;
    }
    match (subject, detail) {
        ("1", "7" | "8") => false,
        ("1", _) => true,
        ("2", "0" | "1") => true,
        ("0", "0") => event.reply.starts_with("550") || event.reply.starts_with("551"),
        _ => false,
    }
}

/// The [`EventSink`] that adds a recipient on a permanent failure ([`suppresses`]).
#[derive(Debug)]
pub struct BounceSink {
    pub store: Arc<Suppressions>,
}

impl EventSink for BounceSink {
    fn record_blocking(&self, events: &[DeliveryEvent]) {
        for event in events.iter().filter(|e| suppresses(e)) {
            match self
                .store
                .add(&event.tenant, &event.recipient, &event.reply, event.at)
            {
                Ok(()) => info!(
                    tenant = %Escaped(&event.tenant),
                    to = %Escaped(&event.recipient),
                    queue_id = %event.queue_id,
                    "suppression: recipient added after a permanent failure"
                ),
                Err(e) => warn!(
                    tenant = %Escaped(&event.tenant),
                    to = %Escaped(&event.recipient),
                    error = %e,
                    "suppression: cannot add recipient"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn open(dir: &Path) -> Suppressions {
        Suppressions::open(dir, DAY, 1000).unwrap()
    }

    fn bounce(status: &str, tenant: &str) -> DeliveryEvent {
        DeliveryEvent {
            kind: EventKind::Bounced,
            queue_id: "Q".into(),
            user: tenant.into(),
            tenant: tenant.into(),
            recipient: "Bob@Example.test".into(),
            reply: "550 5.1.1 no".into(),
            status: Some(status.into()),
            host: None,
            attempt: 1,
            at: 100,
            envid: None,
            metadata: Default::default(),
        }
    }

    #[test]
    fn only_mailbox_failures_suppress() {
        for (status, tenant, want) in [
            ("5.1.1", "alice", true),
            ("5.1.2", "alice", true),
            ("5.1.10", "alice", true),
            ("5.2.1", "alice", true),
            ("5.0.0", "alice", true),
            ("5.1.8", "alice", false),
            ("5.2.2", "alice", false),
            ("5.7.1", "alice", false),
            ("5.3.4", "alice", false),
            ("5.4.4", "alice", false),
            ("5.6.0", "alice", false),
            ("5.6.7", "alice", false),
            ("5.7.10", "alice", false),
            ("4.4.7", "alice", false),
            ("", "alice", false),
            ("5.1.1", "", false),
            ("5.1.1", "MAILER-DAEMON", false),
        ] {
            assert_eq!(
                suppresses(&bounce(status, tenant)),
                want,
                "{status} {tenant}"
            );
        }
        let mut policy = bounce("5.0.0", "alice");
        policy.reply = "554 go away".into();
        assert!(!suppresses(&policy));
        let mut delivered = bounce("5.1.1", "alice");
        delivered.kind = EventKind::Delivered;
        assert!(!suppresses(&delivered));
    }

    #[test]
    fn add_check_remove_survive_reopen_and_tenants_are_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let s = open(tmp.path());
        s.add("alice", "Bob@Example.TEST", "550 5.1.1 no", 100)
            .unwrap();
        assert!(s.check("alice", "bob@example.test", 200).is_some());
        assert!(s.check("carol", "bob@example.test", 200).is_none());
        // Expired at ttl.
        assert!(s.check("alice", "bob@example.test", 100 + 86_400).is_none());
        let again = open(tmp.path());
        assert_eq!(again.list(None, 200).len(), 1);
        assert!(again.remove("alice", "BOB@example.test").unwrap());
        assert!(!again.remove("alice", "bob@example.test").unwrap());
        // The first handle sees the removal after a refresh.
        s.refresh_blocking().unwrap();
        assert!(s.check("alice", "bob@example.test", 200).is_none());
        assert!(open(tmp.path()).list(None, 200).is_empty());
    }

    #[test]
    fn another_process_compaction_is_noticed() {
        let tmp = tempfile::tempdir().unwrap();
        let a = open(tmp.path());
        let b = open(tmp.path());
        for i in 0..200 {
            b.add("t", &format!("u{i}@x"), "r", 100).unwrap();
            b.remove("t", &format!("u{i}@x")).unwrap();
        }
        b.add("t", "kept@x", "r", 100).unwrap();
        let size = std::fs::metadata(tmp.path().join("journal.jsonl"))
            .unwrap()
            .len();
        assert!(size < 4096, "compacted: {size}");
        a.refresh_blocking().unwrap();
        assert_eq!(a.list(Some("t"), 200).len(), 1);
        assert!(a.check("t", "kept@x", 200).is_some());
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_repaired() {
        let tmp = tempfile::tempdir().unwrap();
        // Real time: the compaction on open drops entries expired by the clock.
        let now = crate::clock::unix_now();
        let s = open(tmp.path());
        s.add("t", "a@x", "r", now).unwrap();
        let path = tmp.path().join("journal.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"op\":\"add\",\"tenant\":\"t\",\"addr")
            .unwrap();
        drop(f);
        let again = open(tmp.path());
        again.add("t", "b@x", "r", now).unwrap();
        let third = open(tmp.path());
        assert_eq!(third.list(None, now).len(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\"op\":\"epoch\""), "{text}");
        assert!(
            text.lines()
                .skip(1)
                .all(|l| l.starts_with("{\"op\":\"add\"")),
            "{text}"
        );
    }

    #[test]
    fn a_replaced_file_with_the_same_inode_is_read_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let now = crate::clock::unix_now();
        let a = open(tmp.path());
        let b = open(tmp.path());
        for i in 0..100 {
            b.add("t", &format!("u{i}@x"), "r", now).unwrap();
            b.remove("t", &format!("u{i}@x")).unwrap();
        }
        b.add("t", "old@x", "r", now).unwrap();
        a.refresh_blocking().unwrap();
        assert!(a.check("t", "old@x", now).is_some());
        // Another compacted file, longer, written over the same inode (as if the inode
        // number had been reused).
        let path = tmp.path().join("journal.jsonl");
        let mut text = b"{\"op\":\"epoch\",\"epoch\":7}\n".to_vec();
        for i in 0..5 {
            let e = Entry {
                tenant: "t".into(),
                address: format!("new{i}@x"),
                reply: "r".into(),
                added: now,
                expires: now + 100,
            };
            serde_json::to_writer(&mut text, &Record::Add(e)).unwrap();
            text.push(b'\n');
        }
        std::fs::write(&path, &text).unwrap();
        a.refresh_blocking().unwrap();
        assert!(a.check("t", "old@x", now).is_none());
        assert_eq!(a.list(Some("t"), now).len(), 5);
    }

    #[test]
    fn the_oldest_go_over_max_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Suppressions::open(tmp.path(), DAY, 10).unwrap();
        for i in 0..15u64 {
            s.add("t", &format!("u{i}@x"), "r", 100 + i).unwrap();
        }
        let list = s.list(None, 100);
        assert!(list.len() <= 10);
        assert!(s.check("t", "u14@x", 120).is_some());
        assert!(s.check("t", "u0@x", 120).is_none());
    }

    proptest! {
        #[test]
        fn journal_parser_never_panics_and_stops_at_the_last_newline(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let parsed = parse_journal(&bytes);
            prop_assert!(parsed.consumed <= bytes.len());
            prop_assert!(parsed.consumed == 0 || bytes[parsed.consumed - 1] == b'\n');
            prop_assert!(!bytes[parsed.consumed..].contains(&b'\n'));
        }

        #[test]
        fn a_journal_cut_anywhere_keeps_every_complete_record(n in 1usize..8, cut in 0usize..4096) {
            let mut text = Vec::new();
            for i in 0..n {
                let r = Record::Add(Entry { tenant: "t".into(), address: format!("u{i}@x"), reply: "550 \"x\"\n".into(), added: 1, expires: 2 });
                serde_json::to_writer(&mut text, &r).unwrap();
                text.push(b'\n');
            }
            let cut = cut.min(text.len());
            let parsed = parse_journal(&text[..cut]);
            let complete = text[..cut].iter().filter(|&&b| b == b'\n').count();
            prop_assert_eq!(parsed.records.len(), complete);
            prop_assert_eq!(parsed.bad, 0);
        }
    }
}
