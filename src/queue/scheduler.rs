//! The queue scheduler: which message is due, how many deliveries run at once, and what an
//! attempt's outcomes do to the queue.
//!
//! - On start the messages already queued are loaded in the background, in batches read off
//!   the reactor, while new mail is accepted and delivered: start-up never waits for the queue,
//!   whatever its size. The load quarantines damaged entries ([`Spool::quarantine_entry`]).
//!   The scheduler keeps only an ID, a due time, a modification time and two counts per message
//!   (no envelopes), and every event costs O(log n). New messages reach it only through
//!   [`QueueHandle::notify`], which the session calls after the spool write was committed
//!   (file fsync, rename, directory fsync): a message whose commit failed, and whose client was
//!   told 451, is never picked up, even in the moment its envelope exists under its final name.
//!   After the load, the directory is scanned again for the messages the scheduler already
//!   knows: an envelope whose modification time changed (`queue hold`, `release`, `retry`,
//!   `delete` from the command line) is re-read, a removed one forgotten. The command line asks
//!   for a scan through the control socket once it changed something ([`QueueHandle::rescan`]),
//!   so its changes take effect at once; besides, the directory is scanned every
//!   [`SCAN_INTERVAL`], or less often for a queue so big that a scan takes over 1/100 of
//!   that interval (a scan of a million entries takes seconds of CPU: periodic scans never take
//!   more than about 1% of the time).
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
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::unix_now;
use crate::config::{RelayMode, Settings};
use crate::events::{DeliveryEvent, EventKind, Events};
use crate::metrics::Metrics;

use super::bounce::{self, Action, FailedRecipient};
use super::courier::{Courier, Job, JobDsn, Outcome};
use super::id::QueueId;
use super::polite::{self, DestState, Destinations, Permit, Verdict, Wait};
use super::spool::{Envelope, MessageLock, Recipient, RecipientState, Spool, SpoolError};
use crate::dsn::{self, RcptParams};

/// How often the queue directory is rescanned for new and changed envelopes (at most).
pub const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// The time between two scans is at least this many times what the last scan took.
const SCAN_SHARE: u32 = 100;
/// How long shutdown lets running deliveries finish.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// Announces newly queued messages to the scheduler.
#[derive(Clone, Debug)]
pub struct QueueHandle {
    tx: mpsc::UnboundedSender<QueueId>,
    flush: Arc<tokio::sync::Notify>,
    rescan: Arc<tokio::sync::Notify>,
    /// Polite delivery's per-destination table (`queue::polite`), for the control socket.
    destinations: Arc<Destinations>,
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

    /// Scan the queue directory soon (`submitd queue hold`, `release`, `retry ID`, `delete`
    /// changed files behind the scheduler's back): at once, unless the last scan ended less
    /// than its own duration (and [`SCAN_INTERVAL`]) ago. Requests that come while a scan is
    /// due are one scan.
    pub fn rescan(&self) {
        self.rescan.notify_one();
    }

    /// The destinations throttled now (held, or below `relay.destination_concurrency`),
    /// sorted by name.
    pub fn throttled(&self) -> Vec<DestState> {
        let configured = self.destinations.settings().concurrency;
        let mut list = self.destinations.snapshot();
        list.retain(|d| d.throttled(configured));
        list
    }
}

/// A queued message in the scheduler's tables: its ID as a number ([`QueueId::to_bits`]), so
/// that a million of them cost 16 bytes each and copying one allocates nothing.
type Key = u128;

/// What the scheduler knows about one queued message: no envelope, only what picking the next
/// attempt, noticing a changed file and the gauges need (a million cost tens of megabytes).
#[derive(Debug)]
struct Tracked {
    /// Unix seconds when the next attempt is due; `None` when nothing is left to do.
    due: Option<u64>,
    /// The envelope's modification time when it was last read or written.
    mtime: Option<SystemTime>,
    /// When the message arrived (metrics: the oldest message's age).
    received_at: Option<u64>,
    /// Recipients still to deliver (metrics).
    open: u32,
    running: bool,
    /// Parked behind a destination at its concurrency limit (`Tracker::parking`): made due
    /// when an attempt to that destination ends.
    parked: bool,
    /// A flush made it due: its next attempt takes deferred recipients whatever their time.
    forced: bool,
}

/// The messages the scheduler knows, and those waiting for an attempt ordered by due time: a
/// message is in `waiting` exactly when it is not running and has a due time. Every event
/// (announce, update, start, finish, forget) costs O(log n), and so do the gauges, which are
/// kept as running totals rather than summed over the queue.
#[derive(Debug, Default)]
struct Tracker {
    messages: HashMap<Key, Tracked>,
    waiting: BTreeSet<(u64, Key)>,
    /// How many tracked messages arrived at each second: the first is the oldest message.
    arrivals: BTreeMap<u64, u32>,
    /// The sum of every tracked message's `open`.
    open: usize,
    /// Messages parked behind each full destination, oldest first (may hold stale keys:
    /// each is checked against its `parked` flag when woken).
    parking: HashMap<String, std::collections::VecDeque<Key>>,
}

impl Tracker {
    /// A message announced by a session: due now, unless already known.
    fn announce(&mut self, id: Key) {
        if !self.messages.contains_key(&id) {
            self.update(id, Some(0), None);
            self.note(id, Some(unix_now()), 0);
        }
    }

    /// A message found on disk by the start-up load: taken only when not known yet (an
    /// announcement or an attempt's result is newer than what the load read).
    fn admit(&mut self, id: Key, mtime: Option<SystemTime>, seen: &Seen) {
        if !self.messages.contains_key(&id) {
            self.update(id, seen.due, mtime);
            self.note(id, seen.received_at, seen.open);
        }
    }

    /// Record what the envelope on disk says, unless an attempt is running (its result is
    /// newer).
    fn update(&mut self, id: Key, due: Option<u64>, mtime: Option<SystemTime>) {
        let t = self.messages.entry(id).or_insert(Tracked {
            due: None,
            mtime: None,
            received_at: None,
            open: 0,
            running: false,
            parked: false,
            forced: false,
        });
        if t.running {
            return;
        }
        t.parked = false;
        if let Some(old) = t.due {
            self.waiting.remove(&(old, id));
        }
        t.due = due;
        t.mtime = mtime;
        if let Some(due) = due {
            self.waiting.insert((due, id));
        }
    }

    /// What the metrics want to know of a message: when it arrived (kept when `None`), how
    /// many recipients are still to deliver.
    fn note(&mut self, id: Key, received_at: Option<u64>, open: usize) {
        let Some(t) = self.messages.get_mut(&id) else {
            return;
        };
        if let Some(at) = received_at
            && t.received_at != Some(at)
        {
            if let Some(old) = t.received_at {
                arrival_gone(&mut self.arrivals, old);
            }
            *self.arrivals.entry(at).or_insert(0) += 1;
            t.received_at = Some(at);
        }
        let open = u32::try_from(open).unwrap_or(u32::MAX);
        self.open = self.open - t.open as usize + open as usize;
        t.open = open;
    }

    /// Forget a message that is no longer queued (unless an attempt is running). Whether it
    /// was forgotten.
    fn forget(&mut self, id: Key) -> bool {
        if self.messages.get(&id).is_none_or(|t| t.running) {
            return false;
        }
        let Some(t) = self.messages.remove(&id) else {
            return false;
        };
        if let Some(due) = t.due {
            self.waiting.remove(&(due, id));
        }
        if let Some(at) = t.received_at {
            arrival_gone(&mut self.arrivals, at);
        }
        self.open -= t.open as usize;
        true
    }

