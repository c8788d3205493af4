//! Wall-clock time as the spool, the suspension list and the metrics record it, and as
//! messages write it.

use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

/// Seconds since the Unix epoch; 0 for a clock set before 1970 (times stored on disk are
/// unsigned, and a wrong clock must not stop the server).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 5322 date-time (`Tue, 24 Nov 2026 13:31:00 +0000`).
pub fn rfc5322_date(t: OffsetDateTime) -> String {
    t.format(&Rfc2822)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".to_string())
}
