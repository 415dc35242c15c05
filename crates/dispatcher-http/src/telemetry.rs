//! Metric names of the HTTP layer, defined in one place (names of the replaced promotion service kept).

pub use dispatcher_admission::telemetry::{
    PROMOTIONS_TOTAL, REDIS_ERRORS_TOTAL, STORE_INTERNAL_ERRORS_TOTAL,
};
/// Time to handle a join, seconds.
pub const JOIN_DURATION: &str = "dispatcher_join_duration_seconds";
/// Time to handle a release (complete, leave, revoke) that may admit the next ticket, seconds.
pub const ADMIT_DURATION: &str = "dispatcher_admit_duration_seconds";
/// Time from a join to its admission, seconds (observed when the admission is pushed to a live stream).
pub const QUEUE_WAIT: &str = "dispatcher_queue_wait_seconds";
/// HTTP requests by route template and status.
pub const HTTP_REQUESTS_TOTAL: &str = "dispatcher_http_requests_total";
/// Requests refused by a rate limit (`scope`: ip, user).
pub const RATE_LIMITED_TOTAL: &str = "dispatcher_rate_limited_total";
/// Waiting tickets per event (`event`).
pub const EVENT_WAITING: &str = "dispatcher_event_waiting";
/// Admitted tickets per event (`event`).
pub const EVENT_ADMITTED: &str = "dispatcher_event_admitted";
/// Open live (SSE) connections.
pub const SSE_CONNECTIONS: &str = "dispatcher_sse_connections";
/// Updates pushed to live connections (`kind`: position, admitted, final).
pub const LIVE_UPDATES_TOTAL: &str = "dispatcher_live_updates_total";
/// Duration of one live-update pass over all watched tickets, seconds.
pub const LIVE_PASS_DURATION: &str = "dispatcher_live_pass_duration_seconds";
/// Entry tokens minted.
pub const TOKENS_MINTED_TOTAL: &str = "dispatcher_tokens_minted_total";
/// Joins let through without the store because the event fails open.
pub const FAIL_OPEN_TOTAL: &str = "dispatcher_fail_open_total";
/// Open HTTP connections.
pub const HTTP_CONNECTIONS_OPEN: &str = "dispatcher_http_connections_open";
/// Connections closed at once because a cap was reached (`cap`: total, per_address).
pub const HTTP_CONNECTIONS_REFUSED_TOTAL: &str = "dispatcher_http_connections_refused_total";
/// Connections closed by a timeout (`timeout`: idle) or a request refused by one (`timeout`: body).
pub const HTTP_TIMEOUTS_TOTAL: &str = "dispatcher_http_timeouts_total";
/// Live streams refused because a cap was reached (`cap`: total, per_address).
pub const LIVE_STREAMS_REFUSED_TOTAL: &str = "dispatcher_live_streams_refused_total";
/// Admin calls refused because their address failed authentication too often.
pub const ADMIN_AUTH_THROTTLED_TOTAL: &str = "dispatcher_admin_auth_throttled_total";
/// Visitor calls that ran out of their time budget (the store did not answer in time).
pub const VISITOR_TIMEOUTS_TOTAL: &str = "dispatcher_visitor_timeouts_total";
