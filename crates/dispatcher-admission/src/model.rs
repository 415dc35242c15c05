//! The admission domain's value types: validated ids, event settings, ticket states and views.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::AdmissionError;

/// Longest accepted event id, in bytes.
pub const MAX_EVENT_ID_LEN: usize = 64;
/// Longest accepted user id, in bytes.
pub const MAX_USER_ID_LEN: usize = 128;

/// An event id: 1..=64 bytes of `[A-Za-z0-9._-]`, so it can never break a Redis key or hash tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct EventId(String);

impl EventId {
    /// Validates and wraps an event id.
    pub fn new(id: impl Into<String>) -> Result<Self, AdmissionError> {
        let id = id.into();
        if id.is_empty() {
            return Err(AdmissionError::invalid("event id is empty"));
        }
        if id.len() > MAX_EVENT_ID_LEN {
            return Err(AdmissionError::invalid(format!(
                "event id is {} bytes; at most {MAX_EVENT_ID_LEN} allowed",
                id.len()
            )));
        }
        if let Some(c) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(AdmissionError::invalid(format!(
                "event id contains {c:?}; only ASCII letters, digits, '.', '_' and '-' are allowed"
            )));
        }
        if id.bytes().all(|b| b == b'.') {
            // `.` and `..` are path segments every URL normaliser folds away: such an event could be
            // created and never reached again.
            return Err(AdmissionError::invalid(
                "event id is made only of dots; it needs at least one letter, digit, '_' or '-'",
            ));
        }
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        EventId::new(s).map_err(serde::de::Error::custom)
    }
}

/// A user id given by the client: 1..=128 bytes of printable, non-whitespace text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct UserId(String);

impl UserId {
    /// Validates and wraps a user id.
    pub fn new(id: impl Into<String>) -> Result<Self, AdmissionError> {
        let id = id.into();
        if id.is_empty() {
            return Err(AdmissionError::invalid("user id is empty"));
        }
        if id.len() > MAX_USER_ID_LEN {
            return Err(AdmissionError::invalid(format!(
                "user id is {} bytes; at most {MAX_USER_ID_LEN} allowed",
                id.len()
            )));
        }
        if let Some(c) = id.chars().find(|c| c.is_control() || c.is_whitespace()) {
            return Err(AdmissionError::invalid(format!(
                "user id contains {c:?}; control characters and whitespace are not allowed"
            )));
        }
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A ticket id: 128 random bits as 32 lowercase hex digits. It is the ticket's secret.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TicketId(String);

impl TicketId {
    /// A fresh ticket id from the operating system's CSPRNG-seeded generator.
    pub fn generate() -> Self {
        Self(format!("{:032x}", rand::random::<u128>()))
    }

    /// The smallest id in sort order (a range bound; not a valid ticket).
    pub fn min_value() -> Self {
        Self(String::new())
    }

    /// Validates and wraps a ticket id given by a client.
    pub fn parse(id: &str) -> Result<Self, AdmissionError> {
        if id.len() != 32
            || !id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(AdmissionError::invalid(
                "ticket id must be 32 lowercase hexadecimal digits",
            ));
        }
        Ok(Self(id.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Ticket ids are secrets: Debug shows only a prefix, so they do not leak into logs.
impl fmt::Debug for TicketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TicketId({}…)", &self.0[..6.min(self.0.len())])
    }
}

/// A secret held as text (a ticket id, an entry token) as `Debug` shows it: its first 6 characters and an
/// ellipsis, enough to tell secrets apart in a log without holding one. For the `Debug` of types that
/// keep a secret in a `String`.
#[derive(Clone, Copy)]
pub struct Redacted<'a>(pub &'a str);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cut = self
            .0
            .char_indices()
            .nth(6)
            .map_or(self.0.len(), |(i, _)| i);
        write!(f, "\"{}…\"", &self.0[..cut])
    }
}

impl fmt::Display for TicketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether an event takes joins and admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventState {
    /// Joins accepted, tickets admitted.
    Open,
    /// Joins accepted and queued, nobody admitted until resumed.
    Paused,
    /// Joins refused; tickets already waiting keep being admitted.
    Closed,
}

