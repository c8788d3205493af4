//! The users file (DESIGN.md "Users file"): parse, edit atomically, and a store that picks up
//! changes to the file without a restart.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use argon2::password_hash::PasswordHash;
use serde::{Deserialize, Serialize};

use super::senders::SenderPattern;

/// One user as the server uses it.
#[derive(Debug, Clone)]
pub struct User {
    /// The SASL login (authcid), matched exactly.
    pub login: String,
    /// argon2id PHC string.
    pub password: String,
    /// Parsed `senders` (defaults to `[login]`; beside a directory backend, to nothing: the
    /// entry only adds).
    pub senders: Vec<SenderPattern>,
    /// Whether `senders` was written in the entry (else `auth.default_senders` decides).
    pub senders_given: bool,
    /// Sending limits of this user that differ from `[limits]` (see [`super::quota`]).
    pub limits: SendOverrides,
    /// For an API key ([`super::keys`]): the user it belongs to. `None` for a user, and for a
    /// key without an owner. See [`User::tenant`].
    pub owner: Option<String>,
}

impl User {
    /// Whose suppression list, webhooks and message reads apply: a key's owner, else the
    /// login itself (a user, or a key without an owner). One tenant's bounces never block
    /// another's.
    pub fn tenant(&self) -> &str {
        self.owner.as_deref().unwrap_or(&self.login)
    }
}

/// Per-user sending limits from the users file (`messages_per_hour` etc. on `[[user]]`);
/// `None` takes the `[limits]` default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendOverrides {
    pub messages_per_hour: Option<u32>,
    pub messages_per_day: Option<u32>,
    pub recipients_per_hour: Option<u32>,
    pub recipients_per_day: Option<u32>,
    pub suspend_recipients_per_hour: Option<u32>,
}

/// Why a users file could not be read, parsed or written. Errors name the file and the entry.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file is not a valid users file.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `add_user` of a login that is already there.
    #[error("user {0} already exists")]
    Exists(String),
    /// `set_password` / `remove_user` of a login that is not there.
    #[error("no such user {0}")]
    NoSuchUser(String),
}

/// The file as written: what serde reads and writes, before any validation.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default, rename = "user", skip_serializing_if = "Vec::is_empty")]
    users: Vec<RawUser>,
}

/// One `[[user]]` table as written.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    login: String,
    /// Required by the file backend; beside a directory backend (which checks passwords) an
    /// entry only adds senders and limits, and a password here is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    senders: Option<Vec<String>>,
    // Sending limits (0 = unlimited), overriding `[limits] user_*` for this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    messages_per_hour: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    messages_per_day: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    recipients_per_hour: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    recipients_per_day: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    suspend_recipients_per_hour: Option<u32>,
}

/// The PHC algorithm identifiers we accept; all are verified by the `argon2` crate.
const ARGON2_IDENTS: [&str; 3] = ["argon2id", "argon2i", "argon2d"];

