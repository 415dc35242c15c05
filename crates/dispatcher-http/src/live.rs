//! Live updates of tickets (server-sent events): who watches which ticket, the once-a-second update pass
//! shared by all connections of an event, the tail of the entry streams that pushes a token the moment its
//! ticket is admitted, and the measured admission rate of each event that estimates are made from.
//!
//! Cost model: one store call per event and second per [`MAX_LIVE_BATCH`] watched tickets (never one per
//! connection), plus one cheap poll of the entry streams every few milliseconds per process. Several
//! connections to the same ticket share one watch channel.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dispatcher_admission::{
    AdmissionStore, EntryRecord, EventId, MAX_LIVE_BATCH, Ticket, TicketId, TicketState, UserId,
};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::telemetry;
use crate::tokens::Tokens;
use crate::view::TicketView;

/// Tuning of the live updates.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// How often every watched ticket is re-read (position, estimate, presence).
    pub interval: Duration,
    /// How often the entry streams are polled for new admissions when the last poll found none.
    pub tail_poll: Duration,
    /// The window the admission rate is measured over.
    pub rate_window: Duration,
}

impl Default for LiveOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            tail_poll: Duration::from_millis(2),
            rate_window: Duration::from_secs(60),
        }
    }
}

struct Watched {
    tx: watch::Sender<Arc<TicketView>>,
    conns: usize,
    /// Which slice of the interval re-reads this ticket.
    slice: u32,
}

/// The update pass is spread over the interval in this many slices, each re-reading its share of the
/// watched tickets: every ticket is still re-read once per interval, but thousands of connections never
/// wake at once (a burst of 10,000 stream writes would delay a token push behind it).
const SLICES: u32 = 20;

/// Admissions of one event per second over the rate window.
#[derive(Debug)]
struct RateWindow {
    started: Instant,
    /// (second since `started`, admissions in it), oldest first.
    secs: VecDeque<(u64, u64)>,
}

impl RateWindow {
    fn new(now: Instant) -> Self {
        Self {
            started: now,
            secs: VecDeque::new(),
        }
    }

    fn record(&mut self, now: Instant, n: u64, window: Duration) {
        let s = now.saturating_duration_since(self.started).as_secs();
        match self.secs.back_mut() {
            Some((last, c)) if *last == s => *c += n,
            _ => self.secs.push_back((s, n)),
        }
        self.trim(s, window);
    }

    fn trim(&mut self, now_s: u64, window: Duration) {
        let w = window.as_secs().max(1);
        while self.secs.front().is_some_and(|(s, _)| s + w <= now_s) {
            self.secs.pop_front();
        }
    }

    /// Admissions per second over the window; `None` until there is enough to measure (3 admissions
    /// over at least 2 seconds of observation).
    fn rate(&mut self, now: Instant, window: Duration) -> Option<f64> {
        let now_s = now.saturating_duration_since(self.started).as_secs();
        self.trim(now_s, window);
        let total: u64 = self.secs.iter().map(|(_, c)| c).sum();
        let observed = now.saturating_duration_since(self.started).as_secs_f64();
        let span = observed.min(window.as_secs_f64());
        if total < 3 || span < 2.0 {
            return None;
        }
        Some(total as f64 / span)
    }
}

/// The live-update hub of one process.
pub struct Hub<S> {
    store: Arc<S>,
    tokens: Arc<Tokens>,
    opts: LiveOptions,
    watched: Mutex<HashMap<EventId, HashMap<TicketId, Watched>>>,
    rates: Mutex<HashMap<String, RateWindow>>,
    connections: AtomicU64,
    tail_started: Instant,
    next_slice: AtomicU64,
}

impl<S> std::fmt::Debug for Hub<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("connections", &self.connections.load(Ordering::Relaxed))
            .finish()
    }
}

/// One live connection's view of its ticket; dropping it unsubscribes.
pub struct Subscription<S: AdmissionStore> {
    /// Changes of the ticket's view.
    pub rx: watch::Receiver<Arc<TicketView>>,
    hub: Arc<Hub<S>>,
    event: EventId,
    ticket: TicketId,
}

impl<S: AdmissionStore> std::fmt::Debug for Subscription<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("event", &self.event)
            .finish()
    }
}

