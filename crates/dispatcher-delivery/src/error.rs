//! Errors of the delivery engine, by what a caller can do about them.

/// What went wrong in delivery.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Redis could not be reached or failed a call; retry later.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A fenced write was refused: this process no longer holds the partition's lease.
    #[error("fenced: {0}")]
    Fenced(String),
    /// Bad configuration or input; nothing was changed.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The peer broke the protocol or failed authentication.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A socket failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The WebSocket layer failed.
    #[error("websocket: {0}")]
    WebSocket(String),
}

impl DeliveryError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        DeliveryError::Invalid(msg.into())
    }
    pub fn protocol(msg: impl Into<String>) -> Self {
        DeliveryError::Protocol(msg.into())
    }
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            DeliveryError::Redis(_) | DeliveryError::Io(_) | DeliveryError::WebSocket(_)
        )
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for DeliveryError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        DeliveryError::WebSocket(e.to_string())
    }
}

pub type Result<T, E = DeliveryError> = std::result::Result<T, E>;
