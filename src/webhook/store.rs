//! One endpoint's backlog on disk, `queue.dir/webhooks/NAME/`: one file per event,
//! `<16 hex digits: microseconds since the epoch>_<event id>.json` (an *entry*), holding the
//! exact body to send. The time orders the backlog and tells the event's age; the event id
//! (`webhook-id`) is derived from the event itself, so an event recorded twice (a crash
//! between the record and the message's state save) is sent under the same id both times.
//! `state.json` beside them keeps the dispatcher's last error (for `submitd webhook list`).
//!
//! Writes: each file goes to `NAME.tmp`, is fsynced and renamed; one directory fsync per
//! batch. A crash before the directory fsync loses only events whose message state was not
//! saved yet (the scheduler records events first), so they are made again.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Every event id starts with this (the Standard Webhooks examples' `msg_`).
pub const ID_PREFIX: &str = "msg_";
const SUFFIX: &str = ".json";
const TMP: &str = ".tmp";
/// The dispatcher's state file.
pub const STATE_FILE: &str = "state.json";
/// At most this many bytes of a body file are read (bodies are a few hundred bytes; replies
/// and metadata are bounded upstream).
pub const MAX_BODY: u64 = 1024 * 1024;
/// The longest event id accepted in a file name.
const MAX_ID: usize = 64;

/// The entry (file stem) of event `id` made at `micros` (microseconds since the epoch).
pub fn entry(micros: u64, id: &str) -> String {
    format!("{micros:016x}_{id}")
}

/// When the event of `entry` was made, in microseconds since the epoch.
pub fn entry_micros(entry: &str) -> Option<u64> {
    split(entry).map(|(m, _)| m)
}

/// The event id (`webhook-id`) of `entry`.
pub fn entry_id(entry: &str) -> Option<&str> {
    split(entry).map(|(_, id)| id)
}

fn split(entry: &str) -> Option<(u64, &str)> {
    let (hex, id) = entry.split_once('_')?;
    let ok_id = id.starts_with(ID_PREFIX)
        && id.len() <= MAX_ID
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if hex.len() != 16 || !ok_id {
        return None;
    }
    Some((u64::from_str_radix(hex, 16).ok()?, id))
}

/// The backlog directory of endpoint `name` under `queue_dir`.
pub fn dir_of(queue_dir: &Path, name: &str) -> PathBuf {
    queue_dir.join("webhooks").join(name)
}

/// The entries waiting in `dir`, oldest first (a missing directory holds none).
pub fn ids_on_disk(dir: &Path) -> io::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name.strip_suffix(SUFFIX)
            && split(id).is_some()
        {
            ids.push(id.to_string());
        }
    }
    ids.sort();
    Ok(ids)
}

/// What the dispatcher last saw, kept in `state.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchState {
    /// The last failure: HTTP status or network error.
    pub last_error: Option<String>,
    /// Unix seconds of `last_error`.
    pub last_error_at: Option<u64>,
    /// Failures since the last success (0: the endpoint answers).
    pub consecutive_failures: u32,
}