    /// The message due first, when it is due by `now`; marked running. With it, whether a
    /// flush forced it.
    fn start_next(&mut self, now: u64) -> Option<(Key, bool)> {
        let &(due, _) = self.waiting.first()?;
        if due > now {
            return None;
        }
        let (_, id) = self.waiting.pop_first()?;
        let mut forced = false;
        if let Some(t) = self.messages.get_mut(&id) {
            t.running = true;
            t.parked = false;
            forced = std::mem::take(&mut t.forced);
        }
        Some((id, forced))
    }

    /// Make every waiting message due at `now` (a flush). Messages with nothing to attempt
    /// (held, or done) have no due time and are not waiting. O(log n) per message made due:
    /// only an operator's `queue retry` asks for it.
    fn flush(&mut self, now: u64) -> usize {
        let later = self.waiting.split_off(&(now.saturating_add(1), 0));
        for &(_, id) in &later {
            self.waiting.insert((now, id));
            if let Some(t) = self.messages.get_mut(&id) {
                t.due = Some(now);
                t.forced = true;
            }
        }
        later.len()
    }

    /// An attempt ended.
    fn finished(&mut self, id: Key, after: After) {
        if let Some(t) = self.messages.get_mut(&id) {
            t.running = false;
        }
        match after {
            After::Removed => {
                self.forget(id);
            }
            After::Saved { due, mtime, open } => {
                self.update(id, due, mtime);
                self.note(id, None, open);
            }
            // Re-read at the next scan.
            After::Unknown => self.update(id, None, None),
            // Nothing changed on disk: waiting again (`Tracker::polite` says until when).
            After::Postponed => {
                if let Some(due) = self.messages.get(&id).and_then(|t| t.due) {
                    self.waiting.insert((due, id));
                }
            }
        }
    }

    /// The queue gauges: messages, open recipients, the oldest arrival.
    fn gauges(&self) -> (usize, usize, Option<u64>) {
        let oldest = self.arrivals.first_key_value().map(|(at, _)| *at);
        (self.messages.len(), self.open, oldest)
    }
}

/// One message fewer arrived at `at`.
fn arrival_gone(arrivals: &mut BTreeMap<u64, u32>, at: u64) {
    if let Some(n) = arrivals.get_mut(&at) {
        *n -= 1;
        if *n == 0 {
            arrivals.remove(&at);
        }
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
    /// Nothing attempted, nothing written: every destination was full, held or rate-limited.
    Postponed,
}

/// The scheduler's shared parts.
struct Shared {
    spool: Spool,
    courier: Arc<dyn Courier>,
    hostname: String,
    mode: RelayMode,
    retry: Vec<Duration>,
    max_age: Duration,
    /// `queue.delay_warning`; `None`: off.
    delay_warning: Option<Duration>,
    connections: Semaphore,
    metrics: Arc<Metrics>,
    /// Per-destination limits and throttling (`queue::polite`).
    destinations: Arc<Destinations>,
    /// The smarthost's destination name (`host:port`), in smarthost mode.
    smarthost: String,
    /// Who hears about each recipient's outcome (suppression list, webhooks).
    events: Events,
}

/// A scheduler ready to run; made before the listeners so sessions can hold its handle.
pub struct Scheduler {
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<QueueId>,
    tx: mpsc::UnboundedSender<QueueId>,
    flush: Arc<tokio::sync::Notify>,
    rescan: Arc<tokio::sync::Notify>,
    concurrency: usize,
}

impl Scheduler {
    /// The scheduler and the handle sessions use to announce new messages.
    /// Hand each recipient's outcome to `events` (suppression list, webhooks). Before
    /// [`Scheduler::run`].
    pub fn with_events(mut self, events: Events) -> Scheduler {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.events = events;
        }
        self
    }

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
            delay_warning: settings.queue.delay_warning,
            connections: Semaphore::new(settings.queue.concurrency),
            metrics,
            destinations: Destinations::new(settings.relay.polite.clone()),
            smarthost: settings
                .relay
                .smarthost
                .as_ref()
                .map(|s| format!("{}:{}", s.host, s.port))
                .unwrap_or_else(|| "smarthost".into()),
            events: Events::default(),
        });
        let flush = Arc::new(tokio::sync::Notify::new());
        let rescan = Arc::new(tokio::sync::Notify::new());
        let handle = QueueHandle {
            tx: tx.clone(),
            flush: flush.clone(),
            rescan: rescan.clone(),
            destinations: shared.destinations.clone(),
        };
        let scheduler = Scheduler {
            shared,
            rx,
            tx,
            flush,
            rescan,
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
            Signals {
                flush: self.flush,
                rescan: self.rescan,
            },
            self.concurrency,
            shutdown,
        )
        .await
    }
}

/// What [`QueueHandle`] asks of the running scheduler besides new messages.
struct Signals {
    flush: Arc<tokio::sync::Notify>,
    rescan: Arc<tokio::sync::Notify>,
}

/// The scheduler's periodic work besides deliveries: directory scans and the fsync that makes
/// removals durable.
struct Upkeep {
    next_scan: tokio::time::Instant,
    /// When the last scan ended and how long it took: a requested scan waits that long.
    last_scan: (tokio::time::Instant, Duration),
    /// A scan was asked for (`QueueHandle::rescan`) and has not run yet.
    requested: bool,
    /// Messages removed since the directory was last fsynced, and when to fsync it next.
    unsynced: bool,
    next_sync: tokio::time::Instant,
}

impl Upkeep {
    fn new() -> Upkeep {
        let now = tokio::time::Instant::now();
        Upkeep {
            next_scan: now + SCAN_INTERVAL,
            last_scan: (now, Duration::ZERO),
            requested: false,
            unsynced: false,
            next_sync: now + SCAN_INTERVAL,
        }
    }

    /// Scan when one is due (not while the start-up load runs), or else fsync the removals
    /// when that is due.
    async fn run_due(&mut self, shared: &Arc<Shared>, tracker: &mut Tracker, loading: bool) {
        let now = tokio::time::Instant::now();
        if !loading && now >= self.next_scan {
            let sync = std::mem::take(&mut self.unsynced);
            self.requested = false;
            scan(shared, tracker, sync).await;
            // A queue so big that scanning it takes long is scanned less often, so that
            // scanning takes at most about 1/SCAN_SHARE of the time.
            let ended = tokio::time::Instant::now();
            let took = ended - now;
            self.last_scan = (ended, took);
            self.next_scan = ended + SCAN_INTERVAL.max(took * SCAN_SHARE);
            self.next_sync = ended + SCAN_INTERVAL;
        } else if self.unsynced && now >= self.next_sync {
            // Removals are made durable every SCAN_INTERVAL, however rarely a big queue is
            // scanned: directory fsyncs only.
            self.unsynced = false;
            let spool = shared.spool.clone();
            let synced = tokio::task::spawn_blocking(move || spool.sync()).await;
            if !matches!(synced, Ok(Ok(()))) {
                warn!("queue: cannot fsync the queue directory");
            }
            self.next_sync = tokio::time::Instant::now() + SCAN_INTERVAL;
        }
    }

    /// A scan was asked for: at once, unless the last one ended less than its own duration
    /// (and SCAN_INTERVAL) ago.
    fn requested(&mut self) {
        self.requested = true;
        let (ended, took) = self.last_scan;
        self.next_scan = self.next_scan.min(ended + SCAN_INTERVAL.max(took));
    }

