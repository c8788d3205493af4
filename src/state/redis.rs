//! The Redis/Valkey store: sliding-window counters and the suspension set, shared by every
//! replica.
//!
//! # Counters
//!
//! One hash per counter, `{prefix}:w:{key}`. A window of `len` in `n` buckets moves in steps of
//! `len / n`; the step that holds time `t` (milliseconds) is `floor(t * n / len)`, and that
//! index is the hash field, its value the count added during that step. At time `now` the live
//! steps are the last `n`: `bucket(now) - n + 1 ..= bucket(now)`; a count is part of the total
//! until its step leaves that range. Fields of older steps (and anything that is not a
//! decimal count) are deleted by whichever script reads the hash next, and every write sets
//! `PEXPIRE` to the window plus one step, so a counter nobody touches vanishes on its own.
//!
//! Every operation on counters is one Lua script (EVALSHA, loaded on demand: the crate
//! resends the source on NOSCRIPT) that reads the time from the server (`TIME`), never from
//! the replica, so replicas with skewed clocks put counts in the same steps. `add_within`
//! reads every total, compares each with its limit, and then adds all or nothing; scripts run
//! one at a time on the server, so concurrent replicas cannot both pass the last free slot.
//!
//! Lua numbers are doubles: counts are clamped to [`MAX_COUNT`] (2^50), and the step index is
//! computed as `q * n + floor(r * n / len)` with `t = q * len + r` instead of from the product
//! `t * n` (which passes 2^53 around 2049 for 3600 buckets), each division corrected to the
//! exact floor. [`bucket_of`] and [`live_range`] are the same rule in Rust; the tests compare
//! them with a double-precision copy of the script's arithmetic.
//!
//! Keys are `t:{text}` when the caller's key is short and made of harmless characters
//! (letters, digits, `.-_:@/+=`), `h:{hex SHA-256}` otherwise: a login or address cannot grow
//! a key without bound, inject separators or collide with another key.
//!
//! # Connection
//!
//! [`Store::new`] only parses the URL. The first call connects (one multiplexed connection,
//! shared by all calls); a call that fails on the connection, or times out, drops it, and the
//! next call connects again: after a server restart at most one call fails. Every call is
//! bounded as a whole, connecting included, by the timeout. Errors are returned, never logged
//! here (callers log once per burst); their text never holds the URL's password.
//!
//! `rediss://` verifies the server's certificate against the system roots (or the file named
//! by `SSL_CERT_FILE`); a private CA can be given in the URL as `?ca_file=/path/ca.pem`, which
//! then is the only trusted root. Redis Cluster is not supported (a script's keys may live on
//! different nodes).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, Script};

use super::{Count, Counter, Stamp, StoreError, StoredSuspension, Window};
use crate::config::redact_url;
use crate::logsafe::Escaped;

/// Counts and totals never pass this (2^50): well inside the integers a double holds exactly.
const MAX_COUNT: u64 = 1 << 50;
/// Windows the store accepts: the step arithmetic is exact for every one of them.
const MIN_WINDOW_MS: u64 = 1_000;
const MAX_WINDOW_MS: u64 = 7 * 24 * 3600 * 1000;
const MAX_BUCKETS: u32 = 3600;
/// Counters in one call: more would be a caller's bug, not a real check.
const MAX_COUNTERS: usize = 64;
/// `suspensions` stops reading here.
const MAX_SUSPENSIONS: usize = 100_000;
/// A suspension's login and JSON longer than these are skipped as damaged.
const MAX_LOGIN_LEN: usize = 1024;
const MAX_SUSPENSION_JSON: usize = 64 * 1024;
/// A private CA file (`?ca_file=`) larger than this is refused.
const MAX_CA_FILE: u64 = 1024 * 1024;
/// A caller's key kept readable in the store up to this length.
const MAX_TEXT_KEY: usize = 200;
/// Error texts from the server or the crate are cut here.
const MAX_ERROR_TEXT: usize = 300;

