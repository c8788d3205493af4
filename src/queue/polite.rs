//! Polite delivery: what the scheduler keeps per destination so that one destination cannot
//! take every delivery slot, and so that a destination that asks us to slow down is slowed as
//! a whole (Gmail's `421 4.7.28`, Outlook's `4.7.650`).
//!
//! A destination is the recipient domain in MX mode, and the smarthost as one destination in
//! smarthost mode (the scheduler groups recipients the same way, and the MX hosts are only
//! known inside the courier; see the README, "Polite delivery").
//!
//! - **Concurrency.** At most `limit` attempts run at once to a destination; `limit` starts at
//!   `relay.destination_concurrency`. A message whose destination is full is not attempted: the
//!   scheduler parks it and makes it due again when an attempt to that destination ends.
//! - **Rate.** With `relay.destination_rate` (transactions per minute) a token bucket holding
//!   one second's worth (at least one token) meters the attempts; a message that finds it empty
//!   is postponed to a slot of its own, slots spaced by the rate, so they do not all come back
//!   in the same second.
//! - **Throttling.** An attempt answered `421`, or a 4xx with one of [`THROTTLE_CODES`] (or
//!   `4.7.0` with rate words), halves the destination's concurrency (of what was running, at
//!   least 1) and holds it for `relay.throttle_backoff`, doubled on each further throttle up to
//!   `relay.throttle_backoff_max`. Only an attempt that started after the last throttle can
//!   throttle again: the attempts that were already running do not halve it twice. After each
//!   `limit` successful attempts the limit grows by one (additive increase) until it is back at
//!   the configured value, when the destination is forgotten.
//!
//! A postponed recipient is not attempted: no attempt is counted, its retry time does not
//! move, nothing is written to the spool. State is in memory only: a restart forgets holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::clock::unix_now;
use crate::config::PoliteSettings;

/// Enhanced status codes (RFC 3463) that mean "slow down", in a 4xx reply: Gmail's rate limit
/// (`4.7.28`), Outlook's (`4.7.650`, and `4.7.500` "server busy"), "system not accepting
/// network messages" (`4.3.2`). Any `421` counts as well.
pub const THROTTLE_CODES: [&str; 4] = ["4.7.28", "4.7.650", "4.7.500", "4.3.2"];

/// Words that make a `4.7.0` reply a throttle (it is also used for unrelated policy refusals).
const RATE_WORDS: [&str; 4] = ["rate", "too many", "throttl", "slow down"];

/// At most this many destinations are remembered as throttled; more throttles are logged
/// but not held (the table stays bounded whatever the next hops answer).
pub const MAX_THROTTLED: usize = 10_000;

/// How long a message parked behind a full destination waits at most before it is tried
/// again, should no attempt to that destination end first.
pub const PARK_FALLBACK: u64 = 30;

/// Why a destination cannot take an attempt now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// Its concurrency limit is reached: park until an attempt to it ends.
    Busy,
    /// Held (throttled) or rate-limited until this Unix second.
    Until(u64),
}

/// What an attempt's outcomes say about its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The destination asked us to slow down.
    Throttled,
    /// At least one recipient was delivered.
    Success,
    /// Neither (a refusal, a connection failure): no change.
    Other,
}

/// One destination's state as shown by `queue list` and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestState {
    pub destination: String,
    /// Attempts running now.
    pub in_flight: usize,
    /// The concurrency limit now.
    pub limit: usize,
    /// Held until this Unix second (throttled).
    pub held_until: Option<u64>,
}

impl DestState {
    /// Throttled: held, or its limit still below the configured one.
    pub fn throttled(&self, configured: usize) -> bool {
        self.held_until.is_some() || self.limit < configured
    }
}

#[derive(Debug)]
struct Dest {
    in_flight: usize,
    limit: usize,
    successes: usize,
    /// Consecutive throttles (reset by a success): the hold doubles with each.
    strikes: u32,
    held_until: Option<(Instant, u64)>,
    last_throttle: Option<Instant>,
    tokens: f64,
    refilled: Instant,
    /// The next free rate slot handed to a postponed message.
    next_slot: Instant,
}

