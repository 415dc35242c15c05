//! The dispatcher side of push delivery. [`run`] keeps links to the configured consumers, competes for
//! partition leases (a fair share each, any partition left free), and runs one task per held partition:
//! reclaim what earlier epochs left pending, read new entries within the consumers' credit, deliver,
//! track each message by id with a deadline, acknowledge, redeliver, dead-letter. Every Redis write of a
//! partition is fenced by its lease token; a watchdog on the monotonic clock stops a partition before its
//! lease can run out when renewals fail.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dispatcher_wire::frame::{self, Delivery, Frame, MessageId};
use hdrhistogram::Histogram;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

use crate::error::{DeliveryError, Result};
use crate::lease::{LeaseTiming, usable};
use crate::link::{self, LinkContext, LinkHandle, PartitionEvent, Routes};
use crate::stats::Stats;
use crate::store::{DeadLetter, Entry, Reader, Store};
use crate::telemetry;

/// How a leader runs.
#[derive(Debug, Clone)]
pub struct LeaderOptions {
    /// This instance's id: the lease owner and the consumer name in the group.
    pub node_id: String,
    /// WebSocket URLs of the consumers to dial (`ws://host:port/`).
    pub consumers: Vec<String>,
    /// The shared secret of the hello/auth exchange.
    pub secret: Vec<u8>,
    pub lease: LeaseTiming,
    /// How often to look for free partitions and rebalance.
    pub acquire_every: Duration,
    /// A delivery not acknowledged within this goes to another consumer.
    pub ack_timeout: Duration,
    /// After this many deliveries a message goes to the dead-letter stream.
    pub max_attempts: u16,
    /// Entries read per call.
    pub read_batch: usize,
    /// After a read that found only a few entries, wait this long before the next one, so that under
    /// load each Redis call carries a batch (fewer, larger calls) at the cost of this much latency.
    pub read_linger: Duration,
    /// Messages in flight per partition at most (bounds memory).
    pub max_in_flight: usize,
    /// Approximate cap of each dead-letter stream (0 = none).
    pub dead_maxlen: u64,
    pub max_payload: u32,
    /// How long a partition given up (rebalance, shutdown) waits for its in-flight acks.
    pub drain_timeout: Duration,
    /// Redial backoff.
    pub redial_base: Duration,
    pub redial_max: Duration,
}

impl LeaderOptions {
    /// Defaults for everything but the consumers and the secret.
    pub fn new(consumers: Vec<String>, secret: Vec<u8>) -> Self {
        LeaderOptions {
            node_id: format!("d-{:016x}", rand::random::<u64>()),
            consumers,
            secret,
            lease: LeaseTiming {
                ttl: Duration::from_millis(1000),
                margin: Duration::from_millis(200),
            },
            acquire_every: Duration::from_millis(150),
            ack_timeout: Duration::from_secs(30),
            max_attempts: 5,
            read_batch: 256,
            read_linger: Duration::from_millis(2),
            max_in_flight: 8192,
            dead_maxlen: 1_000_000,
            max_payload: frame::DEFAULT_MAX_PAYLOAD,
            drain_timeout: Duration::from_secs(2),
            redial_base: Duration::from_millis(50),
            redial_max: Duration::from_secs(2),
        }
    }

