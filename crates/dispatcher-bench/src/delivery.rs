//! `dispatcher bench delivery`: push delivery end to end as separate processes (3 dispatchers, 3
//! consumers, Redis) fed by an open-loop publisher that keeps a ledger. First the rate is raised until
//! the system saturates (the ceiling, no kills); then, at a fixed rate, the dispatcher holding the most
//! partitions is SIGKILLed and restarted every few seconds, and in a second scenario a consumer is. The
//! ledger is checked against the recorded results and the consumers' run logs: lost, duplicated results,
//! reprocessed, redeliveries, dispatch → ack latency and each failover gap.

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use dispatcher_delivery::keys::Partitioning;
use dispatcher_wire::frame::MessageId;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use parking_lot::Mutex;
use serde::Serialize;

use crate::BenchError;
use crate::server::{redis_persistence, terminate};

/// How the bench runs.
#[derive(Debug, Clone)]
pub struct DeliveryBenchOptions {
    pub exe: PathBuf,
    pub redis_url: String,
    pub partitions: u16,
    pub dispatchers: usize,
    pub consumers: usize,
    /// Message body size, bytes.
    pub body_bytes: usize,
    /// Ceiling search: first rate, growth factor per step, step length, highest rate tried.
    pub ceiling_start: f64,
    pub ceiling_factor: f64,
    pub ceiling_step_secs: f64,
    pub ceiling_max: f64,
    pub skip_ceiling: bool,
    /// Chaos scenarios: rate (None = half the ceiling), length, kill period.
    pub rate: Option<f64>,
    pub duration_secs: f64,
    pub kill_every_secs: f64,
    pub skip_consumer_kills: bool,
    pub lease_ttl_ms: u64,
    pub ack_timeout_ms: u64,
    pub claim_ttl_ms: u64,
    /// How long to wait for the backlog to drain after a scenario.
    pub drain_secs: f64,
    /// Async worker threads of each dispatcher and consumer process (seven processes share two cores:
    /// one thread each avoids most cross-thread wake-ups).
    pub worker_threads: usize,
}

impl DeliveryBenchOptions {
    pub fn full(exe: PathBuf, redis_url: String) -> Self {
        DeliveryBenchOptions {
            exe,
            redis_url,
            partitions: 12,
            dispatchers: 3,
            consumers: 3,
            body_bytes: 128,
            ceiling_start: 10_000.0,
            ceiling_factor: 1.25,
            ceiling_step_secs: 6.0,
            ceiling_max: 400_000.0,
            skip_ceiling: false,
            rate: None,
            duration_secs: 120.0,
            kill_every_secs: 15.0,
            skip_consumer_kills: false,
            lease_ttl_ms: 1_000,
            ack_timeout_ms: 10_000,
            claim_ttl_ms: 2_000,
            drain_secs: 90.0,
            worker_threads: std::env::var("DISPATCHER_BENCH_WORKER_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n >= 1)
                .unwrap_or(1),
        }
    }

    pub fn smoke(exe: PathBuf, redis_url: String) -> Self {
        DeliveryBenchOptions {
            ceiling_start: 2_000.0,
            ceiling_factor: 2.0,
            ceiling_step_secs: 2.0,
            ceiling_max: 4_000.0,
            duration_secs: 10.0,
            kill_every_secs: 4.0,
            drain_secs: 60.0,
            ..Self::full(exe, redis_url)
        }
    }
}

/// One step of the ceiling search.
#[derive(Debug, Clone, Serialize)]
pub struct CeilingStep {
    pub offered_per_sec: f64,
    pub published_per_sec: f64,
    pub acked_per_sec: f64,
    pub saturated: bool,
}

/// One chaos scenario's outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScenarioReport {
    pub kind: String,
    pub offered_per_sec: f64,
    pub messages_per_sec: f64,
    pub sent: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reprocessed: u64,
    /// Reprocessed messages that the killed consumer had not been running (must be 0).
    pub reprocessed_not_held: u64,
    pub redelivered: u64,
    pub dead: u64,
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub ack_max_ms: f64,
    pub entry_to_ack_p50_ms: f64,
    pub entry_to_ack_p99_ms: f64,
    pub kills: u32,
    pub failover_gaps_ms: Vec<f64>,
    pub max_failover_gap_ms: f64,
    pub publisher_lag_p99_ms: f64,
}

