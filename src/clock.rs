//! Wall-clock time as the spool, the suspension list and the metrics record it, and as
//! messages write it.

use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::{Rfc2822, Rfc3339};

/// Seconds since the Unix epoch; 0 for a clock set before 1970 (times stored on disk are
/// unsigned, and a wrong clock must not stop the server).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch; 0 for a clock set before 1970.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 date-time in UTC (`2026-11-24T13:31:00Z`) of unix seconds `t`.
pub fn rfc3339(t: u64) -> String {
    OffsetDateTime::from_unix_timestamp(i64::try_from(t).unwrap_or(i64::MAX))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// RFC 5322 date-time (`Tue, 24 Nov 2026 13:31:00 +0000`).
pub fn rfc5322_date(t: OffsetDateTime) -> String {
    t.format(&Rfc2822)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".to_string())
}