    /// Checks the options.
    pub fn validate(&self) -> Result<()> {
        if self.node_id.is_empty() || self.node_id.len() > 200 || self.node_id.contains('|') {
            return Err(DeliveryError::invalid(
                "node id: 1..=200 characters, no '|'",
            ));
        }
        if self.consumers.is_empty() {
            return Err(DeliveryError::invalid("no consumers to dial"));
        }
        for c in &self.consumers {
            if c.starts_with("wss://") {
                return Err(DeliveryError::invalid(format!(
                    "consumer {c:?}: wss:// is not supported (links are plain ws://; put TLS in front, \
                     e.g. stunnel or a service mesh)"
                )));
            }
            if !c.starts_with("ws://") {
                return Err(DeliveryError::invalid(format!(
                    "consumer {c:?}: not a ws:// URL"
                )));
            }
        }
        if self.secret.len() < 16 {
            return Err(DeliveryError::invalid(
                "the shared secret must be at least 16 bytes",
            ));
        }
        if self.max_attempts == 0 || self.read_batch == 0 || self.max_in_flight == 0 {
            return Err(DeliveryError::invalid(
                "max_attempts, read_batch and max_in_flight must be positive",
            ));
        }
        if LeaseTiming::new(self.lease.ttl, self.lease.margin).is_none() {
            return Err(DeliveryError::invalid(
                "lease margin must be positive and below the TTL",
            ));
        }
        Ok(())
    }
}

/// Runs a leader until `shutdown` turns true, then drains and releases its partitions.
pub async fn run(
    store: Store,
    redis_url: String,
    opts: LeaderOptions,
    stats: Arc<Stats>,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    opts.validate()?;
    let opts = Arc::new(opts);
    let routes: Routes = Arc::default();
    let credit = Arc::new(Notify::new());
    let ctx = LinkContext {
        node_id: opts.node_id.clone(),
        secret: Arc::new(opts.secret.clone()),
        routes: routes.clone(),
        credit: credit.clone(),
        max_payload: opts.max_payload,
        backoff_base: opts.redial_base,
        backoff_max: opts.redial_max,
    };
    let links: Arc<Vec<Arc<LinkHandle>>> = Arc::new(
        opts.consumers
            .iter()
            .enumerate()
            .map(|(i, u)| Arc::new(LinkHandle::new(i, u.clone())))
            .collect(),
    );
    let mut tasks = JoinSet::new();
    for l in links.iter() {
        tasks.spawn(link::run(l.clone(), ctx.clone(), shutdown.clone()));
    }
    let client = redis::Client::open(redis_url.as_str())
        .map_err(|e| DeliveryError::invalid(format!("bad Redis URL: {e}")))?;
    let shared = Shared {
        store,
        client,
        opts: opts.clone(),
        links,
        routes,
        credit,
        stats,
    };
    let r = manage(Arc::new(shared), shutdown).await;
    while tasks.join_next().await.is_some() {}
    r
}

struct Shared {
    store: Store,
    client: redis::Client,
    opts: Arc<LeaderOptions>,
    links: Arc<Vec<Arc<LinkHandle>>>,
    routes: Routes,
    credit: Arc<Notify>,
    stats: Arc<Stats>,
}

struct Held {
    epoch: u64,
    stop: watch::Sender<bool>,
    acquired: Instant,
}

/// Why a partition task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// Given up on purpose; the lease is released.
    Released,
    /// The lease ran out, was taken over or a write was fenced.
    Lost,
}

/// The fair share of `partitions` among `members` live instances.
pub fn fair_share(partitions: u16, members: u64) -> u16 {
    let m = members.max(1);
    u16::try_from(u64::from(partitions).div_ceil(m)).unwrap_or(partitions)
}