/// The bench's report; its JSON is the last line of `--json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeliveryBenchReport {
    pub redis_persistence: String,
    pub partitions: u16,
    pub dispatchers: usize,
    pub consumers: usize,
    pub body_bytes: usize,
    pub ceiling_messages_per_sec: f64,
    pub ceiling_steps: Vec<CeilingStep>,
    pub messages_per_sec: f64,
    pub offered_per_sec: f64,
    pub sent: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reprocessed: u64,
    pub redelivered: u64,
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub max_failover_gap_ms: f64,
    pub leader_kills: ScenarioReport,
    pub consumer_kills: Option<ScenarioReport>,
}

impl std::fmt::Display for DeliveryBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "push delivery: {} dispatchers, {} consumers, {} partitions, {} B bodies; Redis {}",
            self.dispatchers,
            self.consumers,
            self.partitions,
            self.body_bytes,
            self.redis_persistence
        )?;
        for s in &self.ceiling_steps {
            writeln!(
                f,
                "  ceiling step: offered {:>9.0}/s  published {:>9.0}/s  acked {:>9.0}/s{}",
                s.offered_per_sec,
                s.published_per_sec,
                s.acked_per_sec,
                if s.saturated { "  (saturated)" } else { "" }
            )?;
        }
        writeln!(
            f,
            "  ceiling: {:.0} messages/s acknowledged",
            self.ceiling_messages_per_sec
        )?;
        for s in std::iter::once(&self.leader_kills).chain(self.consumer_kills.iter()) {
            writeln!(
                f,
                "  {}: offered {:.0}/s, achieved {:.0}/s, sent {}, lost {}, duplicated {}, reprocessed {} \
                 (not held by the killed consumer: {}), redelivered {}, dead {}",
                s.kind,
                s.offered_per_sec,
                s.messages_per_sec,
                s.sent,
                s.lost,
                s.duplicated,
                s.reprocessed,
                s.reprocessed_not_held,
                s.redelivered,
                s.dead
            )?;
            writeln!(
                f,
                "    deliver→ack p50 {:.2} ms p99 {:.2} ms max {:.1} ms; entry→ack p50 {:.1} ms p99 {:.1} ms; \
                 publisher lag p99 {:.1} ms; {} kills, failover gaps ms {:?} (max {:.0})",
                s.ack_p50_ms,
                s.ack_p99_ms,
                s.ack_max_ms,
                s.entry_to_ack_p50_ms,
                s.entry_to_ack_p99_ms,
                s.publisher_lag_p99_ms,
                s.kills,
                s.failover_gaps_ms
                    .iter()
                    .map(|g| g.round())
                    .collect::<Vec<_>>(),
                s.max_failover_gap_ms
            )?;
        }
        Ok(())
    }
}

/// A connection that waits for slow replies (the default gives up after 500 ms, which a saturated Redis
/// exceeds).
async fn conn_of(client: &redis::Client) -> Result<redis::aio::MultiplexedConnection, BenchError> {
    let cfg =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .map_err(setup)
}

fn setup(e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(e.to_string())
}

const SECRET: &str = "bench-shared-secret-0123456789";

/// The processes of one run.
struct Fleet {
    opts: DeliveryBenchOptions,
    prefix: String,
    dir: PathBuf,
    ports: Vec<u16>,
    consumers: Vec<Option<Child>>,
    dispatchers: Vec<Option<Child>>,
    /// Generation of each dispatcher process (its node id is `d<i>g<gen>`).
    dgen: Vec<u32>,
    cgen: Vec<u32>,
    /// Files of the current scenario.
    scenario: String,
}

impl Fleet {
    fn env(&self, c: &mut Command) {
        c.env("DISPATCHER_REDIS_URL", &self.opts.redis_url)
            .env("DISPATCHER_SHARED_SECRET", SECRET)
            .env("DISPATCHER_KEY_PREFIX", &self.prefix)
            .env(
                "DISPATCHER_DELIVERY_PARTITIONS",
                self.opts.partitions.to_string(),
            )
            .env(
                "DISPATCHER_LEASE_TTL_MS",
                self.opts.lease_ttl_ms.to_string(),
            )
            .env(
                "DISPATCHER_ACK_TIMEOUT_MS",
                self.opts.ack_timeout_ms.to_string(),
            )
            .env(
                "DISPATCHER_CLAIM_TTL_MS",
                self.opts.claim_ttl_ms.to_string(),
            )
            .env("DISPATCHER_LOG", "warn")
            .env(
                "DISPATCHER_WORKER_THREADS",
                self.opts.worker_threads.to_string(),
            )
            .env("DISPATCHER_HTTP_ADDR", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
    }

    fn log_file(&self, name: &str) -> Result<std::fs::File, BenchError> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.err")))
            .map_err(setup)
    }

