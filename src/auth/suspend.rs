//! Suspended accounts: a small JSON state file, `suspended.json` in the queue directory (the
//! one place the server may always write: the users file is often read-only in containers).
//! The server suspends a user that looks compromised ([`quota`](super::quota)); `submitd user
//! suspend|unsuspend` edit the same file, and a running server picks the change up within a
//! second of its next look (every AUTH looks), like it does for the users file.
//!
//! A suspended user still authenticates but every MAIL FROM gets `550 5.7.1 Account
//! suspended, contact the administrator`: a client then shows the user a clear, permanent
//! error instead of a password prompt, and the attacker learns nothing about the password.
//!
//! Format (`version` 1), written atomically (temp file, fsync, rename, directory fsync) under
//! an exclusive lock on `suspended.json.lock`:
//!
//! ```json
//! {"version": 1, "users": {"alice@example.test": {"since": 1767225600, "reason": "..."}}}
//! ```

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::clock::unix_now;

/// The state file's name inside the queue directory.
pub const FILE_NAME: &str = "suspended.json";
const FORMAT_VERSION: u32 = 1;

/// Where the suspension state of a server with this queue directory lives.
pub fn state_path(queue_dir: &Path) -> PathBuf {
    queue_dir.join(FILE_NAME)
}

/// One suspension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suspension {
    /// Unix seconds when the account was suspended.
    pub since: u64,
    /// Why, for the administrator.
    pub reason: String,
}

/// The file as written.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    #[serde(default)]
    users: BTreeMap<String, Suspension>,
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SuspendError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a suspension state file: {message}")]
    Invalid { path: PathBuf, message: String },
    /// `unsuspend` of a login that is not suspended.
    #[error("{0} is not suspended")]
    NotSuspended(String),
}

fn io_error(path: &Path, source: std::io::Error) -> SuspendError {
    SuspendError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Every suspension in the file; a missing file means none.
pub fn load(path: &Path) -> Result<BTreeMap<String, Suspension>, SuspendError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(io_error(path, e)),
    };
    let file: StateFile = serde_json::from_slice(&bytes).map_err(|e| SuspendError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    if file.version != FORMAT_VERSION {
        return Err(SuspendError::Invalid {
            path: path.to_owned(),
            message: format!("unknown version {}", file.version),
        });
    }
    Ok(file.users)
}

