//! Typed decoding of the admission scripts' replies: a cursor that takes the reply's values in order
//! (`u64`, `text`, `ticket` for the 9 fields of `view()` in lib.lua …), so no decoder counts offsets.

use redis::Value;

use crate::error::{AdmissionError, Result};
use crate::model::{Ticket, TicketId, TicketState, UserId};
use crate::reply::{protocol, text};

/// The values of one script reply after its status code, taken front to back.
pub(crate) struct ScriptReply<'a> {
    what: &'static str,
    items: &'a [Value],
    pos: usize,
}

impl<'a> ScriptReply<'a> {
    /// The reply of script `what` (named in errors), status code (the first value) already checked.
    pub fn new(what: &'static str, items: &'a [Value]) -> Self {
        Self {
            what,
            items,
            pos: 1,
        }
    }

    fn next(&mut self) -> Result<&'a Value> {
        let v = self.items.get(self.pos).ok_or_else(|| {
            protocol(format!(
                "{} reply too short (wanted value {})",
                self.what, self.pos
            ))
        })?;
        self.pos += 1;
        Ok(v)
    }

    /// Whether every value was taken.
    pub fn is_done(&self) -> bool {
        self.pos >= self.items.len()
    }

    /// The next value as text.
    pub fn text(&mut self) -> Result<String> {
        let what = self.what;
        let v = self.next()?;
        text(v).ok_or_else(|| protocol(format!("{what} reply: expected text, got {v:?}")))
    }

    /// The next value as a non-negative integer (Lua numbers may arrive as integers or as text).
    pub fn u64(&mut self) -> Result<u64> {
        let what = self.what;
        let v = self.next()?;
        match v {
            Value::Int(i) => u64::try_from(*i)
                .map_err(|_| protocol(format!("{what} reply: negative integer {i}"))),
            other => text(other)
                .and_then(|t| t.parse::<f64>().ok())
                .filter(|f| *f >= 0.0)
                .map(|f| f as u64)
                .ok_or_else(|| protocol(format!("{what} reply: expected integer, got {other:?}"))),
        }
    }

    /// The next value as an integer that may be negative.
    pub fn i64(&mut self) -> Result<i64> {
        let what = self.what;
        let v = self.next()?;
        match v {
            Value::Int(i) => Ok(*i),
            other => text(other)
                .and_then(|t| t.parse::<i64>().ok())
                .ok_or_else(|| protocol(format!("{what} reply: expected integer, got {other:?}"))),
        }
    }

    /// The next value as a flag written "1"/1 or anything else.
    pub fn flag(&mut self) -> Result<bool> {
        Ok(self.text()? == "1")
    }

    /// The next value is an empty string (an absent ticket) — taken if so.
    pub fn take_absent(&mut self) -> bool {
        let absent = matches!(self.items.get(self.pos), Some(Value::BulkString(b)) if b.is_empty());
        if absent {
            self.pos += 1;
        }
        absent
    }

    /// The 9 fields of `view()` in lib.lua: id, state, seq, joined, admitted, expires, ended, user, rank.
    pub fn ticket(&mut self) -> Result<Ticket> {
        let id = self.text()?;
        let state_code = self.text()?;
        let state = TicketState::from_code(&state_code)
            .ok_or_else(|| protocol(format!("unknown state {state_code:?}")))?;
        let seq = self.u64()?;
        let joined_at_ms = self.u64()?;
        let admitted = self.u64()?;
        let expires = self.u64()?;
        let ended = self.u64()?;
        let user = self.text()?;
        let rank = self.i64()?;
        Ok(Ticket {
            id: TicketId::parse(&id).map_err(|_| protocol("bad ticket id"))?,
            seq,
            state,
            user: if user.is_empty() {
                None
            } else {
                Some(UserId::new(user).map_err(|_| protocol("bad user id"))?)
            },
            joined_at_ms,
            admitted_at_ms: opt_ms(admitted),
            expires_at_ms: opt_ms(expires),
            ended_at_ms: opt_ms(ended),
            ahead: (state == TicketState::Waiting && rank >= 0).then_some(rank as u64),
        })
    }

    /// A view, or `None` for an absent ticket ("").
    pub fn opt_ticket(&mut self) -> Result<Option<Ticket>> {
        if self.take_absent() {
            return Ok(None);
        }
        self.ticket().map(Some)
    }

    /// Fails unless every value was taken (a reply longer than its decoder expects is a protocol error).
    pub fn finish(self) -> Result<()> {
        if self.is_done() {
            Ok(())
        } else {
            Err(AdmissionError::Protocol(format!(
                "{} reply has {} values, {} expected",
                self.what,
                self.items.len(),
                self.pos
            )))
        }
    }
}

fn opt_ms(v: u64) -> Option<u64> {
    (v > 0).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn view(id: &str, state: &str, rank: i64) -> Vec<Value> {
        vec![
            bulk(id),
            bulk(state),
            Value::Int(3),
            bulk("100"),
            bulk("0"),
            bulk("0"),
            bulk("0"),
            bulk("alice"),
            Value::Int(rank),
        ]
    }

    #[test]
    fn values_are_taken_in_order_and_a_view_decodes_whole() {
        let id = "0123456789abcdef0123456789abcdef";
        let mut items = vec![bulk("OK"), Value::Int(7), bulk("")];
        items.extend(view(id, "W", 2));
        items.push(bulk("x"));
        let mut r = ScriptReply::new("test", &items);
        assert_eq!(r.u64().expect("n"), 7);
        assert_eq!(r.opt_ticket().expect("absent"), None);
        let t = r.opt_ticket().expect("view").expect("present");
        assert_eq!(
            (t.seq, t.state, t.ahead, t.admitted_at_ms),
            (3, TicketState::Waiting, Some(2), None)
        );
        assert_eq!(t.user.as_ref().map(|u| u.as_str()), Some("alice"));
        assert!(!r.is_done());
        assert_eq!(r.text().expect("x"), "x");
        r.finish().expect("all taken");
    }

    #[test]
    fn short_long_and_mistyped_replies_are_protocol_errors() {
        let items = vec![bulk("OK"), bulk("nope"), Value::Int(-1)];
        let mut r = ScriptReply::new("test", &items);
        assert!(matches!(r.u64(), Err(AdmissionError::Protocol(_))));
        assert!(matches!(r.u64(), Err(AdmissionError::Protocol(_))));
        assert!(
            matches!(r.u64(), Err(AdmissionError::Protocol(_))),
            "past the end"
        );
        let items = vec![bulk("OK"), Value::Int(1), Value::Int(2)];
        let mut r = ScriptReply::new("test", &items);
        r.u64().expect("one");
        assert!(matches!(r.finish(), Err(AdmissionError::Protocol(_))));
        let mut bad = vec![bulk("OK")];
        bad.extend(view("0123456789abcdef0123456789abcdef", "?", -1));
        assert!(ScriptReply::new("test", &bad).ticket().is_err());
    }
}
