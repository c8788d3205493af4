//! Per-user sending limits and automatic suspension.
//!
//! - Messages and recipients per user per hour and per day, from `[limits] user_*` with
//!   per-user overrides in the users file (`messages_per_hour` etc. on `[[user]]`); 0 means
//!   unlimited. Only accepted messages count (after `250 queued`), with the recipients they
//!   were queued for.
//! - MAIL FROM when the user's messages are used up: `450 4.7.1 Message rate limit exceeded
//!   for user LOGIN, try again later`. A RCPT that would take the user's recipients over:
//!   `450 4.7.1 Recipient rate limit exceeded for user LOGIN, try again later`; the
//!   recipients accepted before it stay, and the message can still be sent to them.
//! - Sessions check before the message is queued and count after, so two sessions of one user
//!   racing can go over by the messages in flight: a soft limit, never a lost message.
//! - Windows slide in steps (an hour by the minute, a day by the hour; see
//!   [`Buckets`]). Counters are in memory: a restart resets them.
//! - `suspend_recipients_per_hour` (0 = off): when a user's accepted recipients in the last
//!   hour reach it, the account is suspended ([`suspend`](super::suspend)), persisted, and
//!   logged with `tracing::error!`. The message that crossed the line was already queued and
//!   stays queued (`submitd queue list` shows it with the user's login). The count that
//!   triggers a suspension restarts after it, so `submitd user unsuspend` really lifts it.
//! - With a shared store (`[state] backend = "redis"`), a message is admitted once more when
//!   it is about to be stored ([`Quota::admit`]): its message and recipients are added to the
//!   user's windows in the store atomically, all or nothing, within the limits, in one round
//!   trip, so N replicas enforce one limit exactly (a message over it gets `450 4.7.1` after
//!   its data). A failed write takes the counts back. MAIL and RCPT still check early against
//!   this process's own counters; when the store does not answer, those decide.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::suspend::{Suspension, Suspensions};
use super::users::{SendOverrides, User};
use super::window::{BoundedMap, Buckets};
use crate::state::{Count, Shared, Stamp, Window};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
/// Users tracked at most (a users file larger than this loses the oldest idle counters).
const MAX_USERS: usize = 100_000;

pub use crate::config::SendLimits;

/// `defaults` with a user's overrides applied.
fn for_user(defaults: &SendLimits, o: &SendOverrides) -> SendLimits {
    SendLimits {
        messages_per_hour: o.messages_per_hour.unwrap_or(defaults.messages_per_hour),
        messages_per_day: o.messages_per_day.unwrap_or(defaults.messages_per_day),
        recipients_per_hour: o
            .recipients_per_hour
            .unwrap_or(defaults.recipients_per_hour),
        recipients_per_day: o.recipients_per_day.unwrap_or(defaults.recipients_per_day),
        suspend_recipients_per_hour: o
            .suspend_recipients_per_hour
            .unwrap_or(defaults.suspend_recipients_per_hour),
    }
}

/// Why a MAIL or RCPT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `550 5.7.1 Account suspended, contact the administrator`.
    Suspended,
    /// `450 4.7.1 Message rate limit exceeded ...`.
    Messages,
    /// `450 4.7.1 Recipient rate limit exceeded ...`.
    Recipients,
}

/// One user's counters.
struct Usage {
    messages_hour: Buckets,
    messages_day: Buckets,
    recipients_hour: Buckets,
    recipients_day: Buckets,
    /// Recipients in the last hour toward suspension; cleared when the user is suspended.
    suspicion: Buckets,
}

impl Usage {
    /// Count one queued message to `recipients` in the message and recipient windows (not
    /// toward suspension); the recipients as counted.
    fn count(u: &mut Usage, recipients: usize, now_ms: u64) -> u32 {
        let rcpts = u32::try_from(recipients).unwrap_or(u32::MAX);
        u.messages_hour.add(now_ms, 1);
        u.messages_day.add(now_ms, 1);
        u.recipients_hour.add(now_ms, rcpts);
        u.recipients_day.add(now_ms, rcpts);
        rcpts
    }

