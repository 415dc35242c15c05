//! `dispatcher bench outbox`: the outbox relay as its own process (`dispatcher outbox run`) against the
//! real Postgres and Redis, in a database of its own that it drops at the end. Phases:
//! - **drain**: rows relayed per second from a pre-filled table;
//! - **wake-up cost**: producer commits per second with the wake-up trigger, without it, and with a naive
//!   NOTIFY on every commit;
//! - **latency**: open-loop producers at a steady rate, then a burst rate; latency from the producer's
//!   COMMIT returning to a blocking `XREADGROUP` reader receiving the entry;
//! - **horizon**: the steady load while another session holds a REPEATABLE READ snapshot (xmin horizon);
//! - **overload**: producers offering 10× what the relay is allowed to publish; the relay's RSS over time.
//!
//! Every row of the drain, latency and horizon phases is checked against its stream: lost and duplicated
//! are counted.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use redis::Value;
use serde::Serialize;
use tokio_postgres::{Client, NoTls};

use crate::BenchError;
use crate::server::{redis_persistence, rss_bytes_of, terminate};

/// What to run.
#[derive(Debug, Clone)]
pub struct OutboxBenchOptions {
    /// The `dispatcher` binary (runs the relay).
    pub exe: PathBuf,
    /// A Postgres URL with the right to create databases; the bench works in a database of its own.
    pub database_url: String,
    pub redis: String,
    /// Rows pre-filled for the drain phase.
    pub fill_rows: u64,
    /// Steady rate (rows/s, one row per commit) and how long.
    pub steady_rate: f64,
    pub steady_secs: f64,
    /// Burst rate (rows/s) and how long.
    pub burst_rate: f64,
    pub burst_secs: f64,
    /// How long each wake-up cost run lasts.
    pub wakeup_secs: f64,
    /// How long the horizon is held, and the final part of it that is measured.
    pub horizon_secs: f64,
    pub horizon_measure_secs: f64,
    /// Overload: the relay's rate limit (producers offer 10×) and how long.
    pub overload_relay_rate: f64,
    pub overload_secs: f64,
    /// Producer connections.
    pub producers: usize,
    /// Rows per producer commit in the steady and horizon phases (the burst and overload phases use
    /// more, so that the producers, not the relay, stay within the machine).
    pub rows_per_commit: usize,
    /// Skip phases (for quick looks).
    pub skip_horizon: bool,
    pub skip_overload: bool,
}

impl OutboxBenchOptions {
    /// The full run of the closing note.
    pub fn full(exe: PathBuf, database_url: String, redis: String) -> Self {
        OutboxBenchOptions {
            exe,
            database_url,
            redis,
            fill_rows: 1_000_000,
            steady_rate: 5_000.0,
            steady_secs: 60.0,
            burst_rate: 40_000.0,
            burst_secs: 20.0,
            wakeup_secs: 5.0,
            horizon_secs: 180.0,
            horizon_measure_secs: 60.0,
            overload_relay_rate: 2_500.0,
            overload_secs: 60.0,
            producers: 24,
            rows_per_commit: 5,
            skip_horizon: false,
            skip_overload: false,
        }
    }

    /// A short run for CI.
    pub fn smoke(exe: PathBuf, database_url: String, redis: String) -> Self {
        OutboxBenchOptions {
            fill_rows: 20_000,
            steady_rate: 1_000.0,
            steady_secs: 3.0,
            burst_rate: 4_000.0,
            burst_secs: 2.0,
            wakeup_secs: 1.0,
            horizon_secs: 4.0,
            horizon_measure_secs: 2.0,
            overload_relay_rate: 1_000.0,
            overload_secs: 4.0,
            producers: 8,
            ..Self::full(exe, database_url, redis)
        }
    }
}

