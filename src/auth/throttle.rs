//! Login throttling across connections: failed authentications counted per client address
//! and per login in a sliding window (`[limits] auth_window`). Over either limit, AUTH is
//! refused with `454 4.7.0` before any argon2 runs, so a password-guessing botnet costs us a
//! map lookup per attempt instead of 19 MiB and tens of milliseconds.
//!
//! - Only verified failures count (wrong password, unknown login); refused attempts do not, so
//!   the window really ends `auth_window` after the last guess that was checked.
//! - An attempt that will run argon2 is counted *before* it runs ([`AuthThrottle::reserve`]):
//!   a failure in flight. A wrong password leaves it counted; a success or an attempt that
//!   never ran argon2 gives it back ([`AuthThrottle::refund`]). So parallel guesses cannot all
//!   pass the check before the first of them fails: the limit holds for them too.
//! - IPv6 clients are counted per network of `limits.ipv6_prefix` bits (default /64; one host
//!   commonly has a whole /64 to rotate through), with the listener's key
//!   ([`crate::ipkey::limit_key`]).
//! - A successful login clears that login's counter (a user who mistyped twice is not left
//!   half-locked) but never an address's counter: an attacker holding one valid account could
//!   otherwise reset its address between guesses at other accounts.
//! - Unknown logins count too, per address and per attempted login (truncated to
//!   [`MAX_LOGIN_KEY`] bytes), so guessing which logins exist is throttled like passwords.
//! - Memory is bounded: at most [`MAX_TRACKED`] addresses and as many logins, the least
//!   recently failing evicted first; entries idle for a whole window are pruned.
//! - With a shared store (`[state] backend = "redis"`) the `*_shared` methods count in the
//!   store, atomically (one round trip each), so every replica enforces the same limits; the
//!   per-process counters are kept too and decide whenever the store does not answer.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::window::{BoundedMap, Buckets};
use crate::state::{Count, Counter, Shared, Stamp, Window};

/// How many addresses (and, separately, logins) are tracked at most.
pub const MAX_TRACKED: usize = 100_000;
/// Attempted logins longer than this are counted by their first this-many bytes.
pub const MAX_LOGIN_KEY: usize = 256;
/// Sub-windows per window: a 15 minute window slides by the minute.
const BUCKETS: usize = 15;

/// The `[limits]` settings the throttle needs. A limit of 0 turns that counter off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleLimits {
    pub window: Duration,
    pub per_ip: u32,
    pub per_login: u32,
}

/// Which limit refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    Ip,
    Login,
}

struct Counters {
    ips: BoundedMap<IpAddr, Buckets>,
    logins: BoundedMap<String, Buckets>,
}

/// Failed-authentication counters shared by every session of a server.
pub struct AuthThrottle {
    limits: ThrottleLimits,
    /// `limits.ipv6_prefix` (changes on reload).
    ipv6_prefix: AtomicU8,
    origin: Instant,
    counters: Mutex<Counters>,
    /// The store every replica counts in, when `[state] backend = "redis"`.
    shared: Option<Arc<Shared>>,
}

/// An attempt counted as a failure before argon2 ran ([`AuthThrottle::reserve`]). Kept (a
/// verified failure) unless given back with [`AuthThrottle::refund`]; dropping it keeps it,
/// so an attempt whose session went away meanwhile still counts.
#[derive(Debug)]
#[must_use = "a reservation counts as a failure unless refunded"]
pub struct Reservation {
    ip: Option<IpAddr>,
    at_ms: u64,
    /// Counted in the shared store too, at this time.
    shared: Option<Stamp>,
}

/// The login as counted: at most [`MAX_LOGIN_KEY`] bytes, cut at a character boundary.
fn login_key(login: &str) -> &str {
    if login.len() <= MAX_LOGIN_KEY {
        return login;
    }
    let mut end = MAX_LOGIN_KEY;
    while !login.is_char_boundary(end) {
        end -= 1;
    }
    &login[..end]
}

impl AuthThrottle {
    /// Counters for `limits`, tracking at most [`MAX_TRACKED`] addresses and logins.
    pub fn new(limits: ThrottleLimits) -> AuthThrottle {
        AuthThrottle::with_capacity(limits, MAX_TRACKED)
    }

