//! Join coalescing: concurrent joins of one event are sent to the store as one `join_many` call, with the
//! same per-visitor outcomes as one `join` each. An idle event pays nothing (the first join is sent at
//! once); under load, the joins that arrive while a call is in flight travel together in the next one,
//! so the store does one call per batch instead of one per visitor.

use std::collections::HashMap;
use std::sync::Arc;

use dispatcher_admission::{
    AdmissionError, AdmissionStore, EventId, Joined, MAX_JOIN_BATCH, UserId,
};
use parking_lot::Mutex;
use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<Joined, AdmissionError>>;

#[derive(Default)]
struct Queue {
    pending: Vec<(Option<UserId>, Reply)>,
    in_flight: usize,
}

/// The join coalescer of one process.
pub struct JoinBatcher<S> {
    store: Arc<S>,
    queues: Mutex<HashMap<EventId, Queue>>,
    max_batch: usize,
    max_in_flight: usize,
}

impl<S> std::fmt::Debug for JoinBatcher<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinBatcher")
            .field("max_batch", &self.max_batch)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

impl<S: AdmissionStore> JoinBatcher<S> {
    /// A coalescer sending at most `max_batch` joins per call and `max_in_flight` calls per event at once.
    pub fn new(store: Arc<S>, max_batch: usize, max_in_flight: usize) -> Self {
        Self {
            store,
            queues: Mutex::new(HashMap::new()),
            max_batch: max_batch.clamp(1, MAX_JOIN_BATCH),
            max_in_flight: max_in_flight.max(1),
        }
    }

    /// Joins `event`, possibly together with other visitors' joins.
    pub async fn join(
        self: &Arc<Self>,
        event: &EventId,
        user: Option<UserId>,
    ) -> Result<Joined, AdmissionError> {
        let (tx, rx) = oneshot::channel();
        let start_flusher = {
            let mut qs = self.queues.lock();
            let q = qs.entry(event.clone()).or_default();
            q.pending.push((user, tx));
            if q.in_flight < self.max_in_flight {
                q.in_flight += 1;
                true
            } else {
                false
            }
        };
        if start_flusher {
            tokio::spawn(self.clone().flush(event.clone()));
        }
        rx.await
            .unwrap_or_else(|_| Err(AdmissionError::Internal("join batch was dropped".into())))
    }

