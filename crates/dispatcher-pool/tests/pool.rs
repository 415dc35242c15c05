//! Behaviour of `dispatcher_pool::Pool` through its public API: exactly-once execution,
//! backpressure, panic isolation, draining shutdown with a deadline, gauges and async submit.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use dispatcher_pool::{Job, Pool, SubmitError, TrySubmitError};
use proptest::prelude::*;

/// Generous bound for "this must happen": hitting it means a hang, not slowness.
const HANG: Duration = Duration::from_secs(20);

/// A latch that jobs wait on until the test opens it.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn wait(&self) {
        let mut open = self.open.lock().expect("gate lock");
        while !*open {
            open = self.cv.wait(open).expect("gate lock");
        }
    }

    fn open(&self) {
        *self.open.lock().expect("gate lock") = true;
        self.cv.notify_all();
    }
}

/// Submits `n` jobs that each wait on `gate`, and waits until `n` of them are running.
fn hold_workers(pool: &Pool, gate: &Arc<Gate>, n: usize) {
    for _ in 0..n {
        let gate = Arc::clone(gate);
        pool.submit(move || gate.wait()).expect("pool open");
    }
    eventually("workers held", || pool.active() == n);
}

fn eventually(what: &str, cond: impl Fn() -> bool) {
    let until = Instant::now() + HANG;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Silences the default panic message for the deliberate panics of a test (each nextest test
/// runs in its own process).
fn quiet_panics() {
    std::panic::set_hook(Box::new(|_| {}));
}

/// Counts how often each of `n` jobs ran.
struct Tally(Vec<AtomicU8>);

impl Tally {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Self((0..n).map(|_| AtomicU8::new(0)).collect()))
    }

    fn hit(&self, i: usize) {
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    fn assert_each_exactly_once(&self) {
        for (i, c) in self.0.iter().enumerate() {
            assert_eq!(
                c.load(Ordering::Relaxed),
                1,
                "job {i} ran {} times",
                c.load(Ordering::Relaxed)
            );
        }
    }
}

#[test]
fn submit_runs_every_job_exactly_once_with_many_producers() {
    const PRODUCERS: usize = 8;
    const PER_PRODUCER: usize = 20_000;
    let pool = Pool::new(3, 64).expect("valid configuration");
    let tally = Tally::new(PRODUCERS * PER_PRODUCER);
    thread::scope(|s| {
        for p in 0..PRODUCERS {
            let (pool, tally) = (&pool, &tally);
            s.spawn(move || {
                for j in 0..PER_PRODUCER {
                    let tally = Arc::clone(tally);
                    let i = p * PER_PRODUCER + j;
                    pool.submit(move || tally.hit(i)).expect("pool open");
                }
            });
        }
    });
    let report = pool.shutdown(HANG);
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.completed, (PRODUCERS * PER_PRODUCER) as u64);
    assert_eq!(report.accepted, report.completed);
    tally.assert_each_exactly_once();
}

#[test]
fn try_submit_reports_full_when_the_queue_is_full_and_gives_the_job_back() {
    let pool = Pool::new(2, 4).expect("valid configuration");
    let gate = Gate::new();
    hold_workers(&pool, &gate, 2);
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..4 {
        let ran = Arc::clone(&ran);
        assert!(
            pool.try_submit(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            })
            .is_ok()
        );
    }
    assert_eq!(pool.queued(), 4);

    let returned_ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&returned_ran);
    let err = pool
        .try_submit(move || flag.store(true, Ordering::SeqCst))
        .expect_err("queue is full");
    assert!(err.is_full(), "{err:?}");
    // The job handed back is ours: running it sets our flag.
    err.into_inner().run();
    assert!(returned_ran.load(Ordering::SeqCst));

    gate.open();
    let report = pool.shutdown(HANG);
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.completed, 6);
    assert_eq!(ran.load(Ordering::SeqCst), 4);
}

