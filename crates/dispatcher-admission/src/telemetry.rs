//! Metric names of the admission engine, defined in one place.

/// Tickets admitted by the promoter's passes (admissions inside join/complete are counted by the caller).
pub const PROMOTER_ADMITTED_TOTAL: &str = "dispatcher_admission_promoter_admitted_total";
/// Admitted tickets whose session TTL passed.
pub const EXPIRED_TOTAL: &str = "dispatcher_admission_expired_total";
/// Waiting tickets dropped for missing presence.
pub const ABANDONED_TOTAL: &str = "dispatcher_admission_abandoned_total";
/// Final tickets purged after retention.
pub const PURGED_TOTAL: &str = "dispatcher_admission_purged_total";
/// Promoter rounds (timer-driven and sweep).
pub const PROMOTER_ROUNDS_TOTAL: &str = "dispatcher_admission_promoter_rounds_total";
/// Promoter rounds that failed on a store error.
pub const PROMOTER_ERRORS_TOTAL: &str = "dispatcher_admission_promoter_errors_total";
