//! `dispatcher bench join`: an open-loop generator of HTTP joins against a `dispatcher serve` process on a
//! real Redis. Distinct users, keep-alive connections spread over loopback source addresses, the server's
//! rate limits on. Requests are written when due (pipelined), and latency counts from when each request
//! was due, so a slow server cannot hide its queueing (no coordinated omission).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::BenchError;
use crate::httpc::{ResponseReader, connect_from, source_addr};
use crate::server::{ADMIN, ServerProcess, redis_persistence};

/// What to run.
#[derive(Debug, Clone)]
pub struct JoinBenchOptions {
    /// The `dispatcher` binary to run as the server.
    pub exe: PathBuf,
    /// Redis URL of the server's store.
    pub redis: String,
    /// Offered joins per second.
    pub rate: f64,
    /// Measured run length.
    pub duration: Duration,
    /// Keep-alive connections, each from its own loopback source address.
    pub connections: usize,
    /// Events the joins are spread over.
    pub events: u32,
    /// Capacity of each event (most joiners wait, as in a sale).
    pub capacity: u64,
    /// The server's per-address join limit (per second; burst is twice it).
    pub join_rate_per_ip: f64,
}

impl Default for JoinBenchOptions {
    fn default() -> Self {
        Self {
            exe: PathBuf::from("dispatcher"),
            redis: "redis://127.0.0.1:6379".into(),
            rate: 40_000.0,
            duration: Duration::from_secs(20),
            connections: 512,
            events: 10,
            capacity: 1_000,
            join_rate_per_ip: 100.0,
        }
    }
}

impl JoinBenchOptions {
    /// A few seconds, for CI.
    pub fn smoke(exe: PathBuf, redis: String) -> Self {
        Self {
            exe,
            redis,
            rate: 2_000.0,
            duration: Duration::from_secs(3),
            connections: 32,
            ..Self::default()
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct JoinBenchReport {
    /// Offered joins per second.
    pub offered_per_sec: f64,
    /// Successful joins (201/200) per second over the run.
    pub joins_per_sec: f64,
    /// Latency from when each request was due, ms.
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Requests that got no successful answer (non-2xx, including 429, or none at all).
    pub errors: u64,
    /// Of the errors: 429 answers from the server's rate limits.
    pub throttled: u64,
    /// Requests sent.
    pub sent: u64,
    /// Successful joins.
    pub joined: u64,
    /// Connections (= distinct source addresses).
    pub connections: usize,
    /// Events joined.
    pub events: u32,
    /// Offered window, s.
    pub duration_s: f64,
    /// From the first request's due time to the last answer, s.
    pub wall_s: f64,
    /// Server CPU over the run, % of one core.
    pub server_cpu_percent: f64,
    /// Server resident memory at the end, bytes.
    pub server_rss_bytes: u64,
    /// The server's join limit per address (per second).
    pub join_rate_per_ip: f64,
    /// Redis persistence settings.
    pub redis_persistence: String,
}

impl std::fmt::Display for JoinBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "bench join (open loop, HTTP, dispatcher serve on Redis: {})",
            self.redis_persistence
        )?;
        writeln!(
            f,
            "  config: offered {:.0}/s for {:.1} s over {} keep-alive connections from distinct 127.1.x.y addresses; {} events; distinct users; server limits on (joins {}/s per address, 1/s per user)",
            self.offered_per_sec,
            self.duration_s,
            self.connections,
            self.events,
            self.join_rate_per_ip
        )?;
        writeln!(
            f,
            "  joins: {:.0}/s achieved of {:.0}/s offered ({} joined in {:.1} s, {} sent, {} errors of which {} throttled)",
            self.joins_per_sec,
            self.offered_per_sec,
            self.joined,
            self.wall_s,
            self.sent,
            self.errors,
            self.throttled
        )?;
        writeln!(
            f,
            "  latency from due time: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms
        )?;
        write!(
            f,
            "  server: {:.0}% CPU (of one core), RSS {:.1} MB",
            self.server_cpu_percent,
            self.server_rss_bytes as f64 / 1e6
        )
    }
}

