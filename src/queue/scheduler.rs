//! The queue scheduler: which message is due, how many deliveries run at once, and what an
//! attempt's outcomes do to the queue.
//!
//! - On start the queue directory is scanned and every committed message is loaded. After
//!   that, new messages reach the scheduler only through [`QueueHandle::notify`], which the
//!   session calls after the spool write was committed (file fsync, rename, directory fsync):
//!   a message whose commit failed, and whose client was told 451, is never picked up, even in
//!   the moment its envelope exists under its final name. Every [`SCAN_INTERVAL`] after the
//!   start, the directory is scanned again for the messages the scheduler already knows: an
//!   envelope whose modification time changed (`queue hold`, `release`, `retry` from the
//!   command line) is re-read, a removed one forgotten. (A queue so big that a scan takes over
//!   1/20 of that interval is scanned less often: the scan never takes more than about 5% of
//!   the time.)
//! - A due message (a recipient `pending`, or `deferred` with its next attempt in the past) is
//!   delivered by a task; at most `queue.concurrency` run at once, earliest due first (the
//!   waiting messages are kept ordered by due time, so picking one does not grow with the
//!   queue). Its due recipients are grouped by destination domain (one transaction, several
//!   RCPTs), or all together for the smarthost. Connections are reused across messages to the
//!   same destination (`delivery::pool`).
//! - An attempt reports where its message stands (removed, or saved with its next due time):
//!   the scheduler needs no rescan to know it.
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
//! that recipient again on restart. For the same reason the removal of a finished message is
//! not fsynced on its own: the queue directory is fsynced once per scan (every
//! [`SCAN_INTERVAL`]) when something was removed, and at shutdown. A crash in between can
//! bring a delivered message back, to be delivered again (a duplicate, never a loss: Postfix
//! makes the same trade). Bounces are stored durably before the message they report on is
//! removed.

use crate::logsafe::Escaped;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::unix_now;
use crate::config::{RelayMode, Settings};
use crate::metrics::Metrics;

use super::bounce::{self, FailedRecipient};
use super::courier::{Courier, Job, Outcome};
use super::id::QueueId;
use super::spool::{Envelope, MessageLock, Recipient, RecipientState, Spool, SpoolError};

/// How often the queue directory is rescanned for new and changed envelopes (at most).
pub const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// The time between two scans is at least this many times what the last scan took.
const SCAN_SHARE: u32 = 20;
/// How long shutdown lets running deliveries finish.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// Announces newly queued messages to the scheduler.
#[derive(Clone, Debug)]
pub struct QueueHandle {
    tx: mpsc::UnboundedSender<QueueId>,
    flush: Arc<tokio::sync::Notify>,
}

impl QueueHandle {
    /// Hand a committed message to the scheduler for an immediate attempt: the only way a new
    /// message reaches it while it runs. Never blocks and never drops one (the channel is
    /// unbounded; the scheduler takes each ID at once into its tracker, which holds every
    /// queued message anyway). Call it only after the spool write returned `Ok`.
    pub fn notify(&self, id: QueueId) {
        let _ = self.tx.send(id);
    }

    /// Attempt every deferred message now (SIGUSR1, from `submitd queue retry`), like
    /// Postfix's `postqueue -f`: in memory, without rewriting envelopes. Held messages stay
    /// held. Lost if the server stops first; the messages then keep their retry times.
    pub fn flush(&self) {
        self.flush.notify_one();
    }
}

/// What the scheduler knows about one queued message.
#[derive(Debug)]
struct Tracked {
    /// Unix seconds when the next attempt is due; `None` when nothing is left to do.
    due: Option<u64>,
    /// The envelope's modification time when it was last read or written.
    mtime: Option<SystemTime>,
    running: bool,
    /// When the message arrived and how many recipients are still to deliver (metrics).
    received_at: Option<u64>,
    open: usize,
    /// A flush made it due: its next attempt takes deferred recipients whatever their time.
    forced: bool,
}

