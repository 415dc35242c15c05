//! Metric names of the outbox relay, defined in one place. The `messaging_*` names are the replaced relay's.

/// Relay passes, by `result` (`ok`, `idle`, `error`).
pub const TICKS: &str = "messaging_dispatch_ticks_total";
/// Duration of a relay pass that read rows: read, publish, settle.
pub const TICK_DURATION: &str = "messaging_dispatch_tick_duration_seconds";
/// Rows read from the outbox for publication (retries included).
pub const PICKED: &str = "messaging_outbox_picked_total";
/// Rows marked sent.
pub const SENT: &str = "messaging_outbox_sent_total";
/// Publication attempts that failed for a row (the row retries or goes dead).
pub const FAILED: &str = "messaging_outbox_failed_total";
/// Rows that went dead, by `reason` (`poison`, `max_attempts`).
pub const DEAD: &str = "messaging_outbox_dead_total";
/// Entries Redis acknowledged (`XADD`).
pub const PUBLISHED: &str = "messaging_dispatch_published_total";
/// Row written (`occurred_at`) → entry in the stream, seconds.
pub const COMMIT_TO_PUBLISH: &str = "messaging_outbox_commit_to_publish_seconds";
/// Rows not yet settled that this relay knows of (read and in flight, or waiting for a retry).
pub const IN_FLIGHT: &str = "messaging_outbox_inflight_rows";
/// Pending rows in the outbox (sampled).
pub const PENDING: &str = "messaging_outbox_pending_rows";
/// Age of the oldest pending row, seconds (sampled).
pub const OLDEST_PENDING_AGE: &str = "messaging_outbox_oldest_pending_age_seconds";
/// Partitions this relay holds.
pub const LEASES: &str = "messaging_dispatch_leases_held";
/// Times Redis was unreachable and the relay backed off.
pub const REDIS_UNAVAILABLE: &str = "messaging_dispatch_redis_unavailable_total";
/// Entries of the stream a consumer group has not read yet, by `group`.
pub const GROUP_LAG: &str = "messaging_dispatch_stream_group_lag";
/// That lag as a fraction of `REDIS_STREAM_MAXLEN`, by `group`: at 1 trimming drops unread entries.
pub const GROUP_LAG_RATIO: &str = "messaging_dispatch_stream_group_lag_ratio";
/// Length of the stream.
pub const STREAM_LENGTH: &str = "messaging_dispatch_stream_length";
