//! Integration tests of push delivery against real Redis servers.

mod leases;
mod support;