/// The results; the JSON keys are stable.
#[derive(Debug, Clone, Serialize, Default)]
pub struct OutboxBenchReport {
    /// Drain: rows relayed per second from a pre-filled table.
    pub rows_per_sec: f64,
    pub drain_rows: u64,
    pub drain_secs: f64,
    /// Producer commits per second (one row each): wake-up trigger on, off, and NOTIFY on every commit.
    pub producer_commits_per_sec_wakeup_on: f64,
    pub producer_commits_per_sec_wakeup_off: f64,
    pub producer_commits_per_sec_notify_every_commit: f64,
    /// Steady load: offered and achieved rows/s, commit → stream latency.
    pub steady_offered_rows_per_sec: f64,
    pub steady_achieved_rows_per_sec: f64,
    pub commit_to_stream_p50_ms: f64,
    pub commit_to_stream_p99_ms: f64,
    pub commit_to_stream_max_ms: f64,
    /// Burst load.
    pub burst_offered_rows_per_sec: f64,
    pub burst_achieved_rows_per_sec: f64,
    pub burst_p50_ms: f64,
    pub burst_p99_ms: f64,
    pub burst_max_ms: f64,
    /// Horizon held: rows/s delivered and latency over the measured part; dead tuples at the end.
    pub horizon_rows_per_sec: f64,
    pub horizon_p50_ms: f64,
    pub horizon_p99_ms: f64,
    pub horizon_max_ms: f64,
    pub horizon_backend_xmin_held: bool,
    pub horizon_dead_tuples: i64,
    /// Overload: what producers offered and the relay published; the relay's RSS.
    pub overload_offered_rows_per_sec: f64,
    pub overload_published_rows_per_sec: f64,
    pub relay_peak_rss_bytes: u64,
    pub relay_rss_start_bytes: u64,
    pub relay_rss_end_bytes: u64,
    /// Slope of a least-squares line through the RSS samples after warm-up, bytes per minute.
    pub relay_rss_slope_bytes_per_min: f64,
    /// Rows checked against the streams, and how many were missing or published twice.
    pub rows: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Postgres and Redis durability, and the relay's settings.
    pub settings: String,
}

impl std::fmt::Display for OutboxBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "settings: {}", self.settings)?;
        writeln!(
            f,
            "drain:    {} rows in {:.2} s = {:.0} rows/s",
            self.drain_rows, self.drain_secs, self.rows_per_sec
        )?;
        writeln!(
            f,
            "wake-up:  producer commits/s {:.0} with the gated wake-up, {:.0} without a trigger, {:.0} with NOTIFY on every commit",
            self.producer_commits_per_sec_wakeup_on,
            self.producer_commits_per_sec_wakeup_off,
            self.producer_commits_per_sec_notify_every_commit
        )?;
        writeln!(
            f,
            "steady:   {:.0}/{:.0} rows/s achieved/offered; commit → stream p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.steady_achieved_rows_per_sec,
            self.steady_offered_rows_per_sec,
            self.commit_to_stream_p50_ms,
            self.commit_to_stream_p99_ms,
            self.commit_to_stream_max_ms
        )?;
        writeln!(
            f,
            "burst:    {:.0}/{:.0} rows/s achieved/offered; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.burst_achieved_rows_per_sec,
            self.burst_offered_rows_per_sec,
            self.burst_p50_ms,
            self.burst_p99_ms,
            self.burst_max_ms
        )?;
        writeln!(
            f,
            "horizon:  snapshot held (backend_xmin set: {}); last part {:.0} rows/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; dead tuples {}",
            self.horizon_backend_xmin_held,
            self.horizon_rows_per_sec,
            self.horizon_p50_ms,
            self.horizon_p99_ms,
            self.horizon_max_ms,
            self.horizon_dead_tuples
        )?;
        writeln!(
            f,
            "overload: offered {:.0} rows/s, relay published {:.0} rows/s; relay RSS start {:.1} MB, end {:.1} MB, peak {:.1} MB, slope {:.2} MB/min",
            self.overload_offered_rows_per_sec,
            self.overload_published_rows_per_sec,
            self.relay_rss_start_bytes as f64 / 1e6,
            self.relay_rss_end_bytes as f64 / 1e6,
            self.relay_peak_rss_bytes as f64 / 1e6,
            self.relay_rss_slope_bytes_per_min / 1e6
        )?;
        write!(
            f,
            "checked:  {} rows against the streams: {} lost, {} duplicated",
            self.rows, self.lost, self.duplicated
        )
    }
}

fn setup(e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(e.to_string())
}

fn run_err(e: impl std::fmt::Display + std::fmt::Debug) -> BenchError {
    // tokio-postgres says only "db error" in Display; the server's message is in Debug.
    let text = e.to_string();
    if text == "db error" {
        BenchError::Run(format!("{e:?}"))
    } else {
        BenchError::Run(text)
    }
}

/// `url` with its database name replaced by `db`.
fn with_database(url: &str, db: &str) -> Result<String, BenchError> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base
        .find("://")
        .ok_or_else(|| setup(format!("not a postgres:// URL: {url}")))?
        + 3;
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

