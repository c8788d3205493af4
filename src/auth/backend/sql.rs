//! Stub: replaced by the real sql backend.

use std::time::Duration;

use super::{Answer, AuthRequest, BackendError};
use crate::config::SqlSettings;

/// The sql backend.
#[derive(Debug)]
pub struct Sql {
    _timeout: Duration,
}

impl Sql {
    /// From `[auth.sql]`.
    pub fn new(_settings: &SqlSettings, timeout: Duration) -> Result<Sql, BackendError> {
        Ok(Sql { _timeout: timeout })
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
