//! The admission store contract shared by the in-process and Redis stores, and the clock they read.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{AdmissionError, Result};
use crate::model::{
    BulkOutcome, BulkReleased, DeletedEvent, EntryRecord, EventId, EventInfo, EventSettings,
    Joined, Released, Revocation, Tick, Ticket, TicketId, TicketState, UserId,
};

/// How a ticket ends when its holder or the shop ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Release {
    /// The session finished; only an admitted ticket can complete.
    Complete,
    /// The visitor left (waiting or admitted).
    Leave,
    /// The shop revoked the ticket (any live state).
    Revoke,
}

impl Release {
    /// The final state a ticket ends in.
    pub fn target_state(self) -> TicketState {
        match self {
            Release::Complete => TicketState::Completed,
            Release::Leave => TicketState::Left,
            Release::Revoke => TicketState::Revoked,
        }
    }

    /// The one-letter code the scripts use (the target state's code).
    pub(crate) fn code(self) -> &'static str {
        match self.target_state() {
            TicketState::Completed => "C",
            TicketState::Left => "L",
            _ => "R",
        }
    }
}

/// Result of configuring an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Configured {
    /// True when the event did not exist before.
    pub created: bool,
    /// Tickets admitted in the same step (e.g. after raising capacity or resuming).
    pub admitted: u64,
}

/// The source of "now" for the store's rules.
///
/// `Server` means the store's own clock: Redis `TIME` inside each script, so every process shares one clock
/// and skew between promoter hosts cannot reorder deadlines; the system clock for the in-process store.
/// `Manual` is a clock the caller moves, for deterministic tests.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The store's own clock.
    #[default]
    Server,
    /// A clock moved by hand, ms since the Unix epoch.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A manual clock starting at `ms`.
    pub fn manual(ms: u64) -> Self {
        Clock::Manual(Arc::new(AtomicU64::new(ms)))
    }

    /// Moves a manual clock forward; no effect on the server clock.
    pub fn advance(&self, ms: u64) {
        if let Clock::Manual(t) = self {
            t.fetch_add(ms, Ordering::SeqCst);
        }
    }

    /// The manual time, if manual.
    pub fn manual_now(&self) -> Option<u64> {
        match self {
            Clock::Server => None,
            Clock::Manual(t) => Some(t.load(Ordering::SeqCst)),
        }
    }
}

