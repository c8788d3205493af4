//! `[suppression]`: the per-tenant list of recipients that failed permanently (issue 16).

use std::time::Duration;

use serde::Deserialize;

use super::Problems;
use super::value::positive_duration;

/// `[suppression]`.
#[derive(Debug, Clone)]
pub struct SuppressionSettings {
    /// `suppression.enabled` (default true): a permanent failure adds the recipient, and RCPT
    /// to a listed recipient is refused. Off: neither (the CLI still edits the store).
    pub enabled: bool,
    /// `suppression.ttl` (default 30d): how long an entry applies.
    pub ttl: Duration,
    /// `suppression.max_entries` (default 1000000): over it, the oldest entries go.
    pub max_entries: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSuppression {
    #[serde(default = "default_enabled")]
    enabled: bool,
    #[serde(default = "default_ttl")]
    ttl: String,
    #[serde(default = "default_max_entries")]
    max_entries: u64,
}

fn default_enabled() -> bool {
    true
}
fn default_ttl() -> String {
    "30d".into()
}
fn default_max_entries() -> u64 {
    1_000_000
}

impl Default for RawSuppression {
    fn default() -> Self {
        RawSuppression {
            enabled: default_enabled(),
            ttl: default_ttl(),
            max_entries: default_max_entries(),
        }
    }
}

/// Validate `[suppression]`.
pub(super) fn parse(raw: &RawSuppression, p: &mut Problems<'_>) -> Option<SuppressionSettings> {
    let ttl = positive_duration(p, "suppression.ttl", &raw.ttl);
    if raw.max_entries == 0 || raw.max_entries > 100_000_000 {
        p.push("suppression.max_entries", "must be between 1 and 100000000");
    }
    Some(SuppressionSettings {
        enabled: raw.enabled,
        ttl: ttl?,
        max_entries: raw.max_entries.clamp(1, 100_000_000) as usize,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{assert_error, parse, with};

    #[test]
    fn defaults_and_keys() {
        let s = parse(&with("")).unwrap();
        assert!(s.suppression.enabled);
        assert_eq!(s.suppression.ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(s.queue.status_retention, Duration::from_secs(7 * 86_400));
        let s = parse(&with(
            "[suppression]\nenabled = false\nttl = \"12h\"\n[queue]\nstatus_retention = \"1d\"",
        ))
        .unwrap();
        assert!(!s.suppression.enabled);
        assert_eq!(s.suppression.ttl, Duration::from_secs(12 * 3600));
        assert_eq!(s.queue.status_retention, Duration::from_secs(86_400));
        assert_error(
            &with("[suppression]\nttl = \"0s\""),
            "suppression.ttl",
            "longer than 0",
        );
        assert_error(
            &with("[suppression]\nttl = \"x\""),
            "suppression.ttl",
            "not a duration",
        );
        assert_error(
            &with("[suppression]\nmax_entries = 0"),
            "suppression.max_entries",
            "between",
        );
        assert_error(
            &with("[queue]\nstatus_retention = \"0s\""),
            "queue.status_retention",
            "longer than 0",
        );
        assert!(super::super::testing::errors(&with("[suppression]\nttl2 = \"1d\"")).len() == 1);
    }
}
