//! argon2id password hashing and verification, off the async reactor and on a bounded pool,
//! with a cache of verified credentials in front ([`super::cache`]).
//!
//! The order of one AUTH, and why:
//!
//! 1. The login throttle (per address, per login): over a limit, refused before anything else,
//!    so neither argon2 nor the cache can be used to test guesses beyond the limits.
//! 2. The cache, only when it holds an unexpired entry for the login: the user is looked up
//!    as the users file has it now (re-read when changed, as for argon2) and the suspension
//!    state refreshed. A deleted or suspended user's entry is dropped and argon2 decides, as
//!    without a cache; a changed hash misses. A hit succeeds at once.
//! 3. Otherwise argon2 on the bounded pool; a success of a user who is not suspended enters
//!    the cache. A wrong password always ends here, cached login or not, and counts as a
//!    failure in the throttle exactly as without a cache.
//!
//! Step 3 is shared ("single flight"): concurrent AUTHs with the same login, stored hash and
//! password (keyed by an HMAC of the three under a per-process key, never by the plaintext)
//! wait for one argon2 run, so a connection pool opening 200 sessions at once costs one
//! verification, not 200 places in the wait queue. Throttle accounting per attempt:
//!
//! - the attempt that starts a run *reserves* it in the throttle first (counted as a failure
//!   before argon2 runs, refused if that would pass a limit), so parallel guesses cannot all
//!   pass the check before the first one fails; a success or an attempt that was not verified
//!   (queue full, waited too long) refunds it, a failure keeps it;
//! - an attempt joining a run already under way was checked against the throttle (which counts
//!   the runs in flight) but reserves nothing: it is the same guess, and runs no argon2. When
//!   the shared run fails, it counts as one more failure for its own address and the login.
//!
//! Every wait (a permit, or another attempt's run) is bounded by [`MAX_VERIFY_WAIT`]; past it
//! the attempt is [`Verdict::Busy`] (`454 4.7.0`).
//!
//! With a directory backend ([`super::directory`]) the same order holds, with the directory in
//! place of argon2 and the users file: the cache and single-flight keys use the backend's
//! marker in place of a stored hash (so a cached login lives at most `cache_ttl` after the
//! directory last said yes: revoking an account takes effect within it), and a directory that
//! cannot answer is [`Verdict::Unavailable`] (`454 4.7.0`): the throttle reservation is
//! refunded, so an outage never counts against the user.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, watch};

use super::backend::{AuthRequest, Identity, Mechanism};
use super::cache::{Clock, CredentialCache, CredentialTagger, Lookup};
use super::directory::DirectoryAuth;
use super::keys::{Key, KeyStore};
use super::senders::expand_defaults;
use super::suspend::Suspensions;
use super::throttle::{AuthThrottle, Reservation, Throttled};
use super::users::{User, UserStore};
use crate::logsafe::Escaped;

/// The longest an AUTH waits for its verification: for a permit on the argon2 pool, or for
/// the run of another attempt with the same credentials. Past it the attempt is
/// [`Verdict::Busy`] (`454 4.7.0`): well under any client's reply timeout, far over one
/// argon2 run (tens of milliseconds).
pub const MAX_VERIFY_WAIT: Duration = Duration::from_secs(10);

/// What one verification found.
#[derive(Debug, Clone)]
enum Outcome {
    /// No permit (queue full), or no outcome in time.
    Busy,
    /// The user, or `None` (unknown login or wrong password).
    Checked(Option<Arc<User>>),
    /// The directory backend could not answer (logged where it happened).
    Unavailable,
    /// The shared throttle refused the attempt that would have started the run.
    Throttled(Throttled),
}

type Running = HashMap<[u8; 32], watch::Receiver<Option<Outcome>>>;

/// Verifications under way, by credential tag; each publishes its outcome once.
#[derive(Default)]
struct Flights {
    tagger: CredentialTagger,
    running: Mutex<Running>,
}

