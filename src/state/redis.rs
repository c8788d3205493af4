//! Stub: the Redis/Valkey store (to be written).

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Count, Counter, Stamp, StoreError, StoredSuspension};

/// A Redis or Valkey server shared by the replicas.
#[derive(Debug)]
pub struct Store {
    _timeout: Duration,
}

impl Store {
    /// From `url` (`redis://`, `rediss://`); keys are `prefix:...`; connects on first use.
    pub fn new(_url: &str, _prefix: &str, timeout: Duration) -> Result<Store, StoreError> {
        Ok(Store { _timeout: timeout })
    }

    /// The totals of `counters` now, in order: one round trip.
    pub async fn totals(&self, _counters: &[Counter<'_>]) -> Result<Vec<u64>, StoreError> {
        Err(StoreError::Protocol("not built".into()))
    }

    /// Atomically: when every count's total plus its amount stays within its limit, add them
    /// all and return when (`Ok(Ok(stamp))`); otherwise add nothing and return the index of
    /// the first count over its limit (`Ok(Err(i))`). One round trip.
    pub async fn add_within(
        &self,
        _counts: &[Count<'_>],
    ) -> Result<Result<Stamp, usize>, StoreError> {
        Err(StoreError::Protocol("not built".into()))
    }

    /// Add every count's amount whatever the limits; the totals after, in order, and when.
    pub async fn add(&self, _counts: &[Count<'_>]) -> Result<(Stamp, Vec<u64>), StoreError> {
        Err(StoreError::Protocol("not built".into()))
    }

    /// Take back counts added at `stamp` (never below zero; nothing when that step has left
    /// the window).
    pub async fn take_back(&self, _counts: &[Count<'_>], _stamp: Stamp) -> Result<(), StoreError> {
        Err(StoreError::Protocol("not built".into()))
    }

    /// Forget these counters.
    pub async fn clear(&self, _keys: &[&str]) -> Result<(), StoreError> {
        Err(StoreError::Protocol("not built".into()))
    }

    /// Suspend `login` (kept with `since` and `reason`); `false` when it already was.
    pub async fn suspend(&self, _login: &str, _s: &StoredSuspension) -> Result<bool, StoreError> {
        Err(StoreError::Protocol("not built".into()))
    }

    /// Lift `login`'s suspension; `false` when it was not suspended.
    pub async fn unsuspend(&self, _login: &str) -> Result<bool, StoreError> {
        Err(StoreError::Protocol("not built".into()))
    }

    /// Every suspension (bounded: at most 100000 entries are read).
    pub async fn suspensions(&self) -> Result<BTreeMap<String, StoredSuspension>, StoreError> {
        Err(StoreError::Protocol("not built".into()))
    }

    /// One round trip (`PING`): for `/health`, the metrics gauge and `check-config`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        Err(StoreError::Protocol("not built".into()))
    }
}
