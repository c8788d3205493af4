//! Prometheus metrics (`[metrics] listen`): the counters, gauges and histograms one server
//! keeps, encoded in the Prometheus text format (version 0.0.4). The HTTP responder that serves
//! them at `GET /metrics` is [`crate::listener::metrics_http`].
//!
//! Every label takes its value from a fixed set defined here — never a user, an address or a
//! domain — so the number of series stays constant whatever the traffic. Every series is
//! created at start, so a scrape shows zeros rather than missing lines. The one exception is
//! the `destination` label of the polite-delivery gauges: a destination (recipient domain or
//! smarthost) appears only while attempts to it run or while it is throttled, at most
//! [`MAX_DESTINATION_SERIES`] of them.
//!
//! The other modules call one method per event ([`Metrics::outcome`] for what a session's
//! reply meant, [`Metrics::delivery`] per recipient outcome, ...); the queue gauges are set by the
//! scheduler after each directory scan, and the age of the oldest message is computed at
//! scrape time from the oldest arrival time it recorded, so a scrape never touches the disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::clock::unix_now;
use crate::outcome::{AuthResult, Outcome, Refusal};

/// One destination's polite-delivery state, for `submitd_destination_*`.
#[derive(Debug, Clone, Copy)]
pub struct DestinationGauge<'a> {
    pub name: &'a str,
    /// Held after a throttle reply.
    pub held: bool,
    /// Held or below its configured concurrency.
    pub throttled: bool,
    pub limit: usize,
    pub in_flight: usize,
}

/// At most this many destinations in `submitd_destination_*` (throttled ones first).
pub const MAX_DESTINATION_SERIES: usize = 100;
/// The `destination` label.
type DestLabel = [(&'static str, String); 1];

/// The `endpoint` label: a `[[webhook]]` name (a fixed set, from the config).
type EndpointLabel = [(&'static str, String); 1];
/// `endpoint` and a second label from a fixed set.
type EndpointLabel2 = [(&'static str, String); 2];

/// Why a webhook event was dropped (`submitd_webhook_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookDrop {
    /// `max_backlog` events were waiting: the new one was not stored.
    BacklogFull,
    /// Not delivered within `max_age`.
    MaxAge,
    /// Its file could not be written.
    WriteFailed,
    /// Its file could not be read.
    Unreadable,
}

impl WebhookDrop {
    const ALL: [WebhookDrop; 4] = [
        WebhookDrop::BacklogFull,
        WebhookDrop::MaxAge,
        WebhookDrop::WriteFailed,
        WebhookDrop::Unreadable,
    ];

    fn label(self) -> &'static str {
        match self {
            WebhookDrop::BacklogFull => "backlog_full",
            WebhookDrop::MaxAge => "max_age",
            WebhookDrop::WriteFailed => "write_failed",
            WebhookDrop::Unreadable => "unreadable",
        }
    }
}

/// One label, name and value, both from the fixed sets below.
type Label = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// 587, STARTTLS.
    Submission,
    /// 465, implicit TLS.
    Submissions,
}

impl Port {
    const ALL: [Port; 2] = [Port::Submission, Port::Submissions];

    fn label(self) -> Label {
        [(
            "port",
            match self {
                Port::Submission => "submission",
                Port::Submissions => "submissions",
            },
        )]
    }
}

/// Why the listener turned a connection away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `limits.max_connections`.
    Total,
    /// `limits.max_connections_per_ip`.
    PerIp,
    /// `listen.proxy_protocol`: the peer is not in `listen.trusted_proxies`.
    UntrustedProxy,
    /// `listen.proxy_protocol`: no valid PROXY header in time.
    ProxyHeader,
}

/// How a TLS handshake (465, or 587 after STARTTLS) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    Ok,
    Failed,
    Timeout,
}

const REFUSED: [&str; 4] = [
    "max_connections",
    "max_connections_per_ip",
    "untrusted_proxy",
    "proxy_header",
];
const HANDSHAKE: [&str; 3] = ["ok", "failed", "timeout"];
/// `submitd_deliveries_total{status}`: the `status` field of the `delivery` log line.
const DELIVERY_STATUSES: [&str; 4] = ["sent", "deferred", "bounced", "expired"];

/// Every metric one server keeps, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    connections: Family<Label, Counter>,
    connections_open: Family<Label, Gauge>,
    connections_refused: Family<Label, Counter>,
    tls_handshakes: Family<Labels2, Counter>,
    auth: Family<Label, Counter>,
    messages_accepted: Counter,
    accepted_bytes: Counter,
    messages_rejected: Family<Label, Counter>,
    queue_messages: Gauge,
    queue_recipients: Gauge,
    queue_oldest_age: Gauge,
    /// Unix seconds when the oldest queued message arrived; 0 when the queue is empty.
    queue_oldest_received: AtomicU64,
    deliveries: Family<Label, Counter>,
    delivery_delay: Histogram,
    attempt_duration: Histogram,
    auth_backend_requests: Family<Label, Counter>,
    auth_backend_failures: Family<Labels2, Counter>,
    auth_backend_duration: Family<Label, Histogram, fn() -> Histogram>,
    state_up: Gauge,
    destination_throttled: Family<DestLabel, Gauge>,
    destination_limit: Family<DestLabel, Gauge>,
    destination_in_flight: Family<DestLabel, Gauge>,
    throttle_events: Counter,
    /// The destinations in `submitd_destination_*` now, to drop their series when they go.
    destinations_shown: std::sync::Mutex<Vec<String>>,
    /// `[state]`: 0 local, 1 shared store answering, 2 shared store down (for `/health`).
    state_mode: std::sync::atomic::AtomicU8,
    webhook_backlog: Family<EndpointLabel, Gauge>,
    webhook_oldest_age: Family<EndpointLabel, Gauge>,
    /// Per endpoint, Unix seconds when its oldest waiting event was made (0: none).
    webhook_oldest: std::sync::Mutex<Vec<(String, u64)>>,
    webhook_deliveries: Family<EndpointLabel2, Counter>,
    webhook_dropped: Family<EndpointLabel2, Counter>,
}

