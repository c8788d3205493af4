//! Scoped API keys that double as SMTP app passwords (issue 16): the keys file beside the
//! users file (`auth.keys`, default `keys.toml` in the users file's directory), its atomic
//! edits, and a store the verifier asks before argon2.
//!
//! A secret is `sk_`, the key's name, `_` and 32 random bytes in base64url (256 bits): it
//! names its key, so the HTTP API takes it alone as a bearer token ([`name_of_secret`]), and
//! SMTP AUTH takes it as the password of the key's name. The file keeps only
//! `hmac-sha256$SALT$MAC`: an HMAC-SHA256 of the secret under a random per-key salt. A fast
//! keyed hash is enough (and is the point: no argon2 pool per API call) because the secret is
//! random, not chosen by a person: there is nothing to guess from a stolen file.
//!
//! `revoke` keeps the entry (marked with the time) so the name stays taken and `key list`
//! shows it; `rotate` moves the current hash to `previous_hash`, valid until `previous_until`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use aws_lc_rs::{hmac, rand};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

use super::senders::SenderPattern;
use super::users::{SendOverrides, User};
use crate::config::Cidr;

/// What every secret starts with, so a leaked one is recognisable (secret scanners, logs).
pub const SECRET_PREFIX: &str = "sk_";
/// The stored-hash scheme.
const SCHEME: &str = "hmac-sha256";
/// The scopes a key may carry; `admin` (with `api`) reads any message and manages any
/// tenant's suppressions over the HTTP API.
pub const SCOPES: [&str; 3] = ["smtp", "api", "admin"];

/// Why a keys file could not be read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The file is not a valid keys file.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `create` of a name that is already there.
    #[error("key {0} already exists")]
    Exists(String),
    /// `revoke` / `rotate` of a name that is not there.
    #[error("no such key {0}")]
    NoSuchKey(String),
    /// The directory that keeps the keys (`auth.sql.keys_table`, `auth.ldap.keys_base`) could
    /// not be reached or refused the operation.
    #[error(transparent)]
    Backend(#[from] super::backend::BackendError),
}

fn invalid(path: &Path, message: impl Into<String>) -> KeysError {
    KeysError::Invalid {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn io_error(path: &Path, source: std::io::Error) -> KeysError {
    KeysError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The file as written.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default, rename = "key", skip_serializing_if = "Vec::is_empty")]
    keys: Vec<KeyEntry>,
}

/// One `[[key]]` table as written (never the secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// The key's name, also its SMTP AUTH login.
    pub name: String,
    /// `hmac-sha256$SALT$MAC` of the secret.
    pub hash: String,
    /// The user it belongs to, whose senders bound the key's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Sender patterns (the users file's syntax).
    pub senders: Vec<String>,
    /// `smtp`, `api`.
    pub scopes: Vec<String>,
    /// CIDR blocks the key may be used from; empty = anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_ip: Vec<String>,
    /// Unix seconds after which the key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// Messages per hour (the per-user limits machinery, keyed by the key's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_per_hour: Option<u32>,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds of the revocation; a revoked key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<u64>,
    /// The hash before the last rotation, accepted until `previous_until`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_until: Option<u64>,
}

/// A validated key.
#[derive(Debug, Clone)]
pub struct Key {
    pub entry: KeyEntry,
    pub senders: Vec<SenderPattern>,
    pub from_ip: Vec<Cidr>,
}

/// Why a key with a right or wrong secret was refused (logged, never told to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    WrongSecret,
    Revoked,
    Expired,
    /// The key lacks the scope asked for (`smtp` for SMTP AUTH).
    NoScope,
    /// The client's address is outside `from_ip`.
    FromIp,
}