impl Flights {
    fn running(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Takes a finished (or failed) run out of [`Flights`], also if its task panicked.
struct Landing {
    flights: Arc<Flights>,
    key: [u8; 32],
}

impl Drop for Landing {
    fn drop(&mut self) {
        self.flights.running().remove(&self.key);
    }
}

/// OWASP's argon2id recommendation (Password Storage Cheat Sheet): 19 MiB, 2 passes, 1 lane.
const M_COST_KIB: u32 = 19456;
const T_COST: u32 = 2;
const P_COST: u32 = 1;

fn hasher() -> Result<Argon2<'static>, argon2::password_hash::Error> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// argon2id with the OWASP parameters m=19456 KiB, t=2, p=1; returns a PHC string.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(hasher()?
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// A PHC string with submitd's parameters that no password is known to match: what an unknown
/// login is checked against, so it costs one argon2 run like a wrong password does.
pub fn dummy_phc() -> String {
    // A fixed salt is fine: this hash protects nothing, it only has to cost the same.
    let salt = SaltString::encode_b64(b"submitd-no-user!").expect("16-byte salt is valid");
    hasher()
        .and_then(|h| h.hash_password(b"submitd dummy password for unknown logins", &salt))
        .expect("fixed argon2 parameters and salt are valid")
        .to_string()
}

/// Verifies credentials against the user store. An unknown login is verified against a dummy
/// hash with the same parameters so that it costs the same time as a wrong password.
///
/// argon2 runs on `spawn_blocking` under a semaphore of `parallel` permits. At most `queue`
/// verifications wait for a permit; one more is refused at once ([`Verdict::Busy`]) instead of
/// queueing without bound: under a flood of AUTH, every attempt is answered promptly and the
/// memory argon2 needs (19 MiB each) stays bounded.
#[derive(Clone)]
pub struct Verifier {
    users: UserStore,
    permits: Arc<Semaphore>,
    /// Verifications waiting for a permit now, and how many may.
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    throttle: Option<Arc<AuthThrottle>>,
    suspensions: Option<Arc<Suspensions>>,
    dummy: Arc<str>,
    /// argon2 verifications run so far (tests check which paths really run one).
    verifications: Arc<AtomicU64>,
    /// Verified credentials (`[auth] cache_ttl`); `None` when off.
    cache: Option<Arc<CredentialCache>>,
    /// argon2 runs under way, joined by concurrent attempts with the same credentials.
    flights: Arc<Flights>,
    /// The directory backend, when `auth.backend` is not `"file"`.
    directory: Option<Arc<DirectoryAuth>>,
    /// Questions to the directory at once: network waits, not CPU, so more than argon2's.
    directory_permits: Arc<Semaphore>,
    /// `auth.default_senders` for users-file entries without `senders`, when it is not the
    /// default (`["{login}"]`, which the users file already applies).
    default_senders: Option<Arc<[String]>>,
    /// API keys ([`super::keys`]): a login that names one is checked here, never by argon2.
    keys: Option<Arc<KeyStore>>,
}

/// Where an AUTH comes from, besides its credentials: what a directory backend is told.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// The client's address (the real one, after PROXY protocol).
    pub ip: IpAddr,
    /// The port it connected to.
    pub local_port: u16,
}

/// The bounds and defences of a [`Verifier`] (`[limits] auth_*`).
#[derive(Debug, Clone, Default)]
pub struct VerifierLimits {
    /// argon2 verifications at once (at least 1).
    pub parallel: usize,
    /// Verifications that may wait for a permit; more are [`Verdict::Busy`].
    pub queue: usize,
    /// Failed-login counters checked before any argon2 runs.
    pub throttle: Option<Arc<AuthThrottle>>,
    /// Suspension state, re-read (when changed) beside the users file on each verification.
    pub suspensions: Option<Arc<Suspensions>>,
    /// How long a verified login is remembered (`[auth] cache_ttl`); zero = no cache.
    pub cache_ttl: Duration,
    /// The cache's time source (tests move it forward).
    pub clock: Clock,
}

/// The outcome of [`Verifier::authenticate`].
#[derive(Debug)]
pub enum Verdict {
    /// Checked (by argon2, or for a repeat login by the cache): the user, or `None` (unknown
    /// login or wrong password).
    Checked(Option<Arc<User>>),
    /// Too many failures from this address or for this login: refused without argon2.
    Throttled(Throttled),
    /// The wait queue for argon2 is full: refused without argon2.
    Busy,
    /// The directory backend could not answer: refused, not counted against the user.
    Unavailable,
}

/// A place in the wait queue, given back on drop (also when the waiting session goes away).
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Verifier {
    /// `max_parallel` bounds how many argon2 verifications run at once (spawn_blocking); the
    /// wait queue is unbounded and nothing is throttled.
    pub fn new(users: UserStore, max_parallel: usize) -> Verifier {
        Verifier::with_limits(
            users,
            VerifierLimits {
                parallel: max_parallel,
                queue: usize::MAX,
                throttle: None,
                suspensions: None,
                cache_ttl: Duration::ZERO,
                clock: Clock::system(),
            },
        )
    }

    /// A verifier with a bounded wait queue, login throttling and suspension refresh.
    pub fn with_limits(users: UserStore, limits: VerifierLimits) -> Verifier {
        // Each verification holds ~19 MiB; 0 would deadlock every AUTH, so at least one.
        let permits = limits.parallel.clamp(1, Semaphore::MAX_PERMITS);
        Verifier {
            users,
            permits: Arc::new(Semaphore::new(permits)),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting: limits.queue,
            throttle: limits.throttle,
            suspensions: limits.suspensions,
            dummy: dummy_phc().into(),
            verifications: Arc::new(AtomicU64::new(0)),
            cache: CredentialCache::new(limits.cache_ttl, limits.clock).map(Arc::new),
            flights: Arc::default(),
            directory: None,
            directory_permits: Arc::new(Semaphore::new((permits * 4).max(16))),
            default_senders: None,
            keys: None,
        }
    }

    /// Check passwords with `directory` instead of the users file, which then only adds
    /// senders and limits to the directory's users.
    pub fn with_directory(mut self, directory: DirectoryAuth) -> Verifier {
        self.directory = Some(Arc::new(directory));
        self
    }

    /// `auth.default_senders` for users-file entries that name no `senders`.
    pub fn with_default_senders(mut self, templates: &[String]) -> Verifier {
        self.default_senders = (templates != ["{login}"]).then(|| templates.into());
        self
    }

    /// Check logins that name an API key against `keys` (before, and instead of, argon2).
    pub fn with_keys(mut self, keys: KeyStore) -> Verifier {
        self.keys = Some(Arc::new(keys));
        self
    }

    /// The API keys, if any are configured (the HTTP API authenticates bearers with them).
    pub fn keys(&self) -> Option<&Arc<KeyStore>> {
        self.keys.as_ref()
    }

    /// The directory backend, if one is configured.
    pub fn directory(&self) -> Option<&DirectoryAuth> {
        self.directory.as_deref()
    }

    /// AUTH from `ip`: refused without argon2 when throttled, when the wait queue is full or
    /// after [`MAX_VERIFY_WAIT`]; otherwise verified (once for concurrent attempts with the
    /// same credentials), and a failure counted against `ip` and `login`.
    pub async fn authenticate(&self, ip: IpAddr, login: &str, password: &str) -> Verdict {
        let client = Client { ip, local_port: 0 };
        self.authenticate_client(client, login, password).await
    }

    /// [`authenticate`](Verifier::authenticate), telling a directory backend the local port.
    pub async fn authenticate_client(
        &self,
        client: Client,
        login: &str,
        password: &str,
    ) -> Verdict {
        let ip = client.ip;
        if let Some(key) = self.keys.as_ref().and_then(|k| k.get(login)) {
            return self.authenticate_key(ip, &key, password).await;
        }
        let throttle = self.throttle.as_deref();
        // A shared throttle's check is a round trip: needed before a cache hit, which
        // reserves nothing; without a cached entry the reservation checks, atomically.
        let check = throttle.is_some_and(|t| {
            !t.is_shared() || self.cache.as_ref().is_some_and(|c| c.contains(login))
        });
        if check
            && let Some(t) = throttle
            && let Err(which) = t.check_shared(ip, login).await
        {
            tracing::warn!(login = %Escaped(login), limit = ?which, "authentication throttled");
            return Verdict::Throttled(which);
        }
        if let Some(user) = self.cached_user(login, password).await {
            self.settle(ip, login, true, None).await;
            return Verdict::Checked(Some(user));
        }
        let run = self.shared_run(throttle.map(|t| (t, ip)), client, login, password);
        let (outcome, reservation) = match run.await {
            Ok(done) => done,
            Err(which) => {
                tracing::warn!(login = %Escaped(login), limit = ?which, "authentication throttled");
                return Verdict::Throttled(which);
            }
        };
        let user = match outcome {
            Outcome::Checked(user) => user,
            Outcome::Throttled(which) => {
                tracing::warn!(login = %Escaped(login), limit = ?which, "authentication throttled");
                return Verdict::Throttled(which);
            }
            Outcome::Busy | Outcome::Unavailable => {
                if let (Some(t), Some(r)) = (throttle, reservation) {
                    t.refund_shared(r, ip, login).await;
                }
                if matches!(outcome, Outcome::Busy) {
                    tracing::warn!(login = %Escaped(login), "authentication refused: verification busy");
                    return Verdict::Busy;
                }
                // Logged by the directory, once per burst.
                return Verdict::Unavailable;
            }
        };
        self.settle(ip, login, user.is_some(), reservation).await;
        Verdict::Checked(user)
    }

    /// AUTH with an API key (login = its name): the throttle as for users, then the fast keyed
    /// hash and the key's own conditions inline (microseconds: no pool, no cache, no flight).
    /// Any refusal is a failure in the throttle; the reason is logged with the key's name.
    async fn authenticate_key(&self, ip: IpAddr, key: &Key, secret: &str) -> Verdict {
        let name = key.entry.name.as_str();
        if let Some(t) = self.throttle.as_deref()
            && let Err(which) = t.check_shared(ip, name).await
        {
            tracing::warn!(key = name, limit = ?which, "authentication throttled");
            return Verdict::Throttled(which);
        }
        let checked = key.check(secret, ip, crate::clock::unix_now(), "smtp");
        if let Err(why) = checked {
            tracing::warn!(key = name, reason = ?why, "API key refused");
        }
        self.settle(ip, name, checked.is_ok(), None).await;
        if checked.is_ok() {
            // As at a user's login: `user suspend` of the key or its owner is seen from here on.
            self.refresh_suspensions().await;
        }
        Verdict::Checked(checked.ok().map(|()| Arc::new(key.as_user())))
    }

    /// Re-read the suspension state if it changed (on the blocking pool), so that a
    /// suspension made with the CLI applies from the next login or API request.
    pub async fn refresh_suspensions(&self) {
        if let Some(s) = self.suspensions.clone()
            && s.refresh_due()
        {
            let _ = tokio::task::spawn_blocking(move || s.refresh()).await;
        }
    }

    /// The throttle's bookkeeping once an attempt is decided. With a shared store it is a
    /// round trip or two the client need not wait for: it runs in the background, and the
    /// AUTH costs one round trip (the reservation, or the check before a cache hit).
    async fn settle(
        &self,
        ip: IpAddr,
        login: &str,
        success: bool,
        reservation: Option<Reservation>,
    ) {
        let Some(t) = self.throttle.clone() else {
            return;
        };
        let login = login.to_owned();
        let work = async move {
            match (success, reservation) {
                (true, Some(r)) => {
                    t.refund_shared(r, ip, &login).await;
                    t.succeeded_shared(&login).await;
                }
                (true, None) => t.succeeded_shared(&login).await,
                // Reserved before the run: already counted.
                (false, Some(_)) => {}
                // Joined another attempt's run: one more failure from this address.
                (false, None) => t.failed_shared(ip, &login).await,
            }
        };
        if self.throttle.as_ref().is_some_and(|t| t.is_shared()) {
            tokio::spawn(work);
        } else {
            work.await;
        }
    }

    /// The user, when `password` is right for `login`; `None` otherwise (unknown or wrong, or
    /// the wait queue full).
    pub async fn verify(&self, login: &str, password: &str) -> Option<Arc<User>> {
        if let Some(user) = self.cached_user(login, password).await {
            return Some(user);
        }
        let client = Client {
            ip: IpAddr::from([127, 0, 0, 1]),
            local_port: 0,
        };
        match self.shared_run(None, client, login, password).await {
            Ok((Outcome::Checked(user), _)) => user,
            _ => None,
        }
    }

    /// The key of a verification: login, the stored hash (the dummy's for an unknown login) and
    /// the password, under the per-process key.
    async fn flight_key(&self, login: &str, password: &str) -> [u8; 32] {
        if let Some(d) = &self.directory {
            return self.flights.tagger.tag(login, d.marker(), password);
        }
        let user = match self.users.get_if_fresh(login) {
            Some(user) => user,
            None => {
                let users = self.users.clone();
                let owned = login.to_owned();
                tokio::task::spawn_blocking(move || users.get(&owned))
                    .await
                    .ok()
                    .flatten()
            }
        };
        let phc = user
            .as_deref()
            .map_or(&*self.dummy, |u| u.password.as_str());
        self.flights.tagger.tag(login, phc, password)
    }

    /// argon2 for these credentials: joins a run under way, or starts one (after reserving it
    /// in the throttle when `throttle` is given). The outcome, with the reservation when this
    /// attempt made one; `Err` when the reservation was refused.
    async fn shared_run(
        &self,
        throttle: Option<(&AuthThrottle, IpAddr)>,
        client: Client,
        login: &str,
        password: &str,
    ) -> Result<(Outcome, Option<Reservation>), Throttled> {
        let key = self.flight_key(login, password).await;
        let (mut rx, reservation) = self
            .join_or_start(throttle, key, client, login, password)
            .await?;
        // A directory question is bounded by `backend_timeout` (at most 60 s) on top of the
        // wait for a permit.
        let limit = MAX_VERIFY_WAIT
            + self
                .directory
                .as_ref()
                .map_or(Duration::ZERO, |d| d.timeout());
        let waited = tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await;
        let outcome = match waited {
            Ok(Ok(done)) => done.clone().unwrap_or(Outcome::Busy),
            // The run ended without an outcome (its task failed), or took too long: not
            // verified.
            Ok(Err(_)) | Err(_) => Outcome::Busy,
        };
        Ok((outcome, reservation))
    }

    /// The run itself, in its own task, publishing its outcome on `tx`.
    fn spawn_run(
        &self,
        tx: watch::Sender<Option<Outcome>>,
        landing: Landing,
        client: Client,
        login: &str,
        password: &str,
    ) {
        let verifier = self.clone();
        let (login, password) = (login.to_owned(), password.to_owned());
        tokio::spawn(async move {
            let _landing = landing;
            let outcome = match &verifier.directory {
                Some(d) => verifier.run_directory(d, client, &login, &password).await,
                None => verifier.run(&login, &password).await,
            };
            let _ = tx.send(Some(outcome));
        });
    }

    /// Join the run of these credentials under way, or start one: entered in the flights
    /// first (attempts arriving meanwhile join it and reserve nothing: N attempts with the same
    /// credentials reserve once between them), then reserved in the throttle (a round trip
    /// with a shared store, so never under the flights lock), then started in a task of its
    /// own (it goes on for the others when this attempt goes away). A refused reservation is
    /// published to the joiners as their outcome too.
    async fn join_or_start(
        &self,
        throttle: Option<(&AuthThrottle, IpAddr)>,
        key: [u8; 32],
        client: Client,
        login: &str,
        password: &str,
    ) -> Result<(watch::Receiver<Option<Outcome>>, Option<Reservation>), Throttled> {
        let (tx, rx) = {
            let mut running = self.flights.running();
            if let Some(rx) = running.get(&key) {
                return Ok((rx.clone(), None));
            }
            let (tx, rx) = watch::channel(None);
            running.insert(key, rx.clone());
            (tx, rx)
        };
        // Takes the entry out again however this ends (also if this attempt goes away).
        let landing = Landing {
            flights: Arc::clone(&self.flights),
            key,
        };
        let reservation = match throttle {
            Some((t, ip)) => match t.reserve_shared(ip, login).await {
                Ok(r) => Some(r),
                Err(which) => {
                    let _ = tx.send(Some(Outcome::Throttled(which)));
                    return Err(which);
                }
            },
            None => None,
        };
        self.spawn_run(tx, landing, client, login, password);
        Ok((rx, reservation))
    }

    /// The user, when the cache holds `password` for `login`'s current hash and the user is
    /// not suspended. Takes no argon2 permit; looks at the users and suspension files only
    /// when their once-a-second check is due (then on the blocking pool).
    async fn cached_user(&self, login: &str, password: &str) -> Option<Arc<User>> {
        let cache = self.cache.as_ref()?;
        if !cache.contains(login) {
            return None;
        }
        if let Some(d) = &self.directory {
            return self.cached_directory_user(d, cache, login, password).await;
        }
        let (user, suspended) = self.entry_and_suspension(login).await?;
        let Some(user) = user else {
            // Deleted: argon2 against the dummy decides, as for any unknown login.
            cache.forget(login);
            return None;
        };
        if suspended {
            // A suspended user takes the full path every time, and is not cached again
            // until unsuspended.
            cache.forget(login);
            return None;
        }
        match cache.check(&user, password) {
            Lookup::Hit => Some(self.with_defaults(user)),
            Lookup::Miss | Lookup::Mismatch => None,
        }
    }

    /// `login`'s users-file entry and whether it is suspended now: from memory, or (when a
    /// look at the files is due) off the reactor. `None` when that lookup task failed.
    async fn entry_and_suspension(&self, login: &str) -> Option<(Option<Arc<User>>, bool)> {
        let suspended_now = self
            .suspensions
            .as_ref()
            .map_or(Some(false), |s| s.is_suspended_if_fresh(login));
        if let (Some(entry), Some(suspended)) = (self.users.get_if_fresh(login), suspended_now) {
            return Some((entry, suspended));
        }
        let users = self.users.clone();
        let suspensions = self.suspensions.clone();
        let login = login.to_owned();
        tokio::task::spawn_blocking(move || {
            let entry = users.get(&login);
            let suspended = suspensions.as_ref().is_some_and(|s| {
                s.refresh();
                s.is_suspended(&login)
            });
            (entry, suspended)
        })
        .await
        .ok()
    }

    /// A permit, waiting in the bounded queue when none is free; `None` when the queue is full.
    async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permit_of(&self.permits).await
    }