#[test]
fn a_refused_job_can_be_resubmitted_as_is() {
    let pool = Pool::new(1, 1).expect("valid configuration");
    let gate = Gate::new();
    hold_workers(&pool, &gate, 1);
    pool.try_submit(|| {}).expect("one slot free");
    let ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    let job = pool
        .try_submit(move || flag.store(true, Ordering::SeqCst))
        .expect_err("full")
        .into_inner();
    gate.open();
    pool.submit_job(job).expect("pool open");
    assert!(pool.shutdown(HANG).is_clean());
    assert!(ran.load(Ordering::SeqCst));
}

#[test]
fn submit_blocks_while_full_and_proceeds_when_a_slot_frees() {
    let pool = Pool::new(1, 2).expect("valid configuration");
    let gate = Gate::new();
    hold_workers(&pool, &gate, 1);
    pool.submit(|| {}).expect("slot free");
    pool.submit(|| {}).expect("slot free");
    assert_eq!(pool.queued(), 2);

    let (tx, rx) = mpsc::channel();
    let ran = Arc::new(AtomicBool::new(false));
    thread::scope(|s| {
        let (pool, ran) = (&pool, Arc::clone(&ran));
        s.spawn(move || {
            let result = pool.submit(move || ran.store(true, Ordering::SeqCst));
            tx.send(result).expect("test receiver alive");
        });
        // Still blocked while the queue stays full (this checks blocking, not speed).
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(200)),
            Err(RecvTimeoutError::Timeout)
        );
        assert_eq!(pool.queued(), 2);
        gate.open();
        assert_eq!(rx.recv_timeout(HANG), Ok(Ok(())));
    });
    let report = pool.shutdown(HANG);
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.completed, 4);
    assert!(ran.load(Ordering::SeqCst));
}

#[test]
fn panicking_jobs_do_not_kill_workers_and_are_counted() {
    quiet_panics();
    const WORKERS: usize = 3;
    let pool = Pool::new(WORKERS, 16).expect("valid configuration");
    for i in 0..30 {
        pool.submit(move || panic!("job {i} fails on purpose"))
            .expect("pool open");
    }
    eventually("all panics counted", || pool.panicked() == 30);
    assert_eq!(pool.completed(), 0);

    // Every worker still runs jobs: WORKERS jobs that wait for each other can only all finish
    // if WORKERS distinct workers run them at the same time.
    let barrier = Arc::new(Barrier::new(WORKERS));
    let names = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..WORKERS {
        let (barrier, names) = (Arc::clone(&barrier), Arc::clone(&names));
        pool.submit(move || {
            barrier.wait();
            let name = thread::current().name().unwrap_or_default().to_owned();
            names.lock().expect("names lock").push(name);
        })
        .expect("pool open");
    }
    let report = pool.shutdown(HANG);
    assert!(report.is_clean(), "{report:?}");
    assert_eq!((report.completed, report.panicked), (WORKERS as u64, 30));
    let mut names = names.lock().expect("names lock").clone();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), WORKERS, "{names:?}");
}

#[test]
fn shutdown_drains_queued_jobs_before_returning() {
    let pool = Pool::new(2, 100).expect("valid configuration");
    let gate = Gate::new();
    hold_workers(&pool, &gate, 2);
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..100 {
        let ran = Arc::clone(&ran);
        pool.submit(move || {
            thread::sleep(Duration::from_micros(200));
            ran.fetch_add(1, Ordering::SeqCst);
        })
        .expect("pool open");
    }
    let opener = Arc::clone(&gate);
    let report = thread::scope(|s| {
        s.spawn(move || {
            thread::sleep(Duration::from_millis(50));
            opener.open();
        });
        pool.shutdown(HANG)
    });
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.completed, 102);
    assert_eq!(ran.load(Ordering::SeqCst), 100);
    assert_eq!((pool.queued(), pool.active()), (0, 0));
}

