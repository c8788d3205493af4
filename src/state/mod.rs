//! Abuse-control state shared by every replica (`[state] backend = "redis"`): sliding-window
//! counters updated atomically on a Redis or Valkey server, and the suspension set. The users
//! of this module (`auth::throttle`, `auth::quota`, `auth::suspend`) keep their per-process
//! state beside it and fall back to it when the store does not answer within `state.timeout`.

pub mod redis;

use std::time::Duration;

/// A sliding window: `len` long, moving in `buckets` equal steps (an hour by the minute is
/// `len` 3600 s, 60 buckets). A count added at time t is part of the total until the step
/// that holds t has left the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub len: Duration,
    pub buckets: u32,
}

/// One counter to read: its key (without the store's prefix) and window.
#[derive(Debug, Clone, Copy)]
pub struct Counter<'a> {
    pub key: &'a str,
    pub window: Window,
}

/// One counter to add to: `amount` more, allowed only while the total stays within `limit`
/// (0 = no limit).
#[derive(Debug, Clone, Copy)]
pub struct Count<'a> {
    pub key: &'a str,
    pub window: Window,
    pub amount: u64,
    pub limit: u64,
}

/// When a count was added, in the store's clock (milliseconds since the Unix epoch): taking it
/// back removes it from the same step of the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp(pub u64);

/// One suspension as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredSuspension {
    /// Unix seconds.
    pub since: u64,
    pub reason: String,
}

/// Why the store did not answer. Every caller falls back to its per-process state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Could not connect (refused, DNS, TLS handshake or certificate, authentication).
    #[error("state store unreachable: {0}")]
    Unreachable(String),
    /// No answer within `state.timeout`.
    #[error("state store did not answer within {0:?}")]
    Timeout(Duration),
    /// An answer outside what the scripts return, or a server error.
    #[error("state store error: {0}")]
    Protocol(String),
}

/// The store as the rest of the server uses it: every call bounded by `state.timeout`, an
/// outage logged once per burst and shown in the metrics (`submitd_state_backend_up`), and
/// `None` for "no answer": the caller then decides with its per-process state.
#[derive(Debug)]
pub struct Shared {
    store: redis::Store,
    up: std::sync::atomic::AtomicBool,
    outage: crate::outage::OutageLog,
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

impl Shared {
    /// Around `store`; reports up/down to `metrics` when given.
    pub fn new(
        store: redis::Store,
        metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    ) -> Shared {
        if let Some(m) = &metrics {
            m.state_backend(Some(true));
        }
        Shared {
            store,
            up: std::sync::atomic::AtomicBool::new(true),
            outage: crate::outage::OutageLog::default(),
            metrics,
        }
    }

    /// The store, for calls whose errors the caller reports through [`Shared::answered`].
    pub fn store(&self) -> &redis::Store {
        &self.store
    }

    /// Whether the last call got an answer.
    pub fn is_up(&self) -> bool {
        self.up.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Note how a call ended, and turn it into `Some(answer)` or `None` (fall back).
    pub fn answered<T>(&self, result: Result<T, StoreError>) -> Option<T> {
        match result {
            Ok(v) => {
                if !self.up.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    if let Some(m) = &self.metrics {
                        m.state_backend(Some(true));
                    }
                    self.outage
                        .answered("state", "state store answers again; shared limits apply");
                }
                Some(v)
            }
            Err(e) => {
                if self.up.swap(false, std::sync::atomic::Ordering::Relaxed)
                    && let Some(m) = &self.metrics
                {
                    m.state_backend(Some(false));
                }
                self.outage.failed(
                    "state",
                    &e.to_string(),
                    "state store unavailable; limits fall back to this process's own counters",
                );
                None
            }
        }
    }
}

/// The shared store `[state]` names, `None` for `backend = "local"`. Reads `url_file`
/// (blocking: call before serving); connects to nothing yet.
pub fn from_settings(
    settings: &crate::config::StateSettings,
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
) -> Result<Option<std::sync::Arc<Shared>>, StoreError> {
    use crate::config::{StateBackend, StateUrl};
    let StateBackend::Redis { url, prefix } = &settings.backend else {
        return Ok(None);
    };
    let url = match url {
        StateUrl::Inline(u) => u.clone(),
        StateUrl::File(path) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .map_err(|e| {
                StoreError::Unreachable(format!("state.url_file {}: {e}", path.display()))
            })?,
    };
    let store = redis::Store::new(&url, prefix, settings.timeout)?;
    Ok(Some(std::sync::Arc::new(Shared::new(store, metrics))))
}
