//! Delivery events (issue 16): what happened to one recipient of one message, handed to
//! whoever acts on it: the suppression list (a permanent failure adds the recipient) and the
//! webhooks (a durable queue per endpoint).
//!
//! The scheduler records the events of an attempt in the same blocking step that saves the
//! message's state, before that state is saved ([`crate::queue::scheduler`]): a crash in
//! between reports an event twice, never not at all. Sinks do their own IO and log their own
//! failures; a failing sink never stops delivery.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The next hop accepted the recipient (2xx to DATA).
    Delivered,
    /// A temporary failure; another attempt follows.
    Deferred,
    /// A permanent failure (5xx, or retries ran out past `queue.max_age`).
    Bounced,
    /// The recipient was on the tenant's suppression list: never attempted.
    Suppressed,
    /// Still deferred after `queue.delay_warning` (once per recipient, with the delay DSN).
    Delayed,
}

impl EventKind {
    /// Every kind, in the order of the config's `events` list.
    pub const ALL: [EventKind; 5] = [
        EventKind::Delivered,
        EventKind::Deferred,
        EventKind::Bounced,
        EventKind::Suppressed,
        EventKind::Delayed,
    ];

    /// The name in config and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Delivered => "delivered",
            EventKind::Deferred => "deferred",
            EventKind::Bounced => "bounced",
            EventKind::Suppressed => "suppressed",
            EventKind::Delayed => "delayed",
        }
    }

    /// The kind a config name stands for.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// One event for one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryEvent {
    pub kind: EventKind,
    /// The message's queue ID (the API's message id).
    pub queue_id: String,
    /// The login that submitted it (a key's name for a key).
    pub user: String,
    /// [`crate::queue::Envelope::tenant`]: whose suppression list and webhooks apply.
    pub tenant: String,
    pub recipient: String,
    /// The next hop's reply or our reason, as logged (at most 1000 characters).
    pub reply: String,
    /// The enhanced status code of a bounce (`5.1.1`), when there is one.
    pub status: Option<String>,
    /// The next hop, when one answered.
    pub host: Option<String>,
    /// Attempts made for this recipient so far (0 for `suppressed`).
    pub attempt: u32,
    /// Unix seconds.
    pub at: u64,
    /// `ENVID=` / the API's `envid`.
    pub envid: Option<String>,
    /// The API caller's `metadata`.
    pub metadata: BTreeMap<String, String>,
}

impl DeliveryEvent {
    /// A recipient left out because `user`'s `tenant` suppressed it, with the entry's `reply`:
    /// not attempted, so no attempt, status or host; no message yet (`queue_id` is set once
    /// one is queued, if ever).
    pub fn suppressed(
        user: &str,
        tenant: &str,
        recipient: &str,
        reply: String,
        at: u64,
        envid: Option<String>,
        metadata: BTreeMap<String, String>,
    ) -> DeliveryEvent {
        DeliveryEvent {
            kind: EventKind::Suppressed,
            queue_id: String::new(),
            user: user.to_owned(),
            tenant: tenant.to_owned(),
            recipient: recipient.to_owned(),
            reply,
            status: None,
            host: None,
            attempt: 0,
            at,
            envid,
            metadata,
        }
    }
}

/// Something that acts on events. Called off the reactor (a blocking context); must bound
/// its own work and never panic on bad input.
pub trait EventSink: Send + Sync {
    fn record_blocking(&self, events: &[DeliveryEvent]);
}

/// The sinks of one server, called in order.
#[derive(Clone, Default)]
pub struct Events {
    sinks: Vec<Arc<dyn EventSink>>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("sinks", &self.sinks.len())
            .finish()
    }
}

impl Events {
    /// Add a sink.
    pub fn with(mut self, sink: Arc<dyn EventSink>) -> Events {
        self.sinks.push(sink);
        self
    }

    /// Whether any sink listens (else events are not even built).
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Hand `events` to every sink. Blocks.
    pub fn record_blocking(&self, events: &[DeliveryEvent]) {
        if events.is_empty() {
            return;
        }
        for sink in &self.sinks {
            sink.record_blocking(events);
        }
    }
}
