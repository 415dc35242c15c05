//! A bounded worker pool: N worker threads, a bounded lock-free job queue, blocking / non-blocking /
//! async submit with backpressure, panic isolation, cheap gauges and a draining shutdown with a
//! deadline.
//!
//! Unlike a pool that parks one task per waiting job (a Go pool spawning a goroutine per queued job),
//! a full queue here makes submitters wait: memory is bounded by the queue capacity however much
//! load is offered.
//!
//! Design, for throughput (one job per `submit` call):
//! * jobs travel through a lock-free bounded MPMC queue (`crossbeam_queue::ArrayQueue`), and a
//!   closure of up to four words is stored inline in its slot ([`Job`]), so a submit allocates
//!   nothing;
//! * idle workers and blocked producers spin briefly, then sleep on a condition variable; the
//!   other side takes the lock only when a sleeper counter says someone sleeps, and producers are
//!   woken only once the queue has drained to half (see `shared.rs`): no syscall per job;
//! * counters are written by one thread each (per-worker job counters, per-thread submit stripes)
//!   on their own cache lines and summed when read.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::time::Duration;
//!
//! let pool = dispatcher_pool::Pool::new(2, 64).expect("valid configuration");
//! let sum = Arc::new(AtomicU64::new(0));
//! for i in 0..100 {
//!     let sum = Arc::clone(&sum);
//!     pool.submit(move || {
//!         sum.fetch_add(i, Ordering::Relaxed);
//!     })
//!     .expect("pool is open");
//! }
//! let report = pool.shutdown(Duration::from_secs(5));
//! assert!(report.is_clean());
//! assert_eq!(report.completed, 100);
//! assert_eq!(sum.load(Ordering::Relaxed), 4950);
//! ```

mod async_submit;
mod counters;
mod error;
mod job;
mod pool;
mod shared;
mod worker;

pub use async_submit::SubmitFuture;
pub use error::{BuildError, SubmitError, TrySubmitError};
pub use job::Job;
pub use pool::{DEFAULT_DROP_DEADLINE, Pool, PoolBuilder, ShutdownReport};