    /// `new` with another cap on tracked addresses and logins (tests).
    pub fn with_capacity(limits: ThrottleLimits, max_tracked: usize) -> AuthThrottle {
        AuthThrottle {
            limits,
            ipv6_prefix: AtomicU8::new(crate::ipkey::DEFAULT_IPV6_PREFIX),
            origin: Instant::now(),
            counters: Mutex::new(Counters {
                ips: BoundedMap::new(max_tracked, limits.window),
                logins: BoundedMap::new(max_tracked, limits.window),
            }),
            shared: None,
        }
    }

    /// Count in `shared` as well, which decides while it answers.
    pub fn with_shared(mut self, shared: Option<Arc<Shared>>) -> AuthThrottle {
        self.shared = shared;
        self
    }

    /// Count IPv6 clients per network of `prefix` bits from now on (`limits.ipv6_prefix`).
    pub fn set_ipv6_prefix(&self, prefix: u8) {
        self.ipv6_prefix.store(prefix, Ordering::Relaxed);
    }

    /// The address as counted (see [`crate::ipkey::limit_key`]).
    fn ip_key(&self, ip: IpAddr) -> IpAddr {
        crate::ipkey::limit_key(ip, self.ipv6_prefix.load(Ordering::Relaxed))
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an attempt from `ip` for `login` may be verified now.
    pub fn check(&self, ip: IpAddr, login: &str) -> Result<(), Throttled> {
        self.check_at(ip, login, self.now_ms())
    }

    /// Count a verified failure.
    pub fn failed(&self, ip: IpAddr, login: &str) {
        self.failed_at(ip, login, self.now_ms());
    }

    /// Check and, when allowed, count the attempt as a failure at once, under one lock: what
    /// an attempt that is about to run argon2 does, so that N parallel attempts cannot all
    /// pass a limit below N.
    pub fn reserve(&self, ip: IpAddr, login: &str) -> Result<Reservation, Throttled> {
        self.reserve_at(ip, login, self.now_ms())
    }

    /// Give back a reservation: a success (the login's counter is cleared by
    /// [`succeeded`](Self::succeeded); the address's reservation is taken back here) or an
    /// attempt that was not verified after all (queue full, waited too long).
    pub fn refund(&self, reservation: Reservation, login: &str) {
        let mut c = self.counters();
        if let Some(ip) = reservation.ip
            && let Some(b) = c.ips.get_mut(&ip)
        {
            b.remove(reservation.at_ms, 1);
        }
        if self.limits.per_login > 0
            && let Some(b) = c.logins.get_mut(&login_key(login).to_owned())
        {
            b.remove(reservation.at_ms, 1);
        }
    }

    fn reserve_at(&self, ip: IpAddr, login: &str, now_ms: u64) -> Result<Reservation, Throttled> {
        let ip = self.ip_key(ip);
        let mut c = self.counters();
        self.check_locked(&mut c, ip, login, now_ms)?;
        self.count_locked(&mut c, ip, login, now_ms);
        Ok(Reservation {
            ip: (self.limits.per_ip > 0).then_some(ip),
            at_ms: now_ms,
            shared: None,
        })
    }

    /// A successful login: clears that login's failures (never the address's).
    pub fn succeeded(&self, login: &str) {
        self.counters().logins.remove(&login_key(login).to_owned());
    }

    fn check_at(&self, ip: IpAddr, login: &str, now_ms: u64) -> Result<(), Throttled> {
        let ip = self.ip_key(ip);
        let mut c = self.counters();
        self.check_locked(&mut c, ip, login, now_ms)
    }

    /// `ip` is already keyed.
    fn check_locked(
        &self,
        c: &mut Counters,
        ip: IpAddr,
        login: &str,
        now_ms: u64,
    ) -> Result<(), Throttled> {
        let over = |b: Option<&mut Buckets>, limit: u32| {
            limit > 0 && b.is_some_and(|b| b.total(now_ms) >= limit)
        };
        if over(c.ips.get_mut(&ip), self.limits.per_ip) {
            return Err(Throttled::Ip);
        }
        if over(
            c.logins.get_mut(&login_key(login).to_owned()),
            self.limits.per_login,
        ) {
            return Err(Throttled::Login);
        }
        Ok(())
    }

    fn failed_at(&self, ip: IpAddr, login: &str, now_ms: u64) {
        let ip = self.ip_key(ip);
        let mut c = self.counters();
        self.count_locked(&mut c, ip, login, now_ms);
    }

    /// `ip` is already keyed.
    fn count_locked(&self, c: &mut Counters, ip: IpAddr, login: &str, now_ms: u64) {
        let window = self.limits.window;
        let make = || Buckets::new(window, BUCKETS);
        if self.limits.per_ip > 0 {
            c.ips.touch(&ip, now_ms, make).add(now_ms, 1);
        }
        if self.limits.per_login > 0 {
            c.logins
                .touch(&login_key(login).to_owned(), now_ms, make)
                .add(now_ms, 1);
        }
    }

    /// The store's counters for an attempt from `ip` for `login`: (key, limit) of each limit
    /// that is on, the address first.
    fn shared_keys(&self, ip: IpAddr, login: &str) -> Vec<(String, u32, Throttled)> {
        let mut keys = Vec::with_capacity(2);
        if self.limits.per_ip > 0 {
            let ip = self.ip_key(ip);
            keys.push((
                format!("throttle:ip:{ip}"),
                self.limits.per_ip,
                Throttled::Ip,
            ));
        }
        if self.limits.per_login > 0 {
            let key = format!("throttle:login:{}", login_key(login));
            keys.push((key, self.limits.per_login, Throttled::Login));
        }
        keys
    }

    fn window(&self) -> Window {
        Window {
            len: self.limits.window,
            buckets: BUCKETS as u32,
        }
    }

    /// Whether a shared store counts too (`[state] backend = "redis"`).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// [`check`](Self::check) against the shared store when there is one and it answers.
    pub async fn check_shared(&self, ip: IpAddr, login: &str) -> Result<(), Throttled> {
        let Some(shared) = &self.shared else {
            return self.check(ip, login);
        };
        let keys = self.shared_keys(ip, login);
        let window = self.window();
        let counters: Vec<Counter<'_>> = keys
            .iter()
            .map(|(key, ..)| Counter { key, window })
            .collect();
        match shared.answered(shared.store().totals(&counters).await) {
            Some(totals) => match keys
                .iter()
                .zip(totals)
                .find(|((_, limit, _), total)| *total >= u64::from(*limit))
            {
                Some(((_, _, which), _)) => Err(*which),
                None => Ok(()),
            },
            None => self.check(ip, login),
        }
    }

    /// [`reserve`](Self::reserve) in the shared store, atomically for every replica, when
    /// there is one and it answers; counted in this process too.
    pub async fn reserve_shared(&self, ip: IpAddr, login: &str) -> Result<Reservation, Throttled> {
        let Some(shared) = &self.shared else {
            return self.reserve(ip, login);
        };
        let keys = self.shared_keys(ip, login);
        let window = self.window();
        let counts: Vec<Count<'_>> = keys
            .iter()
            .map(|(key, limit, _)| Count {
                key,
                window,
                amount: 1,
                limit: u64::from(*limit),
            })
            .collect();
        match shared.answered(shared.store().add_within(&counts).await) {
            Some(Ok(stamp)) => {
                let now_ms = self.now_ms();
                let keyed = self.ip_key(ip);
                self.count_locked(&mut self.counters(), keyed, login, now_ms);
                Ok(Reservation {
                    ip: (self.limits.per_ip > 0).then_some(keyed),
                    at_ms: now_ms,
                    shared: Some(stamp),
                })
            }
            Some(Err(over)) => Err(keys.get(over).map_or(Throttled::Login, |k| k.2)),
            None => self.reserve(ip, login),
        }
    }

    /// [`refund`](Self::refund), in the shared store too when the reservation was made there.
    pub async fn refund_shared(&self, reservation: Reservation, ip: IpAddr, login: &str) {
        let stamp = reservation.shared;
        self.refund(reservation, login);
        if let (Some(shared), Some(stamp)) = (&self.shared, stamp) {
            let keys = self.shared_keys(ip, login);
            let counts = self.counts(&keys);
            shared.answered(shared.store().take_back(&counts, stamp).await);
        }
    }

    /// [`failed`](Self::failed), in the shared store too.
    pub async fn failed_shared(&self, ip: IpAddr, login: &str) {
        self.failed(ip, login);
        if let Some(shared) = &self.shared {
            let keys = self.shared_keys(ip, login);
            let counts = self.counts(&keys);
            shared.answered(shared.store().add(&counts).await);
        }
    }

    /// [`succeeded`](Self::succeeded), in the shared store too.
    pub async fn succeeded_shared(&self, login: &str) {
        self.succeeded(login);
        if let Some(shared) = &self.shared
            && self.limits.per_login > 0
        {
            let key = format!("throttle:login:{}", login_key(login));
            shared.answered(shared.store().clear(&[key.as_str()]).await);
        }
    }

    fn counts<'a>(&self, keys: &'a [(String, u32, Throttled)]) -> Vec<Count<'a>> {
        let window = self.window();
        keys.iter()
            .map(|(key, limit, _)| Count {
                key,
                window,
                amount: 1,
                limit: u64::from(*limit),
            })
            .collect()
    }

    /// How many addresses and logins are tracked (tests).
    #[cfg(test)]
    fn tracked(&self) -> (usize, usize) {
        let c = self.counters();
        (c.ips.len(), c.logins.len())
    }
}

