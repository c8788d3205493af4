//! The queue scheduler: which message is due, how many deliveries run at once, and what an
//! attempt's outcomes do to the queue.
//!
//! - On start, and every [`SCAN_INTERVAL`] after, the queue directory is scanned; an envelope
//!   that is new or whose modification time changed (a `queue retry` from the command line) is
//!   re-read. A message just accepted is announced through [`QueueHandle::notify`] and tried
//!   at once.
//! - A due message (a recipient `pending`, or `deferred` with its next attempt in the past) is
//!   delivered by a task; at most `queue.concurrency` run at once. Its due recipients are
//!   grouped by destination domain (one connection, several RCPTs), or all together for the
//!   smarthost.
//! - After the attempt, under the message's lock, the envelope is re-read and each recipient's
//!   state saved atomically: delivered, failed, or deferred with the next attempt from
//!   `queue.retry` (then every last interval) until `queue.max_age`, when it fails as expired
//!   (`4.4.7`). Failed recipients get one DSN to the envelope sender, written to the spool
//!   *before* the state is saved (a crash in between repeats the DSN; it never loses it). A
//!   message from `<>` is never bounced. The message is removed when no recipient is pending.
//! - A held message (`queue hold`, [`Envelope::held`]) is never due: the scan gives it no due
//!   time, and an attempt re-reads the envelope and stops when it finds it held. Only an attempt
//!   already past that check when the hold is written goes on. A held message does not expire:
//!   `max_age` is checked on a deferral, and a held message has no attempts.
//!
//! Delivery is at-least-once: a crash after the remote 250 but before the state is saved sends
//! that recipient again on restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{RelayMode, Settings};
use crate::delivery::dsn::{self, FailedRecipient};
use crate::delivery::{Delivery, Job, Outcome};
use crate::metrics::Metrics;

use super::id::QueueId;
use super::spool::{self, Envelope, Recipient, RecipientState, Spool, SpoolError};

/// How often the queue directory is rescanned for new and changed envelopes.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// How long shutdown lets running deliveries finish.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(30);
/// The `user` recorded on bounces.
pub const MAILER_DAEMON: &str = "MAILER-DAEMON";

/// Announces newly queued messages to the scheduler.
#[derive(Clone, Debug)]
pub struct QueueHandle {
    tx: mpsc::Sender<QueueId>,
}

impl QueueHandle {
    /// Ask for an immediate attempt. Never blocks: if the channel is full, the next directory
    /// scan finds the message anyway.
    pub fn notify(&self, id: QueueId) {
        let _ = self.tx.try_send(id);
    }
}

/// What the scheduler knows about one queued message.
#[derive(Debug)]
struct Tracked {
    /// Unix seconds when the next attempt is due; `None` when nothing is left to do.
    due: Option<u64>,
    /// The envelope's modification time when it was last read.
    mtime: Option<SystemTime>,
    running: bool,
    /// When the message arrived and how many recipients are still to deliver (metrics).
    received_at: Option<u64>,
    open: usize,
}

/// The scheduler's shared parts.
struct Shared {
    spool: Spool,
    delivery: Delivery,
    hostname: String,
    mode: RelayMode,
    retry: Vec<Duration>,
    max_age: Duration,
    connections: Semaphore,
    metrics: Arc<Metrics>,
}

/// A scheduler ready to run; made before the listeners so sessions can hold its handle.
pub struct Scheduler {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<QueueId>,
    tx: mpsc::Sender<QueueId>,
    concurrency: usize,
}

impl Scheduler {
    /// The scheduler and the handle sessions use to announce new messages.
    pub fn new(
        settings: &Settings,
        spool: Spool,
        delivery: Delivery,
        metrics: Arc<Metrics>,
    ) -> (QueueHandle, Scheduler) {
        let (tx, rx) = mpsc::channel(4096);
        let shared = Arc::new(Shared {
            spool,
            delivery,
            hostname: settings.hostname.clone(),
            mode: settings.relay.mode,
            retry: settings.queue.retry.clone(),
            max_age: settings.queue.max_age,
            connections: Semaphore::new(settings.queue.concurrency),
            metrics,
        });
        let handle = QueueHandle { tx: tx.clone() };
        let scheduler = Scheduler {
            shared,
            rx,
            tx,
            concurrency: settings.queue.concurrency,
        };
        (handle, scheduler)
    }

