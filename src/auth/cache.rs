//! The verified-credentials cache (`[auth] cache_ttl`): after argon2 accepted a password, a
//! repeat login with the same password is accepted by comparing keyed hashes, in microseconds
//! and without a slot on the argon2 pool.
//!
//! What is kept per login, and only after a successful argon2 verification:
//!
//! - `tag` = HMAC-SHA256 under a random 32-byte key made at start-up and never written
//!   anywhere, over the login, the user's PHC string and the password (each length-prefixed,
//!   so no two inputs share an encoding);
//! - `phc` = SHA-256 of the PHC string the password was verified against;
//! - `expires` = the time of that verification plus the TTL.
//!
//! A lookup is a hit only when the entry has not expired, the user's *current* PHC string has
//! the stored digest (a password change is a miss at once, not after the TTL) and the tag of
//! the offered password equals the stored one (compared in constant time). The caller looks
//! the user up and checks suspension first; see [`super::verify`] for the order, and
//! SECURITY.md for what this trades.
//!
//! Memory is bounded: only successful logins insert, at most one entry per login, and at most
//! [`MAX_ENTRIES`] entries (expired ones are pruned first, then the one expiring soonest).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::{constant_time, digest, hmac, rand};

use super::backend::Identity;
use super::users::User;

/// The most entries kept at once, whatever the size of the users file.
pub const MAX_ENTRIES: usize = 10_000;

/// The time source of a cache: the monotonic clock, or (tests) the monotonic clock moved
/// forward by hand.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset: Option<Arc<Mutex<Duration>>>,
}

impl Clock {
    /// The real monotonic clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// A clock that [`advance`](Clock::advance) moves forward (tests).
    pub fn manual() -> Clock {
        Clock {
            offset: Some(Arc::new(Mutex::new(Duration::ZERO))),
        }
    }

    /// Move a manual clock forward; no effect on the system clock.
    pub fn advance(&self, by: Duration) {
        if let Some(offset) = &self.offset {
            *offset.lock().unwrap_or_else(|e| e.into_inner()) += by;
        }
    }

    /// Now.
    pub fn now(&self) -> Instant {
        let now = Instant::now();
        match &self.offset {
            Some(offset) => now + *offset.lock().unwrap_or_else(|e| e.into_inner()),
            None => now,
        }
    }
}

#[derive(Clone)]
struct Entry {
    tag: [u8; 32],
    phc: [u8; 32],
    expires: Instant,
    /// What a directory backend said about the login (directory entries only).
    identity: Option<Arc<Identity>>,
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The password is the one argon2 accepted for this user's current hash, within the TTL.
    Hit,
    /// No entry (none, expired, or for another hash; the entry is dropped).
    Miss,
    /// An entry for the current hash, but another password: argon2 must decide (the entry
    /// stays, so a guesser cannot evict the real user's entry).
    Mismatch,
}

/// Keyed hashes of credentials: HMAC-SHA256 under a random key made when this is created and
/// never written anywhere, over the login, a PHC string and a password, each length-prefixed
/// (so no two inputs share an encoding). Without the key a tag cannot be tested against
/// password guesses. Used by the cache and by the verifier to join concurrent verifications
/// of the same credentials ([`super::verify`]); each has its own key.
pub struct CredentialTagger {
    key: hmac::Key,
}

impl CredentialTagger {
    /// A tagger with a fresh random key.
    pub fn new() -> CredentialTagger {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rand::SystemRandom::new())
            .expect("the system random generator works");
        CredentialTagger { key }
    }

    /// The tag of `password` offered for `login` whose stored hash is `phc`.
    pub fn tag(&self, login: &str, phc: &str, password: &str) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        for field in [login.as_bytes(), phc.as_bytes(), password.as_bytes()] {
            ctx.update(&(field.len() as u64).to_be_bytes());
            ctx.update(field);
        }
        let mut out = [0; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

impl Default for CredentialTagger {
    fn default() -> Self {
        CredentialTagger::new()
    }
}

impl std::fmt::Debug for CredentialTagger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("CredentialTagger").finish_non_exhaustive()
    }
}

