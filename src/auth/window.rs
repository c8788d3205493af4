//! Counting events in a sliding window with bounded memory: [`Buckets`] (one counter's window,
//! a fixed ring of sub-window counts) and [`BoundedMap`] (many counters, capped in number, the
//! least recently used evicted first, expired ones pruned). Pure: time is passed in as
//! milliseconds from an origin the caller picks, so tests need no clock.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::Duration;

/// Events in the last `window`, counted in `n` equal sub-windows: the window slides one
/// sub-window at a time, so it spans between `(n-1)/n` and all of `window`. Fixed memory
/// (`n` counters) whatever the number of events.
#[derive(Debug, Clone)]
pub struct Buckets {
    width_ms: u64,
    counts: Box<[u32]>,
    /// The sub-window number (`now / width`) of the newest bucket.
    head: u64,
}

impl Buckets {
    /// A window of `window` in `n` sub-windows (fewer when they would be under 1 ms wide).
    pub fn new(window: Duration, n: usize) -> Buckets {
        // Sub-windows of at least 1 ms: a tiny window gets fewer of them, never a longer span.
        let window_ms = (window.as_millis() as u64).max(1);
        let n = (n as u64).clamp(1, window_ms);
        let width_ms = window_ms / n;
        let n = n as usize;
        Buckets {
            width_ms,
            counts: vec![0; n].into_boxed_slice(),
            head: 0,
        }
    }

    /// Drop the sub-windows that fell out of the window by `now_ms`.
    fn advance(&mut self, now_ms: u64) {
        let current = now_ms / self.width_ms;
        if current <= self.head {
            return;
        }
        let n = self.counts.len() as u64;
        let stale = (current - self.head).min(n);
        for i in 1..=stale {
            let slot = ((self.head + i) % n) as usize;
            self.counts[slot] = 0;
        }
        self.head = current;
    }

    /// Count `amount` events at `now_ms`.
    pub fn add(&mut self, now_ms: u64, amount: u32) {
        self.advance(now_ms);
        let slot = (self.head % self.counts.len() as u64) as usize;
        self.counts[slot] = self.counts[slot].saturating_add(amount);
    }

    /// Take back `amount` events counted at `at_ms` (a refund); nothing when that sub-window
    /// has already left the window or is in the future.
    pub fn remove(&mut self, at_ms: u64, amount: u32) {
        let sub = at_ms / self.width_ms;
        let n = self.counts.len() as u64;
        if sub > self.head || self.head - sub >= n {
            return;
        }
        let slot = (sub % n) as usize;
        self.counts[slot] = self.counts[slot].saturating_sub(amount);
    }

    /// The events in the window ending at `now_ms`.
    pub fn total(&mut self, now_ms: u64) -> u32 {
        self.advance(now_ms);
        self.counts.iter().fold(0u32, |a, c| a.saturating_add(*c))
    }

    /// Forget every event.
    pub fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
    }
}

/// One entry: its value, when it was last touched and its place in the touch order.
#[derive(Debug)]
struct Slot<V> {
    value: V,
    touched_ms: u64,
    seq: u64,
}

/// A map with at most `max_keys` entries. Entries untouched for `ttl` are pruned; when the map
/// is full, the least recently touched entry is evicted. Every operation is O(log n), so a
/// flood of new keys (an attacker's many addresses) costs memory up to the cap and no more.
#[derive(Debug)]
pub struct BoundedMap<K, V> {
    entries: HashMap<K, Slot<V>>,
    /// Touch order: `seq` -> key, oldest first. Times only grow, so the oldest is also the
    /// first to expire.
    order: BTreeMap<u64, K>,
    next_seq: u64,
    max_keys: usize,
    ttl_ms: u64,
}

impl<K: Hash + Eq + Clone, V> BoundedMap<K, V> {
    /// At most `max_keys` entries (at least 1); an entry untouched for `ttl` is dropped.
    pub fn new(max_keys: usize, ttl: Duration) -> BoundedMap<K, V> {
        BoundedMap {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            max_keys: max_keys.max(1),
            ttl_ms: ttl.as_millis() as u64,
        }
    }

