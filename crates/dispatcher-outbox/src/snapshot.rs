//! Transaction-id snapshots (`pg_snapshot`): parsing, and the window of transactions that committed between
//! two snapshots. Pure; no I/O.
//!
//! A window runs from a previous snapshot `prev` to a current one `cur`. A transaction's rows belong to the
//! window when it is visible in `cur` and was not visible in `prev`. Those transactions are either
//! *late*: in progress at `prev` (listed in its `xip`) and no longer in progress at `cur`; or *new*: with an
//! id in `[prev.xmax, cur.xmax)` and not in progress at `cur`. Walking windows one after another visits every
//! committed transaction exactly once, whatever order transactions commit in, which is what an id
//! high-water mark cannot do.

use std::fmt;
use std::str::FromStr;

/// A `pg_snapshot`: `xmin:xmax:xip1,xip2,…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Oldest transaction still in progress (all lower ids are committed or aborted).
    pub xmin: u64,
    /// First transaction id not yet assigned.
    pub xmax: u64,
    /// Transactions in progress, ascending, each in `[xmin, xmax)`.
    pub xip: Vec<u64>,
}

/// A snapshot string that is not `xmin:xmax:xip,…`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a pg_snapshot: {0:?}")]
pub struct BadSnapshot(pub String);

impl Snapshot {
    /// The snapshot before any transaction: every transaction is new after it.
    pub fn origin() -> Self {
        Snapshot {
            xmin: 1,
            xmax: 1,
            xip: Vec::new(),
        }
    }

    /// Whether transaction `xid` had committed (or aborted) when the snapshot was taken.
    pub fn is_visible(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && self.xip.binary_search(&xid).is_err())
    }

    /// The window from `self` (previous) to `cur`: the late transactions to read by id, and the range
    /// `[self.xmax, cur.xmax)` of new ones (minus `cur.xip`).
    pub fn window_to(&self, cur: &Snapshot) -> Window {
        let late = self
            .xip
            .iter()
            .copied()
            .filter(|x| cur.is_visible(*x))
            .collect();
        Window {
            late,
            from: self.xmax,
            to: cur.xmax.max(self.xmax),
            in_progress: cur.xip.clone(),
        }
    }
}

/// The transactions that committed between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// In progress at the previous snapshot, finished by the current one.
    pub late: Vec<u64>,
    /// New transactions: ids in `[from, to)` …
    pub from: u64,
    pub to: u64,
    /// … except these, still in progress at the current snapshot.
    pub in_progress: Vec<u64>,
}

impl Window {
    /// Whether transaction `xid`'s rows belong to this window.
    pub fn contains(&self, xid: u64) -> bool {
        if self.late.binary_search(&xid).is_ok() {
            return true;
        }
        xid >= self.from && xid < self.to && self.in_progress.binary_search(&xid).is_err()
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:", self.xmin, self.xmax)?;
        for (i, x) in self.xip.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{x}")?;
        }
        Ok(())
    }
}

impl FromStr for Snapshot {
    type Err = BadSnapshot;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadSnapshot(s.chars().take(200).collect());
        let mut parts = s.trim().splitn(3, ':');
        let xmin: u64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let xmax: u64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let rest = parts.next().ok_or_else(bad)?;
        let mut xip = Vec::new();
        if !rest.is_empty() {
            for p in rest.split(',') {
                xip.push(p.parse::<u64>().map_err(|_| bad())?);
            }
        }
        xip.sort_unstable();
        xip.dedup();
        if xmin > xmax || xip.iter().any(|x| *x < xmin || *x >= xmax) {
            return Err(bad());
        }
        Ok(Snapshot { xmin, xmax, xip })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints_postgres_text() {
        let s: Snapshot = "10:20:12,15".parse().expect("parse");
        assert_eq!(s.xip, vec![12, 15]);
        assert_eq!(s.to_string(), "10:20:12,15");
        let e: Snapshot = "7:7:".parse().expect("empty xip");
        assert!(e.xip.is_empty());
        for bad in ["", "1", "1:2", "3:2:", "1:5:9", "a:b:", "1:5:2,x"] {
            assert!(bad.parse::<Snapshot>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_late_commit_lands_in_the_next_window() {
        // Transaction 12 writes first but commits after 13 and 14.
        let prev: Snapshot = "12:15:12".parse().expect("prev");
        let cur: Snapshot = "15:16:".parse().expect("cur");
        let w = prev.window_to(&cur);
        assert!(w.contains(12), "late commit delivered");
        assert!(w.contains(15));
        assert!(!w.contains(13), "visible in prev: already delivered");
    }

    /// A history of transactions that begin, and commit in any order, with snapshots taken at random
    /// points: walking the windows between consecutive snapshots visits every committed transaction
    /// exactly once.
    fn history() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0u8..3, 1..200)
    }

    proptest! {
        #[test]
        fn windows_cover_every_commit_once(ops in history(), picks in proptest::collection::vec(any::<u16>(), 200)) {
            let mut next_xid = 100u64;
            let mut running: Vec<u64> = Vec::new();
            let mut committed: Vec<u64> = Vec::new();
            let mut prev = Snapshot { xmin: next_xid, xmax: next_xid, xip: vec![] };
            let mut seen: Vec<u64> = Vec::new();
            let take = |running: &Vec<u64>, next_xid: u64| {
                let mut xip = running.clone();
                xip.sort_unstable();
                Snapshot { xmin: xip.first().copied().unwrap_or(next_xid), xmax: next_xid, xip }
            };
            for (i, op) in ops.iter().enumerate() {
                match op {
                    0 => { running.push(next_xid); next_xid += 1; }
                    1 if !running.is_empty() => {
                        let k = picks[i % picks.len()] as usize % running.len();
                        committed.push(running.swap_remove(k));
                    }
                    _ => {
                        let cur = take(&running, next_xid);
                        let w = prev.window_to(&cur);
                        for x in 100..next_xid {
                            if committed.contains(&x) && w.contains(x) { seen.push(x); }
                        }
                        prev = cur;
                    }
                }
            }
            // Finish: commit everything, take a last snapshot.
            committed.append(&mut running);
            let cur = take(&running, next_xid);
            let w = prev.window_to(&cur);
            for x in 100..next_xid {
                if committed.contains(&x) && w.contains(x) { seen.push(x); }
            }
            let mut s = seen.clone();
            s.sort_unstable();
            let before = s.len();
            s.dedup();
            prop_assert_eq!(before, s.len(), "a transaction was in two windows");
            let mut c = committed.clone();
            c.sort_unstable();
            prop_assert_eq!(s, c, "a committed transaction was in no window");
        }
    }
}