    /// Run until `shutdown` is cancelled, then let running deliveries finish within
    /// [`DRAIN_DEADLINE`].
    pub async fn run(self, shutdown: CancellationToken) {
        run(self.shared, self.rx, self.tx, self.concurrency, shutdown).await
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<QueueId>,
    tx: mpsc::Sender<QueueId>,
    concurrency: usize,
    shutdown: CancellationToken,
) {
    let mut tracked: HashMap<QueueId, Tracked> = HashMap::new();
    let mut running: JoinSet<QueueId> = JoinSet::new();
    let mut next_scan = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_scan {
            scan(&shared, &mut tracked).await;
            queue_metrics(&shared.metrics, &tracked);
            next_scan = tokio::time::Instant::now() + SCAN_INTERVAL;
        }
        // Start what is due, oldest due first, up to the concurrency limit.
        let now = unix_now();
        let mut due: Vec<(u64, QueueId)> = tracked
            .iter()
            .filter(|(_, t)| !t.running && t.due.is_some_and(|d| d <= now))
            .map(|(id, t)| (t.due.unwrap_or(0), id.clone()))
            .collect();
        due.sort();
        for (_, id) in due
            .into_iter()
            .take(concurrency.saturating_sub(running.len()))
        {
            if let Some(t) = tracked.get_mut(&id) {
                t.running = true;
            }
            let shared = shared.clone();
            let tx = tx.clone();
            running.spawn(async move {
                for bounce in attempt(&shared, &id).await {
                    let _ = tx.try_send(bounce);
                }
                id
            });
        }
        tokio::select! {
            Some(id) = rx.recv() => {
                tracked.entry(id).or_insert(Tracked {
                    due: Some(0),
                    mtime: None,
                    running: false,
                    received_at: Some(unix_now()),
                    open: 0,
                });
            }
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok(id) = done
                    && let Some(t) = tracked.get_mut(&id)
                {
                    // Re-read the envelope at the next scan: the attempt changed it.
                    t.running = false;
                    t.mtime = None;
                    t.due = None;
                    next_scan = tokio::time::Instant::now();
                }
            }
            _ = tokio::time::sleep_until(next_scan) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    info!(
        running = running.len(),
        "queue: stopping, letting running deliveries finish"
    );
    let drain = async { while running.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_DEADLINE, drain).await.is_err() {
        warn!("queue: deliveries still running at the shutdown deadline; they will be retried");
        running.abort_all();
    }
}

/// Rescan the queue directory: pick up new and changed envelopes, forget removed ones.
async fn scan(shared: &Arc<Shared>, tracked: &mut HashMap<QueueId, Tracked>) {
    let spool = shared.spool.clone();
    let known: HashMap<QueueId, Option<SystemTime>> = tracked
        .iter()
        .filter(|(_, t)| !t.running)
        .map(|(id, t)| (id.clone(), t.mtime))
        .collect();
    let listing = tokio::task::spawn_blocking(move || scan_blocking(&spool, &known)).await;
    let Ok(Ok((present, changed))) = listing else {
        warn!("queue: cannot scan the queue directory");
        return;
    };
    tracked.retain(|id, t| t.running || present.contains_key(id));
    for (id, mtime, seen) in changed {
        let t = tracked.entry(id).or_insert(Tracked {
            due: None,
            mtime: None,
            running: false,
            received_at: None,
            open: 0,
        });
        if !t.running {
            t.mtime = Some(mtime);
            t.due = seen.due;
            t.received_at = seen.received_at;
            t.open = seen.open;
        }
    }
}

/// The queue gauges from what the scheduler tracks (no disk access).
fn queue_metrics(metrics: &Metrics, tracked: &HashMap<QueueId, Tracked>) {
    let open = tracked.values().map(|t| t.open).sum();
    let oldest = tracked.values().filter_map(|t| t.received_at).min();
    metrics.queue(tracked.len(), open, oldest);
}

/// What a scan read from one envelope.
struct Seen {
    due: Option<u64>,
    received_at: Option<u64>,
    /// Recipients pending or deferred.
    open: usize,
}

type ScanResult = (
    HashMap<QueueId, SystemTime>,
    Vec<(QueueId, SystemTime, Seen)>,
);

fn scan_blocking(
    spool: &Spool,
    known: &HashMap<QueueId, Option<SystemTime>>,
) -> Result<ScanResult, SpoolError> {
    let mut present = HashMap::new();
    let mut changed = Vec::new();
    for id in spool.list()? {
        let Ok(meta) = std::fs::metadata(spool.envelope_path(&id)) else {
            continue;
        };
        let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
        present.insert(id.clone(), mtime);
        if known.get(&id).is_some_and(|m| *m == Some(mtime)) {
            continue;
        }
        match spool.load_envelope(&id) {
            Ok(env) => {
                let open = env
                    .recipients
                    .iter()
                    .filter(|r| {
                        matches!(r.state, RecipientState::Pending | RecipientState::Deferred)
                    })
                    .count();
                let seen = Seen {
                    due: env.attempt_due(),
                    received_at: Some(env.received_at),
                    open,
                };
                changed.push((id, mtime, seen));
            }
            Err(e) => {
                warn!(queue_id = %id, error = %e, "queue: unreadable envelope skipped");
                let seen = Seen {
                    due: None,
                    received_at: None,
                    open: 0,
                };
                changed.push((id, mtime, seen));
            }
        }
    }
    Ok((present, changed))
}

/// The domain of an address (after the last `@`), lowercased for grouping.
fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_lowercase())
        .unwrap_or_default()
}