impl Key {
    /// Whether `secret` from `ip` at `now` (unix seconds) may use the key for `scope`. The
    /// secret is checked first, so the other answers are only ever logged for its holder.
    pub fn check(&self, secret: &str, ip: IpAddr, now: u64, scope: &str) -> Result<(), Refusal> {
        let e = &self.entry;
        let current = secret_matches(&e.hash, secret);
        let previous = !current
            && e.previous_until.is_some_and(|until| now < until)
            && e.previous_hash
                .as_deref()
                .is_some_and(|h| secret_matches(h, secret));
        if !current && !previous {
            return Err(Refusal::WrongSecret);
        }
        if e.revoked.is_some() {
            return Err(Refusal::Revoked);
        }
        if e.expires.is_some_and(|t| now >= t) {
            return Err(Refusal::Expired);
        }
        if !e.scopes.iter().any(|s| s == scope) {
            return Err(Refusal::NoScope);
        }
        if !self.from_ip.is_empty() && !self.from_ip.iter().any(|c| c.contains(ip)) {
            return Err(Refusal::FromIp);
        }
        Ok(())
    }

    /// The session identity of the key: its name as the login, its senders and its limit.
    pub fn as_user(&self) -> User {
        User {
            login: self.entry.name.clone(),
            password: String::new(),
            senders: self.senders.clone(),
            senders_given: true,
            limits: SendOverrides {
                messages_per_hour: self.entry.messages_per_hour,
                ..SendOverrides::default()
            },
            owner: self.entry.owner.clone(),
        }
    }
}

/// Characters of the random part of a secret: 32 bytes in base64url without padding.
const RANDOM_CHARS: usize = 43;

/// A new secret for the key `name`: `sk_NAME_` and 32 random bytes, base64url.
pub fn new_secret(name: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes).expect("the system random source");
    format!("{SECRET_PREFIX}{name}_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The key name a secret carries (`sk_NAME_RANDOM`), when it has that shape: what the HTTP
/// API looks up for a bearer token. The random part is fixed-length, so a name with `_` in
/// it splits unambiguously.
pub fn name_of_secret(secret: &str) -> Option<&str> {
    let rest = secret.strip_prefix(SECRET_PREFIX)?;
    let cut = rest.len().checked_sub(RANDOM_CHARS + 1)?;
    let (name, random) = (rest.get(..cut)?, rest.get(cut..)?);
    let random = random.strip_prefix('_')?;
    let b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    (valid_name(name) && random.bytes().all(b64)).then_some(name)
}

fn mac(salt: &[u8], secret: &str) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, salt), secret.as_bytes())
}

/// `hmac-sha256$SALT$MAC` of `secret` under a new random salt.
pub fn hash_secret(secret: &str) -> String {
    let mut salt = [0u8; 16];
    rand::fill(&mut salt).expect("the system random source");
    let tag = mac(&salt, secret);
    format!(
        "{SCHEME}${}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(tag.as_ref())
    )
}

/// The salt and MAC of a stored hash, if it is well formed.
fn split_hash(stored: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut parts = stored.split('$');
    let (scheme, salt, tag) = (parts.next()?, parts.next()?, parts.next()?);
    if scheme != SCHEME || parts.next().is_some() {
        return None;
    }
    let salt = STANDARD_NO_PAD.decode(salt).ok()?;
    let tag = STANDARD_NO_PAD.decode(tag).ok()?;
    (salt.len() >= 16 && tag.len() == 32).then_some((salt, tag))
}

/// Whether `secret` hashes to `stored` (compared in constant time).
pub fn secret_matches(stored: &str, secret: &str) -> bool {
    match split_hash(stored) {
        Some((salt, tag)) => hmac::verify(
            &hmac::Key::new(hmac::HMAC_SHA256, &salt),
            secret.as_bytes(),
            &tag,
        )
        .is_ok(),
        None => false,
    }
}