impl EventState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Open => "open",
            EventState::Paused => "paused",
            EventState::Closed => "closed",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(EventState::Open),
            "paused" => Some(EventState::Paused),
            "closed" => Some(EventState::Closed),
            _ => None,
        }
    }
}

/// How an event queues new joins (docs/guarantees.md#admission).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueMode {
    /// First come, first served by the server's sequence number.
    #[default]
    Fifo,
    /// Joins are admitted at once while the event is under capacity, without the admission rate; over
    /// capacity they queue in order.
    Passthrough,
    /// New joins are refused with a clear answer; tickets already issued carry on.
    Reject,
    /// Joins before `starts_at_ms` go to a pre-queue and are shuffled into a random order at the start (a
    /// lottery for early arrivals); later joins line up behind them, first come, first served.
    Prequeue,
}

impl QueueMode {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueMode::Fifo => "fifo",
            QueueMode::Passthrough => "passthrough",
            QueueMode::Reject => "reject",
            QueueMode::Prequeue => "prequeue",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "fifo" => Some(QueueMode::Fifo),
            "passthrough" => Some(QueueMode::Passthrough),
            "reject" => Some(QueueMode::Reject),
            "prequeue" => Some(QueueMode::Prequeue),
            _ => None,
        }
    }
}

/// Limits on settings; anything outside is refused as invalid input.
pub mod limits {
    /// Largest capacity (concurrently admitted tickets) of one event.
    pub const MAX_CAPACITY: u64 = 10_000_000;
    /// Largest admission rate, tickets per minute.
    pub const MAX_RATE_PER_MINUTE: u64 = 600_000_000;
    /// Session TTL bounds, ms (100 ms .. 7 days).
    pub const MIN_SESSION_TTL_MS: u64 = 100;
    pub const MAX_SESSION_TTL_MS: u64 = 7 * 24 * 3_600_000;
    /// Abandon timeout bounds, ms (1 s .. 7 days).
    pub const MIN_ABANDON_MS: u64 = 1_000;
    pub const MAX_ABANDON_MS: u64 = 7 * 24 * 3_600_000;
    /// Retention of final tickets, ms (1 s .. 30 days).
    pub const MIN_RETENTION_MS: u64 = 1_000;
    pub const MAX_RETENTION_MS: u64 = 30 * 24 * 3_600_000;
    /// Latest accepted start time (ms since the Unix epoch; year 2286), so it stays exact in Lua numbers.
    pub const MAX_STARTS_AT_MS: u64 = 9_999_999_999_999;
}

/// An event's run-time settings (docs/guarantees.md#admission).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSettings {
    /// Most tickets admitted at once.
    pub capacity: u64,
    /// Optional admission rate, new admissions per minute.
    #[serde(default)]
    pub rate_per_minute: Option<u64>,
    /// How long an admitted ticket's session lasts, ms.
    #[serde(default = "defaults::session_ttl_ms")]
    pub session_ttl_ms: u64,
    /// Waiters without presence for this long are dropped, ms.
    #[serde(default = "defaults::abandon_timeout_ms")]
    pub abandon_timeout_ms: u64,
    /// Open, paused or closed.
    #[serde(default = "defaults::state")]
    pub state: EventState,
    /// How long final tickets stay readable, ms.
    #[serde(default = "defaults::retention_ms")]
    pub retention_ms: u64,
    /// How new joins are queued.
    #[serde(default)]
    pub queue_mode: QueueMode,
    /// When the store cannot be reached, let visitors through (with a locally minted token) instead of
    /// refusing them with 503 (the default, fail closed).
    #[serde(default)]
    pub fail_open: bool,
    /// When a `prequeue` event starts (ms since the Unix epoch): the pre-queue is shuffled into the line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at_ms: Option<u64>,
}

/// Defaults of [`EventSettings`] (15-minute sessions, as the Go queue processor we replaced; 1 h retention).
pub mod defaults {
    use super::EventState;
    pub fn session_ttl_ms() -> u64 {
        15 * 60_000
    }
    pub fn abandon_timeout_ms() -> u64 {
        60_000
    }
    pub fn state() -> EventState {
        EventState::Open
    }
    pub fn retention_ms() -> u64 {
        3_600_000
    }
}

