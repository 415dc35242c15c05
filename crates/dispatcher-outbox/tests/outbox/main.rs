//! Integration tests of the outbox relay against real Postgres and Redis servers (spawned by testkit).
