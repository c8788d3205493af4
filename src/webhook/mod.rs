//! Delivery webhooks (issue 16, `[[webhook]]`): every delivery event an endpoint wants is
//! queued durably on disk and POSTed, signed the Standard Webhooks way, by one dispatcher per
//! endpoint.
//!
//! - [`Webhooks`] is an [`EventSink`]: `record_blocking` only writes files (`store`), never
//!   waits for HTTP, so a dead endpoint never slows delivery; the scheduler calls it before it
//!   saves the message's state, so no event is lost (a crash in between repeats one).
//! - `dispatch`: one task per endpoint, started by [`Webhooks::spawn`]: oldest due event
//!   first, one request in flight, `2xx` removes the event, anything else retries it with
//!   exponential backoff and jitter (`retry_min` doubling to `retry_max`) on its own schedule
//!   while the events behind it go on, until it is older than `max_age`, then drops it; the
//!   endpoint also pauses after each failure, so a dead one is not flooded. New events wake
//!   it (a `Notify`), nothing polls.
//! - `sign`: the secret format and the HMAC-SHA256 signature; `payload`: the JSON body.
//! - [`status`]: what `submitd webhook list` shows, read from the directories (the server
//!   may be down).
//!
//! Bounds: `max_backlog` events per endpoint (over it, the *new* event is dropped, logged and
//! counted: the oldest ones are the ones a receiver is furthest behind on), `max_age`, a
//! `timeout` per request, response headers bounded by `delivery::https`.

mod dispatch;
pub mod payload;
pub mod sign;
pub mod store;

use std::sync::{Arc, Mutex};

use rustls::ClientConfig;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::config::{Problems, Settings, WebhookSettings};
use crate::events::{DeliveryEvent, EventSink};
use crate::metrics::{Metrics, WebhookDrop};

pub use sign::{Secret, generate as generate_secret};
use store::Backlog;

/// One configured endpoint: its settings, signing key, TLS, backlog and wake-up.
#[derive(Debug)]
pub(crate) struct Endpoint {
    settings: WebhookSettings,
    secret: Secret,
    /// `Some` for an `https` URL.
    tls: Option<Arc<ClientConfig>>,
    backlog: Backlog,
    wake: Notify,
    metrics: Arc<Metrics>,
}

impl Endpoint {
    fn wants(&self, event: &DeliveryEvent) -> bool {
        let s = &self.settings;
        s.events.iter().any(|e| e == event.kind.as_str())
            && (s.keys.is_empty()
                || s.keys
                    .iter()
                    .any(|k| *k == event.user || *k == event.tenant))
    }

    /// Publish the backlog gauges.
    fn gauges(&self) {
        let oldest = self
            .backlog
            .first()
            .and_then(|e| store::entry_micros(&e))
            .map(|m| m / 1_000_000);
        self.metrics
            .webhook_backlog(&self.settings.name, self.backlog.len(), oldest);
    }
}

/// Every endpoint of one server; the event sink and the dispatchers' shared state.
#[derive(Debug)]
pub struct Webhooks {
    endpoints: Vec<Arc<Endpoint>>,
    /// The last entry time handed out (microseconds), so that entries grow strictly even when
    /// the clock steps back or two events share a microsecond.
    last_micros: Mutex<u64>,
}

impl Webhooks {
    /// Load every `[[webhook]]`: secret, TLS roots, backlog directory (created). `None` when
    /// none is configured.
    pub fn open(settings: &Settings, metrics: Arc<Metrics>) -> anyhow::Result<Option<Webhooks>> {
        if settings.webhook.is_empty() {
            return Ok(None);
        }
        let mut endpoints = Vec::new();
        let mut last = 0;
        for (i, w) in settings.webhook.iter().enumerate() {
            let secret = Secret::load(&w.secret_file)
                .map_err(|e| anyhow::anyhow!("webhook[{i}].secret_file: {e}"))?;
            let tls = if w.url.https {
                Some(
                    crate::delivery::tls::verify_mx(w.ca_file.as_deref())
                        .map_err(|e| anyhow::anyhow!("webhook[{i}].ca_file: {e}"))?,
                )
            } else {
                None
            };
            let dir = store::dir_of(&settings.queue.dir, &w.name);
            let backlog = Backlog::open(dir.clone()).map_err(|e| {
                anyhow::anyhow!("webhook[{i}]: backlog directory {}: {e}", dir.display())
            })?;
            if let Some(m) = backlog.last().as_deref().and_then(store::entry_micros) {
                last = last.max(m);
            }
            metrics.webhook_endpoint(&w.name);
            let endpoint = Endpoint {
                settings: w.clone(),
                secret,
                tls,
                backlog,
                wake: Notify::new(),
                metrics: metrics.clone(),
            };
            endpoint.gauges();
            endpoints.push(Arc::new(endpoint));
        }
        Ok(Some(Webhooks {
            endpoints,
            last_micros: Mutex::new(last),
        }))
    }

    /// Start one dispatcher per endpoint; they stop when `shutdown` is cancelled (the backlog
    /// stays on disk for the next start).
    pub fn spawn(&self, shutdown: &CancellationToken) {
        for ep in &self.endpoints {
            tokio::spawn(dispatch::run(ep.clone(), shutdown.clone()));
        }
    }

    fn next_micros(&self) -> u64 {
        let now = crate::clock::unix_micros();
        let mut last = self.last_micros.lock().unwrap_or_else(|p| p.into_inner());
        *last = now.max(*last + 1);
        *last
    }
}