impl<S: AdmissionStore> Drop for Subscription<S> {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.event, &self.ticket);
    }
}

impl<S: AdmissionStore> Hub<S> {
    /// A hub over `store`.
    pub fn new(store: Arc<S>, tokens: Arc<Tokens>, opts: LiveOptions) -> Self {
        Self {
            store,
            tokens,
            opts,
            watched: Mutex::new(HashMap::new()),
            rates: Mutex::new(HashMap::new()),
            connections: AtomicU64::new(0),
            tail_started: Instant::now(),
            next_slice: AtomicU64::new(0),
        }
    }

    /// Open live connections.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Watches a ticket whose current view is `initial`.
    pub fn subscribe(
        self: &Arc<Self>,
        event: &EventId,
        initial: TicketView,
    ) -> Option<Subscription<S>> {
        let ticket = TicketId::parse(&initial.ticket).ok()?;
        let rx = {
            let mut w = self.watched.lock();
            let tickets = w.entry(event.clone()).or_default();
            let slice =
                (self.next_slice.fetch_add(1, Ordering::Relaxed) % u64::from(SLICES)) as u32;
            let entry = tickets.entry(ticket.clone()).or_insert_with(|| Watched {
                tx: watch::Sender::new(Arc::new(initial.clone())),
                conns: 0,
                slice,
            });
            entry.conns += 1;
            entry
                .tx
                .send_if_modified(|cur| replace_if_newer(cur, initial));
            entry.tx.subscribe()
        };
        let n = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(telemetry::SSE_CONNECTIONS).set(n as f64);
        Some(Subscription {
            rx,
            hub: self.clone(),
            event: event.clone(),
            ticket,
        })
    }

    fn unsubscribe(&self, event: &EventId, ticket: &TicketId) {
        {
            let mut w = self.watched.lock();
            if let Some(tickets) = w.get_mut(event) {
                if let Some(entry) = tickets.get_mut(ticket) {
                    entry.conns -= 1;
                    if entry.conns == 0 {
                        tickets.remove(ticket);
                    }
                }
                if tickets.is_empty() {
                    w.remove(event);
                }
            }
        }
        let n = self
            .connections
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        metrics::gauge!(telemetry::SSE_CONNECTIONS).set(n as f64);
    }

    /// The measured admission rate of an event, admissions per second; `None` while unknown.
    pub fn rate(&self, event: &str) -> Option<f64> {
        let now = Instant::now();
        self.rates
            .lock()
            .get_mut(event)
            .and_then(|r| r.rate(now, self.opts.rate_window))
    }