    /// The start-up load, which took `took`, is over. It just read every envelope: the first
    /// scan waits as if it had been one (a second for a small queue), unless one was asked for.
    fn loaded(&mut self, took: Duration) {
        let now = tokio::time::Instant::now();
        self.next_scan = if self.requested {
            now
        } else {
            now + SCAN_INTERVAL.max(took * SCAN_SHARE)
        };
    }
}

async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<QueueId>,
    tx: mpsc::UnboundedSender<QueueId>,
    signals: Signals,
    concurrency: usize,
    shutdown: CancellationToken,
) {
    let Signals { flush, rescan } = signals;
    let mut tracker = Tracker::default();
    let mut running: JoinSet<(QueueId, After, Polite)> = JoinSet::new();
    // Which message each task delivers, to recover it should a task panic.
    let mut tasks: HashMap<tokio::task::Id, QueueId> = HashMap::new();
    // The queue on disk comes in batches while new mail is announced and delivered; the
    // rescans start once it is all in.
    let mut startup = Some(Startup::spawn(shared.spool.clone(), shutdown.clone()));
    let mut upkeep = Upkeep::new();
    loop {
        upkeep
            .run_due(&shared, &mut tracker, startup.is_some())
            .await;
        // Start what is due, earliest due first, up to the concurrency limit.
        let now = unix_now();
        while running.len() < concurrency {
            let Some((key, forced)) = tracker.start_next(now) else {
                break;
            };
            let id = QueueId::from_bits(key);
            let shared = shared.clone();
            let tx = tx.clone();
            let task_id = id.clone();
            let handle = running.spawn(async move {
                let (bounces, after, polite) = attempt(&shared, &task_id, forced).await;
                for bounce in bounces {
                    let _ = tx.send(bounce);
                }
                (task_id, after, polite)
            });
            tasks.insert(handle.id(), id);
        }
        let (messages, open, oldest) = tracker.gauges();
        shared.metrics.queue(messages, open, oldest);
        destination_gauges(&shared);
        let loading = startup.is_some();
        tokio::select! {
            Some(id) = rx.recv() => tracker.announce(id.to_bits()),
            batch = async { startup.as_mut()?.rx.recv().await }, if loading => match batch {
                Some(batch) => startup.as_mut().map(|s| s.admit(&mut tracker, batch)).unwrap_or(()),
                None => {
                    if let Some(s) = startup.take() {
                        upkeep.loaded(s.started.elapsed());
                        s.done(&tracker);
                    }
                }
            },
            _ = flush.notified() => {
                let n = tracker.flush(unix_now());
                info!(messages = n, "queue: flush, deferred messages due now");
            }
            _ = rescan.notified() => upkeep.requested(),
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let (id, after, polite) = match done {
                    Ok((task, (id, after, polite))) => {
                        tasks.remove(&task);
                        (id, after, polite)
                    }
                    Err(e) => {
                        warn!(error = %e, "queue: delivery task failed");
                        match tasks.remove(&e.id()) {
                            Some(id) => (id, After::Unknown, Polite::default()),
                            None => continue,
                        }
                    }
                };
                match after {
                    After::Removed => upkeep.unsynced = true,
                    After::Unknown => upkeep.next_scan = tokio::time::Instant::now(),
                    After::Saved { .. } | After::Postponed => {}
                }
                let key = id.to_bits();
                if matches!(after, After::Removed) && let Some(s) = startup.as_mut() {
                    // A batch read before the removal must not bring it back.
                    s.gone.insert(key);
                }
                tracker.finished(key, after);
                tracker.polite(key, polite, &shared.destinations);
            }
            _ = tokio::time::sleep_until(upkeep.next_scan), if !loading => {}
            _ = tokio::time::sleep_until(upkeep.next_sync), if upkeep.unsynced => {}
            _ = shutdown.cancelled() => break,
        }
    }
    drain(&shared, running).await;
}

/// Let running deliveries finish within [`DRAIN_DEADLINE`], close idle connections, and make
/// the removals durable.
async fn drain(shared: &Shared, mut running: JoinSet<(QueueId, After, Polite)>) {
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

/// Envelopes read per blocking task by the start-up load: big enough that the task hand-off
/// is cheap, small enough that the scheduler takes each batch in well under a millisecond.
const LOAD_BATCH: usize = 512;

/// One message read by the start-up load.
struct Loaded {
    id: Key,
    mtime: Option<SystemTime>,
    seen: Seen,
}

/// The start-up load of the queue already on disk, while it runs: the listeners accept and
/// the scheduler delivers meanwhile, so start-up never waits for a queue of any size.
struct Startup {
    rx: mpsc::Receiver<Vec<Loaded>>,
    /// Messages removed by an attempt during the load.
    gone: HashSet<Key>,
    started: std::time::Instant,
    loaded: usize,
}

impl Startup {
    /// Start reading the queue directory in the background.
    fn spawn(spool: Spool, shutdown: CancellationToken) -> Startup {
        // Two batches in flight at most: the load never runs far ahead of the scheduler.
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            tokio::select! {
                () = load_existing(spool, tx) => {}
                () = shutdown.cancelled() => {}
            }
        });
        Startup {
            rx,
            gone: HashSet::new(),
            started: std::time::Instant::now(),
            loaded: 0,
        }
    }

    /// Take a batch into the tracker.
    fn admit(&mut self, tracker: &mut Tracker, batch: Vec<Loaded>) {
        for m in batch {
            if !self.gone.contains(&m.id) {
                tracker.admit(m.id, m.mtime, &m.seen);
                self.loaded += 1;
            }
        }
    }

    /// The load is over.
    fn done(self, tracker: &Tracker) {
        info!(
            loaded = self.loaded,
            messages = tracker.messages.len(),
            due = tracker.waiting.len(),
            took_ms = self.started.elapsed().as_millis() as u64,
            "queue: existing messages loaded"
        );
    }
}

/// Read every committed message in the queue directory, [`LOAD_BATCH`] at a time off the
/// reactor, and send them to the scheduler. A damaged entry (an envelope that is not one) is
/// quarantined here rather than at start-up, so that opening the spool stays cheap.
async fn load_existing(spool: Spool, tx: mpsc::Sender<Vec<Loaded>>) {
    let listed = {
        let spool = spool.clone();
        tokio::task::spawn_blocking(move || {
            spool
                .list()
                .map(|ids| ids.iter().map(QueueId::to_bits).collect::<Vec<Key>>())
        })
        .await
    };
    let ids = match listed {
        Ok(Ok(ids)) => ids,
        Ok(Err(e)) => {
            warn!(error = %e, "queue: cannot list the queue directory; loading nothing");
            return;
        }
        Err(e) => {
            warn!(error = %e, "queue: listing task failed; loading nothing");
            return;
        }
    };
    for chunk in ids.chunks(LOAD_BATCH) {
        let chunk = chunk.to_vec();
        let spool = spool.clone();
        let Ok(batch) = tokio::task::spawn_blocking(move || load_batch(&spool, &chunk)).await
        else {
            warn!("queue: load task failed; its messages wait for the next start");
            continue;
        };
        if tx.send(batch).await.is_err() {
            return;
        }
    }
}

