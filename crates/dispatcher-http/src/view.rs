//! What a visitor sees of a ticket: the JSON of status reads, join answers and live updates.

use dispatcher_admission::{EventId, Redacted, Ticket, TicketState};
use serde::Serialize;

use crate::tokens::Tokens;

/// A ticket as its holder sees it. `Debug` cuts the ticket id and the token (secrets).
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct TicketView {
    /// The event.
    pub event: String,
    /// The ticket id: the visitor's secret.
    pub ticket: String,
    /// pre_queued, waiting, admitted, completed, expired, abandoned, left or revoked.
    pub state: TicketState,
    /// The event's sequence number taken at join.
    pub seq: u64,
    /// The user id given at join.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// 1-based place in the line while waiting (`ahead + 1`).
    pub position: Option<u64>,
    /// People ahead while waiting; never more than truly ahead.
    pub ahead: Option<u64>,
    /// Estimated seconds until admission from the event's measured admission rate; `null` = unknown.
    pub estimated_wait_s: Option<u64>,
    /// Join time, ms since the Unix epoch.
    pub joined_at_ms: u64,
    /// Admission time.
    pub admitted_at_ms: Option<u64>,
    /// Session end (the token's `exp`).
    pub expires_at_ms: Option<u64>,
    /// When the ticket reached its final state.
    pub ended_at_ms: Option<u64>,
    /// The signed entry token, while admitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// True when the store was down and the event fails open: let through without a ticket in the store.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fail_open: bool,
}

impl std::fmt::Debug for TicketView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketView")
            .field("event", &self.event)
            .field("ticket", &Redacted(&self.ticket))
            .field("state", &self.state)
            .field("seq", &self.seq)
            .field("user", &self.user)
            .field("position", &self.position)
            .field("ahead", &self.ahead)
            .field("estimated_wait_s", &self.estimated_wait_s)
            .field("joined_at_ms", &self.joined_at_ms)
            .field("admitted_at_ms", &self.admitted_at_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("ended_at_ms", &self.ended_at_ms)
            .field("token", &self.token.as_deref().map(Redacted))
            .field("fail_open", &self.fail_open)
            .finish()
    }
}

impl TicketView {
    /// The view of `t`, with its token when admitted and an estimate from `rate_per_s` (admissions per
    /// second of the event, when measured).
    pub fn of(event: &EventId, t: &Ticket, tokens: &Tokens, rate_per_s: Option<f64>) -> Self {
        Self {
            token: tokens.for_ticket(event, t),
            ..Self::untokened(event, t, rate_per_s)
        }
    }

    /// The view of `t` without its token (what `of` adds it to).
    fn untokened(event: &EventId, t: &Ticket, rate_per_s: Option<f64>) -> Self {
        let ahead = if t.state == TicketState::Waiting {
            t.ahead
        } else {
            None
        };
        Self {
            event: event.to_string(),
            ticket: t.id.to_string(),
            state: t.state,
            seq: t.seq,
            user: t.user.as_ref().map(|u| u.to_string()),
            position: ahead.map(|a| a + 1),
            ahead,
            estimated_wait_s: ahead.and_then(|a| estimate_wait_s(a, rate_per_s)),
            joined_at_ms: t.joined_at_ms,
            admitted_at_ms: t.admitted_at_ms,
            expires_at_ms: t.expires_at_ms,
            ended_at_ms: t.ended_at_ms,
            token: None,
            fail_open: false,
        }
    }

    /// The SSE event name of this view: `position`, `admitted` or `final`.
    pub fn kind(&self) -> &'static str {
        match self.state {
            TicketState::PreQueued | TicketState::Waiting => "position",
            TicketState::Admitted => "admitted",
            _ => "final",
        }
    }
}

/// Seconds until admission of a visitor with `ahead` people in front at `rate_per_s` admissions per second;
/// `None` (unknown) without a measured rate.
pub fn estimate_wait_s(ahead: u64, rate_per_s: Option<f64>) -> Option<u64> {
    let rate = rate_per_s?;
    if rate.is_nan() || rate <= 0.0 || !rate.is_finite() {
        return None;
    }
    Some(((ahead + 1) as f64 / rate).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_cuts_the_ticket_id_and_the_token() {
        let ticket = "0123456789abcdef0123456789abcdef";
        let token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFZERTQSJ9.eyJqdGkiOiIwMTIzIn0.c2lnbmF0dXJl";
        let v = TicketView {
            event: "ev".into(),
            ticket: ticket.into(),
            state: TicketState::Admitted,
            seq: 3,
            user: Some("alice".into()),
            position: None,
            ahead: None,
            estimated_wait_s: None,
            joined_at_ms: 1,
            admitted_at_ms: Some(2),
            expires_at_ms: Some(3),
            ended_at_ms: None,
            token: Some(token.into()),
            fail_open: false,
        };
        // Also through a type that holds a view.
        let release = crate::visitor::ReleaseView {
            ticket: v.clone(),
            changed: true,
            admitted_next: 0,
        };
        let dbg = format!("{v:?} {v:#?} {release:?}");
        for secret in [ticket, token] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
        assert!(
            dbg.contains("\"012345…\"") && dbg.contains("\"eyJ0eX…\"") && dbg.contains("alice"),
            "{dbg}"
        );
    }

    #[test]
    fn estimates_need_a_rate() {
        assert_eq!(estimate_wait_s(10, None), None);
        assert_eq!(estimate_wait_s(10, Some(0.0)), None);
        assert_eq!(estimate_wait_s(10, Some(f64::NAN)), None);
        assert_eq!(estimate_wait_s(0, Some(2.0)), Some(1));
        assert_eq!(estimate_wait_s(9, Some(2.0)), Some(5));
        assert_eq!(estimate_wait_s(99, Some(1000.0)), Some(1));
    }
}