fn invalid(path: &Path, message: impl Into<String>) -> UsersError {
    UsersError::Invalid {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn io_error(path: &Path, source: std::io::Error) -> UsersError {
    UsersError::Io {
        path: path.to_owned(),
        source,
    }
}

fn parse_raw(text: &str, path: &Path) -> Result<RawFile, UsersError> {
    // toml's message names the line, the column and the offending key.
    toml::from_str(text).map_err(|e| invalid(path, e.to_string().trim_end().to_owned()))
}

/// Why a password field is unusable, `None` when it is a complete argon2 PHC string.
fn check_phc(phc: &str) -> Option<&'static str> {
    let Ok(hash) = PasswordHash::new(phc) else {
        return Some("password is not an argon2 PHC string (plaintext passwords are not allowed)");
    };
    if !ARGON2_IDENTS.contains(&hash.algorithm.as_str()) {
        return Some("password is a PHC string for another algorithm (argon2id expected)");
    }
    // Without salt and hash `verify_password` fails at once, skipping argon2 entirely.
    if hash.salt.is_none() || hash.hash.is_none() {
        return Some("password PHC string has no salt or no hash");
    }
    if argon2::Params::try_from(&hash).is_err() {
        return Some("password PHC string has invalid argon2 parameters");
    }
    None
}

/// `overlay`: the file sits beside a directory backend, so passwords are not required (and
/// not kept: the directory checks them).
fn validate(raw: RawFile, path: &Path, overlay: bool) -> Result<Vec<User>, UsersError> {
    let mut seen = HashSet::new();
    let mut users = Vec::with_capacity(raw.users.len());
    for (i, raw_user) in raw.users.into_iter().enumerate() {
        // 1-based, as an operator counts the `[[user]]` tables in the file.
        let entry = format!("user[{}] ({})", i + 1, raw_user.login);
        let fail = |what: &str| invalid(path, format!("{entry}: {what}"));
        if raw_user.login.is_empty() {
            return Err(invalid(path, format!("user[{}]: login is empty", i + 1)));
        }
        if raw_user.login.chars().any(char::is_control) {
            return Err(fail("login contains control characters"));
        }
        if !seen.insert(raw_user.login.clone()) {
            return Err(fail("duplicate login"));
        }
        let password = match (overlay, raw_user.password) {
            (true, _) => String::new(),
            (false, None) => return Err(fail("missing field `password`")),
            (false, Some(phc)) => {
                if let Some(why) = check_phc(&phc) {
                    return Err(fail(why));
                }
                phc
            }
        };
        let senders = match &raw_user.senders {
            // An explicit empty list would be a user who can send nothing; that is almost
            // certainly a mistake, so it is refused rather than guessed at.
            Some(list) if list.is_empty() => {
                return Err(fail("senders is empty (omit it to default to [login])"));
            }
            Some(list) => list
                .iter()
                .map(|s| SenderPattern::parse(s).map_err(|e| fail(&format!("senders: {e}"))))
                .collect::<Result<Vec<_>, _>>()?,
            None if overlay => Vec::new(),
            None => vec![SenderPattern::parse(&raw_user.login).map_err(|e| {
                fail(&format!(
                    "login is not an address, so senders must be given ({e})"
                ))
            })?],
        };
        let limits = SendOverrides {
            messages_per_hour: raw_user.messages_per_hour,
            messages_per_day: raw_user.messages_per_day,
            recipients_per_hour: raw_user.recipients_per_hour,
            recipients_per_day: raw_user.recipients_per_day,
            suspend_recipients_per_hour: raw_user.suspend_recipients_per_hour,
        };
        users.push(User {
            login: raw_user.login,
            password,
            senders_given: raw_user.senders.is_some(),
            senders,
            limits,
            owner: None,
        });
    }
    Ok(users)
}

/// Parse users-file text. Rejects unknown keys, duplicate logins, bad sender patterns and any
/// password that is not an argon2 PHC string (plaintext passwords are a config error).
pub fn parse(text: &str, path: &Path) -> Result<Vec<User>, UsersError> {
    validate(parse_raw(text, path)?, path, false)
}

/// Read a users file that sits beside a directory backend: entries add senders and per-user
/// limits; passwords are not required and not kept.
pub fn load_overlay(path: &Path) -> Result<Vec<User>, UsersError> {
    let text = fs::read_to_string(path).map_err(|e| io_error(path, e))?;
    validate(parse_raw(&text, path)?, path, true)
}

/// `load` or, beside a directory backend, `load_overlay`.
fn load_as(path: &Path, overlay: bool) -> Result<Vec<User>, UsersError> {
    if overlay {
        load_overlay(path)
    } else {
        load(path)
    }
}

/// Read and parse a users file.
pub fn load(path: &Path) -> Result<Vec<User>, UsersError> {
    let text = fs::read_to_string(path).map_err(|e| io_error(path, e))?;
    parse(&text, path)
}

/// Read, change and atomically rewrite the file. Concurrent edits (two `submitd user ...`
/// at once) are serialized by an exclusive lock on the directory: a lock on the file itself
/// would be lost at the rename. A missing file is an empty one when `missing_ok`. The whole
/// file is validated first: we never rewrite a file we could not load.
fn edit(
    path: &Path,
    missing_ok: bool,
    change: impl FnOnce(&mut RawFile) -> Result<(), UsersError>,
) -> Result<(), UsersError> {
    let dir = parent_dir(path);
    let dir_handle = File::open(dir).map_err(|e| io_error(dir, e))?;
    dir_handle.lock().map_err(|e| io_error(dir, e))?;
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if missing_ok && e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_error(path, e)),
    };
    parse(&text, path)?;
    let mut raw = parse_raw(&text, path)?;
    change(&mut raw)?;
    write_back(path, &raw)
    // The lock goes with `dir_handle`, after the rename and the directory fsync.
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Serialize, check the result loads, and replace the file atomically.
fn write_back(path: &Path, raw: &RawFile) -> Result<(), UsersError> {
    let text = toml::to_string(raw)
        .map_err(|e| invalid(path, format!("cannot serialize users file: {e}")))?;
    // Refuse to write anything the server would then refuse to load.
    parse(&text, path)?;
    crate::fsown::write_atomic(path, text.as_bytes()).map_err(|e| io_error(path, e))
}

