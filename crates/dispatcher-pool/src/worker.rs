//! The worker thread: its loop (take a job, run it under `catch_unwind`, count it) and the marker
//! that tells a pool's `shutdown` it was called from one of its own workers.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crate::shared::Shared;

thread_local! {
    /// Id of the pool whose worker this thread is; 0 on other threads.
    static CURRENT_POOL: Cell<usize> = const { Cell::new(0) };
}

/// Whether the calling thread is one of the workers of the pool `pool_id`.
pub(crate) fn is_worker_of(pool_id: usize) -> bool {
    CURRENT_POOL.with(Cell::get) == pool_id
}

/// Tells the pool that this worker left its loop, however it left.
struct ExitGuard<'a>(&'a Shared);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        self.0.worker_exited();
    }
}

/// Body of worker thread `index`.
pub(crate) fn run(shared: Arc<Shared>, index: usize) {
    CURRENT_POOL.with(|c| c.set(shared.id));
    let _exit = ExitGuard(&shared);
    let counters = &shared.workers[index];
    loop {
        if shared.is_abandoned() {
            break;
        }
        if let Some(job) = shared.pop() {
            counters.set_active(true);
            let outcome = catch_unwind(AssertUnwindSafe(|| job.run()));
            counters.set_active(false);
            match outcome {
                Ok(()) => counters.count_completed(),
                Err(payload) => {
                    counters.count_panicked();
                    // A panic payload's own destructor may panic; keep the worker alive anyway.
                    let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
                }
            }
            continue;
        }
        if !shared.wait_for_work() {
            break;
        }
    }
}
