//! The per-request coalescer over the in-process store and real Redis: concurrent joins, releases,
//! heartbeats and reads of one event ride few store calls, each request keeps its own answer and error, and
//! a store call that panics is an internal error for its batch only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dispatcher_admission::{
    AdmissionError, AdmissionStore, BulkReleased, Clock, Coalescer, Configured, DeletedEvent,
    EntryRecord, EventId, EventInfo, EventSettings, EventState, Joined, Release, Released, Result,
    Revocation, Tick, Ticket, TicketId, TicketState, UserId,
};

use crate::common;

/// A store over another that counts its batch calls and, when told, panics in them (a bug in a store).
struct Probe<S> {
    inner: Arc<S>,
    batch_calls: AtomicU64,
    panic: AtomicBool,
}

impl<S> Probe<S> {
    fn new(inner: Arc<S>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            batch_calls: AtomicU64::new(0),
            panic: AtomicBool::new(false),
        })
    }

    fn batch_call(&self) {
        self.batch_calls.fetch_add(1, Ordering::SeqCst);
        if self.panic.load(Ordering::SeqCst) {
            panic!("a bug in the store's batch call");
        }
    }
}

impl<S: AdmissionStore> AdmissionStore for Probe<S> {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn shard_count(&self) -> u16 {
        self.inner.shard_count()
    }
    async fn now_ms(&self) -> Result<u64> {
        self.inner.now_ms().await
    }
    async fn configure(&self, e: &EventId, s: &EventSettings) -> Result<Configured> {
        self.inner.configure(e, s).await
    }
    async fn set_state(&self, e: &EventId, s: EventState) -> Result<u64> {
        self.inner.set_state(e, s).await
    }
    async fn event(&self, e: &EventId) -> Result<EventInfo> {
        self.inner.event(e).await
    }
    async fn join(&self, e: &EventId, u: Option<&UserId>) -> Result<Joined> {
        self.inner.join(e, u).await
    }
    async fn join_many(&self, e: &EventId, u: &[Option<UserId>]) -> Result<Vec<Result<Joined>>> {
        self.batch_call();
        self.inner.join_many(e, u).await
    }
    async fn release_each(
        &self,
        e: &EventId,
        t: &[TicketId],
        how: Release,
    ) -> Result<Vec<Result<Released>>> {
        self.batch_call();
        self.inner.release_each(e, t, how).await
    }
    async fn read_many(&self, e: &EventId, t: &[TicketId]) -> Result<Vec<Option<Ticket>>> {
        self.batch_call();
        self.inner.read_many(e, t).await
    }
    async fn ticket(&self, e: &EventId, t: &TicketId) -> Result<Ticket> {
        self.inner.ticket(e, t).await
    }
    async fn heartbeat(&self, e: &EventId, t: &TicketId) -> Result<Ticket> {
        self.inner.heartbeat(e, t).await
    }
    async fn release(&self, e: &EventId, t: &TicketId, how: Release) -> Result<Released> {
        self.inner.release(e, t, how).await
    }
    async fn release_many(
        &self,
        e: &EventId,
        t: &[TicketId],
        how: Release,
    ) -> Result<BulkReleased> {
        self.inner.release_many(e, t, how).await
    }
    async fn promote(&self, e: &EventId) -> Result<u64> {
        self.inner.promote(e).await
    }
    async fn tick(&self, e: &EventId) -> Result<Tick> {
        self.inner.tick(e).await
    }
    async fn due_events(
        &self,
        shard: u16,
        now: u64,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<EventId>> {
        self.inner.due_events(shard, now, offset, limit).await
    }
    async fn next_due(&self) -> Result<Option<u64>> {
        self.inner.next_due().await
    }
    async fn active_events(&self, shard: u16) -> Result<Vec<EventId>> {
        self.inner.active_events(shard).await
    }
    async fn events(&self, shard: u16) -> Result<Vec<EventId>> {
        self.inner.events(shard).await
    }
    async fn entry_records(
        &self,
        shard: u16,
        after: &str,
        count: usize,
    ) -> Result<Vec<EntryRecord>> {
        self.inner.entry_records(shard, after, count).await
    }
    async fn live(&self, e: &EventId, t: &[TicketId]) -> Result<Vec<Option<Ticket>>> {
        self.batch_call();
        self.inner.live(e, t).await
    }
    async fn revocations(&self, e: &EventId) -> Result<Vec<Revocation>> {
        self.inner.revocations(e).await
    }
    async fn delete_event(&self, e: &EventId, force: bool) -> Result<DeletedEvent> {
        self.inner.delete_event(e, force).await
    }
    async fn last_entry_id(&self, shard: u16) -> Result<String> {
        self.inner.last_entry_id(shard).await
    }
    async fn changed(&self) {
        self.inner.changed().await
    }
}

fn ev(s: &str) -> EventId {
    EventId::new(s).expect("valid event id")
}

/// 100 visitors of a capacity-40 event, then 40 concurrent completes, 40 concurrent heartbeats and reads,
/// and the answers of the odd cases (again, unknown, waiting), all through the coalescer.
async fn coalesced_calls_answer_each_request_as_alone<S: AdmissionStore>(store: Arc<S>) {
    let probe = Probe::new(store);
    let calls = Coalescer::new(probe.clone(), 256, 1);
    let e = ev("coalesce");
    probe
        .configure(&e, &EventSettings::with_capacity(40))
        .await
        .expect("configure");
    let joined = futures_util::future::join_all(
        (0..100).map(|i| calls.join(&e, Some(UserId::new(format!("c-{i}")).expect("user")))),
    )
    .await;
    let tickets: Vec<Ticket> = joined
        .into_iter()
        .map(|j| j.expect("join").ticket)
        .collect();
    let joins_calls = probe.batch_calls.swap(0, Ordering::SeqCst);
    assert!(joins_calls < 100, "joins coalesced: {joins_calls} calls");
    let mut by_seq = tickets.clone();
    by_seq.sort_by_key(|t| t.seq);
    let admitted: Vec<Ticket> = by_seq[..40].to_vec();
    assert!(admitted.iter().all(|t| t.state == TicketState::Admitted));

    // Heartbeats and reads: each answers its own ticket; the waiting ones with their place in line.
    let beats =
        futures_util::future::join_all(by_seq.iter().map(|t| calls.heartbeat(&e, &t.id))).await;
    for (t, b) in by_seq.iter().zip(&beats) {
        let b = b.as_ref().expect("heartbeat");
        assert_eq!((&b.id, b.seq), (&t.id, t.seq));
    }
    assert_eq!(beats[40].as_ref().expect("waiting").ahead, Some(0));
    assert_eq!(beats[99].as_ref().expect("waiting").ahead, Some(59));
    let reads =
        futures_util::future::join_all(by_seq.iter().map(|t| calls.ticket(&e, &t.id))).await;
    assert!(reads.iter().all(|r| r.is_ok()));
    let read_calls = probe.batch_calls.swap(0, Ordering::SeqCst);
    assert!(read_calls < 200, "reads coalesced: {read_calls} calls");

    // Forty concurrent completes: each changed, forty admitted next in all, each view final.
    let done =
        futures_util::future::join_all(admitted.iter().map(|t| calls.complete(&e, &t.id))).await;
    let mut next = 0;
    for (t, r) in admitted.iter().zip(&done) {
        let r = r.as_ref().expect("complete");
        assert!(r.changed);
        assert_eq!(
            (&r.ticket.id, r.ticket.state),
            (&t.id, TicketState::Completed)
        );
        assert!(r.ticket.ended_at_ms.is_some());
        next += r.admitted_next;
    }
    assert_eq!(next, 40, "every freed slot admitted the next in line");
    let release_calls = probe.batch_calls.swap(0, Ordering::SeqCst);
    assert!(
        release_calls < 40,
        "completes coalesced: {release_calls} calls"
    );
    let info = probe.event(&e).await.expect("event");
    assert_eq!(
        (info.admitted, info.waiting, info.totals.completed),
        (40, 20, 40)
    );

    // Again (not changed), unknown, a waiting ticket (conflict), all in one concurrent burst.
    let unknown = TicketId::parse(&format!("{:032x}", 7)).expect("hex");
    let (again, missing, waiting) = tokio::join!(
        calls.complete(&e, &admitted[0].id),
        calls.complete(&e, &unknown),
        calls.complete(&e, &by_seq[99].id),
    );
    let again = again.expect("again");
    assert!(!again.changed);
    assert_eq!(
        (again.admitted_next, again.ticket.state),
        (0, TicketState::Completed)
    );
    assert!(matches!(missing, Err(AdmissionError::UnknownTicket)));
    assert!(
        matches!(waiting, Err(AdmissionError::Conflict(_))),
        "{waiting:?}"
    );
    assert!(matches!(
        calls.heartbeat(&e, &unknown).await,
        Err(AdmissionError::UnknownTicket)
    ));
    assert!(matches!(
        calls.complete(&ev("nowhere"), &admitted[0].id).await,
        Err(AdmissionError::UnknownEvent(_))
    ));

    // A store call that panics is an internal error for its batch, never "store down"; the lane recovers.
    probe.panic.store(true, Ordering::SeqCst);
    let err = calls
        .complete(&e, &by_seq[40].id)
        .await
        .expect_err("the batch panicked");
    assert!(matches!(err, AdmissionError::Internal(_)), "{err:?}");
    assert!(!err.is_retryable());
    let err = calls.join(&e, None).await.expect_err("the batch panicked");
    assert!(matches!(err, AdmissionError::Internal(_)), "{err:?}");
    probe.panic.store(false, Ordering::SeqCst);
    let r = calls.complete(&e, &by_seq[40].id).await.expect("recovered");
    assert!(r.changed);
}

#[tokio::test]
async fn memory_coalesced_calls_answer_each_request_as_alone() {
    coalesced_calls_answer_each_request_as_alone(common::memory(Clock::Server)).await;
}

#[tokio::test]
async fn redis_coalesced_calls_answer_each_request_as_alone() {
    coalesced_calls_answer_each_request_as_alone(common::redis(Clock::Server).await).await;
}
