//! Typed errors of the admission engine, with kinds a caller can act on.

/// What went wrong, by what the caller can do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdmissionError {
    /// The input is malformed or out of range; nothing was changed.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The event is not configured.
    #[error("unknown event {0}")]
    UnknownEvent(String),
    /// No such ticket in this event (never issued, of another event, or purged after retention).
    #[error("unknown ticket")]
    UnknownTicket,
    /// The event is closed to new joins.
    #[error("event {0} is closed")]
    EventClosed(String),
    /// The event's queueing mode refuses new joins.
    #[error("event {0} does not take new joins")]
    Rejected(String),
    /// The ticket's state does not allow the operation (e.g. completing a waiting ticket).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The store could not be reached or could not answer now (connection refused or dropped, timeout,
    /// loading, failing over, busy, out of memory); the call may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store returned something this version does not understand.
    #[error("store protocol error: {0}")]
    Protocol(String),
    /// The store answered the call with an error that retrying will not fix: a script error, a key of the
    /// wrong type, a command it refused. The store is up; its data or this code is at fault, so a caller
    /// must never treat it as the store being down (no fail-open).
    #[error("store internal error: {0}")]
    Internal(String),
}

impl AdmissionError {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        AdmissionError::InvalidInput(msg.into())
    }

    /// The ticket's state does not allow the operation.
    pub(crate) fn state_conflict(state: crate::model::TicketState) -> Self {
        AdmissionError::Conflict(format!("ticket is {state:?}"))
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, AdmissionError::Unavailable(_))
    }

    /// Whether the store failed the call in a way retrying will not fix ([`AdmissionError::Internal`], or
    /// a reply this version does not understand, [`AdmissionError::Protocol`]).
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            AdmissionError::Internal(_) | AdmissionError::Protocol(_)
        )
    }

    /// A failed Redis command, classified by the error's kind (never by its message): `context` names the
    /// operation in the message.
    pub(crate) fn redis(context: &str, e: &redis::RedisError) -> Self {
        let msg = if context.is_empty() {
            e.to_string()
        } else {
            format!("{context}: {e}")
        };
        if store_unavailable(e) {
            AdmissionError::Unavailable(msg)
        } else {
            AdmissionError::Internal(msg)
        }
    }

    /// Whether the caller's input was at fault.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            AdmissionError::InvalidInput(_)
                | AdmissionError::UnknownEvent(_)
                | AdmissionError::UnknownTicket
        )
    }
}

impl From<redis::RedisError> for AdmissionError {
    fn from(e: redis::RedisError) -> Self {
        AdmissionError::redis("", &e)
    }
}

/// Whether a Redis error means the store could not be reached or could not serve the call now (retrying
/// may succeed), as opposed to an error answer to the call itself (a Lua runtime error, `WRONGTYPE`, an
/// unknown command: retrying gives the same answer). Decided by the error's kind: redis-rs's
/// [`redis::ErrorKind`] and, for server errors redis-rs has no kind for, the error code (the first word of
/// a RESP error, its machine-readable kind), never the message text.
fn store_unavailable(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    // I/O failures: refused, dropped, timed out; and errors after which redis-rs replaces the connection
    // (a reply it could not parse, failed authentication).
    if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
    {
        return true;
    }
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask,
        )
        | ErrorKind::ClusterConnectionNotFound
        | ErrorKind::MasterNameNotFoundBySentinel
        | ErrorKind::NoValidReplicasFoundBySentinel
        | ErrorKind::AuthenticationFailed => true,
        // Codes redis-rs leaves to the caller: a script running past its time limit (`BUSY`), out of
        // memory (`OOM`), writes refused after failed persistence (`MISCONF`) or missing replicas
        // (`NOREPLICAS`): the server is there but cannot serve writes now.
        ErrorKind::Extension => matches!(e.code(), Some("BUSY" | "OOM" | "MISCONF" | "NOREPLICAS")),
        _ => false,
    }
}

/// Result alias of the admission engine.
pub type Result<T, E = AdmissionError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A server error as redis-rs decodes it from the wire.
    fn server_error(resp: &str) -> redis::RedisError {
        match redis::parse_redis_value(resp.as_bytes()) {
            Ok(redis::Value::ServerError(e)) => e.into(),
            other => panic!("{resp:?} is not a RESP error: {other:?}"),
        }
    }

    fn classified(e: redis::RedisError) -> AdmissionError {
        AdmissionError::from(e)
    }

    #[test]
    fn unreachable_and_busy_stores_are_unavailable() {
        for kind in [
            std::io::ErrorKind::ConnectionRefused,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::TimedOut,
            std::io::ErrorKind::UnexpectedEof,
        ] {
            let e = classified(std::io::Error::from(kind).into());
            assert!(
                matches!(e, AdmissionError::Unavailable(_)),
                "{kind:?}: {e:?}"
            );
            assert!(e.is_retryable() && !e.is_internal());
        }
        for resp in [
            "-LOADING Redis is loading the dataset in memory\r\n",
            "-BUSY Redis is busy running a script\r\n",
            "-OOM command not allowed when used memory > 'maxmemory'\r\n",
            "-MASTERDOWN Link with MASTER is down\r\n",
            "-CLUSTERDOWN The cluster is down\r\n",
            "-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
            "-READONLY You can't write against a read only replica.\r\n",
        ] {
            let e = classified(server_error(resp));
            assert!(e.is_retryable(), "{resp:?}: {e:?}");
        }
    }

    #[test]
    fn error_answers_are_internal_whatever_their_text() {
        for resp in [
            "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            "-ERR user_script:1: attempt to concatenate a nil value\r\n",
            "-NOSCRIPT No matching script\r\n",
            "-CROSSSLOT Keys in request don't hash to the same slot\r\n",
            "-NOPERM this user has no permissions\r\n",
            // The message mentions being unavailable; the kind says otherwise.
            "-ERR connection refused, timeout, store unavailable\r\n",
        ] {
            let e = classified(server_error(resp));
            assert!(matches!(e, AdmissionError::Internal(_)), "{resp:?}: {e:?}");
            assert!(e.is_internal() && !e.is_retryable(), "{resp:?}");
        }
        let typed = classified(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "response was of incompatible type",
        )));
        assert!(typed.is_internal(), "{typed:?}");
        assert!(AdmissionError::Protocol("x".into()).is_internal());
    }
}
