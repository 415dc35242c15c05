//! Dispatcher's push delivery: messages from a Redis Stream, split into partitions each leased on its own
//! with a fencing epoch, pushed over WebSocket to consumers within their credit, acknowledged by id,
//! redelivered when a deadline passes or a consumer drops, dead-lettered after too many attempts; and the
//! consumer library that records each result exactly once.
//!
//! - [`keys`]: which Redis keys a partition uses (all in one hash slot);
//! - [`store`]: the Redis functions (`lua/delivery.lua`): leases, fenced reads/acks, claims, results;
//! - [`lease`]: the watchdog rule (a pure function of the monotonic clock);
//! - [`leader`]: the dispatcher side: leases, partitions, in-flight tracking, redelivery;
//! - [`link`]: one dialled consumer connection (hello/auth, frames in and out);
//! - [`guard`]: what an unauthenticated peer can make us read, and the WebSocket limits after it;
//! - [`consumer`]: the consumer library (listen, authenticate, claim, handle, record, ack, credit);
//! - [`bridge`]: pub/sub → stream ingest.
//!
//! The wire format itself lives in `dispatcher-wire`, which does no I/O.

pub mod bridge;
pub mod consumer;
pub mod error;
pub mod guard;
pub mod keys;
pub mod leader;
pub mod lease;
pub mod link;
pub mod stats;
pub mod store;
pub mod telemetry;

pub use error::{DeliveryError, Result};