async fn manage(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    let keys = shared.store.keys().clone();
    let n = keys.partitions;
    let mut held: HashMap<u16, Held> = HashMap::new();
    let mut free_before: HashSet<u16> = HashSet::new();
    let mut tasks: JoinSet<(u16, u64, Exit)> = JoinSet::new();
    let offset = keys.partition_of(shared.opts.node_id.as_bytes());
    let mut conn = shared.store.connection();
    let members_key = keys.members_key();
    let stale_ms = shared.opts.lease.ttl.as_millis() as u64 * 3;
    // How long an excess over the fair share must last before a partition is given back.
    let settle = shared.opts.lease.ttl * 2;
    let mut over_share_since: Option<Instant> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        // Heartbeat, and how many instances share the work.
        let now = crate::stats::unix_ms();
        let members: redis::RedisResult<u64> = async {
            redis::pipe()
                .zadd(&members_key, &shared.opts.node_id, now)
                .ignore()
                .zrembyscore(&members_key, "-inf", now.saturating_sub(stale_ms))
                .ignore()
                .zcard(&members_key)
                .query_async::<(u64,)>(&mut conn)
                .await
                .map(|(c,)| c)
        }
        .await;
        match members {
            Ok(m) => {
                let share = fair_share(n, m);
                let mut free_now = HashSet::new();
                for i in 0..n {
                    let p = (offset + i) % n;
                    if held.contains_key(&p) {
                        continue;
                    }
                    let owned = held.len() as u16;
                    let holder = match shared.store.holder(p).await {
                        Ok(h) => h,
                        Err(_) => continue,
                    };
                    if holder.is_some() {
                        continue;
                    }
                    free_now.insert(p);
                    // Up to our share; beyond it, a partition nobody took since the last round.
                    if owned >= share && !free_before.contains(&p) {
                        continue;
                    }
                    match shared
                        .store
                        .acquire(
                            p,
                            &shared.opts.node_id,
                            shared.opts.lease.ttl.as_millis() as u64,
                        )
                        .await
                    {
                        Ok(Some(epoch)) => {
                            let sent = Instant::now();
                            free_now.remove(&p);
                            let (stop_tx, stop_rx) = watch::channel(false);
                            let shared2 = shared.clone();
                            tasks.spawn(async move {
                                let exit = partition(shared2, p, epoch, sent, stop_rx).await;
                                (p, epoch, exit)
                            });
                            held.insert(
                                p,
                                Held {
                                    epoch,
                                    stop: stop_tx,
                                    acquired: Instant::now(),
                                },
                            );
                            metrics::counter!(telemetry::LEASES_ACQUIRED).increment(1);
                            shared.stats.event("acquired", p, epoch);
                            tracing::info!(partition = p, epoch, "lease acquired");
                        }
                        Ok(None) => {}
                        Err(e) => tracing::debug!(partition = p, error = %e, "acquire failed"),
                    }
                }
                free_before = free_now;
                // Above our share (an instance joined): give one partition back per round, once the
                // excess has lasted a while (so a rescue of orphans does not flap), the newest first.
                let active: Vec<(u16, Instant)> = held
                    .iter()
                    .filter(|(_, h)| !*h.stop.borrow())
                    .map(|(p, h)| (*p, h.acquired))
                    .collect();
                if active.len() > usize::from(share) {
                    let since = *over_share_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= settle
                        && let Some((p, _)) = active
                            .iter()
                            .filter(|(_, at)| at.elapsed() >= settle)
                            .max_by_key(|(_, at)| *at)
                        && let Some(h) = held.get(p)
                    {
                        tracing::info!(partition = p, share, "giving a partition back for balance");
                        let _ = h.stop.send(true);
                        over_share_since = None;
                    }
                } else {
                    over_share_since = None;
                }
            }
            Err(e) => tracing::warn!(error = %e, "membership heartbeat failed"),
        }
        metrics::gauge!(telemetry::LEASES_HELD).set(held.len() as f64);
        let jitter = shared
            .opts
            .acquire_every
            .mul_f64(0.8 + 0.4 * rand::random::<f64>());
        let sleep = tokio::time::sleep(jitter);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                _ = shutdown.changed() => break,
                Some(done) = tasks.join_next() => {
                    if let Ok((p, epoch, exit)) = done
                        && held.get(&p).is_some_and(|h| h.epoch == epoch)
                    {
                        held.remove(&p);
                        if exit == Exit::Lost {
                            metrics::counter!(telemetry::LEASES_LOST).increment(1);
                        }
                    }
                }
            }
        }
    }
    // Shutdown: every partition drains and releases its lease.
    for h in held.values() {
        let _ = h.stop.send(true);
    }
    while tasks.join_next().await.is_some() {}
    let _: redis::RedisResult<()> = redis::cmd("ZREM")
        .arg(&members_key)
        .arg(&shared.opts.node_id)
        .query_async(&mut conn)
        .await;
    metrics::gauge!(telemetry::LEASES_HELD).set(0.0);
    Ok(())
}