#[test]
fn shutdown_with_a_short_deadline_returns_on_time_and_reports_running_and_dropped() {
    let pool = Pool::new(2, 16).expect("valid configuration");
    let gate = Gate::new();
    hold_workers(&pool, &gate, 2);
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..10 {
        let ran = Arc::clone(&ran);
        pool.submit(move || {
            ran.fetch_add(1, Ordering::SeqCst);
        })
        .expect("pool open");
    }
    let report = pool.shutdown(Duration::from_millis(100));
    assert!(report.timed_out, "{report:?}");
    assert!(report.elapsed >= Duration::from_millis(100), "{report:?}");
    assert!(
        report.elapsed < Duration::from_secs(5),
        "returned on time: {report:?}"
    );
    assert_eq!(
        (report.running, report.dropped, report.completed),
        (2, 10, 0),
        "{report:?}"
    );
    assert_eq!(report.accepted, 12);
    assert_eq!(pool.queued(), 0);

    // The held jobs finish on their workers once released; the dropped ones never run.
    gate.open();
    let later = pool.shutdown(HANG);
    assert!(!later.timed_out, "{later:?}");
    assert_eq!(
        (later.completed, later.running, later.dropped),
        (2, 0, 10),
        "{later:?}"
    );
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[test]
fn submits_after_shutdown_are_refused() {
    let pool = Pool::new(1, 4).expect("valid configuration");
    assert!(!pool.is_closed());
    assert!(pool.shutdown(HANG).is_clean());
    assert!(pool.is_closed());
    assert_eq!(pool.submit(|| {}), Err(SubmitError::Closed));
    let err = pool.try_submit(|| {}).expect_err("closed");
    assert!(err.is_closed(), "{err:?}");
    assert!(matches!(err, TrySubmitError::Closed(_)));
    assert_eq!(block_on(pool.submit_async(|| {})), Err(SubmitError::Closed));
}

#[test]
fn a_submitter_blocked_on_a_full_queue_gets_closed_when_shutdown_begins() {
    let pool = Pool::new(1, 1).expect("valid configuration");
    let gate = Gate::new();
    hold_workers(&pool, &gate, 1);
    pool.submit(|| {}).expect("slot free");
    let (tx, rx) = mpsc::channel();
    thread::scope(|s| {
        let pool = &pool;
        s.spawn(move || tx.send(pool.submit(|| {})).expect("test receiver alive"));
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(100)),
            Err(RecvTimeoutError::Timeout)
        );
        let report = pool.shutdown(Duration::from_millis(50));
        assert_eq!(rx.recv_timeout(HANG), Ok(Err(SubmitError::Closed)));
        assert_eq!((report.running, report.dropped), (1, 1), "{report:?}");
        gate.open();
    });
}

#[test]
fn gauges_match_what_the_pool_is_doing() {
    let pool = Pool::new(2, 8).expect("valid configuration");
    assert_eq!((pool.workers(), pool.capacity()), (2, 8));
    assert_eq!(
        (
            pool.active(),
            pool.queued(),
            pool.completed(),
            pool.panicked()
        ),
        (0, 0, 0, 0)
    );

    let gate = Gate::new();
    hold_workers(&pool, &gate, 2);
    for _ in 0..3 {
        pool.submit(|| {}).expect("pool open");
    }
    assert_eq!((pool.active(), pool.queued(), pool.completed()), (2, 3, 0));

    gate.open();
    eventually("all done", || pool.completed() == 5);
    // `completed` is published after `active` is cleared, so this is not racy.
    assert_eq!((pool.active(), pool.queued(), pool.panicked()), (0, 0, 0));
}

#[test]
fn submit_async_waits_for_space_without_blocking_and_is_woken() {
    let pool = Pool::new(1, 2).expect("valid configuration");
    let gate = Gate::new();
    hold_workers(&pool, &gate, 1);
    pool.submit(|| {}).expect("slot free");
    pool.submit(|| {}).expect("slot free");

    let ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    let mut fut = pin!(pool.submit_async(move || flag.store(true, Ordering::SeqCst)));
    let waker = Arc::new(CountingWaker::default());
    let w = Waker::from(Arc::clone(&waker));
    let mut cx = Context::from_waker(&w);
    assert_eq!(fut.as_mut().poll(&mut cx), Poll::Pending);
    assert_eq!(
        fut.as_mut().poll(&mut cx),
        Poll::Pending,
        "a re-poll while full stays pending"
    );
    assert_eq!(waker.wakes.load(Ordering::SeqCst), 0);

    gate.open();
    eventually("future woken", || waker.wakes.load(Ordering::SeqCst) > 0);
    assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
    assert!(pool.shutdown(HANG).is_clean());
    assert!(ran.load(Ordering::SeqCst));
}

