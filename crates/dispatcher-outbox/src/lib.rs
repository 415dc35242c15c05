//! Dispatcher's transactional outbox relay: applications write outbox rows in their own Postgres
//! transaction; relays publish every row to a Redis Stream at least once, in order per aggregate, with
//! retries, dead letters, replay and pruning.
//!
//! - [`schema`]: the migrations (`migrations/`) and the schema check;
//! - [`producer`]: writing rows from a Rust application;
//! - [`relay`]: the relay (leases, windows, publishing, settling);
//! - [`ops`]: status, replay, prune;
//! - pure rules: [`snapshot`] (transaction windows), [`backoff`] (retry delays).
//!
//! Only this crate knows the outbox's SQL.

pub mod backoff;
pub mod db;
pub mod error;
pub mod ops;
pub mod producer;
pub mod publish;
pub mod relay;
pub mod schema;
pub mod snapshot;
pub mod telemetry;

pub use backoff::Backoff;
pub use error::{OutboxError, Result};
pub use producer::{OutboxMessage, enqueue};
pub use relay::{Relay, RelayOptions};