/// Read, change and atomically rewrite the file under its lock. The directory is created
/// (mode 0700, like the queue) when missing. Returns what `change` returned.
fn edit<T>(
    path: &Path,
    change: impl FnOnce(&mut BTreeMap<String, Suspension>) -> Result<T, SuspendError>,
) -> Result<T, SuspendError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error(dir, e))?;
    // A separate lock file: a lock on the state file itself would be lost at the rename.
    let lock_path = path.with_extension("json.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| io_error(&lock_path, e))?;
    lock.lock().map_err(|e| io_error(&lock_path, e))?;
    let mut users = load(path)?;
    let out = change(&mut users)?;
    let text = serde_json::to_vec_pretty(&StateFile {
        version: FORMAT_VERSION,
        users,
    })
    .map_err(|e| SuspendError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut text = text;
    text.push(b'\n');
    crate::fsown::write_atomic(path, &text).map_err(|e| io_error(path, e))?;
    Ok(out)
}

/// Suspend `login` (a no-op returning `false` when it already is).
pub fn suspend(path: &Path, login: &str, reason: &str) -> Result<bool, SuspendError> {
    edit(path, |users| {
        if users.contains_key(login) {
            return Ok(false);
        }
        users.insert(
            login.to_owned(),
            Suspension {
                since: unix_now(),
                reason: reason.to_owned(),
            },
        );
        Ok(true)
    })
}

/// Lift `login`'s suspension; [`SuspendError::NotSuspended`] when there is none.
pub fn unsuspend(path: &Path, login: &str) -> Result<(), SuspendError> {
    edit(path, |users| {
        users
            .remove(login)
            .map(|_| ())
            .ok_or_else(|| SuspendError::NotSuspended(login.to_owned()))
    })
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

struct State {
    users: BTreeMap<String, Suspension>,
    stamp: Option<Stamp>,
    last_check: Instant,
}

/// The suspensions of a running server: checked in memory on every MAIL, re-read from the
/// file (at most once per interval, in [`refresh`](Suspensions::refresh), which blocks) when
/// it changed.
pub struct Suspensions {
    path: Option<PathBuf>,
    state: RwLock<State>,
    check_interval: Duration,
    /// The shared store's suspension set as last read (`[state] backend = "redis"`): kept
    /// while the store does not answer, so known suspensions stay in force.
    shared: RwLock<BTreeMap<String, Suspension>>,
}

impl Suspensions {
    /// How often `refresh` looks at the file's metadata.
    const CHECK_INTERVAL: Duration = Duration::from_secs(1);

    /// Follow the state file at `path` (blocking: reads it once now; a bad file is logged and
    /// treated as empty so that a typo cannot stop the server).
    pub fn open(path: &Path) -> Suspensions {
        Self::open_with_interval(path, Self::CHECK_INTERVAL)
    }

    /// `open` with another metadata check interval (tests use zero).
    pub fn open_with_interval(path: &Path, check_interval: Duration) -> Suspensions {
        let s = Suspensions {
            path: Some(path.to_owned()),
            state: RwLock::new(State {
                users: BTreeMap::new(),
                stamp: None,
                last_check: Instant::now(),
            }),
            check_interval,
            shared: RwLock::new(BTreeMap::new()),
        };
        s.reload(&mut s.state.write().unwrap_or_else(|e| e.into_inner()));
        s
    }

    /// No file, nobody suspended (tests, servers without limits).
    pub fn in_memory() -> Suspensions {
        Suspensions {
            path: None,
            state: RwLock::new(State {
                users: BTreeMap::new(),
                stamp: None,
                last_check: Instant::now(),
            }),
            check_interval: Self::CHECK_INTERVAL,
            shared: RwLock::new(BTreeMap::new()),
        }
    }

    /// The shared store's suspension set, as just read: replaces the copy kept before.
    pub fn set_shared(&self, users: BTreeMap<String, Suspension>) {
        *self.shared.write().unwrap_or_else(|e| e.into_inner()) = users;
    }

    /// Suspend `login` in the shared copy at once (the store itself is written by the caller):
    /// refused from now on here, before the next read of the store.
    pub fn mark_shared(&self, login: &str, suspension: Suspension) {
        self.shared
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(login.to_owned(), suspension);
    }

    fn in_shared(&self, login: &str) -> bool {
        self.shared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(login)
    }

    /// Whether `login` is suspended (memory only, never blocks on IO).
    pub fn is_suspended(&self, login: &str) -> bool {
        self.in_shared(login)
            || self
                .state
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .users
                .contains_key(login)
    }

    /// Whether `login` is suspended, from memory; `None` when a look at the file is due (then
    /// [`refresh`](Suspensions::refresh) off the reactor first).
    pub fn is_suspended_if_fresh(&self, login: &str) -> Option<bool> {
        if self.in_shared(login) {
            return Some(true);
        }
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        if self.path.is_some() && state.last_check.elapsed() >= self.check_interval {
            return None;
        }
        Some(state.users.contains_key(login))
    }

    /// Whether [`refresh`](Self::refresh) would look at the file now (an in-memory check:
    /// callers on the reactor skip the trip to the blocking pool when it would not).
    pub fn refresh_due(&self) -> bool {
        self.path.is_some()
            && self
                .state
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .last_check
                .elapsed()
                >= self.check_interval
    }

    /// Re-read the file if it changed. Blocking IO (a stat, a read on change): call it off
    /// the reactor.
    pub fn refresh(&self) {
        if !self.refresh_due() {
            return;
        }
        let due = |s: &State| s.last_check.elapsed() >= self.check_interval;
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if due(&state) {
            self.reload(&mut state);
        }
    }

    fn reload(&self, state: &mut State) {
        let Some(path) = &self.path else { return };
        state.last_check = Instant::now();
        let stamp = fs::metadata(path).ok().map(|m| Stamp {
            modified: m.modified().ok(),
            len: m.len(),
            ino: m.ino(),
        });
        if stamp.is_some() && stamp == state.stamp {
            return;
        }
        state.stamp = stamp;
        match load(path) {
            Ok(users) => {
                if users != state.users {
                    tracing::info!(path = %path.display(), suspended = users.len(),
                        "suspension state reloaded");
                }
                state.users = users;
            }
            Err(e) => tracing::warn!(error = %e, "suspension state not reloaded"),
        }
    }

    /// Suspend `login` in memory only (at once; [`Suspensions::suspend`] persists). Returns
    /// `false` when it already was.
    pub fn mark(&self, login: &str, reason: &str) -> bool {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if state.users.contains_key(login) {
            return false;
        }
        let entry = Suspension {
            since: unix_now(),
            reason: reason.to_owned(),
        };
        state.users.insert(login.to_owned(), entry);
        true
    }

    /// Lift a suspension in memory only (tests; the CLI edits the file).
    #[cfg(test)]
    pub(crate) fn lift(&self, login: &str) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.users.remove(login);
    }

    /// Suspend `login` now, in memory and (blocking) in the file. Returns `false` when it was
    /// already suspended.
    pub fn suspend(&self, login: &str, reason: &str) -> Result<bool, SuspendError> {
        let fresh = self.mark(login, reason);
        match &self.path {
            Some(path) => suspend(path, login, reason).map(|written| written || fresh),
            None => Ok(fresh),
        }
    }
}

impl std::fmt::Debug for Suspensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Suspensions")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspend_unsuspend_round_trip_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(&dir.path().join("queue"));
        assert!(load(&path).unwrap().is_empty(), "missing file: nobody");
        assert!(suspend(&path, "alice@x.test", "admin").unwrap());
        assert!(!suspend(&path, "alice@x.test", "again").unwrap());
        suspend(&path, "bob@x.test", "auto").unwrap();
        let users = load(&path).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users["alice@x.test"].reason, "admin");
        assert!(users["alice@x.test"].since > 1_600_000_000);

        // A new server (restart) sees the suspensions.
        let s = Suspensions::open_with_interval(&path, Duration::ZERO);
        assert!(s.is_suspended("alice@x.test") && s.is_suspended("bob@x.test"));

        unsuspend(&path, "alice@x.test").unwrap();
        assert!(matches!(
            unsuspend(&path, "alice@x.test"),
            Err(SuspendError::NotSuspended(_))
        ));
        assert!(s.is_suspended("alice@x.test"), "memory until refreshed");
        s.refresh();
        assert!(!s.is_suspended("alice@x.test"));
        assert!(s.is_suspended("bob@x.test"));

        // The server's own suspension is visible at once and written through.
        assert!(s.suspend("carol@x.test", "too many recipients").unwrap());
        assert!(s.is_suspended("carol@x.test"));
        assert!(load(&path).unwrap().contains_key("carol@x.test"));
        s.refresh();
        assert!(s.is_suspended("carol@x.test"));

        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn a_bad_file_is_an_error_for_the_cli_and_ignored_by_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        fs::write(&path, "{nope").unwrap();
        assert!(matches!(load(&path), Err(SuspendError::Invalid { .. })));
        assert!(
            suspend(&path, "a@x", "r").is_err(),
            "never overwrite a bad file"
        );
        let s = Suspensions::open(&path);
        assert!(!s.is_suspended("a@x"));
        fs::write(&path, r#"{"version": 2, "users": {}}"#).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("version 2"));
    }

    #[test]
    fn in_memory_suspensions() {
        let s = Suspensions::in_memory();
        s.refresh();
        assert!(!s.is_suspended("a@x"));
        assert!(s.suspend("a@x", "r").unwrap());
        assert!(!s.suspend("a@x", "r").unwrap());
        assert!(s.is_suspended("a@x"));
    }
}
