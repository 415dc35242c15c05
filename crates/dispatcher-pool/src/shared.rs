//! State shared by the pool handle, its workers and pending async submits: the lock-free job queue,
//! the lifecycle flags, and the cheap sleep/wake scheme for idle workers and blocked producers.
//!
//! # Sleeping and waking without a syscall per job
//!
//! Workers that find the queue empty spin briefly, then sleep on a condition variable after
//! registering in `idle_workers`. A producer that pushed a job wakes one only if that counter is
//! non-zero, so a busy pool never touches the lock. A notifier takes a sleeper off the counter
//! itself (parking_lot's condvar has no spurious wakeups and reports whether it woke someone), so
//! the next producers do not pile on while the woken worker is still getting up.
//!
//! Producers that find the queue full sleep the same way (`space_waiters`, which also counts
//! pending async submits). Workers wake them with hysteresis: only once the queue has drained to
//! `low_water` (half its capacity), so under overload there is one wake-up per half a queue of
//! jobs, not one per job.
//!
//! Lost wake-ups are excluded by the usual Dekker pairing: a sleeper increments its counter
//! (`SeqCst`) and then re-checks the queue (`SeqCst` loads); a producer or worker changes the queue
//! (crossbeam's `ArrayQueue` moves head and tail with `SeqCst` CASes) and then loads the counter
//! with `SeqCst`. One of them sees the other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering, fence};
use std::task::Waker;
use std::time::Instant;

use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;
use parking_lot::{Condvar, Mutex};

use crate::Job;
use crate::counters::{SubmitStripes, WorkerCounters};

/// Shutdown has begun: submits are refused.
const CLOSED: u8 = 1;
/// Closed and no submitter is mid-push: the queue can only shrink from now on.
const SEALED: u8 = 1 << 1;
/// The shutdown deadline passed: workers start no more jobs.
const ABANDONED: u8 = 1 << 2;

/// Busy-wait rounds (each twice as long as the last) before an idle thread yields its CPU.
const SPIN_ROUNDS: u32 = 6;
/// `yield_now` rounds before an idle thread goes to sleep.
const YIELD_ROUNDS: u32 = 4;

/// Why a push into the queue was refused; the job comes back.
pub(crate) enum PushError {
    Full(Job),
    Closed(Job),
}

/// Async submits waiting for queue space, keyed by a per-future id.
#[derive(Default)]
struct WakerSet {
    next_key: u64,
    wakers: HashMap<u64, Waker>,
}

pub(crate) struct Shared {
    queue: ArrayQueue<Job>,
    /// Blocked producers are woken once the queue has drained to this length.
    low_water: usize,
    flags: CachePadded<AtomicU8>,
    stripes: SubmitStripes,
    pub(crate) workers: Box<[CachePadded<WorkerCounters>]>,

    /// Workers asleep (or about to sleep) on `work_cv`; written only under `work_lock`.
    idle_workers: CachePadded<AtomicUsize>,
    work_lock: Mutex<()>,
    work_cv: Condvar,

    /// Producers asleep on `space_cv` plus registered async wakers; written only under a lock.
    space_waiters: CachePadded<AtomicUsize>,
    space_lock: Mutex<()>,
    space_cv: Condvar,
    async_waiters: Mutex<WakerSet>,

    /// Jobs taken out of the queue unrun by a shutdown whose deadline passed.
    dropped: AtomicU64,
    /// Worker threads still running their loop.
    live_workers: Mutex<usize>,
    live_cv: Condvar,
    /// Identifies the pool, so that a worker can tell its own pool's `shutdown` from another's.
    pub(crate) id: usize,
}

static NEXT_POOL_ID: AtomicUsize = AtomicUsize::new(1);

