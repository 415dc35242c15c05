//! Integration tests of the outbox relay against real Postgres and Redis servers (spawned by testkit).

mod concurrent;
mod errors;
mod fencing;
mod lag;
mod late_commits;
mod poison;
mod prune;
mod recovery;
mod restarts;
mod retries;
mod support;
mod wakeup;