#[test]
fn a_pending_submit_async_resolves_to_closed_when_shutdown_begins_and_can_be_dropped() {
    let pool = Pool::new(1, 1).expect("valid configuration");
    let gate = Gate::new();
    hold_workers(&pool, &gate, 1);
    pool.submit(|| {}).expect("slot free");

    let waker = Arc::new(CountingWaker::default());
    let w = Waker::from(Arc::clone(&waker));
    let mut cx = Context::from_waker(&w);
    let mut closed = pin!(pool.submit_async(|| {}));
    assert_eq!(closed.as_mut().poll(&mut cx), Poll::Pending);
    // A second pending future that is dropped while registered leaves nothing behind.
    let mut abandoned = Box::pin(pool.submit_async(|| {}));
    assert_eq!(abandoned.as_mut().poll(&mut cx), Poll::Pending);
    drop(abandoned);

    let report = pool.shutdown(Duration::from_millis(20));
    assert!(waker.wakes.load(Ordering::SeqCst) >= 1);
    assert_eq!(
        closed.as_mut().poll(&mut cx),
        Poll::Ready(Err(SubmitError::Closed))
    );
    assert_eq!(report.accepted, 2);
    gate.open();
}

#[test]
fn many_async_submitters_all_get_through_a_small_queue() {
    let pool = Pool::new(2, 4).expect("valid configuration");
    let tally = Tally::new(4 * 500);
    thread::scope(|s| {
        for p in 0..4 {
            let (pool, tally) = (&pool, &tally);
            s.spawn(move || {
                for j in 0..500 {
                    let tally = Arc::clone(tally);
                    let i = p * 500 + j;
                    block_on(pool.submit_async(move || tally.hit(i))).expect("pool open");
                }
            });
        }
    });
    assert!(pool.shutdown(HANG).is_clean());
    tally.assert_each_exactly_once();
}

#[test]
fn dropping_the_pool_drains_queued_jobs() {
    let ran = Arc::new(AtomicUsize::new(0));
    {
        let pool = Pool::new(2, 64).expect("valid configuration");
        for _ in 0..50 {
            let ran = Arc::clone(&ran);
            pool.submit(move || {
                thread::sleep(Duration::from_micros(100));
                ran.fetch_add(1, Ordering::SeqCst);
            })
            .expect("pool open");
        }
    }
    assert_eq!(ran.load(Ordering::SeqCst), 50);
}

#[test]
fn dropping_the_pool_with_a_stuck_job_returns_after_the_drop_deadline() {
    let gate = Gate::new();
    let pool = Pool::builder()
        .workers(1)
        .queue_capacity(4)
        .drop_deadline(Duration::from_millis(50))
        .build()
        .expect("valid configuration");
    hold_workers(&pool, &gate, 1);
    let started = Instant::now();
    drop(pool);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drop must not hang"
    );
    gate.open();
}

#[test]
fn a_job_dropping_the_last_handle_does_not_deadlock() {
    let pool = Arc::new(Pool::new(2, 8).expect("valid configuration"));
    let (tx, rx) = mpsc::channel();
    let inner = Arc::clone(&pool);
    let follow_up_ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&follow_up_ran);
    pool.submit(move || {
        inner
            .try_submit(move || flag.store(true, Ordering::SeqCst))
            .expect("room for one");
        thread::sleep(Duration::from_millis(20));
        drop(inner); // the last handle by then: shutdown runs on this worker thread
        tx.send(()).expect("test receiver alive");
    })
    .expect("pool open");
    drop(pool);
    assert_eq!(rx.recv_timeout(HANG), Ok(()));
    eventually("follow-up ran", || follow_up_ran.load(Ordering::SeqCst));
}