/// The `webhook-id` of `event`: `msg_` + 32 hex digits of SHA-256 over the message, the
/// recipient, the kind and the attempt. The same event recorded twice (a crash between the
/// record and the queue's state save) gets the same id, so receivers deduplicate it; two
/// different events never share one (a recipient has one event of a kind per attempt). An
/// event without a message (`suppressed` at SMTP RCPT, or when the API queued nothing) gets a
/// random id.
pub fn event_id(event: &DeliveryEvent) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [
        event.queue_id.as_bytes(),
        event.recipient.as_bytes(),
        event.kind.as_str().as_bytes(),
        event.attempt.to_string().as_bytes(),
    ] {
        ctx.update(part);
        ctx.update(b"\0");
    }
    if event.queue_id.is_empty() {
        // No message (a recipient refused as suppressed before there was one): nothing
        // records such an event twice, and two of them for one address are two events.
        ctx.update(&rand::random::<[u8; 16]>());
    }
    let digest = ctx.finish();
    format!(
        "{}{}",
        store::ID_PREFIX,
        data_encoding::HEXLOWER.encode(&digest.as_ref()[..16])
    )
}

impl EventSink for Webhooks {
    /// Write every wanted event of `events` to each endpoint's backlog, fsync, one directory
    /// fsync per endpoint, then wake the dispatchers. Local file IO only.
    fn record_blocking(&self, events: &[DeliveryEvent]) {
        let mut written: Vec<Vec<String>> = vec![Vec::new(); self.endpoints.len()];
        for event in events {
            let id = store::entry(self.next_micros(), &event_id(event));
            let mut body = None;
            for (ep, batch) in self.endpoints.iter().zip(written.iter_mut()) {
                if !ep.wants(event) {
                    continue;
                }
                let name = &ep.settings.name;
                if ep.backlog.len() + batch.len() >= ep.settings.max_backlog {
                    warn!(webhook = %name, event = event.kind.as_str(), queue_id = %event.queue_id,
                        max_backlog = ep.settings.max_backlog, "webhook backlog full: event dropped");
                    ep.metrics.webhook_dropped(name, WebhookDrop::BacklogFull);
                    continue;
                }
                let body = body.get_or_insert_with(|| payload::body(event));
                match ep.backlog.write(&id, body) {
                    Ok(()) => batch.push(id.clone()),
                    Err(e) => {
                        error!(webhook = %name, queue_id = %event.queue_id, error = %e,
                            "cannot store webhook event: dropped");
                        ep.metrics.webhook_dropped(name, WebhookDrop::WriteFailed);
                    }
                }
            }
        }
        for (ep, batch) in self.endpoints.iter().zip(written) {
            if batch.is_empty() {
                continue;
            }
            if let Err(e) = ep.backlog.sync_dir() {
                error!(webhook = %ep.settings.name, error = %e,
                    "cannot sync the webhook backlog directory");
            }
            ep.backlog.admit(batch);
            ep.gauges();
            ep.wake.notify_one();
        }
    }
}

/// One endpoint as `submitd webhook list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointStatus {
    pub name: String,
    pub url: String,
    /// Events waiting.
    pub backlog: usize,
    /// Age in seconds of the oldest waiting event.
    pub oldest_age: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
    /// Failed requests since the last success.
    pub consecutive_failures: u32,
}

/// Every endpoint's backlog and last error, read from `queue.dir/webhooks/` (works whether or
/// not the server runs).
pub fn status(settings: &Settings) -> std::io::Result<Vec<EndpointStatus>> {
    let now = crate::clock::unix_now();
    let mut out = Vec::new();
    for w in &settings.webhook {
        let dir = store::dir_of(&settings.queue.dir, &w.name);
        let ids = store::ids_on_disk(&dir)?;
        let state = store::read_state(&dir);
        out.push(EndpointStatus {
            name: w.name.clone(),
            url: w.url.to_string(),
            backlog: ids.len(),
            oldest_age: ids
                .first()
                .and_then(|e| store::entry_micros(e))
                .map(|m| now.saturating_sub(m / 1_000_000)),
            last_error: state.last_error,
            last_error_at: state.last_error_at,
            consecutive_failures: state.consecutive_failures,
        });
    }
    Ok(out)
}

/// `check-config`: every secret file reads and is well formed, every `ca_file` loads.
pub fn check_files(settings: &Settings, p: &mut Problems<'_>) {
    for (i, w) in settings.webhook.iter().enumerate() {
        if let Err(e) = Secret::load(&w.secret_file) {
            p.push(format!("webhook[{i}].secret_file"), e);
        }
        if let Some(ca) = &w.ca_file
            && let Err(e) = crate::tls::load_certs(ca)
        {
            p.push(format!("webhook[{i}].ca_file"), e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::event_id;
    use crate::events::EventKind;

    #[test]
    fn event_ids_are_stable_and_distinct() {
        let e = super::payload::tests::sample(EventKind::Bounced);
        let id = event_id(&e);
        assert!(id.starts_with("msg_") && id.len() == 36, "{id}");
        // The same event made again (another time, another reply text): the same id.
        let mut again = e.clone();
        again.at += 60;
        again.reply = "550 other text".into();
        assert_eq!(event_id(&again), id);
        for change in [
            |e: &mut crate::events::DeliveryEvent| e.kind = EventKind::Delivered,
            |e: &mut crate::events::DeliveryEvent| e.attempt += 1,
            |e: &mut crate::events::DeliveryEvent| e.recipient.push('x'),
            |e: &mut crate::events::DeliveryEvent| e.queue_id.push('x'),
        ] {
            let mut other = e.clone();
            change(&mut other);
            assert_ne!(event_id(&other), id);
        }
        // Without a message, two events for one recipient are two events.
        let mut none = e.clone();
        none.queue_id.clear();
        assert_ne!(event_id(&none), event_id(&none));
    }

    #[test]
    fn config_names_are_the_event_kinds() {
        let kinds: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(kinds, crate::config::WEBHOOK_EVENTS.to_vec());
    }
}
