//! One endpoint's dispatcher: oldest due event first, one request in flight.
//!
//! Two backoffs. An event that fails waits on its own schedule (its failures, `retry_min`
//! doubling to `retry_max`), and the events behind it go on: one event the receiver keeps
//! refusing does not hold up the rest. The endpoint pauses after every failure too (its
//! failures in a row, the same curve), so a dead endpoint gets one request per pause, not one
//! per waiting event.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use hyper::body::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Endpoint;
use super::store::{self, DispatchState};
use crate::clock::unix_now;
use crate::delivery::https::{Kept, Post, post_to};
use crate::logsafe::Escaped;
use crate::metrics::WebhookDrop;

/// The wait before the next try after `failures` failures in a row: `retry_min` doubled per
/// failure, at most `retry_max`, times a random factor in [0.5, 1] (so that endpoints that
/// failed together do not retry together).
pub(super) fn backoff(min: Duration, max: Duration, failures: u32, jitter: f64) -> Duration {
    let doubled = min.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    doubled.min(max).mul_f64(jitter.clamp(0.5, 1.0))
}

/// What one try did.
enum Tried {
    Sent,
    Failed(String),
    /// Gone from the disk or unreadable: nothing to send.
    Skipped,
}

/// An event that failed: its failures so far and when it may be tried again.
struct Parked {
    failures: u32,
    due: Instant,
}

/// The oldest event that is not waiting out its own backoff, or when the next one will be.
fn next_due(ep: &Endpoint, parked: &HashMap<String, Parked>) -> Result<String, Option<Instant>> {
    let now = Instant::now();
    ep.backlog
        .first_where(|id| parked.get(id).is_none_or(|p| p.due <= now))
        .ok_or_else(|| parked.values().map(|p| p.due).min())
}