/// The messages the scheduler knows, and those waiting for an attempt ordered by due time: a
/// message is in `waiting` exactly when it is not running and has a due time. Picking the
/// next due message costs O(log n), whatever the queue's size.
#[derive(Debug, Default)]
struct Tracker {
    messages: HashMap<QueueId, Tracked>,
    waiting: BTreeSet<(u64, QueueId)>,
}

impl Tracker {
    /// A message announced by a session: due now, unless already known.
    fn announce(&mut self, id: QueueId) {
        if !self.messages.contains_key(&id) {
            self.update(id.clone(), Some(0), None);
            self.note(&id, Some(unix_now()), 0);
        }
    }

    /// Record what the envelope on disk says, unless an attempt is running (its result is
    /// newer).
    fn update(&mut self, id: QueueId, due: Option<u64>, mtime: Option<SystemTime>) {
        let t = self.messages.entry(id.clone()).or_insert(Tracked {
            due: None,
            mtime: None,
            running: false,
            received_at: None,
            open: 0,
            forced: false,
        });
        if t.running {
            return;
        }
        if let Some(old) = t.due {
            self.waiting.remove(&(old, id.clone()));
        }
        t.due = due;
        t.mtime = mtime;
        if let Some(due) = due {
            self.waiting.insert((due, id));
        }
    }

    /// What the metrics want to know of a message: when it arrived, how many recipients are
    /// still to deliver.
    fn note(&mut self, id: &QueueId, received_at: Option<u64>, open: usize) {
        if let Some(t) = self.messages.get_mut(id) {
            t.received_at = received_at.or(t.received_at);
            t.open = open;
        }
    }

    /// Forget a message that is no longer queued (unless an attempt is running).
    fn forget(&mut self, id: &QueueId) {
        if self.messages.get(id).is_some_and(|t| !t.running)
            && let Some(t) = self.messages.remove(id)
            && let Some(due) = t.due
        {
            self.waiting.remove(&(due, id.clone()));
        }
    }

    /// The message due first, when it is due by `now`; marked running. With it, whether a
    /// flush forced it.
    fn start_next(&mut self, now: u64) -> Option<(QueueId, bool)> {
        let &(due, _) = self.waiting.first()?;
        if due > now {
            return None;
        }
        let (_, id) = self.waiting.pop_first()?;
        let mut forced = false;
        if let Some(t) = self.messages.get_mut(&id) {
            t.running = true;
            forced = std::mem::take(&mut t.forced);
        }
        Some((id, forced))
    }

    /// Make every waiting message due at `now` (a flush). Messages with nothing to attempt
    /// (held, or done) have no due time and are not waiting.
    fn flush(&mut self, now: u64) -> usize {
        let later: Vec<(u64, QueueId)> = self
            .waiting
            .iter()
            .filter(|(due, _)| *due > now)
            .cloned()
            .collect();
        for (due, id) in &later {
            self.waiting.remove(&(*due, id.clone()));
            self.waiting.insert((now, id.clone()));
            if let Some(t) = self.messages.get_mut(id) {
                t.due = Some(now);
                t.forced = true;
            }
        }
        later.len()
    }

    /// An attempt ended.
    fn finished(&mut self, id: QueueId, after: After) {
        if let Some(t) = self.messages.get_mut(&id) {
            t.running = false;
        }
        match after {
            After::Removed => self.forget(&id),
            After::Saved { due, mtime, open } => {
                self.update(id.clone(), due, mtime);
                self.note(&id, None, open);
            }
            // Re-read at the next scan.
            After::Unknown => self.update(id, None, None),
        }
    }

    /// Modification times of the messages not being delivered (the scan re-reads the others).
    fn known(&self) -> HashMap<QueueId, Option<SystemTime>> {
        self.messages
            .iter()
            .filter(|(_, t)| !t.running)
            .map(|(id, t)| (id.clone(), t.mtime))
            .collect()
    }
}