    fn new() -> Usage {
        Usage {
            messages_hour: Buckets::new(HOUR, 60),
            messages_day: Buckets::new(DAY, 24),
            recipients_hour: Buckets::new(HOUR, 60),
            recipients_day: Buckets::new(DAY, 24),
            suspicion: Buckets::new(HOUR, 60),
        }
    }
}

/// Over `limit` (0 = unlimited) once `used + adding` is counted.
fn exceeds(used: u32, adding: u32, limit: u32) -> bool {
    limit > 0 && used.saturating_add(adding) > limit
}

/// What [`Quota::record`] did beyond counting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    Counted,
    /// The user just crossed the suspension threshold; the reason to persist.
    Suspend {
        reason: String,
    },
}

/// The sending counters and suspensions shared by every session of a server. Checks are
/// memory only (the state machine calls them); recording a suspension writes a file.
pub struct Quota {
    defaults: SendLimits,
    origin: Instant,
    usage: Mutex<BoundedMap<String, Usage>>,
    suspensions: Arc<Suspensions>,
    /// The store every replica counts in, when `[state] backend = "redis"`.
    shared: Option<Arc<Shared>>,
}

/// A message admitted in the shared store: its counts, taken back if it is not stored.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    stamp: Stamp,
}

const HOUR_WINDOW: Window = Window {
    len: HOUR,
    buckets: 60,
};
const DAY_WINDOW: Window = Window {
    len: DAY,
    buckets: 24,
};

impl Quota {
    /// Counters with `defaults` for users without overrides, suspensions in `suspensions`.
    pub fn new(defaults: SendLimits, suspensions: Arc<Suspensions>) -> Quota {
        Quota {
            defaults,
            origin: Instant::now(),
            usage: Mutex::new(BoundedMap::new(MAX_USERS, DAY)),
            suspensions,
            shared: None,
        }
    }

    /// Count in `shared` as well, which decides while it answers.
    pub fn with_shared(mut self, shared: Option<Arc<Shared>>) -> Quota {
        self.shared = shared;
        self
    }

    /// The store's keys of `login`'s windows.
    fn keys(login: &str) -> [String; 5] {
        [
            "messages_hour",
            "messages_day",
            "recipients_hour",
            "recipients_day",
            "suspicion",
        ]
        .map(|w| format!("quota:{w}:{login}"))
    }