    fn start_consumer(&mut self, i: usize) -> Result<(), BenchError> {
        self.cgen[i] += 1;
        let mut c = Command::new(&self.opts.exe);
        self.env(&mut c);
        c.arg("consumer")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.ports[i]))
            .arg("--id")
            .arg(format!("c{i}"))
            .arg("--run-log")
            .arg(
                self.dir
                    .join(format!("{}.c{i}g{}.run", self.scenario, self.cgen[i])),
            )
            .stderr(self.log_file(&format!("c{i}"))?);
        self.consumers[i] = Some(c.spawn().map_err(setup)?);
        Ok(())
    }

    fn start_dispatcher(&mut self, i: usize) -> Result<(), BenchError> {
        self.dgen[i] += 1;
        let urls: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("ws://127.0.0.1:{p}/"))
            .collect();
        let mut c = Command::new(&self.opts.exe);
        self.env(&mut c);
        c.arg("delivery")
            .arg("run")
            .arg("--stats-file")
            .arg(
                self.dir
                    .join(format!("{}.d{i}g{}.stats", self.scenario, self.dgen[i])),
            )
            .env("DISPATCHER_NODE_ID", self.node_id(i))
            .env("DISPATCHER_CONSUMERS", urls.join(","))
            .stderr(self.log_file(&format!("d{i}"))?);
        self.dispatchers[i] = Some(c.spawn().map_err(setup)?);
        Ok(())
    }

    fn node_id(&self, i: usize) -> String {
        format!("d{i}g{}", self.dgen[i])
    }

    fn kill(child: &mut Option<Child>) {
        if let Some(mut c) = child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a new scenario's files: run logs and stats go to new files (processes restarted).
    fn restart_all(&mut self, scenario: &str) -> Result<(), BenchError> {
        self.stop_all();
        self.scenario = scenario.to_owned();
        for i in 0..self.consumers.len() {
            self.start_consumer(i)?;
        }
        std::thread::sleep(Duration::from_millis(300));
        for i in 0..self.dispatchers.len() {
            self.start_dispatcher(i)?;
        }
        Ok(())
    }

    fn stop_all(&mut self) {
        for d in self.dispatchers.iter_mut() {
            if let Some(mut c) = d.take() {
                terminate(&mut c, Duration::from_secs(5));
            }
        }
        for c in self.consumers.iter_mut() {
            if let Some(mut ch) = c.take() {
                terminate(&mut ch, Duration::from_secs(5));
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for d in self.dispatchers.iter_mut().chain(self.consumers.iter_mut()) {
            Self::kill(d);
        }
    }
}

/// The publisher's ledger: every id Redis gave back, with its partition.
#[derive(Default)]
struct Ledger {
    ids: Vec<(u16, MessageId)>,
    lag_us: Option<Histogram<u64>>,
}

/// Publishes at `rate` messages/s (open loop: each tick publishes what is due by now) until `stop`.
async fn publish(
    url: String,
    keys: Partitioning,
    rate: f64,
    body: Arc<Vec<u8>>,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    published: Arc<AtomicU64>,
) -> Result<(), BenchError> {
    let client = redis::Client::open(url.as_str()).map_err(setup)?;
    // Two connections so one round trip overlaps the next batch.
    let conns = [conn_of(&client).await?, conn_of(&client).await?];
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut next_p: u16 = 0;
    let mut inflight = futures_util::stream::FuturesUnordered::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut turn = 0usize;
    use futures_util::StreamExt;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(r) = inflight.next() => { r?; continue; }
        }
        if stop.load(Ordering::Acquire) {
            break;
        }
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        if due <= sent {
            continue;
        }
        let n = (due - sent).min(5_000);
        let due_at = start + Duration::from_secs_f64(sent as f64 / rate);
        let mut pipe = redis::pipe();
        let mut parts = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let p = next_p;
            next_p = (next_p + 1) % keys.partitions;
            pipe.cmd("XADD")
                .arg(keys.stream_key(p))
                .arg("*")
                .arg("body")
                .arg(body.as_slice());
            parts.push(p);
        }
        sent += n;
        let mut conn = conns[turn % 2].clone();
        turn += 1;
        let ledger = ledger.clone();
        let published = published.clone();
        inflight.push(async move {
            let ids: Vec<String> = pipe.query_async(&mut conn).await.map_err(setup)?;
            let lag = due_at.elapsed().as_micros() as u64;
            let mut l = ledger.lock();
            for (p, id) in parts.into_iter().zip(ids) {
                if let Ok(id) = id.parse() {
                    l.ids.push((p, id));
                }
            }
            if let Some(h) = l.lag_us.as_mut() {
                let _ = h.record(lag.max(1));
            }
            published.fetch_add(n, Ordering::Relaxed);
            Ok::<(), BenchError>(())
        });
    }
    while let Some(r) = inflight.next().await {
        r?;
    }
    Ok(())
}