/// Where a message stands after an attempt.
#[derive(Debug)]
enum After {
    /// Done (or deleted meanwhile): no longer queued.
    Removed,
    /// Its envelope was saved: next attempt due then, file modified then, so many recipients
    /// still to deliver.
    Saved {
        due: Option<u64>,
        mtime: Option<SystemTime>,
        open: usize,
    },
    /// Not known (not loaded, state not saved): the next scan reads the envelope again.
    Unknown,
}

/// The scheduler's shared parts.
struct Shared {
    spool: Spool,
    courier: Arc<dyn Courier>,
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
    rx: mpsc::UnboundedReceiver<QueueId>,
    tx: mpsc::UnboundedSender<QueueId>,
    flush: Arc<tokio::sync::Notify>,
    concurrency: usize,
}

impl Scheduler {
    /// The scheduler and the handle sessions use to announce new messages.
    pub fn new(
        settings: &Settings,
        spool: Spool,
        courier: Arc<dyn Courier>,
        metrics: Arc<Metrics>,
    ) -> (QueueHandle, Scheduler) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            spool,
            courier,
            hostname: settings.hostname.clone(),
            mode: settings.relay.mode,
            retry: settings.queue.retry.clone(),
            max_age: settings.queue.max_age,
            connections: Semaphore::new(settings.queue.concurrency),
            metrics,
        });
        let flush = Arc::new(tokio::sync::Notify::new());
        let handle = QueueHandle {
            tx: tx.clone(),
            flush: flush.clone(),
        };
        let scheduler = Scheduler {
            shared,
            rx,
            tx,
            flush,
            concurrency: settings.queue.concurrency,
        };
        (handle, scheduler)
    }

    /// Run until `shutdown` is cancelled, then let running deliveries finish within
    /// [`DRAIN_DEADLINE`].
    pub async fn run(self, shutdown: CancellationToken) {
        run(
            self.shared,
            self.rx,
            self.tx,
            self.flush,
            self.concurrency,
            shutdown,
        )
        .await
    }
}