/// Verified logins of this process, keyed by login.
pub struct CredentialCache {
    ttl: Duration,
    max_entries: usize,
    key: CredentialTagger,
    clock: Clock,
    entries: Mutex<HashMap<String, Entry>>,
    hits: AtomicU64,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    out
}

impl CredentialCache {
    /// A cache remembering logins for `ttl`; `None` when `ttl` is zero (cache off).
    pub fn new(ttl: Duration, clock: Clock) -> Option<CredentialCache> {
        CredentialCache::with_capacity(ttl, clock, MAX_ENTRIES)
    }

    /// `new` with another entry bound (tests).
    pub fn with_capacity(ttl: Duration, clock: Clock, max_entries: usize) -> Option<Self> {
        if ttl.is_zero() || max_entries == 0 {
            return None;
        }
        // The key never leaves this process: without it, a stored tag cannot be tested
        // against password guesses.
        let key = CredentialTagger::new();
        Some(CredentialCache {
            ttl,
            max_entries,
            key,
            clock,
            entries: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
        })
    }

    #[cfg(test)]
    fn tag(&self, user: &User, password: &str) -> [u8; 32] {
        self.key.tag(&user.login, &user.password, password)
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an unexpired entry for `login` exists (memory only): when not, a lookup would
    /// miss, so the caller need not look the user up for it.
    pub fn contains(&self, login: &str) -> bool {
        let now = self.clock.now();
        self.entries().get(login).is_some_and(|e| e.expires > now)
    }

    /// Check `password` for `user` (as the users file has it now).
    pub fn check(&self, user: &User, password: &str) -> Lookup {
        self.lookup(&user.login, &user.password, password).0
    }

    /// A directory login: the identity the directory gave when it accepted `password` for
    /// `login` within the TTL; `marker` is the backend's stand-in for a stored hash.
    pub fn check_identity(
        &self,
        login: &str,
        marker: &str,
        password: &str,
    ) -> Option<Arc<Identity>> {
        match self.lookup(login, marker, password) {
            (Lookup::Hit, identity) => identity,
            _ => None,
        }
    }

    fn lookup(&self, login: &str, phc: &str, password: &str) -> (Lookup, Option<Arc<Identity>>) {
        let now = self.clock.now();
        let entry = {
            let mut entries = self.entries();
            let Some(entry) = entries.get(login) else {
                return (Lookup::Miss, None);
            };
            if entry.expires <= now || entry.phc != sha256(phc.as_bytes()) {
                entries.remove(login);
                return (Lookup::Miss, None);
            }
            entry.clone()
        };
        // The HMAC runs outside the lock; it takes about a microsecond.
        let tag = self.key.tag(login, phc, password);
        if constant_time::verify_slices_are_equal(&tag, &entry.tag).is_ok() {
            self.hits.fetch_add(1, Ordering::Relaxed);
            (Lookup::Hit, entry.identity)
        } else {
            (Lookup::Mismatch, None)
        }
    }

    /// Remember that argon2 accepted `password` for `user` just now.
    pub fn insert(&self, user: &User, password: &str) {
        self.put(&user.login, &user.password, password, None);
    }

    /// Remember that the directory accepted `password` for `login` just now, saying `identity`.
    pub fn insert_identity(
        &self,
        login: &str,
        marker: &str,
        password: &str,
        identity: Arc<Identity>,
    ) {
        self.put(login, marker, password, Some(identity));
    }

    fn put(&self, login: &str, phc: &str, password: &str, identity: Option<Arc<Identity>>) {
        let now = self.clock.now();
        let entry = Entry {
            tag: self.key.tag(login, phc, password),
            phc: sha256(phc.as_bytes()),
            expires: now + self.ttl,
            identity,
        };
        let mut entries = self.entries();
        if entries.len() >= self.max_entries && !entries.contains_key(login) {
            entries.retain(|_, e| e.expires > now);
            if entries.len() >= self.max_entries
                && let Some(soonest) = entries
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(login, _)| login.clone())
            {
                entries.remove(&soonest);
            }
        }
        entries.insert(login.to_owned(), entry);
    }

    /// Drop `login`'s entry (deleted or suspended user).
    pub fn forget(&self, login: &str) {
        self.entries().remove(login);
    }

