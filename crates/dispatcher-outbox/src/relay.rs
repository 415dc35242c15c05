//! The relay: holds partition leases, reads each partition's new rows window by window, publishes them to
//! the stream in order per aggregate, and settles them (sent, retry, dead) under the lease's fence.
//!
//! A relay runs *sessions*. A session connects, takes its fair share of the partitions, and runs three
//! tasks joined by bounded channels (so memory stays bounded whatever the backlog):
//! - the **reader** walks snapshot windows (see `snapshot`) and sends pages of rows;
//! - the **publisher** checks each row (poison), holds back rows behind a failed row of their aggregate,
//!   publishes the rest with one `FCALL` per page, and backs off while Redis is unreachable;
//! - the **settler** writes outcomes in fenced transactions, renews the leases and stores checkpoints.
//!
//! Any error of Postgres or a lost lease ends the session; the next one starts from the stored
//! checkpoints, skipping rows already sent, so a crash anywhere costs duplicates (by message id), never
//! a row.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, mpsc, watch};

use crate::backoff::Backoff;
use crate::db::{self, Failure, Held, OutboxRow, Park, Settlement};
use crate::error::{OutboxError, Result};
use crate::publish::{self, EntryValues, Published, StreamPublisher};
use crate::snapshot::{Snapshot, Window};
use crate::telemetry as m;

/// How a relay runs. Defaults follow the polling relay we replaced where it had a knob. `Debug` leaves the
/// URLs out (they may hold passwords).
#[derive(Clone)]
pub struct RelayOptions {
    /// Postgres URL (`DATABASE_URL`).
    pub database_url: String,
    /// Redis URL.
    pub redis_url: String,
    /// Stream key (`DISPATCH_STREAM_NAME`).
    pub stream: String,
    /// Approximate stream length kept (`REDIS_STREAM_MAXLEN`, 0 = no trimming).
    pub maxlen: u64,
    /// Rows per page read and per publish call (`DISPATCH_BATCH_SIZE`).
    pub batch_size: usize,
    /// Fallback poll period (`DISPATCH_TICK_MS`): the longest a new row waits when no wake-up arrives.
    pub tick: Duration,
    /// Attempts before a row goes dead (`DISPATCH_MAX_ATTEMPTS`).
    pub max_attempts: u32,
    /// Delay between a row's attempts.
    pub retry: Backoff,
    /// Partition lease; a crashed relay's rows return to the others after it.
    pub lease: Duration,
    /// LISTEN for the producers' wake-up (false = poll only, for a transaction-mode pooler).
    pub listen: bool,
    /// Largest stream entry; a bigger row is poison and goes dead at once.
    pub max_entry_bytes: usize,
    /// Most rows per second this relay publishes (0 = no limit).
    pub max_rows_per_sec: f64,
    /// Rows held back (waiting for a retry) before the reader pauses.
    pub max_parked: usize,
    /// How long connecting to Postgres may take altogether (`DISPATCH_CONNECT_TIMEOUT_MS`).
    pub connect_timeout: Duration,
    /// At start, wait (with backoff) for a schema that `outbox migrate` has not created yet, instead of
    /// ending with [`OutboxError::SchemaMissing`]. On for an embedded relay (deployment jobs race); the
    /// CLI turns it off so an operator who forgot the migration hears it at once.
    pub wait_for_schema: bool,
    /// This relay's name in the lease table.
    pub owner: String,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            database_url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            stream: "dispatcher:outbox".into(),
            maxlen: 1_000_000,
            batch_size: 1000,
            tick: Duration::from_millis(100),
            max_attempts: 10,
            retry: Backoff {
                base: Duration::from_millis(500),
                max: Duration::from_secs(300),
            },
            lease: Duration::from_secs(5),
            listen: true,
            max_entry_bytes: 1024 * 1024,
            max_rows_per_sec: 0.0,
            max_parked: 100_000,
            connect_timeout: db::DEFAULT_CONNECT_TIMEOUT,
            wait_for_schema: true,
            owner: default_owner(),
        }
    }
}

impl std::fmt::Debug for RelayOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayOptions")
            .field("database_url", &"<hidden>")
            .field("redis_url", &"<hidden>")
            .field("stream", &self.stream)
            .field("maxlen", &self.maxlen)
            .field("batch_size", &self.batch_size)
            .field("tick", &self.tick)
            .field("max_attempts", &self.max_attempts)
            .field("retry", &self.retry)
            .field("lease", &self.lease)
            .field("listen", &self.listen)
            .field("max_entry_bytes", &self.max_entry_bytes)
            .field("max_rows_per_sec", &self.max_rows_per_sec)
            .field("max_parked", &self.max_parked)
            .field("connect_timeout", &self.connect_timeout)
            .field("wait_for_schema", &self.wait_for_schema)
            .field("owner", &self.owner)
            .finish()
    }
}

/// `host-pid-random`: unique per process.
pub fn default_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "relay".into());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// The allowed range of `DISPATCH_MAX_ROWS_PER_SEC` (besides 0, no limit): from one row in about 17
/// minutes to a million rows a second.
pub const MAX_ROWS_PER_SEC_RANGE: (f64, f64) = (0.001, 1_000_000.0);

