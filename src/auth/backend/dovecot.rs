//! Stub: replaced by the real dovecot backend.

use std::time::Duration;

use super::{Answer, AuthRequest, BackendError};
use crate::config::DovecotSettings;

/// The dovecot backend.
#[derive(Debug)]
pub struct Dovecot {
    _timeout: Duration,
}

impl Dovecot {
    /// From `[auth.dovecot]`.
    pub fn new(_settings: &DovecotSettings, timeout: Duration) -> Result<Dovecot, BackendError> {
        Ok(Dovecot { _timeout: timeout })
    }

    /// Check one login.
    pub async fn authenticate(&self, _req: &AuthRequest<'_>) -> Answer {
        Err(BackendError::Config {
            key: "auth.backend",
            detail: "not built yet".into(),
        })
    }

    /// Connect and check the settings.
    pub async fn check(&self) -> Result<(), BackendError> {
        Err(BackendError::Config {
            key: "auth.backend",
            detail: "not built yet".into(),
        })
    }
}
