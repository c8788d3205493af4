//! `relay.destination_*` and `relay.throttle_backoff`: polite delivery, per destination (the
//! recipient domain in MX mode, the smarthost as one destination).

use std::time::Duration;

use super::Problems;
use super::value::{at_least_1s, non_negative, positive};

/// The limits the scheduler keeps per destination (`queue::polite`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoliteSettings {
    /// Simultaneous attempts to one destination (`relay.destination_concurrency`, default 20).
    pub concurrency: usize,
    /// Transactions per minute to one destination, 0 = unlimited (`relay.destination_rate`).
    pub rate_per_minute: u32,
    /// The first hold after a destination throttles (`relay.throttle_backoff`, default 60s);
    /// doubles on each further throttle up to [`PoliteSettings::backoff_max`].
    pub backoff: Duration,
    /// The longest hold (`relay.throttle_backoff_max`, default 30m).
    pub backoff_max: Duration,
}

impl Default for PoliteSettings {
    fn default() -> Self {
        PoliteSettings {
            concurrency: 20,
            rate_per_minute: 0,
            backoff: Duration::from_secs(60),
            backoff_max: Duration::from_secs(30 * 60),
        }
    }
}

/// The raw keys, as they sit in `[relay]`.
pub(super) struct RawPolite<'a> {
    pub concurrency: i64,
    pub rate: i64,
    pub backoff: &'a str,
    pub backoff_max: &'a str,
}

pub(super) fn default_destination_concurrency() -> i64 {
    20
}
pub(super) fn default_throttle_backoff() -> String {
    "60s".into()
}
pub(super) fn default_throttle_backoff_max() -> String {
    "30m".into()
}

/// Validate the polite-delivery keys.
pub(super) fn parse(r: &RawPolite<'_>, p: &mut Problems<'_>) -> Option<PoliteSettings> {
    let concurrency = positive(p, "relay.destination_concurrency", r.concurrency, 10_000);
    let rate = non_negative(p, "relay.destination_rate", r.rate, 1_000_000);
    let backoff = at_least_1s(p, "relay.throttle_backoff", r.backoff);
    let backoff_max = at_least_1s(p, "relay.throttle_backoff_max", r.backoff_max);
    if let (Some(b), Some(m)) = (backoff, backoff_max)
        && m < b
    {
        p.push(
            "relay.throttle_backoff_max",
            format!("must be at least relay.throttle_backoff ({:?})", r.backoff),
        );
        return None;
    }
    Some(PoliteSettings {
        concurrency: concurrency? as usize,
        rate_per_minute: rate? as u32,
        backoff: backoff?,
        backoff_max: backoff_max?,
    })
}