async fn pg(url: &str) -> Result<Client, BenchError> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| setup(format!("connecting to Postgres: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The relay under test, in its own process; SIGTERM and wait on drop.
struct RelayProcess {
    child: Child,
}

impl RelayProcess {
    fn start(
        o: &OutboxBenchOptions,
        db_url: &str,
        stream: &str,
        extra: &[(&str, String)],
    ) -> Result<Self, BenchError> {
        let mut cmd = Command::new(&o.exe);
        cmd.args(["outbox", "run"])
            .env("DATABASE_URL", db_url)
            .env("DISPATCHER_REDIS_URL", &o.redis)
            .env("DISPATCH_STREAM_NAME", stream)
            .env("REDIS_STREAM_MAXLEN", "0")
            .env("DISPATCHER_LOG", "warn")
            .env_remove("DISPATCHER_ENABLED")
            .env_remove("DISPATCH_MAX_ROWS_PER_SEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| setup(format!("spawning {} outbox run: {e}", o.exe.display())))?;
        Ok(RelayProcess { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (the relay publishes what it read and releases its leases), SIGKILL after 15 s.
    fn stop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(15));
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// Per outbox id: when its commit returned and when the reader received it (ns since `epoch`, 0 = not
/// yet). Ids are dense from the phase's first id.
struct Times {
    base: i64,
    commit: Vec<AtomicU64>,
    seen: Vec<AtomicU64>,
    epoch: Instant,
}

impl Times {
    fn new(base: i64, capacity: usize, epoch: Instant) -> Self {
        Times {
            base,
            commit: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            seen: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            epoch,
        }
    }

    fn slot(&self, id: i64) -> Option<usize> {
        usize::try_from(id - self.base)
            .ok()
            .filter(|i| *i < self.commit.len())
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos().max(1) as u64
    }

    fn committed(&self, ids: &[i64]) {
        let t = self.now();
        for id in ids {
            if let Some(i) = self.slot(*id) {
                self.commit[i].store(t, Ordering::Relaxed);
            }
        }
    }

    fn received(&self, id: i64) {
        if let Some(i) = self.slot(id) {
            let _ =
                self.seen[i].compare_exchange(0, self.now(), Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Latency histogram (µs) over rows committed in `[from, to)` ns; rows received before their commit
    /// returned count as 0.
    fn latency(&self, from: u64, to: u64) -> Result<(Histogram<u64>, u64), BenchError> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).map_err(run_err)?;
        let mut missing = 0;
        for (c, s) in self.commit.iter().zip(self.seen.iter()) {
            let c = c.load(Ordering::Relaxed);
            if c == 0 || c < from || c >= to {
                continue;
            }
            let s = s.load(Ordering::Relaxed);
            if s == 0 {
                missing += 1;
                continue;
            }
            h.record((s.saturating_sub(c) / 1000).max(1))
                .map_err(run_err)?;
        }
        Ok((h, missing))
    }
}

fn q_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    h.value_at_quantile(q) as f64 / 1000.0
}

/// A value of the outbox's identity sequence: rows inserted after this have higher ids (TRUNCATE does
/// not reset it).
async fn next_id(c: &Client) -> Result<i64, BenchError> {
    let r = c
        .query_one(
            "SELECT nextval(pg_get_serial_sequence('dispatcher.outbox', 'id'))",
            &[],
        )
        .await
        .map_err(run_err)?;
    Ok(r.get(0))
}

const PAYLOAD_SQL: &str = "jsonb_build_object('order_id', g, 'customer', md5(g::text), 'currency', 'EUR', \
     'total_cents', (g * 7919) % 100000, 'items', jsonb_build_array(jsonb_build_object('sku', 'SKU-' || (g % 977), 'qty', 1 + g % 5), \
     jsonb_build_object('sku', 'SKU-' || (g % 613), 'qty', 1)), 'note', repeat('x', 40))";

/// Open-loop producers: `rate` rows/s as commits of `rows_per_commit` rows for `secs`; returns rows
/// committed.
async fn produce(
    db_url: &str,
    connections: usize,
    rate: f64,
    rows_per_commit: usize,
    secs: f64,
    times: Option<Arc<Times>>,
) -> Result<u64, BenchError> {
    let commits_per_sec = rate / rows_per_commit as f64;
    let interval = Duration::from_secs_f64(1.0 / commits_per_sec);
    let total = (commits_per_sec * secs).round() as u64;
    let next = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    let sql = format!(
        "INSERT INTO dispatcher.outbox (event_type, aggregate_id, payload)
         SELECT 'OrderPlaced', 'order-' || (g % 50000), {PAYLOAD_SQL}
         FROM generate_series($1::int8, $1::int8 + $2::int8 - 1) g RETURNING id"
    );
    for _ in 0..connections {
        let client = pg(db_url).await?;
        let next = next.clone();
        let times = times.clone();
        let sql = sql.clone();
        tasks.push(tokio::spawn(async move {
            let stmt = client.prepare(&sql).await.map_err(run_err)?;
            let mut rows = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<u64, BenchError>(rows);
                }
                let due = start + interval.mul_f64(i as f64);
                tokio::time::sleep_until(due).await;
                let g = (i as i64) * rows_per_commit as i64 + rand::random::<u16>() as i64;
                let n = rows_per_commit as i64;
                let got = client.query(&stmt, &[&g, &n]).await.map_err(run_err)?;
                let ids: Vec<i64> = got.iter().map(|r| r.get(0)).collect();
                if let Some(t) = &times {
                    t.committed(&ids);
                }
                rows += ids.len() as u64;
            }
        }));
    }
    let mut rows = 0;
    for t in tasks {
        rows += t.await.map_err(run_err)??;
    }
    Ok(rows)
}

/// Closed-loop producers for `secs`: commits per second, one row per commit.
async fn commit_rate(db_url: &str, connections: usize, secs: f64) -> Result<f64, BenchError> {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..connections {
        let client = pg(db_url).await?;
        let stop = stop.clone();
        let count = count.clone();
        tasks.push(tokio::spawn(async move {
            let stmt = client
                .prepare(&format!(
                    "INSERT INTO dispatcher.outbox (event_type, aggregate_id, payload)
                     SELECT 'OrderPlaced', 'order-' || g, {PAYLOAD_SQL} FROM (SELECT $1::int8 AS g) s"
                ))
                .await
                .map_err(run_err)?;
            let mut i = c as i64 * 1_000_000_000;
            while !stop.load(Ordering::Relaxed) {
                client.execute(&stmt, &[&i]).await.map_err(run_err)?;
                count.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok::<(), BenchError>(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c0 = count.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let c1 = count.load(Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.map_err(run_err)??;
    }
    Ok((c1 - c0) as f64 / elapsed)
}

/// A blocking `XREADGROUP` reader of a stream that records every entry's receipt in `times` and counts
/// entries in `received`, until [`finish`](Self::finish).
struct StreamReader {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<(), BenchError>>,
}

impl StreamReader {
    fn start(redis_url: &str, stream: &str, times: Arc<Times>) -> Result<Self, BenchError> {
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = read_stream(redis_url, stream, times, received.clone(), stop.clone())?;
        Ok(StreamReader {
            received,
            stop,
            task,
        })
    }

    /// Entries received so far.
    fn count(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Stops reading; fails if the reader failed.
    async fn finish(self) -> Result<(), BenchError> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.map_err(run_err)?
    }
}

fn read_stream(
    redis_url: &str,
    stream: &str,
    times: Arc<Times>,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Result<tokio::task::JoinHandle<Result<(), BenchError>>, BenchError> {
    let client = redis::Client::open(redis_url).map_err(setup)?;
    let stream = stream.to_owned();
    Ok(tokio::spawn(async move {
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .map_err(run_err)?;
        let _: Result<(), _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg("bench")
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut c)
            .await;
        while !stop.load(Ordering::Relaxed) {
            let v: Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("bench")
                .arg("reader")
                .arg("COUNT")
                .arg(5000)
                .arg("BLOCK")
                .arg(100)
                .arg("NOACK")
                .arg("STREAMS")
                .arg(&stream)
                .arg(">")
                .query_async(&mut c)
                .await
                .map_err(run_err)?;
            for id in entry_ids(&v) {
                times.received(id);
                received.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }))
}

/// The `outbox_id` field of every entry of an `XREADGROUP`/`XRANGE` reply.
fn entry_ids(v: &Value) -> Vec<i64> {
    let mut out = Vec::new();
    let mut entries: Vec<&Value> = Vec::new();
    match v {
        // XREADGROUP: [[stream, [entries]]] (RESP2) or a map (RESP3).
        Value::Array(streams) => {
            for s in streams {
                match s {
                    Value::Array(pair) if pair.len() == 2 && matches!(pair[1], Value::Array(_)) => {
                        if let Value::Array(es) = &pair[1] {
                            if es.first().is_some_and(|e| matches!(e, Value::Array(_))) {
                                entries.extend(es.iter());
                            } else {
                                // XRANGE entry itself: [id, fields]
                                entries.push(s);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Value::Map(m) => {
            for (_, es) in m {
                if let Value::Array(es) = es {
                    entries.extend(es.iter());
                }
            }
        }
        _ => {}
    }
    for e in entries {
        if let Value::Array(pair) = e
            && let Some(Value::Array(fields)) = pair.get(1)
        {
            let mut it = fields.iter();
            while let (Some(k), Some(val)) = (it.next(), it.next()) {
                if bulk(k) == Some("outbox_id")
                    && let Some(id) = bulk(val).and_then(|s| s.parse().ok())
                {
                    out.push(id);
                }
            }
        }
    }
    out
}

fn bulk(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// Reads the whole stream and compares its outbox ids with the ids `[from, to)` in the table: (rows,
/// lost, duplicated). Deletes the stream afterwards.
async fn verify(
    db: &Client,
    redis_url: &str,
    stream: &str,
    from: i64,
    to: i64,
) -> Result<(u64, u64, u64), BenchError> {
    let client = redis::Client::open(redis_url).map_err(setup)?;
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .map_err(run_err)?;
    let mut seen = std::collections::HashMap::<i64, u32>::new();
    let mut start = "-".to_owned();
    loop {
        let v: Value = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut c)
            .await
            .map_err(run_err)?;
        let Value::Array(entries) = &v else { break };
        if entries.is_empty() {
            break;
        }
        let last_id = entries
            .last()
            .and_then(|e| match e {
                Value::Array(p) => p.first().and_then(bulk).map(str::to_owned),
                _ => None,
            })
            .ok_or_else(|| run_err("bad XRANGE reply"))?;
        for id in entry_ids(&v) {
            *seen.entry(id).or_default() += 1;
        }
        if entries.len() < 10_000 {
            break;
        }
        start = format!("({last_id}");
    }
    let _: Result<(), _> = redis::cmd("DEL").arg(stream).query_async(&mut c).await;
    let rows = db
        .query(
            "SELECT id FROM dispatcher.outbox WHERE id >= $1 AND id < $2",
            &[&from, &to],
        )
        .await
        .map_err(run_err)?;
    let mut lost = 0;
    for r in &rows {
        let id: i64 = r.get(0);
        if !seen.contains_key(&id) {
            lost += 1;
        }
    }
    let duplicated = seen.values().map(|n| u64::from(n.saturating_sub(1))).sum();
    Ok((rows.len() as u64, lost, duplicated))
}

async fn wait_for(received: &AtomicU64, target: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while received.load(Ordering::Relaxed) < target {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

async fn pg_settings(c: &Client) -> String {
    let mut parts = Vec::new();
    for name in [
        "server_version",
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "wal_level",
        "shared_buffers",
    ] {
        let v = c
            .query_one(&format!("SHOW {name}"), &[])
            .await
            .map(|r| r.get::<_, String>(0))
            .unwrap_or_else(|_| "?".into());
        parts.push(format!("{name}={v}"));
    }
    parts.join(" ")
}

/// Runs every phase.
pub async fn run(
    o: &OutboxBenchOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<OutboxBenchReport, BenchError> {
    let admin = pg(&o.database_url).await?;
    let db_name = format!(
        "dispatcher_bench_{}_{}",
        std::process::id(),
        rand::random::<u16>()
    );
    admin
        .batch_execute(&format!("CREATE DATABASE {db_name}"))
        .await
        .map_err(|e| setup(format!("creating the bench database: {e}")))?;
    let db_url = with_database(&o.database_url, &db_name)?;
    let result = run_in(o, &db_url, progress).await;
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
        .await;
    result
}

async fn run_in(
    o: &OutboxBenchOptions,
    db_url: &str,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<OutboxBenchReport, BenchError> {
    let mut r = OutboxBenchReport::default();
    let mut db = pg(db_url).await?;
    dispatcher_outbox::schema::migrate(&mut db)
        .await
        .map_err(|e| setup(format!("migrating: {e}")))?;
    let tag = format!(
        "bench-outbox-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    );
    r.settings = format!(
        "postgres: {}; redis: {}; relay: its own process, DISPATCH_BATCH_SIZE=1000 DISPATCH_TICK_MS=100 LISTEN on, REDIS_STREAM_MAXLEN=0 (no trimming, so every row can be checked); payload ≈ 250 B JSON over 50,000 aggregates; {} producer connections, {} rows per commit at the steady rate (more in the burst and overload)",
        pg_settings(&db).await,
        redis_persistence(&o.redis).await,
        o.producers,
        o.rows_per_commit
    );
    let epoch = Instant::now();
    let (mut rows, mut lost, mut dup) = (0, 0, 0);

    // Drain.
    progress("drain: filling the table");
    let stream = format!("{tag}:drain");
    let first = next_id(&db).await?;
    let chunk = 100_000u64;
    let mut filled = 0u64;
    while filled < o.fill_rows {
        let n = chunk.min(o.fill_rows - filled) as i64;
        db.execute(
            &format!(
                "INSERT INTO dispatcher.outbox (event_type, aggregate_id, payload)
                 SELECT 'OrderPlaced', 'order-' || (g % 50000), {PAYLOAD_SQL}
                 FROM generate_series($1::int8, $1::int8 + $2::int8 - 1) g"
            ),
            &[&(filled as i64), &n],
        )
        .await
        .map_err(run_err)?;
        filled += n as u64;
    }
    db.batch_execute("VACUUM ANALYZE dispatcher.outbox")
        .await
        .map_err(run_err)?;
    progress("drain: relaying");
    let times = Arc::new(Times::new(first, 0, epoch));
    let reader = StreamReader::start(&o.redis, &stream, times.clone())?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    let mut relay = RelayProcess::start(o, db_url, &stream, &[])?;
    if !wait_for(&reader.received, o.fill_rows, Duration::from_secs(600)).await {
        return Err(run_err(format!(
            "drain: only {} of {} rows arrived in 10 minutes",
            reader.count(),
            o.fill_rows
        )));
    }
    r.drain_secs = t0.elapsed().as_secs_f64();
    r.drain_rows = o.fill_rows;
    r.rows_per_sec = o.fill_rows as f64 / r.drain_secs;
    reader.finish().await?;
    relay.stop();
    let to = next_id(&db).await?;
    let (n, l, d) = verify(&db, &o.redis, &stream, first, to).await?;
    (rows, lost, dup) = (rows + n, lost + l, dup + d);

    // Wake-up cost (no relay running: what the producer's commit pays).
    progress("wake-up cost");
    r.producer_commits_per_sec_wakeup_on = commit_rate(db_url, o.producers, o.wakeup_secs).await?;
    db.batch_execute("ALTER TABLE dispatcher.outbox DISABLE TRIGGER outbox_wakeup")
        .await
        .map_err(run_err)?;
    r.producer_commits_per_sec_wakeup_off = commit_rate(db_url, o.producers, o.wakeup_secs).await?;
    db.batch_execute(
        "CREATE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN PERFORM pg_notify('bench_naive', ''); RETURN NULL; END $$;
         CREATE TRIGGER bench_naive AFTER INSERT ON dispatcher.outbox
             FOR EACH STATEMENT EXECUTE FUNCTION bench_notify();",
    )
    .await
    .map_err(run_err)?;
    r.producer_commits_per_sec_notify_every_commit =
        commit_rate(db_url, o.producers, o.wakeup_secs).await?;
    db.batch_execute(
        "DROP TRIGGER bench_naive ON dispatcher.outbox; DROP FUNCTION bench_notify();
         ALTER TABLE dispatcher.outbox ENABLE TRIGGER outbox_wakeup;
         TRUNCATE dispatcher.outbox;",
    )
    .await
    .map_err(run_err)?;
    db.batch_execute("VACUUM ANALYZE dispatcher.outbox")
        .await
        .map_err(run_err)?;

    // Steady, then burst.
    progress("latency: steady load");
    let stream = format!("{tag}:latency");
    let first = next_id(&db).await?;
    let steady_rows = (o.steady_rate * o.steady_secs) as usize;
    let burst_rows = (o.burst_rate * o.burst_secs) as usize;
    let times = Arc::new(Times::new(
        first,
        (steady_rows + burst_rows) * 2 + 100_000,
        epoch,
    ));
    let reader = StreamReader::start(&o.redis, &stream, times.clone())?;
    let mut relay = RelayProcess::start(o, db_url, &stream, &[])?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s0 = times.now();
    let t0 = Instant::now();
    let produced = produce(
        db_url,
        o.producers,
        o.steady_rate,
        o.rows_per_commit,
        o.steady_secs,
        Some(times.clone()),
    )
    .await?;
    r.steady_offered_rows_per_sec = o.steady_rate;
    r.steady_achieved_rows_per_sec = produced as f64 / t0.elapsed().as_secs_f64();
    let s1 = times.now();
    progress("latency: burst load");
    let per_commit = ((o.burst_rate / 1_000.0).ceil() as usize).max(o.rows_per_commit);
    let t0 = Instant::now();
    let burst = produce(
        db_url,
        o.producers,
        o.burst_rate,
        per_commit,
        o.burst_secs,
        Some(times.clone()),
    )
    .await?;
    r.burst_offered_rows_per_sec = o.burst_rate;
    r.burst_achieved_rows_per_sec = burst as f64 / t0.elapsed().as_secs_f64();
    let s2 = times.now();
    wait_for(&reader.received, produced + burst, Duration::from_secs(120)).await;
    reader.finish().await?;
    relay.stop();
    let (h, _) = times.latency(s0, s1)?;
    r.commit_to_stream_p50_ms = q_ms(&h, 0.5);
    r.commit_to_stream_p99_ms = q_ms(&h, 0.99);
    r.commit_to_stream_max_ms = h.max() as f64 / 1000.0;
    let (h, _) = times.latency(s1, s2)?;
    r.burst_p50_ms = q_ms(&h, 0.5);
    r.burst_p99_ms = q_ms(&h, 0.99);
    r.burst_max_ms = h.max() as f64 / 1000.0;
    let to = next_id(&db).await?;
    let (n, l, d) = verify(&db, &o.redis, &stream, first, to).await?;
    (rows, lost, dup) = (rows + n, lost + l, dup + d);

    if !o.skip_horizon {
        progress("horizon: snapshot held");
        let stream = format!("{tag}:horizon");
        let holder = pg(db_url).await?;
        holder
            .batch_execute(
                "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM dispatcher.outbox_lease;",
            )
            .await
            .map_err(run_err)?;
        let pid: i32 = holder
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(run_err)?
            .get(0);
        let held: bool = db
            .query_one(
                "SELECT backend_xmin IS NOT NULL FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .map_err(run_err)?
            .get(0);
        r.horizon_backend_xmin_held = held;
        let first = next_id(&db).await?;
        let rows_n = (o.steady_rate * o.horizon_secs) as usize;
        let times = Arc::new(Times::new(first, rows_n * 2 + 100_000, epoch));
        let reader = StreamReader::start(&o.redis, &stream, times.clone())?;
        let mut relay = RelayProcess::start(o, db_url, &stream, &[])?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let h0 = times.now();
        let measure_from =
            h0 + Duration::from_secs_f64(o.horizon_secs - o.horizon_measure_secs).as_nanos() as u64;
        // Count deliveries during the measured part.
        let counter = {
            let received = reader.received.clone();
            let wait = Duration::from_secs_f64(o.horizon_secs - o.horizon_measure_secs);
            let measure = Duration::from_secs_f64(o.horizon_measure_secs);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let a = received.load(Ordering::Relaxed);
                let t = Instant::now();
                tokio::time::sleep(measure).await;
                (received.load(Ordering::Relaxed) - a) as f64 / t.elapsed().as_secs_f64()
            })
        };
        let produced = produce(
            db_url,
            o.producers,
            o.steady_rate,
            o.rows_per_commit,
            o.horizon_secs,
            Some(times.clone()),
        )
        .await?;
        let h1 = times.now();
        r.horizon_rows_per_sec = counter.await.map_err(run_err)?;
        wait_for(&reader.received, produced, Duration::from_secs(120)).await;
        let still_held: bool = db
            .query_one(
                "SELECT backend_xmin IS NOT NULL FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .map_err(run_err)?
            .get(0);
        r.horizon_backend_xmin_held &= still_held;
        r.horizon_dead_tuples = db
            .query_one(
                "SELECT COALESCE(n_dead_tup, 0) FROM pg_stat_user_tables WHERE relid = 'dispatcher.outbox'::regclass",
                &[],
            )
            .await
            .map_err(run_err)?
            .get(0);
        reader.finish().await?;
        relay.stop();
        holder.batch_execute("ROLLBACK").await.map_err(run_err)?;
        let (h, _) = times.latency(measure_from, h1)?;
        r.horizon_p50_ms = q_ms(&h, 0.5);
        r.horizon_p99_ms = q_ms(&h, 0.99);
        r.horizon_max_ms = h.max() as f64 / 1000.0;
        let to = next_id(&db).await?;
        let (n, l, d) = verify(&db, &o.redis, &stream, first, to).await?;
        (rows, lost, dup) = (rows + n, lost + l, dup + d);
    }

    if !o.skip_overload {
        progress("overload: 10× the relay's rate");
        let stream = format!("{tag}:overload");
        let times = Arc::new(Times::new(0, 0, epoch));
        let reader = StreamReader::start(&o.redis, &stream, times)?;
        let mut relay = RelayProcess::start(
            o,
            db_url,
            &stream,
            &[(
                "DISPATCH_MAX_ROWS_PER_SEC",
                o.overload_relay_rate.to_string(),
            )],
        )?;
        let pid = relay.pid();
        let offered = o.overload_relay_rate * 10.0;
        let sampler = {
            let secs = o.overload_secs;
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let t0 = Instant::now();
                while t0.elapsed().as_secs_f64() < secs {
                    if let Some(rss) = rss_bytes_of(pid) {
                        samples.push((t0.elapsed().as_secs_f64(), rss));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                samples
            })
        };
        let r0 = reader.count();
        let t0 = Instant::now();
        let per_commit = ((offered / 1_000.0).ceil() as usize).max(o.rows_per_commit);
        let produced = produce(
            db_url,
            o.producers,
            offered,
            per_commit,
            o.overload_secs,
            None,
        )
        .await?;
        let elapsed = t0.elapsed().as_secs_f64();
        r.overload_offered_rows_per_sec = produced as f64 / elapsed;
        r.overload_published_rows_per_sec = (reader.count() - r0) as f64 / elapsed;
        let samples = sampler.await.map_err(run_err)?;
        reader.finish().await?;
        relay.stop();
        r.relay_peak_rss_bytes = samples.iter().map(|s| s.1).max().unwrap_or(0);
        r.relay_rss_start_bytes = samples.first().map(|s| s.1).unwrap_or(0);
        r.relay_rss_end_bytes = samples.last().map(|s| s.1).unwrap_or(0);
        // The slope after warm-up (the first third, at most 10 s): buffers and arenas fill at start.
        let warm = (o.overload_secs / 3.0).min(10.0);
        let steady: Vec<(f64, u64)> = samples.iter().copied().filter(|s| s.0 >= warm).collect();
        r.relay_rss_slope_bytes_per_min = slope(&steady) * 60.0;
        let client = redis::Client::open(o.redis.as_str()).map_err(setup)?;
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            let _: Result<(), _> = redis::cmd("DEL").arg(&stream).query_async(&mut c).await;
        }
    }
    r.rows = rows;
    r.lost = lost;
    r.duplicated = dup;
    Ok(r)
}

/// Least-squares slope of `(x, y)` samples, y per x.
fn slope(samples: &[(f64, u64)]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let my = samples.iter().map(|s| s.1 as f64).sum::<f64>() / n;
    let num: f64 = samples.iter().map(|s| (s.0 - mx) * (s.1 as f64 - my)).sum();
    let den: f64 = samples.iter().map(|s| (s.0 - mx).powi(2)).sum();
    if den == 0.0 { 0.0 } else { num / den }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "b").expect("url"),
            "postgres://u@h:5432/b"
        );
        assert_eq!(
            with_database("postgres://u@h:5432", "b").expect("url"),
            "postgres://u@h:5432/b"
        );
        assert_eq!(
            with_database("postgresql://h/x?sslmode=disable", "b").expect("url"),
            "postgresql://h/b?sslmode=disable"
        );
        assert!(with_database("nonsense", "b").is_err());
    }

    #[test]
    fn slope_of_a_line() {
        let s: Vec<(f64, u64)> = (0..10).map(|i| (i as f64, 100 + 5 * i as u64)).collect();
        assert!((slope(&s) - 5.0).abs() < 1e-9);
        assert_eq!(slope(&[(0.0, 1)]), 0.0);
    }
}