impl RelayOptions {
    /// Refuses settings that cannot work, naming the setting and its allowed range.
    pub fn validate(&self) -> Result<()> {
        fn ms_in(name: &str, v: Duration, lo: u64, hi: u64) -> Result<()> {
            if v < Duration::from_millis(lo) || v > Duration::from_millis(hi) {
                return Err(OutboxError::invalid(format!(
                    "{name} must be from {lo} to {hi} (ms), not {}",
                    v.as_millis()
                )));
            }
            Ok(())
        }
        if self.stream.is_empty() {
            return Err(OutboxError::invalid(
                "DISPATCH_STREAM_NAME must not be empty",
            ));
        }
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return Err(OutboxError::invalid(
                "DISPATCH_BATCH_SIZE must be 1 to 10000",
            ));
        }
        if self.max_attempts == 0 || self.max_attempts > 1_000 {
            return Err(OutboxError::invalid(
                "DISPATCH_MAX_ATTEMPTS must be 1 to 1000",
            ));
        }
        if self.tick.is_zero() || self.tick > Duration::from_secs(60) {
            return Err(OutboxError::invalid("DISPATCH_TICK_MS must be 1 to 60000"));
        }
        ms_in("DISPATCH_LEASE_MS", self.lease, 500, 600_000)?;
        ms_in("DISPATCH_RETRY_BASE_MS", self.retry.base, 1, 3_600_000)?;
        ms_in("DISPATCH_RETRY_MAX_MS", self.retry.max, 1, 86_400_000)?;
        ms_in(
            "DISPATCH_CONNECT_TIMEOUT_MS",
            self.connect_timeout,
            100,
            300_000,
        )?;
        if self.maxlen > 10_000_000_000 {
            return Err(OutboxError::invalid(
                "REDIS_STREAM_MAXLEN must be 0 (no trimming) to 10000000000",
            ));
        }
        if self.max_entry_bytes < 1024 || self.max_entry_bytes > 512 * 1024 * 1024 {
            return Err(OutboxError::invalid(
                "DISPATCH_MAX_ENTRY_BYTES must be from 1024 to 536870912 (512 MiB, Redis's largest value)",
            ));
        }
        let (lo, hi) = MAX_ROWS_PER_SEC_RANGE;
        let rate = self.max_rows_per_sec;
        if !(rate == 0.0 || (lo..=hi).contains(&rate)) {
            return Err(OutboxError::invalid(format!(
                "DISPATCH_MAX_ROWS_PER_SEC must be 0 (no limit) or from {lo} to {hi} rows/s, not {rate:?}"
            )));
        }
        if self.max_parked == 0 || self.max_parked > 10_000_000 {
            return Err(OutboxError::invalid(
                "the parked-row limit must be 1 to 10000000",
            ));
        }
        Ok(())
    }
}

/// What a relay is doing, for readiness checks (`/readyz` of `serve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayState {
    /// Not (yet, or no longer) connected: Postgres or Redis is unreachable, or a session is restarting.
    Connecting,
    /// A session holds its share of the partitions and publishes.
    Running,
    /// [`Relay::run`] returned.
    Stopped,
}

/// The relay. [`run`](Relay::run) until the shutdown signal turns true.
#[derive(Debug)]
pub struct Relay {
    opts: RelayOptions,
    state: watch::Sender<RelayState>,
}

enum SessionEnd {
    Shutdown,
    Rebalance,
}

impl Relay {
    pub fn new(opts: RelayOptions) -> Result<Self> {
        opts.validate()?;
        Ok(Relay {
            opts,
            state: watch::Sender::new(RelayState::Connecting),
        })
    }

    /// What the relay is doing, updated as it connects, runs sessions and stops.
    pub fn state(&self) -> watch::Receiver<RelayState> {
        self.state.subscribe()
    }

