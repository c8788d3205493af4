//! Where API keys live ([`KeyHome`]): the keys file beside the users file, or the identity
//! backend's own store when it has one: a PostgreSQL table with `auth.backend = "sql"`
//! ([`super::backend::sql_keys`]), entries under `auth.ldap.keys_base` with `"ldap"`
//! ([`super::backend::ldap_keys`]). Dovecot's auth protocol only checks passwords and stores
//! nothing, so with `"dovecot"` the keys stay in the file.
//!
//! `submitd key` writes the home; the server reads it. A file is re-read when it changes; a
//! directory's keys are copied into memory and refreshed by [`follow`], so a login or an API
//! request never waits on the network for its key, and a directory outage keeps the keys it
//! last read (revoking one needs the directory too, so nothing is lost by that).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::backend::BackendError;
use super::backend::ldap_keys::LdapKeys;
use super::backend::sql_keys::SqlKeys;
use super::keys::{self, KeyEntry, KeyFeed, KeyStore, KeysError};
use crate::config::{AuthBackend, Settings};

/// How often a directory is asked whether its keys changed: a `key create`, `revoke` or
/// `rotate` reaches every server within about this.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// A directory without a cheap change check (LDAP) is read whole this often.
const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// And every directory this often, whatever its change check says (a row changed by hand
/// without its `updated`).
const RELOAD_ANYWAY: Duration = Duration::from_secs(60);

/// The store `submitd key` writes and the server reads.
#[derive(Debug)]
pub enum KeyHome {
    /// `auth.keys`; the users file's owner for a new file (as root).
    File {
        path: PathBuf,
        owner_like: Option<PathBuf>,
    },
    Sql(Box<SqlKeys>),
    Ldap(Box<LdapKeys>),
}

impl KeyHome {
    /// The home `settings` choose. Reads the files the backend section names (blocking);
    /// connects to nothing yet.
    pub fn from_settings(settings: &Settings) -> Result<KeyHome, BackendError> {
        let auth = &settings.auth;
        Ok(match &auth.backend {
            AuthBackend::Sql(s) if s.keys_table.is_some() => {
                let table = s.keys_table.as_deref().expect("checked");
                KeyHome::Sql(Box::new(SqlKeys::new(s, table, auth.backend_timeout)?))
            }
            AuthBackend::Ldap(s) if s.keys_base.is_some() => {
                let base = s.keys_base.as_deref().expect("checked");
                KeyHome::Ldap(Box::new(LdapKeys::new(s, base, auth.backend_timeout)?))
            }
            _ => KeyHome::File {
                path: auth.keys.clone(),
                owner_like: auth.users.clone(),
            },
        })
    }

    /// Where the keys are, for messages: a path, a table, a DN.
    pub fn describe(&self) -> String {
        match self {
            KeyHome::File { path, .. } => path.display().to_string(),
            KeyHome::Sql(s) => s.describe(),
            KeyHome::Ldap(l) => l.describe(),
        }
    }

    /// Every key, and descriptions of the entries that could not be read as keys.
    pub async fn list(&self) -> Result<(Vec<KeyEntry>, Vec<String>), KeysError> {
        let (keys, problems) = self.keys().await?;
        Ok((keys.into_iter().map(|k| k.entry).collect(), problems))
    }

    /// Every key the server would use, and descriptions of the entries left out: `key list`,
    /// `check-config` and the server agree on which keys there are.
    pub async fn keys(&self) -> Result<(Vec<keys::Key>, Vec<String>), KeysError> {
        let (entries, problems) = match self {
            // A file is checked whole when read.
            KeyHome::File { path, .. } => return Ok((keys::load(path)?, Vec::new())),
            KeyHome::Sql(s) => s.list().await?,
            KeyHome::Ldap(l) => l.list().await?,
        };
        Ok(keys::checked(entries, problems, &self.describe()))
    }

    /// Add a key; an existing name is [`KeysError::Exists`].
    pub async fn create(&self, entry: KeyEntry) -> Result<(), KeysError> {
        // Checked here for every home, so a directory never holds a key the server would
        // leave out.
        keys::validate(entry.clone(), Path::new(&self.describe()))?;
        match self {
            KeyHome::File { path, owner_like } => keys::create(path, owner_like.as_deref(), entry),
            KeyHome::Sql(s) => s.create(&entry).await,
            KeyHome::Ldap(l) => l.create(&entry).await,
        }
    }

    /// Mark a key revoked at `now`.
    pub async fn revoke(&self, name: &str, now: u64) -> Result<(), KeysError> {
        match self {
            KeyHome::File { path, .. } => keys::revoke(path, name, now),
            KeyHome::Sql(s) => s.revoke(name, now).await,
            KeyHome::Ldap(l) => l.revoke(name, now).await,
        }
    }