/// Runs the benchmark.
pub async fn run(opts: &JoinBenchOptions) -> Result<JoinBenchReport, BenchError> {
    if opts.rate <= 0.0 || opts.connections == 0 || opts.events == 0 {
        return Err(BenchError::Setup(
            "rate, connections and events must be positive".into(),
        ));
    }
    let prefix = format!("bj{}", rand::random::<u32>());
    let mut cfg = format!(
        "redis_url = {:?}\nkey_prefix = {:?}\n[http]\njoin_rate_per_ip = {}\njoin_burst_per_ip = {}\nrequest_rate_per_ip = {}\nrequest_burst_per_ip = {}\n",
        opts.redis,
        prefix,
        opts.join_rate_per_ip,
        opts.join_rate_per_ip * 2.0,
        opts.join_rate_per_ip * 2.0,
        opts.join_rate_per_ip * 4.0,
    );
    for e in 0..opts.events {
        cfg.push_str(&format!(
            "[[events]]\nid = \"bench-{e}\"\ncapacity = {}\nsession_ttl_ms = 600000\nabandon_timeout_ms = 600000\n",
            opts.capacity
        ));
    }
    let server = ServerProcess::start(&opts.exe, &cfg, ADMIN)?;
    let persistence = redis_persistence(&opts.redis).await;
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)
            .map_err(|e| BenchError::Setup(format!("histogram: {e}")))?,
    ));
    let sent = Arc::new(AtomicU64::new(0));
    let joined = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let throttled = Arc::new(AtomicU64::new(0));
    let users = Arc::new(AtomicU64::new(0));
    let windows = (opts.duration.as_millis() / 100 + 50) as usize;
    let timeline: Arc<Vec<AtomicU64>> = Arc::new((0..windows).map(|_| AtomicU64::new(0)).collect());
    let cpu0 = server.cpu_seconds().unwrap_or(0.0);
    // Every connection is open before the first request is due: connecting is not part of what is
    // measured, and a request due before its connection existed would count the connecting as latency.
    let mut streams = Vec::with_capacity(opts.connections);
    for c in 0..opts.connections {
        streams.push(connect_from(source_addr(c), server.addr).await?);
    }
    let start = Instant::now() + Duration::from_millis(100);
    let per_conn = opts.rate / opts.connections as f64;
    let mut tasks = Vec::with_capacity(opts.connections);
    for (c, stream) in streams.into_iter().enumerate() {
        let ctx = ConnCtx {
            server: server.addr,
            per_conn,
            phase: c as f64 / opts.connections as f64,
            start,
            duration: opts.duration,
            events: opts.events,
            hist: hist.clone(),
            sent: sent.clone(),
            joined: joined.clone(),
            errors: errors.clone(),
            throttled: throttled.clone(),
            users: users.clone(),
            timeline: timeline.clone(),
        };
        tasks.push(tokio::spawn(drive(stream, ctx)));
    }
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "a connection failed"),
            Err(e) => tracing::warn!(error = %e, "a connection task failed"),
        }
    }
    // Achieved throughput counts until the last answer arrived: a server that falls behind takes longer
    // than the offered window to answer everything, and its rate is what it answered per second.
    let wall = start
        .elapsed()
        .as_secs_f64()
        .max(opts.duration.as_secs_f64());
    if std::env::var_os("DISPATCHER_BENCH_TIMELINE").is_some() {
        for (i, w) in timeline.iter().enumerate() {
            let us = w.load(Ordering::Relaxed);
            if us > 20_000 {
                eprintln!(
                    "  window {:>5.1} s: worst {:.1} ms",
                    i as f64 / 10.0,
                    us as f64 / 1000.0
                );
            }
        }
    }
    let cpu = server.cpu_seconds().unwrap_or(cpu0) - cpu0;
    let rss = server.rss_bytes().unwrap_or(0);
    let events: Vec<String> = (0..opts.events).map(|e| format!("bench-{e}")).collect();
    server.delete_events(&events, ADMIN);
    drop(server);
    crate::server::remove_prefix(&opts.redis, &prefix).await;
    let h = hist.lock();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let joined = joined.load(Ordering::Relaxed);
    let sent = sent.load(Ordering::Relaxed);
    Ok(JoinBenchReport {
        offered_per_sec: opts.rate,
        joins_per_sec: joined as f64 / wall,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        max_ms: h.max() as f64 / 1000.0,
        errors: errors.load(Ordering::Relaxed) + sent.saturating_sub(h.len()),
        throttled: throttled.load(Ordering::Relaxed),
        sent,
        joined,
        connections: opts.connections,
        events: opts.events,
        duration_s: opts.duration.as_secs_f64(),
        wall_s: wall,
        server_cpu_percent: cpu / wall * 100.0,
        server_rss_bytes: rss,
        join_rate_per_ip: opts.join_rate_per_ip,
        redis_persistence: persistence,
    })
}