/// [`load_existing`]'s blocking part for one batch.
fn load_batch(spool: &Spool, ids: &[Key]) -> Vec<Loaded> {
    let mut batch = Vec::with_capacity(ids.len());
    for &key in ids {
        let id = QueueId::from_bits(key);
        // The mtime is taken before the read: a change in between shows in the first rescan.
        match spool.load_envelope_stamped(&id) {
            Ok((env, mtime)) => batch.push(Loaded {
                id: key,
                mtime,
                seen: Seen::of(&env),
            }),
            Err(SpoolError::Invalid { message, .. }) => {
                if let Err(e) = spool.quarantine_entry(&id, &message) {
                    warn!(queue_id = %id, error = %e, "queue: cannot quarantine damaged entry");
                }
            }
            // Delivered or deleted since the listing.
            Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            }
            Err(e) => {
                // Not proof of damage: tracked without a due time, and with no modification
                // time, so that every rescan tries it again.
                warn!(queue_id = %id, error = %e, "queue: cannot read envelope");
                batch.push(Loaded {
                    id: key,
                    mtime: None,
                    seen: Seen::NOTHING,
                });
            }
        }
    }
    batch
}

/// Rescan the queue directory: re-read changed envelopes, forget removed ones. With `sync`,
/// first fsync the directory so that the removals since the last scan survive a crash. New
/// messages are not taken here: they are announced once committed (see the module doc).
async fn scan(shared: &Arc<Shared>, tracker: &mut Tracker, sync: bool) {
    // What the tracker knows, copied in slices with a yield between them: a million
    // messages must not hold this worker thread for the whole copy.
    let mut known: Vec<(Key, Option<SystemTime>)> = Vec::with_capacity(tracker.messages.len());
    for (i, (id, t)) in tracker.messages.iter().enumerate() {
        if !t.running {
            known.push((*id, t.mtime));
        }
        if i % 65_536 == 65_535 {
            tokio::task::yield_now().await;
        }
    }
    let spool = shared.spool.clone();
    let listing = tokio::task::spawn_blocking(move || {
        if sync && let Err(e) = spool.sync() {
            warn!(error = %e, "queue: cannot fsync the queue directory");
        }
        scan_blocking(&spool, known)
    })
    .await;
    let Ok(Ok((gone, changed))) = listing else {
        warn!("queue: cannot scan the queue directory");
        return;
    };
    for id in gone {
        tracker.forget(id);
    }
    for (id, mtime, seen) in changed {
        // Only messages still known: one announced meanwhile is newer than this read.
        if tracker.messages.contains_key(&id) {
            tracker.update(id, seen.due, Some(mtime));
            tracker.note(id, seen.received_at, seen.open);
        }
    }
}

/// What a scan read from one envelope.
struct Seen {
    due: Option<u64>,
    received_at: Option<u64>,
    /// Recipients pending or deferred.
    open: usize,
}

impl Seen {
    /// An envelope that could not be read.
    const NOTHING: Seen = Seen {
        due: None,
        received_at: None,
        open: 0,
    };

    /// What the scheduler needs of an envelope.
    fn of(env: &Envelope) -> Seen {
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
}

/// The known messages no longer on disk, and those whose envelope changed (re-read).
type ScanResult = (Vec<Key>, Vec<(Key, SystemTime, Seen)>);

/// [`scan`]'s blocking part: `known` sorted and searched in place, so that a scan of a million
/// messages needs no table beside it.
fn scan_blocking(
    spool: &Spool,
    mut known: Vec<(Key, Option<SystemTime>)>,
) -> Result<ScanResult, SpoolError> {
    known.sort_unstable_by_key(|(id, _)| *id);
    let mut present = vec![false; known.len()];
    let mut changed = Vec::new();
    spool.visit_dirs(|dir| {
        let entries = std::fs::read_dir(dir).map_err(|source| SpoolError::Io {
            path: dir.to_path_buf(),
            step: "read directory",
            source,
        })?;
        scan_dir(spool, entries, &known, &mut present, &mut changed);
        Ok(())
    })?;
    let gone = known
        .iter()
        .zip(&present)
        .filter(|(_, here)| !**here)
        .map(|((id, _), _)| *id)
        .collect();
    Ok((gone, changed))
}

/// [`scan_blocking`] over one directory's entries.
fn scan_dir(
    spool: &Spool,
    entries: std::fs::ReadDir,
    known: &[(Key, Option<SystemTime>)],
    present: &mut [bool],
    changed: &mut Vec<(Key, SystemTime, Seen)>,
) {
    for entry in entries.flatten() {
        // `ID.q` files only, as `Spool::list` takes them.
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(crate::queue::spool::id_of_file_name) else {
            continue;
        };
        // Not known: a message being committed (announced once it is), or one whose commit
        // failed (its client got 451, and the session removes it), or one an attempt is
        // delivering.
        let Ok(i) = known.binary_search_by_key(&id.to_bits(), |(k, _)| *k) else {
            continue;
        };
        present[i] = true;
        // Relative to the open directory: no path walk per file.
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
        if known[i].1 != Some(mtime) {
            let seen = match spool.load_envelope(&id) {
                Ok(env) => Seen::of(&env),
                Err(e) => {
                    warn!(queue_id = %id, error = %e, "queue: unreadable envelope skipped");
                    Seen::NOTHING
                }
            };
            changed.push((known[i].0, mtime, seen));
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

/// One group per destination (the domain in MX mode, one for everything otherwise): its key,
/// its recipients and their DSN parameters in the same order.
type Group = (String, Vec<String>, Vec<RcptParams>);

fn group_by_destination(mode: RelayMode, due: Vec<&Recipient>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for r in due {
        let key = match mode {
            // One destination for every recipient.
            RelayMode::Smarthost | RelayMode::Capture => String::new(),
            RelayMode::Mx => domain_of(&r.address),
        };
        let params = RcptParams {
            notify: r.notify,
            orcpt: r.orcpt.clone(),
        };
        match groups.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, list, dsn)) => {
                list.push(r.address.clone());
                dsn.push(params);
            }
            None => groups.push((key, vec![r.address.clone()], vec![params])),
        }
    }
    groups
}

/// Messages up to this size are read whole before an attempt (one piece of delivery's reads).
const PRELOAD_LIMIT: u64 = 256 << 10;

/// One delivery attempt of one message; returns the IDs of bounces it queued, where the
/// message stands, and what polite delivery must know (destinations postponed and released).
async fn attempt(
    shared: &Arc<Shared>,
    id: &QueueId,
    forced: bool,
) -> (Vec<QueueId>, After, Polite) {
    let spool = shared.spool.clone();
    let loaded = {
        let id = id.clone();
        // The envelope and an open handle on the message: delivery reads a large one in
        // pieces; a small one is read here, in this blocking task, whole.
        tokio::task::spawn_blocking(move || {
            let (env, mut message) = spool.open_message(&id)?;
            message
                .preload(PRELOAD_LIMIT)
                .map_err(|e| crate::queue::SpoolError::Io {
                    path: spool.path(&id),
                    step: "read",
                    source: e,
                })?;
            Ok::<_, crate::queue::SpoolError>((env, message))
        })
        .await
    };
    let (env, message) = match loaded {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            // Deleted meanwhile (`queue delete`), or unreadable: nothing to do now.
            info!(queue_id = %id, error = %e, "queue: message not loaded");
            return (Vec::new(), After::Unknown, Polite::default());
        }
        Err(e) => {
            warn!(queue_id = %id, error = %e, "queue: load task failed");
            return (Vec::new(), After::Unknown, Polite::default());
        }
    };
    // Re-read just now: a `queue hold` since the last scan wins over the scan's due time.
    if env.held {
        info!(queue_id = %id, "queue: message on hold, not attempted");
        // The next scan reads it again and finds no due time.
        return (Vec::new(), After::Unknown, Polite::default());
    }
    let now = unix_now();
    let due: Vec<&Recipient> = env
        .recipients
        .iter()
        .filter(|r| match r.state {
            RecipientState::Pending => true,
            RecipientState::Deferred => forced || r.next_attempt.unwrap_or(0) <= now,
            _ => false,
        })
        .collect();
    if due.is_empty() {
        let (bounces, after) = finish(shared, id, Vec::new()).await;
        return (bounces, after, Polite::default());
    }
    let (admitted, postpone) = admit(shared, group_by_destination(shared.mode, due));
    if admitted.is_empty() {
        let polite = Polite {
            postpone,
            released: Vec::new(),
        };
        return (Vec::new(), After::Postponed, polite);
    }
    let released = admitted
        .iter()
        .filter_map(|(p, _, _)| p.as_ref().map(|p| p.destination().to_string()))
        .collect();
    let outcomes = deliver_groups(shared, id, Arc::new(env), Arc::new(message), admitted).await;
    let (bounces, after) = finish(shared, id, outcomes).await;
    (bounces, after, Polite { postpone, released })
}

