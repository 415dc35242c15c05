//! The job as the pool stores it: a type-erased closure kept inline in its queue slot when small
//! (no heap allocation per submit), boxed on the heap otherwise.

use std::fmt;

use smallbox::SmallBox;
use smallbox::space::S4;

/// Inline room for a job's captures: four machine words (32 bytes on 64-bit targets), enough for
/// the usual `Arc` plus an id or two. Larger closures are boxed on the heap.
type Space = S4;

/// A job queued on a [`Pool`](crate::Pool): a closure run once on a worker thread.
///
/// A closure whose captures fit in four words is stored inline, so submitting it allocates
/// nothing; a producer and a worker on different cores then exchange the job through the queue
/// slot alone, not through the allocator. (Heap-allocating every job, and freeing it on another
/// thread, was the dominant cost of a no-op job with glibc's allocator.)
///
/// Jobs are handed back by [`TrySubmitError`](crate::TrySubmitError): run one with
/// [`Job::run`] or resubmit it with [`Pool::submit_job`](crate::Pool::submit_job).
pub struct Job {
    // `FnOnce` cannot be called through a `SmallBox`, so the closure is wrapped in an `Option`
    // and called through `FnMut`: the wrapper runs it the first time and does nothing after.
    call: SmallBox<dyn FnMut() + Send + 'static, Space>,
}

impl Job {
    /// Wraps a closure as a job.
    pub fn new<F>(f: F) -> Self
    where
        F: FnOnce() + Send + 'static,
    {
        let mut f = Some(f);
        let call: SmallBox<dyn FnMut() + Send + 'static, Space> = smallbox::smallbox!(move || {
            if let Some(f) = f.take() {
                f();
            }
        });
        Self { call }
    }

    /// Runs the job on the calling thread.
    pub fn run(mut self) {
        (self.call)();
    }

    /// Whether the job's closure lives on the heap (it was too large to store inline).
    pub fn is_heap(&self) -> bool {
        self.call.is_heap()
    }
}

// The closure may be stored inline, and closures need not be `Unpin`; but a `Job` never hands out
// a pinned reference to its closure (it is only ever called through `&mut`), so moving a `Job`
// is always fine, as for `Box`. This lets `SubmitFuture`, which owns a `Job`, be `Unpin`.
impl Unpin for Job {}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("heap", &self.is_heap())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn small_closures_are_inline_and_large_ones_on_the_heap_and_both_run_once() {
        let runs = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&runs);
        let id = 7u64;
        let small = Job::new(move || {
            r.fetch_add(usize::try_from(id).expect("small"), Ordering::SeqCst);
        });
        assert!(!small.is_heap());
        small.run();

        let r = Arc::clone(&runs);
        let payload = [1u8; 256];
        let large = Job::new(move || {
            r.fetch_add(usize::from(payload[255]), Ordering::SeqCst);
        });
        assert!(large.is_heap());
        assert!(format!("{large:?}").contains("heap: true"));
        large.run();
        assert_eq!(runs.load(Ordering::SeqCst), 8);
    }

    #[test]
    fn dropping_an_unrun_job_drops_its_captures() {
        let alive = Arc::new(());
        let held = Arc::clone(&alive);
        let job = Job::new(move || drop(held));
        assert_eq!(Arc::strong_count(&alive), 2);
        drop(job);
        assert_eq!(Arc::strong_count(&alive), 1);
    }
}