/// Σ over partitions of (entries read − pending): messages acknowledged so far; and the backlog.
async fn progress(conn: &mut redis::aio::MultiplexedConnection, keys: &Partitioning) -> (u64, u64) {
    let mut acked = 0u64;
    let mut backlog = 0u64;
    for p in 0..keys.partitions {
        let v: redis::RedisResult<redis::Value> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(keys.stream_key(p))
            .query_async(conn)
            .await;
        let Ok(redis::Value::Array(groups)) = v else {
            continue;
        };
        for g in groups {
            let fields: Vec<(String, redis::Value)> = match g {
                redis::Value::Array(kv) => kv
                    .chunks(2)
                    .filter_map(|c| match c {
                        [redis::Value::BulkString(k), v] => {
                            Some((String::from_utf8_lossy(k).into_owned(), v.clone()))
                        }
                        _ => None,
                    })
                    .collect(),
                redis::Value::Map(kv) => kv
                    .into_iter()
                    .filter_map(|(k, v)| match k {
                        redis::Value::BulkString(k) => {
                            Some((String::from_utf8_lossy(&k).into_owned(), v))
                        }
                        redis::Value::SimpleString(k) => Some((k, v)),
                        _ => None,
                    })
                    .collect(),
                _ => continue,
            };
            let get = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .and_then(|(_, v)| match v {
                        redis::Value::Int(n) => Some(*n as u64),
                        _ => None,
                    })
            };
            let read = get("entries-read").unwrap_or(0);
            let pending = get("pending").unwrap_or(0);
            let lag = get("lag").unwrap_or(0);
            acked += read.saturating_sub(pending);
            backlog += lag + pending;
        }
    }
    (acked, backlog)
}

/// Which dispatcher (by node id) holds how many partitions, and the epoch of each held partition.
async fn holders(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &Partitioning,
) -> HashMap<u16, (String, u64)> {
    let mut out = HashMap::new();
    for p in 0..keys.partitions {
        let v: redis::RedisResult<Option<String>> = redis::cmd("GET")
            .arg(keys.lease_key(p))
            .query_async(conn)
            .await;
        if let Ok(Some(v)) = v
            && let Some((owner, epoch)) = v.rsplit_once('|')
            && let Ok(epoch) = epoch.parse()
        {
            out.insert(p, (owner.to_owned(), epoch));
        }
    }
    out
}

async fn wait_drained(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &Partitioning,
    limit: Duration,
) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        let (_, backlog) = progress(conn, keys).await;
        if backlog == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Runs the whole bench.
