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
    /// Offered rates of the ramp run before the fixed-rate run (empty: no ramp), ascending.
    pub ramp: Vec<f64>,
    /// Length of each ramp step.
    pub ramp_step: Duration,
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
            ramp: (1..=10).map(|k| f64::from(k) * 5_000.0).collect(),
            ramp_step: Duration::from_secs(5),
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
            ramp: vec![500.0, 1_000.0],
            ramp_step: Duration::from_secs(2),
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
    /// The highest offered rate of the ramp that held (≥ 95 % achieved, no errors, p99 ≤ 20 ms from due
    /// time); `None` without a ramp or when even its first step did not hold.
    pub ceiling_joins_per_sec: Option<f64>,
    /// The ramp's steps, in order (it stops after the first step that does not hold).
    pub ceiling_steps: Vec<RampStep>,
}

/// One step of the ramp.
#[derive(Debug, Clone, Serialize)]
pub struct RampStep {
    /// Offered joins per second.
    pub offered_per_sec: f64,
    /// Achieved joins per second.
    pub joins_per_sec: f64,
    /// Latency from due time, p99, ms.
    pub p99_ms: f64,
    /// Requests without a successful answer.
    pub errors: u64,
    /// Whether the step held its offered rate.
    pub held: bool,
}

/// The p99 latency from due time a ramp step must keep to hold, ms.
pub const CEILING_P99_MS: f64 = 20.0;

/// Whether a run held its offered rate: at least 95 % of it achieved, no errors, p99 within
/// [`CEILING_P99_MS`].
pub fn holds(offered: f64, achieved: f64, p99_ms: f64, errors: u64) -> bool {
    errors == 0 && achieved >= 0.95 * offered && p99_ms <= CEILING_P99_MS
}

/// The highest offered rate among the steps that held, counting only the unbroken run of held steps
/// from the start (a step that held after one that did not is luck, not a ceiling).
pub fn ceiling_of(steps: &[RampStep]) -> Option<f64> {
    steps
        .iter()
        .take_while(|s| s.held)
        .map(|s| s.offered_per_sec)
        .reduce(f64::max)
}

/// Runs the ramp: each rate of `opts.ramp` for `opts.ramp_step` against a fresh server, in order, until a
/// step does not hold.
pub async fn ramp(opts: &JoinBenchOptions) -> Result<Vec<RampStep>, BenchError> {
    let mut steps = Vec::with_capacity(opts.ramp.len());
    for &rate in &opts.ramp {
        let step = JoinBenchOptions {
            rate,
            duration: opts.ramp_step,
            ramp: Vec::new(),
            ..opts.clone()
        };
        let r = run(&step).await?;
        let held = holds(rate, r.joins_per_sec, r.p99_ms, r.errors);
        eprintln!(
            "  ramp: offered {rate:.0}/s → {:.0}/s, p99 {:.1} ms, {} errors{}",
            r.joins_per_sec,
            r.p99_ms,
            r.errors,
            if held { "" } else { " — not held" }
        );
        steps.push(RampStep {
            offered_per_sec: rate,
            joins_per_sec: r.joins_per_sec,
            p99_ms: r.p99_ms,
            errors: r.errors,
            held,
        });
        if !held {
            break;
        }
    }
    Ok(steps)
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
        writeln!(
            f,
            "  server: {:.0}% CPU (of one core), RSS {:.1} MB",
            self.server_cpu_percent,
            self.server_rss_bytes as f64 / 1e6
        )?;
        match (self.ceiling_joins_per_sec, self.ceiling_steps.is_empty()) {
            (_, true) => write!(f, "  ramp: not run"),
            (Some(c), false) => write!(
                f,
                "  ceiling: {c:.0} joins/s offered and held (p99 ≤ {CEILING_P99_MS} ms, ≥ 95 % achieved, no errors)"
            ),
            (None, false) => write!(
                f,
                "  ceiling: none (the ramp's first step, {:.0}/s, did not hold)",
                self.ceiling_steps[0].offered_per_sec
            ),
        }
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
        ceiling_joins_per_sec: None,
        ceiling_steps: Vec::new(),
    })
}

/// The ramp (when configured), then the fixed-rate run; the report carries both.
pub async fn run_with_ramp(opts: &JoinBenchOptions) -> Result<JoinBenchReport, BenchError> {
    let steps = if opts.ramp.is_empty() {
        Vec::new()
    } else {
        ramp(opts).await?
    };
    let mut report = run(opts).await?;
    report.ceiling_joins_per_sec = ceiling_of(&steps);
    report.ceiling_steps = steps;
    Ok(report)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn step(offered: f64, held: bool) -> RampStep {
        RampStep {
            offered_per_sec: offered,
            joins_per_sec: offered,
            p99_ms: 1.0,
            errors: 0,
            held,
        }
    }

    #[test]
    fn a_step_holds_only_with_its_rate_no_errors_and_the_p99() {
        assert!(holds(10_000.0, 9_600.0, 19.9, 0));
        assert!(!holds(10_000.0, 9_400.0, 5.0, 0), "under 95 % achieved");
        assert!(!holds(10_000.0, 10_000.0, 20.5, 0), "p99 over 20 ms");
        assert!(!holds(10_000.0, 10_000.0, 5.0, 1), "an error");
    }

    #[test]
    fn the_ceiling_is_the_last_step_of_the_unbroken_held_run() {
        assert_eq!(ceiling_of(&[]), None);
        assert_eq!(ceiling_of(&[step(5e3, false)]), None);
        assert_eq!(
            ceiling_of(&[step(5e3, true), step(1e4, true), step(1.5e4, false)]),
            Some(1e4)
        );
        assert_eq!(
            ceiling_of(&[step(5e3, true), step(1e4, false), step(1.5e4, true)]),
            Some(5e3),
            "a held step after a failed one does not raise the ceiling"
        );
    }
}