    /// One message to `recipients` in the store's four windows of a user (`keys`), within
    /// `limits` when given (without: taking the counts back).
    fn message_counts<'a>(
        keys: &'a [String; 5],
        recipients: usize,
        limits: Option<&SendLimits>,
    ) -> [Count<'a>; 4] {
        let rcpts = recipients as u64;
        let limit = |f: fn(&SendLimits) -> u32| limits.map_or(0, |l| u64::from(f(l)));
        [
            (0, HOUR_WINDOW, 1, limit(|l| l.messages_per_hour)),
            (1, DAY_WINDOW, 1, limit(|l| l.messages_per_day)),
            (2, HOUR_WINDOW, rcpts, limit(|l| l.recipients_per_hour)),
            (3, DAY_WINDOW, rcpts, limit(|l| l.recipients_per_day)),
        ]
        .map(|(i, window, amount, limit)| Count {
            key: &keys[i],
            window,
            amount,
            limit,
        })
    }

    /// A message of `user` to `recipients` is about to be stored: with a shared store, add it
    /// to the user's windows there, atomically within the limits (`Err` when over: nothing
    /// added). `Ok(None)` without a store, or when it does not answer (MAIL and RCPT already
    /// checked this process's counters).
    pub async fn admit(
        &self,
        user: &User,
        recipients: usize,
    ) -> Result<Option<Admission>, Refusal> {
        let Some(shared) = &self.shared else {
            return Ok(None);
        };
        let limits = for_user(&self.defaults, &user.limits);
        let keys = Quota::keys(&user.login);
        let counts = Quota::message_counts(&keys, recipients, Some(&limits));
        match shared.answered(shared.store().add_within(&counts).await) {
            Some(Ok(stamp)) => Ok(Some(Admission { stamp })),
            Some(Err(over)) if over < 2 => Err(Refusal::Messages),
            Some(Err(_)) => Err(Refusal::Recipients),
            None => Ok(None),
        }
    }

    /// The admitted message was not stored: take its counts back from the store.
    pub async fn release(&self, user: &User, recipients: usize, admission: Admission) {
        let Some(shared) = &self.shared else {
            return;
        };
        let keys = Quota::keys(&user.login);
        let counts = Quota::message_counts(&keys, recipients, None);
        shared.answered(shared.store().take_back(&counts, admission.stamp).await);
    }

    /// After a message admitted in the shared store was stored: count its recipients toward
    /// suspension there; the threshold crossed, suspend the user in the store (and here at
    /// once). `None` when the store does not answer (then this process decides).
    async fn suspicion_shared(&self, user: &User, recipients: usize) -> Option<()> {
        let shared = self.shared.as_ref()?;
        let limits = for_user(&self.defaults, &user.limits);
        let threshold = u64::from(limits.suspend_recipients_per_hour);
        if threshold == 0 {
            return Some(());
        }
        let keys = Quota::keys(&user.login);
        let count = [Count {
            key: &keys[4],
            window: HOUR_WINDOW,
            amount: recipients as u64,
            limit: 0,
        }];
        let (_, totals) = shared.answered(shared.store().add(&count).await)?;
        let seen = totals.first().copied().unwrap_or(0);
        if seen < threshold {
            return Some(());
        }
        let reason = format!(
            "{seen} recipients in the last hour across the replicas (threshold {threshold})"
        );
        tracing::error!(user = %crate::logsafe::Escaped(&user.login), recipients_last_hour = seen, threshold,
            "user looks compromised: suspending the account on every replica");
        let suspension = Suspension {
            since: crate::clock::unix_now(),
            reason: reason.clone(),
        };
        self.suspensions
            .mark_shared(&user.login, suspension.clone());
        let stored = crate::state::StoredSuspension {
            since: suspension.since,
            reason,
        };
        shared.answered(shared.store().suspend(&user.login, &stored).await)?;
        shared.answered(shared.store().clear(&[keys[4].as_str()]).await)
    }

    /// The suspensions this quota consults.
    pub fn suspensions(&self) -> &Arc<Suspensions> {
        &self.suspensions
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn usage(&self) -> std::sync::MutexGuard<'_, BoundedMap<String, Usage>> {
        self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// MAIL FROM: may `user` start another message?
    pub fn check_mail(&self, user: &User) -> Result<(), Refusal> {
        self.check_mail_at(user, self.now_ms())
    }

    /// RCPT TO: may `user` add one more recipient to a message that has `pending` so far?
    pub fn check_rcpt(&self, user: &User, pending: usize) -> Result<(), Refusal> {
        self.check_rcpt_at(user, pending, self.now_ms())
    }

    /// A message of `user` to `recipients` was queued: count it; suspend when it crossed the
    /// threshold (memory at once; the caller persists with [`Quota::persist_suspension`]).
    pub fn record(&self, user: &User, recipients: usize) -> Recorded {
        self.record_at(user, recipients, self.now_ms())
    }

    /// A message of `user` to `recipients` was queued: [`Quota::record`] it, and write a
    /// suspension it caused to the state file before returning (on the blocking pool).
    pub async fn queued(self: &Arc<Self>, user: &User, recipients: usize) {
        if self.shared.is_some() {
            // This process's counters mirror the store's (the early MAIL and RCPT checks, and
            // the fallback); suspicion is counted in the store.
            let now_ms = self.now_ms();
            if self.suspicion_shared(user, recipients).await.is_some() {
                self.count_at(user, recipients, now_ms);
                return;
            }
        }
        if let Recorded::Suspend { reason } = self.record(user, recipients) {
            let quota = Arc::clone(self);
            let login = user.login.clone();
            let write = move || quota.persist_suspension(&login, &reason);
            if let Err(e) = tokio::task::spawn_blocking(write).await {
                tracing::error!(error = %e, "suspension write task failed");
            }
        }
    }

    /// Write a suspension to the state file (blocking IO: call it off the reactor).
    pub fn persist_suspension(&self, login: &str, reason: &str) {
        if let Err(e) = self.suspensions.suspend(login, reason) {
            tracing::error!(user = %crate::logsafe::Escaped(login), reason = %crate::logsafe::Escaped(&reason), error = %e,
                "account suspended in memory only: cannot write the suspension state");
        }
    }

    fn check_mail_at(&self, user: &User, now_ms: u64) -> Result<(), Refusal> {
        // An API key is suspended with its owner: the owner's suspension reaches every key.
        let owner_suspended = user
            .owner
            .as_deref()
            .is_some_and(|owner| self.suspensions.is_suspended(owner));
        if owner_suspended || self.suspensions.is_suspended(&user.login) {
            return Err(Refusal::Suspended);
        }
        let limits = for_user(&self.defaults, &user.limits);
        let mut usage = self.usage();
        let Some(u) = usage.get_mut(&user.login) else {
            return Ok(());
        };
        if exceeds(u.messages_hour.total(now_ms), 1, limits.messages_per_hour)
            || exceeds(u.messages_day.total(now_ms), 1, limits.messages_per_day)
        {
            return Err(Refusal::Messages);
        }
        Ok(())
    }

    fn check_rcpt_at(&self, user: &User, pending: usize, now_ms: u64) -> Result<(), Refusal> {
        let limits = for_user(&self.defaults, &user.limits);
        let adding = u32::try_from(pending).unwrap_or(u32::MAX).saturating_add(1);
        let mut usage = self.usage();
        let (hour, day) = match usage.get_mut(&user.login) {
            Some(u) => (
                u.recipients_hour.total(now_ms),
                u.recipients_day.total(now_ms),
            ),
            None => (0, 0),
        };
        if exceeds(hour, adding, limits.recipients_per_hour)
            || exceeds(day, adding, limits.recipients_per_day)
        {
            return Err(Refusal::Recipients);
        }
        Ok(())
    }

    /// Count a queued message in this process without the suspension check.
    fn count_at(&self, user: &User, recipients: usize, now_ms: u64) {
        let mut usage = self.usage();
        Usage::count(
            usage.touch(&user.login, now_ms, Usage::new),
            recipients,
            now_ms,
        );
    }

    fn record_at(&self, user: &User, recipients: usize, now_ms: u64) -> Recorded {
        let limits = for_user(&self.defaults, &user.limits);
        let mut usage = self.usage();
        let u = usage.touch(&user.login, now_ms, Usage::new);
        let rcpts = Usage::count(u, recipients, now_ms);
        u.suspicion.add(now_ms, rcpts);
        let threshold = limits.suspend_recipients_per_hour;
        let seen = u.suspicion.total(now_ms);
        if threshold == 0 || seen < threshold {
            return Recorded::Counted;
        }
        u.suspicion.clear();
        let messages = u.messages_hour.total(now_ms);
        drop(usage);
        let reason = format!(
            "{seen} recipients in the last hour (threshold {threshold}), {messages} messages"
        );
        tracing::error!(user = %crate::logsafe::Escaped(&user.login), recipients_last_hour = seen, threshold,
            messages_last_hour = messages, "user looks compromised: suspending the account");
        // Refuse at once, even before the file is written.
        self.suspensions.mark(&user.login, &reason);
        Recorded::Suspend { reason }
    }
}