/// Decimal digits of `n`.
fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

struct ConnCtx {
    server: SocketAddr,
    per_conn: f64,
    phase: f64,
    start: Instant,
    duration: Duration,
    events: u32,
    hist: Arc<Mutex<Histogram<u64>>>,
    sent: Arc<AtomicU64>,
    joined: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    throttled: Arc<AtomicU64>,
    users: Arc<AtomicU64>,
    /// Worst latency (µs) per 100 ms window of due times, for `DISPATCHER_BENCH_TIMELINE=1`.
    timeline: Arc<Vec<AtomicU64>>,
}

/// One connection: a writer sending each request when due, a reader matching responses in order.
async fn drive(stream: tokio::net::TcpStream, ctx: ConnCtx) -> Result<(), BenchError> {
    let (r, mut w) = stream.into_split();
    let due: Arc<Mutex<VecDeque<Instant>>> = Arc::new(Mutex::new(VecDeque::new()));
    let total = (ctx.per_conn * ctx.duration.as_secs_f64()).floor() as u64;
    let reader = {
        let due = due.clone();
        let hist = ctx.hist.clone();
        let joined = ctx.joined.clone();
        let errors = ctx.errors.clone();
        let throttled = ctx.throttled.clone();
        let timeline = ctx.timeline.clone();
        let t0 = ctx.start;
        tokio::spawn(async move {
            let mut rr = ResponseReader::new(r);
            let mut local = Vec::with_capacity(1024);
            for _ in 0..total {
                let status =
                    match tokio::time::timeout(Duration::from_secs(30), rr.skip_response()).await {
                        Ok(Ok(status)) => status,
                        _ => break,
                    };
                let Some(at) = due.lock().pop_front() else {
                    break;
                };
                let us = at.elapsed().as_micros() as u64;
                local.push(us);
                let w = (at.saturating_duration_since(t0).as_millis() / 100) as usize;
                if let Some(slot) = timeline.get(w) {
                    slot.fetch_max(us, Ordering::Relaxed);
                }
                match status {
                    200 | 201 => {
                        joined.fetch_add(1, Ordering::Relaxed);
                    }
                    429 => {
                        throttled.fetch_add(1, Ordering::Relaxed);
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if local.len() >= 1024 {
                    let mut h = hist.lock();
                    for v in local.drain(..) {
                        let _ = h.record(v.max(1));
                    }
                }
            }
            let mut h = hist.lock();
            for v in local.drain(..) {
                let _ = h.record(v.max(1));
            }
        })
    };
    let host = ctx.server.to_string();
    let mut buf = Vec::with_capacity(4096);
    // Requests are written on a 1 ms tick: every request due by the tick goes out in one write, each
    // with its own due time (latency still counts from it), so the generator spends little CPU per request.
    let tick = Duration::from_millis(1);
    let mut i = 0u64;
    let mut next_wake = ctx.start;
    while i < total {
        tokio::time::sleep_until(next_wake.into()).await;
        let now = Instant::now();
        buf.clear();
        let mut dues = Vec::new();
        while i < total {
            let at = ctx.start + Duration::from_secs_f64((i as f64 + ctx.phase) / ctx.per_conn);
            if at > now {
                next_wake = at.max(now + tick);
                break;
            }
            let u = ctx.users.fetch_add(1, Ordering::Relaxed);
            let event = u % u64::from(ctx.events);
            let body_len = "{\"user\":\"bench-user-\"}".len() + digits(u);
            use std::io::Write as _;
            let _ = write!(
                buf,
                "POST /v1/events/bench-{event}/tickets HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {body_len}\r\n\r\n{{\"user\":\"bench-user-{u}\"}}"
            );
            dues.push(at);
            i += 1;
        }
        if dues.is_empty() {
            continue;
        }
        let n = dues.len() as u64;
        due.lock().extend(dues);
        if w.write_all(&buf).await.is_err() {
            break;
        }
        ctx.sent.fetch_add(n, Ordering::Relaxed);
    }
    let _ = reader.await;
    Ok(())
}