    /// A permit of `permits`, waiting in the bounded queue; `None` when the queue is full.
    async fn permit_of(&self, permits: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
        match permits.clone().try_acquire_owned() {
            Ok(permit) => return Some(permit),
            Err(TryAcquireError::Closed) => return None,
            Err(TryAcquireError::NoPermits) => {}
        }
        let before = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _place = Waiting(Arc::clone(&self.waiting));
        if before >= self.max_waiting {
            return None;
        }
        // The semaphore is never closed, so acquire only fails if that changes.
        permits.clone().acquire_owned().await.ok()
    }

    /// Verify on the blocking pool.
    async fn run(&self, login: &str, password: &str) -> Outcome {
        let Some(permit) = self.permit().await else {
            return Outcome::Busy;
        };
        let users = self.users.clone();
        let suspensions = self.suspensions.clone();
        let dummy = Arc::clone(&self.dummy);
        let counter = Arc::clone(&self.verifications);
        let login = login.to_owned();
        let offered = password.to_owned();
        let task = tokio::task::spawn_blocking(move || {
            // The permit moves in here so that it is released when argon2 is done, even if
            // the session that asked is dropped meanwhile: the bound holds for real work.
            let _permit = permit;
            // The lookup may stat and re-read the users file: blocking IO, so it runs here.
            let user = users.get(&login);
            // Likewise the suspension state, so `submitd user unsuspend` is seen at login.
            let suspended = suspensions.as_ref().is_some_and(|s| {
                s.refresh();
                s.is_suspended(&login)
            });
            let stored = user
                .as_ref()
                .and_then(|u| PasswordHash::new(&u.password).ok());
            let ok = match &stored {
                Some(hash) => Argon2::default()
                    .verify_password(offered.as_bytes(), hash)
                    .is_ok(),
                None => {
                    // Unknown login (or an unusable stored hash): spend the same time anyway
                    // so response timing does not reveal which logins exist.
                    if let Ok(hash) = PasswordHash::new(&dummy) {
                        let _ = Argon2::default().verify_password(offered.as_bytes(), &hash);
                    }
                    false
                }
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if ok {
                user.map(|u| (u, suspended))
            } else {
                None
            }
        });
        match task.await {
            Ok(Some((user, suspended))) => {
                if !suspended && let Some(cache) = &self.cache {
                    cache.insert(&user, password);
                }
                Outcome::Checked(Some(self.with_defaults(user)))
            }
            Ok(None) => Outcome::Checked(None),
            Err(e) => {
                tracing::error!(error = %e, "password verification task failed");
                Outcome::Checked(None)
            }
        }
    }

    /// A users-file user without `senders` gets `auth.default_senders`, when those are not the
    /// file's own default.
    fn with_defaults(&self, user: Arc<User>) -> Arc<User> {
        match &self.default_senders {
            Some(templates) if !user.senders_given => {
                let mut u = (*user).clone();
                u.senders = expand_defaults(templates, &u.login);
                Arc::new(u)
            }
            _ => user,
        }
    }

    /// Ask the directory (on its own bounded pool of permits); a verified login becomes a
    /// [`User`] with the users-file entry of the same login on top, and enters the cache
    /// unless suspended.
    async fn run_directory(
        &self,
        d: &DirectoryAuth,
        client: Client,
        login: &str,
        password: &str,
    ) -> Outcome {
        let Some(_permit) = self.permit_of(&self.directory_permits).await else {
            return Outcome::Busy;
        };
        let req = AuthRequest {
            login,
            password,
            mechanism: Mechanism::Plain,
            client_ip: client.ip,
            local_port: client.local_port,
            // AUTH is offered only after TLS (RFC 8314 / STARTTLS): always secured.
            secured: true,
        };
        let identity = match d.ask(&req).await {
            Ok(Some(identity)) => identity,
            Ok(None) => return Outcome::Checked(None),
            Err(_) => return Outcome::Unavailable,
        };
        let (user, suspended) = self.directory_user(d, login, &identity).await;
        if !suspended && let Some(cache) = &self.cache {
            cache.insert_identity(login, d.marker(), password, Arc::new(identity));
        }
        Outcome::Checked(Some(user))
    }

    /// The user a directory `identity` makes, with the users-file entry of `login` on top, and
    /// whether `login` is suspended now (both looked at off the reactor when due).
    async fn directory_user(
        &self,
        d: &DirectoryAuth,
        login: &str,
        identity: &Identity,
    ) -> (Arc<User>, bool) {
        // The lookup task failed: no entry, and suspended to be safe (MAIL is refused;
        // nothing is cached).
        let (entry, suspended) = self
            .entry_and_suspension(login)
            .await
            .unwrap_or((None, true));
        (
            Arc::new(d.user(login, identity, entry.as_deref())),
            suspended,
        )
    }

    /// A cache hit for a directory login: the identity the directory gave within `cache_ttl`,
    /// made into a user with the users-file entry as it is now. A suspended login is dropped
    /// from the cache and asks the directory again.
    async fn cached_directory_user(
        &self,
        d: &DirectoryAuth,
        cache: &CredentialCache,
        login: &str,
        password: &str,
    ) -> Option<Arc<User>> {
        let identity = cache.check_identity(login, d.marker(), password)?;
        let (user, suspended) = self.directory_user(d, login, &identity).await;
        if suspended {
            cache.forget(login);
            return None;
        }
        Some(user)
    }

    /// The store this verifier reads.
    pub fn users(&self) -> &UserStore {
        &self.users
    }

    /// How many argon2 verifications this verifier (and its clones) has run.
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// How many logins the credentials cache accepted without argon2.
    pub fn cache_hits(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.hits())
    }

