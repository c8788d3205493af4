//! Login throttling across connections: failed authentications counted per client address
//! and per login in a sliding window (`[limits] auth_window`). Over either limit, AUTH is
//! refused with `454 4.7.0` before any argon2 runs, so a password-guessing botnet costs us a
//! map lookup per attempt instead of 19 MiB and tens of milliseconds.
//!
//! - Only verified failures count (wrong password, unknown login); refused attempts do not, so
//!   the window really ends `auth_window` after the last guess that was checked.
//! - IPv6 clients are counted per /64: one host commonly has a whole /64 to rotate through.
//! - A successful login clears that login's counter (a user who mistyped twice is not left
//!   half-locked) but never an address's counter: an attacker holding one valid account could
//!   otherwise reset its address between guesses at other accounts.
//! - Unknown logins count too, per address and per attempted login (truncated to
//!   [`MAX_LOGIN_KEY`] bytes), so guessing which logins exist is throttled like passwords.
//! - Memory is bounded: at most [`MAX_TRACKED`] addresses and as many logins, the least
//!   recently failing evicted first; entries idle for a whole window are pruned.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::window::{BoundedMap, Buckets};

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
    origin: Instant,
    counters: Mutex<Counters>,
}

/// The address as counted: IPv4 (also when mapped into IPv6) as is, IPv6 by its /64.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
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
            origin: Instant::now(),
            counters: Mutex::new(Counters {
                ips: BoundedMap::new(max_tracked, limits.window),
                logins: BoundedMap::new(max_tracked, limits.window),
            }),
        }
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

    /// A successful login: clears that login's failures (never the address's).
    pub fn succeeded(&self, login: &str) {
        self.counters().logins.remove(&login_key(login).to_owned());
    }

    fn check_at(&self, ip: IpAddr, login: &str, now_ms: u64) -> Result<(), Throttled> {
        let mut c = self.counters();
        let over = |b: Option<&mut Buckets>, limit: u32| {
            limit > 0 && b.is_some_and(|b| b.total(now_ms) >= limit)
        };
        if over(c.ips.get_mut(&ip_key(ip)), self.limits.per_ip) {
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
        let window = self.limits.window;
        let make = || Buckets::new(window, BUCKETS);
        let mut c = self.counters();
        if self.limits.per_ip > 0 {
            c.ips.touch(&ip_key(ip), now_ms, make).add(now_ms, 1);
        }
        if self.limits.per_login > 0 {
            c.logins
                .touch(&login_key(login).to_owned(), now_ms, make)
                .add(now_ms, 1);
        }
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