impl EventSettings {
    /// Settings with the given capacity and defaults for the rest.
    pub fn with_capacity(capacity: u64) -> Self {
        Self {
            capacity,
            rate_per_minute: None,
            session_ttl_ms: defaults::session_ttl_ms(),
            abandon_timeout_ms: defaults::abandon_timeout_ms(),
            state: defaults::state(),
            retention_ms: defaults::retention_ms(),
            queue_mode: QueueMode::Fifo,
            fail_open: false,
            starts_at_ms: None,
        }
    }

    /// Checks every bound; the error names the first field out of range.
    pub fn validate(&self) -> Result<(), AdmissionError> {
        use limits::*;
        fn range(name: &str, v: u64, lo: u64, hi: u64) -> Result<(), AdmissionError> {
            if v < lo || v > hi {
                return Err(AdmissionError::invalid(format!(
                    "{name} is {v}; it must be between {lo} and {hi}"
                )));
            }
            Ok(())
        }
        range("capacity", self.capacity, 1, MAX_CAPACITY)?;
        if let Some(r) = self.rate_per_minute {
            range("rate_per_minute", r, 1, MAX_RATE_PER_MINUTE)?;
        }
        range(
            "session_ttl_ms",
            self.session_ttl_ms,
            MIN_SESSION_TTL_MS,
            MAX_SESSION_TTL_MS,
        )?;
        range(
            "abandon_timeout_ms",
            self.abandon_timeout_ms,
            MIN_ABANDON_MS,
            MAX_ABANDON_MS,
        )?;
        range(
            "retention_ms",
            self.retention_ms,
            MIN_RETENTION_MS,
            MAX_RETENTION_MS,
        )?;
        match (self.queue_mode, self.starts_at_ms) {
            (QueueMode::Prequeue, None) => {
                return Err(AdmissionError::invalid(
                    "queue_mode prequeue needs starts_at_ms (when the pre-queue is shuffled into the line)",
                ));
            }
            (QueueMode::Prequeue, Some(t)) => range("starts_at_ms", t, 1, MAX_STARTS_AT_MS)?,
            (mode, Some(_)) => {
                return Err(AdmissionError::invalid(format!(
                    "starts_at_ms is only for queue_mode prequeue (this event's mode is {}); leave it out",
                    mode.as_str()
                )));
            }
            (_, None) => {}
        }
        Ok(())
    }
}

/// The state of a ticket; every ticket is in exactly one (docs/guarantees.md#admission).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketState {
    /// Joined before the event's start; not yet in the ordered queue.
    PreQueued,
    /// In the queue.
    Waiting,
    /// Holding a slot.
    Admitted,
    /// Final: the shop or visitor completed the session.
    Completed,
    /// Final: the session TTL passed.
    Expired,
    /// Final: no presence within the abandon timeout while waiting.
    Abandoned,
    /// Final: the visitor left.
    Left,
    /// Final: revoked by the shop.
    Revoked,
}

impl TicketState {
    /// The one-letter code used in stored records.
    pub fn code(self) -> char {
        match self {
            TicketState::PreQueued => 'Q',
            TicketState::Waiting => 'W',
            TicketState::Admitted => 'A',
            TicketState::Completed => 'C',
            TicketState::Expired => 'E',
            TicketState::Abandoned => 'B',
            TicketState::Left => 'L',
            TicketState::Revoked => 'R',
        }
    }

    /// Parses a one-letter code.
    pub fn from_code(c: &str) -> Option<Self> {
        Some(match c {
            "Q" => TicketState::PreQueued,
            "W" => TicketState::Waiting,
            "A" => TicketState::Admitted,
            "C" => TicketState::Completed,
            "E" => TicketState::Expired,
            "B" => TicketState::Abandoned,
            "L" => TicketState::Left,
            "R" => TicketState::Revoked,
            _ => return None,
        })
    }

    /// Whether the ticket has ended.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            TicketState::PreQueued | TicketState::Waiting | TicketState::Admitted
        )
    }

    /// All states, for exhaustive accounting in tests.
    pub const ALL: [TicketState; 8] = [
        TicketState::PreQueued,
        TicketState::Waiting,
        TicketState::Admitted,
        TicketState::Completed,
        TicketState::Expired,
        TicketState::Abandoned,
        TicketState::Left,
        TicketState::Revoked,
    ];
}

