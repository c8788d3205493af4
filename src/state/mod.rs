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