/// A group with its destination's permit (`None` in capture mode, which has no
/// destination to spare).
type Admitted = Vec<(Option<Permit>, Vec<String>, Vec<RcptParams>)>;

/// The groups whose destination takes an attempt now, and when to try the others.
fn admit(shared: &Arc<Shared>, groups: Vec<Group>) -> (Admitted, Option<Postpone>) {
    let mut admitted = Vec::new();
    let mut postpone: Option<Postpone> = None;
    for (domain, rcpts, dsn) in groups {
        let destination = match shared.mode {
            RelayMode::Capture => {
                admitted.push((None, rcpts, dsn));
                continue;
            }
            RelayMode::Smarthost => shared.smarthost.as_str(),
            RelayMode::Mx => domain.as_str(),
        };
        match shared.destinations.try_start(destination) {
            Ok(permit) => admitted.push((Some(permit), rcpts, dsn)),
            Err(wait) => {
                let (until, park) = match wait {
                    Wait::Busy => (
                        unix_now() + polite::PARK_FALLBACK,
                        Some(destination.to_string()),
                    ),
                    Wait::Until(t) => (t, None),
                };
                let p = postpone.get_or_insert(Postpone { until, park: None });
                p.until = p.until.min(until);
                if p.park.is_none() {
                    p.park = park;
                }
            }
        }
    }
    (admitted, postpone)
}

/// Deliver each admitted group (in parallel when there are several); every outcome.
async fn deliver_groups(
    shared: &Arc<Shared>,
    id: &QueueId,
    env: Arc<Envelope>,
    message: Arc<super::spool::StoredMessage>,
    mut groups: Admitted,
) -> Vec<(String, Outcome)> {
    let deliver_group = |permit: Option<Permit>, rcpts: Vec<String>, rcpt_dsn: Vec<RcptParams>| {
        let shared = shared.clone();
        let message = message.clone();
        let env = env.clone();
        let id = id.clone();
        async move {
            let _slot = shared.connections.acquire().await;
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
                dsn: JobDsn {
                    ret: env.ret,
                    envid: env.envid.as_deref(),
                    rcpts: &rcpt_dsn,
                },
                requiretls: env.requiretls,
                tls_optional: env.tls_optional,
            };
            let outcomes = shared.courier.deliver(&job).await;
            shared.metrics.delivery_attempt(started.elapsed());
            if let Some(permit) = &permit {
                judge(&shared, permit, &outcomes);
            }
            outcomes
        }
    };
    let mut outcomes = Vec::new();
    if groups.len() == 1 {
        // The common case needs no extra task.
        let (permit, rcpts, dsn) = groups.remove(0);
        outcomes = deliver_group(permit, rcpts, dsn).await;
    } else {
        let mut tasks = JoinSet::new();
        for (permit, rcpts, dsn) in groups {
            tasks.spawn(deliver_group(permit, rcpts, dsn));
        }
        while let Some(result) = tasks.join_next().await {
            match result {
                Ok(list) => outcomes.extend(list),
                Err(e) => warn!(queue_id = %id, error = %e, "queue: delivery task failed"),
            }
        }
    }
    outcomes
}

/// Tell polite delivery what an attempt's outcomes say about its destination: a throttle
/// reply ([`polite::is_throttle`]) slows it down, a delivery helps it recover.
fn judge(shared: &Shared, permit: &Permit, outcomes: &[(String, Outcome)]) {
    let throttled = outcomes
        .iter()
        .any(|(_, o)| matches!(o, Outcome::Deferred { reply, .. } if polite::is_throttle(reply)));
    let verdict = if throttled {
        Verdict::Throttled
    } else if outcomes
        .iter()
        .any(|(_, o)| matches!(o, Outcome::Delivered { .. }))
    {
        Verdict::Success
    } else {
        Verdict::Other
    };
    if let Some((until, limit)) = shared.destinations.record(permit, verdict) {
        shared.metrics.throttle_event();
        warn!(
            destination = %Escaped(permit.destination()),
            until,
            concurrency = limit,
            "queue: destination throttled us; holding its messages"
        );
    }
}

/// `submitd_destination_*` as of now.
fn destination_gauges(shared: &Shared) {
    let configured = shared.destinations.settings().concurrency;
    let states = shared.destinations.snapshot();
    let gauges = states
        .iter()
        .map(|d| crate::metrics::DestinationGauge {
            name: &d.destination,
            held: d.held_until.is_some(),
            throttled: d.throttled(configured),
            limit: d.limit,
            in_flight: d.in_flight,
        })
        .collect();
    shared.metrics.destinations(gauges);
}

/// What an attempt tells polite delivery.
#[derive(Debug, Default)]
struct Polite {
    /// Some destinations could not take the attempt: try again then.
    postpone: Option<Postpone>,
    /// Destinations this attempt held a permit for (now released): parked messages behind
    /// them may go.
    released: Vec<String>,
}

/// When to try a message again whose destination did not take it.
#[derive(Debug)]
struct Postpone {
    /// Unix second: the end of a hold, a rate slot, or [`polite::PARK_FALLBACK`].
    until: u64,
    /// Parked behind this full destination: woken as soon as an attempt to it ends.
    park: Option<String>,
}

impl Tracker {
    /// After an attempt: postpone what its destinations did not take (parking it behind a
    /// full one, unless that one has room again already), and wake the messages parked behind
    /// the destinations it released, as many as they have room for.
    fn polite(&mut self, id: Key, polite: Polite, destinations: &Destinations) {
        let now = unix_now();
        if let Some(p) = polite.postpone {
            let mut until = p.until;
            if let Some(dest) = p.park {
                // Checked here, in the loop that processes the releases: no wake-up is lost.
                if destinations.room(&dest) > 0 {
                    until = now;
                } else if let Some(t) = self.messages.get_mut(&id)
                    && !t.parked
                {
                    t.parked = true;
                    self.parking.entry(dest).or_default().push_back(id);
                }
            }
            self.postpone_to(id, until);
        }
        for dest in polite.released {
            match destinations.held_until(&dest) {
                // Held meanwhile: what is parked behind it waits for the end of the hold.
                Some(until) => self.wake_at(&dest, until),
                None => {
                    let room = destinations.room(&dest);
                    self.wake(&dest, room, now);
                }
            }
        }
    }

