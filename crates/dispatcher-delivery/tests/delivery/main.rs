//! Integration tests of push delivery against real Redis servers.

mod delivery;
mod handshake;
mod leases;
mod support;