/// Add a user to the file (created when missing), atomically (temp file, fsync, rename).
/// An existing login is `UsersError::Exists`. Empty `senders` means `[login]`.
pub fn add_user(path: &Path, login: &str, phc: &str, senders: &[String]) -> Result<(), UsersError> {
    edit(path, true, |raw| {
        if raw.users.iter().any(|u| u.login == login) {
            return Err(UsersError::Exists(login.to_owned()));
        }
        raw.users.push(RawUser {
            login: login.to_owned(),
            password: Some(phc.to_owned()),
            senders: (!senders.is_empty()).then(|| senders.to_vec()),
            messages_per_hour: None,
            messages_per_day: None,
            recipients_per_hour: None,
            recipients_per_day: None,
            suspend_recipients_per_hour: None,
        });
        Ok(())
    })
}

/// Replace a user's password hash, atomically.
pub fn set_password(path: &Path, login: &str, phc: &str) -> Result<(), UsersError> {
    edit(path, false, |raw| {
        let user = raw
            .users
            .iter_mut()
            .find(|u| u.login == login)
            .ok_or_else(|| UsersError::NoSuchUser(login.to_owned()))?;
        user.password = Some(phc.to_owned());
        Ok(())
    })
}

/// Remove a user, atomically.
pub fn remove_user(path: &Path, login: &str) -> Result<(), UsersError> {
    edit(path, false, |raw| {
        let before = raw.users.len();
        raw.users.retain(|u| u.login != login);
        if raw.users.len() == before {
            return Err(UsersError::NoSuchUser(login.to_owned()));
        }
        Ok(())
    })
}

/// What identifies one version of the file without reading it. The inode catches an atomic
/// replacement that happens to keep the size and the modification time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

