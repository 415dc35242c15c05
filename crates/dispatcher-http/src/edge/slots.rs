//! Counted places for connections and live streams: at most so many in total and per client address.
//! A [`Slot`] holds one place and gives it back when dropped.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Why a place was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every place is taken.
    Total,
    /// The client address holds its share already.
    PerAddress,
}

impl Refusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Total => "total",
            Self::PerAddress => "per_address",
        }
    }
}

#[derive(Debug, Default)]
struct Counts<K> {
    total: usize,
    by_key: HashMap<K, usize>,
}

/// Places counted in total and per key (the client address), each with its own cap.
#[derive(Debug)]
pub struct Slots<K = IpAddr> {
    max_total: usize,
    max_per_key: usize,
    counts: Arc<Mutex<Counts<K>>>,
}

impl<K: Eq + Hash + Clone> Slots<K> {
    /// At most `max_total` places, `max_per_key` of them for one key.
    pub fn new(max_total: usize, max_per_key: usize) -> Self {
        Self {
            max_total,
            max_per_key,
            counts: Arc::new(Mutex::new(Counts {
                total: 0,
                by_key: HashMap::new(),
            })),
        }
    }

    /// Takes a place for `key`, or says which cap refuses it (and changes nothing).
    pub fn try_take(&self, key: K) -> Result<Slot<K>, Refusal> {
        let mut c = self.counts.lock();
        if c.total >= self.max_total {
            return Err(Refusal::Total);
        }
        let held = c.by_key.entry(key.clone()).or_insert(0);
        if *held >= self.max_per_key {
            return Err(Refusal::PerAddress);
        }
        *held += 1;
        c.total += 1;
        Ok(Slot {
            key: Some(key),
            counts: self.counts.clone(),
        })
    }

    /// Places held now.
    pub fn in_use(&self) -> usize {
        self.counts.lock().total
    }

    /// Places held now by `key`.
    pub fn held_by(&self, key: &K) -> usize {
        self.counts.lock().by_key.get(key).copied().unwrap_or(0)
    }
}

/// One place; dropping it gives it back.
#[derive(Debug)]
pub struct Slot<K: Eq + Hash = IpAddr> {
    key: Option<K>,
    counts: Arc<Mutex<Counts<K>>>,
}

impl<K: Eq + Hash> Drop for Slot<K> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut c = self.counts.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(held) = c.by_key.get_mut(&key) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                // No entry is kept for an address that holds nothing: the map cannot grow with the
                // number of addresses ever seen.
                c.by_key.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_share_and_no_more() {
        let s: Slots<u8> = Slots::new(10, 2);
        let a1 = s.try_take(1).expect("first");
        let _a2 = s.try_take(1).expect("second");
        assert_eq!(
            s.try_take(1).expect_err("over the share"),
            Refusal::PerAddress
        );
        // Another key is not affected.
        let _b = s.try_take(2).expect("other key");
        drop(a1);
        assert_eq!(s.held_by(&1), 1);
        let _a3 = s
            .try_take(1)
            .expect("a place given back can be taken again");
        assert_eq!(s.in_use(), 3);
    }

    #[test]
    fn the_total_cap_holds_across_keys() {
        let s: Slots<u32> = Slots::new(3, 3);
        let held: Vec<_> = (0..3)
            .map(|k| s.try_take(k).expect("under the cap"))
            .collect();
        assert_eq!(s.try_take(99).expect_err("over the total"), Refusal::Total);
        drop(held);
        assert_eq!(s.in_use(), 0);
        assert!(s.try_take(99).is_ok());
    }

    #[test]
    fn addresses_holding_nothing_leave_no_entry() {
        let s: Slots<u32> = Slots::new(1_000_000, 1);
        for k in 0..10_000 {
            drop(s.try_take(k).expect("free"));
        }
        assert_eq!(s.counts.lock().by_key.len(), 0);
        assert_eq!(s.in_use(), 0);
    }

    #[test]
    fn a_refusal_changes_nothing() {
        let s: Slots<u8> = Slots::new(1, 1);
        let _a = s.try_take(1).expect("first");
        assert!(s.try_take(2).is_err());
        assert!(s.try_take(1).is_err());
        assert_eq!((s.in_use(), s.held_by(&1), s.held_by(&2)), (1, 1, 0));
    }
}