/// Bytes of a Deliver payload before the body (partition, epoch, attempt, id).
const DELIVER_FIXED_BYTES: usize = 28;

/// A message waiting to be (re)delivered.
struct Ready {
    id: MessageId,
    body: Arc<[u8]>,
    attempt: u16,
    /// The link it last went to, avoided when another has credit.
    avoid: Option<usize>,
}

struct InFlight {
    body: Arc<[u8]>,
    attempt: u16,
    link: usize,
    generation: u64,
    sent: Instant,
    deadline: Instant,
}

/// Nanoseconds since `base`, for the watchdog shared with the renewer.
fn nanos_since(base: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(base).as_nanos() as u64
}

async fn partition(
    shared: Arc<Shared>,
    p: u16,
    epoch: u64,
    acquired_sent: Instant,
    mut stop: watch::Receiver<bool>,
) -> Exit {
    let opts = shared.opts.clone();
    let token = format!("{}|{}", opts.node_id, epoch);
    let base = Instant::now();
    let until = Arc::new(AtomicU64::new(nanos_since(
        base,
        opts.lease.usable_until(acquired_sent),
    )));
    let lost = Arc::new(AtomicBool::new(false));
    let (tx, mut events) = mpsc::unbounded_channel();
    if let Ok(mut r) = shared.routes.write() {
        r.insert(p, tx);
    }
    // Renewer: compare-and-extend four times per TTL; the watchdog deadline moves only on success.
    let renewer = {
        let store = shared.store.clone();
        let token = token.clone();
        let until = until.clone();
        let lost = lost.clone();
        let lease = opts.lease;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease.renew_every());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let sent = Instant::now();
                match store.renew(p, &token, lease.ttl.as_millis() as u64).await {
                    Ok(true) => until.store(
                        nanos_since(base, lease.usable_until(sent)),
                        Ordering::Release,
                    ),
                    Ok(false) => {
                        lost.store(true, Ordering::Release);
                        return;
                    }
                    Err(e) => tracing::warn!(partition = p, error = %e, "lease renewal failed"),
                }
            }
        })
    };
    let mut part = PartitionState {
        shared: shared.clone(),
        p,
        epoch,
        token: token.clone(),
        base,
        until,
        lost,
        ready: VecDeque::new(),
        in_flight: HashMap::new(),
        acks: Vec::new(),
        retries: Vec::new(),
        dead: Vec::new(),
        rr: usize::from(p),
        first_ack: false,
        last_read_empty: false,
        next_read: Instant::now(),
        last_id: None,
        local_ack: Stats::local_histogram(),
        local_e2e: Stats::local_histogram(),
        last_merge: Instant::now(),
        ack_seconds: metrics::histogram!(telemetry::ACK_LATENCY),
    };
    let exit = match part.run(&mut events, &mut stop).await {
        Ok(exit) => exit,
        Err(DeliveryError::Fenced(msg)) => {
            tracing::warn!(partition = p, epoch, reason = %msg, "fenced: this lease is gone");
            Exit::Lost
        }
        Err(e) => {
            tracing::warn!(partition = p, epoch, error = %e, "partition stopped");
            Exit::Lost
        }
    };
    renewer.abort();
    if let Ok(mut r) = shared.routes.write() {
        r.remove(&p);
    }
    part.merge_stats();
    if exit == Exit::Released {
        let _ = shared.store.release(p, &token).await;
        tracing::info!(partition = p, epoch, "lease released");
    } else {
        tracing::warn!(partition = p, epoch, "lease lost; delivery for it stopped");
    }
    shared.stats.event(
        if exit == Exit::Released {
            "released"
        } else {
            "lost"
        },
        p,
        epoch,
    );
    exit
}

