//! Stub: replaced by the real ldap backend.

use std::time::Duration;

use super::{Answer, AuthRequest, BackendError};
use crate::config::LdapSettings;

/// The ldap backend.
#[derive(Debug)]
pub struct Ldap {
    _timeout: Duration,
}

impl Ldap {
    /// From `[auth.ldap]`.
    pub fn new(_settings: &LdapSettings, timeout: Duration) -> Result<Ldap, BackendError> {
        Ok(Ldap { _timeout: timeout })
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