pub async fn run(
    o: &DeliveryBenchOptions,
    phase: &dyn Fn(&str),
) -> Result<DeliveryBenchReport, BenchError> {
    let run_id = format!("{:08x}", rand::random::<u32>());
    let prefix = format!("dbench{run_id}");
    let keys = Partitioning::new(format!("{prefix}:jobs"), o.partitions, format!("{prefix}:"))
        .map_err(setup)?;
    let dir = std::env::temp_dir().join(format!("dispatcher-bench-delivery-{run_id}"));
    std::fs::create_dir_all(&dir).map_err(setup)?;
    let mut ports = Vec::new();
    for _ in 0..o.consumers {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(setup)?;
        ports.push(l.local_addr().map_err(setup)?.port());
    }
    let mut fleet = Fleet {
        opts: o.clone(),
        prefix: prefix.clone(),
        dir: dir.clone(),
        ports,
        consumers: (0..o.consumers).map(|_| None).collect(),
        dispatchers: (0..o.dispatchers).map(|_| None).collect(),
        dgen: vec![0; o.dispatchers],
        cgen: vec![0; o.consumers],
        scenario: String::new(),
    };
    let client = redis::Client::open(o.redis_url.as_str()).map_err(setup)?;
    let mut conn = conn_of(&client).await?;
    let mut report = DeliveryBenchReport {
        redis_persistence: redis_persistence(&o.redis_url).await,
        partitions: o.partitions,
        dispatchers: o.dispatchers,
        consumers: o.consumers,
        body_bytes: o.body_bytes,
        ..Default::default()
    };
    let body: Arc<Vec<u8>> = Arc::new((0..o.body_bytes).map(|i| b'a' + (i % 26) as u8).collect());

    let result = async {
        // 1. Ceiling: raise the rate until acknowledgements fall behind.
        if !o.skip_ceiling {
            phase("ceiling");
            fleet.restart_all("ceiling")?;
            wait_all_held(&mut conn, &keys, Duration::from_secs(20)).await?;
            let mut rate = o.ceiling_start;
            while rate <= o.ceiling_max {
                phase(&format!("ceiling: offering {rate:.0}/s"));
                let step = ceiling_step(o, &keys, &body, rate, &mut conn).await?;
                let saturated = step.saturated;
                report.ceiling_messages_per_sec =
                    report.ceiling_messages_per_sec.max(step.acked_per_sec);
                report.ceiling_steps.push(step);
                if saturated {
                    break;
                }
                rate *= o.ceiling_factor;
            }
            phase("ceiling: draining");
            wait_drained(&mut conn, &keys, Duration::from_secs_f64(o.drain_secs)).await;
        }
        let rate = o
            .rate
            .unwrap_or((report.ceiling_messages_per_sec / 2.0).max(1_000.0));
        // 2. Leader kills.
        phase("leader kills");
        report.leader_kills = scenario(
            &mut fleet,
            &keys,
            &body,
            rate,
            &mut conn,
            Kill::Leader,
            phase,
        )
        .await?;
        // 3. Consumer kills.
        if !o.skip_consumer_kills {
            phase("consumer kills");
            report.consumer_kills = Some(
                scenario(
                    &mut fleet,
                    &keys,
                    &body,
                    rate,
                    &mut conn,
                    Kill::Consumer,
                    phase,
                )
                .await?,
            );
        }
        Ok::<(), BenchError>(())
    }
    .await;
    fleet.stop_all();
    crate::server::remove_prefix(&o.redis_url, &prefix).await;
    remove_partition_streams(&mut conn, &keys).await;
    result?;
    let l = &report.leader_kills;
    report.messages_per_sec = l.messages_per_sec;
    report.offered_per_sec = l.offered_per_sec;
    report.sent = l.sent;
    report.lost = l.lost;
    report.duplicated = l.duplicated;
    report.reprocessed = l.reprocessed;
    report.redelivered = l.redelivered;
    report.ack_p50_ms = l.ack_p50_ms;
    report.ack_p99_ms = l.ack_p99_ms;
    report.max_failover_gap_ms = l.max_failover_gap_ms;
    if std::env::var_os("DISPATCHER_BENCH_KEEP").is_some() {
        eprintln!("bench files kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(report)
}

async fn remove_partition_streams(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &Partitioning,
) {
    for p in 0..keys.partitions {
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(keys.stream_key(p))
            .query_async(conn)
            .await;
    }
}

async fn wait_all_held(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &Partitioning,
    limit: Duration,
) -> Result<(), BenchError> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if holders(conn, keys).await.len() == usize::from(keys.partitions) {
            // Links come up right after; give them a moment.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(BenchError::Setup(
        "the dispatchers did not take every partition within 20 s".into(),
    ))
}

