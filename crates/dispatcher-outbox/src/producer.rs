//! The producer side: writing outbox rows inside the application's own transaction.

use tokio_postgres::GenericClient;

use crate::error::{OutboxError, Result};

/// One message for the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// What happened, e.g. `OrderPlaced` (1–255 bytes).
    pub event_type: String,
    /// The entity it happened to; rows of one aggregate are published in order (1–1024 bytes).
    pub aggregate_id: String,
    /// The JSON payload, as text.
    pub payload: String,
    /// Ids as UUID text; generated when absent. Consumers drop duplicates by `message_id`.
    pub event_id: Option<String>,
    pub message_id: Option<String>,
}

impl OutboxMessage {
    /// A message with generated ids.
    pub fn new(
        event_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        payload: impl Into<String>,
    ) -> Self {
        OutboxMessage {
            event_type: event_type.into(),
            aggregate_id: aggregate_id.into(),
            payload: payload.into(),
            event_id: None,
            message_id: None,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.event_type.is_empty() || self.event_type.len() > 255 {
            return Err(OutboxError::invalid("event_type must be 1 to 255 bytes"));
        }
        if self.aggregate_id.is_empty() || self.aggregate_id.len() > 1024 {
            return Err(OutboxError::invalid("aggregate_id must be 1 to 1024 bytes"));
        }
        Ok(())
    }
}

/// Inserts `messages` into `dispatcher.outbox` through `client` (a `Transaction` of the application's, so
/// the rows commit or roll back with its business rows) in one statement; returns their ids in order.
/// Invalid JSON or a bad UUID is refused by Postgres and changes nothing.
pub async fn enqueue<C: GenericClient + Sync>(
    client: &C,
    messages: &[OutboxMessage],
) -> Result<Vec<i64>> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    for m in messages {
        m.validate()?;
    }
    let types: Vec<&str> = messages.iter().map(|m| m.event_type.as_str()).collect();
    let aggs: Vec<&str> = messages.iter().map(|m| m.aggregate_id.as_str()).collect();
    let payloads: Vec<&str> = messages.iter().map(|m| m.payload.as_str()).collect();
    let events: Vec<Option<&str>> = messages.iter().map(|m| m.event_id.as_deref()).collect();
    let msgs: Vec<Option<&str>> = messages.iter().map(|m| m.message_id.as_deref()).collect();
    let rows = client
        .query(
            "INSERT INTO dispatcher.outbox (event_type, aggregate_id, payload, event_id, message_id)
             SELECT t, a, p::jsonb, COALESCE(e::uuid, gen_random_uuid()), COALESCE(m::uuid, gen_random_uuid())
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY
                  AS u(t, a, p, e, m, n)
             ORDER BY n
             RETURNING id",
            &[&types, &aggs, &payloads, &events, &msgs],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
