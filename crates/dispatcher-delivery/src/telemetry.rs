//! Metric names of push delivery, in one place.

/// Messages sent to a consumer (counter; redeliveries included).
pub const DELIVERED: &str = "dispatcher_delivery_delivered_total";
/// Messages acknowledged by a consumer and removed from the pending list (counter).
pub const ACKED: &str = "dispatcher_delivery_acked_total";
/// Messages sent again after a deadline, a nack or a lost consumer (counter, label `reason`).
pub const REDELIVERED: &str = "dispatcher_delivery_redelivered_total";
/// Messages moved to the dead-letter stream (counter).
pub const DEAD: &str = "dispatcher_delivery_dead_total";
/// Partition leases this process holds (gauge).
pub const LEASES_HELD: &str = "dispatcher_delivery_leases_held";
/// Leases acquired (counter) and lost to expiry or fencing (counter).
pub const LEASES_ACQUIRED: &str = "dispatcher_delivery_leases_acquired_total";
pub const LEASES_LOST: &str = "dispatcher_delivery_leases_lost_total";
/// Consumer links up (gauge) and handshakes refused (counter).
pub const LINKS_UP: &str = "dispatcher_delivery_links_up";
pub const HANDSHAKES_REFUSED: &str = "dispatcher_delivery_handshakes_refused_total";
/// Deliver → ack latency in seconds (histogram).
pub const ACK_LATENCY: &str = "dispatcher_delivery_ack_seconds";
/// Consumer side: handler runs, results recorded, deliveries found already done (counters).
pub const HANDLED: &str = "dispatcher_consumer_handled_total";
pub const RECORDED: &str = "dispatcher_consumer_recorded_total";
pub const ALREADY_DONE: &str = "dispatcher_consumer_already_done_total";