    /// Connects to Postgres within the connect timeout, or gives up when `shutdown` turns true first
    /// (`Ok(None)`).
    async fn connect_or_stop(
        &self,
        wake: Option<Arc<Notify>>,
        prepared: bool,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<db::Conn>> {
        let o = &self.opts;
        tokio::select! {
            c = db::connect_within(&o.database_url, wake, prepared, o.connect_timeout) => c.map(Some),
            _ = shutdown.wait_for(|s| *s) => Ok(None),
        }
    }

    /// Waits until Postgres answers and the schema is there, retrying what may pass (unreachable, no
    /// answer in time, a schema not migrated yet) with backoff; a newer schema and bad settings end the
    /// relay at once.
    /// `Ok(false)`: shutdown came first.
    async fn first_connect(&self, shutdown: &mut watch::Receiver<bool>) -> Result<bool> {
        let mut tries = 0u32;
        loop {
            let checked = match self.connect_or_stop(None, false, shutdown).await {
                Ok(None) => return Ok(false),
                Ok(Some(client)) => crate::schema::check(&client).await,
                Err(e) => Err(e),
            };
            let e = match checked {
                Ok(()) => return Ok(true),
                Err(e) => e,
            };
            // A relay may start before `outbox migrate` (a deployment's jobs race): it waits for the
            // schema when told to, and for what may pass.
            let waits = match &e {
                OutboxError::SchemaMissing => self.opts.wait_for_schema,
                other => other.is_retryable(),
            };
            if !waits {
                return Err(e);
            }
            tries = tries.saturating_add(1);
            let wait = Backoff {
                base: Duration::from_millis(200),
                max: Duration::from_secs(5),
            }
            .next(tries);
            tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "postgres unavailable at start; retrying");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|s| *s) => return Ok(false),
            }
        }
    }

    /// Runs sessions until `shutdown` is true; on shutdown, publishes and settles what was read, stores
    /// the checkpoints and releases the leases so other relays take over at once.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let r = self.run_inner(&mut shutdown).await;
        self.state.send_replace(RelayState::Stopped);
        r
    }

    async fn run_inner(&self, shutdown: &mut watch::Receiver<bool>) -> Result<()> {
        if !self.first_connect(shutdown).await? {
            return Ok(());
        }
        let conn = {
            let mut tries = 0u32;
            loop {
                match publish::connect(&self.opts.redis_url).await {
                    Ok(c) => break c,
                    Err(OutboxError::Invalid(e)) => return Err(OutboxError::Invalid(e)),
                    Err(e) => {
                        tries = tries.saturating_add(1);
                        metrics::counter!(m::REDIS_UNAVAILABLE).increment(1);
                        tracing::warn!(error = %e, "redis unavailable at start; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(200 * u64::from(tries.min(10)))) => {}
                            _ = shutdown.changed() => {}
                        }
                        if *shutdown.borrow() {
                            return Ok(());
                        }
                    }
                }
            }
        };
        let publisher = StreamPublisher::new(conn, self.opts.stream.clone(), self.opts.maxlen);
        let monitor = tokio::spawn(monitor_stream(
            publisher.clone(),
            self.opts.maxlen,
            shutdown.clone(),
        ));
        let mut failures = 0u32;
        let outcome = loop {
            if *shutdown.borrow() {
                break Ok(());
            }
            match self.session(&publisher, shutdown.clone()).await {
                Ok(SessionEnd::Shutdown) => break Ok(()),
                Ok(SessionEnd::Rebalance) => failures = 0,
                Err(e) => {
                    self.state.send_replace(RelayState::Connecting);
                    metrics::counter!(m::TICKS, "result" => "error").increment(1);
                    failures = failures.saturating_add(1);
                    let wait = Backoff {
                        base: Duration::from_millis(100),
                        max: Duration::from_secs(5),
                    }
                    .next(failures);
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "dispatcher_tick_error: relay session ended");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        };
        monitor.abort();
        // Leaving the relay table is a courtesy (others see this relay gone sooner); a Postgres that does
        // not answer must not hold the shutdown.
        let deregister = async {
            let timeout = self.opts.connect_timeout.min(Duration::from_secs(2));
            if let Ok(client) =
                db::connect_within(&self.opts.database_url, None, false, timeout).await
            {
                let _ = db::deregister(&client, &self.opts.owner).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), deregister).await;
        metrics::gauge!(m::LEASES).set(0.0);
        outcome
    }

    async fn session(
        &self,
        publisher: &StreamPublisher,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<SessionEnd> {
        let o = &self.opts;
        let wake = Arc::new(Notify::new());
        // Prepared statements save the planning of every window query; poll-only mode (behind a
        // transaction-mode pooler) keeps nothing in the session.
        let Some(reader_client) = self
            .connect_or_stop(o.listen.then(|| wake.clone()), o.listen, &mut shutdown)
            .await?
        else {
            return Ok(SessionEnd::Shutdown);
        };
        let Some(settle_client) = self.connect_or_stop(None, o.listen, &mut shutdown).await? else {
            return Ok(SessionEnd::Shutdown);
        };
        crate::schema::check(&reader_client).await?;
        db::heartbeat(&settle_client, &o.owner).await?;
        let (live, _) = db::fair_share(&settle_client, o.lease).await?;
        let want = fair_share_of(live.max(1));
        let token = rand::random::<i64>() & i64::MAX;
        let lease_started = Instant::now();
        let held = db::acquire(&settle_client, &o.owner, token, want, o.lease).await?;
        let parts: Vec<i16> = held.iter().map(|h| h.partition).collect();
        metrics::gauge!(m::LEASES).set(held.len() as f64);
        tracing::info!(owner = %o.owner, partitions = ?parts, relays = live, "relay session started");
        self.state.send_replace(RelayState::Running);
        if o.listen {
            reader_client
                .batch_execute("LISTEN dispatcher_outbox")
                .await?;
        }
        let parked = if parts.is_empty() {
            Vec::new()
        } else {
            db::load_parked(&settle_client, &parts).await?
        };
        // The leases are good until the first renewal; a little margin against clock drift and latency.
        let deadline = Arc::new(Mutex::new(lease_started + o.lease.mul_f64(0.8)));

        let oldest = Arc::new(Mutex::new(
            held.iter()
                .map(|h| h.checkpoint.clone())
                .min_by_key(|s| s.xmax)
                .unwrap_or_else(Snapshot::origin),
        ));
        let (rows_tx, rows_rx) = mpsc::channel::<Read>(4);
        let (settle_tx, settle_rx) = mpsc::channel::<Settle>(16);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (rebalance_tx, mut rebalance_rx) = watch::channel(false);

        let reader = Reader {
            client: reader_client,
            groups: groups_from(&held),
            batch: page_limit(o.batch_size, o.max_rows_per_sec) as i64,
            tick: o.tick,
            wake: wake.clone(),
            tx: rows_tx,
            stop: stop_rx.clone(),
            rate: o.max_rows_per_sec,
        };
        let mut publisher_task = PublisherTask {
            publisher: publisher.clone(),
            rx: rows_rx,
            tx: settle_tx,
            parked: ParkedRows::default(),
            opts: o.clone(),
            deadline: deadline.clone(),
            stop: stop_rx.clone(),
        };
        for (row, due) in parked {
            publisher_task.parked.restore(row, due);
        }
        let settler = Settler {
            client: settle_client,
            rx: settle_rx,
            owner: o.owner.clone(),
            token,
            held: held.len(),
            lease: o.lease,
            deadline: deadline.clone(),
            rebalance: rebalance_tx,
            checkpoints: held.iter().map(|h| (h.partition, None)).collect(),
            latest: held
                .iter()
                .map(|h| (h.partition, h.checkpoint.clone()))
                .collect(),
            oldest: oldest.clone(),
            wake: wake.clone(),
        };
        let sampler = tokio::spawn(sample_backlog(
            o.database_url.clone(),
            parts.clone(),
            oldest,
        ));

        let reader_handle = tokio::spawn(reader.run());
        let _sampler = AbortOnDrop(sampler);
        let publisher_handle = tokio::spawn(async move { publisher_task.run().await });
        let settler_fut = settler.run();
        tokio::pin!(settler_fut);

        let mut end = None;
        let settled = loop {
            tokio::select! {
                r = &mut settler_fut => break r,
                _ = shutdown.changed(), if end.is_none() => {
                    if *shutdown.borrow() {
                        end = Some(SessionEnd::Shutdown);
                        let _ = stop_tx.send(true);
                    }
                }
                _ = rebalance_rx.changed(), if end.is_none() => {
                    end = Some(SessionEnd::Rebalance);
                    let _ = stop_tx.send(true);
                }
            }
        };
        // The settler ends when the publisher's channel closes (after the reader stopped and the
        // publisher drained), or on an error, which ends the others at once.
        let settle_client = match settled {
            Ok(c) => c,
            Err(e) => {
                reader_handle.abort();
                publisher_handle.abort();
                return Err(e);
            }
        };
        match publisher_handle.await {
            Ok(r) => r?,
            Err(e) if e.is_panic() => {
                return Err(OutboxError::Protocol("publisher panicked".into()));
            }
            Err(_) => {}
        }
        match reader_handle.await {
            // Stopping: a reader cut off by a publisher that left early (Redis away) is expected, and
            // the leases are still released below.
            Ok(Err(_)) if end.is_some() => {}
            Ok(r) => r?,
            Err(e) if e.is_panic() => return Err(OutboxError::Protocol("reader panicked".into())),
            Err(_) => {}
        }
        let end = end.unwrap_or(SessionEnd::Rebalance);
        if matches!(end, SessionEnd::Shutdown) {
            db::release(&settle_client, &o.owner, token).await?;
            tracing::info!(owner = %o.owner, "relay stopped; partitions released");
        }
        Ok(end)
    }
}

/// Aborts a background task when the session ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Partitions each of `live` relays should hold.
fn fair_share_of(live: i64) -> i64 {
    let p = i64::from(crate::schema::PARTITIONS);
    (p + live - 1) / live
}

/// Partitions that share a previous snapshot are read together.
fn groups_from(held: &[Held]) -> Vec<Group> {
    let mut by: BTreeMap<String, Vec<i16>> = BTreeMap::new();
    let mut snaps: HashMap<String, Snapshot> = HashMap::new();
    for h in held {
        let k = h.checkpoint.to_string();
        by.entry(k.clone()).or_default().push(h.partition);
        snaps.insert(k, h.checkpoint.clone());
    }
    by.into_iter()
        .map(|(k, partitions)| Group {
            partitions,
            prev: snaps.remove(&k).unwrap_or_else(Snapshot::origin),
            open: None,
        })
        .collect()
}

/// What the reader sends the publisher.
#[derive(Debug)]
enum Read {
    Rows(Vec<OutboxRow>),
    /// Every row of `partitions` up to `snapshot` has been sent on.
    WindowDone {
        partitions: Vec<i16>,
        snapshot: Snapshot,
    },
}

/// What the publisher sends the settler.
#[derive(Debug)]
enum Settle {
    Rows(Settlement),
    WindowDone {
        partitions: Vec<i16>,
        snapshot: Snapshot,
    },
}

#[derive(Debug)]
struct Group {
    partitions: Vec<i16>,
    prev: Snapshot,
    open: Option<OpenWindow>,
}

#[derive(Debug)]
struct OpenWindow {
    cur: Snapshot,
    window: Window,
    late_done: bool,
    after: db::Key,
}

/// How long the reader waits after a pass that caught up with rows still arriving.
const LINGER: Duration = Duration::from_millis(1);

struct Reader {
    client: db::Conn,
    groups: Vec<Group>,
    batch: i64,
    tick: Duration,
    wake: Arc<Notify>,
    tx: mpsc::Sender<Read>,
    stop: watch::Receiver<bool>,
    rate: f64,
}

impl Reader {
    async fn run(mut self) -> Result<()> {
        // Quick re-polls after activity catch a commit that landed just after the notifier's; then the
        // poll slows to the tick.
        let mut idle_wait = Duration::from_millis(1);
        let mut budget = RateBudget::new(self.rate);
        loop {
            if *self.stop.borrow() {
                return Ok(());
            }
            let started = Instant::now();
            let rows = self.pass().await?;
            if rows > 0 {
                metrics::counter!(m::TICKS, "result" => "ok").increment(1);
                metrics::histogram!(m::TICK_DURATION).record(started.elapsed().as_secs_f64());
                idle_wait = Duration::from_millis(1);
                if let Some(pause) = budget.spend(rows) {
                    // Inside the select: a pause of minutes at a tiny rate must not hold a shutdown.
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.stop.changed() => {}
                    }
                    continue;
                }
                if !self.backlog() {
                    // Caught up while rows keep arriving: linger a moment so that the next pass carries
                    // a few commits' rows instead of one (a pass costs three statements).
                    tokio::time::sleep(LINGER).await;
                }
                continue;
            }
            metrics::counter!(m::TICKS, "result" => "idle").increment(1);
            tokio::select! {
                _ = self.wake.notified() => { idle_wait = Duration::from_millis(1); }
                _ = tokio::time::sleep(idle_wait) => { idle_wait = (idle_wait * 2).min(self.tick); }
                _ = self.stop.changed() => {}
            }
        }
    }

    /// Whether a window is still being read (more rows are there now).
    fn backlog(&self) -> bool {
        self.groups.iter().any(|g| g.open.is_some())
    }

    /// One page per group; returns how many rows were sent on.
    async fn pass(&mut self) -> Result<usize> {
        if self.groups.is_empty() {
            return Ok(0);
        }
        let mut snapshot: Option<Snapshot> = None;
        let mut sent = 0;
        for gi in 0..self.groups.len() {
            if self.groups[gi].open.is_none() {
                let cur = match &snapshot {
                    Some(s) => s.clone(),
                    None => {
                        let s = db::current_snapshot(&self.client).await?;
                        snapshot = Some(s.clone());
                        s
                    }
                };
                let g = &mut self.groups[gi];
                if cur == g.prev {
                    continue;
                }
                let window = g.prev.window_to(&cur);
                g.open = Some(OpenWindow {
                    late_done: window.late.is_empty(),
                    cur,
                    window,
                    after: (0, 0),
                });
            }
            let mut out: Vec<Read> = Vec::with_capacity(2);
            {
                let g = &mut self.groups[gi];
                let Some(w) = g.open.as_mut() else { continue };
                if !w.late_done {
                    let rows =
                        db::read_late(&self.client, &w.window, &g.partitions, w.after, self.batch)
                            .await?;
                    if (rows.len() as i64) < self.batch {
                        w.late_done = true;
                        w.after = (0, 0);
                    } else if let Some(last) = rows.last() {
                        w.after = (last.xid, last.id);
                    }
                    if !rows.is_empty() {
                        out.push(Read::Rows(rows));
                    }
                } else {
                    let rows =
                        db::read_new(&self.client, &w.window, &g.partitions, w.after, self.batch)
                            .await?;
                    if let Some(last) = rows.last() {
                        w.after = (last.xid, last.id);
                    }
                    let done = (rows.len() as i64) < self.batch;
                    if !rows.is_empty() {
                        out.push(Read::Rows(rows));
                    }
                    if done && let Some(w) = g.open.take() {
                        // The window is read: its rows go first, then the marker.
                        g.prev = w.cur.clone();
                        out.push(Read::WindowDone {
                            partitions: g.partitions.clone(),
                            snapshot: w.cur,
                        });
                    }
                }
            }
            for r in out {
                if let Read::Rows(rows) = &r {
                    sent += rows.len();
                    metrics::counter!(m::PICKED).increment(rows.len() as u64);
                }
                self.send(r).await?;
            }
        }
        self.merge_groups();
        Ok(sent)
    }

    async fn send(&self, r: Read) -> Result<()> {
        self.tx
            .send(r)
            .await
            .map_err(|_| OutboxError::Protocol("publisher stopped".into()))
    }

    /// Groups at the same snapshot with no window open become one (fewer queries).
    fn merge_groups(&mut self) {
        if self.groups.len() < 2 {
            return;
        }
        let mut merged: Vec<Group> = Vec::with_capacity(self.groups.len());
        for g in self.groups.drain(..) {
            if g.open.is_none()
                && let Some(m) = merged
                    .iter_mut()
                    .find(|m| m.open.is_none() && m.prev == g.prev)
            {
                m.partitions.extend(g.partitions);
                m.partitions.sort_unstable();
                continue;
            }
            merged.push(g);
        }
        self.groups = merged;
    }
}