    /// A waiting message's due time moved to `until` (never earlier than it was).
    fn postpone_to(&mut self, id: Key, until: u64) {
        let Some(t) = self.messages.get_mut(&id) else {
            return;
        };
        let Some(old) = t.due.filter(|_| !t.running) else {
            return;
        };
        let new = old.max(until);
        if new != old && self.waiting.remove(&(old, id)) {
            self.waiting.insert((new, id));
            t.due = Some(new);
        }
    }

    /// Every message parked behind `dest` due at `until` (the end of its hold), unparked.
    fn wake_at(&mut self, dest: &str, until: u64) {
        let Some(queue) = self.parking.remove(dest) else {
            return;
        };
        for id in queue {
            unpark(&mut self.messages, &mut self.waiting, id, until);
        }
    }

    /// Make up to `room` messages parked behind `dest` due now.
    fn wake(&mut self, dest: &str, room: usize, now: u64) {
        let Some(queue) = self.parking.get_mut(dest) else {
            return;
        };
        let mut woken = 0;
        while woken < room {
            let Some(id) = queue.pop_front() else {
                break;
            };
            if unpark(&mut self.messages, &mut self.waiting, id, now) {
                woken += 1;
            }
        }
        if queue.is_empty() {
            self.parking.remove(dest);
        }
    }
}