struct PartitionState {
    shared: Arc<Shared>,
    p: u16,
    epoch: u64,
    token: String,
    base: Instant,
    until: Arc<AtomicU64>,
    lost: Arc<AtomicBool>,
    ready: VecDeque<Ready>,
    in_flight: HashMap<MessageId, InFlight>,
    acks: Vec<MessageId>,
    retries: Vec<(MessageId, u16)>,
    dead: Vec<(MessageId, u16, String, Arc<[u8]>)>,
    rr: usize,
    first_ack: bool,
    last_read_empty: bool,
    /// No read before this (the linger after a small read).
    next_read: Instant,
    last_id: Option<MessageId>,
    local_ack: Histogram<u64>,
    local_e2e: Histogram<u64>,
    last_merge: Instant,
    ack_seconds: metrics::Histogram,
}

impl PartitionState {
    /// The watchdog: may this process still act on the lease?
    fn usable(&self) -> bool {
        if self.lost.load(Ordering::Acquire) {
            return false;
        }
        let until = self.base + Duration::from_nanos(self.until.load(Ordering::Acquire));
        usable(until, Instant::now())
    }

    fn merge_stats(&mut self) {
        self.shared.stats.merge(&self.local_ack, &self.local_e2e);
        self.local_ack.reset();
        self.local_e2e.reset();
        self.last_merge = Instant::now();
    }

