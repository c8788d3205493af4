//! The suppression list (issue 16): recipients that failed permanently, per tenant
//! ([`crate::auth::users::User::tenant`]), so that later mail to them is not attempted.
//!
//! INTERFACE STUB: in memory only. The real store (durable file, `suppression.ttl`, the event
//! sink that adds on a 5xx, the CLI) replaces the body of this module and keeps these names.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// One suppressed recipient of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub tenant: String,
    /// Lowercase.
    pub address: String,
    /// The reply that caused it (or the reason given to `add`).
    pub reply: String,
    /// Unix seconds.
    pub added: u64,
    /// Unix seconds after which the entry no longer applies.
    pub expires: u64,
}

/// Why the list could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SuppressionError {
    #[error("{0}")]
    Io(String),
}

/// The list the server checks.
#[derive(Debug)]
pub struct Suppressions {
    ttl: Duration,
    entries: Mutex<HashMap<(String, String), Entry>>,
}

impl Suppressions {
    /// An empty list whose entries live `ttl`.
    pub fn in_memory(ttl: Duration) -> Suppressions {
        Suppressions {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The entry for `address` in `tenant`'s list, if one applies at `now`.
    pub fn check(&self, tenant: &str, address: &str, now: u64) -> Option<Entry> {
        let key = (tenant.to_owned(), address.to_ascii_lowercase());
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(&key).filter(|e| e.expires > now).cloned()
    }

    /// Add (or refresh) `address` to `tenant`'s list. Blocks (a durable write).
    pub fn add(
        &self,
        tenant: &str,
        address: &str,
        reply: &str,
        now: u64,
    ) -> Result<(), SuppressionError> {
        let address = address.to_ascii_lowercase();
        let entry = Entry {
            tenant: tenant.to_owned(),
            address: address.clone(),
            reply: reply.to_owned(),
            added: now,
            expires: now + self.ttl.as_secs(),
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.insert((tenant.to_owned(), address), entry);
        Ok(())
    }

    /// Remove `address` from `tenant`'s list; whether it was there. Blocks.
    pub fn remove(&self, tenant: &str, address: &str) -> Result<bool, SuppressionError> {
        let key = (tenant.to_owned(), address.to_ascii_lowercase());
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        Ok(entries.remove(&key).is_some())
    }

    /// The entries in force at `now`, of one tenant or of all.
    pub fn list(&self, tenant: Option<&str>, now: u64) -> Vec<Entry> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Entry> = entries
            .values()
            .filter(|e| e.expires > now && tenant.is_none_or(|t| t == e.tenant))
            .cloned()
            .collect();
        out.sort_by(|a, b| (&a.tenant, &a.address).cmp(&(&b.tenant, &b.address)));
        out
    }
}