/// Rows per read with `max_rows_per_sec` set: at most one second's worth (at least one row), so that the
/// first page is paced like every later one instead of going out whole.
fn page_limit(batch_size: usize, rate: f64) -> usize {
    if rate <= 0.0 {
        return batch_size;
    }
    let per_sec = if rate >= batch_size as f64 {
        batch_size
    } else {
        rate.floor() as usize
    };
    per_sec.clamp(1, batch_size.max(1))
}

/// A token bucket for `max_rows_per_sec`.
struct RateBudget {
    rate: f64,
    started: Instant,
    spent: f64,
}

impl RateBudget {
    fn new(rate: f64) -> Self {
        RateBudget {
            rate,
            started: Instant::now(),
            spent: 0.0,
        }
    }

    /// Records `rows`; returns how long to pause to stay within the rate. Never panics, whatever the
    /// rate (a pause too long for a `Duration` is the longest one).
    fn spend(&mut self, rows: usize) -> Option<Duration> {
        if self.rate.is_nan() || self.rate <= 0.0 || self.rate.is_infinite() {
            return None;
        }
        self.spent += rows as f64;
        let due = Duration::try_from_secs_f64(self.spent / self.rate).unwrap_or(Duration::MAX);
        let elapsed = self.started.elapsed();
        if elapsed > due.saturating_add(Duration::from_secs(1)) {
            // Idle for a while: no burst credit beyond a second.
            self.started = Instant::now()
                .checked_sub(Duration::from_secs(1))
                .unwrap_or_else(Instant::now);
            self.spent = self.rate;
        }
        due.checked_sub(elapsed).filter(|d| !d.is_zero())
    }
}