    async fn run(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<PartitionEvent>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Exit> {
        self.reclaim().await?;
        let mut conn = self
            .shared
            .client
            .get_multiplexed_async_connection()
            .await?;
        let mut reader = Reader::open(&self.shared.client, &self.shared.store).await?;
        let mut drain_deadline: Option<Instant> = None;
        let mut next_deadline_scan = Instant::now();
        loop {
            if !self.usable() {
                return Ok(Exit::Lost);
            }
            let stopping = *stop.borrow();
            if stopping && drain_deadline.is_none() {
                drain_deadline = Some(Instant::now() + self.shared.opts.drain_timeout);
                // Undelivered messages stay pending for the next owner.
                self.ready.clear();
            }
            let mut busy = false;
            while let Ok(ev) = events.try_recv() {
                self.on_event(ev);
                busy = true;
            }
            let now = Instant::now();
            if now >= next_deadline_scan {
                self.scan_deadlines(now);
                next_deadline_scan = now + Duration::from_millis(20);
            }
            self.flush().await?;
            if let Some(d) = drain_deadline
                && (self.in_flight.is_empty() || Instant::now() >= d)
            {
                return Ok(Exit::Released);
            }
            if !stopping {
                self.dispatch();
                if self.read_more(&mut reader).await? {
                    busy = true;
                    self.dispatch();
                }
            }
            if self.last_merge.elapsed() > Duration::from_millis(250) {
                self.merge_stats();
            }
            if busy {
                continue;
            }
            // Idle: wait for an event, credit, new entries or the next deadline scan.
            let can_read = !stopping && self.last_read_empty && self.credit_available() > 0;
            let after = self
                .last_id
                .map(|id| id.to_string())
                .unwrap_or_else(|| "$".to_owned());
            let stream = self.shared.store.keys().stream_key(self.p);
            let shared = self.shared.clone();
            tokio::select! {
                ev = events.recv() => {
                    if let Some(ev) = ev { self.on_event(ev); }
                }
                _ = shared.credit.notified() => {}
                _ = async {
                    let _: redis::RedisResult<redis::Value> = redis::cmd("XREAD")
                        .arg("COUNT").arg(1).arg("BLOCK").arg(100)
                        .arg("STREAMS").arg(&stream).arg(&after)
                        .query_async(&mut conn).await;
                }, if can_read => { self.last_read_empty = false; }
                _ = tokio::time::sleep(if can_read {
                    Duration::from_millis(150)
                } else {
                    self.next_read
                        .saturating_duration_since(Instant::now())
                        .clamp(Duration::from_micros(200), Duration::from_millis(20))
                }) => {
                    self.last_read_empty = false;
                }
                _ = stop.changed() => {}
            }
        }
    }

    fn credit_available(&self) -> i64 {
        self.shared
            .links
            .iter()
            .filter(|l| l.is_up())
            .map(|l| l.credit().max(0))
            .sum()
    }

    /// Takes over everything earlier epochs left pending: it is delivered again first, as the next
    /// attempt after the deliveries Redis counted.
    async fn reclaim(&mut self) -> Result<()> {
        let store = self.shared.store.clone();
        let mut start = "-".to_owned();
        let mut reclaimed = 0usize;
        loop {
            let (next, entries) = store
                .reclaim(self.p, &self.token, &self.shared.opts.node_id, &start, 512)
                .await?;
            for (e, count) in entries {
                reclaimed += 1;
                self.enqueue(e, count.saturating_add(1), None);
            }
            match next {
                Some(n) => start = n,
                None => break,
            }
        }
        if reclaimed > 0 {
            tracing::info!(
                partition = self.p,
                epoch = self.epoch,
                reclaimed,
                "reclaimed pending messages"
            );
        }
        Ok(())
    }

    fn enqueue(&mut self, e: Entry, attempt: u16, avoid: Option<usize>) {
        if attempt > self.shared.opts.max_attempts {
            self.dead.push((
                e.id,
                attempt - 1,
                "too many attempts".to_owned(),
                e.body.into(),
            ));
            return;
        }
        self.ready.push_back(Ready {
            id: e.id,
            body: e.body.into(),
            attempt,
            avoid,
        });
    }

    /// Puts an in-flight message back for another consumer (or the dead letters).
    fn requeue(&mut self, id: MessageId, reason: &str) {
        let Some(f) = self.in_flight.remove(&id) else {
            return;
        };
        let attempt = f.attempt.saturating_add(1);
        metrics::counter!(telemetry::REDELIVERED, "reason" => reason.to_owned()).increment(1);
        if attempt > self.shared.opts.max_attempts {
            self.dead.push((id, f.attempt, reason.to_owned(), f.body));
            return;
        }
        self.shared
            .stats
            .redelivered
            .fetch_add(1, Ordering::Relaxed);
        self.retries.push((id, attempt));
        self.ready.push_front(Ready {
            id,
            body: f.body,
            attempt,
            avoid: Some(f.link),
        });
    }

    fn on_event(&mut self, ev: PartitionEvent) {
        match ev {
            PartitionEvent::Acked { epoch, ids } => {
                if epoch != self.epoch {
                    return;
                }
                let now = Instant::now();
                let now_ms = crate::stats::unix_ms();
                for id in ids {
                    if let Some(f) = self.in_flight.remove(&id) {
                        let took = now.saturating_duration_since(f.sent);
                        self.ack_seconds.record(took.as_secs_f64());
                        let us = took.as_micros() as u64;
                        let _ = self.local_ack.record(us.max(1));
                        let e2e = now_ms.saturating_sub(id.ms).saturating_mul(1000);
                        let _ = self.local_e2e.record(e2e.max(1));
                        self.acks.push(id);
                    }
                }
            }
            PartitionEvent::Nacked {
                epoch,
                id,
                reject,
                reason,
            } => {
                if epoch != self.epoch {
                    return;
                }
                if reject {
                    if let Some(f) = self.in_flight.remove(&id) {
                        self.dead
                            .push((id, f.attempt, format!("rejected: {reason}"), f.body));
                    }
                } else {
                    self.requeue(id, "nack");
                }
            }
            PartitionEvent::LinkDown { link, generation } => {
                let lost: Vec<MessageId> = self
                    .in_flight
                    .iter()
                    .filter(|(_, f)| f.link == link && f.generation <= generation)
                    .map(|(id, _)| *id)
                    .collect();
                for id in lost {
                    self.requeue(id, "consumer_lost");
                }
            }
        }
    }

    fn scan_deadlines(&mut self, now: Instant) {
        let expired: Vec<MessageId> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.requeue(id, "ack_timeout");
        }
    }

