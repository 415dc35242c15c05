//! The Redis side of the relay: the publish function (one `FCALL` per batch, `XADD … MAXLEN ~` per row, in
//! order, stopping at the first refusal) and the consumer-group lag check against the trimming limit.

use redis::Value;
use redis::aio::ConnectionManager;

use crate::error::{OutboxError, Result};

const LIBRARY: &str = include_str!("../lua/outbox.lua");
const FUNCTION: &str = "dispatcher_outbox_publish";

/// One stream entry: the values of the seven fields, in the function's order (`message_id`, `event_id`,
/// `event_type`, `aggregate_id`, `occurred_at`, `outbox_id`, `payload`).
pub type EntryValues<'a> = [&'a str; 7];

/// Field names of an entry, in order.
pub const FIELDS: [&str; 7] = [
    "message_id",
    "event_id",
    "event_type",
    "aggregate_id",
    "occurred_at",
    "outbox_id",
    "payload",
];

/// Bytes an entry takes on the wire (field names and values), for the poison check.
pub fn entry_bytes(values: &EntryValues<'_>) -> usize {
    values
        .iter()
        .zip(FIELDS.iter())
        .map(|(v, f)| v.len() + f.len())
        .sum()
}

/// What a publish call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Every entry was added.
    All,
    /// The first `added` entries were added; the next was refused with `error`; the rest were not tried.
    Partial { added: usize, error: String },
}

/// Publishes outbox rows to one stream.
#[derive(Clone)]
pub struct StreamPublisher {
    conn: ConnectionManager,
    stream: String,
    maxlen: u64,
}

impl std::fmt::Debug for StreamPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamPublisher")
            .field("stream", &self.stream)
            .field("maxlen", &self.maxlen)
            .finish()
    }
}

/// Connects to Redis at `url` with a connection that reconnects by itself and fails a call within a few
/// seconds when the server is gone.
pub async fn connect(url: &str) -> Result<ConnectionManager> {
    let client = redis::Client::open(url)
        .map_err(|e| OutboxError::invalid(format!("bad Redis URL: {e}")))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(std::time::Duration::from_secs(5)))
        .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
        .set_number_of_retries(1)
        .set_min_delay(std::time::Duration::from_millis(50))
        .set_max_delay(std::time::Duration::from_millis(200));
    Ok(client.get_connection_manager_with_config(config).await?)
}

impl StreamPublisher {
    /// A publisher to `stream`, trimming it to about `maxlen` entries (0 = no trimming).
    pub fn new(conn: ConnectionManager, stream: impl Into<String>, maxlen: u64) -> Self {
        StreamPublisher {
            conn,
            stream: stream.into(),
            maxlen,
        }
    }

    /// The stream's key.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    async fn load(&self) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<Value> = redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(LIBRARY)
            .query_async(&mut conn)
            .await;
        r.map(|_| ())
    }

    /// Adds `entries` in order in one call. A Redis that is unreachable is an `Err` (nothing is known to
    /// be added, the caller keeps its place); a refusal of one entry is [`Published::Partial`].
    pub async fn publish(
        &self,
        entries: &[EntryValues<'_>],
    ) -> Result<Published, redis::RedisError> {
        if entries.is_empty() {
            return Ok(Published::All);
        }
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(FUNCTION).arg(1).arg(&self.stream).arg(self.maxlen);
        for e in entries {
            for v in e {
                cmd.arg(*v);
            }
        }
        let mut conn = self.conn.clone();
        let reply: Value = match cmd.query_async(&mut conn).await {
            Ok(v) => v,
            Err(e) if e.to_string().contains("Function not found") => {
                self.load().await?;
                cmd.query_async(&mut conn).await?
            }
            Err(e) if crate::error::redis_unavailable(&e) => return Err(e),
            // Refused as a whole (e.g. OOM before the function ran): the first entry failed.
            Err(e) if e.code().is_some() => {
                return Ok(Published::Partial {
                    added: 0,
                    error: e.to_string(),
                });
            }
            Err(e) => return Err(e),
        };
        match reply {
            Value::Array(items) => {
                let added = match items.first() {
                    Some(Value::Int(n)) => usize::try_from(*n).unwrap_or(0),
                    _ => 0,
                };
                match items.get(1) {
                    None => Ok(Published::All),
                    Some(v) => Ok(Published::Partial {
                        added: added.min(entries.len()),
                        error: value_text(v),
                    }),
                }
            }
            other => Ok(Published::Partial {
                added: 0,
                error: format!("unexpected reply from {FUNCTION}: {other:?}"),
            }),
        }
    }

    /// Length of the stream and, per consumer group, the entries it has not read yet (`lag`, when Redis
    /// knows it).
    pub async fn stream_info(&self) -> Result<StreamInfo, redis::RedisError> {
        stream_info(&self.conn, &self.stream).await
    }
}

