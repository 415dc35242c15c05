//! Coalescing of per-request calls: concurrent joins, releases (complete, leave, revoke), heartbeats and
//! status reads of one event ride one store call per batch (`join_many`, `release_each`, `live`,
//! `read_many`), each request keeping its own answer or error.
//!
//! An idle event pays nothing: the first request is sent at once (after one yield, so requests already
//! read from their sockets join it; no timer). Under load, the requests that arrive while a call is in
//! flight travel together in the next one, so the store does one call per batch instead of one per person.
//! A batch the store refuses as a whole (unknown event, store down) gives every request of it that error; a
//! store call that panics gives them [`AdmissionError::Internal`] (never "store down", which a fail-open
//! event would answer with a token) and the event keeps its flusher.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::error::{AdmissionError, Result};
use crate::model::{
    EventId, Joined, MAX_BULK_RELEASE, MAX_JOIN_BATCH, MAX_LIVE_BATCH, Released, Ticket, TicketId,
    UserId,
};
use crate::store::{AdmissionStore, Release};

/// Which call a lane of requests makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Call {
    Join,
    Release(Release),
    Heartbeat,
    Read,
}

impl Call {
    fn max_batch(self, join_batch: usize) -> usize {
        match self {
            Call::Join => join_batch,
            Call::Release(_) => MAX_BULK_RELEASE,
            Call::Heartbeat | Call::Read => MAX_LIVE_BATCH,
        }
    }
}

/// One waiting request: what it asks and where its answer goes.
enum Request {
    Join(Option<UserId>, oneshot::Sender<Result<Joined>>),
    Release(TicketId, oneshot::Sender<Result<Released>>),
    Read(TicketId, oneshot::Sender<Result<Ticket>>),
}

#[derive(Default)]
struct Lane {
    pending: Vec<Request>,
    in_flight: usize,
}

struct Inner<S> {
    store: Arc<S>,
    lanes: Mutex<HashMap<(EventId, Call), Lane>>,
    join_batch: usize,
    max_in_flight: usize,
}

/// The per-request call coalescer of one process. Cheap to clone.
pub struct Coalescer<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Coalescer<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Coalescer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer")
            .field("join_batch", &self.inner.join_batch)
            .field("max_in_flight", &self.inner.max_in_flight)
            .finish()
    }
}

impl<S: AdmissionStore> Coalescer<S> {
    /// A coalescer sending at most `join_batch` joins per call (releases and reads take the store's
    /// batch limits) and at most `max_in_flight` calls per event and kind at once.
    pub fn new(store: Arc<S>, join_batch: usize, max_in_flight: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                lanes: Mutex::new(HashMap::new()),
                join_batch: join_batch.clamp(1, MAX_JOIN_BATCH),
                max_in_flight: max_in_flight.max(1),
            }),
        }
    }

    /// The store it calls.
    pub fn store(&self) -> &Arc<S> {
        &self.inner.store
    }

    /// [`AdmissionStore::join`], possibly together with other visitors' joins.
    pub async fn join(&self, event: &EventId, user: Option<UserId>) -> Result<Joined> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(event, Call::Join, Request::Join(user, tx));
        answer(rx).await
    }

    /// [`AdmissionStore::release`], possibly together with other releases of the event.
    pub async fn release(
        &self,
        event: &EventId,
        ticket: &TicketId,
        how: Release,
    ) -> Result<Released> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(
            event,
            Call::Release(how),
            Request::Release(ticket.clone(), tx),
        );
        answer(rx).await
    }

    /// [`release`](Self::release) with [`Release::Complete`].
    pub async fn complete(&self, event: &EventId, ticket: &TicketId) -> Result<Released> {
        self.release(event, ticket, Release::Complete).await
    }

    /// [`AdmissionStore::heartbeat`] (read + presence), possibly together with other heartbeats.
    pub async fn heartbeat(&self, event: &EventId, ticket: &TicketId) -> Result<Ticket> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(event, Call::Heartbeat, Request::Read(ticket.clone(), tx));
        answer(rx).await
    }

    /// [`AdmissionStore::ticket`] (a status read, no presence), possibly together with other reads.
    pub async fn ticket(&self, event: &EventId, ticket: &TicketId) -> Result<Ticket> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(event, Call::Read, Request::Read(ticket.clone(), tx));
        answer(rx).await
    }

    fn enqueue(&self, event: &EventId, call: Call, req: Request) {
        let start_flusher = {
            let mut lanes = self.inner.lanes.lock();
            let lane = lanes.entry((event.clone(), call)).or_default();
            lane.pending.push(req);
            if lane.in_flight < self.inner.max_in_flight {
                lane.in_flight += 1;
                true
            } else {
                false
            }
        };
        if start_flusher {
            tokio::spawn(self.inner.clone().flush(event.clone(), call));
        }
    }
}