    /// The entry for `key`, if any, without touching it.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|s| &mut s.value)
    }

    /// The entry for `key` (made with `make` when absent), marked as touched at `now_ms`.
    /// Expired entries are pruned first; a new key in a full map evicts the oldest entry.
    pub fn touch(&mut self, key: &K, now_ms: u64, make: impl FnOnce() -> V) -> &mut V {
        self.prune(now_ms);
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(slot) = self.entries.get_mut(key) {
            self.order.remove(&slot.seq);
            slot.seq = seq;
            slot.touched_ms = now_ms;
        } else {
            if self.entries.len() >= self.max_keys
                && let Some((_, oldest)) = self.order.pop_first()
            {
                self.entries.remove(&oldest);
            }
            self.entries.insert(
                key.clone(),
                Slot {
                    value: make(),
                    touched_ms: now_ms,
                    seq,
                },
            );
        }
        self.order.insert(seq, key.clone());
        &mut self.entries.get_mut(key).expect("just inserted").value
    }

    /// Remove `key`.
    pub fn remove(&mut self, key: &K) {
        if let Some(slot) = self.entries.remove(key) {
            self.order.remove(&slot.seq);
        }
    }

    /// Drop the entries untouched for the ttl.
    pub fn prune(&mut self, now_ms: u64) {
        while let Some((&seq, key)) = self.order.first_key_value() {
            let expired = self
                .entries
                .get(key)
                .is_none_or(|s| now_ms.saturating_sub(s.touched_ms) >= self.ttl_ms);
            if !expired {
                break;
            }
            if let Some(key) = self.order.remove(&seq) {
                self.entries.remove(&key);
            }
        }
    }

    /// The number of entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn buckets_slide_one_sub_window_at_a_time() {
        // 15 minutes in 15 one-minute buckets.
        let mut b = Buckets::new(Duration::from_secs(15 * 60), 15);
        assert_eq!(b.total(0), 0);
        b.add(0, 1);
        b.add(30_000, 2);
        assert_eq!(b.total(59_999), 3);
        b.add(5 * MIN, 4);
        assert_eq!(b.total(14 * MIN + 59_999), 7, "all still in the window");
        assert_eq!(b.total(15 * MIN), 4, "minute 0 slid out");
        assert_eq!(b.total(20 * MIN - 1), 4);
        assert_eq!(b.total(20 * MIN), 0, "minute 5 slid out");
        // A jump far ahead clears everything, and time never runs backwards.
        b.add(20 * MIN, 1);
        assert_eq!(b.total(1000 * MIN), 0);
        b.add(1000 * MIN, 5);
        assert_eq!(b.total(10), 5, "an earlier time reads the current window");
        b.clear();
        assert_eq!(b.total(1000 * MIN), 0);
    }

    #[test]
    fn buckets_saturate_and_tolerate_tiny_windows() {
        let mut b = Buckets::new(Duration::from_millis(1), 60);
        b.add(0, u32::MAX);
        b.add(0, 7);
        assert_eq!(b.total(0), u32::MAX);
        assert_eq!(b.total(2), 0);
        let mut b = Buckets::new(Duration::ZERO, 0);
        b.add(5, 1);
        assert_eq!(b.total(5), 1);
    }

    #[test]
    fn map_is_capped_and_evicts_the_least_recently_touched() {
        let mut m: BoundedMap<u32, u32> = BoundedMap::new(3, Duration::from_secs(3600));
        for k in 0..3 {
            *m.touch(&k, k as u64, || 0) += 1;
        }
        // Touching 0 again makes 1 the oldest.
        *m.touch(&0, 10, || 0) += 1;
        *m.touch(&3, 11, || 0) += 1;
        assert_eq!(m.len(), 3);
        assert!(m.get_mut(&1).is_none(), "1 was evicted");
        assert_eq!(m.get_mut(&0).copied(), Some(2));
        assert!(m.get_mut(&2).is_some() && m.get_mut(&3).is_some());
        // A flood of new keys never grows the map past the cap.
        for k in 100..10_000 {
            m.touch(&k, 20, || 0);
        }
        assert_eq!(m.len(), 3);
        assert_eq!(m.order.len(), 3);
    }

    #[test]
    fn map_prunes_expired_entries() {
        let mut m: BoundedMap<&str, u32> = BoundedMap::new(100, Duration::from_millis(1000));
        m.touch(&"a", 0, || 1);
        m.touch(&"b", 500, || 2);
        m.touch(&"a", 600, || 0);
        m.prune(1499);
        assert_eq!(m.len(), 2, "a was touched at 600, b at 500: both live");
        m.prune(1500);
        assert!(m.get_mut(&"b").is_none());
        assert_eq!(m.get_mut(&"a").copied(), Some(1));
        m.touch(&"c", 1700, || 3);
        assert_eq!(m.len(), 1, "a expired at 1600");
        m.remove(&"c");
        assert!(m.is_empty());
        assert!(m.order.is_empty());
    }
}