/// Helpers every script starts with (see the module doc for the arithmetic).
macro_rules! prelude {
    () => {
        r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local MAX = 1125899906842624
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end
local function bucket(t, len, n)
  local q = idiv(t, len)
  return q * n + idiv((t - q * len) * n, len)
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + idiv(tonumber(t[2]), 1000)
end
local function num(s)
  if type(s) == 'string' and #s <= 16 and string.match(s, '^%d+$') then return tonumber(s) end
  return nil
end
local function arg(i)
  local b = 1 + (i - 1) * 4
  return tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
end
local function sweep(key, lo)
  local all = redis.call('HGETALL', key)
  local total, dead = 0, {}
  for j = 1, #all, 2 do
    local f, v = num(all[j]), num(all[j + 1])
    if f == nil or v == nil or f < lo then
      dead[#dead + 1] = all[j]
    else
      total = math.min(total + math.min(v, MAX), MAX)
    end
  end
  for j = 1, #dead, 1000 do
    redis.call('HDEL', key, unpack(dead, j, math.min(j + 999, #dead)))
  end
  return total
end
local function put(key, b, amount, len, n)
  if amount > 0 then
    local f = string.format('%.0f', b)
    local cur = num(redis.call('HGET', key, f)) or 0
    redis.call('HSET', key, f, string.format('%.0f', math.min(cur + amount, MAX)))
    redis.call('PEXPIRE', key, string.format('%.0f', len + idiv(len + n - 1, n) + 1))
  end
end
"#
    };
}

/// The totals of KEYS now.
static TOTALS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local now, out = now_ms(), {}
for i = 1, #KEYS do
  local len, n = arg(i)
  out[i] = sweep(KEYS[i], bucket(now, len, n) - n + 1)
end
return out
"#
    ))
});

/// Add every amount when every total stays within its limit: `{1, now}`, else `{0, index}`.
static ADD_WITHIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local now = now_ms()
for i = 1, #KEYS do
  local len, n, amount, limit = arg(i)
  local total = sweep(KEYS[i], bucket(now, len, n) - n + 1)
  if limit > 0 and total + amount > limit then return {0, i - 1} end
end
for i = 1, #KEYS do
  local len, n, amount = arg(i)
  put(KEYS[i], bucket(now, len, n), amount, len, n)
end
return {1, now}
"#
    ))
});

/// Add every amount: `{now, total after, ...}`.
static ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local now, out = now_ms(), {}
out[1] = now
for i = 1, #KEYS do
  local len, n, amount = arg(i)
  local b = bucket(now, len, n)
  local total = sweep(KEYS[i], b - n + 1)
  put(KEYS[i], b, amount, len, n)
  out[i + 1] = math.min(total + amount, MAX)
end
return out
"#
    ))
});

/// Take every amount back from the step that held ARGV[1] (a time in ms), when still live.
static TAKE_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        prelude!(),
        r#"
local now, stamp = now_ms(), tonumber(ARGV[1])
for i = 1, #KEYS do
  local len, n, amount = arg(i)
  local b = bucket(stamp, len, n)
  if amount > 0 and b >= bucket(now, len, n) - n + 1 then
    local f = string.format('%.0f', b)
    local left = (num(redis.call('HGET', KEYS[i], f)) or 0) - amount
    if left > 0 then
      redis.call('HSET', KEYS[i], f, string.format('%.0f', left))
    else
      redis.call('HDEL', KEYS[i], f)
    end
  end
end
return 1
"#
    ))
});

