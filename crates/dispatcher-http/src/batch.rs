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