/// Whether `name` may name a key: 1-64 of `A-Za-z0-9._-` (so it never looks like an address
/// login of the users file, and logs it plainly).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Check one entry (`path` names its store in messages: a file, a table, a DN).
pub fn validate(entry: KeyEntry, path: &Path) -> Result<Key, KeysError> {
    let at = |m: String| invalid(path, format!("key {:?}: {m}", entry.name));
    if !valid_name(&entry.name) {
        return Err(at("name must be 1-64 of A-Z a-z 0-9 . _ -".into()));
    }
    for h in std::iter::once(&entry.hash).chain(&entry.previous_hash) {
        if split_hash(h).is_none() {
            return Err(at(format!("hash is not {SCHEME}$SALT$MAC")));
        }
    }
    if let Some(s) = entry.scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
        return Err(at(format!("unknown scope {s:?} (smtp, api)")));
    }
    let senders = entry
        .senders
        .iter()
        .map(|s| SenderPattern::parse(s).map_err(|e| at(format!("senders {s:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let from_ip = entry
        .from_ip
        .iter()
        .map(|c| c.parse::<Cidr>().map_err(|e| at(format!("from_ip: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Key {
        entry,
        senders,
        from_ip,
    })
}

/// Parse a keys file's text; `path` is for messages. Names must be unique.
pub fn parse(text: &str, path: &Path) -> Result<Vec<Key>, KeysError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| invalid(path, e.to_string()))?;
    let mut seen = std::collections::HashSet::new();
    raw.keys
        .into_iter()
        .map(|entry| {
            if !seen.insert(entry.name.clone()) {
                return Err(invalid(path, format!("key {:?} appears twice", entry.name)));
            }
            validate(entry, path)
        })
        .collect()
}

/// Load the file; a missing file has no keys.
pub fn load(path: &Path) -> Result<Vec<Key>, KeysError> {
    match fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_error(path, e)),
    }
}

/// Read, change and atomically rewrite the file under an exclusive lock on its directory (as
/// the users file: a lock on the file would be lost at the rename). A new file is created
/// 0600 and, as root, with the owner of the users file (`owner_like`) when given.
fn edit(
    path: &Path,
    owner_like: Option<&Path>,
    change: impl FnOnce(&mut RawFile) -> Result<(), KeysError>,
) -> Result<(), KeysError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dir_handle = File::open(dir).map_err(|e| io_error(dir, e))?;
    dir_handle.lock().map_err(|e| io_error(dir, e))?;
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_error(path, e)),
    };
    parse(&text, path)?;
    let mut raw: RawFile = toml::from_str(&text).map_err(|e| invalid(path, e.to_string()))?;
    change(&mut raw)?;
    let out = toml::to_string(&raw).map_err(|e| invalid(path, e.to_string()))?;
    parse(&out, path)?;
    if !path.exists() {
        // Before any content: an empty file (no keys) created 0600 and, as root, owned like
        // the users file; the atomic write below keeps both (a new file would otherwise take
        // the directory's group and 0640).
        new_private_file(path, owner_like).map_err(|e| io_error(path, e))?;
    }
    crate::fsown::write_atomic(path, out.as_bytes()).map_err(|e| io_error(path, e))?;
    Ok(())
}

/// Create `path` empty with mode 0600, owned (as root) like `owner_like`.
fn new_private_file(path: &Path, owner_like: Option<&Path>) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    if let Some(like) = owner_like
        && crate::fsown::is_root()
        && let Ok(m) = fs::metadata(like)
    {
        std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid()))?;
    }
    // Exactly 0600, whatever the umask.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.sync_all()
}

/// Add a key; an existing name is [`KeysError::Exists`].
pub fn create(path: &Path, owner_like: Option<&Path>, entry: KeyEntry) -> Result<(), KeysError> {
    edit(path, owner_like, |raw| {
        if raw.keys.iter().any(|k| k.name == entry.name) {
            return Err(KeysError::Exists(entry.name.clone()));
        }
        raw.keys.push(entry);
        Ok(())
    })
}

fn find<'a>(raw: &'a mut RawFile, name: &str) -> Result<&'a mut KeyEntry, KeysError> {
    raw.keys
        .iter_mut()
        .find(|k| k.name == name)
        .ok_or_else(|| KeysError::NoSuchKey(name.to_owned()))
}

/// Mark a key revoked at `now`; it is refused from then on (the entry stays, for `list`).
pub fn revoke(path: &Path, name: &str, now: u64) -> Result<(), KeysError> {
    edit(path, None, |raw| {
        let key = find(raw, name)?;
        key.revoked.get_or_insert(now);
        key.previous_hash = None;
        key.previous_until = None;
        Ok(())
    })
}