async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<QueueId>,
    tx: mpsc::UnboundedSender<QueueId>,
    flush: Arc<tokio::sync::Notify>,
    concurrency: usize,
    shutdown: CancellationToken,
) {
    let mut tracker = Tracker::default();
    let mut running: JoinSet<(QueueId, After)> = JoinSet::new();
    // Which message each task delivers, to recover it should a task panic.
    let mut tasks: HashMap<tokio::task::Id, QueueId> = HashMap::new();
    let mut next_scan = tokio::time::Instant::now();
    // Messages removed since the directory was last fsynced.
    let mut unsynced = false;
    // Only the first scan takes messages it does not know (see the module doc).
    let mut admit_new = true;
    loop {
        if tokio::time::Instant::now() >= next_scan {
            let started = tokio::time::Instant::now();
            let sync = std::mem::take(&mut unsynced);
            scan(&shared, &mut tracker, sync, std::mem::take(&mut admit_new)).await;
            // A queue so big that scanning it takes long is scanned less often, so that
            // scanning takes at most about 1/SCAN_SHARE of the time.
            let took = started.elapsed();
            next_scan = tokio::time::Instant::now() + SCAN_INTERVAL.max(took * SCAN_SHARE);
        }
        // Start what is due, earliest due first, up to the concurrency limit.
        let now = unix_now();
        while running.len() < concurrency {
            let Some((id, forced)) = tracker.start_next(now) else {
                break;
            };
            let shared = shared.clone();
            let tx = tx.clone();
            let task_id = id.clone();
            let handle = running.spawn(async move {
                let (bounces, after) = attempt(&shared, &task_id, forced).await;
                for bounce in bounces {
                    let _ = tx.send(bounce);
                }
                (task_id, after)
            });
            tasks.insert(handle.id(), id);
        }
        tokio::select! {
            Some(id) = rx.recv() => tracker.announce(id),
            _ = flush.notified() => {
                let n = tracker.flush(unix_now());
                info!(messages = n, "queue: flush, deferred messages due now");
            }
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let (id, after) = match done {
                    Ok((task, (id, after))) => {
                        tasks.remove(&task);
                        (id, after)
                    }
                    Err(e) => {
                        warn!(error = %e, "queue: delivery task failed");
                        match tasks.remove(&e.id()) {
                            Some(id) => (id, After::Unknown),
                            None => continue,
                        }
                    }
                };
                match after {
                    After::Removed => unsynced = true,
                    After::Unknown => next_scan = tokio::time::Instant::now(),
                    After::Saved { .. } => {}
                }
                tracker.finished(id, after);
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
    shared.courier.close_idle().await;
    let spool = shared.spool.clone();
    let _ = tokio::task::spawn_blocking(move || spool.sync()).await;
}

/// Rescan the queue directory: re-read changed envelopes, forget removed ones, and with
/// `admit_new` (the start-up scan only) load the messages not known yet. With `sync`, first
/// fsync the directory so that the removals since the last scan survive a crash.
async fn scan(shared: &Arc<Shared>, tracker: &mut Tracker, sync: bool, admit_new: bool) {
    let spool = shared.spool.clone();
    let known = tracker.known();
    let listing = tokio::task::spawn_blocking(move || {
        if sync && let Err(e) = spool.sync() {
            warn!(error = %e, "queue: cannot fsync the queue directory");
        }
        scan_blocking(&spool, &known, admit_new).map(|r| (r, known))
    })
    .await;
    let Ok(Ok(((present, changed), known))) = listing else {
        warn!("queue: cannot scan the queue directory");
        return;
    };
    for id in known.keys() {
        if !present.contains(id) {
            tracker.forget(id);
        }
    }
    for (id, mtime, seen) in changed {
        tracker.update(id.clone(), seen.due, Some(mtime));
        tracker.note(&id, seen.received_at, seen.open);
    }
    queue_metrics(&shared.metrics, tracker);
}

/// The queue gauges from what the scheduler tracks (no disk access).
fn queue_metrics(metrics: &Metrics, tracker: &Tracker) {
    let open = tracker.messages.values().map(|t| t.open).sum();
    let oldest = tracker
        .messages
        .values()
        .filter_map(|t| t.received_at)
        .min();
    metrics.queue(tracker.messages.len(), open, oldest);
}

/// What a scan read from one envelope.
struct Seen {
    due: Option<u64>,
    received_at: Option<u64>,
    /// Recipients pending or deferred.
    open: usize,
}

type ScanResult = (HashSet<QueueId>, Vec<(QueueId, SystemTime, Seen)>);

fn scan_blocking(
    spool: &Spool,
    known: &HashMap<QueueId, Option<SystemTime>>,
    admit_new: bool,
) -> Result<ScanResult, SpoolError> {
    let mut present = HashSet::new();
    let mut changed = Vec::new();
    let dir = spool.dir();
    let entries = std::fs::read_dir(dir).map_err(|source| SpoolError::Io {
        path: dir.to_path_buf(),
        step: "read directory",
        source,
    })?;
    for entry in entries.flatten() {
        // Top-level `ID.q` files only, as `Spool::list` takes them.
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(crate::queue::spool::id_of_file_name) else {
            continue;
        };
        // Relative to the open directory: no path walk per file.
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
        present.insert(id.clone());
        let Some(seen_mtime) = known.get(&id) else {
            // Not known: a message being committed (announced once it is), or one whose
            // commit failed (its client got 451, and the session removes it), or one an
            // attempt is delivering. Only the start-up scan takes unknown messages.
            if admit_new {
                changed.push((id.clone(), mtime, read_seen(spool, &id)));
            }
            continue;
        };
        if *seen_mtime != Some(mtime) {
            changed.push((id.clone(), mtime, read_seen(spool, &id)));
        }
    }
    Ok((present, changed))
}

/// What the scheduler needs of an envelope on disk.
fn read_seen(spool: &Spool, id: &QueueId) -> Seen {
    match spool.load_envelope(id) {
        Ok(env) => {
            let open = env
                .recipients
                .iter()
                .filter(|r| matches!(r.state, RecipientState::Pending | RecipientState::Deferred))
                .count();
            Seen {
                due: env.attempt_due(),
                received_at: Some(env.received_at),
                open,
            }
        }
        Err(e) => {
            warn!(queue_id = %id, error = %e, "queue: unreadable envelope skipped");
            Seen {
                due: None,
                received_at: None,
                open: 0,
            }
        }
    }
}

/// The domain of an address (after the last `@`), lowercased for grouping.
fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_lowercase())
        .unwrap_or_default()
}

