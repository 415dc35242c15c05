//! The public pool handle: building it, submitting jobs (blocking, non-blocking, async), reading
//! its gauges, and shutting it down with a deadline.

use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::async_submit::SubmitFuture;
use crate::counters::ACCEPTED_MASK;
use crate::error::{BuildError, SubmitError, TrySubmitError};
use crate::shared::{PushError, Shared};
use crate::{Job, worker};

/// How long dropping a pool that was not shut down waits for queued and running jobs, by default.
pub const DEFAULT_DROP_DEADLINE: Duration = Duration::from_secs(5);

/// Configures and starts a [`Pool`].
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    workers: usize,
    queue_capacity: usize,
    thread_name: String,
    stack_size: Option<usize>,
    drop_deadline: Duration,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        let workers = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Self {
            workers,
            queue_capacity: 1024,
            thread_name: "dispatcher-pool".to_owned(),
            stack_size: None,
            drop_deadline: DEFAULT_DROP_DEADLINE,
        }
    }
}

impl PoolBuilder {
    /// Number of worker threads (default: the available parallelism).
    #[must_use]
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Jobs that may wait in the queue (default 1024). Submitters block (or are refused) beyond it;
    /// this is what bounds the pool's memory.
    #[must_use]
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    /// Prefix of the worker threads' names; worker `i` is named `"{prefix}-{i}"`.
    #[must_use]
    pub fn thread_name(mut self, prefix: impl Into<String>) -> Self {
        self.thread_name = prefix.into();
        self
    }

    /// Stack size of the worker threads (default: the standard library's).
    #[must_use]
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes);
        self
    }

    /// How long `Drop` waits for queued and running jobs when the pool was not shut down
    /// explicitly (default [`DEFAULT_DROP_DEADLINE`]).
    #[must_use]
    pub fn drop_deadline(mut self, deadline: Duration) -> Self {
        self.drop_deadline = deadline;
        self
    }

    /// Starts the worker threads.
    pub fn build(self) -> Result<Pool, BuildError> {
        if self.workers == 0 {
            return Err(BuildError::NoWorkers);
        }
        if self.queue_capacity == 0 {
            return Err(BuildError::ZeroCapacity);
        }
        let shared = Arc::new(Shared::new(self.workers, self.queue_capacity));
        let mut handles = Vec::with_capacity(self.workers);
        for index in 0..self.workers {
            let mut builder =
                std::thread::Builder::new().name(format!("{}-{index}", self.thread_name));
            if let Some(bytes) = self.stack_size {
                builder = builder.stack_size(bytes);
            }
            let worker_shared = Arc::clone(&shared);
            match builder.spawn(move || worker::run(worker_shared, index)) {
                Ok(handle) => handles.push(handle),
                Err(source) => {
                    // Workers that never started count as exited; stop the ones that did.
                    for _ in index..self.workers {
                        shared.worker_exited();
                    }
                    shared.close();
                    shared.seal();
                    for handle in handles {
                        let _ = handle.join();
                    }
                    return Err(BuildError::Spawn { index, source });
                }
            }
        }
        Ok(Pool {
            shared,
            workers: self.workers,
            drop_deadline: self.drop_deadline,
            lifecycle: Mutex::new(Lifecycle {
                handles,
                shutdown_called: false,
            }),
        })
    }
}

struct Lifecycle {
    /// Worker threads not yet joined.
    handles: Vec<JoinHandle<()>>,
    shutdown_called: bool,
}

/// What a [`Pool::shutdown`] found when it returned.
///
/// Every job a submit accepted is in exactly one of `completed`, `panicked`, `running` and
/// `dropped`, so `accepted == completed + panicked + running + dropped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Jobs the pool accepted over its life.
    pub accepted: u64,
    /// Jobs that ran and returned.
    pub completed: u64,
    /// Jobs that ran and panicked.
    pub panicked: u64,
    /// Jobs taken by a worker and not finished when shutdown returned (the deadline passed); they
    /// finish on their detached worker threads.
    pub running: u64,
    /// Jobs still queued when the deadline passed, dropped without running.
    pub dropped: u64,
    /// Whether the deadline passed before every worker had finished.
    pub timed_out: bool,
    /// How long the shutdown call took.
    pub elapsed: Duration,
}

impl ShutdownReport {
    /// Whether every accepted job ran (returned or panicked) before shutdown returned.
    pub fn is_clean(&self) -> bool {
        !self.timed_out && self.running == 0 && self.dropped == 0
    }
}