async fn answer<T>(rx: oneshot::Receiver<Result<T>>) -> Result<T> {
    rx.await.unwrap_or_else(|_| {
        Err(AdmissionError::Internal(
            "a coalesced call was dropped".into(),
        ))
    })
}

impl<S: AdmissionStore> Inner<S> {
    async fn flush(self: Arc<Self>, event: EventId, call: Call) {
        let key = (event, call);
        loop {
            // One turn for every other ready task first: requests already read from their sockets join
            // this batch instead of paying a store call each (no timer, so an idle event adds no latency).
            tokio::task::yield_now().await;
            let batch: Vec<Request> = {
                let mut lanes = self.lanes.lock();
                let Some(lane) = lanes.get_mut(&key) else {
                    return;
                };
                if lane.pending.is_empty() {
                    lane.in_flight -= 1;
                    if lane.in_flight == 0 {
                        lanes.remove(&key);
                    }
                    return;
                }
                let n = lane.pending.len().min(call.max_batch(self.join_batch));
                lane.pending.drain(..n).collect()
            };
            self.send(&key.0, call, batch).await;
        }
    }

    /// Makes the batch's store call and answers every request of it.
    async fn send(&self, event: &EventId, call: Call, batch: Vec<Request>) {
        // The answer channels are kept outside the call, so a panic inside it still answers them.
        let mut replies = Replies::default();
        let mut users = Vec::new();
        let mut tickets = Vec::new();
        for r in batch {
            match r {
                Request::Join(u, tx) => {
                    users.push(u);
                    replies.joins.push(tx);
                }
                Request::Release(t, tx) => {
                    tickets.push(t);
                    replies.releases.push(tx);
                }
                Request::Read(t, tx) => {
                    tickets.push(t);
                    replies.reads.push(tx);
                }
            }
        }
        // A panic in the store call must not leave the event without a flusher: it becomes an error for
        // this batch, and the loop goes on.
        let store = &self.store;
        let result = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async {
            match call {
                Call::Join => Outcome::Joins(store.join_many(event, &users).await),
                Call::Release(how) => {
                    Outcome::Releases(store.release_each(event, &tickets, how).await)
                }
                Call::Heartbeat => Outcome::Reads(store.live(event, &tickets).await),
                Call::Read => Outcome::Reads(store.read_many(event, &tickets).await),
            }
        }))
        .await;
        match result {
            Ok(outcome) => replies.answer(outcome),
            Err(_) => {
                tracing::error!(event = %event, call = ?call, "a coalesced store call panicked");
                replies.fail(AdmissionError::Internal(
                    "the coalesced store call panicked".into(),
                ));
            }
        }
    }
}

/// What a batch's store call answered.
enum Outcome {
    Joins(Result<Vec<Result<Joined>>>),
    Releases(Result<Vec<Result<Released>>>),
    Reads(Result<Vec<Option<Ticket>>>),
}

#[derive(Default)]
struct Replies {
    joins: Vec<oneshot::Sender<Result<Joined>>>,
    releases: Vec<oneshot::Sender<Result<Released>>>,
    reads: Vec<oneshot::Sender<Result<Ticket>>>,
}

impl Replies {
    fn answer(self, outcome: Outcome) {
        match outcome {
            Outcome::Joins(r) => send_each(self.joins, r, |j| j),
            Outcome::Releases(r) => send_each(self.releases, r, |x| x),
            Outcome::Reads(r) => {
                send_each(self.reads, r, |t| t.ok_or(AdmissionError::UnknownTicket))
            }
        }
    }

    fn fail(self, e: AdmissionError) {
        for tx in self.joins {
            let _ = tx.send(Err(e.clone()));
        }
        for tx in self.releases {
            let _ = tx.send(Err(e.clone()));
        }
        for tx in self.reads {
            let _ = tx.send(Err(e.clone()));
        }
    }
}

/// Sends each request its own answer, or the batch's error to all; a reply shorter than the batch is a
/// protocol error for the requests left without an answer.
fn send_each<T, A>(
    txs: Vec<oneshot::Sender<Result<A>>>,
    result: Result<Vec<T>>,
    one: impl Fn(T) -> Result<A>,
) {
    match result {
        Ok(answers) => {
            let mut answers = answers.into_iter();
            for tx in txs {
                let a = answers.next().map(&one).unwrap_or_else(|| {
                    Err(AdmissionError::Protocol(
                        "the store answered fewer requests than it was sent".into(),
                    ))
                });
                let _ = tx.send(a);
            }
        }
        Err(e) => {
            for tx in txs {
                let _ = tx.send(Err(e.clone()));
            }
        }
    }
}