impl FileStamp {
    fn of(meta: &fs::Metadata) -> FileStamp {
        FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// The state behind the store's lock.
struct State {
    users: HashMap<String, Arc<User>>,
    /// The file version `users` came from (or that last failed to load), `None` if unseen.
    stamp: Option<FileStamp>,
    last_check: Instant,
}

/// The users of a running server. Cheap to clone; re-reads the file when its modification time
/// or size changes (checked at most once a second), keeping the old users if the new file is bad.
#[derive(Clone)]
pub struct UserStore {
    /// `None` for an in-memory store, which never reloads.
    path: Option<Arc<Path>>,
    state: Arc<RwLock<State>>,
    check_interval: Duration,
    /// Beside a directory backend: passwords neither required nor kept ([`load_overlay`]).
    overlay: bool,
}

fn index(users: Vec<User>) -> HashMap<String, Arc<User>> {
    users
        .into_iter()
        .map(|u| (u.login.clone(), Arc::new(u)))
        .collect()
}

impl UserStore {
    /// How often `get` looks at the file's metadata.
    const CHECK_INTERVAL: Duration = Duration::from_secs(1);

    /// Load the file; errors if it cannot be read or parsed.
    pub fn open(path: &Path) -> Result<UserStore, UsersError> {
        Self::open_with_interval(path, Self::CHECK_INTERVAL)
    }

    /// Load a users file that sits beside a directory backend ([`load_overlay`]).
    pub fn open_overlay(path: &Path) -> Result<UserStore, UsersError> {
        Self::open_as(path, Self::CHECK_INTERVAL, true)
    }

    /// `open` with another metadata check interval (tests use zero).
    pub(crate) fn open_with_interval(
        path: &Path,
        check_interval: Duration,
    ) -> Result<UserStore, UsersError> {
        Self::open_as(path, check_interval, false)
    }

    fn open_as(
        path: &Path,
        check_interval: Duration,
        overlay: bool,
    ) -> Result<UserStore, UsersError> {
        // Stamp before reading: a change racing with the read is then seen on the next check.
        let stamp = fs::metadata(path).map_err(|e| io_error(path, e))?;
        let users = load_as(path, overlay)?;
        Ok(UserStore {
            path: Some(Arc::from(path)),
            state: Arc::new(RwLock::new(State {
                users: index(users),
                stamp: Some(FileStamp::of(&stamp)),
                last_check: Instant::now(),
            })),
            check_interval,
            overlay,
        })
    }

    /// An in-memory store (tests).
    pub fn from_users(users: Vec<User>) -> UserStore {
        UserStore {
            path: None,
            state: Arc::new(RwLock::new(State {
                users: index(users),
                stamp: None,
                last_check: Instant::now(),
            })),
            check_interval: Self::CHECK_INTERVAL,
            overlay: false,
        }
    }

    /// Look a login up (exact match), reloading the file first if it changed.
    ///
    /// At most once per interval this stats (and on change re-reads) the file: blocking IO,
    /// which is why [`Verifier`](super::verify::Verifier) calls it inside `spawn_blocking`.
    pub fn get(&self, login: &str) -> Option<Arc<User>> {
        self.maybe_reload();
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.users.get(login).cloned()
    }

    /// Look a login up in memory, without any IO; `None` when a look at the file is due (then
    /// call [`get`](UserStore::get) off the reactor). Lets the credentials cache answer on the
    /// reactor while still seeing a changed users file as soon as `get` would.
    pub fn get_if_fresh(&self, login: &str) -> Option<Option<Arc<User>>> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        if self.path.is_some() && state.last_check.elapsed() >= self.check_interval {
            return None;
        }
        Some(state.users.get(login).cloned())
    }

    /// The number of users currently loaded.
    pub fn len(&self) -> usize {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .users
            .len()
    }

    /// Whether no user is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The users file this store follows, `None` for an in-memory store.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Re-read the file now (SIGHUP), whatever its metadata says; the number of users loaded.
    /// On error the users already loaded stay. Blocking IO: call off the reactor.
    pub fn reload(&self) -> Result<usize, UsersError> {
        Ok(self.install(self.read_fresh()?))
    }

    /// Read the file now without using it yet: a reload installs it only once everything else
    /// it loads is good too. Blocking IO: call off the reactor.
    pub fn read_fresh(&self) -> Result<FreshUsers, UsersError> {
        let Some(path) = &self.path else {
            return Ok(FreshUsers(None));
        };
        // Stamp before reading, as in `open`.
        let stamp = fs::metadata(path).map_err(|e| io_error(path, e))?;
        let users = load_as(path, self.overlay)?;
        Ok(FreshUsers(Some((users, FileStamp::of(&stamp)))))
    }

    /// Serve the users `fresh` holds from now on; the number of users loaded.
    pub fn install(&self, fresh: FreshUsers) -> usize {
        let Some((users, stamp)) = fresh.0 else {
            return self.len();
        };
        let count = users.len();
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.users = index(users);
        state.stamp = Some(stamp);
        state.last_check = Instant::now();
        count
    }

    fn maybe_reload(&self) {
        let Some(path) = &self.path else { return };
        let due = |s: &State| s.last_check.elapsed() >= self.check_interval;
        if !due(&self.state.read().unwrap_or_else(|e| e.into_inner())) {
            return;
        }
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        // Another caller may have checked while we waited for the write lock.
        if !due(&state) {
            return;
        }
        state.last_check = Instant::now();
        let stamp = match fs::metadata(path) {
            Ok(meta) => Some(FileStamp::of(&meta)),
            Err(e) => {
                if state.stamp.is_some() {
                    tracing::warn!(path = %path.display(), error = %e,
                        "users file unreadable; keeping the users already loaded");
                }
                state.stamp = None;
                return;
            }
        };
        if stamp == state.stamp {
            return;
        }
        // Recorded even when the load fails, so a bad file is reported once, not every second.
        state.stamp = stamp;
        match load_as(path, self.overlay) {
            Ok(users) => {
                tracing::info!(path = %path.display(), users = users.len(), "users file reloaded");
                state.users = index(users);
            }
            Err(e) => {
                tracing::warn!(error = %e, "users file not reloaded; keeping the users already loaded");
            }
        }
    }
}

/// A users file read by [`UserStore::read_fresh`], waiting for [`UserStore::install`]
/// (`None` for an in-memory store, which has no file).
#[derive(Debug)]
pub struct FreshUsers(Option<(Vec<User>, FileStamp)>);

impl std::fmt::Debug for UserStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserStore")
            .field("path", &self.path)
            .field("users", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    // Real PHC strings (argon2id, m=19456, t=2, p=1); the parser only checks their shape.
    const PHC: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$\
                       o4CxIfHKyuphMEZrXyLMvHNTkyNzfPzDJGRhBmTzZZY";
    const PHC2: &str = "$argon2id$v=19$m=19456,t=2,p=1$b3RoZXJzYWx0b3RoZXJzYWx0$\
                        o4CxIfHKyuphMEZrXyLMvHNTkyNzfPzDJGRhBmTzZZY";

    fn p() -> &'static Path {
        Path::new("users.toml")
    }