impl Shared {
    pub(crate) fn new(workers: usize, capacity: usize) -> Self {
        Self {
            queue: ArrayQueue::new(capacity),
            low_water: capacity / 2,
            flags: CachePadded::new(AtomicU8::new(0)),
            stripes: SubmitStripes::new(),
            workers: (0..workers)
                .map(|_| CachePadded::new(WorkerCounters::default()))
                .collect(),
            idle_workers: CachePadded::new(AtomicUsize::new(0)),
            work_lock: Mutex::new(()),
            work_cv: Condvar::new(),
            space_waiters: CachePadded::new(AtomicUsize::new(0)),
            space_lock: Mutex::new(()),
            space_cv: Condvar::new(),
            async_waiters: Mutex::new(WakerSet::default()),
            dropped: AtomicU64::new(0),
            live_workers: Mutex::new(workers),
            live_cv: Condvar::new(),
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    // ---- gauges -------------------------------------------------------------------------------

    pub(crate) fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn active(&self) -> usize {
        self.workers.iter().filter(|w| w.is_active()).count()
    }

    pub(crate) fn completed(&self) -> u64 {
        self.workers.iter().map(|w| w.completed()).sum()
    }

    pub(crate) fn panicked(&self) -> u64 {
        self.workers.iter().map(|w| w.panicked()).sum()
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Acquire)
    }

    pub(crate) fn accepted(&self) -> u64 {
        self.stripes.accepted()
    }

    fn flags(&self) -> u8 {
        self.flags.load(Ordering::SeqCst)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.flags() & CLOSED != 0
    }

    pub(crate) fn is_abandoned(&self) -> bool {
        self.flags.load(Ordering::Acquire) & ABANDONED != 0
    }

    // ---- producers ----------------------------------------------------------------------------

    /// One non-blocking attempt to enqueue `job`.
    pub(crate) fn try_push(&self, job: Job) -> Result<(), PushError> {
        let entered = self.stripes.enter();
        if self.is_closed() {
            return Err(PushError::Closed(job));
        }
        match self.queue.push(job) {
            Ok(()) => {
                entered.accept();
                self.wake_worker_if_idle();
                Ok(())
            }
            Err(job) => Err(PushError::Full(job)),
        }
    }

    /// Enqueues `job`, sleeping while the queue is full.
    pub(crate) fn push_blocking(&self, mut job: Job) -> Result<(), Job> {
        loop {
            match self.try_push(job) {
                Ok(()) => return Ok(()),
                Err(PushError::Closed(j)) => return Err(j),
                Err(PushError::Full(j)) => {
                    job = j;
                    self.wait_for_space();
                }
            }
        }
    }

    fn wake_worker_if_idle(&self) {
        // Pairs with the SeqCst increment + re-check in `wait_for_work`. The push moved the tail
        // with a SeqCst CAS and `accept` was a SeqCst add, so this SeqCst load is ordered after
        // them in the single total order without a separate fence (a plain load on x86).
        if self.idle_workers.load(Ordering::SeqCst) == 0 {
            return;
        }
        let _guard = self.work_lock.lock();
        if self.idle_workers.load(Ordering::Relaxed) > 0 && self.work_cv.notify_one() {
            // The woken worker is no longer idle; let the next producer wake another, not it.
            self.idle_workers.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Waits until the queue has room or the pool is closed (either may already be true).
    fn wait_for_space(&self) {
        if self.spin_until(|| !self.queue.is_full() || self.is_closed()) {
            return;
        }
        let mut guard = self.space_lock.lock();
        self.space_waiters.fetch_add(1, Ordering::SeqCst);
        if self.queue.is_full() && !self.is_closed() {
            // No spurious wake-ups: whoever woke us already took us off `space_waiters`.
            self.space_cv.wait(&mut guard);
        } else {
            self.space_waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Registers (or refreshes) an async submit's waker under `key`, issuing a key on first use.
    /// The caller must retry its push after this returns.
    pub(crate) fn register_space_waker(&self, key: &mut Option<u64>, waker: &Waker) {
        let mut set = self.async_waiters.lock();
        let k = *key.get_or_insert_with(|| {
            set.next_key = set.next_key.wrapping_add(1);
            set.next_key
        });
        match set.wakers.get_mut(&k) {
            Some(existing) => existing.clone_from(waker),
            None => {
                set.wakers.insert(k, waker.clone());
                self.space_waiters.fetch_add(1, Ordering::SeqCst);
            }
        }
        drop(set);
        // Pairs with the SeqCst load in `pop`: either the worker sees us registered or our retry
        // sees the slot it freed.
        fence(Ordering::SeqCst);
    }

    /// Async submits currently registered for a wake-up.
    #[cfg(test)]
    pub(crate) fn async_waiter_count(&self) -> usize {
        self.async_waiters.lock().wakers.len()
    }

    /// Forgets an async submit's waker (it completed or was dropped).
    pub(crate) fn unregister_space_waker(&self, key: u64) {
        let mut set = self.async_waiters.lock();
        if set.wakers.remove(&key).is_some() {
            self.space_waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn wake_space_waiters(&self) {
        {
            let _guard = self.space_lock.lock();
            let woken = self.space_cv.notify_all();
            if woken > 0 {
                self.space_waiters.fetch_sub(woken, Ordering::SeqCst);
            }
        }
        let wakers = {
            let mut set = self.async_waiters.lock();
            if set.wakers.is_empty() {
                return;
            }
            self.space_waiters
                .fetch_sub(set.wakers.len(), Ordering::SeqCst);
            std::mem::take(&mut set.wakers)
        };
        for (_, waker) in wakers {
            waker.wake();
        }
    }

    // ---- workers ------------------------------------------------------------------------------

    pub(crate) fn pop(&self) -> Option<Job> {
        let job = self.queue.pop()?;
        // Pairs with the SeqCst increment + re-check in `wait_for_space` / `register_space_waker`:
        // the pop moved the head with a SeqCst CAS, so this SeqCst load is ordered after it.
        if self.space_waiters.load(Ordering::SeqCst) > 0 && self.queue.len() <= self.low_water {
            self.wake_space_waiters();
        }
        Some(job)
    }

    /// Called by a worker that found the queue empty. Returns `false` when the worker should exit
    /// (the pool is sealed and drained, or abandoned); `true` when there may be work.
    pub(crate) fn wait_for_work(&self) -> bool {
        let exit =
            |flags: u8| flags & ABANDONED != 0 || (flags & SEALED != 0 && self.queue.is_empty());
        if exit(self.flags()) {
            return false;
        }
        if self.spin_until(|| !self.queue.is_empty() || self.flags() & (SEALED | ABANDONED) != 0) {
            return !exit(self.flags());
        }
        let mut guard = self.work_lock.lock();
        self.idle_workers.fetch_add(1, Ordering::SeqCst);
        let flags = self.flags();
        if self.queue.is_empty() && flags & (SEALED | ABANDONED) == 0 {
            // No spurious wake-ups: whoever woke us already took us off `idle_workers`.
            self.work_cv.wait(&mut guard);
        } else {
            self.idle_workers.fetch_sub(1, Ordering::SeqCst);
        }
        drop(guard);
        !exit(self.flags())
    }

    /// Spins, then yields, until `ready` holds; `false` if it still does not.
    fn spin_until(&self, ready: impl Fn() -> bool) -> bool {
        for round in 0..SPIN_ROUNDS {
            for _ in 0..1u32 << round {
                std::hint::spin_loop();
            }
            if ready() {
                return true;
            }
        }
        for _ in 0..YIELD_ROUNDS {
            std::thread::yield_now();
            if ready() {
                return true;
            }
        }
        false
    }

    /// A worker thread leaves its loop.
    pub(crate) fn worker_exited(&self) {
        let mut live = self.live_workers.lock();
        *live = live.saturating_sub(1);
        if *live == 0 {
            self.live_cv.notify_all();
        }
    }

    // ---- shutdown -----------------------------------------------------------------------------

    /// Refuses further submits and wakes blocked producers so that they see it.
    pub(crate) fn close(&self) {
        self.flags.fetch_or(CLOSED, Ordering::SeqCst);
        self.wake_space_waiters();
    }

    /// Waits for submitters that passed the closed check to finish their push, then marks the
    /// queue as only shrinking and wakes idle workers so that they drain it and exit.
    pub(crate) fn seal(&self) {
        let mut spins = 0u32;
        while self.stripes.in_flight() > 0 {
            // A submitter holds the window only for one push; it never sleeps inside it.
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        self.flags.fetch_or(SEALED, Ordering::SeqCst);
        self.wake_all_workers();
    }

    /// The deadline passed: workers start no more jobs, and the queue is emptied unrun.
    pub(crate) fn abandon(&self) {
        self.flags.fetch_or(ABANDONED, Ordering::SeqCst);
        self.wake_all_workers();
        let mut dropped = 0u64;
        while let Some(job) = self.queue.pop() {
            drop(job);
            dropped += 1;
        }
        self.dropped.fetch_add(dropped, Ordering::AcqRel);
    }

    fn wake_all_workers(&self) {
        let _guard = self.work_lock.lock();
        let woken = self.work_cv.notify_all();
        if woken > 0 {
            self.idle_workers.fetch_sub(woken, Ordering::SeqCst);
        }
    }

    /// Waits until every worker thread has left its loop or `until` passes; `true` if they all did.
    pub(crate) fn wait_workers_exited(&self, until: Instant) -> bool {
        let mut live = self.live_workers.lock();
        while *live > 0 {
            if self.live_cv.wait_until(&mut live, until).timed_out() {
                return *live == 0;
            }
        }
        true
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Jobs still queued when the last reference goes (only possible after an abandoned
        // shutdown raced a worker) are dropped unrun; count them for completeness.
        let mut dropped = 0;
        while self.queue.pop().is_some() {
            dropped += 1;
        }
        *self.dropped.get_mut() += dropped;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use super::*;

    fn noop() -> Job {
        Job::new(|| {})
    }

    /// Polls `cond` until it holds; panics after 10 s (a hang, not a timing assertion).
    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < until, "timed out waiting for: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn try_push_refuses_when_full_and_when_closed_and_counts_only_accepted() {
        let shared = Shared::new(1, 2);
        assert!(shared.try_push(noop()).is_ok());
        assert!(shared.try_push(noop()).is_ok());
        assert!(matches!(shared.try_push(noop()), Err(PushError::Full(_))));
        assert_eq!(shared.queued(), 2);
        shared.close();
        assert!(shared.pop().is_some());
        assert!(matches!(shared.try_push(noop()), Err(PushError::Closed(_))));
        assert_eq!(shared.accepted(), 2);
        assert_eq!(shared.stripes.in_flight(), 0);
    }

    #[test]
    fn blocked_producer_is_woken_only_once_the_queue_is_down_to_low_water() {
        let shared = Shared::new(1, 4);
        for _ in 0..4 {
            assert!(shared.try_push(noop()).is_ok());
        }
        let pushed = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                assert!(shared.push_blocking(noop()).is_ok());
                pushed.store(true, Ordering::SeqCst);
            });
            eventually("producer asleep", || {
                shared.space_waiters.load(Ordering::SeqCst) == 1
            });
            // 3 left > low water 2: no wake-up. parking_lot has no spurious wake-ups, so the
            // producer is still registered as asleep, deterministically.
            assert!(shared.pop().is_some());
            assert_eq!(shared.space_waiters.load(Ordering::SeqCst), 1);
            assert!(!pushed.load(Ordering::SeqCst));
            // 2 left == low water: the producer is woken and pushes.
            assert!(shared.pop().is_some());
            eventually("producer pushed", || pushed.load(Ordering::SeqCst));
        });
        assert_eq!(shared.queued(), 3);
        assert_eq!(shared.space_waiters.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn closing_releases_a_blocked_producer_with_its_job() {
        let shared = Shared::new(1, 1);
        assert!(shared.try_push(noop()).is_ok());
        std::thread::scope(|s| {
            let producer = s.spawn(|| shared.push_blocking(noop()).is_err());
            eventually("producer asleep", || {
                shared.space_waiters.load(Ordering::SeqCst) == 1
            });
            shared.close();
            assert!(producer.join().expect("producer thread"), "expected Closed");
        });
        assert_eq!(shared.accepted(), 1);
    }

    #[test]
    fn idle_worker_sleeps_and_a_push_wakes_exactly_it() {
        let shared = Shared::new(1, 8);
        std::thread::scope(|s| {
            let worker = s.spawn(|| shared.wait_for_work());
            eventually("worker asleep", || {
                shared.idle_workers.load(Ordering::SeqCst) == 1
            });
            assert!(shared.try_push(noop()).is_ok());
            assert!(
                worker.join().expect("worker thread"),
                "worker should go on, not exit"
            );
        });
        assert_eq!(shared.idle_workers.load(Ordering::SeqCst), 0);
        assert_eq!(shared.queued(), 1);
    }

    #[test]
    fn sealed_and_empty_tells_workers_to_exit_but_not_while_jobs_remain() {
        let shared = Shared::new(1, 8);
        assert!(shared.try_push(noop()).is_ok());
        shared.close();
        shared.seal();
        assert!(shared.wait_for_work(), "a queued job remains");
        assert!(shared.pop().is_some());
        assert!(!shared.wait_for_work());
    }

    #[test]
    fn abandon_drops_queued_jobs_unrun_and_counts_them() {
        let ran = Arc::new(AtomicU64::new(0));
        let shared = Shared::new(1, 8);
        for _ in 0..5 {
            let ran = Arc::clone(&ran);
            let job = Job::new(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            });
            assert!(shared.try_push(job).is_ok());
        }
        shared.close();
        shared.seal();
        shared.abandon();
        assert_eq!(shared.dropped(), 5);
        assert_eq!(shared.queued(), 0);
        assert!(!shared.wait_for_work());
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }
}