/// The length of a stream and its consumer groups' positions.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct StreamInfo {
    pub length: u64,
    pub groups: Vec<GroupInfo>,
}

/// One consumer group of a stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupInfo {
    pub name: String,
    /// Entries added but not yet delivered to the group (`None` when Redis cannot tell).
    pub lag: Option<u64>,
    /// Entries delivered but not acknowledged.
    pub pending: u64,
}

/// Reads `XLEN` and `XINFO GROUPS` of `stream`; a missing stream has length 0 and no groups.
pub async fn stream_info(
    conn: &ConnectionManager,
    stream: &str,
) -> Result<StreamInfo, redis::RedisError> {
    let mut conn = conn.clone();
    let length: u64 = redis::cmd("XLEN")
        .arg(stream)
        .query_async(&mut conn)
        .await?;
    let groups: Value = match redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(&mut conn)
        .await
    {
        Ok(v) => v,
        Err(e) if e.to_string().contains("no such key") => return Ok(StreamInfo::default()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    if let Value::Array(gs) = groups {
        for g in gs {
            let pairs: Vec<(String, Value)> = match g {
                Value::Array(kv) => kv
                    .chunks(2)
                    .filter_map(|c| match c {
                        [k, v] => Some((value_text(k), v.clone())),
                        _ => None,
                    })
                    .collect(),
                Value::Map(kv) => kv.into_iter().map(|(k, v)| (value_text(&k), v)).collect(),
                _ => continue,
            };
            let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v);
            let int = |v: Option<&Value>| match v {
                Some(Value::Int(n)) => u64::try_from(*n).ok(),
                _ => None,
            };
            out.push(GroupInfo {
                name: get("name").map(value_text).unwrap_or_default(),
                lag: int(get("lag")),
                pending: int(get("pending")).unwrap_or(0),
            });
        }
    }
    Ok(StreamInfo {
        length,
        groups: out,
    })
}

fn value_text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(n) => n.to_string(),
        Value::ServerError(e) => format!("{e:?}"),
        other => format!("{other:?}"),
    }
}

/// Whether a group's lag is close enough to the trimming limit that entries may soon be dropped unread.
pub fn lag_ratio(lag: Option<u64>, maxlen: u64) -> Option<f64> {
    match (lag, maxlen) {
        (Some(l), m) if m > 0 => Some(l as f64 / m as f64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_size_counts_names_and_values() {
        let v: EntryValues<'_> = ["m", "e", "t", "a", "o", "1", "{}"];
        assert_eq!(
            entry_bytes(&v),
            8 + FIELDS.iter().map(|f| f.len()).sum::<usize>()
        );
    }

    #[test]
    fn lag_ratio_needs_a_limit_and_a_lag() {
        assert_eq!(lag_ratio(Some(500), 1000), Some(0.5));
        assert_eq!(lag_ratio(None, 1000), None);
        assert_eq!(lag_ratio(Some(5), 0), None, "no trimming, no risk");
    }
}
