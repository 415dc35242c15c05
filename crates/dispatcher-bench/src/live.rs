//! `dispatcher bench live`: thousands of live (SSE) connections held against a `dispatcher serve` process
//! on a real Redis while admissions flow, so every waiting connection's position changes every second.
//! Measures updates per second, late or missed updates, the server's CPU and RSS, and slot freed → token
//! on the next visitor's stream, for both ways a slot frees: a completion through the API (from when the
//! completion was due) and a session expiry (from the session's end instant).
//!
//! Two events: `live-c` (slots freed by completions at `complete_rate`) and `live-e` (slots freed by
//! expiry, `expiry_capacity` sessions of `expiry_ttl_ms`). Both start paused so no admission happens before
//! every connection is open; the bench resumes them and measures.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::BenchError;
use crate::httpc::{ResponseReader, SseParser, connect_from, source_addr};
use crate::server::{ADMIN, ServerProcess, redis_persistence};

/// What to run.
#[derive(Debug, Clone)]
pub struct LiveBenchOptions {
    /// The `dispatcher` binary to run as the server.
    pub exe: PathBuf,
    /// Redis URL of the server's store.
    pub redis: String,
    /// Live connections (one waiting visitor each).
    pub connections: usize,
    /// Measured run length.
    pub duration: Duration,
    /// Completions per second through the API on the completion event.
    pub complete_rate: f64,
    /// Capacity of the completion event.
    pub complete_capacity: u64,
    /// Capacity of the expiry event.
    pub expiry_capacity: u64,
    /// Session TTL of the expiry event, ms.
    pub expiry_ttl_ms: u64,
    /// Share of the connections on the expiry event.
    pub expiry_share: f64,
    /// Connections per loopback source address (under the server's default caps of 32 live streams and 64
    /// connections per address, which stay on).
    pub per_address: usize,
}

impl Default for LiveBenchOptions {
    fn default() -> Self {
        Self {
            exe: PathBuf::from("dispatcher"),
            redis: "redis://127.0.0.1:6379".into(),
            connections: 10_000,
            duration: Duration::from_secs(30),
            complete_rate: 100.0,
            complete_capacity: 100,
            expiry_capacity: 20,
            expiry_ttl_ms: 1_000,
            expiry_share: 0.1,
            per_address: 25,
        }
    }
}

impl LiveBenchOptions {
    /// A few seconds, for CI.
    pub fn smoke(exe: PathBuf, redis: String) -> Self {
        Self {
            exe,
            redis,
            connections: 300,
            duration: Duration::from_secs(4),
            complete_rate: 20.0,
            complete_capacity: 10,
            expiry_capacity: 5,
            ..Self::default()
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LiveBenchReport {
    /// Live connections held.
    pub connections: usize,
    /// Connections that failed to open or broke.
    pub errors: u64,
    /// Position updates received per second over the run.
    pub updates_per_sec: f64,
    /// Updates that came more than 1.5 s after the previous one on a waiting connection.
    pub late_updates: u64,
    /// Connections still waiting at the end that got no position update in the last 2 s.
    pub missed_updates: u64,
    /// Slot freed → token on the next visitor's stream, both paths, ms.
    pub slot_to_token_p50_ms: f64,
    pub slot_to_token_p99_ms: f64,
    pub slot_to_token_max_ms: f64,
    /// Completion path (from when the completion was due), ms.
    pub complete_to_token_p50_ms: f64,
    pub complete_to_token_p99_ms: f64,
    /// Expiry path (from the session's end instant), ms.
    pub expiry_to_token_p50_ms: f64,
    pub expiry_to_token_p99_ms: f64,
    /// Admissions observed on streams (samples of the latencies above).
    pub admissions_seen: u64,
    /// Server CPU over the run, % of one core.
    pub server_cpu_percent: f64,
    /// Server resident memory at the end, bytes.
    pub server_rss_bytes: u64,
    /// Run length, s.
    pub duration_s: f64,
    /// Redis persistence settings.
    pub redis_persistence: String,
}

impl std::fmt::Display for LiveBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "bench live (SSE, dispatcher serve on Redis: {})",
            self.redis_persistence
        )?;
        writeln!(
            f,
            "  {} connections for {:.0} s ({} errors): {:.0} updates/s, {} late, {} missed",
            self.connections,
            self.duration_s,
            self.errors,
            self.updates_per_sec,
            self.late_updates,
            self.missed_updates
        )?;
        writeln!(
            f,
            "  slot freed → token on the next stream: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} admissions)",
            self.slot_to_token_p50_ms,
            self.slot_to_token_p99_ms,
            self.slot_to_token_max_ms,
            self.admissions_seen
        )?;
        writeln!(
            f,
            "    completion: p50 {:.1} ms, p99 {:.1} ms; expiry: p50 {:.1} ms, p99 {:.1} ms",
            self.complete_to_token_p50_ms,
            self.complete_to_token_p99_ms,
            self.expiry_to_token_p50_ms,
            self.expiry_to_token_p99_ms
        )?;
        write!(
            f,
            "  server: {:.0}% CPU (of one core), RSS {:.1} MB",
            self.server_cpu_percent,
            self.server_rss_bytes as f64 / 1e6
        )
    }
}