/// A Redis or Valkey server shared by the replicas.
pub struct Store {
    client: redis::Client,
    prefix: String,
    timeout: Duration,
    /// The URL with its password replaced, for error texts.
    shown: String,
    /// Texts scrubbed from every error (the password, raw and percent-decoded).
    secrets: Vec<String>,
    /// The shared connection and its generation; held only to clone or replace it.
    slot: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// One connect at a time: the others wait for it rather than opening their own.
    connecting: tokio::sync::Mutex<()>,
    generation: AtomicU64,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.shown)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// From `url` (`redis://`, `rediss://`); keys are `prefix:...`; connects on first use.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Store, StoreError> {
        let url = url.trim();
        let shown = redact_url(url);
        let prefix_ok = !prefix.is_empty()
            && prefix.len() <= 64
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if !prefix_ok {
            return Err(StoreError::Protocol(format!(
                "prefix {:?} is not 1 to 64 letters, digits, '-', '_', '.', ':'",
                Escaped(prefix)
            )));
        }
        let secrets = password_of(url);
        let bad = |what: String| {
            let mut text = format!("{shown}: {what}");
            scrub(&mut text, &secrets);
            StoreError::Unreachable(text)
        };
        let (url, ca_file) = split_ca_file(url).map_err(&bad)?;
        let tls = url
            .get(..9)
            .is_some_and(|s| s.eq_ignore_ascii_case("rediss://"));
        if tls {
            // The crate builds its rustls config with the process-wide provider; make sure
            // there is one, and that it is the one every other TLS config here uses.
            if rustls::crypto::CryptoProvider::get_default().is_none() {
                let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            }
        }
        let client = match ca_file {
            Some(path) if tls => {
                let pem = read_ca_file(&path).map_err(&bad)?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                redis::Client::build_with_tls(url.as_str(), certs)
            }
            Some(_) => return Err(bad("ca_file needs a rediss:// url".into())),
            None => redis::Client::open(url.as_str()),
        }
        .map_err(|e| bad(e.to_string()))?;
        Ok(Store {
            client,
            prefix: prefix.to_owned(),
            timeout,
            shown,
            secrets,
            slot: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
        })
    }

    /// The totals of `counters` now, in order: one round trip.
    pub async fn totals(&self, counters: &[Counter<'_>]) -> Result<Vec<u64>, StoreError> {
        let args = counters
            .iter()
            .map(|c| (c.key, c.window, 0, 0))
            .collect::<Vec<_>>();
        let out: Vec<u64> = self.script(&TOTALS, &args, 0).await?;
        if out.len() != counters.len() {
            return Err(self.unexpected("totals"));
        }
        Ok(out)
    }

    /// Atomically: when every count's total plus its amount stays within its limit, add them
    /// all and return when (`Ok(Ok(stamp))`); otherwise add nothing and return the index of
    /// the first count over its limit (`Ok(Err(i))`). One round trip.
    pub async fn add_within(
        &self,
        counts: &[Count<'_>],
    ) -> Result<Result<Stamp, usize>, StoreError> {
        let args = count_args(counts);
        let out: Vec<u64> = self.script(&ADD_WITHIN, &args, 0).await?;
        match out[..] {
            [1, now] => Ok(Ok(Stamp(now))),
            [0, i] if (i as usize) < counts.len() => Ok(Err(i as usize)),
            _ => Err(self.unexpected("add_within")),
        }
    }

    /// Add every count's amount whatever the limits; the totals after, in order, and when.
    pub async fn add(&self, counts: &[Count<'_>]) -> Result<(Stamp, Vec<u64>), StoreError> {
        let args = count_args(counts);
        let mut out: Vec<u64> = self.script(&ADD, &args, 0).await?;
        if out.len() != counts.len() + 1 {
            return Err(self.unexpected("add"));
        }
        let now = out.remove(0);
        Ok((Stamp(now), out))
    }

    /// Take back counts added at `stamp` (never below zero; nothing when that step has left
    /// the window).
    pub async fn take_back(&self, counts: &[Count<'_>], stamp: Stamp) -> Result<(), StoreError> {
        if stamp.0 > MAX_COUNT * 8 {
            return Err(StoreError::Protocol(format!(
                "stamp {} out of range",
                stamp.0
            )));
        }
        let args = count_args(counts);
        let _: u64 = self.script(&TAKE_BACK, &args, stamp.0).await?;
        Ok(())
    }

    /// Forget these counters.
    pub async fn clear(&self, keys: &[&str]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        if keys.len() > MAX_COUNTERS {
            return Err(too_many(keys.len()));
        }
        let names: Vec<String> = keys.iter().map(|k| self.counter_key(k)).collect();
        self.call(move |mut c| async move {
            redis::cmd("DEL")
                .arg(&names)
                .query_async::<u64>(&mut c)
                .await
        })
        .await?;
        Ok(())
    }

    /// Suspend `login` (kept with `since` and `reason`); `false` when it already was.
    pub async fn suspend(&self, login: &str, s: &StoredSuspension) -> Result<bool, StoreError> {
        let json = serde_json::to_string(s).map_err(|e| StoreError::Protocol(e.to_string()))?;
        let key = self.suspended_key();
        self.call(move |mut c| async move {
            redis::cmd("HSETNX")
                .arg(&key)
                .arg(login)
                .arg(&json)
                .query_async::<bool>(&mut c)
                .await
        })
        .await
    }

    /// Lift `login`'s suspension; `false` when it was not suspended.
    pub async fn unsuspend(&self, login: &str) -> Result<bool, StoreError> {
        let key = self.suspended_key();
        self.call(move |mut c| async move {
            redis::cmd("HDEL")
                .arg(&key)
                .arg(login)
                .query_async::<u64>(&mut c)
                .await
        })
        .await
        .map(|n| n > 0)
    }

    /// Every suspension (bounded: at most 100000 entries are read).
    pub async fn suspensions(&self) -> Result<BTreeMap<String, StoredSuspension>, StoreError> {
        let key = self.suspended_key();
        self.call(move |mut c| async move {
            let mut out = BTreeMap::new();
            let (mut cursor, mut seen) = (0u64, 0usize);
            // HSCAN, not HGETALL: a huge hash is read in pages and the read stops at the bound.
            loop {
                let (next, flat): (u64, Vec<Vec<u8>>) = redis::cmd("HSCAN")
                    .arg(&key)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut c)
                    .await?;
                for pair in flat.chunks_exact(2) {
                    seen += 1;
                    if let Some((login, s)) = parse_suspension(&pair[0], &pair[1]) {
                        out.insert(login, s);
                    }
                }
                if next == 0 || seen >= MAX_SUSPENSIONS {
                    return Ok(out);
                }
                cursor = next;
            }
        })
        .await
    }

    /// One round trip (`PING`): for `/health`, the metrics gauge and `check-config`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.call(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map(drop)
    }

    /// `{prefix}:w:` and the caller's key, encoded (see the module doc).
    fn counter_key(&self, key: &str) -> String {
        format!("{}:w:{}", self.prefix, encode_key(key))
    }

    fn suspended_key(&self) -> String {
        format!("{}:suspended", self.prefix)
    }

    /// Run a counter script with one key and four arguments per counter after `first`.
    async fn script<T: redis::FromRedisValue + Send>(
        &self,
        script: &'static Script,
        counters: &[(&str, Window, u64, u64)],
        first: u64,
    ) -> Result<T, StoreError> {
        if counters.len() > MAX_COUNTERS {
            return Err(too_many(counters.len()));
        }
        let mut inv = script.prepare_invoke();
        inv.arg(first);
        for &(key, window, amount, limit) in counters {
            let (len_ms, n) = window_args(window)?;
            inv.key(self.counter_key(key));
            inv.arg(len_ms)
                .arg(n)
                .arg(amount.min(MAX_COUNT))
                .arg(limit.min(MAX_COUNT));
        }
        self.call(move |mut c| async move { inv.invoke_async(&mut c).await })
            .await
    }

    /// Run `f` on the shared connection, connecting first when there is none; the whole of
    /// it within the timeout.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        // The generation in use, so a failure drops that connection and not a newer one.
        let used = AtomicU64::new(0);
        let work = async {
            let (generation, conn) = self.connection().await?;
            used.store(generation, Ordering::Relaxed);
            f(conn).await.map_err(|e| self.failed(generation, &e))
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => {
                // A connection that let a call time out may be dead without a reset (a
                // partition): the next call connects afresh rather than waiting on it again.
                self.forget(used.load(Ordering::Relaxed));
                Err(StoreError::Timeout(self.timeout))
            }
        }
    }

    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        let slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref().map(|(g, c)| (*g, c.clone()))
    }

    async fn connection(&self) -> Result<(u64, MultiplexedConnection), StoreError> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    StoreError::Timeout(self.timeout)
                } else {
                    StoreError::Unreachable(self.text(&e))
                }
            })?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *self.slot.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    /// Drop connection `generation` if it is still the shared one.
    fn forget(&self, generation: u64) {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
            *slot = None;
        }
    }

    /// Classify a failed command; a failure of the connection itself drops it.
    fn failed(&self, generation: u64, e: &RedisError) -> StoreError {
        if e.is_timeout() {
            self.forget(generation);
            StoreError::Timeout(self.timeout)
        } else if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_unrecoverable_error()
        {
            self.forget(generation);
            StoreError::Unreachable(self.text(e))
        } else if e.kind() == redis::ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
        {
            // A URL without the password the server wants: a connection problem, not an
            // answer.
            StoreError::Unreachable(self.text(e))
        } else {
            StoreError::Protocol(self.text(e))
        }
    }

    /// An error's text: the redacted URL first, no password, escaped and bounded.
    fn text(&self, e: &RedisError) -> String {
        let mut text = format!("{}: {}", self.shown, Escaped(e.to_string()));
        scrub(&mut text, &self.secrets);
        if text.len() > MAX_ERROR_TEXT {
            let mut end = MAX_ERROR_TEXT;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str("...");
        }
        text
    }

    fn unexpected(&self, what: &str) -> StoreError {
        StoreError::Protocol(format!("{}: unexpected answer to {what}", self.shown))
    }
}