async fn ceiling_step(
    o: &DeliveryBenchOptions,
    keys: &Partitioning,
    body: &Arc<Vec<u8>>,
    rate: f64,
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<CeilingStep, BenchError> {
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let published = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(publish(
        o.redis_url.clone(),
        keys.clone(),
        rate,
        body.clone(),
        stop.clone(),
        ledger,
        published.clone(),
    ));
    // A third of the step warms up; the rest is measured.
    let warm = Duration::from_secs_f64(o.ceiling_step_secs / 3.0);
    tokio::time::sleep(warm).await;
    let (a0, b0) = progress(conn, keys).await;
    let p0 = published.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(o.ceiling_step_secs) - warm).await;
    let (a1, b1) = progress(conn, keys).await;
    let p1 = published.load(Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Release);
    task.await.map_err(setup)??;
    let acked = (a1.saturating_sub(a0)) as f64 / secs;
    let pubd = (p1.saturating_sub(p0)) as f64 / secs;
    // Saturated: acknowledgements or the publisher fall 5 % behind the offer, or the backlog grows by
    // more than a quarter second of the offer.
    let saturated =
        acked < 0.95 * rate || pubd < 0.95 * rate || (b1 as f64 - b0 as f64) > rate / 4.0;
    Ok(CeilingStep {
        offered_per_sec: rate,
        published_per_sec: pubd,
        acked_per_sec: acked,
        saturated,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    Leader,
    Consumer,
}

async fn scenario(
    fleet: &mut Fleet,
    keys: &Partitioning,
    body: &Arc<Vec<u8>>,
    rate: f64,
    conn: &mut redis::aio::MultiplexedConnection,
    kind: Kill,
    phase: &dyn Fn(&str),
) -> Result<ScenarioReport, BenchError> {
    let o = fleet.opts.clone();
    let name = match kind {
        Kill::Leader => "leader_kills",
        Kill::Consumer => "consumer_kills",
    };
    fleet.restart_all(name)?;
    wait_all_held(conn, keys, Duration::from_secs(20)).await?;
    let (acked0, _) = progress(conn, keys).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(Ledger {
        ids: Vec::new(),
        lag_us: Histogram::new_with_bounds(1, 3_600_000_000, 3).ok(),
    }));
    let published = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let task = tokio::spawn(publish(
        o.redis_url.clone(),
        keys.clone(),
        rate,
        body.clone(),
        stop.clone(),
        ledger.clone(),
        published.clone(),
    ));
    let mut kills: Vec<(u64, HashMap<u16, u64>)> = Vec::new();
    let mut killed_consumers: Vec<(usize, u32)> = Vec::new();
    let period = Duration::from_secs_f64(o.kill_every_secs);
    let mut next_kill = started + period;
    let end = started + Duration::from_secs_f64(o.duration_secs);
    while next_kill < end {
        tokio::time::sleep_until(next_kill.into()).await;
        match kind {
            Kill::Leader => {
                let held = holders(conn, keys).await;
                let mut count: HashMap<&str, usize> = HashMap::new();
                for (owner, _) in held.values() {
                    *count.entry(owner.as_str()).or_default() += 1;
                }
                let Some(victim) = (0..fleet.dispatchers.len())
                    .max_by_key(|i| count.get(fleet.node_id(*i).as_str()).copied().unwrap_or(0))
                else {
                    break;
                };
                let node = fleet.node_id(victim);
                let orphans: HashMap<u16, u64> = held
                    .iter()
                    .filter(|(_, (owner, _))| *owner == node)
                    .map(|(p, (_, e))| (*p, *e))
                    .collect();
                Fleet::kill(&mut fleet.dispatchers[victim]);
                let t = crate_unix_ms();
                phase(&format!(
                    "leader kills: SIGKILL {node} ({} partitions)",
                    orphans.len()
                ));
                kills.push((t, orphans));
                fleet.start_dispatcher(victim)?;
            }
            Kill::Consumer => {
                let victim = kills.len() % fleet.consumers.len();
                Fleet::kill(&mut fleet.consumers[victim]);
                killed_consumers.push((victim, fleet.cgen[victim]));
                kills.push((crate_unix_ms(), HashMap::new()));
                phase(&format!("consumer kills: SIGKILL c{victim}"));
                tokio::time::sleep(Duration::from_millis(500)).await;
                fleet.start_consumer(victim)?;
            }
        }
        next_kill += period;
    }
    tokio::time::sleep_until(end.into()).await;
    stop.store(true, Ordering::Release);
    task.await.map_err(setup)??;
    let elapsed = started.elapsed().as_secs_f64();
    let (acked_end, _) = progress(conn, keys).await;
    phase(&format!("{name}: draining"));
    let drained = wait_drained(conn, keys, Duration::from_secs_f64(o.drain_secs)).await;
    // Let the stats files catch up, then stop everything so every log is complete.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    fleet.stop_all();

    phase(&format!("{name}: checking the ledger"));
    let ids = std::mem::take(&mut ledger.lock().ids);
    let lag_p99 = ledger
        .lock()
        .lag_us
        .as_ref()
        .map(|h| h.value_at_quantile(0.99) as f64 / 1000.0)
        .unwrap_or(0.0);
    let recorded = recorded_results(conn, keys, &ids).await?;
    let lost = ids.len() as u64 - recorded;
    let audit = read_run_logs(&fleet.dir, name)?;
    let held_by_killed: HashSet<(u16, MessageId)> = killed_consumers
        .iter()
        .flat_map(|(i, g)| started_not_recorded(&fleet.dir, name, *i, *g))
        .collect();
    let mut duplicated = 0u64;
    let mut reprocessed = 0u64;
    let mut reprocessed_not_held = 0u64;
    for (id, (runs, writes)) in &audit.counts {
        if *writes > 1 {
            duplicated += u64::from(*writes - 1);
        }
        if *runs > 1 {
            reprocessed += u64::from(*runs - 1);
            if !held_by_killed.contains(id) {
                reprocessed_not_held += u64::from(*runs - 1);
            }
        }
    }
    let stats = read_stats(&fleet.dir, name)?;
    let gaps: Vec<f64> = match kind {
        Kill::Leader => kills
            .iter()
            .flat_map(|(t, orphans)| {
                orphans.iter().map(|(p, old_epoch)| {
                    stats
                        .first_acks
                        .iter()
                        .filter(|(pp, e, at)| pp == p && e > old_epoch && *at >= *t)
                        .map(|(_, _, at)| (*at - *t) as f64)
                        .fold(f64::INFINITY, f64::min)
                })
            })
            .collect(),
        Kill::Consumer => Vec::new(),
    };
    if !drained {
        tracing::warn!(
            scenario = name,
            "the backlog did not drain in time; lost counts what had no result then"
        );
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(ScenarioReport {
        kind: name.to_owned(),
        offered_per_sec: rate,
        messages_per_sec: (acked_end.saturating_sub(acked0)) as f64 / elapsed.max(1e-9),
        sent: ids.len() as u64,
        lost,
        duplicated,
        reprocessed,
        reprocessed_not_held,
        redelivered: stats.redelivered,
        dead: stats.dead,
        ack_p50_ms: ms(&stats.deliver_to_ack, 0.5),
        ack_p99_ms: ms(&stats.deliver_to_ack, 0.99),
        ack_max_ms: stats.deliver_to_ack.max() as f64 / 1000.0,
        entry_to_ack_p50_ms: ms(&stats.entry_to_ack, 0.5),
        entry_to_ack_p99_ms: ms(&stats.entry_to_ack, 0.99),
        kills: kills.len() as u32,
        max_failover_gap_ms: gaps.iter().copied().fold(0.0, f64::max),
        failover_gaps_ms: gaps,
        publisher_lag_p99_ms: lag_p99,
    })
}

fn crate_unix_ms() -> u64 {
    dispatcher_delivery::stats::unix_ms()
}

/// How many ledger ids have a recorded result (`d|…` in their result hash).
async fn recorded_results(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &Partitioning,
    ids: &[(u16, MessageId)],
) -> Result<u64, BenchError> {
    let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
    for (p, id) in ids {
        by_key
            .entry(keys.result_key(*p, *id))
            .or_default()
            .push(id.to_string());
    }
    let mut done = 0u64;
    for (key, fields) in by_key {
        for chunk in fields.chunks(2_000) {
            let vals: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
                .arg(&key)
                .arg(chunk)
                .query_async(conn)
                .await
                .map_err(setup)?;
            done += vals
                .iter()
                .filter(|v| v.as_deref().is_some_and(|v| v.starts_with(b"d|")))
                .count() as u64;
        }
    }
    Ok(done)
}

struct Audit {
    /// Per message: handler runs, results recorded first.
    counts: HashMap<(u16, MessageId), (u32, u32)>,
}

/// Ids a killed consumer process had started (`R`) without recording (`W`).
fn started_not_recorded(
    dir: &Path,
    scenario: &str,
    i: usize,
    generation: u32,
) -> Vec<(u16, MessageId)> {
    let path = dir.join(format!("{scenario}.c{i}g{generation}.run"));
    let mut started = HashSet::new();
    let mut recorded = HashSet::new();
    if let Ok(f) = std::fs::File::open(path) {
        for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
            if let Some((tag, id)) = parse_line(&line) {
                match tag {
                    "R" => {
                        started.insert(id);
                    }
                    "W" | "D" => {
                        recorded.insert(id);
                    }
                    _ => {}
                }
            }
        }
    }
    started.difference(&recorded).copied().collect()
}

/// `<tag> <partition> <id>`.
fn parse_line(line: &str) -> Option<(&str, (u16, MessageId))> {
    let mut it = line.split(' ');
    let tag = it.next()?;
    let p = it.next()?.parse().ok()?;
    let id = it.next()?.parse().ok()?;
    Some((tag, (p, id)))
}

fn read_run_logs(dir: &Path, scenario: &str) -> Result<Audit, BenchError> {
    let mut counts: HashMap<(u16, MessageId), (u32, u32)> = HashMap::new();
    for entry in std::fs::read_dir(dir).map_err(setup)? {
        let path = entry.map_err(setup)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !(name.starts_with(&format!("{scenario}.")) && name.ends_with(".run")) {
            continue;
        }
        let f = std::fs::File::open(&path).map_err(setup)?;
        for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
            if let Some((tag, id)) = parse_line(&line) {
                let c = counts.entry(id).or_default();
                match tag {
                    "R" => c.0 += 1,
                    "W" => c.1 += 1,
                    _ => {}
                }
            }
        }
    }
    Ok(Audit { counts })
}