/// Read `state.json` in `dir` (missing or unreadable: the default).
pub fn read_state(dir: &Path) -> DispatchState {
    use std::io::Read;
    let mut bytes = Vec::new();
    File::open(dir.join(STATE_FILE))
        .and_then(|f| f.take(MAX_BODY).read_to_end(&mut bytes))
        .ok()
        .and_then(|_| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Replace `state.json` in `dir`.
pub fn write_state(dir: &Path, state: &DispatchState) -> io::Result<()> {
    let bytes = serde_json::to_vec(state).map_err(io::Error::other)?;
    crate::fsown::write_atomic(&dir.join(STATE_FILE), &bytes)
}

/// One endpoint's backlog: the directory and the ids in it (kept in memory, so that neither
/// the sink nor the dispatcher lists the directory per event).
#[derive(Debug)]
pub struct Backlog {
    dir: PathBuf,
    ids: Mutex<BTreeSet<String>>,
}

impl Backlog {
    /// Open (creating, mode 0700) the directory and load the ids in it; leftovers of an
    /// interrupted write (`*.tmp`) are removed.
    pub fn open(dir: PathBuf) -> io::Result<Backlog> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == &TMP[1..]) {
                let _ = fs::remove_file(&path);
            }
        }
        let ids = ids_on_disk(&dir)?.into_iter().collect();
        Ok(Backlog {
            dir,
            ids: Mutex::new(ids),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.ids().len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids().is_empty()
    }

    /// The oldest event waiting.
    pub fn first(&self) -> Option<String> {
        self.ids().first().cloned()
    }

    /// The oldest event waiting for which `ready` holds.
    pub fn first_where(&self, mut ready: impl FnMut(&str) -> bool) -> Option<String> {
        self.ids().iter().find(|id| ready(id)).cloned()
    }

    /// The newest event id (to keep new ids above it after a restart).
    pub fn last(&self) -> Option<String> {
        self.ids().last().cloned()
    }

    /// Write `body` as event `id`, fsynced, renamed into place; the directory is not synced
    /// (see [`Backlog::sync_dir`]) and the id not yet listed (see [`Backlog::admit`]).
    pub fn write(&self, id: &str, body: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!("{id}{SUFFIX}{TMP}"));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(body)?;
            f.sync_all()?;
            fs::rename(&tmp, self.dir.join(format!("{id}{SUFFIX}")))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Make the renames of this batch durable.
    pub fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    /// List written events for the dispatcher.
    pub fn admit(&self, ids: impl IntoIterator<Item = String>) {
        self.ids().extend(ids);
    }

    /// The body of event `id` (bounded by [`MAX_BODY`]).
    pub fn read(&self, id: &str) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let mut body = Vec::new();
        File::open(self.dir.join(format!("{id}{SUFFIX}")))?
            .take(MAX_BODY)
            .read_to_end(&mut body)?;
        Ok(body)
    }

    /// Forget event `id`: sent, or dropped. A crash before the unlink reaches the disk sends it
    /// again (receivers deduplicate by `webhook-id`).
    pub fn remove(&self, id: &str) -> io::Result<()> {
        self.ids().remove(id);
        match fs::remove_file(self.dir.join(format!("{id}{SUFFIX}"))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_at(micros: u64) -> String {
        entry(micros, "msg_abc")
    }

    #[test]
    fn entries_order_by_time_and_round_trip() {
        assert_eq!(id_at(1), "0000000000000001_msg_abc");
        assert_eq!(
            entry_micros(&id_at(1_700_000_000_123_456)),
            Some(1_700_000_000_123_456)
        );
        assert_eq!(entry_id(&id_at(5)), Some("msg_abc"));
        assert!(id_at(9) < id_at(10));
        assert!(id_at(0xff) < id_at(0x100));
        assert_eq!(entry_micros("msg_xyz"), None);
        assert_eq!(entry_micros("0000000000000001_evt_1"), None);
        assert_eq!(entry_micros("0000000000000001_msg_../x"), None);
        assert_eq!(entry_micros("000000000000001_msg_1"), None);
    }

    #[test]
    fn write_read_remove_and_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = dir_of(tmp.path(), "ep");
        let b = Backlog::open(dir.clone()).unwrap();
        assert!(b.is_empty());
        b.write(&id_at(2), b"two").unwrap();
        b.write(&id_at(1), b"one").unwrap();
        b.sync_dir().unwrap();
        assert!(b.is_empty(), "not listed before admit");
        b.admit([id_at(2), id_at(1)]);
        assert_eq!(b.first(), Some(id_at(1)));
        assert_eq!(b.last(), Some(id_at(2)));
        assert_eq!(b.read(&id_at(1)).unwrap(), b"one");
        // A leftover temp file and strangers in the directory are not events.
        fs::write(dir.join("0000000000000003_msg_abc.json.tmp"), b"half").unwrap();
        fs::write(dir.join("notes.txt"), b"x").unwrap();
        write_state(&dir, &DispatchState::default()).unwrap();
        let again = Backlog::open(dir.clone()).unwrap();
        assert_eq!(again.len(), 2);
        assert!(!dir.join("0000000000000003_msg_abc.json.tmp").exists());
        again.remove(&id_at(1)).unwrap();
        again.remove(&id_at(1)).unwrap();
        assert_eq!(ids_on_disk(&dir).unwrap(), vec![id_at(2)]);
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn first_where_skips_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let backlog = Backlog::open(dir.path().join("ep")).unwrap();
        let ids: Vec<String> = [3, 1, 2].into_iter().map(id_at).collect();
        backlog.admit(ids.iter().cloned());
        assert_eq!(backlog.first_where(|_| true), Some(id_at(1)));
        assert_eq!(backlog.first_where(|id| id != id_at(1)), Some(id_at(2)));
        assert_eq!(backlog.first_where(|_| false), None);
    }

    #[test]
    fn state_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(read_state(tmp.path()), DispatchState::default());
        let s = DispatchState {
            last_error: Some("HTTP 503".into()),
            last_error_at: Some(5),
            consecutive_failures: 2,
        };
        write_state(tmp.path(), &s).unwrap();
        assert_eq!(read_state(tmp.path()), s);
        assert!(ids_on_disk(&tmp.path().join("missing")).unwrap().is_empty());
    }

    use std::os::unix::fs::PermissionsExt;
}