/// Rows held back: per aggregate, a queue whose head waits for its retry and whose others wait behind it.
#[derive(Debug, Default)]
struct ParkedRows {
    by_aggregate: HashMap<String, VecDeque<OutboxRow>>,
    due: BinaryHeap<Reverse<(Instant, String)>>,
    count: usize,
}

impl ParkedRows {
    fn restore(&mut self, row: OutboxRow, due: Option<SystemTime>) {
        let q = self
            .by_aggregate
            .entry(row.aggregate_id.clone())
            .or_default();
        if q.is_empty() {
            let at = due
                .and_then(|d| d.duration_since(SystemTime::now()).ok())
                .map(|d| Instant::now() + d)
                .unwrap_or_else(Instant::now);
            self.due.push(Reverse((at, row.aggregate_id.clone())));
        }
        q.push_back(row);
        self.count += 1;
    }

    fn holds(&self, aggregate: &str) -> bool {
        self.by_aggregate.contains_key(aggregate)
    }

    /// Queues `row` behind its aggregate's parked rows.
    fn push_behind(&mut self, row: OutboxRow) {
        self.by_aggregate
            .entry(row.aggregate_id.clone())
            .or_default()
            .push_back(row);
        self.count += 1;
    }

    /// Parks `row` as the head of a new queue, due at `at`.
    fn push_head(&mut self, row: OutboxRow, at: Instant) {
        self.due.push(Reverse((at, row.aggregate_id.clone())));
        self.by_aggregate
            .entry(row.aggregate_id.clone())
            .or_default()
            .push_front(row);
        self.count += 1;
    }

    fn next_due(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes every queue whose head is due, in due order (rows of one aggregate in their order).
    fn take_due(&mut self, now: Instant) -> Vec<OutboxRow> {
        let mut out = Vec::new();
        while let Some(Reverse((at, _))) = self.due.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, agg))) = self.due.pop() else {
                break;
            };
            if let Some(q) = self.by_aggregate.remove(&agg) {
                self.count -= q.len();
                out.extend(q);
            }
        }
        out
    }
}

struct PublisherTask {
    publisher: StreamPublisher,
    rx: mpsc::Receiver<Read>,
    tx: mpsc::Sender<Settle>,
    parked: ParkedRows,
    opts: RelayOptions,
    deadline: Arc<Mutex<Instant>>,
    stop: watch::Receiver<bool>,
}

impl PublisherTask {
    async fn run(&mut self) -> Result<()> {
        loop {
            metrics::gauge!(m::IN_FLIGHT).set(self.parked.count as f64);
            let due = self.parked.next_due();
            let read_more = self.parked.count < self.opts.max_parked;
            tokio::select! {
                biased;
                msg = self.rx.recv(), if read_more => match msg {
                    Some(Read::Rows(rows)) => self.publish_fresh(rows).await?,
                    Some(Read::WindowDone { partitions, snapshot }) => {
                        self.send(Settle::WindowDone { partitions, snapshot }).await?;
                    }
                    // The reader stopped: the session is ending.
                    None => return Ok(()),
                },
                _ = sleep_until_opt(due) => {
                    let rows = self.parked.take_due(Instant::now());
                    if !rows.is_empty() {
                        metrics::counter!(m::PICKED).increment(rows.len() as u64);
                        self.publish_rows(rows).await?;
                    }
                }
                _ = self.stop.changed(), if !read_more => return Ok(()),
            }
        }
    }

    async fn send(&self, s: Settle) -> Result<()> {
        self.tx
            .send(s)
            .await
            .map_err(|_| OutboxError::Protocol("settler stopped".into()))
    }

    /// Rows just read: those whose aggregate is held back queue behind it (and are listed in the retry
    /// table); the others are published.
    async fn publish_fresh(&mut self, rows: Vec<OutboxRow>) -> Result<()> {
        let mut out = Settlement::default();
        let mut go = Vec::with_capacity(rows.len());
        for row in rows {
            if self.parked.holds(&row.aggregate_id) {
                self.hold_behind(row, &mut out);
            } else {
                go.push(row);
            }
        }
        if !out.is_empty() {
            self.send(Settle::Rows(out)).await?;
        }
        self.publish_rows(go).await
    }

