//! The HTTP edge's connections: the accept loop with caps on open connections (in total and per client
//! address), the header, idle and body timeouts, and the caps on live streams. A waiting room faces crowds
//! and bots; idle or slow sockets must not starve everyone else of file descriptors.

mod accept;
mod body;
mod io;
mod slots;

use std::time::Duration;

pub use accept::serve;
pub(crate) use body::read_body_within;
pub use slots::{Refusal, Slot, Slots};

/// Limits of the HTTP edge. The defaults keep a process with 1,024 open files answering other clients
/// while a crowd of idle sockets knocks; [`EdgeOptions::for_file_limit`] scales them to another limit.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeOptions {
    /// A request's header must arrive whole within this, counted from when the connection is ready for a
    /// request (just opened, or its last answer sent): it is also how long an idle keep-alive
    /// connection stays open.
    pub header_timeout: Duration,
    /// A request's body must arrive whole within this (408 and the connection closed otherwise).
    pub body_timeout: Duration,
    /// A connection on which no byte moves in either direction for this long is closed (a client that
    /// stopped reading its answer, a vanished peer). Live streams send a keep-alive every 15 s.
    pub idle_timeout: Duration,
    /// Open connections in total; beyond it a new connection is closed at once.
    pub max_connections: usize,
    /// Open connections per client address (the TCP peer: behind a proxy, the proxy's address).
    pub max_connections_per_ip: usize,
    /// Open live (SSE) streams in total; beyond it a stream is refused with 503.
    pub max_live_streams: usize,
    /// Open live streams per client address (the `X-Forwarded-For` hop when trusted); beyond it 429.
    pub max_live_streams_per_ip: usize,
}

impl EdgeOptions {
    /// Caps that fit a process allowed `open_files` descriptors: three quarters of what is left after a
    /// reserve of 128 (store connections, keys, logs) for connections, three quarters of those for live
    /// streams, so plain requests always find room.
    pub fn for_file_limit(open_files: u64) -> Self {
        let usable = usize::try_from(open_files.saturating_sub(128)).unwrap_or(usize::MAX);
        let max_connections = (usable / 4 * 3).clamp(16, 1_000_000);
        Self {
            max_connections,
            max_live_streams: (max_connections / 4 * 3).max(1),
            ..Self::default()
        }
    }
}

impl Default for EdgeOptions {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 672,
            max_connections_per_ip: 64,
            max_live_streams: 504,
            max_live_streams_per_ip: 32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_fits_a_1024_file_process() {
        let d = EdgeOptions::default();
        assert_eq!(d, EdgeOptions::for_file_limit(1024));
        assert!(d.max_connections + 128 < 1024);
        assert!(d.max_live_streams < d.max_connections);
    }

    #[test]
    fn caps_scale_with_the_file_limit_and_stay_usable() {
        let small = EdgeOptions::for_file_limit(256);
        assert_eq!(small.max_connections, 96);
        assert!(small.max_live_streams < small.max_connections);
        let tiny = EdgeOptions::for_file_limit(10);
        assert_eq!(tiny.max_connections, 16);
        assert!(tiny.max_live_streams >= 1);
        let big = EdgeOptions::for_file_limit(u64::MAX);
        assert_eq!(big.max_connections, 1_000_000);
    }
}