const EV_C: &str = "live-c";
const EV_E: &str = "live-e";

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A joined visitor. `Debug` cuts the ticket id (a secret, even in a bench).
#[derive(Clone)]
struct Visitor {
    event: &'static str,
    ticket: String,
    seq: u64,
    admitted: bool,
    expires_at_ms: u64,
}

impl std::fmt::Debug for Visitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Visitor")
            .field("event", &self.event)
            .field("ticket", &dispatcher_admission::Redacted(&self.ticket))
            .field("seq", &self.seq)
            .field("admitted", &self.admitted)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

#[derive(Default)]
struct Shared {
    /// Completion event: seq of the admitted ticket → when the completion that admitted it was due.
    complete_trigger: HashMap<u64, Instant>,
    /// Completion event: seq → ticket id (to complete it).
    tickets_by_seq: HashMap<u64, String>,
    /// Expiry event: seq → session end (ms) of admitted tickets.
    expiry_end: HashMap<u64, u64>,
    /// Capacity of the expiry event: the ticket that many places earlier held the slot.
    expiry_capacity: u64,
}

struct Meter {
    updates: AtomicU64,
    late: AtomicU64,
    errors: AtomicU64,
    complete_hist: Mutex<Histogram<u64>>,
    expiry_hist: Mutex<Histogram<u64>>,
    last_update: Mutex<HashMap<u64, Instant>>,
}