/// The per-destination table, shared by the scheduler's tasks and the control socket.
#[derive(Debug)]
pub struct Destinations {
    settings: PoliteSettings,
    table: Mutex<HashMap<String, Dest>>,
    events: AtomicU64,
}

/// An attempt running to a destination; counted until dropped.
#[derive(Debug)]
pub struct Permit {
    owner: Arc<Destinations>,
    key: String,
    started: Instant,
}

impl Permit {
    /// The destination this attempt goes to.
    pub fn destination(&self) -> &str {
        &self.key
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut table = self.owner.lock();
        if let Some(d) = table.get_mut(&self.key) {
            d.in_flight = d.in_flight.saturating_sub(1);
            if self.owner.is_normal(d, now) {
                table.remove(&self.key);
            }
        }
    }
}

impl Destinations {
    /// An empty table with these limits.
    pub fn new(settings: PoliteSettings) -> Arc<Destinations> {
        Arc::new(Destinations {
            settings,
            table: Mutex::new(HashMap::new()),
            events: AtomicU64::new(0),
        })
    }

    /// The configured limits.
    pub fn settings(&self) -> &PoliteSettings {
        &self.settings
    }

    /// Throttle events so far.
    pub fn throttle_events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Dest>> {
        // A panic while holding the lock leaves consistent counts: keep going.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fresh(&self, now: Instant) -> Dest {
        Dest {
            in_flight: 0,
            limit: self.settings.concurrency,
            successes: 0,
            strikes: 0,
            held_until: None,
            last_throttle: None,
            tokens: self.capacity(),
            refilled: now,
            next_slot: now,
        }
    }

    /// Tokens per second, 0 when unlimited.
    fn rate(&self) -> f64 {
        f64::from(self.settings.rate_per_minute) / 60.0
    }

    /// One second's worth of tokens, at least one.
    fn capacity(&self) -> f64 {
        self.rate().max(1.0)
    }

    /// Nothing to remember: no attempt running, not throttled, the bucket full.
    fn is_normal(&self, d: &Dest, now: Instant) -> bool {
        let held = d.held_until.is_some_and(|(until, _)| until > now);
        let cooled = d.strikes == 0
            || d.last_throttle
                .is_none_or(|t| now.duration_since(t) > self.settings.backoff_max);
        d.in_flight == 0
            && !held
            && d.limit >= self.settings.concurrency
            && cooled
            && (self.settings.rate_per_minute == 0 || self.refill(d, now) >= self.capacity())
    }

    /// The bucket's level at `now` (not stored).
    fn refill(&self, d: &Dest, now: Instant) -> f64 {
        let elapsed = now.duration_since(d.refilled).as_secs_f64();
        (d.tokens + elapsed * self.rate()).min(self.capacity())
    }

    /// Start an attempt to `key`, or say how long to wait.
    pub fn try_start(self: &Arc<Self>, key: &str) -> Result<Permit, Wait> {
        let now = Instant::now();
        let mut table = self.lock();
        let d = table
            .entry(key.to_string())
            .or_insert_with(|| self.fresh(now));
        if let Some((until, unix)) = d.held_until {
            if until > now {
                // Never "now": the scheduler counts whole seconds.
                return Err(Wait::Until(unix.max(unix_now() + 1)));
            }
            d.held_until = None;
        }
        if d.in_flight >= d.limit {
            return Err(Wait::Busy);
        }
        if self.settings.rate_per_minute > 0 {
            d.tokens = self.refill(d, now);
            d.refilled = now;
            if d.tokens < 1.0 {
                let rate = self.rate();
                let ready = now + Duration::from_secs_f64((1.0 - d.tokens) / rate);
                let slot = ready.max(d.next_slot);
                d.next_slot = slot + Duration::from_secs_f64(1.0 / rate);
                let wait = slot.saturating_duration_since(now);
                return Err(Wait::Until(unix_after(wait).max(unix_now() + 1)));
            }
            d.tokens -= 1.0;
        }
        d.in_flight += 1;
        Ok(Permit {
            owner: self.clone(),
            key: key.to_string(),
            started: now,
        })
    }

