//! Metric names of the admission engine, defined in one place.

/// Admissions (the replaced promotion service's name), label `source`: `promoter` here; the HTTP layer adds
/// `join`, `release`,
/// `configure`.
pub const PROMOTIONS_TOTAL: &str = "dispatcher_promotions_total";
/// Duration of one promoter round over the due events, seconds (the replaced promotion service's name).
pub const PROMOTION_DURATION: &str = "dispatcher_promotion_duration";
/// Admitted tickets whose session TTL passed.
pub const EXPIRED_TOTAL: &str = "dispatcher_admission_expired_total";
/// Waiting tickets dropped for missing presence.
pub const ABANDONED_TOTAL: &str = "dispatcher_admission_abandoned_total";
/// Final tickets purged after retention.
pub const PURGED_TOTAL: &str = "dispatcher_admission_purged_total";
/// Queued tickets found without a readable record (a record deleted or corrupted behind the store's back)
/// and dropped from the line, so the rest of the queue moves on. Counted by the promoter from its passes'
/// replies (each pass reports the drops made since the event's previous pass, by any call). Any increase
/// means the store's data was changed by something other than the admission functions.
pub const ORPHANED_TOTAL: &str = "dispatcher_admission_orphaned_total";
/// Promoter rounds (timer-driven and sweep).
pub const PROMOTER_ROUNDS_TOTAL: &str = "dispatcher_admission_promoter_rounds_total";
/// Promoter rounds that failed on a store error.
pub const PROMOTER_ERRORS_TOTAL: &str = "dispatcher_admission_promoter_errors_total";

/// Dispatch messages written by the forwarder.
pub const FORWARDER_FORWARDED_TOTAL: &str = "dispatcher_forwarder_forwarded_total";
/// Entries the forwarder took over from a consumer's pending list (`XAUTOCLAIM`) and forwarded again.
pub const FORWARDER_RECLAIMED_TOTAL: &str = "dispatcher_forwarder_reclaimed_total";
/// Malformed or unmintable entries the forwarder acknowledged without a dispatch message.
pub const FORWARDER_POISON_TOTAL: &str = "dispatcher_forwarder_poison_total";
/// Pending entries found deleted from their entry stream (their admission may not have been dispatched).
pub const FORWARDER_PENDING_DELETED_TOTAL: &str = "dispatcher_forwarder_pending_deleted_total";
/// Forwarder rounds that failed (and were retried after a backoff).
pub const FORWARDER_ERRORS_TOTAL: &str = "dispatcher_forwarder_errors_total";
/// Gauge, label `shard`: entries of the shard's entry stream the forwarder group has not finished
/// (pending + unread).
pub const FORWARDER_LAG: &str = "dispatcher_forwarder_lag";
/// Failed Redis commands, label `op` (e.g. `xreadgroup`, `xadd`, `xack`).
pub const REDIS_ERRORS_TOTAL: &str = "dispatcher_redis_errors_total";
/// Gauge: the largest lag (pending + unread) of the dispatch stream's consumer groups.
pub const FORWARDER_DISPATCH_LAG: &str = "dispatcher_forwarder_dispatch_lag";

/// Store calls answered with an error that retrying will not fix, as opposed to the store being
/// unreachable: a Lua runtime error, a key of the wrong type (`WRONGTYPE`), a reply this version does not
/// understand. The HTTP layer answers them 500 `internal` and never fails open on them. Any increase means
/// corrupted data or a bug, not an outage.
pub const STORE_INTERNAL_ERRORS_TOTAL: &str = "dispatcher_store_internal_errors_total";
