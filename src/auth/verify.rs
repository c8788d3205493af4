//! argon2id password hashing and verification, off the async reactor and on a bounded pool.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::suspend::Suspensions;
use super::throttle::{AuthThrottle, Throttled};
use super::users::{User, UserStore};

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
}

/// The outcome of [`Verifier::authenticate`].
#[derive(Debug)]
pub enum Verdict {
    /// argon2 ran: the user, or `None` (unknown login or wrong password).
    Checked(Option<Arc<User>>),
    /// Too many failures from this address or for this login: refused without argon2.
    Throttled(Throttled),
    /// The wait queue for argon2 is full: refused without argon2.
    Busy,
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
        }
    }

    /// AUTH from `ip`: refused without argon2 when throttled or when the wait queue is full;
    /// otherwise verified, and a failure counted against `ip` and `login`.
    pub async fn authenticate(&self, ip: IpAddr, login: &str, password: &str) -> Verdict {
        if let Some(throttle) = &self.throttle
            && let Err(which) = throttle.check(ip, login)
        {
            tracing::warn!(login, limit = ?which, "authentication throttled");
            return Verdict::Throttled(which);
        }
        let Some(user) = self.run(login, password).await else {
            tracing::warn!(login, "authentication refused: verification queue full");
            return Verdict::Busy;
        };
        if let Some(throttle) = &self.throttle {
            match &user {
                Some(_) => throttle.succeeded(login),
                None => throttle.failed(ip, login),
            }
        }
        Verdict::Checked(user)
    }

    /// The user, when `password` is right for `login`; `None` otherwise (unknown or wrong, or
    /// the wait queue full).
    pub async fn verify(&self, login: &str, password: &str) -> Option<Arc<User>> {
        self.run(login, password).await.flatten()
    }

    /// A permit, waiting in the bounded queue when none is free; `None` when the queue is full.
    async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        match self.permits.clone().try_acquire_owned() {
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
        self.permits.clone().acquire_owned().await.ok()
    }

    /// Verify on the blocking pool; `None` when no permit could be had (queue full).
    async fn run(&self, login: &str, password: &str) -> Option<Option<Arc<User>>> {
        let permit = self.permit().await?;
        let users = self.users.clone();
        let suspensions = self.suspensions.clone();
        let dummy = Arc::clone(&self.dummy);
        let counter = Arc::clone(&self.verifications);
        let login = login.to_owned();
        let password = password.to_owned();
        let task = tokio::task::spawn_blocking(move || {
            // The permit moves in here so that it is released when argon2 is done, even if
            // the session that asked is dropped meanwhile: the bound holds for real work.
            let _permit = permit;
            // The lookup may stat and re-read the users file: blocking IO, so it runs here.
            let user = users.get(&login);
            // Likewise the suspension state, so `submitd user unsuspend` is seen at login.
            if let Some(s) = &suspensions {
                s.refresh();
            }
            let stored = user
                .as_ref()
                .and_then(|u| PasswordHash::new(&u.password).ok());
            let ok = match &stored {
                Some(hash) => Argon2::default()
                    .verify_password(password.as_bytes(), hash)
                    .is_ok(),
                None => {
                    // Unknown login (or an unusable stored hash): spend the same time anyway
                    // so response timing does not reveal which logins exist.
                    if let Ok(hash) = PasswordHash::new(&dummy) {
                        let _ = Argon2::default().verify_password(password.as_bytes(), &hash);
                    }
                    false
                }
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if ok { user } else { None }
        });
        match task.await {
            Ok(user) => Some(user),
            Err(e) => {
                tracing::error!(error = %e, "password verification task failed");
                Some(None)
            }
        }
    }

    /// The store this verifier reads.
    pub fn users(&self) -> &UserStore {
        &self.users
    }

    /// How many argon2 verifications this verifier (and its clones) has run.
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
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
            limits: Default::default(),
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
            let pw = if i == 0 { "pw" } else { "nope" };
            tasks.spawn(async move { v.verify("alice@x.test", pw).await.is_some() });
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
        for _ in 0..20 {
            let v = verifier.clone();
            tasks.spawn(async move {
                let started = std::time::Instant::now();
                let verdict = v.authenticate(ip, "alice@x.test", "nope").await;
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
                suspensions: None,
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
}