/// Run until `shutdown`.
pub(super) async fn run(ep: Arc<Endpoint>, shutdown: CancellationToken) {
    let name = ep.settings.name.clone();
    let mut state = {
        let dir = ep.backlog.dir().to_path_buf();
        tokio::task::spawn_blocking(move || store::read_state(&dir))
            .await
            .unwrap_or_default()
    };
    // The connection to the endpoint, kept between events while it stays open.
    let mut kept: Option<Kept> = None;
    // Events that failed, until they are sent or dropped (at most the backlog).
    let mut parked: HashMap<String, Parked> = HashMap::new();
    loop {
        ep.gauges();
        let id = match next_due(&ep, &parked) {
            Ok(id) => id,
            Err(next) => {
                // Nothing due: a new event, or the first failed one's turn.
                let turn = async {
                    match next {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ep.wake.notified() => {}
                    _ = turn => {}
                }
                continue;
            }
        };
        let made = store::entry_micros(&id).unwrap_or(0) / 1_000_000;
        if unix_now().saturating_sub(made) > ep.settings.max_age.as_secs() {
            warn!(webhook = %name, id = %id, max_age = ?ep.settings.max_age,
                "webhook event older than max_age: dropped");
            ep.metrics.webhook_dropped(&name, WebhookDrop::MaxAge);
            parked.remove(&id);
            remove(&ep, &id).await;
            continue;
        }
        let tried = tokio::select! {
            _ = shutdown.cancelled() => return,
            t = try_once(&ep, &id, &mut kept) => t,
        };
        match tried {
            Tried::Sent => {
                ep.metrics.webhook_delivery(&name, true);
                debug!(webhook = %name, id = %id, "webhook delivered");
                parked.remove(&id);
                remove(&ep, &id).await;
                if state.consecutive_failures > 0 {
                    info!(webhook = %name, after = state.consecutive_failures, "webhook endpoint answers again");
                    state.consecutive_failures = 0;
                    save_state(&ep, &state).await;
                }
            }
            Tried::Skipped => {
                parked.remove(&id);
            }
            Tried::Failed(error) => {
                ep.metrics.webhook_delivery(&name, false);
                state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                state.last_error = Some(error.clone());
                state.last_error_at = Some(unix_now());
                save_state(&ep, &state).await;
                let (min, max) = (ep.settings.retry_min, ep.settings.retry_max);
                let event = parked.entry(id.clone()).or_insert(Parked {
                    failures: 0,
                    due: Instant::now(),
                });
                event.failures = event.failures.saturating_add(1);
                let event_wait = backoff(min, max, event.failures, rand::random_range(0.5..=1.0));
                event.due = Instant::now() + event_wait;
                let wait = backoff(
                    min,
                    max,
                    state.consecutive_failures,
                    rand::random_range(0.5..=1.0),
                );
                warn!(webhook = %name, id = %id, error = %Escaped(&error),
                    failures = state.consecutive_failures, event_failures = event.failures,
                    event_retry_in = ?event_wait, retry_in = ?wait, "webhook not delivered");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Read event `id` and POST it, signed with the current time, on `kept` when it is open.
async fn try_once(ep: &Arc<Endpoint>, id: &str, kept: &mut Option<Kept>) -> Tried {
    let read = {
        let ep = ep.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || ep.backlog.read(&id)).await
    };
    let body = match read {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => {
            warn!(webhook = %ep.settings.name, id = %id, error = %e,
                "webhook event unreadable: dropped");
            ep.metrics
                .webhook_dropped(&ep.settings.name, WebhookDrop::Unreadable);
            remove(ep, id).await;
            return Tried::Skipped;
        }
        Err(e) => return Tried::Failed(format!("read task: {e}")),
    };
    // The entry's event id (a listed entry always has one).
    let event_id = store::entry_id(id).unwrap_or(id);
    let timestamp = unix_now();
    let signature = ep.secret.sign(event_id, timestamp, &body);
    let headers = [
        ("webhook-id", event_id.to_string()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ];
    let url = &ep.settings.url;
    let post = Post {
        host: &url.host,
        port: url.port,
        path: &url.path,
        tls: ep.tls.clone(),
        content_type: "application/json",
        headers: &headers,
        body: Bytes::from(body),
        timeout: ep.settings.timeout,
    };
    match post_to(&post, kept).await {
        Ok(status) if (200..300).contains(&status) => Tried::Sent,
        Ok(status) => Tried::Failed(format!("HTTP status {status}")),
        Err(e) => Tried::Failed(e.to_string()),
    }
}

async fn remove(ep: &Arc<Endpoint>, id: &str) {
    let ep2 = ep.clone();
    let id = id.to_string();
    let name = ep.settings.name.clone();
    match tokio::task::spawn_blocking(move || ep2.backlog.remove(&id)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(webhook = %name, error = %e, "cannot remove a webhook event file"),
        Err(e) => warn!(webhook = %name, error = %e, "webhook remove task failed"),
    }
}

async fn save_state(ep: &Arc<Endpoint>, state: &DispatchState) {
    let dir = ep.backlog.dir().to_path_buf();
    let state = state.clone();
    let name = ep.settings.name.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store::write_state(&dir, &state)).await
    {
        warn!(webhook = %name, error = %e, "cannot write the webhook state file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let min = Duration::from_secs(5);
        let max = Duration::from_secs(600);
        let b = |n, j| backoff(min, max, n, j);
        assert_eq!(b(1, 1.0), Duration::from_secs(5));
        assert_eq!(b(2, 1.0), Duration::from_secs(10));
        assert_eq!(b(3, 1.0), Duration::from_secs(20));
        assert_eq!(b(8, 1.0), Duration::from_secs(600));
        assert_eq!(b(u32::MAX, 1.0), Duration::from_secs(600));
        assert_eq!(b(1, 0.5), Duration::from_millis(2500));
        assert_eq!(b(1, 0.0), Duration::from_millis(2500), "jitter clamped");
        assert_eq!(b(0, 1.0), Duration::from_secs(5));
    }
}
