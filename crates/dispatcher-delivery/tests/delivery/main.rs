//! Integration tests of push delivery against real Redis servers.

mod handshake;
mod leases;
mod support;