/// One delivery attempt of one message; returns the IDs of bounces it queued and where the
/// message stands.
async fn attempt(shared: &Arc<Shared>, id: &QueueId, forced: bool) -> (Vec<QueueId>, After) {
    let spool = shared.spool.clone();
    let loaded = {
        let id = id.clone();
        // The envelope and an open handle on the message: delivery reads it in pieces.
        tokio::task::spawn_blocking(move || spool.open_message(&id)).await
    };
    let (env, message) = match loaded {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            // Deleted meanwhile (`queue delete`), or unreadable: nothing to do now.
            info!(queue_id = %id, error = %e, "queue: message not loaded");
            return (Vec::new(), After::Unknown);
        }
        Err(e) => {
            warn!(queue_id = %id, error = %e, "queue: load task failed");
            return (Vec::new(), After::Unknown);
        }
    };
    // Re-read just now: a `queue hold` since the last scan wins over the scan's due time.
    if env.held {
        info!(queue_id = %id, "queue: message on hold, not attempted");
        // The next scan reads it again and finds no due time.
        return (Vec::new(), After::Unknown);
    }
    let now = unix_now();
    let due: Vec<String> = env
        .recipients
        .iter()
        .filter(|r| match r.state {
            RecipientState::Pending => true,
            RecipientState::Deferred => forced || r.next_attempt.unwrap_or(0) <= now,
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
            // One destination for every recipient.
            RelayMode::Smarthost | RelayMode::Capture => String::new(),
            RelayMode::Mx => domain_of(&rcpt),
        };
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(rcpt),
            None => groups.push((key, vec![rcpt])),
        }
    }
    let message = Arc::new(message);
    let env = Arc::new(env);
    let deliver_group = |rcpts: Vec<String>| {
        let shared = shared.clone();
        let message = message.clone();
        let env = env.clone();
        let id = id.clone();
        async move {
            let _permit = shared.connections.acquire().await;
            let domain = rcpts.first().map(|r| domain_of(r)).unwrap_or_default();
            let started = std::time::Instant::now();
            let job = Job {
                queue_id: id.as_str(),
                sender: &env.sender,
                recipients: &rcpts,
                domain: &domain,
                message: message.clone(),
                smtputf8: env.smtputf8,
                eight_bit: env.eight_bit,
                envelope: Some(&env),
            };
            let outcomes = shared.courier.deliver(&job).await;
            shared.metrics.delivery_attempt(started.elapsed());
            outcomes
        }
    };
    let mut outcomes = Vec::new();
    if groups.len() == 1 {
        // The common case needs no extra task.
        let (_, rcpts) = groups.remove(0);
        outcomes = deliver_group(rcpts).await;
    } else {
        let mut tasks = JoinSet::new();
        for (_, rcpts) in groups {
            tasks.spawn(deliver_group(rcpts));
        }
        while let Some(result) = tasks.join_next().await {
            match result {
                Ok(list) => outcomes.extend(list),
                Err(e) => warn!(queue_id = %id, error = %e, "queue: delivery task failed"),
            }
        }
    }
    finish(shared, id, outcomes).await
}