/// Give a key the new hash `hash`; the current one stays valid until `grace_until`.
pub fn rotate(path: &Path, name: &str, hash: String, grace_until: u64) -> Result<(), KeysError> {
    edit(path, None, |raw| {
        let key = find(raw, name)?;
        if key.revoked.is_some() {
            return Err(invalid(path, format!("key {name:?} is revoked")));
        }
        key.previous_hash = Some(std::mem::replace(&mut key.hash, hash));
        key.previous_until = Some(grace_until);
        Ok(())
    })
}

/// What identifies one version of the file without reading it.
type Stamp = Option<(Option<SystemTime>, u64, u64, u64)>;

/// Keys by name.
type Index = Arc<HashMap<String, Arc<Key>>>;

fn stamp(path: &Path) -> Stamp {
    fs::metadata(path)
        .ok()
        .map(|m| (m.modified().ok(), m.len(), m.dev(), m.ino()))
}

/// The keys the server checks. From a file: re-read when the file changes (a `stat` per
/// lookup), so `create`, `revoke` and `rotate` take effect at the next AUTH without a reload;
/// a file that turns bad keeps the last good keys (and is logged). From a directory
/// (`auth.sql.keys_table`, `auth.ldap.keys_base`): a snapshot in memory that a [`KeyFeed`]
/// replaces (see `keyhome::follow`), so a lookup never waits for the network.
#[derive(Debug)]
pub struct KeyStore {
    source: Source,
}

#[derive(Debug)]
enum Source {
    File {
        path: PathBuf,
        state: Mutex<(Stamp, Index)>,
    },
    Snapshot(Arc<std::sync::RwLock<Index>>),
}

/// Replaces the keys of a [`KeyStore::snapshot`] store.
#[derive(Debug, Clone)]
pub struct KeyFeed {
    keys: Arc<std::sync::RwLock<Index>>,
    /// Problems already logged, so a bad entry read again every refresh is logged once (and
    /// again only after it was mended and broke anew).
    reported: Arc<Mutex<std::collections::HashSet<String>>>,
}

/// A directory's entries checked as the server uses them: the keys, and `problems` with a
/// description of each entry left out (one bad row must not lock out every other key).
/// `store` names the directory in the descriptions.
pub fn checked(
    entries: Vec<KeyEntry>,
    mut problems: Vec<String>,
    store: &str,
) -> (Vec<Key>, Vec<String>) {
    let mut keys = Vec::with_capacity(entries.len());
    for entry in entries {
        match validate(entry, Path::new(store)) {
            Ok(k) => keys.push(k),
            Err(e) => problems.push(e.to_string()),
        }
    }
    (keys, problems)
}

impl KeyFeed {
    /// The directory's keys now ([`checked`]), a name seen twice kept once; `problems` (the
    /// entries left out) are logged.
    pub fn replace(&self, (keys, problems): (Vec<Key>, Vec<String>)) {
        let keys: HashMap<String, Arc<Key>> = keys
            .into_iter()
            .map(|k| (k.entry.name.clone(), Arc::new(k)))
            .collect();
        self.report(problems);
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
    }

    /// Log each of `problems` not logged at the last read; forget those that went away.
    fn report(&self, problems: Vec<String>) {
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        for p in &problems {
            if !reported.contains(p) {
                tracing::error!(error = %p, "API key left out");
            }
        }
        *reported = problems.into_iter().collect();
    }

