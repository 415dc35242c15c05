//! Benchmark drivers behind `dispatcher bench ...`: each runs a workload, measures it by the rules of
//! PRODUCT.md §3.1 and returns a report that serialises to the one-line JSON object the CLI prints last.

pub mod admission;
pub mod pool;