/// Submits racing a shutdown: every submit that returned `Ok` is accounted for, and runs unless
/// the deadline dropped it.
#[test]
fn submits_racing_shutdown_are_each_run_or_refused() {
    for round in 0..20 {
        let pool = Pool::new(2, 8).expect("valid configuration");
        let executed = Arc::new(AtomicU64::new(0));
        let ok = AtomicU64::new(0);
        let report = thread::scope(|s| {
            for _ in 0..3 {
                let (pool, executed, ok) = (&pool, &executed, &ok);
                s.spawn(move || {
                    loop {
                        let executed = Arc::clone(executed);
                        match pool.submit(move || {
                            executed.fetch_add(1, Ordering::Relaxed);
                        }) {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(SubmitError::Closed) => break,
                        };
                    }
                });
            }
            thread::sleep(Duration::from_millis(2 + round % 5));
            pool.shutdown(HANG)
        });
        let ok = ok.load(Ordering::Relaxed);
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.accepted, ok, "round {round}");
        assert_eq!(report.completed, ok, "round {round}");
        assert_eq!(executed.load(Ordering::Relaxed), ok, "round {round}");
    }
}

#[test]
fn submits_racing_an_immediate_deadline_are_run_or_dropped_never_lost() {
    for round in 0..20 {
        let pool = Pool::new(2, 64).expect("valid configuration");
        let executed = Arc::new(AtomicU64::new(0));
        let ok = AtomicU64::new(0);
        let report = thread::scope(|s| {
            for _ in 0..3 {
                let (pool, executed, ok) = (&pool, &executed, &ok);
                s.spawn(move || {
                    loop {
                        let executed = Arc::clone(executed);
                        match pool.submit(move || {
                            executed.fetch_add(1, Ordering::Relaxed);
                        }) {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(SubmitError::Closed) => break,
                        };
                    }
                });
            }
            thread::sleep(Duration::from_millis(1 + round % 3));
            pool.shutdown(Duration::ZERO)
        });
        let ok = ok.load(Ordering::Relaxed);
        assert_eq!(report.accepted, ok, "round {round}: {report:?}");
        // Jobs reported running finish on their detached workers; then the books balance.
        let settled = pool.shutdown(HANG);
        assert_eq!(settled.running, 0, "{settled:?}");
        assert_eq!(settled.dropped, report.dropped);
        assert_eq!(
            executed.load(Ordering::Relaxed) + settled.dropped,
            ok,
            "round {round}"
        );
        assert_eq!(settled.completed + settled.dropped, ok);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn every_job_runs_exactly_once(
        workers in 1usize..=4,
        capacity in 1usize..=16,
        producers in 1usize..=3,
        jobs in 0usize..400,
        use_try in any::<bool>(),
    ) {
        let pool = Pool::new(workers, capacity).expect("valid configuration");
        let tally = Tally::new(jobs);
        thread::scope(|s| {
            for p in 0..producers {
                let (pool, tally) = (&pool, &tally);
                s.spawn(move || {
                    for i in (p..jobs).step_by(producers) {
                        let t = Arc::clone(tally);
                        let mut job = Job::new(move || t.hit(i));
                        if use_try {
                            // Spin on try_submit, taking the job back each time it is refused.
                            loop {
                                match pool.try_submit_job(job) {
                                    Ok(()) => break,
                                    Err(e) => {
                                        assert!(e.is_full());
                                        job = e.into_inner();
                                        thread::yield_now();
                                    }
                                }
                            }
                        } else {
                            pool.submit_job(job).expect("pool open");
                        }
                    }
                });
            }
        });
        let report = pool.shutdown(HANG);
        prop_assert!(report.is_clean(), "{:?}", report);
        prop_assert_eq!(report.completed, jobs as u64);
        tally.assert_each_exactly_once();
    }
}

// ---- a minimal executor for the async tests ---------------------------------------------------

#[derive(Default)]
struct CountingWaker {
    wakes: AtomicUsize,
}

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }
}

struct ThreadWaker(thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park();
    }
}