/// What a ticket looks like to its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ticket {
    /// The secret id.
    pub id: TicketId,
    /// The event's sequence number taken at join (1-based, strictly increasing per event).
    pub seq: u64,
    /// Current state.
    pub state: TicketState,
    /// The user id given at join, if any.
    pub user: Option<UserId>,
    /// Join time, ms since the Unix epoch.
    pub joined_at_ms: u64,
    /// Admission time, when admitted or after.
    pub admitted_at_ms: Option<u64>,
    /// Session end, when admitted or after.
    pub expires_at_ms: Option<u64>,
    /// When the ticket reached its final state.
    pub ended_at_ms: Option<u64>,
    /// People truly ahead of a waiting ticket (0 = next); `None` unless waiting.
    pub ahead: Option<u64>,
}

/// The result of a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The ticket (new, or the user's existing live one).
    pub ticket: Ticket,
    /// False when an existing live ticket of the same user was returned.
    pub created: bool,
}

/// The result of complete, leave or revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The ticket after the call.
    pub ticket: Ticket,
    /// False when the ticket was already in the requested final state.
    pub changed: bool,
    /// Tickets admitted in the same atomic step into the freed slot.
    pub admitted_next: u64,
}

/// What happened to one ticket of a bulk release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "state")]
pub enum BulkOutcome {
    /// Ended by this call.
    Released,
    /// Already in the requested final state; nothing changed.
    Already,
    /// No such ticket in this event.
    Unknown,
    /// Its state does not allow the release.
    Conflict(TicketState),
}

/// The result of releasing many tickets of one event in one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkReleased {
    /// Tickets ended by this call.
    pub changed: u64,
    /// Tickets admitted in the same step into the freed slots.
    pub admitted_next: u64,
    /// One outcome per requested ticket, in request order.
    pub outcomes: Vec<BulkOutcome>,
}

/// Most visitors one coalesced join takes.
pub const MAX_JOIN_BATCH: usize = 500;

/// Most tickets one live-update read accepts.
pub const MAX_LIVE_BATCH: usize = 1_000;

/// Most tickets one bulk release accepts.
pub const MAX_BULK_RELEASE: usize = 1_000;

/// The result of one time-driven pass over an event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tick {
    /// Admitted tickets whose session TTL passed.
    pub expired: u64,
    /// Waiters dropped for missing presence.
    pub abandoned: u64,
    /// Tickets admitted.
    pub admitted: u64,
    /// Final tickets removed after retention.
    pub purged: u64,
    /// Queued tickets dropped from their line for want of a readable record (deleted or corrupted behind
    /// the store's back) since the event's previous pass, by this or any other call. Always 0 in the
    /// in-process store (nothing can remove a record there) and for [`crate::AdmissionStore::promote`].
    pub orphaned: u64,
}

/// An event's settings and counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventInfo {
    /// The event.
    pub id: EventId,
    /// Its settings.
    pub settings: EventSettings,
    /// Tickets issued so far (the last sequence number).
    pub joined: u64,
    /// Tickets waiting now.
    pub waiting: u64,
    /// Tickets admitted now.
    pub admitted: u64,
    /// Final tickets still retained.
    pub finished: u64,
    /// Whether the event is in its shard's active registry.
    pub active: bool,
    /// Tickets in the pre-queue (joined before the start of a `prequeue` event, not yet placed).
    pub pre_queued: u64,
    /// Cumulative counts since the event was created.
    pub totals: EventTotals,
}

/// Cumulative counts of an event: admissions and tickets ended, by final state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EventTotals {
    /// Tickets admitted.
    pub admitted: u64,
    /// Tickets completed.
    pub completed: u64,
    /// Sessions expired.
    pub expired: u64,
    /// Waiters abandoned.
    pub abandoned: u64,
    /// Tickets left.
    pub left: u64,
    /// Tickets revoked.
    pub revoked: u64,
}

impl EventTotals {
    /// Counts one ticket reaching `state`.
    pub fn count_final(&mut self, state: TicketState, n: u64) {
        match state {
            TicketState::Completed => self.completed += n,
            TicketState::Expired => self.expired += n,
            TicketState::Abandoned => self.abandoned += n,
            TicketState::Left => self.left += n,
            TicketState::Revoked => self.revoked += n,
            TicketState::PreQueued | TicketState::Waiting | TicketState::Admitted => {}
        }
    }
}