    /// Publishes `rows` (in order) until each is in the stream, parked for a retry, or dead.
    async fn publish_rows(&mut self, rows: Vec<OutboxRow>) -> Result<()> {
        let mut queue: VecDeque<OutboxRow> = rows.into();
        let mut unavailable = 0u32;
        while !queue.is_empty() {
            let mut out = Settlement::default();
            // Poison rows go dead before anything is sent; they never hold back others.
            let mut call: Vec<OutboxRow> =
                Vec::with_capacity(queue.len().min(self.opts.batch_size));
            let mut texts: Vec<(String, String)> = Vec::with_capacity(call.capacity());
            while call.len() < self.opts.batch_size {
                let Some(row) = queue.pop_front() else { break };
                if self.parked.holds(&row.aggregate_id) {
                    // Its aggregate was held back by a failure earlier in this run.
                    self.hold_behind(row, &mut out);
                    continue;
                }
                let occurred = rfc3339_micros(row.occurred_us);
                let id = row.id.to_string();
                let size = publish::entry_bytes(&values(&row, &occurred, &id));
                if size > self.opts.max_entry_bytes {
                    let error = format!(
                        "poison: stream entry of {size} bytes is over the limit of {} bytes",
                        self.opts.max_entry_bytes
                    );
                    tracing::warn!(outbox_id = row.id, %error, "outbox_row_dead");
                    metrics::counter!(m::DEAD, "reason" => "poison").increment(1);
                    if row.parked {
                        out.unpark.push(row.id);
                    }
                    out.failed.push(Failure {
                        id: row.id,
                        attempts: row.attempts + 1,
                        error,
                        retry_at: None,
                    });
                    continue;
                }
                texts.push((occurred, id));
                call.push(row);
            }
            if call.is_empty() {
                self.send(Settle::Rows(out)).await?;
                continue;
            }
            self.check_lease()?;
            let entries: Vec<EntryValues<'_>> = call
                .iter()
                .zip(texts.iter())
                .map(|(r, (occ, id))| values(r, occ, id))
                .collect();
            let picked = SystemTime::now();
            let result = self.publisher.publish(&entries).await;
            drop(entries);
            let (added, error) = match result {
                Ok(Published::All) => (call.len(), None),
                Ok(Published::Partial { added, error }) => (added, Some(error)),
                Err(e) => {
                    if *self.stop.borrow() {
                        // Stopping while Redis is away: the rows stay pending for the next session.
                        tracing::warn!(error = %e, rows = call.len() + queue.len(), "stopping with Redis unavailable; rows stay pending");
                        if !out.is_empty() {
                            self.send(Settle::Rows(out)).await?;
                        }
                        return Ok(());
                    }
                    // Keep our place: nothing counts against the rows; try the same rows again.
                    unavailable = unavailable.saturating_add(1);
                    metrics::counter!(m::REDIS_UNAVAILABLE).increment(1);
                    let wait = Backoff {
                        base: Duration::from_millis(50),
                        max: Duration::from_secs(2),
                    }
                    .next(unavailable);
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "dispatcher_tick_error: redis unavailable");
                    metrics::counter!(m::TICKS, "result" => "error").increment(1);
                    for row in call.into_iter().rev() {
                        queue.push_front(row);
                    }
                    if !out.is_empty() {
                        self.send(Settle::Rows(out)).await?;
                    }
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            unavailable = 0;
            let now_us = unix_micros(SystemTime::now());
            let mut rest = call.into_iter();
            for row in rest.by_ref().take(added) {
                metrics::histogram!(m::COMMIT_TO_PUBLISH)
                    .record((now_us - row.occurred_us).max(0) as f64 / 1e6);
                if row.parked {
                    out.unpark.push(row.id);
                }
                out.sent.push((row.id, picked));
            }
            metrics::counter!(m::PUBLISHED).increment(added as u64);
            if let Some(error) = error {
                if let Some(row) = rest.next() {
                    metrics::counter!(m::FAILED).increment(1);
                    let attempts = row.attempts + 1;
                    if attempts as u32 >= self.opts.max_attempts {
                        tracing::warn!(outbox_id = row.id, attempts, %error, "outbox_rows_buried_after_max_attempts");
                        metrics::counter!(m::DEAD, "reason" => "max_attempts").increment(1);
                        if row.parked {
                            out.unpark.push(row.id);
                        }
                        out.failed.push(Failure {
                            id: row.id,
                            attempts,
                            error: format!("{error} (after {attempts} attempts)"),
                            retry_at: None,
                        });
                    } else {
                        let delay = self.opts.retry.next(attempts as u32);
                        tracing::debug!(outbox_id = row.id, attempts, %error, retry_in_ms = delay.as_millis() as u64, "outbox row failed");
                        let retry_at = SystemTime::now() + delay;
                        out.failed.push(Failure {
                            id: row.id,
                            attempts,
                            error: error.clone(),
                            retry_at: Some(retry_at),
                        });
                        out.park.push(park_of(&row, Some(retry_at)));
                        let mut row = row;
                        row.attempts = attempts;
                        row.parked = true;
                        self.parked.push_head(row, Instant::now() + delay);
                    }
                }
                // Rows after the refused one were not tried: behind a held-back aggregate they queue,
                // the others go again (ahead of what is still queued, keeping the order).
                let mut again = Vec::new();
                for row in rest {
                    if self.parked.holds(&row.aggregate_id) {
                        self.hold_behind(row, &mut out);
                    } else {
                        again.push(row);
                    }
                }
                for row in again.into_iter().rev() {
                    queue.push_front(row);
                }
            }
            metrics::counter!(m::SENT).increment(out.sent.len() as u64);
            self.send(Settle::Rows(out)).await?;
        }
        Ok(())
    }

    /// Queues `row` behind its held-back aggregate, listing it in the retry table unless it is already.
    fn hold_behind(&mut self, mut row: OutboxRow, out: &mut Settlement) {
        if !row.parked {
            out.park.push(park_of(&row, None));
        }
        row.parked = true;
        self.parked.push_behind(row);
    }

    /// Stops publishing once the leases may have expired without a renewal.
    fn check_lease(&self) -> Result<()> {
        let deadline = *self
            .deadline
            .lock()
            .map_err(|_| OutboxError::Protocol("lease clock poisoned".into()))?;
        if Instant::now() > deadline {
            return Err(OutboxError::LeaseLost("no renewal within the lease".into()));
        }
        Ok(())
    }
}

fn park_of(row: &OutboxRow, due_at: Option<SystemTime>) -> Park {
    Park {
        id: row.id,
        partition: row.partition,
        aggregate_id: row.aggregate_id.clone(),
        xid: row.xid,
        due_at,
    }
}

fn values<'a>(row: &'a OutboxRow, occurred: &'a str, id: &'a str) -> EntryValues<'a> {
    [
        &row.message_id,
        &row.event_id,
        &row.event_type,
        &row.aggregate_id,
        occurred,
        id,
        &row.payload,
    ]
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