/// A bounded pool of worker threads with a bounded, lock-free job queue.
///
/// * [`submit`](Self::submit) blocks while the queue is full (backpressure);
///   [`try_submit`](Self::try_submit) never blocks and gives the job back;
///   [`submit_async`](Self::submit_async) waits without blocking a thread.
/// * A job that panics is caught and counted; its worker goes on.
/// * [`shutdown`](Self::shutdown) stops accepting, drains queued and running jobs, and returns by
///   its deadline with a [`ShutdownReport`]. Dropping the pool does the same with the builder's
///   drop deadline (default [`DEFAULT_DROP_DEADLINE`]).
///
/// Memory is bounded by the queue capacity: a blocked producer keeps its one job on its own stack
/// and allocates nothing while it waits.
///
/// A job that submits to its own pool with the blocking [`submit`](Self::submit) can deadlock
/// when every worker does so on a full queue; jobs should use [`try_submit`](Self::try_submit).
///
/// Share a pool between threads by reference (scoped threads) or in an `Arc`.
pub struct Pool {
    shared: Arc<Shared>,
    workers: usize,
    drop_deadline: Duration,
    lifecycle: Mutex<Lifecycle>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.workers)
            .field("capacity", &self.capacity())
            .field("queued", &self.queued())
            .field("active", &self.active())
            .field("completed", &self.completed())
            .field("panicked", &self.panicked())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Pool {
    /// A builder with default settings.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// A pool of `workers` threads and a queue of `queue_capacity` jobs, otherwise default.
    pub fn new(workers: usize, queue_capacity: usize) -> Result<Self, BuildError> {
        Self::builder()
            .workers(workers)
            .queue_capacity(queue_capacity)
            .build()
    }

    /// Queues `job`, blocking the calling thread while the queue is full.
    ///
    /// Returns [`SubmitError::Closed`] (and drops the job unrun) once shutdown has begun,
    /// including when shutdown begins while this call waits.
    pub fn submit<F>(&self, job: F) -> Result<(), SubmitError>
    where
        F: FnOnce() + Send + 'static,
    {
        self.submit_job(Job::new(job))
    }

    /// [`submit`](Self::submit) for a [`Job`], e.g. one handed back by
    /// [`try_submit`](Self::try_submit).
    pub fn submit_job(&self, job: Job) -> Result<(), SubmitError> {
        self.shared
            .push_blocking(job)
            .map_err(|_| SubmitError::Closed)
    }

    /// Queues `job` if there is room now; otherwise gives it back at once.
    pub fn try_submit<F>(&self, job: F) -> Result<(), TrySubmitError>
    where
        F: FnOnce() + Send + 'static,
    {
        self.try_submit_job(Job::new(job))
    }

    /// [`try_submit`](Self::try_submit) for a [`Job`].
    pub fn try_submit_job(&self, job: Job) -> Result<(), TrySubmitError> {
        self.shared.try_push(job).map_err(|e| match e {
            PushError::Full(job) => TrySubmitError::Full(job),
            PushError::Closed(job) => TrySubmitError::Closed(job),
        })
    }

    /// Queues `job`, waiting asynchronously (without blocking a thread) while the queue is full.
    ///
    /// Works with any executor. The returned future owns the job; dropping it before it completes
    /// drops the job unrun. See [`SubmitFuture`].
    pub fn submit_async<F>(&self, job: F) -> SubmitFuture
    where
        F: FnOnce() + Send + 'static,
    {
        SubmitFuture::new(Arc::clone(&self.shared), Job::new(job))
    }

    /// Jobs running right now.
    pub fn active(&self) -> usize {
        self.shared.active()
    }

    /// Jobs waiting in the queue right now.
    pub fn queued(&self) -> usize {
        self.shared.queued()
    }

    /// Jobs that ran and returned (not counting those that panicked).
    pub fn completed(&self) -> u64 {
        self.shared.completed()
    }

    /// Jobs that ran and panicked.
    pub fn panicked(&self) -> u64 {
        self.shared.panicked()
    }

    /// Maximum number of queued jobs.
    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Whether shutdown has begun.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Stops accepting jobs, lets the workers finish queued and running jobs, and returns once
    /// they have or `deadline` has passed, whichever is first.
    ///
    /// When the deadline passes, jobs still queued are dropped unrun (counted in
    /// [`ShutdownReport::dropped`]); jobs already running cannot be interrupted: they finish on
    /// their worker threads, which are then detached (counted in [`ShutdownReport::running`]).
    ///
    /// Calling it again waits again (with the new deadline) for workers still running, and
    /// reports totals. Called from one of this pool's own workers (e.g. a job dropping the last
    /// `Arc<Pool>`), it does not wait, since it would wait for itself: it closes the pool, leaves
    /// the workers draining the queue, and returns at once.
    pub fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let started = Instant::now();
        let until = started.checked_add(deadline).unwrap_or_else(far_future);
        let mut lifecycle = self.lifecycle.lock();
        lifecycle.shutdown_called = true;
        self.shared.close();
        self.shared.seal();

        let timed_out = if worker::is_worker_of(self.shared.id) {
            false
        } else if self.shared.wait_workers_exited(until) {
            for handle in lifecycle.handles.drain(..) {
                // A worker's loop catches job panics, so a join error is not expected; there is
                // nothing more to do for it either way.
                let _ = handle.join();
            }
            false
        } else {
            self.shared.abandon();
            true
        };
        drop(lifecycle);
        self.report(timed_out, started.elapsed())
    }

    fn report(&self, timed_out: bool, elapsed: Duration) -> ShutdownReport {
        let dropped = self.shared.dropped();
        let accepted = self.shared.accepted();
        let panicked = self.shared.panicked();
        let completed = self.shared.completed();
        // Exact by construction: everything accepted and neither finished nor dropped was taken by
        // a worker. Accepted is kept modulo 2^40; the difference is far below that.
        let running = accepted
            .wrapping_sub(completed)
            .wrapping_sub(panicked)
            .wrapping_sub(dropped)
            & ACCEPTED_MASK;
        ShutdownReport {
            accepted: completed + panicked + running + dropped,
            completed,
            panicked,
            running,
            dropped,
            timed_out,
            elapsed,
        }
    }
}

