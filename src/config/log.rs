//! `[log]`: how the server writes its log (to stderr).

use serde::Deserialize;

use super::Problems;
use super::value::one_of;

/// `[log]`: how the server writes its log (to stderr).
#[derive(Debug, Clone, Default)]
pub struct LogSettings {
    pub format: LogFormat,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event, `key=value` fields.
    #[default]
    Text,
    /// One JSON object per line; the event's fields are top-level keys.
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    #[serde(default = "default_log_format")]
    format: String,
}

fn default_log_format() -> String {
    "text".into()
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: default_log_format(),
        }
    }
}

/// Validate `[log]`.
pub(super) fn parse(raw: &RawLog, p: &mut Problems<'_>) -> Option<LogSettings> {
    let format = one_of(
        p,
        "log.format",
        raw.format.trim(),
        &[("text", LogFormat::Text), ("json", LogFormat::Json)],
    );
    Some(LogSettings { format: format? })
}