    /// Runs the update pass and the entry-stream tail until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let pass = {
            let hub = self.clone();
            async move {
                let mut tick = tokio::time::interval(hub.opts.interval / SLICES);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut slice = 0u32;
                loop {
                    tick.tick().await;
                    hub.pass_slice(slice).await;
                    slice = (slice + 1) % SLICES;
                }
            }
        };
        let tail = self.clone().tail();
        tokio::select! {
            _ = shutdown => {}
            _ = pass => {}
            _ = tail => {}
        }
    }

    /// The update pass over one slice of the watched tickets: re-reads them (one store call per event and
    /// batch), records their presence, and pushes the views that changed.
    async fn pass_slice(&self, slice: u32) {
        let started = Instant::now();
        let snapshot: Vec<(EventId, Vec<TicketId>)> = self
            .watched
            .lock()
            .iter()
            .map(|(e, t)| {
                (
                    e.clone(),
                    t.iter()
                        .filter(|(_, w)| w.slice == slice)
                        .map(|(id, _)| id.clone())
                        .collect::<Vec<_>>(),
                )
            })
            .filter(|(_, t)| !t.is_empty())
            .collect();
        futures_util::stream::iter(snapshot)
            .for_each_concurrent(16, |(event, tickets)| async move {
                let rate = self.rate(event.as_str());
                for chunk in tickets.chunks(MAX_LIVE_BATCH) {
                    match self.store.live(&event, chunk).await {
                        Ok(views) => {
                            for (id, t) in chunk.iter().zip(views) {
                                let Some(t) = t else {
                                    // Purged or gone: end its streams (dropping the sender ends them).
                                    self.forget(&event, Some(id));
                                    continue;
                                };
                                // An admitted ticket that is still admitted shows nothing new: skip
                                // re-minting its token.
                                if t.state == TicketState::Admitted
                                    && self.current_state(&event, id) == Some(TicketState::Admitted)
                                {
                                    continue;
                                }
                                let v = TicketView::of(&event, &t, &self.tokens, rate);
                                self.push(&event, id, v);
                            }
                        }
                        Err(dispatcher_admission::AdmissionError::UnknownEvent(_)) => {
                            // Deleted: every stream of the event ends.
                            self.forget(&event, None);
                        }
                        Err(e) => {
                            metrics::counter!(telemetry::REDIS_ERRORS_TOTAL, "op" => "live")
                                .increment(1);
                            tracing::warn!(event = %event, error = %e, "live update pass failed");
                        }
                    }
                }
            })
            .await;
        metrics::histogram!(telemetry::LIVE_PASS_DURATION).record(started.elapsed().as_secs_f64());
    }

    /// Drops the watch of a ticket (or of every ticket of the event): its streams end. The connections'
    /// subscriptions still count themselves out when dropped.
    fn forget(&self, event: &EventId, ticket: Option<&TicketId>) {
        let mut w = self.watched.lock();
        match ticket {
            Some(t) => {
                if let Some(tickets) = w.get_mut(event) {
                    tickets.remove(t);
                }
            }
            None => {
                w.remove(event);
            }
        }
    }

    fn current_state(&self, event: &EventId, ticket: &TicketId) -> Option<TicketState> {
        let w = self.watched.lock();
        w.get(event)
            .and_then(|t| t.get(ticket))
            .map(|e| e.tx.borrow().state)
    }

    fn push(&self, event: &EventId, ticket: &TicketId, v: TicketView) {
        let w = self.watched.lock();
        if let Some(entry) = w.get(event).and_then(|t| t.get(ticket)) {
            let kind = v.kind();
            if entry.tx.send_if_modified(|cur| replace_if_newer(cur, v)) {
                metrics::counter!(telemetry::LIVE_UPDATES_TOTAL, "kind" => kind).increment(1);
            }
        }
    }

    /// Follows every shard's entry stream from its newest record: counts admissions per event (the rate
    /// estimates come from) and pushes the token of a watched ticket the moment it is admitted.
    async fn tail(self: Arc<Self>) {
        let shards = self.store.shard_count();
        let mut cursors: Vec<String> = Vec::with_capacity(shards as usize);
        for shard in 0..shards {
            loop {
                match self.store.last_entry_id(shard).await {
                    Ok(id) => {
                        cursors.push(id);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(shard, error = %e, "entry tail cannot start; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
        let mut backoff = self.opts.tail_poll;
        loop {
            let reads = futures_util::future::join_all(
                cursors
                    .iter()
                    .enumerate()
                    .map(|(shard, after)| self.store.entry_records(shard as u16, after, 1_000)),
            )
            .await;
            let mut found = 0usize;
            let mut failed = false;
            for (shard, r) in reads.into_iter().enumerate() {
                match r {
                    Ok(records) => {
                        if let Some(last) = records.last() {
                            cursors[shard] = last.entry_id.clone();
                        }
                        found += records.len();
                        self.on_admissions(&records);
                    }
                    Err(e) => {
                        failed = true;
                        metrics::counter!(telemetry::REDIS_ERRORS_TOTAL, "op" => "entry_tail")
                            .increment(1);
                        tracing::debug!(shard, error = %e, "entry tail read failed");
                    }
                }
            }
            if failed {
                backoff = (backoff * 2).clamp(self.opts.tail_poll, Duration::from_secs(1));
                tokio::time::sleep(backoff).await;
            } else {
                backoff = self.opts.tail_poll;
                if found == 0 {
                    tokio::time::sleep(self.opts.tail_poll).await;
                }
            }
        }
    }

    fn on_admissions(&self, records: &[EntryRecord]) {
        if records.is_empty() {
            return;
        }
        let now = Instant::now();
        {
            let mut rates = self.rates.lock();
            for r in records {
                rates
                    .entry(r.event.clone())
                    .or_insert_with(|| RateWindow::new(self.tail_started.min(now)))
                    .record(now, 1, self.opts.rate_window);
            }
            if rates.len() > 10_000 {
                let w = self.opts.rate_window;
                // Forget events with no admission inside the window.
                rates.retain(|_, r| {
                    r.trim(now.saturating_duration_since(r.started).as_secs(), w);
                    !r.secs.is_empty()
                });
            }
        }
        for r in records {
            let Ok(event) = EventId::new(r.event.clone()) else {
                continue;
            };
            let Ok(ticket) = TicketId::parse(&r.ticket) else {
                continue;
            };
            let joined_at_ms = {
                let w = self.watched.lock();
                match w.get(&event).and_then(|t| t.get(&ticket)) {
                    Some(entry) => entry.tx.borrow().joined_at_ms,
                    None => continue,
                }
            };
            let t = Ticket {
                id: ticket.clone(),
                seq: r.seq,
                state: TicketState::Admitted,
                user: UserId::new(r.user.clone()).ok(),
                joined_at_ms,
                admitted_at_ms: Some(r.admitted_at_ms),
                expires_at_ms: Some(r.expires_at_ms),
                ended_at_ms: None,
                ahead: None,
            };
            let v = TicketView::of(&event, &t, &self.tokens, None);
            if r.admitted_at_ms >= joined_at_ms {
                metrics::histogram!(telemetry::QUEUE_WAIT)
                    .record((r.admitted_at_ms - joined_at_ms) as f64 / 1000.0);
            }
            self.push(&event, &ticket, v);
        }
    }
}

/// Whether `next` should replace `cur`: states only move forward (waiting → admitted → final), and within
/// a state a change of what the visitor sees counts. A late pass result never undoes an admission the tail
/// already pushed.
fn replace_if_newer(cur: &mut Arc<TicketView>, next: TicketView) -> bool {
    let rank = |s: TicketState| match s {
        TicketState::PreQueued => 0,
        TicketState::Waiting => 1,
        TicketState::Admitted => 2,
        _ => 3,
    };
    if rank(next.state) < rank(cur.state) {
        return false;
    }
    if rank(next.state) == rank(cur.state)
        && next.state == cur.state
        && next.ahead == cur.ahead
        && next.estimated_wait_s == cur.estimated_wait_s
        && next.token == cur.token
    {
        return false;
    }
    *cur = Arc::new(next);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_unknown_until_measured_then_averages_the_window() {
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        let mut r = RateWindow::new(t0);
        assert_eq!(r.rate(t0, w), None);
        r.record(t0, 2, w);
        assert_eq!(
            r.rate(t0 + Duration::from_secs(3), w),
            None,
            "two admissions are not enough"
        );
        r.record(t0 + Duration::from_secs(3), 10, w);
        let rate = r.rate(t0 + Duration::from_secs(4), w).expect("measured");
        assert!((rate - 3.0).abs() < 1e-9, "12 admissions over 4 s: {rate}");
        // After the window, old admissions no longer count.
        assert_eq!(r.rate(t0 + Duration::from_secs(30), w), None);
    }

    fn view(state: TicketState, ahead: Option<u64>) -> TicketView {
        TicketView {
            event: "e".into(),
            ticket: "0".repeat(32),
            state,
            seq: 1,
            user: None,
            position: ahead.map(|a| a + 1),
            ahead,
            estimated_wait_s: None,
            joined_at_ms: 1,
            admitted_at_ms: None,
            expires_at_ms: None,
            ended_at_ms: None,
            token: None,
            fail_open: false,
        }
    }

    #[test]
    fn views_only_move_forward() {
        let mut cur = Arc::new(view(TicketState::Waiting, Some(5)));
        assert!(
            !replace_if_newer(&mut cur, view(TicketState::Waiting, Some(5))),
            "unchanged"
        );
        assert!(replace_if_newer(
            &mut cur,
            view(TicketState::Waiting, Some(3))
        ));
        assert!(replace_if_newer(
            &mut cur,
            view(TicketState::Admitted, None)
        ));
        assert!(
            !replace_if_newer(&mut cur, view(TicketState::Waiting, Some(0))),
            "a stale pass never undoes an admission"
        );
        assert!(replace_if_newer(&mut cur, view(TicketState::Expired, None)));
        assert_eq!(cur.state, TicketState::Expired);
    }
}