/// One delivery attempt of one message; returns the IDs of bounces it queued.
async fn attempt(shared: &Arc<Shared>, id: &QueueId) -> Vec<QueueId> {
    let spool = shared.spool.clone();
    let loaded = {
        let id = id.clone();
        tokio::task::spawn_blocking(move || {
            Ok::<_, SpoolError>((spool.load_envelope(&id)?, spool.load_message(&id)?))
        })
        .await
    };
    let (env, message) = match loaded {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            // Deleted meanwhile (`queue delete`), or unreadable: nothing to do now.
            info!(queue_id = %id, error = %e, "queue: message not loaded");
            return Vec::new();
        }
        Err(e) => {
            warn!(queue_id = %id, error = %e, "queue: load task failed");
            return Vec::new();
        }
    };
    // Re-read just now: a `queue hold` since the last scan wins over the scan's due time.
    if env.held {
        info!(queue_id = %id, "queue: message on hold, not attempted");
        return Vec::new();
    }
    let now = unix_now();
    let due: Vec<String> = env
        .recipients
        .iter()
        .filter(|r| match r.state {
            RecipientState::Pending => true,
            RecipientState::Deferred => r.next_attempt.unwrap_or(0) <= now,
            _ => false,
        })
        .map(|r| r.address.clone())
        .collect();
    if due.is_empty() {
        return finish(shared, id, Vec::new()).await;
    }
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for rcpt in due {
        let key = match shared.mode {
            RelayMode::Smarthost => String::new(),
            RelayMode::Mx => domain_of(&rcpt),
        };
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(rcpt),
            None => groups.push((key, vec![rcpt])),
        }
    }
    let message = Arc::new(message);
    let env = Arc::new(env);
    let mut tasks = JoinSet::new();
    for (_, rcpts) in groups {
        let shared = shared.clone();
        let message = message.clone();
        let env = env.clone();
        let id = id.clone();
        tasks.spawn(async move {
            let _permit = shared.connections.acquire().await;
            let domain = rcpts.first().map(|r| domain_of(r)).unwrap_or_default();
            let started = std::time::Instant::now();
            let job = Job {
                queue_id: id.as_str(),
                sender: &env.sender,
                recipients: &rcpts,
                domain: &domain,
                message: &message,
                smtputf8: env.smtputf8,
                eight_bit: env.eight_bit,
            };
            let outcomes = shared.delivery.attempt(&job).await;
            shared.metrics.delivery_attempt(started.elapsed());
            outcomes
        });
    }
    let mut outcomes = Vec::new();
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(list) => outcomes.extend(list),
            Err(e) => warn!(queue_id = %id, error = %e, "queue: delivery task failed"),
        }
    }
    finish(shared, id, outcomes).await
}

/// Apply outcomes to the envelope under the message's lock; queue the DSN; remove the message
/// when nothing is left. Returns the IDs of bounces queued.
async fn finish(
    shared: &Arc<Shared>,
    id: &QueueId,
    outcomes: Vec<(String, Outcome)>,
) -> Vec<QueueId> {
    let shared2 = shared.clone();
    let id2 = id.clone();
    match tokio::task::spawn_blocking(move || apply_blocking(&shared2, &id2, outcomes)).await {
        Ok(Ok(bounces)) => bounces,
        Ok(Err(e)) => {
            warn!(queue_id = %id, error = %e, "queue: cannot save delivery state; will retry");
            Vec::new()
        }
        Err(e) => {
            warn!(queue_id = %id, error = %e, "queue: state task failed");
            Vec::new()
        }
    }
}