async fn request(
    addr: SocketAddr,
    src: usize,
    method: &str,
    path: &str,
    body: &str,
    admin: bool,
) -> Result<crate::httpc::Response, BenchError> {
    let s = connect_from(source_addr(src), addr).await?;
    let (r, mut w) = s.into_split();
    let auth = if admin {
        format!("Authorization: Bearer {ADMIN}\r\n")
    } else {
        String::new()
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    w.write_all(req.as_bytes())
        .await
        .map_err(|e| BenchError::Run(format!("write: {e}")))?;
    ResponseReader::new(r).response().await
}

/// Runs the benchmark.
pub async fn run(opts: &LiveBenchOptions) -> Result<LiveBenchReport, BenchError> {
    if opts.connections < 10 || opts.per_address == 0 {
        return Err(BenchError::Setup(
            "at least 10 connections, per_address > 0".into(),
        ));
    }
    let prefix = format!("bl{}", rand::random::<u32>());
    let cfg = format!(
        "redis_url = {:?}\nkey_prefix = {:?}\n[http]\njoin_rate_per_ip = 100\njoin_burst_per_ip = 200\nrequest_rate_per_ip = 400\nrequest_burst_per_ip = 800\n\
         [[events]]\nid = \"{EV_C}\"\ncapacity = {}\nsession_ttl_ms = 3600000\nabandon_timeout_ms = 600000\nstate = \"paused\"\n\
         [[events]]\nid = \"{EV_E}\"\ncapacity = {}\nsession_ttl_ms = {}\nabandon_timeout_ms = 600000\nstate = \"paused\"\n",
        opts.redis, prefix, opts.complete_capacity, opts.expiry_capacity, opts.expiry_ttl_ms
    );
    let server = ServerProcess::start(&opts.exe, &cfg, ADMIN)?;
    let addr = server.addr;
    let persistence = redis_persistence(&opts.redis).await;

    // Join everybody (events paused: all wait), from many addresses to stay within the join limits.
    let n_e = ((opts.connections as f64 * opts.expiry_share).round() as usize)
        .max(opts.expiry_capacity as usize + 1);
    let n_c = opts
        .connections
        .saturating_sub(n_e)
        .max(opts.complete_capacity as usize + 1);
    let plan: Vec<(usize, &'static str)> = (0..n_c + n_e)
        .map(|i| (i, if i < n_c { EV_C } else { EV_E }))
        .collect();
    // Joins from `per_address` visitors an address: concurrent joins open connections at once, and the
    // server's per-address connection cap stays on.
    let per = opts.per_address;
    let joined: Vec<Result<Visitor, BenchError>> = futures_util::stream::iter(plan)
        .map(|(i, event)| async move {
            let r = request(
                addr,
                i / per,
                "POST",
                &format!("/v1/events/{event}/tickets"),
                "{}",
                false,
            )
            .await?;
            if r.status != 201 {
                return Err(BenchError::Run(format!(
                    "join answered {}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                )));
            }
            let v: serde_json::Value = serde_json::from_slice(&r.body)
                .map_err(|e| BenchError::Run(format!("join body: {e}")))?;
            Ok(Visitor {
                event,
                ticket: v["ticket"].as_str().unwrap_or_default().to_owned(),
                seq: v["seq"].as_u64().unwrap_or(0),
                admitted: false,
                expires_at_ms: 0,
            })
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let visitors: Vec<Visitor> = joined.into_iter().collect::<Result<_, _>>()?;

    let shared = Arc::new(Mutex::new(Shared {
        expiry_capacity: opts.expiry_capacity,
        ..Shared::default()
    }));
    let meter = Arc::new(Meter {
        updates: AtomicU64::new(0),
        late: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        complete_hist: Mutex::new(hist()?),
        expiry_hist: Mutex::new(hist()?),
        last_update: Mutex::new(HashMap::new()),
    });
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Open every live connection (events still paused).
    let mut streams = Vec::with_capacity(visitors.len());
    let opened: Vec<Result<(Visitor, tokio::net::TcpStream), BenchError>> =
        futures_util::stream::iter(visitors.into_iter().enumerate())
            .map(|(i, v)| {
                let per = opts.per_address;
                async move {
                    let s = connect_from(source_addr(1000 + i / per), addr).await?;
                    Ok((v, s))
                }
            })
            .buffer_unordered(128)
            .collect()
            .await;
    for (k, o) in opened.into_iter().enumerate() {
        match o {
            Ok((v, s)) => {
                let (shared, meter, measuring) = (shared.clone(), meter.clone(), measuring.clone());
                streams.push(tokio::spawn(watch(
                    k as u64, v, s, addr, shared, meter, measuring,
                )));
            }
            Err(e) => {
                tracing::warn!(error = %e, "live connection failed");
                meter.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    // Give every stream time to be established and read its first event.
    tokio::time::sleep(Duration::from_millis(1500 + opts.connections as u64 / 10)).await;

    // Resume both events and free slots of the completion event at the given rate.
    let cpu0 = server.cpu_seconds().unwrap_or(0.0);
    let started = Instant::now();
    // Gaps are measured from here: the initial events came while nothing moved.
    meter
        .last_update
        .lock()
        .values_mut()
        .for_each(|t| *t = started);
    measuring.store(true, Ordering::Relaxed);
    for ev in [EV_E, EV_C] {
        let r = request(
            addr,
            999,
            "POST",
            &format!("/v1/admin/events/{ev}/resume"),
            "",
            true,
        )
        .await?;
        if r.status != 200 {
            return Err(BenchError::Run(format!("resume {ev}: {}", r.status)));
        }
    }
    let completer = {
        let shared = shared.clone();
        let meter = meter.clone();
        let rate = opts.complete_rate;
        let cap = opts.complete_capacity;
        let duration = opts.duration;
        tokio::spawn(async move {
            let total = (rate * duration.as_secs_f64()) as u64;
            let mut conn: Option<(
                ResponseReader<tokio::net::tcp::OwnedReadHalf>,
                tokio::net::tcp::OwnedWriteHalf,
            )> = None;
            for k in 1..=total {
                let due = started + Duration::from_secs_f64(k as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                // Completing seq k admits seq cap + k; the ticket of seq k is looked up by the watcher map.
                let ticket = shared.lock().tickets_by_seq.get(&k).cloned();
                let Some(ticket) = ticket else { continue };
                shared.lock().complete_trigger.insert(cap + k, due);
                if conn.is_none() {
                    match connect_from(source_addr(998), addr).await {
                        Ok(s) => {
                            let (r, w) = s.into_split();
                            conn = Some((ResponseReader::new(r), w));
                        }
                        Err(_) => {
                            meter.errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                }
                let Some((r, w)) = conn.as_mut() else {
                    continue;
                };
                let req = format!(
                    "POST /v1/events/{EV_C}/tickets/{ticket}/complete HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
                );
                let ok = w.write_all(req.as_bytes()).await.is_ok()
                    && matches!(r.response().await, Ok(resp) if resp.status == 200);
                if !ok {
                    meter.errors.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                }
            }
        })
    };
    tokio::time::sleep(opts.duration).await;
    let _ = completer.await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = server.cpu_seconds().unwrap_or(cpu0) - cpu0;
    let rss = server.rss_bytes().unwrap_or(0);
    measuring.store(false, Ordering::Relaxed);
    // Missed: waiting connections without an update in the last 2 s.
    let missed = {
        let now = Instant::now();
        meter
            .last_update
            .lock()
            .values()
            .filter(|t| now.duration_since(**t) > Duration::from_secs(2))
            .count() as u64
    };
    for s in &streams {
        s.abort();
    }
    server.delete_events(&[EV_C.to_owned(), EV_E.to_owned()], ADMIN);
    drop(server);
    crate::server::remove_prefix(&opts.redis, &prefix).await;
    let c = meter.complete_hist.lock();
    let e = meter.expiry_hist.lock();
    let mut all = hist()?;
    let _ = all.add(&*c);
    let _ = all.add(&*e);
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    Ok(LiveBenchReport {
        connections: streams.len(),
        errors: meter.errors.load(Ordering::Relaxed),
        updates_per_sec: meter.updates.load(Ordering::Relaxed) as f64 / elapsed,
        late_updates: meter.late.load(Ordering::Relaxed),
        missed_updates: missed,
        slot_to_token_p50_ms: q(&all, 0.5),
        slot_to_token_p99_ms: q(&all, 0.99),
        slot_to_token_max_ms: all.max() as f64 / 1000.0,
        complete_to_token_p50_ms: q(&c, 0.5),
        complete_to_token_p99_ms: q(&c, 0.99),
        expiry_to_token_p50_ms: q(&e, 0.5),
        expiry_to_token_p99_ms: q(&e, 0.99),
        admissions_seen: all.len(),
        server_cpu_percent: cpu / elapsed * 100.0,
        server_rss_bytes: rss,
        duration_s: elapsed,
        redis_persistence: persistence,
    })
}

fn hist() -> Result<Histogram<u64>, BenchError> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
        .map_err(|e| BenchError::Setup(format!("histogram: {e}")))
}

/// One live connection: reads its events, counts updates, and measures admissions.
async fn watch(
    key: u64,
    mut v: Visitor,
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    meter: Arc<Meter>,
    measuring: Arc<std::sync::atomic::AtomicBool>,
) {
    let (r, mut w) = stream.into_split();
    let req = format!(
        "GET /v1/events/{}/tickets/{}/live HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n",
        v.event, v.ticket
    );
    if w.write_all(req.as_bytes()).await.is_err() {
        meter.errors.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut rr = ResponseReader::new(r);
    match rr.head().await {
        Ok((200, _, _)) => {}
        _ => {
            meter.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    let mut parser = SseParser::default();
    let mut first = true;
    loop {
        let chunk = match rr.chunk().await {
            Ok(Some(c)) => c,
            _ => break,
        };
        for (name, data) in parser.feed(&chunk) {
            let Ok(j) = serde_json::from_str::<serde_json::Value>(&data) else {
                continue;
            };
            let now = Instant::now();
            match name.as_str() {
                "position" => {
                    if first {
                        meter.last_update.lock().insert(key, now);
                    } else if measuring.load(Ordering::Relaxed) {
                        meter.updates.fetch_add(1, Ordering::Relaxed);
                        let prev = meter.last_update.lock().insert(key, now);
                        if prev.is_some_and(|p| now.duration_since(p) > Duration::from_millis(1500))
                        {
                            meter.late.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                "admitted" => {
                    meter.last_update.lock().remove(&key);
                    let expires = j["expires_at_ms"].as_u64().unwrap_or(0);
                    if !v.admitted && !first && measuring.load(Ordering::Relaxed) {
                        record_admission(&v, &shared, &meter, now);
                    }
                    v.admitted = true;
                    v.expires_at_ms = expires;
                    if v.event == EV_E {
                        shared.lock().expiry_end.insert(v.seq, expires);
                    }
                }
                _ => {
                    meter.last_update.lock().remove(&key);
                }
            }
            if first && v.event == EV_C {
                shared.lock().tickets_by_seq.insert(v.seq, v.ticket.clone());
            }
            first = false;
        }
    }
    meter.last_update.lock().remove(&key);
}

fn record_admission(v: &Visitor, shared: &Mutex<Shared>, meter: &Meter, now: Instant) {
    if v.event == EV_C {
        if let Some(due) = shared.lock().complete_trigger.get(&v.seq) {
            let us = now.saturating_duration_since(*due).as_micros() as u64;
            let _ = meter.complete_hist.lock().record(us.max(1));
        }
    } else {
        // Expiry event: the ticket `expiry_capacity` places earlier held the slot this one took.
        let end = {
            let s = shared.lock();
            v.seq
                .checked_sub(s.expiry_capacity)
                .and_then(|earlier| s.expiry_end.get(&earlier).copied())
        };
        if let Some(end) = end {
            let us = now_us().saturating_sub(end * 1000);
            let _ = meter.expiry_hist.lock().record(us.max(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visitor_debug_cuts_the_ticket_id() {
        let ticket = "0123456789abcdef0123456789abcdef";
        let v = Visitor {
            event: "ev",
            ticket: ticket.into(),
            seq: 1,
            admitted: false,
            expires_at_ms: 0,
        };
        let dbg = format!("{v:?} {v:#?}");
        assert!(!dbg.contains(ticket), "{dbg}");
        assert!(dbg.contains("\"012345…\""), "{dbg}");
    }
}
