//! The outbox's error type, with kinds a caller can act on.

/// What went wrong, by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// Postgres failed or is unreachable; retry later. Shown with the server's message, SQLSTATE code,
    /// detail and hint (tokio-postgres alone says only "db error").
    #[error("postgres: {}", describe_postgres(.0))]
    Postgres(tokio_postgres::Error),
    /// Postgres did not finish connecting (TCP, TLS negotiation, startup and authentication) in time;
    /// retry later.
    #[error("postgres: {0}")]
    ConnectTimeout(String),
    /// Redis failed or is unreachable; retry later.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Another relay took over a partition this one held: stop publishing its rows.
    #[error("lease lost: {0}")]
    LeaseLost(String),
    /// Bad input (configuration, command arguments, a row the producer helper refuses); nothing changed.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The database schema is newer than this binary.
    #[error("schema: {0}")]
    Schema(String),
    /// The outbox schema is missing or older than this binary (`dispatcher outbox migrate` has not run
    /// yet). A relay waits for it; one-shot commands report it.
    #[error("schema: the outbox schema is missing or old: run `dispatcher outbox migrate`")]
    SchemaMissing,
    /// A reply that breaks the protocol we expect.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl OutboxError {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        OutboxError::Invalid(msg.into())
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            OutboxError::Postgres(_)
                | OutboxError::ConnectTimeout(_)
                | OutboxError::Redis(_)
                | OutboxError::LeaseLost(_)
        )
    }
}

impl From<tokio_postgres::Error> for OutboxError {
    fn from(e: tokio_postgres::Error) -> Self {
        OutboxError::Postgres(e)
    }
}

/// A Postgres error with what the server said: `ERROR 22008: interval out of range (detail: …; hint:
/// …)`, or tokio-postgres's own text and its cause (`error connecting to server: Connection refused`).
/// Neither holds the connection string.
pub fn describe_postgres(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        let extra: Vec<String> = [("detail", db.detail()), ("hint", db.hint())]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}: {v}")))
            .collect();
        if !extra.is_empty() {
            s.push_str(&format!(" ({})", extra.join("; ")));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

/// The outbox's result type.
pub type Result<T, E = OutboxError> = std::result::Result<T, E>;

/// Whether a Redis error means the server is unreachable or not serving (the relay backs off and keeps
/// its place) rather than refusing one command (the row's attempt counts).
pub(crate) fn redis_unavailable(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.code(),
            Some("LOADING" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "READONLY" | "BUSY")
        )
}