fn apply_blocking(
    shared: &Shared,
    id: &QueueId,
    outcomes: Vec<(String, Outcome)>,
) -> Result<Vec<QueueId>, SpoolError> {
    let spool = &shared.spool;
    let lock = match spool.lock(id) {
        Ok(lock) => lock,
        // Deleted while we were delivering (`queue delete`).
        Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let mut env = match spool.load_envelope(id) {
        Ok(env) => env,
        Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let now = unix_now();
    let age = now.saturating_sub(env.received_at);
    let expired = age >= shared.max_age.as_secs();
    let mut failed = Vec::new();
    for (address, outcome) in outcomes {
        let Some(r) = env.recipients.iter_mut().find(|r| {
            r.address == address
                && matches!(r.state, RecipientState::Pending | RecipientState::Deferred)
        }) else {
            continue;
        };
        r.attempts += 1;
        let (status, relay, reply) = match outcome {
            Outcome::Delivered { host, reply } => {
                set(r, RecipientState::Delivered, None, &reply);
                ("sent", Some(host), reply)
            }
            Outcome::Failed {
                host,
                reply,
                status,
            } => {
                set(r, RecipientState::Failed, None, &reply);
                failed.push(FailedRecipient {
                    address: address.clone(),
                    status,
                    diagnostic: reply.clone(),
                    remote_mta: host.clone(),
                });
                ("bounced", host, reply)
            }
            Outcome::Deferred { host, reply } if expired => {
                set(r, RecipientState::Failed, None, &reply);
                failed.push(FailedRecipient {
                    address: address.clone(),
                    status: "4.4.7".into(),
                    diagnostic: reply.clone(),
                    remote_mta: host.clone(),
                });
                ("expired", host, reply)
            }
            Outcome::Deferred { host, reply } => {
                let step = (r.attempts as usize)
                    .saturating_sub(1)
                    .min(shared.retry.len() - 1);
                let next = now + shared.retry[step].as_secs().max(1);
                set(r, RecipientState::Deferred, Some(next), &reply);
                ("deferred", host, reply)
            }
        };
        info!(
            queue_id = %id,
            to = %address,
            relay = relay.as_deref().unwrap_or("none"),
            delay = age,
            attempts = r.attempts,
            status,
            reply = %reply,
            "delivery"
        );
        shared.metrics.delivery(status, age);
    }
    let mut bounces = Vec::new();
    if !failed.is_empty() {
        if env.sender.is_empty() {
            // Never bounce a bounce (RFC 3464 section 2; DESIGN.md).
            warn!(queue_id = %id, rcpts = failed.len(), "queue: bounce undeliverable, dropped");
        } else {
            let message = spool.load_message(id)?;
            let dsn = dsn::build(
                &shared.hostname,
                &env,
                &message,
                &failed,
                time::OffsetDateTime::now_utc(),
            );
            let bounce_id = QueueId::generate();
            let bounce = Envelope {
                version: spool::FORMAT_VERSION,
                id: bounce_id.to_string(),
                user: MAILER_DAEMON.into(),
                sender: String::new(),
                recipients: vec![Recipient::pending(env.sender.clone())],
                received_at: now,
                helo: shared.hostname.clone(),
                // dsn.rs: a DSN carrying non-ASCII text needs 8BITMIME (and SMTPUTF8 for a
                // non-ASCII address) at the next hop.
                smtputf8: !env.sender.is_ascii() || !dsn.is_ascii(),
                eight_bit: !dsn.is_ascii(),
                size: dsn.len() as u64,
                held: false,
            };
            spool.store_blocking(&bounce, &dsn)?;
            info!(queue_id = %id, bounce = %bounce_id, to = %env.sender, "queue: DSN queued");
            bounces.push(bounce_id);
        }
    }
    if env.next_due().is_none() {
        spool.remove(id, &lock)?;
        info!(queue_id = %id, "removed");
    } else {
        spool.save_envelope(&env)?;
    }
    Ok(bounces)
}

fn set(r: &mut Recipient, state: RecipientState, next: Option<u64>, reply: &str) {
    r.state = state;
    r.next_attempt = next;
    r.last_reply = Some(reply.chars().take(1000).collect());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpt(state: RecipientState, next: Option<u64>) -> Recipient {
        Recipient {
            address: "a@b".into(),
            state,
            attempts: 0,
            next_attempt: next,
            last_reply: None,
        }
    }

    #[test]
    fn next_due_is_the_earliest_open_recipient() {
        let mut env = Envelope {
            version: 1,
            id: "X".into(),
            user: "u".into(),
            sender: "s@x".into(),
            recipients: vec![
                rcpt(RecipientState::Delivered, None),
                rcpt(RecipientState::Deferred, Some(50)),
                rcpt(RecipientState::Deferred, Some(20)),
            ],
            received_at: 0,
            helo: "h".into(),
            smtputf8: false,
            eight_bit: false,
            size: 0,
            held: false,
        };
        assert_eq!(env.next_due(), Some(20));
        env.recipients.push(rcpt(RecipientState::Pending, None));
        assert_eq!(env.next_due(), Some(0));
        env.recipients = vec![rcpt(RecipientState::Failed, None)];
        assert_eq!(env.next_due(), None);
    }

    #[test]
    fn domains_group_case_insensitively() {
        assert_eq!(domain_of("a@Example.TEST"), "example.test");
        assert_eq!(domain_of("\"x@y\"@z.test"), "z.test");
        assert_eq!(domain_of("postmaster"), "");
    }
}