struct Settler {
    client: db::Conn,
    rx: mpsc::Receiver<Settle>,
    owner: String,
    token: i64,
    /// Partitions this session holds (every fenced write checks all of them).
    held: usize,
    lease: Duration,
    deadline: Arc<Mutex<Instant>>,
    rebalance: watch::Sender<bool>,
    /// Checkpoints reached since the last renewal.
    checkpoints: BTreeMap<i16, Option<Snapshot>>,
    /// Every partition's current checkpoint, and the oldest of them (for the backlog sampler).
    latest: BTreeMap<i16, Snapshot>,
    oldest: Arc<Mutex<Snapshot>>,
    wake: Arc<Notify>,
}

impl Settler {
    /// Runs until the publisher is done; hands the connection back.
    async fn run(mut self) -> Result<db::Conn> {
        let renew_every = self.lease / 4;
        let mut next_renewal = Instant::now() + renew_every;
        let max_rows = 5_000;
        loop {
            let msg = tokio::select! {
                m = self.rx.recv() => m,
                _ = tokio::time::sleep_until(next_renewal.into()) => {
                    self.renew().await?;
                    next_renewal = Instant::now() + renew_every;
                    continue;
                }
            };
            let Some(first) = msg else {
                // The publisher is done: store where we are.
                self.renew().await?;
                return Ok(self.client);
            };
            // Coalesce what is queued into one transaction.
            let mut batch = Settlement::default();
            let mut windows = Vec::new();
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Settle::Rows(s) => batch.absorb(s),
                    Settle::WindowDone {
                        partitions,
                        snapshot,
                    } => windows.push((partitions, snapshot)),
                }
                if batch.rows() < max_rows {
                    next = self.rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                db::settle(&self.client, &self.owner, self.token, self.held, &batch).await?;
            }
            let advanced = !windows.is_empty();
            for (partitions, snapshot) in windows {
                for p in partitions {
                    self.checkpoints.insert(p, Some(snapshot.clone()));
                    self.latest.insert(p, snapshot.clone());
                }
            }
            if advanced
                && let Some(min) = self.latest.values().min_by_key(|s| s.xmax)
                && let Ok(mut o) = self.oldest.lock()
            {
                *o = min.clone();
            }
            if Instant::now() >= next_renewal {
                self.renew().await?;
                next_renewal = Instant::now() + renew_every;
            }
        }
    }

    async fn renew(&mut self) -> Result<()> {
        let sent_at = Instant::now();
        db::heartbeat(&self.client, &self.owner).await?;
        if self.held > 0 {
            let cps: Vec<(i16, Option<String>)> = self
                .checkpoints
                .iter()
                .map(|(p, s)| (*p, s.as_ref().map(|s| s.to_string())))
                .collect();
            db::renew(&self.client, &self.owner, self.token, self.lease, &cps).await?;
            for s in self.checkpoints.values_mut() {
                *s = None;
            }
            if let Ok(mut d) = self.deadline.lock() {
                *d = sent_at + self.lease.mul_f64(0.8);
            }
        }
        let (live, free) = db::fair_share(&self.client, self.lease).await?;
        let want = fair_share_of(live.max(1));
        let held = self.held as i64;
        if held > want || (held < want && free > 0) {
            tracing::info!(held, want, free, relays = live, "rebalancing partitions");
            let _ = self.rebalance.send(true);
        }
        // A renewal is a good moment to look again, in case a wake-up was missed.
        self.wake.notify_one();
        Ok(())
    }
}