/// Apply outcomes to the envelope under the message's lock; queue the DSN; remove the message
/// when nothing is left. Returns the IDs of bounces queued and where the message stands.
async fn finish(
    shared: &Arc<Shared>,
    id: &QueueId,
    outcomes: Vec<(String, Outcome)>,
) -> (Vec<QueueId>, After) {
    let shared2 = shared.clone();
    let id2 = id.clone();
    match tokio::task::spawn_blocking(move || apply_blocking(&shared2, &id2, outcomes)).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => {
            warn!(queue_id = %id, error = %e, "queue: cannot save delivery state; will retry");
            (Vec::new(), After::Unknown)
        }
        Err(e) => {
            warn!(queue_id = %id, error = %e, "queue: state task failed");
            (Vec::new(), After::Unknown)
        }
    }
}

/// [`finish`]'s blocking part: the envelope re-read under the message's lock, the outcomes
/// recorded, the DSN stored before the state that reports the failure is saved.
fn apply_blocking(
    shared: &Shared,
    id: &QueueId,
    outcomes: Vec<(String, Outcome)>,
) -> Result<(Vec<QueueId>, After), SpoolError> {
    let spool = &shared.spool;
    let Some((lock, mut env)) = lock_and_load(spool, id)? else {
        // Deleted while we were delivering (`queue delete`).
        return Ok((Vec::new(), After::Removed));
    };
    let now = unix_now();
    let failed = record_outcomes(shared, id, &mut env, outcomes, now);
    let mut bounces = Vec::new();
    if !failed.is_empty() {
        if env.sender.is_empty() {
            // Never bounce a bounce (RFC 3464 section 2; DESIGN.md).
            warn!(queue_id = %id, rcpts = failed.len(), "queue: bounce undeliverable, dropped");
        } else {
            let bounce_id = bounce::queue(spool, &shared.hostname, id, &env, &failed, now)?;
            info!(queue_id = %id, bounce = %bounce_id, to = %Escaped(&env.sender), "queue: DSN queued");
            bounces.push(bounce_id);
        }
    }
    let after = save_or_remove(spool, id, &env, &lock)?;
    Ok((bounces, after))
}

