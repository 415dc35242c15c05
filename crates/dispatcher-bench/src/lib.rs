//! Benchmark drivers behind `dispatcher bench ...`: each runs a workload, measures it by the rules of
//! docs/benchmarks.md#how-a-number-is-measured and returns a report that serialises to the one-line JSON
//! object the CLI prints last.

pub mod admission;
pub mod delivery;
pub mod httpc;
pub mod join;
pub mod live;
pub mod outbox;
pub mod pool;
pub mod server;

/// Why a benchmark could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Starting the server, connecting, or bad options.
    #[error("setup: {0}")]
    Setup(String),
    /// The run itself failed.
    #[error("run: {0}")]
    Run(String),
}
