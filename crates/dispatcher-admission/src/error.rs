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
    /// The store could not be reached or failed; the call may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store returned something this version does not understand.
    #[error("store protocol error: {0}")]
    Protocol(String),
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
        AdmissionError::Unavailable(e.to_string())
    }
}

/// Result alias of the admission engine.
pub type Result<T, E = AdmissionError> = std::result::Result<T, E>;