/// The script arguments of counts: key, window, amount, limit.
fn count_args<'a>(counts: &[Count<'a>]) -> Vec<(&'a str, Window, u64, u64)> {
    counts
        .iter()
        .map(|c| (c.key, c.window, c.amount, c.limit))
        .collect()
}

fn too_many(n: usize) -> StoreError {
    StoreError::Protocol(format!("{n} counters in one call (at most {MAX_COUNTERS})"))
}

/// A window's length in ms and its buckets, when the store supports it.
fn window_args(w: Window) -> Result<(u64, u32), StoreError> {
    let len_ms = u64::try_from(w.len.as_millis()).unwrap_or(u64::MAX);
    if !(MIN_WINDOW_MS..=MAX_WINDOW_MS).contains(&len_ms) || !(1..=MAX_BUCKETS).contains(&w.buckets)
    {
        return Err(StoreError::Protocol(format!(
            "window {:?} in {} buckets: the store takes 1s to 7d in 1 to {MAX_BUCKETS}",
            w.len, w.buckets
        )));
    }
    Ok((len_ms, w.buckets))
}

/// The step of `window` that holds `now_ms`: `floor(now_ms * buckets / len)`, as the scripts
/// compute it.
#[cfg_attr(not(test), allow(dead_code))]
fn bucket_of(now_ms: u64, window: Window) -> u64 {
    let len = window.len.as_millis().max(1);
    let n = u128::from(window.buckets.max(1));
    u64::try_from(u128::from(now_ms) * n / len).unwrap_or(u64::MAX)
}

