//! The waiting-room admission engine: the rules of joining, promotion, release and expiry
//! (docs/guarantees.md#admission), one store trait with an in-process and a Redis implementation, and the
//! promoter loop that drives time.

mod coalesce;
mod entry;
pub mod error;
mod fenwick;
pub mod forwarder;
pub mod memory;
pub mod model;
pub mod promoter;
pub mod redis_store;
mod reply;
mod script_reply;
pub mod store;
pub mod telemetry;

pub use coalesce::Coalescer;
pub use error::{AdmissionError, Result};
pub use forwarder::{
    ForwardStats, Forwarder, ForwarderOptions, ForwarderTotals, ShardLag, TokenMinter,
};
pub use memory::{MemoryStore, MemoryStoreOptions};
pub use model::{
    BulkOutcome, BulkReleased, DeletedEvent, EntryRecord, EventId, EventInfo, EventSettings,
    EventState, EventTotals, Joined, MAX_BULK_RELEASE, MAX_JOIN_BATCH, MAX_LIVE_BATCH,
    MAX_REVOCATIONS, QueueMode, Redacted, Released, Revocation, Tick, Ticket, TicketId,
    TicketState, UserId,
};
pub use promoter::{Promoter, PromoterOptions, PromoterStats};
pub use redis_store::{RedisConn, RedisStore, RedisStoreOptions};
pub use store::{AdmissionStore, Clock, Configured, Release, shard_of, system_now_ms};
