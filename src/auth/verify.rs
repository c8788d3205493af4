//! argon2id password hashing and verification, off the async reactor and on a bounded pool.

use std::sync::Arc;

use super::users::{User, UserStore};

/// argon2id with the OWASP parameters m=19456 KiB, t=2, p=1; returns a PHC string.
pub fn hash_password(_password: &str) -> Result<String, argon2::password_hash::Error> {
    todo!("auth helper")
}

/// Verifies credentials against the user store. An unknown login is verified against a dummy
/// hash with the same parameters so that it costs the same time as a wrong password.
#[derive(Clone)]
pub struct Verifier {
    _users: UserStore,
}

impl Verifier {
    /// `max_parallel` bounds how many argon2 verifications run at once (spawn_blocking).
    pub fn new(_users: UserStore, _max_parallel: usize) -> Verifier {
        todo!("auth helper")
    }

    /// The user, when `password` is right for `login`; `None` otherwise (unknown or wrong).
    pub async fn verify(&self, _login: &str, _password: &str) -> Option<Arc<User>> {
        todo!("auth helper")
    }

    /// The store this verifier reads.
    pub fn users(&self) -> &UserStore {
        &self._users
    }
}