struct StatsSummary {
    deliver_to_ack: Histogram<u64>,
    entry_to_ack: Histogram<u64>,
    redelivered: u64,
    dead: u64,
    /// (partition, epoch, unix ms) of each epoch's first ack.
    first_acks: Vec<(u16, u64, u64)>,
}

fn read_stats(dir: &Path, scenario: &str) -> Result<StatsSummary, BenchError> {
    let mk = || Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).map_err(setup);
    let mut s = StatsSummary {
        deliver_to_ack: mk()?,
        entry_to_ack: mk()?,
        redelivered: 0,
        dead: 0,
        first_acks: Vec::new(),
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut de = Deserializer::new();
    for entry in std::fs::read_dir(dir).map_err(setup)? {
        let path = entry.map_err(setup)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !(name.starts_with(&format!("{scenario}.")) && name.ends_with(".stats")) {
            continue;
        }
        let f = std::fs::File::open(&path).map_err(setup)?;
        let mut last: Option<serde_json::Value> = None;
        for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            for (field, h) in [
                ("deliver_to_ack_us", &mut s.deliver_to_ack),
                ("entry_to_ack_us", &mut s.entry_to_ack),
            ] {
                if let Some(text) = v.get(field).and_then(|x| x.as_str())
                    && let Ok(bytes) = b64.decode(text)
                    && let Ok(part) = de.deserialize::<u64, _>(&mut bytes.as_slice())
                {
                    let _ = h.add(&part);
                }
            }
            if let Some(events) = v.get("events").and_then(|e| e.as_array()) {
                for e in events {
                    if e.get("kind").and_then(|k| k.as_str()) == Some("first_ack")
                        && let (Some(p), Some(ep), Some(t)) = (
                            e.get("partition").and_then(serde_json::Value::as_u64),
                            e.get("epoch").and_then(serde_json::Value::as_u64),
                            e.get("t_ms").and_then(serde_json::Value::as_u64),
                        )
                    {
                        s.first_acks.push((p as u16, ep, t));
                    }
                }
            }
            last = Some(v);
        }
        if let Some(v) = last {
            s.redelivered += v
                .get("redelivered")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            s.dead += v
                .get("dead")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
        }
    }
    Ok(s)
}
