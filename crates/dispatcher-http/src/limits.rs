//! Abuse limits: keyed token buckets (per client address, per user) with a bounded memory footprint.
//! Pure rules plus one lock per shard; no I/O.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A rate: `per_sec` tokens per second, at most `burst` saved up. `per_sec == 0` disables the limit.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rate {
    /// Sustained requests per second.
    pub per_sec: f64,
    /// Largest burst.
    pub burst: f64,
}

impl Rate {
    /// A rate of `per_sec` with a burst of `burst`.
    pub const fn new(per_sec: f64, burst: f64) -> Self {
        Self { per_sec, burst }
    }

    /// Whether the limit is off.
    pub fn is_off(&self) -> bool {
        self.per_sec <= 0.0
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

const SHARDS: usize = 32;
/// A shard is swept of idle (full) buckets when it grows past this many keys.
const SWEEP_AT: usize = 4_096;
/// Hard cap of keys per shard: beyond it, the oldest half is dropped (full buckets first).
const MAX_KEYS_PER_SHARD: usize = 65_536;

/// Token buckets by key. Memory is bounded: full buckets are swept, and a shard never holds more than
/// [`MAX_KEYS_PER_SHARD`] keys. Sweeps run when a shard has doubled since the last one, so a flood of
/// distinct keys costs amortised O(1) per request, never a sweep per request; and, past [`SWEEP_AT`]
/// keys, once the buckets swept last time have had time to refill (a sweep then finds idle keys).
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    rate: Rate,
    shards: Vec<Mutex<Shard<K>>>,
    hasher: std::collections::hash_map::RandomState,
}

#[derive(Debug)]
struct Shard<K> {
    buckets: HashMap<K, Bucket>,
    sweep_at: usize,
    swept: Option<Instant>,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// A limiter with the given rate.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        buckets: HashMap::new(),
                        sweep_at: SWEEP_AT,
                        swept: None,
                    })
                })
                .collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Takes one token for `key` at `now`: `Ok` when allowed, else the seconds until a token is there.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), u64> {
        if self.rate.is_off() {
            return Ok(());
        }
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut guard = shard.lock();
        let sh = &mut *guard;
        let len = sh.buckets.len();
        if len >= SWEEP_AT && !sh.buckets.contains_key(key) {
            // A bucket emptied at the last sweep is full again (sweepable) after `refill`.
            let refill = Duration::try_from_secs_f64(self.rate.burst.max(1.0) / self.rate.per_sec)
                .unwrap_or(Duration::MAX);
            let refilled = sh
                .swept
                .is_none_or(|at| now.saturating_duration_since(at) >= refill);
            if len >= sh.sweep_at || refilled {
                sweep(&mut sh.buckets, self.rate, now);
                sh.sweep_at = (sh.buckets.len() * 2).clamp(SWEEP_AT, MAX_KEYS_PER_SHARD);
                sh.swept = Some(now);
            }
        }
        let b = sh.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.rate.burst.max(1.0),
            at: now,
        });
        take(b, self.rate, now)
    }

    /// Whether `key` has a token at `now`, without taking one (a key never seen has a full bucket):
    /// `Err` holds the seconds until it has.
    pub fn peek(&self, key: &K, now: Instant) -> Result<(), u64> {
        if self.rate.is_off() {
            return Ok(());
        }
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let guard = shard.lock();
        match guard.buckets.get(key) {
            None => Ok(()),
            Some(b) => {
                let mut copy = *b;
                take(&mut copy, self.rate, now)
            }
        }
    }

    /// Keys currently tracked (for tests and gauges).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().buckets.len()).sum()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Refills `b` up to `now` and takes one token.
fn take(b: &mut Bucket, rate: Rate, now: Instant) -> Result<(), u64> {
    let burst = rate.burst.max(1.0);
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    b.tokens = (b.tokens + elapsed * rate.per_sec).min(burst);
    b.at = now;
    if b.tokens >= 1.0 {
        b.tokens -= 1.0;
        Ok(())
    } else {
        Err(((1.0 - b.tokens) / rate.per_sec).ceil().max(1.0) as u64)
    }
}

fn sweep<K: Hash + Eq + Clone>(map: &mut HashMap<K, Bucket>, rate: Rate, now: Instant) {
    let burst = rate.burst.max(1.0);
    map.retain(|_, b| {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens + elapsed * rate.per_sec < burst
    });
    if map.len() >= MAX_KEYS_PER_SHARD {
        // Still too many active keys (a flood of distinct keys): forget the least recently seen half.
        let mut ats: Vec<Instant> = map.values().map(|b| b.at).collect();
        ats.sort_unstable();
        let cut = ats[ats.len() / 2];
        map.retain(|_, b| b.at > cut);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn peeking_takes_no_token() {
        let l = super::KeyedLimiter::new(super::Rate::new(1.0, 2.0));
        let now = std::time::Instant::now();
        for _ in 0..10 {
            assert!(l.peek(&"a", now).is_ok());
        }
        assert!(l.is_empty(), "peeking tracks no key");
        l.check(&"a", now).expect("first");
        l.check(&"a", now).expect("second");
        assert!(l.peek(&"a", now).is_err(), "the bucket is empty now");
        assert!(
            l.peek(&"a", now + Duration::from_secs(1)).is_ok(),
            "refilled"
        );
    }

    use super::*;

    #[test]
    fn allows_the_burst_then_throttles_then_refills() {
        let l = KeyedLimiter::new(Rate::new(2.0, 3.0));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check(&"a", t0).is_ok());
        }
        assert_eq!(l.check(&"a", t0), Err(1));
        assert!(l.check(&"b", t0).is_ok(), "keys are independent");
        assert!(
            l.check(&"a", t0 + Duration::from_millis(500)).is_ok(),
            "one token after 0.5 s at 2/s"
        );
        assert!(l.check(&"a", t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn off_allows_everything() {
        let l = KeyedLimiter::new(Rate::new(0.0, 0.0));
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert!(l.check(&1u32, t0).is_ok());
        }
        assert!(l.is_empty(), "an off limiter tracks nothing");
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_keys() {
        let l = KeyedLimiter::new(Rate::new(1.0, 1.0));
        let t0 = Instant::now();
        for i in 0..(SHARDS * MAX_KEYS_PER_SHARD * 2) as u64 {
            let _ = l.check(&i, t0);
        }
        assert!(l.len() <= SHARDS * MAX_KEYS_PER_SHARD, "{} keys", l.len());
    }

    #[test]
    fn idle_keys_are_swept() {
        let l = KeyedLimiter::new(Rate::new(10.0, 10.0));
        let t0 = Instant::now();
        for i in 0..(SHARDS * SWEEP_AT) as u64 {
            let _ = l.check(&i, t0);
        }
        let later = t0 + Duration::from_secs(5);
        for i in 0..(SHARDS * 4) as u64 {
            let _ = l.check(&(u64::MAX - i), later);
        }
        assert!(
            l.len() < SHARDS * SWEEP_AT,
            "full buckets were dropped: {}",
            l.len()
        );
    }
}