    fn user_toml(login: &str, password: &str, senders: Option<&str>) -> String {
        let mut s = format!("[[user]]\nlogin = \"{login}\"\npassword = \"{password}\"\n");
        if let Some(senders) = senders {
            s.push_str(&format!("senders = {senders}\n"));
        }
        s
    }

    #[test]
    fn parses_users_and_defaults_senders() {
        let text = user_toml(
            "alice@example.test",
            PHC,
            Some(r#"["alice@example.test", "@alice.example.test"]"#),
        ) + &user_toml("bob@example.test", PHC, None);
        let users = parse(&text, p()).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].senders.len(), 2);
        assert!(users[0].senders[1].matches("x@alice.example.test"));
        assert_eq!(
            users[1].senders,
            vec![SenderPattern::parse("bob@example.test").unwrap()]
        );
        assert_eq!(users[1].password, PHC);
    }

    #[test]
    fn empty_files_have_no_users() {
        for text in ["", "\n", "# only a comment\n", "user = []\n"] {
            assert!(parse(text, p()).unwrap().is_empty(), "{text:?}");
        }
    }

    #[test]
    fn other_argon2_variants_are_accepted() {
        for alg in ["argon2i", "argon2d"] {
            let phc = PHC.replace("argon2id", alg);
            parse(&user_toml("a@x.test", &phc, None), p()).unwrap();
        }
    }

    #[test]
    fn parse_errors_name_the_entry() {
        let good = user_toml("alice@x.test", PHC, None);
        let cases: Vec<(String, &str)> = vec![
            ("[[user]\nlogin = ".into(), "users.toml: TOML parse error"),
            (good.clone() + "extra = 1\n", "unknown field `extra`"),
            ("verbose = true\n".into(), "unknown field `verbose`"),
            (
                "[[user]]\nlogin = \"a@x.test\"\n".into(),
                "missing field `password`",
            ),
            (
                good.clone() + &good,
                "user[2] (alice@x.test): duplicate login",
            ),
            (user_toml("", PHC, None), "user[1]: login is empty"),
            (
                good.clone() + &user_toml("bob@x", "hunter2", None),
                "user[2] (bob@x): password is not an argon2 PHC string (plaintext passwords are not allowed)",
            ),
            (
                user_toml(
                    "bob@x",
                    "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
                    None,
                ),
                "user[1] (bob@x): password is a PHC string for another algorithm",
            ),
            (
                user_toml("bob@x", "$argon2id$v=19$m=19456,t=2,p=1", None),
                "user[1] (bob@x): password PHC string has no salt or no hash",
            ),
            (
                user_toml("bob@x", &PHC.replace("m=19456", "m=1"), None),
                "user[1] (bob@x): password PHC string has invalid argon2 parameters",
            ),
            (
                user_toml("bob@x", PHC, Some(r#"["bob x@x"]"#)),
                "user[1] (bob@x): senders: ",
            ),
            (
                user_toml("bob@x", PHC, Some(r#"["bob"]"#)),
                "user[1] (bob@x): senders: ",
            ),
            (
                user_toml("bob@x", PHC, Some("[]")),
                "user[1] (bob@x): senders is empty",
            ),
            (
                user_toml("bob", PHC, None),
                "user[1] (bob): login is not an address",
            ),
            (
                user_toml("bo\\u0000b@x", PHC, None),
                "login contains control characters",
            ),
        ];
        for (text, want) in cases {
            let err = parse(&text, p()).expect_err(&text);
            assert!(matches!(err, UsersError::Invalid { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.starts_with("users.toml: "), "{msg}");
            assert!(
                msg.contains(want),
                "{text:?}\n  got {msg:?}\n  want {want:?}"
            );
        }
        // A login that is not an address is fine when senders are given.
        parse(&user_toml("bob", PHC, Some(r#"["bob@x.test"]"#)), p()).unwrap();
    }

    #[test]
    fn load_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.toml");
        let err = load(&path).unwrap_err();
        assert!(matches!(err, UsersError::Io { .. }));
        assert!(err.to_string().contains("missing.toml"), "{err}");
    }

    #[test]
    fn add_passwd_del_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");

        add_user(&path, "alice@x.test", PHC, &[]).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        add_user(
            &path,
            "bob",
            PHC,
            &["bob@x.test".into(), "@bob.test".into()],
        )
        .unwrap();
        assert!(
            matches!(add_user(&path, "bob", PHC, &[]), Err(UsersError::Exists(l)) if l == "bob")
        );
        // Validation happens before anything is written.
        assert!(add_user(&path, "carol@x.test", "plaintext", &[]).is_err());
        assert!(add_user(&path, "carol@x.test", PHC, &["no at".into()]).is_err());
        assert!(add_user(&path, "carol", PHC, &[]).is_err());

        let users = load(&path).unwrap();
        assert_eq!(
            users.iter().map(|u| u.login.as_str()).collect::<Vec<_>>(),
            ["alice@x.test", "bob"]
        );
        assert_eq!(users[1].senders.len(), 2);
        // A default sender list stays implicit in the file.
        assert!(
            !fs::read_to_string(&path)
                .unwrap()
                .contains("senders = [\"alice")
        );

        set_password(&path, "bob", PHC2).unwrap();
        assert_eq!(load(&path).unwrap()[1].password, PHC2);
        assert!(matches!(
            set_password(&path, "nobody", PHC),
            Err(UsersError::NoSuchUser(_))
        ));
        assert!(set_password(&path, "bob", "hunter2").is_err());
        assert_eq!(load(&path).unwrap()[1].password, PHC2);

        remove_user(&path, "alice@x.test").unwrap();
        assert!(matches!(
            remove_user(&path, "alice@x.test"),
            Err(UsersError::NoSuchUser(_))
        ));
        let users = load(&path).unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].login, "bob");
        remove_user(&path, "bob").unwrap();
        assert!(load(&path).unwrap().is_empty());

        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["users.toml"]);
    }

    #[test]
    fn concurrent_adds_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        std::thread::scope(|scope| {
            for i in 0..8 {
                let path = &path;
                scope.spawn(move || add_user(path, &format!("u{i}@x.test"), PHC, &[]).unwrap());
            }
        });
        assert_eq!(load(&path).unwrap().len(), 8);
    }

    #[test]
    fn sending_limit_overrides_parse_and_survive_edits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let text = user_toml("alice@x.test", PHC, None)
            + "messages_per_hour = 10\nrecipients_per_day = 0\nsuspend_recipients_per_hour = 50\n";
        fs::write(&path, text).unwrap();
        let want = SendOverrides {
            messages_per_hour: Some(10),
            messages_per_day: None,
            recipients_per_hour: None,
            recipients_per_day: Some(0),
            suspend_recipients_per_hour: Some(50),
        };
        assert_eq!(load(&path).unwrap()[0].limits, want);
        set_password(&path, "alice@x.test", PHC2).unwrap();
        add_user(&path, "bob@x.test", PHC, &[]).unwrap();
        let users = load(&path).unwrap();
        assert_eq!(
            users[0].limits, want,
            "kept through set_password and add_user"
        );
        assert_eq!(users[1].limits, SendOverrides::default());
        assert!(
            !fs::read_to_string(&path)
                .unwrap()
                .contains("messages_per_day")
        );

        let bad = user_toml("a@x.test", PHC, None) + "messages_per_hour = -1\n";
        assert!(parse(&bad, p()).is_err());
        let bad = user_toml("a@x.test", PHC, None) + "messages_per_hour = \"ten\"\n";
        assert!(parse(&bad, p()).is_err());
    }

    #[test]
    fn edits_keep_an_existing_mode_and_refuse_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        fs::write(&path, user_toml("alice@x.test", PHC, None)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        set_password(&path, "alice@x.test", PHC2).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );

        fs::write(&path, "[[user]]\nlogin = \"a@x\"\npassword = \"plain\"\n").unwrap();
        assert!(matches!(
            add_user(&path, "b@x", PHC, &[]),
            Err(UsersError::Invalid { .. })
        ));
        assert!(matches!(
            set_password(&path, "missing", PHC),
            Err(UsersError::Invalid { .. })
        ));
        // Only add_user treats a missing file as empty.
        let other = dir.path().join("other.toml");
        assert!(matches!(
            remove_user(&other, "a@x"),
            Err(UsersError::Io { .. })
        ));
    }

    #[test]
    fn store_reloads_changed_file_and_keeps_users_on_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        fs::write(&path, user_toml("alice@x.test", PHC, None)).unwrap();
        let store = UserStore::open_with_interval(&path, Duration::ZERO).unwrap();
        assert!(store.get("alice@x.test").is_some());
        assert!(store.get("bob@x.test").is_none());
        assert!(store.get("ALICE@x.test").is_none(), "logins match exactly");

        add_user(&path, "bob@x.test", PHC, &[]).unwrap();
        assert!(store.clone().get("bob@x.test").is_some());
        assert_eq!(store.len(), 2);

        // A broken edit: the old users stay.
        fs::write(
            &path,
            "[[user]]\nlogin = \"eve@x.test\"\npassword = \"plaintext\"\n",
        )
        .unwrap();
        assert!(store.get("bob@x.test").is_some());
        assert!(store.get("eve@x.test").is_none());

        // A deleted file: the old users stay too.
        fs::remove_file(&path).unwrap();
        assert!(store.get("alice@x.test").is_some());

        // Fixed again.
        add_user(&path, "carol@x.test", PHC, &[]).unwrap();
        assert!(store.get("carol@x.test").is_some());
        assert!(store.get("alice@x.test").is_none());
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn store_checks_at_most_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        fs::write(&path, user_toml("alice@x.test", PHC, None)).unwrap();
        let store = UserStore::open_with_interval(&path, Duration::from_secs(3600)).unwrap();
        add_user(&path, "bob@x.test", PHC, &[]).unwrap();
        assert!(store.get("bob@x.test").is_none());
        assert_eq!(store.path(), Some(path.as_path()));
    }

    #[test]
    fn open_fails_on_bad_or_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        assert!(matches!(UserStore::open(&path), Err(UsersError::Io { .. })));
        fs::write(&path, "nope").unwrap();
        assert!(matches!(
            UserStore::open(&path),
            Err(UsersError::Invalid { .. })
        ));
    }

    #[test]
    fn in_memory_store() {
        let users = parse(&user_toml("alice@x.test", PHC, None), p()).unwrap();
        let store = UserStore::from_users(users);
        assert_eq!(store.get("alice@x.test").unwrap().login, "alice@x.test");
        assert!(store.get("bob@x.test").is_none());
        assert!(store.path().is_none());
        assert!(!store.is_empty());
        assert!(UserStore::from_users(vec![]).is_empty());
    }
}
