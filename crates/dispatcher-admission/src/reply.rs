//! Decoding of the plain Redis replies the admission engine reads (text, integers, stream entries), in one
//! place for the store and the forwarder; the scripts' own replies are decoded in `script_reply.rs`.

use redis::Value;

use crate::entry::Field;
use crate::error::{AdmissionError, Result};

pub(crate) fn protocol(msg: impl Into<String>) -> AdmissionError {
    AdmissionError::Protocol(msg.into())
}

/// A reply value as text, if it is text (or an integer).
pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

/// A reply value as a non-negative integer, if it is one.
pub(crate) fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// A reply of key/value pairs: a flat array (RESP2) or a map (RESP3).
pub(crate) fn pairs(v: &Value) -> Vec<(String, &Value)> {
    match v {
        Value::Array(items) => items
            .chunks_exact(2)
            .filter_map(|p| Some((text(&p[0])?, &p[1])))
            .collect(),
        Value::Map(items) => items
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, v)))
            .collect(),
        _ => Vec::new(),
    }
}

/// One stream entry as read: its id and its fields, or `None` for a pending entry no longer in the stream
/// (`XREADGROUP … 0` and `XAUTOCLAIM` report those with nil fields).
pub(crate) struct StreamEntry {
    pub id: String,
    pub fields: Option<std::result::Result<Vec<Field>, String>>,
}

/// Decodes a list of `[id, [field, value, …] | nil]` entries (an `XRANGE` reply, or one stream of an
/// `XREAD`/`XREADGROUP` reply).
pub(crate) fn stream_entries(v: &Value) -> Result<Vec<StreamEntry>> {
    let list = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(list) => list,
        _ => return Err(protocol("stream entries are not an array")),
    };
    let mut out = Vec::with_capacity(list.len());
    for e in list {
        let Value::Array(parts) = e else {
            return Err(protocol("stream entry is not an array"));
        };
        let id = parts
            .first()
            .and_then(text)
            .ok_or_else(|| protocol("stream entry without id"))?;
        let fields = match parts.get(1) {
            None | Some(Value::Nil) => None,
            Some(Value::Array(fields)) => Some(Ok(fields
                .chunks(2)
                .filter_map(|p| match p {
                    [k, v] => Some((text(k)?, text(v))),
                    _ => None,
                })
                .collect())),
            Some(_) => Some(Err("fields are not an array".to_owned())),
        };
        out.push(StreamEntry { id, fields });
    }
    Ok(out)
}

/// The per-stream parts of an `XREAD`/`XREADGROUP` reply: `nil`, `[[key, entries], …]` or a RESP3 map.
pub(crate) fn stream_replies(reply: Value) -> Result<Vec<(String, Value)>> {
    match reply {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|s| {
                let Value::Array(mut kv) = s else {
                    return Err(protocol("stream reply is not an array"));
                };
                if kv.len() != 2 {
                    return Err(protocol("stream reply is not [key, entries]"));
                }
                let entries = kv.pop().unwrap_or(Value::Nil);
                let key = kv
                    .first()
                    .and_then(text)
                    .ok_or_else(|| protocol("stream key is not text"))?;
                Ok((key, entries))
            })
            .collect(),
        Value::Map(streams) => streams
            .into_iter()
            .map(|(k, v)| {
                text(&k)
                    .map(|k| (k, v))
                    .ok_or_else(|| protocol("stream key is not text"))
            })
            .collect(),
        _ => Err(protocol("unexpected stream read reply")),
    }
}
