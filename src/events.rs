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
    /// `suppressed` events without a message, by tenant and recipient (shared by clones).
    refusals: Arc<Refusals>,
}

/// How long a `suppressed` event without a message stands for later ones: a client naming the
/// same suppressed recipient again within this many seconds is refused without a new event.
pub const REFUSAL_REPORT_EVERY: u64 = 3600;

/// At most this many (tenant, recipient) pairs are remembered; past it, refusals of pairs not
/// yet remembered make no event until older ones age out.
const MAX_REFUSALS: usize = 10_000;

/// The `suppressed` events without a message (an SMTP RCPT refused, an API request with every
/// recipient suppressed) reported lately. Such an event carries nothing but the tenant and the
/// recipient, and a client can make one per command: without this, one sender naming suppressed
/// addresses in a loop would fill every endpoint's backlog and crowd out the other tenants'
/// events.
#[derive(Default)]
struct Refusals {
    /// (tenant, lowercased recipient) → unix seconds of its last event; when full, the time of
    /// the last pruning (pruned at most every 10 s).
    seen: std::sync::Mutex<(Reported, u64)>,
}

/// (tenant, lowercased recipient) → unix seconds of its last `suppressed` event.
type Reported = std::collections::HashMap<(String, String), u64>;

impl Refusals {
    /// Whether `event` is to be reported: not a refusal, or the first for its pair lately.
    fn first(&self, event: &DeliveryEvent) -> bool {
        if event.kind != EventKind::Suppressed || !event.queue_id.is_empty() {
            return true;
        }
        let key = (event.tenant.clone(), event.recipient.to_ascii_lowercase());
        let now = event.at;
        let mut guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (seen, pruned) = &mut *guard;
        match seen.get(&key) {
            Some(&at) if now < at.saturating_add(REFUSAL_REPORT_EVERY) => return false,
            Some(_) => {}
            None if seen.len() >= MAX_REFUSALS => {
                if now < pruned.saturating_add(10) {
                    return false;
                }
                *pruned = now;
                seen.retain(|_, at| now < at.saturating_add(REFUSAL_REPORT_EVERY));
                if seen.len() >= MAX_REFUSALS {
                    return false;
                }
            }
            None => {}
        }
        seen.insert(key, now);
        true
    }
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

    /// `events` less each `suppressed` event without a message whose tenant and recipient had
    /// one in the last [`REFUSAL_REPORT_EVERY`] seconds. Cheap (a lock, no IO): called where a
    /// client's command makes such events, on the reactor, before [`Events::record_blocking`].
    pub fn fresh(&self, mut events: Vec<DeliveryEvent>) -> Vec<DeliveryEvent> {
        events.retain(|e| self.refusals.first(e));
        events
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Collect(Mutex<Vec<DeliveryEvent>>);

    impl EventSink for Collect {
        fn record_blocking(&self, events: &[DeliveryEvent]) {
            self.0.lock().unwrap().extend_from_slice(events);
        }
    }

    fn refused(tenant: &str, rcpt: &str, at: u64) -> DeliveryEvent {
        DeliveryEvent::suppressed(
            "u",
            tenant,
            rcpt,
            "550 gone".into(),
            at,
            None,
            BTreeMap::new(),
        )
    }

    #[test]
    fn a_repeated_refusal_makes_one_event_per_tenant_and_recipient() {
        let sink = Arc::new(Collect::default());
        let events = Events::default().with(sink.clone());
        let clone = events.clone();
        events.record_blocking(&events.fresh(vec![refused("a", "x@example.net", 100)]));
        // The same pair again, also through a clone and in another case: no event.
        clone.record_blocking(&clone.fresh(vec![refused("a", "X@Example.NET", 101)]));
        // Another tenant, another recipient: their own events; a queued message's event
        // always goes out.
        let mut queued = refused("a", "x@example.net", 102);
        queued.queue_id = "ABC".into();
        events.record_blocking(&events.fresh(vec![
            refused("b", "x@example.net", 102),
            refused("a", "y@example.net", 102),
            queued.clone(),
            queued,
        ]));
        // An hour later the pair is reported again.
        events.record_blocking(&events.fresh(vec![refused(
            "a",
            "x@example.net",
            100 + REFUSAL_REPORT_EVERY,
        )]));
        let got: Vec<(String, String, String)> = sink
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|e| (e.tenant.clone(), e.recipient.clone(), e.queue_id.clone()))
            .collect();
        let want = [
            ("a", "x@example.net", ""),
            ("b", "x@example.net", ""),
            ("a", "y@example.net", ""),
            ("a", "x@example.net", "ABC"),
            ("a", "x@example.net", "ABC"),
            ("a", "x@example.net", ""),
        ];
        let want: Vec<(String, String, String)> = want
            .iter()
            .map(|(t, r, q)| (t.to_string(), r.to_string(), q.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn the_memory_of_refusals_is_bounded() {
        let sink = Arc::new(Collect::default());
        let events = Events::default().with(sink.clone());
        for i in 0..MAX_REFUSALS + 5 {
            events.record_blocking(&events.fresh(vec![refused(
                "a",
                &format!("r{i}@example.net"),
                1000,
            )]));
        }
        assert_eq!(sink.0.lock().unwrap().len(), MAX_REFUSALS);
        assert_eq!(events.refusals.seen.lock().unwrap().0.len(), MAX_REFUSALS);
        // Once the old pairs age out, a new one is reported again.
        events.record_blocking(&events.fresh(vec![refused(
            "a",
            "new@example.net",
            1000 + REFUSAL_REPORT_EVERY,
        )]));
        assert_eq!(sink.0.lock().unwrap().len(), MAX_REFUSALS + 1);
        assert_eq!(events.refusals.seen.lock().unwrap().0.len(), 1);
    }
}