    /// Give a key the new hash; the current one stays valid until `grace_until`.
    pub async fn rotate(
        &self,
        name: &str,
        hash: String,
        grace_until: u64,
    ) -> Result<(), KeysError> {
        match self {
            KeyHome::File { path, .. } => keys::rotate(path, name, hash, grace_until),
            KeyHome::Sql(s) => s.rotate(name, &hash, grace_until).await,
            KeyHome::Ldap(l) => l.rotate(name, &hash, grace_until).await,
        }
    }

    /// Something that changes whenever the keys do, when the home can tell cheaply.
    async fn version(&self) -> Result<Option<String>, KeysError> {
        match self {
            KeyHome::Sql(s) => s.version().await.map(Some),
            KeyHome::File { .. } | KeyHome::Ldap(_) => Ok(None),
        }
    }

    /// The server's view: the file itself (re-read on change), or for a directory an empty
    /// snapshot and the feed that [`follow`] fills.
    pub fn store(&self) -> Result<(KeyStore, Option<KeyFeed>), KeysError> {
        match self {
            KeyHome::File { path, .. } => Ok((KeyStore::open(path)?, None)),
            KeyHome::Sql(_) | KeyHome::Ldap(_) => {
                let (store, feed) = KeyStore::snapshot();
                Ok((store, Some(feed)))
            }
        }
    }
}

/// A directory home does not read the `auth.keys` file, so keys still in it (made before the
/// directory held keys, e.g. before an upgrade) would stop working without a word. The error,
/// naming the way out, when the file holds any; `Ok` for a file home and an absent or empty
/// file.
pub fn check_left_behind(settings: &Settings, home: &KeyHome) -> Result<(), String> {
    let setting = match home {
        KeyHome::File { .. } => return Ok(()),
        KeyHome::Sql(_) => "auth.sql.keys_table = \"\"",
        KeyHome::Ldap(_) => "no auth.ldap.keys_base",
    };
    let path = &settings.auth.keys;
    let found = keys::load(path).map_err(|e| {
        format!(
            "{e}; the API keys are read from {} and not from this file: \
             move it away, or set {setting} to keep using it",
            home.describe()
        )
    })?;
    if found.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} holds {} API key(s), but they are read from {} only: copy them there with \
         `submitd key import` (which then renames the file to .imported), or set {setting} \
         to keep using the file",
        path.display(),
        found.len(),
        home.describe()
    ))
}

/// `submitd key import`: copy the `auth.keys` file's keys into a directory home, as they are
/// (hashes, rotation grace, revocation); a name already there is left as it is. The file is
/// then renamed to `FILE.imported`. The names imported and those skipped.
pub async fn import(
    settings: &Settings,
    home: &KeyHome,
) -> Result<(Vec<String>, Vec<String>), KeysError> {
    let path = &settings.auth.keys;
    if matches!(home, KeyHome::File { .. }) {
        return Err(KeysError::Invalid {
            path: path.clone(),
            message: "the keys already live in this file: import copies them into the sql or \
                      ldap backend's store"
                .into(),
        });
    }
    let (mut imported, mut skipped) = (Vec::new(), Vec::new());
    for key in keys::load(path)? {
        let name = key.entry.name.clone();
        match home.create(key.entry).await {
            Ok(()) => imported.push(name),
            Err(KeysError::Exists(_)) => skipped.push(name),
            Err(e) => return Err(e),
        }
    }
    if path.exists() {
        let mut to = path.as_os_str().to_owned();
        to.push(".imported");
        std::fs::rename(path, &to).map_err(|e| KeysError::Io {
            path: path.clone(),
            source: e,
        })?;
    }
    Ok((imported, skipped))
}

/// Keep `feed` equal to the directory's keys until `shutdown`: ask every [`REFRESH_EVERY`]
/// whether they changed and read them when they did. A directory that does not answer keeps
/// the last keys read (logged once per outage).
pub async fn follow(home: Arc<KeyHome>, feed: KeyFeed, shutdown: CancellationToken) {
    let mut seen: Option<String> = None;
    let mut last_read: Option<tokio::time::Instant> = None;
    let mut failing = false;
    loop {
        let due = last_read.is_none_or(|t| {
            let every = match home.as_ref() {
                KeyHome::Ldap(_) => RELOAD_EVERY,
                _ => RELOAD_ANYWAY,
            };
            t.elapsed() >= every
        });
        let result = async {
            let version = home.version().await?;
            let changed = version.is_some() && version != seen;
            if due || changed {
                feed.replace(home.keys().await?);
                last_read = Some(tokio::time::Instant::now());
                seen = version;
            }
            Ok::<_, KeysError>(())
        }
        .await;
        match result {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(store = %home.describe(), keys = feed.len(), "API keys readable again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::error!(
                    store = %home.describe(),
                    error = %e,
                    "API keys could not be read; keeping the last ones read"
                );
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(REFRESH_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