/// The message's lock and its envelope as it is now; `None` when the message is gone.
fn lock_and_load(
    spool: &Spool,
    id: &QueueId,
) -> Result<Option<(MessageLock, Envelope)>, SpoolError> {
    let gone = |e: &SpoolError| matches!(e, SpoolError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
    let lock = match spool.lock(id) {
        Ok(lock) => lock,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    match spool.load_envelope(id) {
        Ok(env) => Ok(Some((lock, env))),
        Err(e) if gone(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Each outcome into its recipient's state (still open ones only), logged and counted; the
/// recipients that failed, for the DSN. A deferral past `queue.max_age` fails as expired.
fn record_outcomes(
    shared: &Shared,
    id: &QueueId,
    env: &mut Envelope,
    outcomes: Vec<(String, Outcome)>,
    now: u64,
) -> Vec<FailedRecipient> {
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
                    status: bounce::EXPIRED.into(),
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
            to = %Escaped(&address),
            relay = %Escaped(relay.as_deref().unwrap_or("none")),
            delay = age,
            attempts = r.attempts,
            status,
            reply = %Escaped(&reply),
            "delivery"
        );
        shared.metrics.delivery(status, age);
    }
    failed
}

/// Remove the message when no recipient is left to attempt, else save its envelope.
fn save_or_remove(
    spool: &Spool,
    id: &QueueId,
    env: &Envelope,
    lock: &MessageLock,
) -> Result<After, SpoolError> {
    let due = env.next_due();
    if due.is_none() {
        // The directory fsync that makes the removal durable comes with the next scan.
        spool.remove_unsynced(id, lock)?;
        info!(queue_id = %id, "removed");
        return Ok(After::Removed);
    }
    spool.save_envelope(env)?;
    let mtime = std::fs::metadata(spool.path(id))
        .and_then(|m| m.modified())
        .ok();
    let open = env
        .recipients
        .iter()
        .filter(|r| matches!(r.state, RecipientState::Pending | RecipientState::Deferred))
        .count();
    Ok(After::Saved { due, mtime, open })
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
            prefix: String::new(),
            content_len: 0,
        };
        assert_eq!(env.next_due(), Some(20));
        env.recipients.push(rcpt(RecipientState::Pending, None));
        assert_eq!(env.next_due(), Some(0));
        env.recipients = vec![rcpt(RecipientState::Failed, None)];
        assert_eq!(env.next_due(), None);
    }

    #[test]
    fn tracker_starts_earliest_due_first_and_skips_running() {
        let ids: Vec<QueueId> = (0..4).map(|_| QueueId::generate()).collect();
        let mut t = Tracker::default();
        t.update(ids[0].clone(), Some(30), None);
        t.update(ids[1].clone(), Some(10), None);
        t.update(ids[2].clone(), None, None);
        t.announce(ids[3].clone());
        // Announcing a known message changes nothing.
        t.announce(ids[0].clone());
        assert_eq!(t.start_next(20).map(|(id, _)| id), Some(ids[3].clone()));
        assert_eq!(t.start_next(20).map(|(id, _)| id), Some(ids[1].clone()));
        assert_eq!(
            t.start_next(20).map(|(id, _)| id),
            None,
            "ids[0] is not due before 30"
        );
        // A scan's view of a running message is ignored; its result is not.
        t.update(ids[1].clone(), Some(0), None);
        assert_eq!(t.start_next(20).map(|(id, _)| id), None);
        t.finished(
            ids[1].clone(),
            After::Saved {
                due: Some(25),
                mtime: None,
                open: 1,
            },
        );
        t.finished(ids[3].clone(), After::Removed);
        assert!(!t.messages.contains_key(&ids[3]));
        assert_eq!(t.start_next(40).map(|(id, _)| id), Some(ids[1].clone()));
        assert_eq!(t.start_next(40).map(|(id, _)| id), Some(ids[0].clone()));
        assert_eq!(t.start_next(40).map(|(id, _)| id), None);
        t.finished(ids[0].clone(), After::Unknown);
        assert_eq!(t.messages[&ids[0]].due, None);
        // Forgetting a running message waits for its result.
        t.forget(&ids[1]);
        assert!(t.messages.contains_key(&ids[1]));
        t.forget(&ids[2]);
        assert!(!t.messages.contains_key(&ids[2]));
        assert_eq!(t.waiting.len(), 0);
    }

    #[test]
    fn flush_makes_later_messages_due_and_forced_once() {
        let ids: Vec<QueueId> = (0..3).map(|_| QueueId::generate()).collect();
        let mut t = Tracker::default();
        t.update(ids[0].clone(), Some(3600), None);
        t.update(ids[1].clone(), None, None); // held or done: nothing to attempt
        t.update(ids[2].clone(), Some(5), None); // due already
        assert_eq!(t.start_next(10), Some((ids[2].clone(), false)));
        assert_eq!(t.start_next(10), None);
        assert_eq!(t.flush(10), 1);
        assert_eq!(t.start_next(10), Some((ids[0].clone(), true)));
        assert_eq!(
            t.start_next(10),
            None,
            "a message without a due time stays put"
        );
        // The next attempt after a normal deferral is not forced again.
        t.finished(
            ids[0].clone(),
            After::Saved {
                due: Some(10),
                mtime: None,
                open: 1,
            },
        );
        assert_eq!(t.start_next(10), Some((ids[0].clone(), false)));
    }

    #[test]
    fn domains_group_case_insensitively() {
        assert_eq!(domain_of("a@Example.TEST"), "example.test");
        assert_eq!(domain_of("\"x@y\"@z.test"), "z.test");
        assert_eq!(domain_of("postmaster"), "");
    }
}