/// `submitd_auth_backend_failures_total{reason}`: `BackendError::label`'s values.
const BACKEND_FAILURES: [&str; 6] = [
    "unreachable",
    "refused",
    "query",
    "protocol",
    "timeout",
    "config",
];

/// `auth.backend`'s directory names, the only values of the `backend` label.
const BACKENDS: [&str; 3] = ["dovecot", "ldap", "sql"];

fn backend_histogram() -> Histogram {
    // A local LDAP bind is ~1 ms, a Dovecot argon2 check tens of ms; the top bucket is
    // `auth.backend_timeout`'s maximum.
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
    ])
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every series at zero.
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::with_prefix("submitd"),
            connections: Family::default(),
            connections_open: Family::default(),
            connections_refused: Family::default(),
            tls_handshakes: Family::default(),
            auth: Family::default(),
            messages_accepted: Counter::default(),
            accepted_bytes: Counter::default(),
            messages_rejected: Family::default(),
            queue_messages: Gauge::default(),
            queue_recipients: Gauge::default(),
            queue_oldest_age: Gauge::default(),
            queue_oldest_received: AtomicU64::new(0),
            deliveries: Family::default(),
            // One second to five days (queue.max_age's default).
            delivery_delay: Histogram::new([
                1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0, 432000.0,
            ]),
            attempt_duration: Histogram::new([
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
            auth_backend_requests: Family::default(),
            auth_backend_failures: Family::default(),
            auth_backend_duration: Family::new_with_constructor(backend_histogram),
            state_up: Gauge::default(),
            destination_throttled: Family::default(),
            destination_limit: Family::default(),
            destination_in_flight: Family::default(),
            throttle_events: Counter::default(),
            destinations_shown: std::sync::Mutex::new(Vec::new()),
            state_mode: std::sync::atomic::AtomicU8::new(0),
            webhook_backlog: Family::default(),
            webhook_oldest_age: Family::default(),
            webhook_oldest: std::sync::Mutex::new(Vec::new()),
            webhook_deliveries: Family::default(),
            webhook_dropped: Family::default(),
        };
        m.state_up.set(1);
        // Create every series now (the guards `get_or_create` returns are dropped at once).
        for port in Port::ALL {
            drop(m.connections.get_or_create(&port.label()));
            drop(m.connections_open.get_or_create(&port.label()));
            for result in HANDSHAKE {
                let [port] = port.label();
                drop(m.tls_handshakes.get_or_create(&[port, ("result", result)]));
            }
        }
        for reason in REFUSED {
            drop(m.connections_refused.get_or_create(&[("reason", reason)]));
        }
        for result in AuthResult::ALL {
            drop(m.auth.get_or_create(&[("result", result.label())]));
        }
        for kind in Refusal::ALL {
            drop(
                m.messages_rejected
                    .get_or_create(&[("reason", kind.label())]),
            );
        }
        for status in DELIVERY_STATUSES {
            drop(m.deliveries.get_or_create(&[("status", status)]));
        }
        m.register()
    }

    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "connections",
            "Connections accepted by a listener, refused ones included",
            self.connections.clone(),
        );
        r.register(
            "connections_open",
            "Sessions running now",
            self.connections_open.clone(),
        );
        r.register(
            "connections_refused",
            "Connections turned away by a connection limit",
            self.connections_refused.clone(),
        );
        r.register(
            "tls_handshakes",
            "TLS handshakes (465, and 587 after STARTTLS) by result",
            self.tls_handshakes.clone(),
        );
        r.register("auth", "AUTH attempts by result", self.auth.clone());
        r.register(
            "messages_accepted",
            "Messages queued (answered 250)",
            self.messages_accepted.clone(),
        );
        r.register(
            "accepted_bytes",
            "Bytes of messages queued, submitd's added headers included",
            self.accepted_bytes.clone(),
        );
        r.register(
            "messages_rejected",
            "MAIL, RCPT or message content refused, by reason",
            self.messages_rejected.clone(),
        );
        r.register(
            "queue_messages",
            "Messages in the queue (bounces included)",
            self.queue_messages.clone(),
        );
        r.register(
            "queue_recipients",
            "Recipients in the queue still to deliver (pending or deferred)",
            self.queue_recipients.clone(),
        );
        r.register(
            "queue_oldest_message_age_seconds",
            "Age of the oldest message in the queue; 0 when it is empty",
            self.queue_oldest_age.clone(),
        );
        r.register(
            "deliveries",
            "Delivery outcomes per recipient and attempt",
            self.deliveries.clone(),
        );
        r.register(
            "delivery_delay_seconds",
            "Time from acceptance to delivery, per recipient delivered",
            self.delivery_delay.clone(),
        );
        r.register(
            "delivery_attempt_duration_seconds",
            "Duration of one outbound delivery attempt (one destination, its recipients)",
            self.attempt_duration.clone(),
        );
        r.register(
            "state_backend_up",
            "1 when the [state] store answers (always 1 with backend = \"local\"), 0 while limits fall back to per-process counters",
            self.state_up.clone(),
        );
        r.register(
            "auth_backend_requests",
            "Questions to the authentication backend (auth.backend), answered or not",
            self.auth_backend_requests.clone(),
        );
        r.register(
            "auth_backend_failures",
            "Questions the authentication backend could not answer (454 to the client), by reason",
            self.auth_backend_failures.clone(),
        );
        r.register(
            "auth_backend_duration_seconds",
            "Time the authentication backend took per question, failures included",
            self.auth_backend_duration.clone(),
        );
        r.register(
            "destination_throttled",
            "1 while a destination is held after a throttle reply (421, 4.7.28, 4.7.650, ...); only destinations throttled or with attempts running",
            self.destination_throttled.clone(),
        );
        r.register(
            "destination_concurrency_limit",
            "Simultaneous attempts allowed to a destination now (relay.destination_concurrency, less after throttling)",
            self.destination_limit.clone(),
        );
        r.register(
            "destination_in_flight",
            "Attempts running to a destination now",
            self.destination_in_flight.clone(),
        );
        r.register(
            "destination_throttle_events",
            "Times a destination asked us to slow down and was held",
            self.throttle_events.clone(),
        );
        self.register_webhooks()
    }

    /// The `[[webhook]]` series.
    fn register_webhooks(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "webhook_backlog",
            "Webhook events waiting to be sent, per endpoint",
            self.webhook_backlog.clone(),
        );
        r.register(
            "webhook_oldest_event_age_seconds",
            "Age of the oldest webhook event waiting, per endpoint; 0 when none waits",
            self.webhook_oldest_age.clone(),
        );
        r.register(
            "webhook_deliveries",
            "Webhook requests by result: success (2xx) or failure (other status, network error, timeout)",
            self.webhook_deliveries.clone(),
        );
        r.register(
            "webhook_dropped",
            "Webhook events dropped, by reason (backlog_full, max_age, write_failed, unreadable)",
            self.webhook_dropped.clone(),
        );
        self
    }

    /// Create the series of webhook endpoint `name` at zero.
    pub fn webhook_endpoint(&self, name: &str) {
        let label = [("endpoint", name.to_string())];
        drop(self.webhook_backlog.get_or_create(&label));
        drop(self.webhook_oldest_age.get_or_create(&label));
        for result in ["success", "failure"] {
            let labels = [
                ("endpoint", name.to_string()),
                ("result", result.to_string()),
            ];
            drop(self.webhook_deliveries.get_or_create(&labels));
        }
        for why in WebhookDrop::ALL {
            let labels = [
                ("endpoint", name.to_string()),
                ("reason", why.label().to_string()),
            ];
            drop(self.webhook_dropped.get_or_create(&labels));
        }
    }

    /// Endpoint `name` has `waiting` events, the oldest made at `oldest` (Unix seconds).
    pub fn webhook_backlog(&self, name: &str, waiting: usize, oldest: Option<u64>) {
        self.webhook_backlog
            .get_or_create(&[("endpoint", name.to_string())])
            .set(waiting as i64);
        let mut all = self
            .webhook_oldest
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match all.iter_mut().find(|(n, _)| n == name) {
            Some((_, t)) => *t = oldest.unwrap_or(0),
            None => all.push((name.to_string(), oldest.unwrap_or(0))),
        }
    }

    /// One webhook request to endpoint `name` ended: `ok` is a 2xx.
    pub fn webhook_delivery(&self, name: &str, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.webhook_deliveries
            .get_or_create(&[
                ("endpoint", name.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }

    /// A webhook event for endpoint `name` was dropped.
    pub fn webhook_dropped(&self, name: &str, why: WebhookDrop) {
        self.webhook_dropped
            .get_or_create(&[
                ("endpoint", name.to_string()),
                ("reason", why.label().to_string()),
            ])
            .inc();
    }

    /// The shared state store answers (`Some(true)`), does not (`Some(false)`), or there is
    /// none (`None`, `backend = "local"`).
    pub fn state_backend(&self, up: Option<bool>) {
        let (mode, gauge) = match up {
            None => (0, 1),
            Some(true) => (1, 1),
            Some(false) => (2, 0),
        };
        self.state_mode.store(mode, Ordering::Relaxed);
        self.state_up.set(gauge);
    }

    /// `GET /health`'s body: the process serves; the state store's status.
    pub fn health_json(&self) -> String {
        let (backend, up) = match self.state_mode.load(Ordering::Relaxed) {
            0 => ("local", true),
            1 => ("redis", true),
            _ => ("redis", false),
        };
        let state = if up { "up" } else { "down" };
        format!("{{\"status\":\"ok\",\"state_backend\":\"{backend}\",\"state\":\"{state}\"}}\n")
    }

    /// Create the series of the configured directory backend at zero.
    pub fn auth_backend_configured(&self, backend: &'static str) {
        let Some(backend) = BACKENDS.iter().find(|b| **b == backend) else {
            return;
        };
        drop(
            self.auth_backend_requests
                .get_or_create(&[("backend", backend)]),
        );
        drop(
            self.auth_backend_duration
                .get_or_create(&[("backend", backend)]),
        );
        for reason in BACKEND_FAILURES {
            drop(
                self.auth_backend_failures
                    .get_or_create(&[("backend", backend), ("reason", reason)]),
            );
        }
    }

    /// One question to a directory backend took `took`; `failure` is why it got no answer.
    pub fn auth_backend(
        &self,
        backend: &'static str,
        took: Duration,
        failure: Option<&'static str>,
    ) {
        let Some(backend) = BACKENDS.iter().find(|b| **b == backend) else {
            return;
        };
        self.auth_backend_requests
            .get_or_create(&[("backend", backend)])
            .inc();
        self.auth_backend_duration
            .get_or_create(&[("backend", backend)])
            .observe(took.as_secs_f64());
        if let Some(reason) = failure.and_then(|f| BACKEND_FAILURES.iter().find(|r| **r == f)) {
            self.auth_backend_failures
                .get_or_create(&[("backend", backend), ("reason", reason)])
                .inc();
        }
    }

    /// A connection was accepted on `port`: counted, and open until the guard drops.
    pub fn connection(&self, port: Port) -> OpenConnection {
        self.connections.get_or_create(&port.label()).inc();
        let gauge = self.connections_open.get_or_create_owned(&port.label());
        gauge.inc();
        OpenConnection(gauge)
    }

    /// A connection limit turned a connection away (it was counted by [`Metrics::connection`]).
    pub fn refused(&self, why: Refused) {
        let reason = match why {
            Refused::Total => REFUSED[0],
            Refused::PerIp => REFUSED[1],
            Refused::UntrustedProxy => REFUSED[2],
            Refused::ProxyHeader => REFUSED[3],
        };
        self.connections_refused
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// A TLS handshake on `port` ended.
    pub fn tls_handshake(&self, port: Port, result: Handshake) {
        let result = match result {
            Handshake::Ok => HANDSHAKE[0],
            Handshake::Failed => HANDSHAKE[1],
            Handshake::Timeout => HANDSHAKE[2],
        };
        let [port] = port.label();
        self.tls_handshakes
            .get_or_create(&[port, ("result", result)])
            .inc();
    }

    /// What a reply the session sent meant: an AUTH result or a refusal.
    pub fn outcome(&self, outcome: Outcome) {
        match outcome {
            Outcome::Auth(result) => {
                self.auth.get_or_create(&[("result", result.label())]).inc();
            }
            Outcome::Rejected(kind) => {
                self.messages_rejected
                    .get_or_create(&[("reason", kind.label())])
                    .inc();
            }
        }
    }

    /// A message of `bytes` was queued.
    pub fn message_accepted(&self, bytes: usize) {
        self.messages_accepted.inc();
        self.accepted_bytes.inc_by(bytes as u64);
    }

    /// The queue after a directory scan: messages, recipients still to deliver, and when the
    /// oldest message arrived (Unix seconds).
    pub fn queue(&self, messages: usize, recipients: usize, oldest: Option<u64>) {
        self.queue_messages.set(messages as i64);
        self.queue_recipients.set(recipients as i64);
        self.queue_oldest_received
            .store(oldest.unwrap_or(0), Ordering::Relaxed);
    }

    /// A recipient's outcome of a delivery attempt; `status` is the `delivery` log line's
    /// (`sent`, `deferred`, `bounced`, `expired`), `delay` the seconds since acceptance.
    pub fn delivery(&self, status: &str, delay: u64) {
        let Some(status) = DELIVERY_STATUSES.iter().find(|s| **s == status) else {
            debug_assert!(false, "unknown delivery status {status:?}");
            return;
        };
        self.deliveries.get_or_create(&[("status", status)]).inc();
        if *status == "sent" {
            self.delivery_delay.observe(delay as f64);
        }
    }

    /// The polite-delivery gauges as of `states` (destinations with attempts running or
    /// throttled): the series of any other destination are dropped, so the label set stays
    /// small.
    pub fn destinations(&self, mut shown: Vec<DestinationGauge<'_>>) {
        // Throttled first, then the busiest.
        shown.sort_by_key(|d| (!d.throttled, std::cmp::Reverse(d.in_flight)));
        shown.truncate(MAX_DESTINATION_SERIES);
        // Only the series that go are removed (no scrape sees the others missing).
        let mut before = self
            .destinations_shown
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for name in before.iter() {
            if !shown.iter().any(|d| d.name == name) {
                let label = [("destination", name.clone())];
                self.destination_throttled.remove(&label);
                self.destination_limit.remove(&label);
                self.destination_in_flight.remove(&label);
            }
        }
        *before = shown.iter().map(|d| d.name.to_string()).collect();
        drop(before);
        for d in shown {
            let label = [("destination", d.name.to_string())];
            self.destination_throttled
                .get_or_create(&label)
                .set(i64::from(d.held));
            self.destination_limit
                .get_or_create(&label)
                .set(d.limit as i64);
            self.destination_in_flight
                .get_or_create(&label)
                .set(d.in_flight as i64);
        }
    }

    /// A destination throttled us and is held.
    pub fn throttle_event(&self) {
        self.throttle_events.inc();
    }

    /// One outbound attempt (connection to one destination) took `took`.
    pub fn delivery_attempt(&self, took: Duration) {
        self.attempt_duration.observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric, as of now.
    pub fn encode(&self) -> String {
        let oldest = self.queue_oldest_received.load(Ordering::Relaxed);
        let age = if oldest == 0 {
            0
        } else {
            unix_now().saturating_sub(oldest)
        };
        self.queue_oldest_age.set(age as i64);
        let now = unix_now();
        for (name, oldest) in self
            .webhook_oldest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let age = if *oldest == 0 {
                0
            } else {
                now.saturating_sub(*oldest)
            };
            self.webhook_oldest_age
                .get_or_create(&[("endpoint", name.clone())])
                .set(age as i64);
        }
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// A session counted in `submitd_connections_open` until dropped.
#[derive(Debug)]
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_series_are_bounded_and_dropped() {
        let m = Metrics::new();
        let names: Vec<String> = (0..150).map(|i| format!("d{i}.test")).collect();
        let gauges = names
            .iter()
            .enumerate()
            .map(|(i, name)| DestinationGauge {
                name,
                held: i == 149,
                throttled: i == 149,
                limit: 1,
                in_flight: 1,
            })
            .collect();
        m.destinations(gauges);
        let text = m.encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with("submitd_destination_in_flight{"))
            .count();
        assert_eq!(series, MAX_DESTINATION_SERIES);
        assert!(text.contains("submitd_destination_throttled{destination=\"d149.test\"} 1"));
        m.destinations(Vec::new());
        assert!(!m.encode().contains("destination=\""), "series dropped");
    }

    /// Every refusal kind and every AUTH result moves its own series, and only that one.
    #[test]
    fn every_outcome_is_counted_under_its_label() {
        let outcomes = AuthResult::ALL
            .into_iter()
            .map(Outcome::Auth)
            .chain(Refusal::ALL.into_iter().map(Outcome::Rejected));
        for outcome in outcomes {
            let m = Metrics::new();
            let series = match outcome {
                Outcome::Auth(r) => format!("submitd_auth_total{{result=\"{}\"}}", r.label()),
                Outcome::Rejected(k) => {
                    format!(
                        "submitd_messages_rejected_total{{reason=\"{}\"}}",
                        k.label()
                    )
                }
            };
            let before = m.encode();
            assert_eq!(sample_value(&before, &series), Some(0.0), "{series}");
            m.outcome(outcome);
            let after = m.encode();
            assert_eq!(sample_value(&after, &series), Some(1.0), "{outcome:?}");
            let moved = after
                .lines()
                .filter(|l| !l.starts_with('#') && !before.lines().any(|b| b == *l))
                .count();
            assert_eq!(moved, 1, "{outcome:?} moved other series:\n{after}");
        }
    }

    fn sample_value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn encodes_every_series_from_zero() {
        let m = Metrics::new();
        let text = m.encode();
        for series in [
            "submitd_connections_total{port=\"submission\"}",
            "submitd_connections_open{port=\"submissions\"}",
            "submitd_connections_refused_total{reason=\"max_connections_per_ip\"}",
            "submitd_tls_handshakes_total{port=\"submissions\",result=\"failed\"}",
            "submitd_auth_total{result=\"bad_credentials\"}",
            "submitd_messages_accepted_total",
            "submitd_accepted_bytes_total",
            "submitd_messages_rejected_total{reason=\"bare_line_ending\"}",
            "submitd_queue_messages",
            "submitd_queue_recipients",
            "submitd_queue_oldest_message_age_seconds",
            "submitd_deliveries_total{status=\"deferred\"}",
            "submitd_delivery_delay_seconds_count",
            "submitd_delivery_attempt_duration_seconds_count",
        ] {
            assert_eq!(
                sample_value(&text, series),
                Some(0.0),
                "{series} in\n{text}"
            );
        }
    }

    #[test]
    fn events_move_the_right_series() {
        let m = Metrics::new();
        let open = m.connection(Port::Submissions);
        m.refused(Refused::PerIp);
        m.tls_handshake(Port::Submission, Handshake::Timeout);
        m.outcome(Outcome::Auth(AuthResult::BadCredentials));
        m.outcome(Outcome::Rejected(Refusal::BareLineEnding));
        m.message_accepted(1234);
        m.delivery("sent", 7);
        m.delivery("deferred", 7);
        m.queue(3, 5, Some(unix_now() - 100));
        let text = m.encode();
        let v = |s: &str| sample_value(&text, s).unwrap_or_else(|| panic!("{s} in\n{text}"));
        assert_eq!(v("submitd_connections_total{port=\"submissions\"}"), 1.0);
        assert_eq!(v("submitd_connections_open{port=\"submissions\"}"), 1.0);
        assert_eq!(
            v("submitd_connections_refused_total{reason=\"max_connections_per_ip\"}"),
            1.0
        );
        assert_eq!(
            v("submitd_tls_handshakes_total{port=\"submission\",result=\"timeout\"}"),
            1.0
        );
        assert_eq!(v("submitd_auth_total{result=\"bad_credentials\"}"), 1.0);
        assert_eq!(
            v("submitd_messages_rejected_total{reason=\"bare_line_ending\"}"),
            1.0
        );
        assert_eq!(v("submitd_accepted_bytes_total"), 1234.0);
        assert_eq!(v("submitd_deliveries_total{status=\"sent\"}"), 1.0);
        assert_eq!(v("submitd_delivery_delay_seconds_count"), 1.0);
        assert_eq!(v("submitd_delivery_delay_seconds_bucket{le=\"15\"}"), 1.0);
        assert_eq!(v("submitd_delivery_delay_seconds_bucket{le=\"5\"}"), 0.0);
        assert_eq!(v("submitd_queue_recipients"), 5.0);
        let age = v("submitd_queue_oldest_message_age_seconds");
        assert!((100.0..110.0).contains(&age), "{age}");
        drop(open);
        assert_eq!(
            sample_value(
                &m.encode(),
                "submitd_connections_open{port=\"submissions\"}"
            ),
            Some(0.0)
        );
    }
}