    async fn flush(self: Arc<Self>, event: EventId) {
        loop {
            // One turn for every other ready task first: requests already read from their sockets
            // join this batch instead of paying a store call each (no timer, so an idle event adds
            // no latency).
            tokio::task::yield_now().await;
            let batch: Vec<(Option<UserId>, Reply)> = {
                let mut qs = self.queues.lock();
                let Some(q) = qs.get_mut(&event) else {
                    return;
                };
                if q.pending.is_empty() {
                    q.in_flight -= 1;
                    if q.in_flight == 0 {
                        qs.remove(&event);
                    }
                    return;
                }
                let n = q.pending.len().min(self.max_batch);
                q.pending.drain(..n).collect()
            };
            let users: Vec<Option<UserId>> = batch.iter().map(|(u, _)| u.clone()).collect();
            // A panic in the store call must not leave the event without a flusher: it becomes an error
            // for this batch, and the loop goes on.
            let result = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
                self.store.join_many(&event, &users),
            ))
            .await
            .unwrap_or_else(|_| Err(AdmissionError::Internal("the join call panicked".into())));
            match result {
                Ok(outcomes) => {
                    for ((_, tx), o) in batch.into_iter().zip(outcomes) {
                        let _ = tx.send(o);
                    }
                }
                Err(e) => {
                    for (_, tx) in batch {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatcher_admission::{
        BulkReleased, Configured, DeletedEvent, EntryRecord, EventInfo, EventSettings, EventState,
        Joined, MemoryStore, MemoryStoreOptions, Release, Released, Result, Revocation, Tick,
        Ticket, TicketId,
    };

    /// The in-process store, except that a batch of joins panics (a bug in a store).
    struct PanickingJoins(MemoryStore);

    impl AdmissionStore for PanickingJoins {
        fn kind(&self) -> &'static str {
            self.0.kind()
        }
        fn shard_count(&self) -> u16 {
            self.0.shard_count()
        }
        async fn now_ms(&self) -> Result<u64> {
            self.0.now_ms().await
        }
        async fn configure(&self, e: &EventId, s: &EventSettings) -> Result<Configured> {
            self.0.configure(e, s).await
        }
        async fn set_state(&self, e: &EventId, s: EventState) -> Result<u64> {
            self.0.set_state(e, s).await
        }
        async fn event(&self, e: &EventId) -> Result<EventInfo> {
            self.0.event(e).await
        }
        async fn join(&self, e: &EventId, u: Option<&UserId>) -> Result<Joined> {
            self.0.join(e, u).await
        }
        async fn join_many(
            &self,
            _: &EventId,
            _: &[Option<UserId>],
        ) -> Result<Vec<Result<Joined>>> {
            panic!("a bug in the store's join_many")
        }
        async fn ticket(&self, e: &EventId, t: &TicketId) -> Result<Ticket> {
            self.0.ticket(e, t).await
        }
        async fn heartbeat(&self, e: &EventId, t: &TicketId) -> Result<Ticket> {
            self.0.heartbeat(e, t).await
        }
        async fn release(&self, e: &EventId, t: &TicketId, how: Release) -> Result<Released> {
            self.0.release(e, t, how).await
        }
        async fn release_many(
            &self,
            e: &EventId,
            t: &[TicketId],
            how: Release,
        ) -> Result<BulkReleased> {
            self.0.release_many(e, t, how).await
        }
        async fn promote(&self, e: &EventId) -> Result<u64> {
            self.0.promote(e).await
        }
        async fn tick(&self, e: &EventId) -> Result<Tick> {
            self.0.tick(e).await
        }
        async fn due_events(
            &self,
            shard: u16,
            now: u64,
            offset: usize,
            limit: usize,
        ) -> Result<Vec<EventId>> {
            self.0.due_events(shard, now, offset, limit).await
        }
        async fn next_due(&self) -> Result<Option<u64>> {
            self.0.next_due().await
        }
        async fn active_events(&self, shard: u16) -> Result<Vec<EventId>> {
            self.0.active_events(shard).await
        }
        async fn events(&self, shard: u16) -> Result<Vec<EventId>> {
            self.0.events(shard).await
        }
        async fn entry_records(
            &self,
            shard: u16,
            after: &str,
            count: usize,
        ) -> Result<Vec<EntryRecord>> {
            self.0.entry_records(shard, after, count).await
        }
        async fn live(&self, e: &EventId, t: &[TicketId]) -> Result<Vec<Option<Ticket>>> {
            self.0.live(e, t).await
        }
        async fn revocations(&self, e: &EventId) -> Result<Vec<Revocation>> {
            self.0.revocations(e).await
        }
        async fn delete_event(&self, e: &EventId, force: bool) -> Result<DeletedEvent> {
            self.0.delete_event(e, force).await
        }
        async fn last_entry_id(&self, shard: u16) -> Result<String> {
            self.0.last_entry_id(shard).await
        }
        async fn changed(&self) {
            self.0.changed().await
        }
    }

    #[tokio::test]
    async fn a_panicking_join_batch_is_an_internal_error_never_store_down() {
        let store = Arc::new(PanickingJoins(MemoryStore::new(
            MemoryStoreOptions::default(),
        )));
        let event = EventId::new("drop").expect("id");
        store
            .configure(&event, &EventSettings::with_capacity(5))
            .await
            .expect("configure");
        let batcher = Arc::new(JoinBatcher::new(store, 8, 1));
        let err = batcher
            .join(&event, None)
            .await
            .expect_err("the batch panicked");
        // Unavailable would let a fail-open event mint a token for a ticket that does not exist.
        assert!(matches!(err, AdmissionError::Internal(_)), "{err:?}");
        assert!(!err.is_retryable());
    }
}
