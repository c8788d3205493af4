//! Logging an outage of something the server asks (a directory backend, the state store)
//! once per burst: at once, then at most every [`OUTAGE_LOG_INTERVAL`] with the number of
//! failures in between, and once when it answers again. A dead dependency under load is a
//! handful of log lines, not one per login or message.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::logsafe::Escaped;

/// While an outage lasts, a line at most this often.
pub const OUTAGE_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// One dependency's outage state.
#[derive(Debug, Default)]
pub struct OutageLog {
    /// When the last line was logged, while an outage lasts.
    since: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl OutageLog {
    /// A call to `what` failed with `error`; `message` is the log line's text.
    pub fn failed(&self, what: &'static str, error: &str, message: &'static str) {
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        let due = since.is_none_or(|t| t.elapsed() >= OUTAGE_LOG_INTERVAL);
        if !due {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let more = self.suppressed.swap(0, Ordering::Relaxed);
        *since = Some(Instant::now());
        tracing::error!(what, error = %Escaped(error), failures_not_logged = more, "{message}");
    }

    /// A call to `what` got an answer: the end of an outage is logged once.
    pub fn answered(&self, what: &'static str, message: &'static str) {
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        if since.take().is_some() {
            let more = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(what, failures_not_logged = more, "{message}");
        }
    }
}
