//! `[queue]`: the spool directory, the retry schedule, delivery concurrency and delay warnings.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::value::{duration, positive_duration};
use super::{Context, Problems};

/// `[queue]`.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub dir: PathBuf,
    pub retry: Vec<Duration>,
    pub max_age: Duration,
    /// How many deliveries run at once (`queue.concurrency`, default 16).
    pub concurrency: usize,
    /// After how long in the queue a deferred recipient gets one `Action: delayed` DSN
    /// (`queue.delay_warning`, default 4h); `None` when `"0s"` turned warnings off.
    pub delay_warning: Option<Duration>,
    /// How long the status record of a finished message is kept (`queue.status_retention`,
    /// default 7d).
    pub status_retention: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueue {
    #[serde(default = "default_queue_dir")]
    dir: String,
    #[serde(default = "default_retry")]
    retry: Vec<String>,
    #[serde(default = "default_max_age")]
    max_age: String,
    #[serde(default = "default_concurrency")]
    concurrency: u64,
    #[serde(default = "default_delay_warning")]
    delay_warning: String,
    #[serde(default = "default_status_retention")]
    status_retention: String,
}

fn default_delay_warning() -> String {
    "4h".into()
}

fn default_status_retention() -> String {
    "7d".into()
}

fn default_concurrency() -> u64 {
    16
}

fn default_queue_dir() -> String {
    "var/queue".into()
}
fn default_retry() -> Vec<String> {
    ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]
        .map(String::from)
        .to_vec()
}
fn default_max_age() -> String {
    "5d".into()
}

impl Default for RawQueue {
    fn default() -> Self {
        RawQueue {
            dir: default_queue_dir(),
            retry: default_retry(),
            max_age: default_max_age(),
            concurrency: default_concurrency(),
            delay_warning: default_delay_warning(),
            status_retention: default_status_retention(),
        }
    }
}

/// Validate `[queue]`.
pub(super) fn parse(q: &RawQueue, p: &mut Problems<'_>, cx: &Context<'_>) -> Option<QueueSettings> {
    if q.dir.trim().is_empty() {
        p.push("queue.dir", "must not be empty");
    }
    if q.retry.is_empty() {
        p.push("queue.retry", "must list at least one interval");
    }
    let mut retry = Vec::new();
    for r in &q.retry {
        match duration(p, "queue.retry", r) {
            Some(d) if d.is_zero() => p.push(
                "queue.retry",
                format!("{r:?}: intervals must be longer than 0"),
            ),
            Some(d) => retry.push(d),
            None => {}
        }
    }
    let max_age = positive_duration(p, "queue.max_age", &q.max_age);
    if q.concurrency == 0 || q.concurrency > 10_000 {
        p.push("queue.concurrency", "must be between 1 and 10000");
    }
    let delay_warning = duration(p, "queue.delay_warning", &q.delay_warning);
    let status_retention = positive_duration(p, "queue.status_retention", &q.status_retention);
    Some(QueueSettings {
        dir: cx.resolve(q.dir.trim()),
        retry,
        delay_warning: delay_warning.filter(|d| !d.is_zero()),
        max_age: max_age?,
        status_retention: status_retention?,
        concurrency: q.concurrency.clamp(1, 10_000) as usize,
    })
}