/// The steps whose counts are in the total at `now_ms`.
#[cfg_attr(not(test), allow(dead_code))]
fn live_range(now_ms: u64, window: Window) -> RangeInclusive<u64> {
    let b = bucket_of(now_ms, window);
    b.saturating_sub(u64::from(window.buckets.max(1)) - 1)..=b
}

/// The hash name part of a caller's key (see the module doc).
fn encode_key(key: &str) -> String {
    let plain = key.len() <= MAX_TEXT_KEY
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:@/+=".contains(&b));
    if plain {
        return format!("t:{key}");
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
    format!("h:{}", data_encoding::HEXLOWER.encode(digest.as_ref()))
}

/// One suspension from the hash, or `None` when it is damaged.
fn parse_suspension(login: &[u8], json: &[u8]) -> Option<(String, StoredSuspension)> {
    if login.len() > MAX_LOGIN_LEN || json.len() > MAX_SUSPENSION_JSON {
        return None;
    }
    let login = String::from_utf8(login.to_vec()).ok()?;
    let s = serde_json::from_slice(json).ok()?;
    Some((login, s))
}

/// The password in a URL's user info, as written and percent-decoded.
fn password_of(url: &str) -> Vec<String> {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return Vec::new();
    };
    let authority = url[start..].split(['/', '?', '#']).next().unwrap_or("");
    let Some(userinfo) = authority.rsplit_once('@').map(|(u, _)| u) else {
        return Vec::new();
    };
    let Some((_, pw)) = userinfo.split_once(':') else {
        return Vec::new();
    };
    if pw.is_empty() {
        return Vec::new();
    }
    let mut out = vec![pw.to_owned()];
    let decoded = percent_decode(pw);
    if decoded != pw && !decoded.is_empty() {
        out.push(decoded);
    }
    out
}

fn scrub(text: &mut String, secrets: &[String]) {
    for s in secrets {
        if text.contains(s.as_str()) {
            *text = text.replace(s.as_str(), "***");
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL without a `ca_file=` query parameter, and that parameter's path.
fn split_ca_file(url: &str) -> Result<(String, Option<String>), String> {
    let Some((base, rest)) = url.split_once('?') else {
        return Ok((url.to_owned(), None));
    };
    let (query, fragment) = match rest.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (rest, None),
    };
    let mut ca = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.strip_prefix("ca_file=") {
            Some(_) if ca.is_some() => return Err("ca_file given twice".into()),
            Some(path) => ca = Some(percent_decode(path)),
            None => kept.push(pair),
        }
    }
    let mut out = base.to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    Ok((out, ca))
}

fn read_ca_file(path: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("ca_file {path}: {e}"))?;
    let mut pem = Vec::new();
    file.take(MAX_CA_FILE + 1)
        .read_to_end(&mut pem)
        .map_err(|e| format!("ca_file {path}: {e}"))?;
    if pem.len() as u64 > MAX_CA_FILE {
        return Err(format!("ca_file {path}: larger than {MAX_CA_FILE} bytes"));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests;