    /// Entries held now (expired ones included until they are pruned).
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Logins accepted from the cache so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// How long an entry lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

impl std::fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key or the tags.
        f.debug_struct("CredentialCache")
            .field("ttl", &self.ttl)
            .field("entries", &self.len())
            .field("hits", &self.hits())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::senders::SenderPattern;

    // Shape-valid PHC strings: the cache never runs argon2, it only compares them.
    const PHC: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$\
                       o4CxIfHKyuphMEZrXyLMvHNTkyNzfPzDJGRhBmTzZZY";
    const PHC2: &str = "$argon2id$v=19$m=19456,t=2,p=1$b3RoZXJzYWx0b3RoZXJzYWx0$\
                        o4CxIfHKyuphMEZrXyLMvHNTkyNzfPzDJGRhBmTzZZY";

    fn user(login: &str, phc: &str) -> User {
        User {
            login: login.into(),
            password: phc.into(),
            senders: vec![SenderPattern::parse(login).unwrap()],
            senders_given: true,
            limits: Default::default(),
            owner: None,
        }
    }

    #[test]
    fn zero_ttl_is_no_cache() {
        assert!(CredentialCache::new(Duration::ZERO, Clock::system()).is_none());
    }

    #[test]
    fn hit_mismatch_expiry_and_hash_change() {
        let clock = Clock::manual();
        let cache = CredentialCache::new(Duration::from_secs(600), clock.clone()).unwrap();
        let alice = user("alice@x.test", PHC);
        assert_eq!(cache.check(&alice, "pw"), Lookup::Miss);
        cache.insert(&alice, "pw");
        assert!(cache.contains("alice@x.test"));
        assert_eq!(cache.check(&alice, "pw"), Lookup::Hit);
        assert_eq!(cache.check(&alice, "pw "), Lookup::Mismatch);
        assert_eq!(cache.check(&alice, ""), Lookup::Mismatch);
        assert_eq!(cache.hits(), 1);
        // Another login with the same hash and password is not alice.
        assert_eq!(cache.check(&user("bob@x.test", PHC), "pw"), Lookup::Miss);

        // A new hash: a miss, and the entry is gone for good.
        assert_eq!(cache.check(&user("alice@x.test", PHC2), "pw"), Lookup::Miss);
        assert_eq!(cache.check(&alice, "pw"), Lookup::Miss);

        cache.insert(&alice, "pw");
        clock.advance(Duration::from_secs(599));
        assert_eq!(cache.check(&alice, "pw"), Lookup::Hit);
        clock.advance(Duration::from_secs(1));
        assert!(!cache.contains("alice@x.test"));
        assert_eq!(cache.check(&alice, "pw"), Lookup::Miss);
        assert!(cache.is_empty());
    }

    #[test]
    fn keys_differ_between_caches() {
        let alice = user("alice@x.test", PHC);
        let a = CredentialCache::new(Duration::from_secs(60), Clock::system()).unwrap();
        let b = CredentialCache::new(Duration::from_secs(60), Clock::system()).unwrap();
        assert_ne!(a.tag(&alice, "pw"), b.tag(&alice, "pw"));
        assert_eq!(a.tag(&alice, "pw"), a.tag(&alice, "pw"));
    }

    #[test]
    fn size_is_bounded_and_evicts_the_soonest_expiry() {
        let clock = Clock::manual();
        let cache =
            CredentialCache::with_capacity(Duration::from_secs(60), clock.clone(), 3).unwrap();
        for i in 0..3 {
            cache.insert(&user(&format!("u{i}@x.test"), PHC), "pw");
            clock.advance(Duration::from_secs(1));
        }
        cache.insert(&user("u3@x.test", PHC), "pw");
        assert_eq!(cache.len(), 3);
        assert!(!cache.contains("u0@x.test"), "the oldest went");
        assert!(cache.contains("u3@x.test"));
        // Re-inserting a present login evicts nobody.
        cache.insert(&user("u1@x.test", PHC), "pw");
        assert_eq!(cache.len(), 3);
        assert!(cache.contains("u2@x.test"));
        // Expired entries go before live ones.
        clock.advance(Duration::from_secs(120));
        cache.insert(&user("u4@x.test", PHC), "pw");
        assert_eq!(cache.len(), 1);
    }
}