/// Every 5 s, on a connection of its own (never in the settler's way): the backlog of the session's
/// partitions since their oldest checkpoint.
async fn sample_backlog(database_url: String, partitions: Vec<i16>, since: Arc<Mutex<Snapshot>>) {
    if partitions.is_empty() {
        return;
    }
    let Ok(client) = db::connect(&database_url, None).await else {
        return;
    };
    loop {
        let from = since.lock().map(|s| s.clone()).ok();
        if let Some(from) = from
            && let Ok((n, oldest)) = db::backlog(&client, &partitions, &from).await
        {
            metrics::gauge!(m::PENDING).set(n as f64);
            let age = oldest
                .map(|us| (unix_micros(SystemTime::now()) - us).max(0) as f64 / 1e6)
                .unwrap_or(0.0);
            metrics::gauge!(m::OLDEST_PENDING_AGE).set(age);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Every 5 s: the stream's length and each group's lag against the trimming limit; a warning when a
/// group is within 20 % of losing unread entries to `MAXLEN ~`.
async fn monitor_stream(
    publisher: StreamPublisher,
    maxlen: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if let Ok(info) = publisher.stream_info().await {
            metrics::gauge!(m::STREAM_LENGTH).set(info.length as f64);
            for g in &info.groups {
                if let Some(lag) = g.lag {
                    metrics::gauge!(m::GROUP_LAG, "group" => g.name.clone()).set(lag as f64);
                }
                if let Some(ratio) = publish::lag_ratio(g.lag, maxlen) {
                    metrics::gauge!(m::GROUP_LAG_RATIO, "group" => g.name.clone()).set(ratio);
                    if ratio >= 0.8 {
                        tracing::warn!(
                            stream = publisher.stream(),
                            group = %g.name,
                            lag = g.lag.unwrap_or(0),
                            maxlen,
                            "consumer group is close to REDIS_STREAM_MAXLEN: trimming will drop entries it has not read"
                        );
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

fn unix_micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` of µs since the Unix epoch.
pub fn rfc3339_micros(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(951_782_400_000_001),
            "2000-02-29T00:00:00.000001Z"
        );
        assert_eq!(
            rfc3339_micros(1_796_112_732_123_456),
            "2026-12-01T08:12:12.123456Z"
        );
        assert_eq!(rfc3339_micros(-1), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn fair_share_rounds_up() {
        assert_eq!(fair_share_of(1), 32);
        assert_eq!(fair_share_of(3), 11);
        assert_eq!(fair_share_of(100), 1);
    }

    fn row(id: i64, agg: &str) -> OutboxRow {
        OutboxRow {
            id,
            xid: 10,
            message_id: format!("m{id}"),
            event_id: "e".into(),
            event_type: "T".into(),
            aggregate_id: agg.into(),
            payload: "{}".into(),
            occurred_us: 0,
            attempts: 0,
            partition: 0,
            parked: false,
        }
    }

    #[test]
    fn parked_rows_come_back_in_order_when_their_head_is_due() {
        let mut p = ParkedRows::default();
        let now = Instant::now();
        p.push_head(row(1, "a"), now + Duration::from_millis(10));
        p.push_behind(row(2, "a"));
        p.push_head(row(3, "b"), now + Duration::from_millis(5));
        assert!(p.holds("a") && p.holds("b") && !p.holds("c"));
        assert!(p.take_due(now).is_empty());
        let ids: Vec<i64> = p
            .take_due(now + Duration::from_millis(6))
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, vec![3]);
        let ids: Vec<i64> = p
            .take_due(now + Duration::from_millis(20))
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(p.count, 0);
        assert!(!p.holds("a"));
    }

    #[test]
    fn rate_budget_paces() {
        let mut b = RateBudget::new(1000.0);
        let pause = b.spend(500).expect("half a second of rows");
        assert!(pause > Duration::from_millis(400) && pause <= Duration::from_millis(500));
        assert!(RateBudget::new(0.0).spend(1_000_000).is_none());
    }

    #[test]
    fn rate_budget_never_panics() {
        for rate in [
            1e-300,
            f64::MIN_POSITIVE,
            1e-9,
            f64::NAN,
            f64::INFINITY,
            -1.0,
        ] {
            let mut b = RateBudget::new(rate);
            let _ = b.spend(1);
            let _ = b.spend(usize::MAX);
        }
    }

    #[test]
    fn debug_output_holds_no_url() {
        let o = RelayOptions {
            database_url: "postgres://app:pw-in-url@db/shop".into(),
            redis_url: "redis://:pw-in-redis@r:6379".into(),
            ..Default::default()
        };
        let d = format!("{o:?} {:?}", Relay::new(o.clone()).expect("valid"));
        assert!(
            !d.contains("pw-in-url") && !d.contains("pw-in-redis"),
            "{d}"
        );
    }

    #[test]
    fn the_first_page_is_paced() {
        assert_eq!(page_limit(1000, 0.0), 1000, "no limit: whole pages");
        assert_eq!(
            page_limit(1000, 0.001),
            1,
            "a tiny rate reads one row at a time"
        );
        assert_eq!(page_limit(1000, 10.5), 10, "one second's worth");
        assert_eq!(page_limit(1000, 1e6), 1000, "never more than the batch");
        let mut b = RateBudget::new(10.0);
        let pause = b
            .spend(page_limit(1000, 10.0))
            .expect("the first page pauses");
        assert!(pause > Duration::from_millis(900), "{pause:?}");
    }

    #[test]
    fn absurd_settings_are_refused_with_their_name() {
        let ok = RelayOptions::default();
        ok.validate().expect("defaults are valid");
        for (opts, name) in [
            (
                RelayOptions {
                    max_rows_per_sec: 1e-300,
                    ..ok.clone()
                },
                "DISPATCH_MAX_ROWS_PER_SEC",
            ),
            (
                RelayOptions {
                    max_rows_per_sec: 1e12,
                    ..ok.clone()
                },
                "DISPATCH_MAX_ROWS_PER_SEC",
            ),
            (
                RelayOptions {
                    max_rows_per_sec: f64::NAN,
                    ..ok.clone()
                },
                "DISPATCH_MAX_ROWS_PER_SEC",
            ),
            (
                RelayOptions {
                    lease: Duration::from_millis(u64::MAX),
                    ..ok.clone()
                },
                "DISPATCH_LEASE_MS",
            ),
            (
                RelayOptions {
                    lease: Duration::from_millis(100),
                    ..ok.clone()
                },
                "DISPATCH_LEASE_MS",
            ),
            (
                RelayOptions {
                    max_attempts: u32::MAX,
                    ..ok.clone()
                },
                "DISPATCH_MAX_ATTEMPTS",
            ),
            (
                RelayOptions {
                    maxlen: u64::MAX,
                    ..ok.clone()
                },
                "REDIS_STREAM_MAXLEN",
            ),
            (
                RelayOptions {
                    max_entry_bytes: usize::MAX,
                    ..ok.clone()
                },
                "DISPATCH_MAX_ENTRY_BYTES",
            ),
            (
                RelayOptions {
                    connect_timeout: Duration::from_secs(86_400),
                    ..ok.clone()
                },
                "DISPATCH_CONNECT_TIMEOUT_MS",
            ),
            (
                RelayOptions {
                    connect_timeout: Duration::ZERO,
                    ..ok.clone()
                },
                "DISPATCH_CONNECT_TIMEOUT_MS",
            ),
            (
                RelayOptions {
                    retry: Backoff {
                        base: Duration::from_millis(1),
                        max: Duration::from_millis(u64::MAX),
                    },
                    ..ok.clone()
                },
                "DISPATCH_RETRY_MAX_MS",
            ),
        ] {
            let e = opts.validate().expect_err(name).to_string();
            assert!(e.contains(name), "{e}");
        }
        let edge = RelayOptions {
            max_rows_per_sec: 0.001,
            lease: Duration::from_secs(600),
            ..ok.clone()
        };
        edge.validate().expect("the ends of the ranges are allowed");
    }
}