    /// Writes acks, redelivery counts and dead letters to Redis (each a fenced call).
    async fn flush(&mut self) -> Result<()> {
        let store = self.shared.store.clone();
        if !self.acks.is_empty() {
            let acks = std::mem::take(&mut self.acks);
            store.ack(self.p, &self.token, &acks).await?;
            self.shared
                .stats
                .acked
                .fetch_add(acks.len() as u64, Ordering::Relaxed);
            metrics::counter!(telemetry::ACKED).increment(acks.len() as u64);
            if !self.first_ack {
                self.first_ack = true;
                self.shared.stats.event("first_ack", self.p, self.epoch);
            }
        }
        if !self.retries.is_empty() {
            let retries = std::mem::take(&mut self.retries);
            store
                .retry(self.p, &self.token, &self.shared.opts.node_id, &retries)
                .await?;
        }
        if !self.dead.is_empty() {
            let dead = std::mem::take(&mut self.dead);
            let letters: Vec<DeadLetter<'_>> = dead
                .iter()
                .map(|(id, attempts, reason, body)| DeadLetter {
                    id: *id,
                    attempts: *attempts,
                    reason,
                    body,
                })
                .collect();
            let n = store
                .dead(self.p, &self.token, self.shared.opts.dead_maxlen, &letters)
                .await?;
            self.shared.stats.dead.fetch_add(n, Ordering::Relaxed);
            metrics::counter!(telemetry::DEAD).increment(n);
            for (id, attempts, reason, _) in &dead {
                tracing::warn!(partition = self.p, id = %id, attempts, reason = %reason, "message dead-lettered");
            }
        }
        Ok(())
    }