    /// Room for more attempts to `key` now (0 while held).
    pub fn room(&self, key: &str) -> usize {
        let now = Instant::now();
        match self.lock().get(key) {
            None => self.settings.concurrency,
            Some(d) if d.held_until.is_some_and(|(until, _)| until > now) => 0,
            Some(d) => d.limit.saturating_sub(d.in_flight),
        }
    }

    /// The end of `key`'s hold (Unix seconds), while it is held.
    pub fn held_until(&self, key: &str) -> Option<u64> {
        let now = Instant::now();
        self.lock()
            .get(key)
            .and_then(|d| d.held_until)
            .filter(|(until, _)| *until > now)
            .map(|(_, unix)| unix)
    }

    /// What an attempt's outcomes said about its destination. Returns the new hold when this
    /// attempt throttled the destination.
    pub fn record(&self, permit: &Permit, verdict: Verdict) -> Option<(u64, usize)> {
        let now = Instant::now();
        let mut table = self.lock();
        let throttled = table
            .values()
            .filter(|d| d.held_until.is_some() || d.limit < self.settings.concurrency)
            .count();
        let d = table.get_mut(&permit.key)?;
        match verdict {
            Verdict::Other => None,
            // An attempt from before the last throttle says nothing about the rate now.
            Verdict::Success if d.last_throttle.is_some_and(|t| permit.started < t) => None,
            Verdict::Success => {
                d.strikes = 0;
                d.successes += 1;
                if d.limit < self.settings.concurrency && d.successes >= d.limit {
                    d.limit += 1;
                    d.successes = 0;
                }
                None
            }
            Verdict::Throttled => {
                // Attempts already running when the last throttle came do not count again.
                if d.last_throttle.is_some_and(|t| permit.started < t) {
                    return None;
                }
                if throttled >= MAX_THROTTLED && d.limit >= self.settings.concurrency {
                    tracing::warn!("polite: too many throttled destinations, not holding one more");
                    return None;
                }
                d.limit = (d.limit.min(d.in_flight) / 2).max(1);
                d.successes = 0;
                let factor = 1u32 << d.strikes.min(16);
                let hold = self
                    .settings
                    .backoff
                    .saturating_mul(factor)
                    .min(self.settings.backoff_max);
                d.strikes = d.strikes.saturating_add(1);
                let unix = unix_after(hold);
                d.held_until = Some((now + hold, unix));
                d.last_throttle = Some(now);
                self.events.fetch_add(1, Ordering::Relaxed);
                Some((unix, d.limit))
            }
        }
    }

    /// Destinations with attempts running or throttled, sorted by name; forgets the others.
    pub fn snapshot(&self) -> Vec<DestState> {
        let now = Instant::now();
        let mut table = self.lock();
        table.retain(|_, d| !self.is_normal(d, now));
        let mut out: Vec<DestState> = table
            .iter()
            .map(|(k, d)| DestState {
                destination: k.clone(),
                in_flight: d.in_flight,
                limit: d.limit,
                held_until: d
                    .held_until
                    .filter(|(until, _)| *until > now)
                    .map(|(_, unix)| unix),
            })
            .collect();
        out.sort_by(|a, b| a.destination.cmp(&b.destination));
        out
    }
}

/// The Unix second at or after `d` from now (rounded up: a hold never ends early).
fn unix_after(d: Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now + d).as_secs_f64().ceil() as u64
}