impl std::fmt::Debug for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quota")
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::senders::SenderPattern;

    const MIN: u64 = 60_000;

    fn user(login: &str, limits: SendOverrides) -> User {
        User {
            login: login.into(),
            password: String::new(),
            senders: vec![SenderPattern::parse(login).unwrap()],
            senders_given: true,
            limits,
            owner: None,
        }
    }

    fn quota(defaults: SendLimits) -> Quota {
        Quota::new(defaults, Arc::new(Suspensions::in_memory()))
    }

    #[test]
    fn messages_per_hour_then_the_hour_slides() {
        let q = quota(SendLimits {
            messages_per_hour: 2,
            ..SendLimits::UNLIMITED
        });
        let alice = user("alice@x.test", SendOverrides::default());
        let bob = user("bob@x.test", SendOverrides::default());
        for t in 0..2 {
            assert_eq!(q.check_mail_at(&alice, t), Ok(()));
            assert_eq!(q.record_at(&alice, 1, t), Recorded::Counted);
        }
        assert_eq!(q.check_mail_at(&alice, 5), Err(Refusal::Messages));
        assert_eq!(q.check_mail_at(&bob, 5), Ok(()), "per user");
        assert_eq!(q.check_mail_at(&alice, 60 * MIN), Ok(()), "an hour later");
    }

    #[test]
    fn per_day_and_overrides() {
        let q = quota(SendLimits {
            messages_per_day: 3,
            recipients_per_day: 100,
            ..SendLimits::UNLIMITED
        });
        let vip = user(
            "vip@x.test",
            SendOverrides {
                messages_per_day: Some(0),
                recipients_per_hour: Some(5),
                ..SendOverrides::default()
            },
        );
        let alice = user("alice@x.test", SendOverrides::default());
        for h in 0..3 {
            q.record_at(&alice, 1, h * 60 * MIN);
            q.record_at(&vip, 1, h * 60 * MIN);
        }
        assert_eq!(
            q.check_mail_at(&alice, 5 * 60 * MIN),
            Err(Refusal::Messages)
        );
        assert_eq!(q.check_mail_at(&vip, 5 * 60 * MIN), Ok(()), "0 = unlimited");
        assert_eq!(
            q.check_mail_at(&alice, 25 * 60 * MIN),
            Ok(()),
            "a day later"
        );
        // vip: 5 recipients an hour, 1 already used in hour 2.
        let t = 2 * 60 * MIN + 1;
        assert_eq!(q.check_rcpt_at(&vip, 3, t), Ok(()));
        assert_eq!(q.check_rcpt_at(&vip, 4, t), Err(Refusal::Recipients));
    }

    #[test]
    fn recipients_count_the_pending_ones() {
        let q = quota(SendLimits {
            recipients_per_hour: 3,
            ..SendLimits::UNLIMITED
        });
        let alice = user("alice@x.test", SendOverrides::default());
        assert_eq!(q.check_rcpt_at(&alice, 2, 0), Ok(()), "the 3rd");
        assert_eq!(q.check_rcpt_at(&alice, 3, 0), Err(Refusal::Recipients));
        q.record_at(&alice, 2, 0);
        assert_eq!(q.check_rcpt_at(&alice, 0, 1), Ok(()));
        assert_eq!(q.check_rcpt_at(&alice, 1, 1), Err(Refusal::Recipients));
        assert_eq!(q.check_mail_at(&alice, 1), Ok(()), "messages unlimited");
    }

    #[test]
    fn suspension_threshold_suspends_once_and_restarts_the_count() {
        let q = quota(SendLimits {
            suspend_recipients_per_hour: 5,
            ..SendLimits::UNLIMITED
        });
        let alice = user("alice@x.test", SendOverrides::default());
        assert_eq!(q.record_at(&alice, 4, 0), Recorded::Counted);
        let Recorded::Suspend { reason } = q.record_at(&alice, 1, 1) else {
            panic!("not suspended");
        };
        assert!(reason.contains("5 recipients"), "{reason}");
        assert_eq!(q.check_mail_at(&alice, 2), Err(Refusal::Suspended));
        // The administrator lifts it: sending resumes and a new count starts.
        q.suspensions().lift(&alice.login);
        assert_eq!(q.check_mail_at(&alice, 3), Ok(()));
        assert_eq!(q.record_at(&alice, 4, 4), Recorded::Counted);
        // A per-user override switches it off.
        let trusted = user(
            "list@x.test",
            SendOverrides {
                suspend_recipients_per_hour: Some(0),
                ..SendOverrides::default()
            },
        );
        assert_eq!(q.record_at(&trusted, 1000, 5), Recorded::Counted);
    }
}
