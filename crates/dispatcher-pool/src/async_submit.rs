//! `submit_async`: a future that queues a job, waiting for queue space without blocking a thread.
//!
//! It depends on no async runtime. While the queue is full the future parks its `Waker` in the
//! pool's waker set (a mutex-guarded map, touched only on this slow path); workers wake every
//! registered future when the queue has drained to half its capacity, and shutdown wakes them so
//! that they resolve to [`SubmitError::Closed`]. The future owns the one job it carries and
//! allocates nothing else while it waits beyond its map entry, so memory stays bounded by the
//! number of pending futures the caller chose to create.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::Job;
use crate::error::SubmitError;
use crate::shared::{PushError, Shared};

/// Future returned by [`Pool::submit_async`](crate::Pool::submit_async); resolves once the job is
/// queued, or to [`SubmitError::Closed`] if shutdown began first.
///
/// Dropping it before it resolves drops the job unrun. It holds a reference to the pool's shared
/// state, so it is `'static` and can be moved into a spawned task.
#[must_use = "futures do nothing unless polled; the job is not queued until this resolves"]
pub struct SubmitFuture {
    shared: Arc<Shared>,
    job: Option<Job>,
    key: Option<u64>,
    /// What it resolved to, for a poll after completion.
    outcome: Option<Result<(), SubmitError>>,
}

impl SubmitFuture {
    pub(crate) fn new(shared: Arc<Shared>, job: Job) -> Self {
        Self {
            shared,
            job: Some(job),
            key: None,
            outcome: None,
        }
    }

    fn unregister(&mut self) {
        if let Some(key) = self.key.take() {
            self.shared.unregister_space_waker(key);
        }
    }
}

impl fmt::Debug for SubmitFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubmitFuture")
            .field("pending", &self.job.is_some())
            .field("registered", &self.key.is_some())
            .finish()
    }
}

impl Future for SubmitFuture {
    type Output = Result<(), SubmitError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut registered = false;
        loop {
            let Some(job) = this.job.take() else {
                // Polled again after it resolved: say the same again.
                return Poll::Ready(this.outcome.unwrap_or(Err(SubmitError::Closed)));
            };
            match this.shared.try_push(job) {
                Ok(()) => {
                    this.unregister();
                    this.outcome = Some(Ok(()));
                    return Poll::Ready(Ok(()));
                }
                Err(PushError::Closed(job)) => {
                    drop(job);
                    this.unregister();
                    this.outcome = Some(Err(SubmitError::Closed));
                    return Poll::Ready(Err(SubmitError::Closed));
                }
                Err(PushError::Full(job)) => {
                    this.job = Some(job);
                    if registered {
                        return Poll::Pending;
                    }
                    // Register, then try once more: a worker that freed space in between either
                    // sees the registration or the retry sees the space.
                    this.shared.register_space_waker(&mut this.key, cx.waker());
                    registered = true;
                }
            }
        }
    }
}

impl Drop for SubmitFuture {
    fn drop(&mut self) {
        self.unregister();
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    fn poll(fut: &mut SubmitFuture) -> Poll<Result<(), SubmitError>> {
        Pin::new(fut).poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn resolves_at_once_when_there_is_room_and_repeats_its_outcome() {
        let shared = Arc::new(Shared::new(1, 1));
        let mut fut = SubmitFuture::new(Arc::clone(&shared), Job::new(|| {}));
        assert_eq!(poll(&mut fut), Poll::Ready(Ok(())));
        assert_eq!(poll(&mut fut), Poll::Ready(Ok(())));
        assert_eq!(shared.queued(), 1);
        assert!(format!("{fut:?}").contains("pending: false"));
    }

    #[test]
    fn registers_once_while_full_and_unregisters_when_dropped() {
        let shared = Arc::new(Shared::new(1, 1));
        assert!(shared.try_push(Job::new(|| {})).is_ok());
        let mut fut = SubmitFuture::new(Arc::clone(&shared), Job::new(|| {}));
        assert_eq!(poll(&mut fut), Poll::Pending);
        assert_eq!(poll(&mut fut), Poll::Pending);
        assert_eq!(
            shared.async_waiter_count(),
            1,
            "re-polling refreshes, not duplicates"
        );
        drop(fut);
        assert_eq!(shared.async_waiter_count(), 0);
    }

    #[test]
    fn a_closed_pool_resolves_to_closed_every_time() {
        let shared = Arc::new(Shared::new(1, 1));
        shared.close();
        let mut fut = SubmitFuture::new(Arc::clone(&shared), Job::new(|| {}));
        assert_eq!(poll(&mut fut), Poll::Ready(Err(SubmitError::Closed)));
        assert_eq!(poll(&mut fut), Poll::Ready(Err(SubmitError::Closed)));
    }
}