/// Make one parked message due at `at`; whether it was parked and waiting (a running or
/// vanished one is left alone).
fn unpark(
    messages: &mut HashMap<Key, Tracked>,
    waiting: &mut BTreeSet<(u64, Key)>,
    id: Key,
    at: u64,
) -> bool {
    let Some(t) = messages.get_mut(&id) else {
        return false;
    };
    if !t.parked || t.running {
        return false;
    }
    t.parked = false;
    match t.due {
        Some(old) if waiting.remove(&(old, id)) => {
            waiting.insert((at, id));
            t.due = Some(at);
            true
        }
        _ => false,
    }
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
    let mut events = Vec::new();
    let reports = record_outcomes(shared, id, &mut env, outcomes, now, &mut events);
    let mut bounces = Vec::new();
    for report in reports.into_iter().filter(|r| !r.is_empty()) {
        if env.sender.is_empty() {
            // Never bounce a bounce (RFC 3464 section 2; DESIGN.md), nor report on one.
            if report[0].action == Action::Failed {
                warn!(queue_id = %id, rcpts = report.len(), "queue: bounce undeliverable, dropped");
            }
            continue;
        }
        let bounce_id = bounce::queue(spool, &shared.hostname, id, &env, &report, now)?;
        let action = format!("{:?}", report[0].action).to_lowercase();
        info!(queue_id = %id, bounce = %bounce_id, to = %Escaped(&env.sender), action, "queue: DSN queued");
        bounces.push(bounce_id);
    }
    // Events, like reports, before the state that causes them.
    shared.events.record_blocking(&events);
    // The reports are stored before the state that causes them (a crash in between sends a
    // report twice, never not at all; `warned` then keeps a delay warning from repeating).
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
/// recipients to report on, one list per DSN kind (failed, delayed, relayed; RFC 3461 NOTIFY
/// decides who is reported). A deferral past `queue.max_age` fails as expired.
fn record_outcomes(
    shared: &Shared,
    id: &QueueId,
    env: &mut Envelope,
    outcomes: Vec<(String, Outcome)>,
    now: u64,
    events: &mut Vec<DeliveryEvent>,
) -> [Vec<FailedRecipient>; 3] {
    let age = now.saturating_sub(env.received_at);
    let expired = age >= shared.max_age.as_secs();
    let warn_after = shared.delay_warning.map(|d| d.as_secs());
    let (mut failed, mut delayed, mut relayed) = (Vec::new(), Vec::new(), Vec::new());
    // What every event of this message carries (read before the recipients are borrowed).
    let base = (!shared.events.is_empty()).then(|| EventBase::of(env));
    for (address, outcome) in outcomes {
        let Some(r) = env.recipients.iter_mut().find(|r| {
            r.address == address
                && matches!(r.state, RecipientState::Pending | RecipientState::Deferred)
        }) else {
            continue;
        };
        r.attempts += 1;
        let report = |status: String, reply: &str, host: &Option<String>, action| FailedRecipient {
            address: address.clone(),
            status,
            diagnostic: reply.to_string(),
            remote_mta: host.clone(),
            action,
            orcpt: r.orcpt.clone(),
        };
        let mut delayed_now = false;
        let mut bounce_status = String::new();
        let (status, relay, reply) = match outcome {
            Outcome::Delivered {
                host,
                reply,
                dsn_passed,
            } => {
                // RFC 3461 5.2: a next hop with DSN got the NOTIFY and reports from now on.
                if !dsn_passed && dsn::wants_success(r.notify) {
                    let host = Some(host.clone());
                    relayed.push(report("2.0.0".into(), &reply, &host, Action::Relayed));
                }
                set(r, RecipientState::Delivered, None, &reply);
                ("sent", Some(host), reply)
            }
            Outcome::Failed {
                host,
                reply,
                status,
            } => {
                bounce_status.clone_from(&status);
                if dsn::wants_failure(r.notify) {
                    failed.push(report(status, &reply, &host, Action::Failed));
                }
                set(r, RecipientState::Failed, None, &reply);
                ("bounced", host, reply)
            }
            Outcome::Deferred { host, reply } if expired => {
                bounce_status = bounce::EXPIRED.into();
                if dsn::wants_failure(r.notify) {
                    let status = bounce::EXPIRED.into();
                    failed.push(report(status, &reply, &host, Action::Failed));
                }
                set(r, RecipientState::Failed, None, &reply);
                ("expired", host, reply)
            }
            Outcome::Deferred { host, reply } => {
                // One warning per recipient, once the message is older than the delay.
                if warn_after.is_some_and(|w| age >= w) && !r.warned && dsn::wants_delay(r.notify) {
                    let status = bounce::deferred_status(&reply);
                    delayed.push(report(status, &reply, &host, Action::Delayed));
                    r.warned = true;
                    delayed_now = true;
                }
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
        if let Some(base) = &base {
            let event = base.event(id, r, &address, relay, now);
            base.push(events, event, status, bounce_status, delayed_now);
        }
    }
    [failed, delayed, relayed]
}

/// What the delivery events of one message share ([`record_outcomes`]).
struct EventBase {
    user: String,
    tenant: String,
    envid: Option<String>,
    metadata: BTreeMap<String, String>,
}

impl EventBase {
    fn of(env: &Envelope) -> EventBase {
        EventBase {
            user: env.user.clone(),
            tenant: env.tenant().to_owned(),
            envid: env.envid.clone(),
            metadata: env
                .origin
                .as_ref()
                .map(|o| o.metadata.clone())
                .unwrap_or_default(),
        }
    }

    /// The event of recipient `r` after its state was set (kind and status filled by
    /// [`EventBase::push`]).
    fn event(
        &self,
        id: &QueueId,
        r: &Recipient,
        address: &str,
        host: Option<String>,
        now: u64,
    ) -> DeliveryEvent {
        DeliveryEvent {
            kind: EventKind::Deferred,
            queue_id: id.to_string(),
            user: self.user.clone(),
            tenant: self.tenant.clone(),
            recipient: address.to_owned(),
            reply: r.last_reply.clone().unwrap_or_default(),
            status: None,
            host,
            attempt: r.attempts,
            at: now,
            envid: self.envid.clone(),
            metadata: self.metadata.clone(),
        }
    }

    /// The event for the logged `status` (`sent`, `deferred`, `bounced`, `expired`), and a
    /// `delayed` one too when the delay warning went out now.
    fn push(
        &self,
        events: &mut Vec<DeliveryEvent>,
        mut event: DeliveryEvent,
        status: &str,
        bounce_status: String,
        delayed_now: bool,
    ) {
        event.kind = match status {
            "sent" => EventKind::Delivered,
            "deferred" => EventKind::Deferred,
            _ => EventKind::Bounced,
        };
        if event.kind == EventKind::Bounced {
            event.status = Some(bounce_status);
        }
        if delayed_now {
            let mut delayed = event.clone();
            delayed.kind = EventKind::Delayed;
            events.push(event);
            events.push(delayed);
        } else {
            events.push(event);
        }
    }
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
    let mtime = spool.save_envelope(env)?;
    if due.is_some_and(|due| due > crate::clock::unix_now()) {
        // Waits for a later attempt: out of the top directory, where new mail comes and
        // goes. A failed move leaves it where it is, which is as good a place to wait.
        if let Err(e) = spool.move_to_deferred(id, lock) {
            warn!(queue_id = %id, error = %e, "queue: cannot move to the deferred directory");
        }
    }
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
            notify: None,
            orcpt: None,
            warned: false,
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
            ret: None,
            envid: None,
            requiretls: false,
            tls_optional: false,
            origin: None,
        };
        assert_eq!(env.next_due(), Some(20));
        env.recipients.push(rcpt(RecipientState::Pending, None));
        assert_eq!(env.next_due(), Some(0));
        env.recipients = vec![rcpt(RecipientState::Failed, None)];
        assert_eq!(env.next_due(), None);
    }

    #[test]
    fn tracker_starts_earliest_due_first_and_skips_running() {
        let ids: Vec<Key> = (0..4).map(|_| QueueId::generate().to_bits()).collect();
        let mut t = Tracker::default();
        t.update(ids[0], Some(30), None);
        t.update(ids[1], Some(10), None);
        t.update(ids[2], None, None);
        t.announce(ids[3]);
        // Announcing a known message changes nothing.
        t.announce(ids[0]);
        assert_eq!(t.start_next(20).map(|(id, _)| id), Some(ids[3]));
        assert_eq!(t.start_next(20).map(|(id, _)| id), Some(ids[1]));
        assert_eq!(
            t.start_next(20).map(|(id, _)| id),
            None,
            "ids[0] is not due before 30"
        );
        // A scan's view of a running message is ignored; its result is not.
        t.update(ids[1], Some(0), None);
        assert_eq!(t.start_next(20).map(|(id, _)| id), None);
        t.finished(
            ids[1],
            After::Saved {
                due: Some(25),
                mtime: None,
                open: 1,
            },
        );
        t.finished(ids[3], After::Removed);
        assert!(!t.messages.contains_key(&ids[3]));
        assert_eq!(t.start_next(40).map(|(id, _)| id), Some(ids[1]));
        assert_eq!(t.start_next(40).map(|(id, _)| id), Some(ids[0]));
        assert_eq!(t.start_next(40).map(|(id, _)| id), None);
        t.finished(ids[0], After::Unknown);
        assert_eq!(t.messages[&ids[0]].due, None);
        // Forgetting a running message waits for its result.
        t.forget(ids[1]);
        assert!(t.messages.contains_key(&ids[1]));
        t.forget(ids[2]);
        assert!(!t.messages.contains_key(&ids[2]));
        assert_eq!(t.waiting.len(), 0);
    }

    #[test]
    fn postponed_messages_park_behind_a_full_destination_and_wake_when_it_frees() {
        use crate::config::PoliteSettings;
        let dests = Destinations::new(PoliteSettings {
            concurrency: 1,
            ..PoliteSettings::default()
        });
        // Sorted: the tracker takes equal due times by id, and two ids made in the same
        // microsecond order by their random part.
        let mut ids: Vec<Key> = (0..3).map(|_| QueueId::generate().to_bits()).collect();
        ids.sort();
        let mut t = Tracker::default();
        for id in &ids {
            t.announce(*id);
        }
        let now = unix_now();
        let running = dests.try_start("big.test").unwrap();
        // Two messages find big.test full: parked, due only at the fallback.
        for id in &ids[..2] {
            assert_eq!(t.start_next(now).map(|(k, _)| k), Some(*id));
            t.finished(*id, After::Postponed);
            let postpone = Some(Postpone {
                until: now + polite::PARK_FALLBACK,
                park: Some("big.test".into()),
            });
            t.polite(
                *id,
                Polite {
                    postpone,
                    released: Vec::new(),
                },
                &dests,
            );
            assert!(t.messages[id].parked);
            assert_eq!(t.messages[id].due, Some(now + polite::PARK_FALLBACK));
        }
        // The third is not behind anything.
        assert_eq!(t.start_next(now).map(|(k, _)| k), Some(ids[2]));
        assert_eq!(t.start_next(now + 1), None, "parked messages wait");
        // The attempt to big.test ends: one of them (room for one) is due now.
        drop(running);
        let released = Polite {
            postpone: None,
            released: vec!["big.test".into()],
        };
        t.polite(ids[2], released, &dests);
        assert_eq!(t.start_next(now + 1).map(|(k, _)| k), Some(ids[0]));
        assert_eq!(t.start_next(now + 1), None);
        assert!(t.messages[&ids[1]].parked);
        assert_eq!(t.parking["big.test"].len(), 1);
    }

    #[test]
    fn flush_makes_later_messages_due_and_forced_once() {
        // Sorted: the tracker takes equal due times by id, and two ids made in the same
        // microsecond order by their random part.
        let mut ids: Vec<Key> = (0..3).map(|_| QueueId::generate().to_bits()).collect();
        ids.sort();
        let mut t = Tracker::default();
        t.update(ids[0], Some(3600), None);
        t.update(ids[1], None, None); // held or done: nothing to attempt
        t.update(ids[2], Some(5), None); // due already
        assert_eq!(t.start_next(10), Some((ids[2], false)));
        assert_eq!(t.start_next(10), None);
        assert_eq!(t.flush(10), 1);
        assert_eq!(t.start_next(10), Some((ids[0], true)));
        assert_eq!(
            t.start_next(10),
            None,
            "a message without a due time stays put"
        );
        // The next attempt after a normal deferral is not forced again.
        t.finished(
            ids[0],
            After::Saved {
                due: Some(10),
                mtime: None,
                open: 1,
            },
        );
        assert_eq!(t.start_next(10), Some((ids[0], false)));
    }

    #[test]
    fn domains_group_case_insensitively() {
        assert_eq!(domain_of("a@Example.TEST"), "example.test");
        assert_eq!(domain_of("\"x@y\"@z.test"), "z.test");
        assert_eq!(domain_of("postmaster"), "");
    }
    #[test]
    fn gauges_follow_every_change() {
        let mut t = Tracker::default();
        let seen = |due, at, open| Seen {
            due,
            received_at: Some(at),
            open,
        };
        t.admit(1, None, &seen(Some(5), 100, 2));
        t.admit(2, None, &seen(None, 50, 1));
        t.admit(3, None, &seen(Some(7), 50, 3));
        // Known already: the load's older view is dropped.
        t.admit(1, None, &seen(Some(0), 10, 9));
        assert_eq!(t.gauges(), (3, 6, Some(50)));
        t.forget(2);
        assert_eq!(t.gauges(), (2, 5, Some(50)));
        assert_eq!(t.start_next(10), Some((1, false)));
        t.finished(
            1,
            After::Saved {
                due: Some(20),
                mtime: None,
                open: 1,
            },
        );
        assert_eq!(t.gauges(), (2, 4, Some(50)));
        t.forget(3);
        assert_eq!(t.gauges(), (1, 1, Some(100)));
        assert_eq!(t.start_next(30), Some((1, false)));
        t.finished(1, After::Removed);
        assert_eq!(t.gauges(), (0, 0, None));
        assert!(t.waiting.is_empty() && t.arrivals.is_empty());
    }

    #[test]
    fn load_takes_good_entries_and_quarantines_damaged_ones() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let store = || {
            let id = QueueId::generate();
            let mut env = Envelope::new(&id, "u", "s@x.test", &["r@y.test".into()], "h", 77);
            env.size = 3;
            spool.store_blocking(&env, b"m\r\n").unwrap();
            id
        };
        let (good, bad) = (store(), store());
        std::fs::write(spool.path(&bad), b"SUBMITDQ{not an envelope").unwrap();
        let gone = QueueId::generate();
        let batch = load_batch(&spool, &[good.to_bits(), bad.to_bits(), gone.to_bits()]);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].id, good.to_bits());
        assert_eq!(batch[0].seen.due, Some(0));
        assert_eq!(batch[0].seen.received_at, Some(77));
        assert!(batch[0].mtime.is_some());
        assert_eq!(spool.list().unwrap(), vec![good]);
        assert!(
            std::fs::read_dir(spool.quarantine_dir()).unwrap().count() > 0,
            "the damaged entry is kept in quarantine"
        );
    }

    /// The tracker's specification, written the obvious way: a scan of every message.
    #[derive(Debug, Default)]
    struct Model {
        messages: BTreeMap<Key, ModelEntry>,
    }

    #[derive(Debug, Default)]
    struct ModelEntry {
        due: Option<u64>,
        running: bool,
        forced: bool,
        received_at: Option<u64>,
        open: usize,
        announced: bool,
    }

    impl Model {
        fn update(&mut self, id: Key, due: Option<u64>) {
            let e = self.messages.entry(id).or_default();
            if !e.running {
                e.due = due;
            }
        }
        fn note(&mut self, id: Key, at: Option<u64>, open: usize) {
            if let Some(e) = self.messages.get_mut(&id) {
                e.received_at = at.or(e.received_at);
                e.open = open;
            }
        }
        fn forget(&mut self, id: Key) {
            if self.messages.get(&id).is_some_and(|e| !e.running) {
                self.messages.remove(&id);
            }
        }
        fn start_next(&mut self, now: u64) -> Option<(Key, bool)> {
            let (due, id) = self
                .messages
                .iter()
                .filter(|(_, e)| !e.running)
                .filter_map(|(id, e)| Some((e.due?, *id)))
                .min()?;
            if due > now {
                return None;
            }
            let e = self.messages.get_mut(&id)?;
            e.running = true;
            Some((id, std::mem::take(&mut e.forced)))
        }
        fn flush(&mut self, now: u64) -> usize {
            let mut n = 0;
            for e in self.messages.values_mut() {
                if !e.running && e.due.is_some_and(|d| d > now) {
                    e.due = Some(now);
                    e.forced = true;
                    n += 1;
                }
            }
            n
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Announce(Key),
        Admit(Key, Option<u64>, u64, usize),
        Update(Key, Option<u64>),
        Forget(Key),
        Start(u64),
        Flush(u64),
        /// Finish the n-th running message: removed (0), saved with a due time (1), unknown (2).
        Finish(usize, u8, Option<u64>, usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let key = 0u128..8;
        let due = proptest::option::of(0u64..60);
        prop_oneof![
            key.clone().prop_map(Op::Announce),
            (key.clone(), due.clone(), 0u64..40, 0usize..4)
                .prop_map(|(k, d, at, open)| Op::Admit(k, d, at, open)),
            (key.clone(), due.clone()).prop_map(|(k, d)| Op::Update(k, d)),
            key.prop_map(Op::Forget),
            (0u64..60).prop_map(Op::Start),
            (0u64..60).prop_map(Op::Flush),
            (0usize..8, 0u8..3, due, 0usize..4).prop_map(|(i, w, d, o)| Op::Finish(i, w, d, o)),
        ]
    }

    /// Apply one operation to both; panics when they answer differently.
    fn step(t: &mut Tracker, m: &mut Model, op: Op) {
        match op {
            Op::Announce(k) => {
                t.announce(k);
                if !m.messages.contains_key(&k) {
                    m.update(k, Some(0));
                    m.messages.entry(k).or_default().announced = true;
                }
            }
            Op::Admit(k, due, at, open) => {
                let seen = Seen {
                    due,
                    received_at: Some(at),
                    open,
                };
                t.admit(k, None, &seen);
                if !m.messages.contains_key(&k) {
                    m.update(k, due);
                    m.note(k, Some(at), open);
                }
            }
            Op::Update(k, due) => {
                t.update(k, due, None);
                m.update(k, due);
            }
            Op::Forget(k) => {
                t.forget(k);
                m.forget(k);
            }
            Op::Start(now) => assert_eq!(t.start_next(now), m.start_next(now)),
            Op::Flush(now) => assert_eq!(t.flush(now), m.flush(now)),
            Op::Finish(i, what, due, open) => {
                let running: Vec<Key> = m
                    .messages
                    .iter()
                    .filter(|(_, e)| e.running)
                    .map(|(k, _)| *k)
                    .collect();
                let Some(&k) = running.get(i % running.len().max(1)) else {
                    return;
                };
                if let Some(e) = m.messages.get_mut(&k) {
                    e.running = false;
                }
                let after = match what {
                    0 => {
                        m.forget(k);
                        After::Removed
                    }
                    1 => {
                        m.update(k, due);
                        m.note(k, None, open);
                        After::Saved {
                            due,
                            mtime: None,
                            open,
                        }
                    }
                    _ => {
                        m.update(k, None);
                        After::Unknown
                    }
                };
                t.finished(k, after);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn tracker_agrees_with_the_obvious_model(ops in proptest::collection::vec(op(), 0..80)) {
            let mut t = Tracker::default();
            let mut m = Model::default();
            for op in ops {
                step(&mut t, &mut m, op);
                let waiting: BTreeSet<(u64, Key)> = m
                    .messages
                    .iter()
                    .filter(|(_, e)| !e.running)
                    .filter_map(|(k, e)| Some((e.due?, *k)))
                    .collect();
                proptest::prop_assert_eq!(&t.waiting, &waiting);
                let (n, open, oldest) = t.gauges();
                proptest::prop_assert_eq!(n, m.messages.len());
                proptest::prop_assert_eq!(open, m.messages.values().map(|e| e.open).sum::<usize>());
                // An announced message's arrival is the clock's: compare only without one.
                if !m.messages.values().any(|e| e.announced) {
                    let model_oldest = m.messages.values().filter_map(|e| e.received_at).min();
                    proptest::prop_assert_eq!(oldest, model_oldest);
                }
            }
            // Whatever is left starts in the same order.
            loop {
                let next = t.start_next(u64::MAX);
                proptest::prop_assert_eq!(next, m.start_next(u64::MAX));
                if next.is_none() {
                    break;
                }
            }
        }
    }
}