/// Whether a deferral's reply asks us to slow down: `421`, or a 4xx whose enhanced code is in
/// [`THROTTLE_CODES`], or `4.7.0` with rate words. The reply is as the courier wrote it
/// (`421 4.7.28 ...`, or with a prefix such as `MAIL FROM at HOST: `).
pub fn is_throttle(reply: &str) -> bool {
    let mut tokens = reply
        .split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | ':' | ',' | '['))
        .filter(|t| !t.is_empty());
    let Some(code) = tokens.find(|t| t.len() == 3 && t.bytes().all(|b| b.is_ascii_digit())) else {
        return false;
    };
    if code == "421" {
        return true;
    }
    if !code.starts_with('4') {
        return false;
    }
    let Some(enhanced) = tokens.next() else {
        return false;
    };
    if THROTTLE_CODES.contains(&enhanced) {
        return true;
    }
    if enhanced == "4.7.0" {
        let lower = reply.to_ascii_lowercase();
        return RATE_WORDS.iter().any(|w| lower.contains(w));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(concurrency: usize, rate: u32) -> PoliteSettings {
        PoliteSettings {
            concurrency,
            rate_per_minute: rate,
            backoff: Duration::from_secs(60),
            backoff_max: Duration::from_secs(1800),
        }
    }

    #[test]
    fn throttle_replies() {
        for yes in [
            "421 4.7.28 Our system has detected an unusual rate",
            "MAIL FROM at mx.example [127.0.0.1]:25: 421 4.7.0 Try again later",
            "451 4.7.650 The mail server has been temporarily rate limited",
            "451 4.7.500 Server busy",
            "450 4.3.2 System not accepting network messages",
            "450 4.7.0 Too many messages, slow down",
            "connection to mx [127.0.0.1]:25 failed: transient error (421): closing",
        ] {
            assert!(is_throttle(yes), "{yes}");
        }
        for no in [
            "451 4.3.0 queue write failed",
            "450 4.7.0 TLS required",
            "550 5.7.28 spam",
            "connection refused",
            "452 4.5.3 Too many recipients",
            "",
            "session with mx.421.example timed out",
        ] {
            assert!(!is_throttle(no), "{no}");
        }
    }

    #[test]
    fn concurrency_is_bounded_and_released() {
        let d = Destinations::new(settings(2, 0));
        let a = d.try_start("x.test").unwrap();
        let _b = d.try_start("x.test").unwrap();
        assert_eq!(d.try_start("x.test").unwrap_err(), Wait::Busy);
        assert!(
            d.try_start("y.test").is_ok(),
            "another destination is not held up"
        );
        assert_eq!(d.room("x.test"), 0);
        drop(a);
        assert_eq!(d.room("x.test"), 1);
        assert!(d.try_start("x.test").is_ok());
    }

    #[test]
    fn throttle_halves_holds_once_and_recovers() {
        let d = Destinations::new(settings(8, 0));
        let permits: Vec<Permit> = (0..6).map(|_| d.try_start("g.test").unwrap()).collect();
        let (until, limit) = d.record(&permits[0], Verdict::Throttled).unwrap();
        assert_eq!(limit, 3, "half of the six running");
        assert!(until >= unix_now() + 59);
        // The others were running already: no second halving.
        assert_eq!(d.record(&permits[1], Verdict::Throttled), None);
        assert!(matches!(d.try_start("g.test"), Err(Wait::Until(_))));
        assert_eq!(d.room("g.test"), 0);
        let snap = d.snapshot();
        assert_eq!(snap.len(), 1);
        assert!(snap[0].throttled(8));
        assert_eq!(d.throttle_events(), 1);
        drop(permits);
        // Held still: remembered with nothing running.
        assert_eq!(d.snapshot().len(), 1);
    }

    #[test]
    fn additive_increase_after_successes() {
        let d = Destinations::new(settings(4, 0));
        {
            let mut table = d.lock();
            let mut dest = d.fresh(Instant::now());
            dest.limit = 1;
            dest.strikes = 1;
            table.insert("o.test".into(), dest);
        }
        for expected in [2, 3, 4] {
            for _ in 0..expected - 1 {
                let p = d.try_start("o.test").unwrap();
                d.record(&p, Verdict::Success);
            }
            assert_eq!(d.room("o.test"), expected);
        }
        // Back to normal: forgotten.
        assert!(d.snapshot().is_empty());
    }

    #[test]
    fn rate_spreads_slots() {
        let d = Destinations::new(settings(10, 60));
        let first = d.try_start("r.test").unwrap();
        drop(first);
        let now = unix_now();
        let mut slots = Vec::new();
        for _ in 0..3 {
            match d.try_start("r.test") {
                Err(Wait::Until(t)) => slots.push(t),
                other => panic!("{other:?}"),
            }
        }
        assert!(slots[0] >= now && slots[0] <= now + 2, "{slots:?}");
        assert!(
            slots[2] >= slots[0] + 2,
            "slots are spaced by the rate: {slots:?}"
        );
    }
}
