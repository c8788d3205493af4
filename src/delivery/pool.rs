//! Connection reuse (Postfix's connection cache): a connection whose transaction ended cleanly
//! is kept for the next message to the same destination, which then costs `MAIL`/`RCPT`/`DATA`
//! only (no TCP and TLS handshakes, no greeting, EHLO or AUTH).
//!
//! - A destination is the smarthost, or in MX mode the recipient domain (lowercased): a cached
//!   connection goes to the MX host that domain was delivered to, with the TLS already agreed.
//!   REQUIRETLS and `TLS-Required: No` messages, whose hosts and TLS differ, have destinations
//!   of their own (`super::Delivery::attempt`).
//! - Bounds: at most [`MAX_TRANSACTIONS`] messages per connection (then QUIT), at most
//!   [`MAX_IDLE`] unused in the cache (then QUIT, by a sweeper task that runs while the cache
//!   holds anything), and at most `queue.concurrency` connections open in all, busy or idle:
//!   each holds a permit, and a delivery that needs a new connection while every permit is
//!   taken closes the connection idle longest (another destination's) to get one.
//! - Most recently used first: a burst to one destination keeps its hottest connections and
//!   lets the others expire.
//!
//! Whether a cached connection still works is learnt from the `MAIL FROM` of the next
//! message: when it is not accepted (the peer closed, timed out, said 421), nothing happened
//! to the message, and `super::Delivery::attempt` opens a new connection for it at once: a
//! stale connection never costs a message a retry.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::outbound::Connection;

/// Most messages sent over one connection before it is closed.
pub const MAX_TRANSACTIONS: u32 = 100;
/// Longest a connection waits unused in the cache.
pub const MAX_IDLE: Duration = Duration::from_secs(2);
/// How often the sweeper closes expired connections.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// A connection with its place among the open connections.
pub struct Lease {
    pub conn: Connection,
    permit: OwnedSemaphorePermit,
}

impl Lease {
    /// Pair a newly opened connection with the permit taken for it.
    pub fn new(conn: Connection, permit: OwnedSemaphorePermit) -> Lease {
        Lease { conn, permit }
    }
}

/// The cache of idle connections and the bound on open ones.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    idle: Mutex<Idle>,
    /// One permit per open connection, busy or idle.
    permits: Arc<Semaphore>,
}

#[derive(Default)]
struct Idle {
    /// Oldest first.
    entries: VecDeque<Entry>,
    sweeping: bool,
}

struct Entry {
    key: String,
    lease: Lease,
    since: Instant,
}

impl Pool {
    /// A pool allowing `limit` open connections (`queue.concurrency`).
    pub fn new(limit: usize) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                idle: Mutex::new(Idle::default()),
                permits: Arc::new(Semaphore::new(limit.max(1))),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.inner.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle connection to `key`, if one is younger than [`MAX_IDLE`].
    pub fn checkout(&self, key: &str) -> Option<Lease> {
        let mut idle = self.lock();
        let now = Instant::now();
        let i = idle
            .entries
            .iter()
            .rposition(|e| e.key == key && now.duration_since(e.since) < MAX_IDLE)?;
        idle.entries.remove(i).map(|e| e.lease)
    }

    /// A permit to open one more connection; closes the connection idle longest when every
    /// permit is taken.
    pub async fn permit(&self) -> OwnedSemaphorePermit {
        loop {
            if let Ok(p) = self.inner.permits.clone().try_acquire_owned() {
                return p;
            }
            let oldest = self.lock().entries.pop_front();
            if let Some(entry) = oldest {
                let Lease { conn, permit } = entry.lease;
                drop(permit);
                tokio::spawn(conn.close());
                continue;
            }
            // Every permit is on a busy connection: wait for one to be closed or cached.
            let wait = self.inner.permits.clone().acquire_owned();
            if let Ok(Ok(p)) = tokio::time::timeout(Duration::from_millis(50), wait).await {
                return p;
            }
        }
    }

    /// Keep a connection for the next message to `key`, or close it when it is not clean or
    /// has carried [`MAX_TRANSACTIONS`] messages.
    pub async fn checkin(&self, key: String, lease: Lease) {
        if !lease.conn.is_clean() || lease.conn.transactions() >= MAX_TRANSACTIONS {
            lease.conn.close().await;
            return;
        }
        let start_sweeper = {
            let mut idle = self.lock();
            idle.entries.push_back(Entry {
                key,
                lease,
                since: Instant::now(),
            });
            !std::mem::replace(&mut idle.sweeping, true)
        };
        if start_sweeper {
            tokio::spawn(sweep(Arc::downgrade(&self.inner)));
        }
    }

    /// Close every idle connection (shutdown).
    pub async fn close_all(&self) {
        let entries: Vec<Entry> = self.lock().entries.drain(..).collect();
        let mut closing = tokio::task::JoinSet::new();
        for entry in entries {
            closing.spawn(entry.lease.conn.close());
        }
        while closing.join_next().await.is_some() {}
    }
}

/// Close expired idle connections until the cache is empty (or the pool dropped).
async fn sweep(pool: Weak<Inner>) {
    loop {
        tokio::time::sleep(SWEEP_INTERVAL).await;
        let Some(inner) = pool.upgrade() else { return };
        let now = Instant::now();
        let (expired, done) = {
            let mut idle = inner.idle.lock().unwrap_or_else(|e| e.into_inner());
            let (keep, expired): (VecDeque<Entry>, VecDeque<Entry>) = idle
                .entries
                .drain(..)
                .partition(|e| now.duration_since(e.since) < MAX_IDLE);
            idle.entries = keep;
            let done = idle.entries.is_empty();
            if done {
                idle.sweeping = false;
            }
            (expired, done)
        };
        drop(inner);
        for entry in expired {
            tokio::spawn(entry.lease.conn.close());
        }
        if done {
            return;
        }
    }
}
