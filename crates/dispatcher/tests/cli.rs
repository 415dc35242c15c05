//! Integration tests of the `dispatcher` binary: crash injection with several `serve` promoters sharing one
//! Redis (docs/guarantees.md#invariants), the outbox relay's processes and commands against real Postgres and
//! Redis, push delivery's leaders and consumers paused and killed mid-run, and smoke tests of `serve` and
//! `demo`.

#[path = "cli/browser.rs"]
mod browser;
#[path = "cli/crash.rs"]
mod crash;
#[path = "cli/delivery.rs"]
mod delivery;
#[path = "cli/edge.rs"]
mod edge;
#[path = "cli/forwarder_crash.rs"]
mod forwarder_crash;
#[path = "cli/hardening.rs"]
mod hardening;
#[path = "cli/outbox.rs"]
mod outbox;
#[path = "cli/smoke.rs"]
mod smoke;
#[path = "cli/support.rs"]
mod support;