impl std::fmt::Debug for AuthThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthThrottle")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn throttle(per_ip: u32, per_login: u32) -> AuthThrottle {
        AuthThrottle::new(ThrottleLimits {
            window: Duration::from_secs(15 * 60),
            per_ip,
            per_login,
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_ip_limit_across_logins_then_the_window_slides() {
        let t = throttle(3, 100);
        let a = ip("192.0.2.1");
        for (i, login) in ["x@t", "y@t", "nobody@t"].iter().enumerate() {
            assert_eq!(t.check_at(a, login, i as u64), Ok(()));
            t.failed_at(a, login, i as u64);
        }
        assert_eq!(t.check_at(a, "alice@t", 10), Err(Throttled::Ip));
        assert_eq!(t.check_at(ip("192.0.2.2"), "alice@t", 10), Ok(()));
        // Success of another login does not help the address.
        t.succeeded("x@t");
        assert_eq!(t.check_at(a, "alice@t", 10), Err(Throttled::Ip));
        assert_eq!(t.check_at(a, "alice@t", 15 * MIN - 1), Err(Throttled::Ip));
        assert_eq!(t.check_at(a, "alice@t", 15 * MIN), Ok(()));
    }

    #[test]
    fn per_login_limit_across_addresses_and_success_clears_it() {
        let t = throttle(100, 2);
        t.failed_at(ip("192.0.2.1"), "alice@t", 0);
        t.failed_at(ip("198.51.100.7"), "alice@t", 1);
        assert_eq!(
            t.check_at(ip("203.0.113.9"), "alice@t", 2),
            Err(Throttled::Login)
        );
        assert_eq!(t.check_at(ip("203.0.113.9"), "bob@t", 2), Ok(()));
        t.succeeded("alice@t");
        assert_eq!(t.check_at(ip("203.0.113.9"), "alice@t", 3), Ok(()));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let t = throttle(2, 0);
        t.failed_at(ip("2001:db8:1:2::1"), "a", 0);
        t.failed_at(ip("2001:db8:1:2:ffff::9"), "b", 0);
        assert_eq!(
            t.check_at(ip("2001:db8:1:2::77"), "c", 0),
            Err(Throttled::Ip)
        );
        assert_eq!(t.check_at(ip("2001:db8:1:3::1"), "c", 0), Ok(()));
        t.failed_at(ip("::ffff:192.0.2.1"), "a", 0);
        t.failed_at(ip("192.0.2.1"), "a", 0);
        assert_eq!(t.check_at(ip("192.0.2.1"), "c", 0), Err(Throttled::Ip));
    }

    #[test]
    fn reservations_count_at_once_and_hold_the_limit() {
        let t = throttle(3, 2);
        let a = ip("192.0.2.1");
        let r1 = t.reserve_at(a, "alice@t", 0).unwrap();
        let r2 = t.reserve_at(ip("192.0.2.2"), "alice@t", 0).unwrap();
        // Two in flight for alice: a third is refused before either finished.
        assert_eq!(
            t.reserve_at(ip("192.0.2.3"), "alice@t", 0).unwrap_err(),
            Throttled::Login
        );
        // A refund (success or not verified) gives the place back; a kept one stays.
        t.refund(r1, "alice@t");
        drop(r2);
        let r3 = t.reserve_at(a, "alice@t", 1).unwrap();
        assert_eq!(t.check_at(a, "bob@t", 1), Ok(()), "a: 1 kept + 1 refunded");
        drop(r3);
        assert_eq!(t.check_at(a, "bob@t", 1), Ok(()));
        let _r4 = t.reserve_at(a, "bob@t", 1).unwrap();
        t.failed_at(a, "bob@t", 1);
        assert_eq!(t.check_at(a, "carol@t", 2), Err(Throttled::Ip), "a: 3 kept");
        // A refund after the window moved on takes nothing from newer failures.
        let old = t.reserve_at(ip("192.0.2.9"), "dave@t", 2).unwrap();
        t.failed_at(ip("192.0.2.9"), "erin@t", 16 * MIN);
        t.refund(old, "dave@t");
        t.failed_at(ip("192.0.2.9"), "erin@t", 16 * MIN);
        assert_eq!(
            t.check_at(ip("192.0.2.9"), "x@t", 16 * MIN),
            Ok(()),
            "2 < 3"
        );
        t.failed_at(ip("192.0.2.9"), "erin@t", 16 * MIN);
        assert_eq!(
            t.check_at(ip("192.0.2.9"), "x@t", 16 * MIN),
            Err(Throttled::Ip)
        );
    }

    #[test]
    fn the_ipv6_prefix_is_configurable() {
        let t = throttle(1, 0);
        t.set_ipv6_prefix(48);
        t.failed_at(ip("2001:db8:1:2::1"), "a", 0);
        assert_eq!(
            t.check_at(ip("2001:db8:1:ffff::1"), "b", 0),
            Err(Throttled::Ip)
        );
        assert_eq!(t.check_at(ip("2001:db8:2::1"), "b", 0), Ok(()));
    }

    #[test]
    fn zero_turns_a_limit_off_and_tracks_nothing() {
        let t = throttle(0, 0);
        for i in 0..50 {
            t.failed_at(ip("192.0.2.1"), "alice@t", i);
        }
        assert_eq!(t.check_at(ip("192.0.2.1"), "alice@t", 50), Ok(()));
        assert_eq!(t.tracked(), (0, 0));
    }

    #[test]
    fn long_logins_are_truncated_and_memory_is_capped() {
        let t = AuthThrottle::with_capacity(
            ThrottleLimits {
                window: Duration::from_secs(60),
                per_ip: 5,
                per_login: 1,
            },
            10,
        );
        let long = "é".repeat(1000);
        t.failed_at(ip("192.0.2.1"), &long, 0);
        let other = format!("{}zzz", &long[..MAX_LOGIN_KEY]);
        assert_eq!(login_key(&long).len(), MAX_LOGIN_KEY);
        assert_eq!(
            t.check_at(ip("192.0.2.9"), &other, 1),
            Err(Throttled::Login),
            "same first {MAX_LOGIN_KEY} bytes, same counter"
        );
        for i in 0..1000u32 {
            let addr = IpAddr::from(i.to_be_bytes());
            t.failed_at(addr, &format!("u{i}"), 2);
        }
        assert_eq!(t.tracked(), (10, 10));
        // Everything expires after a quiet window.
        t.failed_at(ip("192.0.2.1"), "z", 60_000 + 2);
        assert_eq!(t.tracked(), (1, 1));
    }
}