/// Milliseconds since the Unix epoch by the system clock.
pub fn system_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The admission engine's storage: every operation is one atomic step.
///
/// Both implementations ([`crate::MemoryStore`], [`crate::RedisStore`]) pass the same conformance suite.
pub trait AdmissionStore: Send + Sync + 'static {
    /// "memory" or "redis".
    fn kind(&self) -> &'static str;

    /// The fixed number of shards events are spread over.
    fn shard_count(&self) -> u16;

    /// The store's notion of now, ms since the Unix epoch.
    fn now_ms(&self) -> impl Future<Output = Result<u64>> + Send;

    /// Creates an event or changes its settings (validated); may admit at once.
    fn configure(
        &self,
        event: &EventId,
        settings: &EventSettings,
    ) -> impl Future<Output = Result<Configured>> + Send;

    /// Changes only the event's state (pause, resume, close), leaving every other setting as it is now;
    /// returns the tickets admitted in the same step (resuming may admit).
    fn set_state(
        &self,
        event: &EventId,
        state: crate::model::EventState,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// An event's settings and counts.
    fn event(&self, event: &EventId) -> impl Future<Output = Result<EventInfo>> + Send;

    /// Joins the queue: a fresh secret ticket with the event's next sequence number, or the user's live ticket.
    fn join(
        &self,
        event: &EventId,
        user: Option<&UserId>,
    ) -> impl Future<Output = Result<Joined>> + Send;

    /// Joins many visitors of one event in one step, as if each had called [`join`](Self::join) in order
    /// (at most [`crate::model::MAX_JOIN_BATCH`]): one outcome per visitor. A store that refuses the
    /// whole batch (unknown event, closed, store down) returns that as the outer error. The default joins
    /// each visitor on its own.
    fn join_many(
        &self,
        event: &EventId,
        users: &[Option<UserId>],
    ) -> impl Future<Output = Result<Vec<Result<Joined>>>> + Send {
        async move {
            check_join_batch(users)?;
            Ok(join_each(self, event, users).await)
        }
    }

    /// Reads a ticket (no presence).
    fn ticket(
        &self,
        event: &EventId,
        ticket: &TicketId,
    ) -> impl Future<Output = Result<Ticket>> + Send;

    /// Reads a ticket and records presence for a waiting one.
    fn heartbeat(
        &self,
        event: &EventId,
        ticket: &TicketId,
    ) -> impl Future<Output = Result<Ticket>> + Send;

    /// Completes, leaves or revokes a ticket; a freed slot admits the next ticket in the same step.
    fn release(
        &self,
        event: &EventId,
        ticket: &TicketId,
        how: Release,
    ) -> impl Future<Output = Result<Released>> + Send;

    /// Ends up to [`crate::model::MAX_BULK_RELEASE`] tickets of one event in one atomic step (e.g. a shop
    /// completing a batch of checkouts); freed slots admit the next tickets in the same step. Each ticket
    /// gets its own outcome; an unknown or conflicting ticket does not stop the others.
    fn release_many(
        &self,
        event: &EventId,
        tickets: &[TicketId],
        how: Release,
    ) -> impl Future<Output = Result<BulkReleased>> + Send;

    /// Completes, leaves or revokes up to [`crate::model::MAX_BULK_RELEASE`] tickets of one event in one step,
    /// each answered as [`release`](Self::release) would answer it alone (the coalescer's call): freed slots
    /// admit the next tickets in the same step, and each ticket that freed one is credited with one
    /// admission while there were any. A store that refuses the whole batch (unknown event, store down)
    /// returns that as the outer error. The default releases each ticket on its own.
    fn release_each(
        &self,
        event: &EventId,
        tickets: &[TicketId],
        how: Release,
    ) -> impl Future<Output = Result<Vec<Result<Released>>>> + Send {
        async move {
            check_bulk(tickets)?;
            Ok(
                futures_util::future::join_all(tickets.iter().map(|t| self.release(event, t, how)))
                    .await,
            )
        }
    }

    /// Reads many tickets of one event in one step, each as [`ticket`](Self::ticket) would (no presence;
    /// `None` when unknown; at most [`crate::model::MAX_LIVE_BATCH`]). The default reads each on its own.
    fn read_many(
        &self,
        event: &EventId,
        tickets: &[TicketId],
    ) -> impl Future<Output = Result<Vec<Option<Ticket>>>> + Send {
        async move {
            check_live(tickets)?;
            let mut out = Vec::with_capacity(tickets.len());
            for r in
                futures_util::future::join_all(tickets.iter().map(|t| self.ticket(event, t))).await
            {
                match r {
                    Ok(t) => out.push(Some(t)),
                    Err(crate::error::AdmissionError::UnknownTicket) => out.push(None),
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        }
    }

    /// Admits waiting tickets in order within capacity and rate; returns exactly how many were admitted.
    fn promote(&self, event: &EventId) -> impl Future<Output = Result<u64>> + Send;

    /// Time-driven pass: expiries, abandons, retention purge, then promotion.
    fn tick(&self, event: &EventId) -> impl Future<Output = Result<Tick>> + Send;

    /// Events of a shard whose next deadline is at or before `now_ms`, earliest first, paged.
    fn due_events(
        &self,
        shard: u16,
        now_ms: u64,
        offset: usize,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<EventId>>> + Send;

    /// The earliest deadline over all shards, if any event has one.
    fn next_due(&self) -> impl Future<Output = Result<Option<u64>>> + Send;

    /// Events of a shard with waiting or admitted tickets (the active registry).
    fn active_events(&self, shard: u16) -> impl Future<Output = Result<Vec<EventId>>> + Send;

    /// All configured events of a shard.
    fn events(&self, shard: u16) -> impl Future<Output = Result<Vec<EventId>>> + Send;

    /// Admissions recorded on a shard's entry stream after entry id `after` ("0" = from the start), from at
    /// most `count` entries. One entry holds every admission of one atomic step, all with its entry id, so
    /// whole steps are returned and the last record's `entry_id` is the cursor of the next read.
    fn entry_records(
        &self,
        shard: u16,
        after: &str,
        count: usize,
    ) -> impl Future<Output = Result<Vec<EntryRecord>>> + Send;

    /// The live-update read of many tickets of one event (at most [`crate::model::MAX_LIVE_BATCH`]) in one
    /// step: each ticket's view (`None` when unknown), recording presence for the waiting ones (an open live
    /// connection is presence).
    fn live(
        &self,
        event: &EventId,
        tickets: &[TicketId],
    ) -> impl Future<Output = Result<Vec<Option<Ticket>>>> + Send;

    /// Tickets revoked while admitted whose tokens have not expired yet (the list a shop polls), soonest
    /// expiry first.
    fn revocations(&self, event: &EventId) -> impl Future<Output = Result<Vec<Revocation>>> + Send;

    /// Deletes an event with all its tickets. Without `force`, an event with waiting or admitted tickets
    /// is refused (conflict).
    fn delete_event(
        &self,
        event: &EventId,
        force: bool,
    ) -> impl Future<Output = Result<DeletedEvent>> + Send;

    /// [`entry_records`](Self::entry_records) of many shards at once, each after its own id; one round trip
    /// where the store allows (one `XREAD` over all streams on a single Redis). Returns one list per
    /// cursor, in order.
    fn entry_records_many(
        &self,
        cursors: &[(u16, String)],
        count: usize,
    ) -> impl Future<Output = Result<Vec<Vec<EntryRecord>>>> + Send {
        async move {
            futures_util::future::try_join_all(
                cursors
                    .iter()
                    .map(|(shard, after)| self.entry_records(*shard, after, count)),
            )
            .await
        }
    }

    /// The id of the newest record on a shard's entry stream ("0-0" when empty): where a tail that wants
    /// only new admissions starts.
    fn last_entry_id(&self, shard: u16) -> impl Future<Output = Result<String>> + Send;

    /// Resolves when something may have made a deadline earlier (the in-process store signals this; the
    /// Redis store never does, so promoters bound their sleep).
    fn changed(&self) -> impl Future<Output = ()> + Send;

    /// Completes a ticket.
    fn complete(
        &self,
        event: &EventId,
        ticket: &TicketId,
    ) -> impl Future<Output = Result<Released>> + Send {
        self.release(event, ticket, Release::Complete)
    }

    /// Leaves the queue or gives up the slot.
    fn leave(
        &self,
        event: &EventId,
        ticket: &TicketId,
    ) -> impl Future<Output = Result<Released>> + Send {
        self.release(event, ticket, Release::Leave)
    }

    /// Revokes a ticket.
    fn revoke(
        &self,
        event: &EventId,
        ticket: &TicketId,
    ) -> impl Future<Output = Result<Released>> + Send {
        self.release(event, ticket, Release::Revoke)
    }
}

/// Checks the size of a bulk release.
pub(crate) fn check_bulk(tickets: &[TicketId]) -> Result<()> {
    if tickets.is_empty() || tickets.len() > crate::model::MAX_BULK_RELEASE {
        return Err(crate::error::AdmissionError::InvalidInput(format!(
            "a bulk release takes 1 to {} tickets, not {}",
            crate::model::MAX_BULK_RELEASE,
            tickets.len()
        )));
    }
    Ok(())
}

/// Joins each visitor on its own, all in flight at once, each with its own outcome (a failure hits only
/// the joins it hit, never one already written): the default of [`AdmissionStore::join_many`], and how
/// both stores take a batch into a pre-queue (one lottery draw per join).
pub(crate) async fn join_each<S: AdmissionStore + ?Sized>(
    store: &S,
    event: &EventId,
    users: &[Option<UserId>],
) -> Vec<Result<Joined>> {
    futures_util::future::join_all(users.iter().map(|u| store.join(event, u.as_ref()))).await
}

/// A pre-queue lottery number: uniform below 2^52 (exact in Lua numbers; joins after the start are
/// placed above it).
pub(crate) fn lottery_number() -> u64 {
    rand::random::<u64>() >> 12
}

/// Checks the size of a join batch.
pub(crate) fn check_join_batch(users: &[Option<UserId>]) -> Result<()> {
    if users.is_empty() || users.len() > crate::model::MAX_JOIN_BATCH {
        return Err(crate::error::AdmissionError::InvalidInput(format!(
            "a join batch takes 1 to {} visitors, not {}",
            crate::model::MAX_JOIN_BATCH,
            users.len()
        )));
    }
    Ok(())
}

/// Checks the size of a live batch.
pub(crate) fn check_live(tickets: &[TicketId]) -> Result<()> {
    if tickets.len() > crate::model::MAX_LIVE_BATCH {
        return Err(crate::error::AdmissionError::InvalidInput(format!(
            "a live batch takes at most {} tickets, not {}",
            crate::model::MAX_LIVE_BATCH,
            tickets.len()
        )));
    }
    Ok(())
}

/// The per-ticket answers of a coalesced release from the step's outcomes and views (see
/// [`AdmissionStore::release_each`]): `admitted` admissions are credited one each to the tickets that freed
/// a slot, in request order.
pub(crate) fn released_each(
    outcomes: Vec<BulkOutcome>,
    views: Vec<Option<Ticket>>,
    admitted: u64,
) -> Vec<Result<Released>> {
    let mut credit = admitted;
    outcomes
        .into_iter()
        .zip(views)
        .map(|(o, view)| {
            let changed = match o {
                BulkOutcome::Released => true,
                BulkOutcome::Already => false,
                BulkOutcome::Unknown => return Err(AdmissionError::UnknownTicket),
                BulkOutcome::Conflict(s) => return Err(AdmissionError::state_conflict(s)),
            };
            let ticket = view.ok_or_else(|| {
                AdmissionError::Protocol("a released ticket came back without its view".into())
            })?;
            let admitted_next = u64::from(changed && credit > 0);
            credit -= admitted_next;
            Ok(Released {
                ticket,
                changed,
                admitted_next,
            })
        })
        .collect()
}

/// The shard of an event: FNV-1a of its id modulo the shard count. Stable across versions: changing it
/// would strand every existing event, so it is pinned by a unit test.
pub fn shard_of(event: &EventId, shards: u16) -> u16 {
    (fnv1a64(event.as_str().as_bytes()) % u64::from(shards.max(1))) as u16
}

/// FNV-1a, 64 bit: stable across versions and platforms (shard mapping, library versions).
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_mapping_is_pinned() {
        let e = EventId::new("concert-2026").expect("valid");
        assert_eq!(shard_of(&e, 16), shard_of(&e, 16));
        // Pinned values: a change here strands existing events in Redis.
        let a = EventId::new("a").expect("valid");
        assert_eq!(shard_of(&a, 16), (0xaf63_dc4c_8601_ec8c_u64 % 16) as u16);
        assert_eq!(shard_of(&a, 1), 0);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = Clock::manual(1_000);
        assert_eq!(c.manual_now(), Some(1_000));
        c.advance(5);
        assert_eq!(c.manual_now(), Some(1_005));
        assert_eq!(Clock::Server.manual_now(), None);
    }
}
