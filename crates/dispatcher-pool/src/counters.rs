//! The pool's hot-path bookkeeping: striped submit counters (who is submitting right now, how many
//! jobs were accepted) and per-worker job counters, each on its own cache line so that producers and
//! workers never write to a line another thread writes to on the fast path.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

/// Bits of a stripe word that count submitters currently between "entered" and "left".
const INFLIGHT_BITS: u32 = 24;
const INFLIGHT_MASK: u64 = (1 << INFLIGHT_BITS) - 1;
/// Adding this to a stripe word counts one accepted job.
const ACCEPT_ONE: u64 = 1 << INFLIGHT_BITS;
/// Accepted-job counts are kept modulo `2^ACCEPTED_BITS` (about 1.1e12): they are only ever used in
/// differences with other counters (jobs still running), which are far smaller than the modulus.
pub(crate) const ACCEPTED_BITS: u32 = 64 - INFLIGHT_BITS;
pub(crate) const ACCEPTED_MASK: u64 = (1 << ACCEPTED_BITS) - 1;

/// Next stripe index handed to a thread that submits for the first time.
static NEXT_THREAD_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's stripe index (before masking); `usize::MAX` until first used.
    static THREAD_SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn thread_slot() -> usize {
    THREAD_SLOT.with(|slot| {
        let current = slot.get();
        if current != usize::MAX {
            return current;
        }
        let assigned = NEXT_THREAD_SLOT.fetch_add(1, Ordering::Relaxed) & (usize::MAX >> 1);
        slot.set(assigned);
        assigned
    })
}

/// Counters written by submitting threads, striped by thread so that producers do not contend.
///
/// Each stripe is one `u64`: the low [`INFLIGHT_BITS`] count submitters that are between
/// [`SubmitStripes::enter`] and leaving (they may be about to push into the queue), the high bits
/// count accepted jobs (modulo `2^ACCEPTED_BITS`). Entering, accepting and rejecting are each a
/// single atomic add on the thread's own stripe.
pub(crate) struct SubmitStripes {
    stripes: Box<[CachePadded<AtomicU64>]>,
    mask: usize,
}

impl SubmitStripes {
    /// Stripes for a pool: a power of two, a few per CPU.
    pub(crate) fn new() -> Self {
        let cpus = std::thread::available_parallelism().map_or(4, std::num::NonZeroUsize::get);
        let count = (cpus * 4).next_power_of_two().clamp(4, 64);
        Self::with_stripes(count)
    }

    fn with_stripes(count: usize) -> Self {
        debug_assert!(count.is_power_of_two());
        let stripes = (0..count)
            .map(|_| CachePadded::new(AtomicU64::new(0)))
            .collect();
        Self {
            stripes,
            mask: count - 1,
        }
    }

    /// Marks this thread as submitting. `SeqCst`, so that a shutdown that sets the closed flag and
    /// then sees no submitter in flight knows that every later submitter will see the flag.
    pub(crate) fn enter(&self) -> Entered<'_> {
        let stripe = &self.stripes[thread_slot() & self.mask];
        stripe.fetch_add(1, Ordering::SeqCst);
        Entered { stripe }
    }

    /// Submitters currently between `enter` and leaving.
    pub(crate) fn in_flight(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.load(Ordering::SeqCst) & INFLIGHT_MASK)
            .sum()
    }

    /// Jobs accepted so far, modulo `2^ACCEPTED_BITS`.
    pub(crate) fn accepted(&self) -> u64 {
        self.stripes.iter().fold(0u64, |acc, s| {
            acc.wrapping_add(s.load(Ordering::SeqCst) >> INFLIGHT_BITS)
        }) & ACCEPTED_MASK
    }
}

/// A submitter inside the window in which it may push into the queue. Dropping it leaves without
/// counting an accepted job.
pub(crate) struct Entered<'a> {
    stripe: &'a AtomicU64,
}

impl Entered<'_> {
    /// Leaves the window and counts one accepted job, in one atomic add.
    ///
    /// `SeqCst`: it also orders the preceding push before the caller's check for sleeping workers.
    pub(crate) fn accept(self) {
        // inflight - 1 and accepted + 1; cannot borrow because inflight >= 1 while entered.
        self.stripe.fetch_add(ACCEPT_ONE - 1, Ordering::SeqCst);
        std::mem::forget(self);
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.stripe.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counters of one worker thread. Only that worker writes them, so updates are a plain load and
/// store (no locked instruction); readers sum them over all workers.
#[derive(Debug, Default)]
pub(crate) struct WorkerCounters {
    active: AtomicBool,
    completed: AtomicU64,
    panicked: AtomicU64,
}

impl WorkerCounters {
    pub(crate) fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Release);
    }

    /// Counts one job that returned normally. Release: a reader that sees the new count also sees
    /// the job's effects and `active == false`.
    pub(crate) fn count_completed(&self) {
        bump(&self.completed);
    }

    /// Counts one job that panicked.
    pub(crate) fn count_panicked(&self) {
        bump(&self.panicked);
    }

    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    pub(crate) fn completed(&self) -> u64 {
        self.completed.load(Ordering::Acquire)
    }

    pub(crate) fn panicked(&self) -> u64 {
        self.panicked.load(Ordering::Acquire)
    }
}

/// Single-writer increment.
fn bump(counter: &AtomicU64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Release,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enter_accept_and_reject_keep_in_flight_and_accepted_apart() {
        let stripes = SubmitStripes::with_stripes(4);
        let a = stripes.enter();
        let b = stripes.enter();
        assert_eq!(stripes.in_flight(), 2);
        assert_eq!(stripes.accepted(), 0);
        a.accept();
        assert_eq!(stripes.in_flight(), 1);
        assert_eq!(stripes.accepted(), 1);
        drop(b);
        assert_eq!(stripes.in_flight(), 0);
        assert_eq!(stripes.accepted(), 1);
    }

    #[test]
    fn accepted_sums_over_threads_and_stripes() {
        let stripes = SubmitStripes::with_stripes(4);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for i in 0..1000 {
                        let e = stripes.enter();
                        if i % 2 == 0 {
                            e.accept();
                        }
                    }
                });
            }
        });
        assert_eq!(stripes.in_flight(), 0);
        assert_eq!(stripes.accepted(), 8 * 500);
    }

    #[test]
    fn accepted_wraps_modulo_its_width_without_touching_in_flight() {
        let stripes = SubmitStripes::with_stripes(4);
        stripes.stripes[0].store(ACCEPTED_MASK << INFLIGHT_BITS, Ordering::SeqCst);
        let e = stripes.enter();
        assert_eq!(stripes.in_flight(), 1);
        e.accept();
        assert_eq!(stripes.accepted(), 0);
        assert_eq!(stripes.in_flight(), 0);
    }

    #[test]
    fn worker_counters_count_what_they_are_told() {
        let c = WorkerCounters::default();
        c.set_active(true);
        assert!(c.is_active());
        c.count_completed();
        c.count_completed();
        c.count_panicked();
        c.set_active(false);
        assert!(!c.is_active());
        assert_eq!((c.completed(), c.panicked()), (2, 1));
    }
}