    /// The login throttle, when there is one.
    pub fn throttle(&self) -> Option<&AuthThrottle> {
        self.throttle.as_deref()
    }

    /// The credentials cache, `None` when `cache_ttl` is zero.
    pub fn cache(&self) -> Option<&CredentialCache> {
        self.cache.as_deref()
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("users", &self.users)
            .field("available_permits", &self.permits.available_permits())
            .field("waiting", &self.waiting.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::senders::SenderPattern;

    fn user(login: &str, password: &str) -> User {
        User {
            login: login.into(),
            password: hash_password(password).unwrap(),
            senders: vec![SenderPattern::parse(login).unwrap()],
            senders_given: true,
            limits: Default::default(),
            owner: None,
        }
    }

    #[test]
    fn hash_has_the_documented_parameters() {
        let phc = hash_password("secret").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert_ne!(phc, hash_password("secret").unwrap(), "salt is random");
        let dummy = dummy_phc();
        assert!(
            dummy.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{dummy}"
        );
        // The dummy must be a hash the users file would accept, i.e. a real PHC string.
        let text = format!("[[user]]\nlogin = \"a@x.test\"\npassword = \"{dummy}\"\n");
        crate::auth::users::parse(&text, std::path::Path::new("t")).unwrap();
    }

    #[tokio::test]
    async fn right_wrong_and_unknown() {
        let store = UserStore::from_users(vec![user("alice@x.test", "correct horse")]);
        let verifier = Verifier::new(store, 2);
        assert_eq!(verifier.verifications(), 0);

        let got = verifier.verify("alice@x.test", "correct horse").await;
        assert_eq!(
            got.map(|u| u.login.clone()).as_deref(),
            Some("alice@x.test")
        );
        assert_eq!(verifier.verifications(), 1);

        assert!(verifier.verify("alice@x.test", "wrong").await.is_none());
        assert!(verifier.verify("alice@x.test", "").await.is_none());
        assert!(
            verifier
                .verify("ALICE@x.test", "correct horse")
                .await
                .is_none()
        );
        assert_eq!(verifier.verifications(), 4);

        // Unknown login: still one full argon2 run, and None even for the dummy's password.
        assert!(
            verifier
                .verify("nobody@x.test", "correct horse")
                .await
                .is_none()
        );
        assert!(
            verifier
                .verify("nobody@x.test", "submitd dummy password for unknown logins")
                .await
                .is_none()
        );
        assert_eq!(verifier.verifications(), 6);
        assert!(verifier.users().get("alice@x.test").is_some());
    }

    #[tokio::test]
    async fn concurrent_verifications_share_the_bound() {
        let store = UserStore::from_users(vec![user("alice@x.test", "pw")]);
        let verifier = Verifier::new(store, 0); // clamped to 1, must not deadlock
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..3 {
            let v = verifier.clone();
            // Distinct guesses: the same one would share a single run.
            let pw = if i == 0 {
                "pw".to_owned()
            } else {
                format!("nope{i}")
            };
            tasks.spawn(async move { v.verify("alice@x.test", &pw).await.is_some() });
        }
        let mut oks = 0;
        while let Some(r) = tasks.join_next().await {
            oks += usize::from(r.unwrap());
        }
        assert_eq!(oks, 1);
        assert_eq!(verifier.verifications(), 3);
        assert_eq!(verifier.permits.available_permits(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_wait_queue_answers_busy_at_once() {
        let store = UserStore::from_users(vec![user("alice@x.test", "pw")]);
        let verifier = Verifier::with_limits(
            store,
            VerifierLimits {
                parallel: 1,
                queue: 2,
                ..VerifierLimits::default()
            },
        );
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..20 {
            let v = verifier.clone();
            tasks.spawn(async move {
                let started = std::time::Instant::now();
                let guess = format!("nope{i}");
                let verdict = v.authenticate(ip, "alice@x.test", &guess).await;
                (matches!(verdict, Verdict::Busy), started.elapsed())
            });
        }
        let (mut busy, mut checked) = (0, 0);
        while let Some(r) = tasks.join_next().await {
            let (was_busy, took) = r.unwrap();
            if was_busy {
                busy += 1;
                assert!(took < std::time::Duration::from_millis(500), "{took:?}");
            } else {
                checked += 1;
            }
        }
        assert!(busy > 0, "some were refused");
        assert!(checked >= 1, "the permit holder ran");
        assert_eq!(
            verifier.verifications(),
            checked as u64,
            "busy ran no argon2"
        );
        assert_eq!(
            verifier.waiting.load(Ordering::Relaxed),
            0,
            "places given back"
        );
        // Afterwards the queue is free again.
        assert!(verifier.verify("alice@x.test", "pw").await.is_some());
    }

    #[tokio::test]
    async fn throttled_attempts_run_no_argon2() {
        let store = UserStore::from_users(vec![user("alice@x.test", "pw")]);
        let throttle = Arc::new(AuthThrottle::new(crate::auth::throttle::ThrottleLimits {
            window: std::time::Duration::from_secs(900),
            per_ip: 2,
            per_login: 0,
        }));
        let verifier = Verifier::with_limits(
            store,
            VerifierLimits {
                parallel: 1,
                queue: 8,
                throttle: Some(throttle),
                ..VerifierLimits::default()
            },
        );
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for login in ["alice@x.test", "nobody@x.test"] {
            let v = verifier.authenticate(ip, login, "wrong").await;
            assert!(matches!(v, Verdict::Checked(None)), "{v:?}");
        }
        assert_eq!(verifier.verifications(), 2);
        let v = verifier.authenticate(ip, "alice@x.test", "pw").await;
        assert!(matches!(v, Verdict::Throttled(Throttled::Ip)), "{v:?}");
        assert_eq!(verifier.verifications(), 2, "no argon2 when throttled");
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let v = verifier.authenticate(other, "alice@x.test", "pw").await;
        assert!(matches!(v, Verdict::Checked(Some(_))), "{v:?}");
    }

    /// A PHC string with cheap argon2 parameters (verification reads them from the string).
    fn cheap_user(login: &str, password: &str) -> User {
        let params = Params::new(64, 1, 1, None).unwrap();
        let salt = SaltString::generate(&mut OsRng);
        let phc = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string();
        User {
            login: login.into(),
            password: phc,
            senders: vec![SenderPattern::parse(login).unwrap()],
            senders_given: true,
            limits: Default::default(),
            owner: None,
        }
    }

    /// The production defaults: 2 argon2 at once, 64 waiting, 20 failures per address and 10
    /// per login; no cache, so only the verifier itself can spare argon2 runs.
    fn defaults_verifier(users: Vec<User>) -> Verifier {
        let throttle = Arc::new(AuthThrottle::new(crate::auth::throttle::ThrottleLimits {
            window: Duration::from_secs(900),
            per_ip: 20,
            per_login: 10,
        }));
        Verifier::with_limits(
            UserStore::from_users(users),
            VerifierLimits {
                parallel: 2,
                queue: 64,
                throttle: Some(throttle),
                ..VerifierLimits::default()
            },
        )
    }

    fn nth_ip(i: u32) -> IpAddr {
        IpAddr::from((0xC633_6400u32 + i).to_be_bytes()) // 198.51.100.0/24 onwards
    }

    /// Item 7: parallel guesses for one login from many addresses cannot all pass the login
    /// limit before the first of them fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parallel_guesses_for_one_login_stop_at_the_limit() {
        let verifier = defaults_verifier(vec![cheap_user("alice@x.test", "right")]);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..60u32 {
            let v = verifier.clone();
            tasks.spawn(async move {
                v.authenticate(nth_ip(i), "alice@x.test", &format!("guess {i}"))
                    .await
            });
        }
        let (mut checked, mut throttled) = (0, 0);
        while let Some(r) = tokio::time::timeout(Duration::from_secs(30), tasks.join_next())
            .await
            .expect("bounded")
        {
            match r.unwrap() {
                Verdict::Checked(None) => checked += 1,
                Verdict::Throttled(Throttled::Login) => throttled += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(checked <= 10, "{checked} guesses verified, limit 10");
        assert_eq!(checked + throttled, 60);
        assert_eq!(verifier.verifications(), checked as u64);
        // Kept as failures: the right password is refused now too.
        let v = verifier
            .authenticate(nth_ip(99), "alice@x.test", "right")
            .await;
        assert!(matches!(v, Verdict::Throttled(Throttled::Login)), "{v:?}");
    }

    /// Item 8: a pool opening 200 sessions for one account at once: one argon2 run (or a
    /// few), every login succeeds, nothing counted against the address or the login.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_the_same_login_shares_one_verification() {
        // Real parameters: one run lasts longer than starting the burst does.
        let verifier = defaults_verifier(vec![user("alice@x.test", "right")]);
        let ip: IpAddr = "192.0.2.50".parse().unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let v = verifier.clone();
            tasks.spawn(async move { v.authenticate(ip, "alice@x.test", "right").await });
        }
        let mut ok = 0;
        while let Some(r) = tokio::time::timeout(Duration::from_secs(30), tasks.join_next())
            .await
            .expect("bounded")
        {
            match r.unwrap() {
                Verdict::Checked(Some(u)) => {
                    assert_eq!(u.login, "alice@x.test");
                    ok += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(ok, 200);
        let runs = verifier.verifications();
        assert!(
            (1..=10).contains(&runs),
            "{runs} argon2 runs for one credential"
        );
        assert!(
            verifier.flights.running().is_empty(),
            "finished runs are gone"
        );
        // The reservations were refunded: the address can still fail 20 times.
        let t = verifier.throttle().unwrap();
        for i in 0..19 {
            t.failed(ip, &format!("other{i}@x.test"));
        }
        assert!(t.check(ip, "bob@x.test").is_ok());
    }

    /// A wrong password sent by many addresses at once is one argon2 run, but a failure for
    /// each attempt.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shared_wrong_password_runs_once_and_counts_for_every_attempt() {
        let verifier = defaults_verifier(vec![cheap_user("alice@x.test", "right")]);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..8u32 {
            let v = verifier.clone();
            tasks.spawn(async move { v.authenticate(nth_ip(i), "alice@x.test", "nope").await });
        }
        while let Some(r) = tasks.join_next().await {
            let v = r.unwrap();
            assert!(matches!(v, Verdict::Checked(None)), "{v:?}");
        }
        assert!(verifier.verifications() <= 8);
        // 8 failures counted for alice: two more distinct guesses reach the limit of 10.
        for i in 0..2u32 {
            let v = verifier
                .authenticate(nth_ip(50 + i), "alice@x.test", &format!("g{i}"))
                .await;
            assert!(matches!(v, Verdict::Checked(None)), "{v:?}");
        }
        let v = verifier
            .authenticate(nth_ip(60), "alice@x.test", "right")
            .await;
        assert!(matches!(v, Verdict::Throttled(Throttled::Login)), "{v:?}");
    }

    /// A verifier over a users file re-read at every look, with throttle, suspensions and a
    /// cache on a manual clock.
    struct Rig {
        _dir: tempfile::TempDir,
        users: std::path::PathBuf,
        suspended: std::path::PathBuf,
        clock: Clock,
        verifier: Verifier,
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    fn rig(cache_ttl: Duration, per_login: u32) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users.toml");
        let suspended = dir.path().join("suspended.json");
        crate::auth::users::add_user(&users, "alice@x.test", &hash_password("pw").unwrap(), &[])
            .unwrap();
        let store = UserStore::open_with_interval(&users, Duration::ZERO).unwrap();
        let clock = Clock::manual();
        let throttle = Arc::new(AuthThrottle::new(crate::auth::throttle::ThrottleLimits {
            window: Duration::from_secs(900),
            per_ip: 0,
            per_login,
        }));
        let verifier = Verifier::with_limits(
            store,
            VerifierLimits {
                parallel: 1,
                queue: 8,
                throttle: Some(throttle),
                suspensions: Some(Arc::new(Suspensions::open_with_interval(
                    &suspended,
                    Duration::ZERO,
                ))),
                cache_ttl,
                clock: clock.clone(),
            },
        );
        Rig {
            _dir: dir,
            users,
            suspended,
            clock,
            verifier,
        }
    }

    impl Rig {
        async fn login(&self, password: &str) -> bool {
            match self
                .verifier
                .authenticate(IP, "alice@x.test", password)
                .await
            {
                Verdict::Checked(user) => user.is_some(),
                other => panic!("unexpected {other:?}"),
            }
        }

        /// (argon2 runs, cache hits) so far.
        fn counts(&self) -> (u64, u64) {
            (self.verifier.verifications(), self.verifier.cache_hits())
        }
    }

    const TTL: Duration = Duration::from_secs(600);

    #[tokio::test]
    async fn cache_hit_then_miss_after_the_ttl() {
        let r = rig(TTL, 0);
        assert!(r.login("pw").await);
        assert_eq!(r.counts(), (1, 0));
        assert!(r.login("pw").await);
        assert!(r.login("pw").await);
        assert_eq!(r.counts(), (1, 2), "repeat logins ran no argon2");
        r.clock.advance(TTL - Duration::from_secs(1));
        assert!(r.login("pw").await);
        assert_eq!(r.counts(), (1, 3));
        r.clock.advance(Duration::from_secs(1));
        assert!(r.login("pw").await);
        assert_eq!(r.counts(), (2, 3), "expired: argon2 again");
        assert!(r.login("pw").await);
        assert_eq!(r.counts(), (2, 4), "and cached again");
    }

    #[tokio::test]
    async fn a_changed_hash_misses_at_once() {
        let r = rig(TTL, 0);
        assert!(r.login("pw").await);
        assert!(r.login("pw").await);
        assert_eq!(r.counts(), (1, 1));
        crate::auth::users::set_password(&r.users, "alice@x.test", &hash_password("new").unwrap())
            .unwrap();
        assert!(!r.login("pw").await, "the old password fails at once");
        assert_eq!(r.counts(), (2, 1));
        assert!(r.login("new").await);
        assert!(r.login("new").await);
        assert_eq!(r.counts(), (3, 2));
        // Even the same password under a fresh hash (new salt) is a new entry, not a hit.
        crate::auth::users::set_password(&r.users, "alice@x.test", &hash_password("new").unwrap())
            .unwrap();
        assert!(r.login("new").await);
        assert_eq!(r.counts(), (4, 2));
    }

    #[tokio::test]
    async fn a_deleted_user_misses() {
        let r = rig(TTL, 0);
        assert!(r.login("pw").await);
        crate::auth::users::remove_user(&r.users, "alice@x.test").unwrap();
        assert!(!r.login("pw").await);
        assert_eq!(r.counts(), (2, 0), "argon2 against the dummy, no hit");
        assert!(r.verifier.cache().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_suspended_user_never_authenticates_through_the_cache() {
        let r = rig(TTL, 0);
        assert!(r.login("pw").await);
        assert!(r.login("pw").await);
        assert_eq!(r.counts(), (1, 1));
        crate::auth::suspend::suspend(&r.suspended, "alice@x.test", "test").unwrap();
        // As without a cache: argon2 decides (a suspended user's MAIL is refused later).
        assert!(r.login("pw").await);
        assert!(r.login("pw").await);
        assert_eq!(r.counts(), (3, 1), "no hit while suspended");
        assert!(r.verifier.cache().unwrap().is_empty(), "and not cached");
        crate::auth::suspend::unsuspend(&r.suspended, "alice@x.test").unwrap();
        assert!(r.login("pw").await);
        assert!(r.login("pw").await);
        assert_eq!(r.counts(), (4, 2));
    }

    #[tokio::test]
    async fn a_wrong_password_with_a_warm_cache_runs_argon2_and_counts() {
        let r = rig(TTL, 3);
        assert!(r.login("pw").await);
        for guess in ["pw1", "PW", ""] {
            assert!(!r.login(guess).await);
        }
        assert_eq!(r.counts(), (4, 0), "every wrong password ran argon2");
        // The login is now over its limit: even the right, cached password is refused.
        let v = r.verifier.authenticate(IP, "alice@x.test", "pw").await;
        assert!(matches!(v, Verdict::Throttled(Throttled::Login)), "{v:?}");
        assert_eq!(r.counts(), (4, 0));
    }

    #[tokio::test]
    async fn a_hit_clears_the_login_counter_like_argon2_does() {
        let r = rig(TTL, 2);
        assert!(r.login("pw").await);
        assert!(!r.login("typo").await);
        assert!(r.login("pw").await);
        assert!(!r.login("typo").await);
        assert!(r.login("pw").await, "one failure since the last success");
        assert_eq!(r.counts(), (3, 2));
    }

    #[tokio::test]
    async fn zero_ttl_turns_the_cache_off() {
        let r = rig(Duration::ZERO, 0);
        assert!(r.verifier.cache().is_none());
        for _ in 0..3 {
            assert!(r.login("pw").await);
        }
        assert_eq!(r.counts(), (3, 0));
    }
}
