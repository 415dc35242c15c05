//! Error types returned by the pool: building it, submitting to it.

use std::fmt;

use crate::Job;

/// Building a [`Pool`](crate::Pool) failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A pool needs at least one worker thread.
    #[error("a worker pool needs at least one worker (got 0)")]
    NoWorkers,
    /// A pool needs room for at least one queued job.
    #[error("a worker pool needs a queue capacity of at least 1 (got 0)")]
    ZeroCapacity,
    /// The operating system refused to start a worker thread.
    #[error("could not start worker thread {index}: {source}")]
    Spawn {
        /// Index of the worker that could not be started.
        index: usize,
        /// The error from `std::thread::Builder::spawn`.
        #[source]
        source: std::io::Error,
    },
}

/// A blocking or async submit failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Shutdown has begun: the pool accepts no more jobs. The job was dropped unrun.
    #[error("the worker pool is shutting down and accepts no more jobs")]
    Closed,
}

/// A [`Pool::try_submit`](crate::Pool::try_submit) that was refused; the job is handed back.
///
/// The job is given back as a [`Job`]: run it with [`Job::run`], or resubmit it with
/// [`Pool::submit_job`](crate::Pool::submit_job) or
/// [`Pool::try_submit_job`](crate::Pool::try_submit_job).
#[derive(thiserror::Error)]
pub enum TrySubmitError<T = Job> {
    /// Every queue slot is taken; try again later (or use the blocking `submit`).
    #[error("the worker pool's queue is full")]
    Full(T),
    /// Shutdown has begun: the pool accepts no more jobs.
    #[error("the worker pool is shutting down and accepts no more jobs")]
    Closed(T),
}

impl<T> TrySubmitError<T> {
    /// The refused job.
    pub fn into_inner(self) -> T {
        match self {
            Self::Full(job) | Self::Closed(job) => job,
        }
    }

    /// Whether the queue was full (as opposed to the pool being closed).
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Full(_))
    }

    /// Whether the pool was closed.
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Closed(_))
    }
}

// Jobs are closures and have no useful `Debug`; show only which refusal it was.
impl<T> fmt::Debug for TrySubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => f.write_str("Full(..)"),
            Self::Closed(_) => f.write_str("Closed(..)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_submit_error_gives_the_job_back_and_says_which() {
        let err: TrySubmitError<u32> = TrySubmitError::Full(7);
        assert!(err.is_full());
        assert!(!err.is_closed());
        assert_eq!(format!("{err:?}"), "Full(..)");
        assert_eq!(err.to_string(), "the worker pool's queue is full");
        assert_eq!(err.into_inner(), 7);

        let err: TrySubmitError<u32> = TrySubmitError::Closed(9);
        assert!(err.is_closed());
        assert_eq!(format!("{err:?}"), "Closed(..)");
        assert_eq!(err.into_inner(), 9);
    }

    #[test]
    fn build_errors_say_what_is_wrong() {
        assert!(
            BuildError::NoWorkers
                .to_string()
                .contains("at least one worker")
        );
        assert!(BuildError::ZeroCapacity.to_string().contains("capacity"));
    }
}
