//! The error type shared by every testkit helper.

use std::path::PathBuf;
use std::time::Duration;

/// Result alias for testkit operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while spawning, probing or stopping a server.
///
/// `Debug` prints the same text as `Display`, so that a test returning `Result` shows the log
/// tail readably when it fails.
#[derive(thiserror::Error)]
pub enum Error {
    /// A required executable is missing.
    #[error("{binary} not found on PATH; {hint}")]
    BinaryNotFound {
        /// The executable that was looked for.
        binary: &'static str,
        /// How to get it.
        hint: &'static str,
    },
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A server did not become ready in time.
    #[error("{what} was not ready after {timeout:?}; last lines of {log}:\n{log_tail}")]
    NotReady {
        /// Which server.
        what: String,
        /// How long we waited.
        timeout: Duration,
        /// Its log file.
        log: PathBuf,
        /// The end of its log file.
        log_tail: String,
    },
    /// A server process exited while we waited for it to become ready.
    #[error("{what} exited during startup ({status}); last lines of {log}:\n{log_tail}")]
    ExitedEarly {
        /// Which server.
        what: String,
        /// Its exit status.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The end of its log file.
        log_tail: String,
    },
    /// A helper command (`initdb`, `pg_ctl`, `redis-cli`, `psql`, ...) failed.
    #[error("`{command}` failed ({status}):\n{output}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its stdout and stderr.
        output: String,
    },
    /// The peer spoke something that is not RESP.
    #[error("RESP protocol error: {0}")]
    Protocol(String),
    /// Redis answered with an error reply.
    #[error("redis replied with an error: {0}")]
    Redis(String),
    /// No free port could be found.
    #[error("no free TCP port found on 127.0.0.1: {0}")]
    NoFreePort(String),
    /// The environment cannot run the requested server (e.g. no `postgres` user while root).
    #[error("{0}")]
    Environment(String),
    /// A method was called in a state where it makes no sense.
    #[error("{0}")]
    State(String),
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