    /// Sends ready messages to consumers with credit, several frames per WebSocket message.
    fn dispatch(&mut self) {
        // The watchdog again: an await just before may have outlasted the lease.
        if !self.usable() {
            return;
        }
        let links = self.shared.links.clone();
        let nlinks = links.len();
        let max_in_flight = self.shared.opts.max_in_flight;
        let mut buf = Vec::new();
        while !self.ready.is_empty() && self.in_flight.len() < max_in_flight {
            // The next link with credit, round robin, avoiding the one a redelivery came back from.
            let avoid = self.ready.front().and_then(|r| r.avoid);
            let mut pick = None;
            for pass in 0..2 {
                for k in 0..nlinks {
                    let i = (self.rr + k) % nlinks;
                    if pass == 0 && Some(i) == avoid && nlinks > 1 {
                        continue;
                    }
                    let l = &links[i];
                    if !l.is_up() {
                        continue;
                    }
                    let want = self
                        .ready
                        .len()
                        .min(64)
                        .min(max_in_flight - self.in_flight.len())
                        as i64;
                    if let Some((n, generation)) = l.take_credit(want) {
                        pick = Some((i, n, generation));
                        break;
                    }
                }
                if pick.is_some() {
                    break;
                }
            }
            let Some((i, n, generation)) = pick else {
                break;
            };
            self.rr = (i + 1) % nlinks;
            buf.clear();
            let now = Instant::now();
            let deadline = now + self.shared.opts.ack_timeout;
            let mut sent: Vec<Ready> = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let Some(r) = self.ready.pop_front() else {
                    break;
                };
                if r.body.len() + DELIVER_FIXED_BYTES > self.shared.opts.max_payload as usize {
                    // No consumer would take the frame: it can never be delivered.
                    self.dead.push((
                        r.id,
                        r.attempt.saturating_sub(1),
                        format!(
                            "undeliverable: body of {} bytes exceeds the {}-byte frame limit",
                            r.body.len(),
                            self.shared.opts.max_payload
                        ),
                        r.body.clone(),
                    ));
                    continue;
                }
                let f = Frame::Deliver(Delivery {
                    partition: self.p,
                    epoch: self.epoch,
                    attempt: r.attempt,
                    id: r.id,
                    body: &r.body,
                });
                if let Err(e) = frame::encode(&f, &mut buf) {
                    // Too big for a frame: it can never be delivered.
                    self.dead.push((
                        r.id,
                        r.attempt,
                        format!("undeliverable: {e}"),
                        r.body.clone(),
                    ));
                    continue;
                }
                sent.push(r);
            }
            let unused = n - sent.len() as i64;
            links[i].return_credit(unused, generation);
            if sent.is_empty() {
                continue;
            }
            if links[i].send(generation, std::mem::take(&mut buf)) {
                let count = sent.len() as u64;
                for r in sent {
                    if r.attempt > 1 {
                        // Redis counts this delivery too (written with the next flush).
                        self.retries.push((r.id, r.attempt));
                    }
                    self.in_flight.insert(
                        r.id,
                        InFlight {
                            body: r.body,
                            attempt: r.attempt,
                            link: i,
                            generation,
                            sent: now,
                            deadline,
                        },
                    );
                }
                self.shared
                    .stats
                    .delivered
                    .fetch_add(count, Ordering::Relaxed);
                metrics::counter!(telemetry::DELIVERED).increment(count);
            } else {
                // The connection went away between taking credit and sending.
                for r in sent.into_iter().rev() {
                    self.ready.push_front(r);
                }
            }
        }
    }

    /// Reads new entries when there is room and credit; true when some came.
    async fn read_more(&mut self, reader: &mut Reader) -> Result<bool> {
        let opts = &self.shared.opts;
        if self.ready.len() >= opts.read_batch
            || self.in_flight.len() >= opts.max_in_flight
            || Instant::now() < self.next_read
        {
            return Ok(false);
        }
        let credit = self.credit_available();
        if credit <= 0 {
            return Ok(false);
        }
        let room = opts.max_in_flight
            - self.in_flight.len()
            - self
                .ready
                .len()
                .min(opts.max_in_flight - self.in_flight.len());
        let count = opts.read_batch.min(room).min(credit as usize);
        if count == 0 {
            return Ok(false);
        }
        let entries = reader
            .read(self.p, &self.token, &opts.node_id, count)
            .await?;
        self.last_read_empty = entries.is_empty();
        if !entries.is_empty() && entries.len() < count.min(opts.read_batch / 8).max(1) {
            self.next_read = Instant::now() + opts.read_linger;
        }
        if let Some(last) = entries.last() {
            self.last_id = Some(last.id);
        }
        let got = !entries.is_empty();
        for e in entries {
            self.enqueue(e, 1, None);
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_refuse_what_cannot_work() {
        let secret = b"0123456789abcdef".to_vec();
        assert!(
            LeaderOptions::new(vec!["ws://127.0.0.1:1/".into()], secret.clone())
                .validate()
                .is_ok()
        );
        for bad in ["wss://127.0.0.1:1/", "http://127.0.0.1:1/", "127.0.0.1:1"] {
            let e = LeaderOptions::new(vec![bad.into()], secret.clone()).validate();
            assert!(matches!(e, Err(DeliveryError::Invalid(_))), "{bad}: {e:?}");
        }
        assert!(
            LeaderOptions::new(Vec::new(), secret.clone())
                .validate()
                .is_err()
        );
        assert!(
            LeaderOptions::new(vec!["ws://h:1/".into()], b"short".to_vec())
                .validate()
                .is_err()
        );
        let mut o = LeaderOptions::new(vec!["ws://h:1/".into()], secret);
        o.node_id = "a|b".into();
        assert!(o.validate().is_err(), "'|' would break the lease token");
    }

    #[test]
    fn fair_share_rounds_up() {
        assert_eq!(fair_share(12, 3), 4);
        assert_eq!(fair_share(12, 5), 3);
        assert_eq!(fair_share(12, 0), 12);
        assert_eq!(fair_share(1, 3), 1);
    }
}