fn far_future() -> Instant {
    // About 30 years; `Instant` has no MAX.
    Instant::now() + Duration::from_secs(60 * 60 * 24 * 365 * 30)
}

impl Drop for Pool {
    fn drop(&mut self) {
        if !self.lifecycle.get_mut().shutdown_called {
            self.shutdown(self.drop_deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_rejects_zero_workers_and_zero_capacity() {
        assert!(matches!(Pool::new(0, 8), Err(BuildError::NoWorkers)));
        assert!(matches!(Pool::new(2, 0), Err(BuildError::ZeroCapacity)));
    }

    #[test]
    fn builder_settings_are_applied() {
        let pool = Pool::builder()
            .workers(3)
            .queue_capacity(17)
            .thread_name("unit-pool")
            .stack_size(256 * 1024)
            .drop_deadline(Duration::from_secs(1))
            .build()
            .expect("valid configuration");
        assert_eq!(pool.workers(), 3);
        assert_eq!(pool.capacity(), 17);
        let (tx, rx) = std::sync::mpsc::channel();
        pool.submit(move || {
            let name = std::thread::current().name().map(str::to_owned);
            tx.send(name).expect("test receiver alive");
        })
        .expect("pool open");
        let name = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("job ran")
            .expect("named thread");
        assert!(name.starts_with("unit-pool-"), "{name}");
        assert_eq!(pool.drop_deadline, Duration::from_secs(1));
    }

    #[test]
    fn an_idle_pool_shuts_down_cleanly_and_a_second_shutdown_reports_the_same_totals() {
        let pool = Pool::new(2, 4).expect("valid configuration");
        for _ in 0..3 {
            pool.submit(|| {}).expect("pool open");
        }
        let first = pool.shutdown(Duration::from_secs(10));
        assert!(first.is_clean(), "{first:?}");
        assert_eq!((first.accepted, first.completed), (3, 3));
        let second = pool.shutdown(Duration::ZERO);
        assert!(second.is_clean(), "{second:?}");
        assert_eq!(second.accepted, 3);
        assert!(pool.lifecycle.lock().handles.is_empty(), "workers joined");
    }

    #[test]
    fn debug_shows_gauges_not_jobs() {
        let pool = Pool::new(1, 2).expect("valid configuration");
        let text = format!("{pool:?}");
        assert!(
            text.contains("capacity: 2") && text.contains("closed: false"),
            "{text}"
        );
    }
}