    /// How many keys the snapshot holds.
    pub fn len(&self) -> usize {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether the snapshot holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl KeyStore {
    /// Open `path` (missing = no keys yet); a bad file is an error at startup.
    pub fn open(path: &Path) -> Result<KeyStore, KeysError> {
        let before = stamp(path);
        let keys = index(load(path)?);
        Ok(KeyStore {
            source: Source::File {
                path: path.to_owned(),
                state: Mutex::new((before, Arc::new(keys))),
            },
        })
    }

    /// An empty store that the returned feed fills (keys kept by a directory).
    pub fn snapshot() -> (KeyStore, KeyFeed) {
        let shared = Arc::new(std::sync::RwLock::new(Arc::new(HashMap::new())));
        let store = KeyStore {
            source: Source::Snapshot(shared.clone()),
        };
        let feed = KeyFeed {
            keys: shared,
            reported: Arc::default(),
        };
        (store, feed)
    }

    /// The key named `name`, as the store has it now.
    pub fn get(&self, name: &str) -> Option<Arc<Key>> {
        if !valid_name(name) {
            return None;
        }
        match &self.source {
            Source::File { path, state } => {
                let now = stamp(path);
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                if state.0 != now {
                    match load(path) {
                        Ok(keys) => *state = (now, Arc::new(index(keys))),
                        Err(e) => {
                            tracing::error!(error = %e, "keys file not reloaded; keeping the last good one");
                            state.0 = now;
                        }
                    }
                }
                state.1.get(name).cloned()
            }
            Source::Snapshot(shared) => {
                let keys = shared.read().unwrap_or_else(|e| e.into_inner()).clone();
                keys.get(name).cloned()
            }
        }
    }
}

fn index(keys: Vec<Key>) -> HashMap<String, Arc<Key>> {
    keys.into_iter()
        .map(|k| (k.entry.name.clone(), Arc::new(k)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, secret: &str) -> KeyEntry {
        KeyEntry {
            name: name.into(),
            hash: hash_secret(secret),
            owner: None,
            senders: vec!["app@example.test".into()],
            scopes: vec!["smtp".into()],
            from_ip: Vec::new(),
            expires: None,
            messages_per_hour: None,
            created: 1,
            revoked: None,
            previous_hash: None,
            previous_until: None,
        }
    }

    fn key(e: KeyEntry) -> Key {
        validate(e, Path::new("keys.toml")).unwrap()
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn secrets_are_prefixed_256_bit_and_hash_with_a_salt() {
        let s = new_secret("my_app.v2");
        assert!(s.starts_with("sk_my_app.v2_"));
        assert_eq!(name_of_secret(&s), Some("my_app.v2"));
        let random = &s[s.len() - RANDOM_CHARS..];
        assert_eq!(URL_SAFE_NO_PAD.decode(random).unwrap().len(), 32);
        assert_ne!(s, new_secret("my_app.v2"));
        for bad in [
            "",
            "sk_",
            "sk_a_short",
            "pk_app_x",
            &s[1..],
            &format!("{s}x"),
        ] {
            assert_eq!(name_of_secret(bad), None, "{bad}");
        }
        let (a, b) = (hash_secret(&s), hash_secret(&s));
        assert_ne!(a, b, "a fresh salt per hash");
        assert!(secret_matches(&a, &s) && secret_matches(&b, &s));
        assert!(!secret_matches(&a, "sk_wrong"));
        assert!(!a.contains(random));
        for bad in [
            "",
            "hmac-sha256$x$y",
            "md5$AAAAAAAAAAAAAAAAAAAAAA$AA",
            &format!("{a}$x"),
        ] {
            assert!(!secret_matches(bad, &s), "{bad}");
        }
    }

    #[test]
    fn checks_in_order_secret_revoked_expired_scope_ip() {
        let mut e = entry("app", "sk_a");
        let k = key(e.clone());
        assert_eq!(k.check("sk_a", IP, 10, "smtp"), Ok(()));
        assert_eq!(k.check("sk_b", IP, 10, "smtp"), Err(Refusal::WrongSecret));
        assert_eq!(k.check("sk_a", IP, 10, "api"), Err(Refusal::NoScope));
        e.expires = Some(10);
        assert_eq!(key(e.clone()).check("sk_a", IP, 9, "smtp"), Ok(()));
        assert_eq!(
            key(e.clone()).check("sk_a", IP, 10, "smtp"),
            Err(Refusal::Expired)
        );
        e.expires = None;
        e.from_ip = vec!["10.0.0.0/8".into()];
        assert_eq!(
            key(e.clone()).check("sk_a", IP, 1, "smtp"),
            Err(Refusal::FromIp)
        );
        let inside: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(key(e.clone()).check("sk_a", inside, 1, "smtp"), Ok(()));
        e.revoked = Some(5);
        assert_eq!(
            key(e.clone()).check("sk_a", inside, 1, "smtp"),
            Err(Refusal::Revoked)
        );
        assert_eq!(
            key(e).check("sk_x", inside, 1, "smtp"),
            Err(Refusal::WrongSecret)
        );
    }

    #[test]
    fn previous_hash_works_until_the_grace_ends() {
        let mut e = entry("app", "sk_new");
        e.previous_hash = Some(hash_secret("sk_old"));
        e.previous_until = Some(100);
        let k = key(e);
        assert_eq!(k.check("sk_new", IP, 200, "smtp"), Ok(()));
        assert_eq!(k.check("sk_old", IP, 99, "smtp"), Ok(()));
        assert_eq!(
            k.check("sk_old", IP, 100, "smtp"),
            Err(Refusal::WrongSecret)
        );
    }

    #[test]
    fn parse_errors_name_the_key() {
        let p = Path::new("keys.toml");
        let good = toml::to_string(&RawFile {
            keys: vec![entry("app", "s")],
        })
        .unwrap();
        assert_eq!(parse(&good, p).unwrap().len(), 1);
        assert!(parse("", p).unwrap().is_empty());
        let twice = format!("{good}\n{good}");
        assert!(parse(&twice, p).unwrap_err().to_string().contains("twice"));
        for (from, to, says) in [
            ("\"smtp\"", "\"ftp\"", "unknown scope"),
            ("name = \"app\"", "name = \"a b\"", "name must be"),
            ("hmac-sha256$", "sha1$", "hash is not"),
            ("\"app@example.test\"", "\"not an address\"", "senders"),
            (
                "created = 1",
                "created = 1\nfrom_ip = [\"10.0.0.1/8\"]",
                "from_ip",
            ),
            (
                "created = 1",
                "created = 1\nsecret = \"x\"",
                "unknown field",
            ),
        ] {
            let text = good.replacen(from, to, 1);
            let e = parse(&text, p).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("keys.toml"), "{text}: {e}");
        }
    }

    #[test]
    fn create_revoke_rotate_round_trip_in_a_0600_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        create(&path, None, entry("app", "sk_one")).unwrap();
        assert!(matches!(
            create(&path, None, entry("app", "sk_two")),
            Err(KeysError::Exists(_))
        ));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        rotate(&path, "app", hash_secret("sk_two"), 50).unwrap();
        let store = KeyStore::open(&path).unwrap();
        let k = store.get("app").unwrap();
        assert_eq!(k.check("sk_one", IP, 49, "smtp"), Ok(()));
        assert_eq!(k.check("sk_two", IP, 49, "smtp"), Ok(()));
        revoke(&path, "app", 60).unwrap();
        let k = store.get("app").unwrap();
        assert_eq!(k.check("sk_two", IP, 61, "smtp"), Err(Refusal::Revoked));
        assert!(matches!(
            revoke(&path, "nope", 1),
            Err(KeysError::NoSuchKey(_))
        ));
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("sk_"), "{text}");
        assert!(store.get("a b").is_none());
    }

    #[test]
    fn a_snapshot_leaves_out_bad_entries_and_keeps_the_rest() {
        let (store, feed) = KeyStore::snapshot();
        assert!(store.get("app").is_none() && feed.is_empty());
        let mut bad = entry("bad", "sk_b");
        bad.scopes = vec!["ftp".into()];
        feed.replace(checked(
            vec![entry("app", "sk_a"), bad],
            vec!["row 3: unreadable".into()],
            "table k",
        ));
        assert_eq!(feed.len(), 1);
        assert_eq!(
            store.get("app").unwrap().check("sk_a", IP, 1, "smtp"),
            Ok(())
        );
        assert!(store.get("bad").is_none());
        // Logged once: a second read with the same problems reports nothing new.
        assert_eq!(feed.reported.lock().unwrap().len(), 2);
        feed.replace(checked(Vec::new(), Vec::new(), "table k"));
        assert!(store.get("app").is_none() && feed.reported.lock().unwrap().is_empty());
    }
}