/// A token that must no longer be honoured: its ticket was revoked while admitted. Listed until the
/// token's own expiry. `Debug` cuts the ticket id.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Revocation {
    /// The ticket id (the token's `jti`).
    pub ticket: String,
    /// The token's expiry (session end), ms.
    pub expires_at_ms: u64,
}

impl fmt::Debug for Revocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revocation")
            .field("ticket", &Redacted(&self.ticket))
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// Most revocations one read returns.
pub const MAX_REVOCATIONS: usize = 100_000;

/// The result of deleting an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeletedEvent {
    /// The event.
    pub event: String,
    /// Tickets (of every state) deleted with it.
    pub tickets: u64,
}

/// One admission as recorded on a shard's entry stream. `Debug` cuts the ticket id.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct EntryRecord {
    /// Stream entry id.
    pub entry_id: String,
    /// The event.
    pub event: String,
    /// The ticket admitted.
    pub ticket: String,
    /// The ticket's user ("" when anonymous).
    pub user: String,
    /// The ticket's sequence number.
    pub seq: u64,
    /// Admission time, ms.
    pub admitted_at_ms: u64,
    /// Session end, ms.
    pub expires_at_ms: u64,
}

impl fmt::Debug for EntryRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntryRecord")
            .field("entry_id", &self.entry_id)
            .field("event", &self.event)
            .field("ticket", &Redacted(&self.ticket))
            .field("user", &self.user)
            .field("seq", &self.seq)
            .field("admitted_at_ms", &self.admitted_at_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_made_only_of_dots_are_refused() {
        for id in [".", "..", "...", "...................."] {
            assert!(
                matches!(EventId::new(id), Err(AdmissionError::InvalidInput(_))),
                "{id:?} must be refused"
            );
        }
        for id in [".a", "a.", "a..b", "._", "-.", "v1.2"] {
            assert!(EventId::new(id).is_ok(), "{id:?} is a fine id");
        }
    }

    #[test]
    fn starts_at_is_refused_unless_the_mode_is_prequeue() {
        for mode in [QueueMode::Fifo, QueueMode::Passthrough, QueueMode::Reject] {
            let s = EventSettings {
                queue_mode: mode,
                starts_at_ms: Some(1_900_000_000_000),
                ..EventSettings::with_capacity(10)
            };
            assert!(
                matches!(s.validate(), Err(AdmissionError::InvalidInput(_))),
                "{mode:?} with starts_at_ms must be refused"
            );
        }
        let pre = EventSettings {
            queue_mode: QueueMode::Prequeue,
            starts_at_ms: Some(1_900_000_000_000),
            ..EventSettings::with_capacity(10)
        };
        assert!(pre.validate().is_ok());
        assert!(EventSettings::with_capacity(10).validate().is_ok());
    }

    const ID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn entry_record_debug_cuts_the_ticket_id() {
        let r = EntryRecord {
            entry_id: "1-0".into(),
            event: "ev".into(),
            ticket: ID.into(),
            user: "alice".into(),
            seq: 7,
            admitted_at_ms: 1,
            expires_at_ms: 2,
        };
        let dbg = format!("{r:?} {r:#?}");
        assert!(!dbg.contains(ID), "{dbg}");
        assert!(dbg.contains("\"012345…\"") && dbg.contains("alice") && dbg.contains("seq: 7"));
    }

    #[test]
    fn revocation_and_ticket_id_debug_cut_the_ticket_id() {
        let r = Revocation {
            ticket: ID.into(),
            expires_at_ms: 5,
        };
        let id = TicketId::parse(ID).expect("valid id");
        let dbg = format!("{r:?} {r:#?} {id:?} {:?}", Redacted(ID));
        assert!(!dbg.contains(ID), "{dbg}");
        assert!(dbg.contains("012345…"), "{dbg}");
        // Short or non-ASCII text is cut on a character boundary, never panics.
        assert_eq!(format!("{:?}", Redacted("")), "\"…\"");
        assert_eq!(format!("{:?}", Redacted("ééééééé")), "\"éééééé…\"");
    }
}
