//! The users file (DESIGN.md "Users file"): parse, edit atomically, and a store that picks up
//! changes to the file without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::senders::SenderPattern;

/// One user as the server uses it.
#[derive(Debug, Clone)]
pub struct User {
    pub login: String,
    /// argon2id PHC string.
    pub password: String,
    /// Parsed `senders` (defaults to `[login]`).
    pub senders: Vec<SenderPattern>,
}

/// Why a users file could not be read, parsed or written. Errors name the file and the entry.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("user {0} already exists")]
    Exists(String),
    #[error("no such user {0}")]
    NoSuchUser(String),
}

/// Parse users-file text. Rejects unknown keys, duplicate logins, bad sender patterns and any
/// password that is not an argon2 PHC string (plaintext passwords are a config error).
pub fn parse(_text: &str, _path: &Path) -> Result<Vec<User>, UsersError> {
    todo!("auth helper")
}

/// Read and parse a users file.
pub fn load(_path: &Path) -> Result<Vec<User>, UsersError> {
    todo!("auth helper")
}

/// Add a user to the file (created when missing), atomically (temp file, fsync, rename).
/// An existing login is `UsersError::Exists`. Empty `senders` means `[login]`.
pub fn add_user(_path: &Path, _login: &str, _phc: &str, _senders: &[String]) -> Result<(), UsersError> {
    todo!("auth helper")
}

/// Replace a user's password hash, atomically.
pub fn set_password(_path: &Path, _login: &str, _phc: &str) -> Result<(), UsersError> {
    todo!("auth helper")
}

/// Remove a user, atomically.
pub fn remove_user(_path: &Path, _login: &str) -> Result<(), UsersError> {
    todo!("auth helper")
}

/// The users of a running server. Cheap to clone; re-reads the file when its modification time
/// or size changes (checked at most once a second), keeping the old users if the new file is bad.
#[derive(Clone)]
pub struct UserStore {
    _path: PathBuf,
}

impl UserStore {
    /// Load the file; errors if it cannot be read or parsed.
    pub fn open(_path: &Path) -> Result<UserStore, UsersError> {
        todo!("auth helper")
    }

    /// An in-memory store (tests).
    pub fn from_users(_users: Vec<User>) -> UserStore {
        todo!("auth helper")
    }

    /// Look a login up (exact match), reloading the file first if it changed.
    pub fn get(&self, _login: &str) -> Option<Arc<User>> {
        todo!("auth helper")
    }
}
