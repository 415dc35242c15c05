//! The admission benchmark behind `dispatcher bench admission`: joins, then promotions driven by a completer
//! reading the entry streams, then expiry → next admission latency with a short session TTL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dispatcher_admission::{
    AdmissionError, AdmissionStore, EntryRecord, EventId, EventSettings, EventState, MemoryStore,
    MemoryStoreOptions, Promoter, PromoterOptions, RedisConn, RedisStore, RedisStoreOptions,
    TicketId, UserId,
};
use futures_util::StreamExt;
use futures_util::stream;
use hdrhistogram::Histogram;
use serde::Serialize;

/// What to run.
#[derive(Debug, Clone)]
pub struct AdmissionBenchOptions {
    /// Redis URL; `None` runs on the in-process store.
    pub redis: Option<String>,
    /// Distinct users joined in the promotion phase.
    pub users: u64,
    /// Events they are spread over.
    pub events: u32,
    /// Capacity of each event.
    pub capacity: u64,
    /// Store operations in flight at once.
    pub concurrency: usize,
    /// Events of the expiry phase.
    pub expiry_events: u32,
    /// Capacity of each expiry-phase event.
    pub expiry_capacity: u64,
    /// Session TTL of the expiry phase, ms.
    pub expiry_ttl_ms: u64,
    /// How many TTL generations the expiry phase runs.
    pub expiry_generations: u64,
    /// Shards of the Redis store.
    pub shards: u16,
    /// Tickets the completer ends per call: 1 = one `complete` per ticket (a shop reporting each checkout);
    /// more = `release_many` batches (a shop reporting checkouts in bulk).
    pub complete_batch: usize,
}

impl Default for AdmissionBenchOptions {
    fn default() -> Self {
        Self {
            redis: None,
            users: 1_000_000,
            events: 100,
            capacity: 1_000,
            concurrency: 256,
            expiry_events: 20,
            expiry_capacity: 100,
            expiry_ttl_ms: 500,
            expiry_generations: 10,
            shards: 16,
            complete_batch: 1,
        }
    }
}

impl AdmissionBenchOptions {
    /// A few seconds, for CI.
    pub fn smoke(redis: Option<String>) -> Self {
        Self {
            redis,
            users: 20_000,
            events: 10,
            capacity: 100,
            expiry_events: 4,
            expiry_capacity: 20,
            expiry_ttl_ms: 200,
            expiry_generations: 4,
            ..Self::default()
        }
    }
}

/// What it measured.
#[derive(Debug, Clone, Serialize)]
pub struct AdmissionBenchReport {
    pub store: String,
    pub redis_url: Option<String>,
    pub redis_version: Option<String>,
    pub redis_persistence: Option<String>,
    pub users: u64,
    pub events: u32,
    pub capacity: u64,
    pub concurrency: usize,
    pub shards: u16,
    pub complete_batch: usize,
    pub joins_per_sec: f64,
    pub join_p50_us: u64,
    pub join_p99_us: u64,
    pub join_max_us: u64,
    pub promotions_total: u64,
    pub promotions_per_sec: f64,
    pub promotion_phase_secs: f64,
    pub completions_per_sec: f64,
    pub admitted_above_capacity: u64,
    pub order_violations: u64,
    pub expiry_events: u32,
    pub expiry_capacity: u64,
    pub expiry_ttl_ms: u64,
    pub expiry_samples: u64,
    pub expiry_to_admit_p50_ms: f64,
    pub expiry_to_admit_p99_ms: f64,
    pub expiry_to_admit_max_ms: f64,
}

impl std::fmt::Display for AdmissionBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "admission benchmark")?;
        writeln!(
            f,
            "  store: {} {} (version {}, persistence: {})",
            self.store,
            self.redis_url.as_deref().unwrap_or("in-process"),
            self.redis_version.as_deref().unwrap_or("-"),
            self.redis_persistence.as_deref().unwrap_or("-")
        )?;
        writeln!(
            f,
            "  config: {} users, {} events, capacity {}, {} ops in flight, {} shards, completer ends {} ticket(s) per call",
            self.users,
            self.events,
            self.capacity,
            self.concurrency,
            self.shards,
            self.complete_batch
        )?;
        writeln!(
            f,
            "  joins: {:.0}/s (closed loop), latency p50 {} µs, p99 {} µs, max {} µs",
            self.joins_per_sec, self.join_p50_us, self.join_p99_us, self.join_max_us
        )?;
        writeln!(
            f,
            "  promotions: {} in {:.2} s = {:.0}/s (counted from entry-stream records); completions {:.0}/s",
            self.promotions_total,
            self.promotion_phase_secs,
            self.promotions_per_sec,
            self.completions_per_sec
        )?;
        writeln!(
            f,
            "  invariants: admitted above capacity {} times, order violations {}",
            self.admitted_above_capacity, self.order_violations
        )?;
        write!(
            f,
            "  expiry → next admission ({} events × capacity {}, TTL {} ms, {} samples): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.expiry_events,
            self.expiry_capacity,
            self.expiry_ttl_ms,
            self.expiry_samples,
            self.expiry_to_admit_p50_ms,
            self.expiry_to_admit_p99_ms,
            self.expiry_to_admit_max_ms
        )
    }
}

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionBenchError {
    #[error("store: {0}")]
    Store(#[from] AdmissionError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Invalid(String),
}

/// Progress callback: (phase, done, total).
pub type Progress<'a> = &'a (dyn Fn(&str, u64, u64) + Sync);

/// Runs the benchmark.
pub async fn run(
    opts: &AdmissionBenchOptions,
    progress: Progress<'_>,
) -> Result<AdmissionBenchReport, AdmissionBenchError> {
    if opts.users == 0 || opts.events == 0 || opts.capacity == 0 || opts.concurrency == 0 {
        return Err(AdmissionBenchError::Invalid(
            "users, events, capacity and concurrency must be positive".into(),
        ));
    }
    if opts.complete_batch == 0 || opts.complete_batch > dispatcher_admission::MAX_BULK_RELEASE {
        return Err(AdmissionBenchError::Invalid(format!(
            "complete batch must be between 1 and {}",
            dispatcher_admission::MAX_BULK_RELEASE
        )));
    }
    match &opts.redis {
        None => {
            let store = Arc::new(MemoryStore::new(MemoryStoreOptions {
                entry_stream_maxlen: 0,
                ..Default::default()
            }));
            let mut r = run_with(store, opts, progress).await?;
            r.store = "memory".into();
            Ok(r)
        }
        Some(url) => {
            let prefix = format!("bench{}", std::process::id());
            let conn = RedisConn::single(url).await?;
            let store = Arc::new(RedisStore::new(
                conn.clone(),
                RedisStoreOptions {
                    prefix: prefix.clone(),
                    shards: opts.shards,
                    entry_stream_maxlen: 0,
                    ..Default::default()
                },
            )?);
            let (version, persistence) = redis_facts(conn.clone()).await;
            let result = run_with(store, opts, progress).await;
            cleanup(conn, &prefix).await;
            let mut r = result?;
            r.store = "redis".into();
            r.redis_url = Some(url.clone());
            r.redis_version = version;
            r.redis_persistence = persistence;
            Ok(r)
        }
    }
}

async fn redis_facts(mut conn: RedisConn) -> (Option<String>, Option<String>) {
    let info: Option<String> = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .ok();
    let version = info.and_then(|i| {
        i.lines().find_map(|l| {
            l.strip_prefix("redis_version:")
                .map(|v| v.trim().to_owned())
        })
    });
    let mut settings = Vec::new();
    for name in ["appendonly", "appendfsync", "save"] {
        let v: Option<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(&mut conn)
            .await
            .ok();
        let value = v.and_then(|v| v.get(1).cloned()).unwrap_or_default();
        settings.push(format!("{name}=\"{value}\""));
    }
    let persistence = settings.join(" ");
    (version, Some(persistence))
}

async fn cleanup(mut conn: RedisConn, prefix: &str) {
    let mut cursor: u64 = 0;
    loop {
        let r: Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await;
        let Ok((next, keys)) = r else { return };
        for k in keys {
            let _: Result<i64, _> = redis::cmd("UNLINK").arg(k).query_async(&mut conn).await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

fn hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

async fn run_with<S: AdmissionStore>(
    store: Arc<S>,
    opts: &AdmissionBenchOptions,
    progress: Progress<'_>,
) -> Result<AdmissionBenchReport, AdmissionBenchError> {
    let events: Vec<EventId> = (0..opts.events)
        .map(|i| EventId::new(format!("bench-{i}")))
        .collect::<Result<_, _>>()?;
    let paused = EventSettings {
        state: EventState::Paused,
        session_ttl_ms: 3_600_000,
        abandon_timeout_ms: 3_600_000,
        ..EventSettings::with_capacity(opts.capacity)
    };
    for e in &events {
        store.configure(e, &paused).await?;
    }

    // Phase 1: joins of distinct users, spread round-robin over the events.
    let done = AtomicU64::new(0);
    let started = Instant::now();
    let mut lat = hist();
    {
        let mut joins = stream::iter(0..opts.users)
            .map(|i| {
                let store = &store;
                let e = &events[(i % u64::from(opts.events)) as usize];
                async move {
                    let user = UserId::new(format!("user-{i}"))?;
                    let t = Instant::now();
                    store.join(e, Some(&user)).await?;
                    Ok::<_, AdmissionError>(t.elapsed())
                }
            })
            .buffer_unordered(opts.concurrency);
        while let Some(r) = joins.next().await {
            let d = r?;
            lat.record(d.as_micros().max(1) as u64).ok();
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(10_000) {
                progress("joining", n, opts.users);
            }
        }
    }
    let join_secs = started.elapsed().as_secs_f64();
    progress("joining", opts.users, opts.users);

    // Phase 2: open the events; the completer reads admissions from the entry streams and completes each,
    // which admits the next ticket in the same step; a promoter runs beside it as in production.
    let shutdown = tokio::sync::watch::channel(false);
    let promoter = Promoter::new(store.clone(), PromoterOptions::default());
    let mut stop_rx = shutdown.1.clone();
    let promoter_task = tokio::spawn(promoter.run(async move {
        let _ = stop_rx.wait_for(|v| *v).await;
    }));
    let shards = store.shard_count();
    let mut cursors: Vec<String> = vec!["0".into(); shards as usize];
    // Skip records from before this phase (there are none on a fresh prefix, but be exact).
    for (sh, c) in cursors.iter_mut().enumerate() {
        while let Some(last) = store.entry_records(sh as u16, c, 10_000).await?.last() {
            *c = last.entry_id.clone();
        }
    }
    let open = EventSettings {
        state: EventState::Open,
        ..paused.clone()
    };
    let phase_start_ms = store.now_ms().await?;
    let phase_start = Instant::now();
    for e in &events {
        store.configure(e, &open).await?;
    }
    let mut completed = 0u64;
    let mut records: Vec<EntryRecord> = Vec::with_capacity(opts.users as usize);
    let mut idle_rounds = 0u32;
    while completed < opts.users {
        let mut batch = Vec::new();
        for sh in 0..shards {
            let recs = store
                .entry_records(sh, &cursors[sh as usize], 2_000)
                .await?;
            if let Some(last) = recs.last() {
                cursors[sh as usize] = last.entry_id.clone();
            }
            batch.extend(recs);
        }
        if batch.is_empty() {
            idle_rounds += 1;
            if idle_rounds > 20_000 {
                return Err(AdmissionBenchError::Invalid(format!(
                    "no admissions for 20 s with {completed} of {} completed",
                    opts.users
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        idle_rounds = 0;
        let mut calls: Vec<(EventId, Vec<TicketId>)> = Vec::new();
        if opts.complete_batch == 1 {
            for r in &batch {
                calls.push((
                    EventId::new(r.event.clone())?,
                    vec![TicketId::parse(&r.ticket)?],
                ));
            }
        } else {
            let mut by_event: std::collections::BTreeMap<&str, Vec<TicketId>> = Default::default();
            for r in &batch {
                by_event
                    .entry(r.event.as_str())
                    .or_default()
                    .push(TicketId::parse(&r.ticket)?);
            }
            for (e, ids) in by_event {
                for chunk in ids.chunks(opts.complete_batch) {
                    calls.push((EventId::new(e)?, chunk.to_vec()));
                }
            }
        }
        let mut completes = stream::iter(calls.iter())
            .map(|(e, ids)| {
                let store = &store;
                async move {
                    if ids.len() == 1 {
                        store.complete(e, &ids[0]).await.map(|_| 1u64)
                    } else {
                        store
                            .release_many(e, ids, dispatcher_admission::Release::Complete)
                            .await
                            .map(|r| r.changed)
                    }
                }
            })
            .buffer_unordered(opts.concurrency);
        while let Some(r) = completes.next().await {
            completed += r?;
        }
        drop(completes);
        records.extend(batch);
        progress("promoting", completed, opts.users);
    }
    let phase_secs = phase_start.elapsed().as_secs_f64();
    let last_admit_ms = records
        .iter()
        .map(|r| r.admitted_at_ms)
        .max()
        .unwrap_or(phase_start_ms);
    let promote_secs = ((last_admit_ms.saturating_sub(phase_start_ms)) as f64 / 1000.0).max(0.001);

    // Invariants on the record: per event, admissions in sequence order, never above capacity at once.
    let mut order_violations = 0u64;
    let mut above = 0u64;
    let mut by_event: std::collections::HashMap<&str, Vec<&EntryRecord>> = Default::default();
    for r in &records {
        by_event.entry(r.event.as_str()).or_default().push(r);
    }
    for recs in by_event.values() {
        for w in recs.windows(2) {
            if w[1].seq <= w[0].seq {
                order_violations += 1;
            }
        }
    }
    for e in &events {
        let info = store.event(e).await?;
        if info.admitted > opts.capacity {
            above += 1;
        }
    }

    // Phase 3: short session TTL, no completer: the promoter's timer frees and refills slots.
    let x_events: Vec<EventId> = (0..opts.expiry_events)
        .map(|i| EventId::new(format!("expiry-{i}")))
        .collect::<Result<_, _>>()?;
    let short = EventSettings {
        state: EventState::Paused,
        session_ttl_ms: opts.expiry_ttl_ms,
        abandon_timeout_ms: 3_600_000,
        ..EventSettings::with_capacity(opts.expiry_capacity)
    };
    let per_event = opts.expiry_capacity * opts.expiry_generations;
    for e in &x_events {
        store.configure(e, &short).await?;
        for i in 0..per_event {
            store
                .join(e, Some(&UserId::new(format!("{e}-user-{i}"))?))
                .await?;
        }
    }
    let mut x_cursors = cursors.clone();
    for e in &x_events {
        store
            .configure(
                e,
                &EventSettings {
                    state: EventState::Open,
                    ..short.clone()
                },
            )
            .await?;
    }
    let total = per_event * u64::from(opts.expiry_events);
    let mut x_records: Vec<EntryRecord> = Vec::new();
    let deadline = Instant::now()
        + Duration::from_millis(opts.expiry_ttl_ms * (opts.expiry_generations + 2) + 10_000);
    while (x_records.len() as u64) < total && Instant::now() < deadline {
        for sh in 0..shards {
            let recs = store
                .entry_records(sh, &x_cursors[sh as usize], 5_000)
                .await?;
            if let Some(last) = recs.last() {
                x_cursors[sh as usize] = last.entry_id.clone();
            }
            x_records.extend(recs.into_iter().filter(|r| r.event.starts_with("expiry-")));
        }
        progress("expiring", x_records.len() as u64, total);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = shutdown.0.send(true);
    let _ = promoter_task.await;
    let mut xh = hist();
    let mut by_event: std::collections::HashMap<&str, Vec<&EntryRecord>> = Default::default();
    for r in &x_records {
        by_event.entry(r.event.as_str()).or_default().push(r);
    }
    let cap = opts.expiry_capacity as usize;
    for recs in by_event.values_mut() {
        recs.sort_by_key(|r| r.seq);
        for k in cap..recs.len() {
            // Same TTL for all: the k-th admission took the slot the (k - capacity)-th freed by expiry.
            let freed_at = recs[k - cap].expires_at_ms;
            let lat_us = recs[k].admitted_at_ms.saturating_sub(freed_at) * 1000;
            xh.record(lat_us.max(1)).ok();
        }
    }
    let ms = |q: f64| xh.value_at_quantile(q) as f64 / 1000.0;

    Ok(AdmissionBenchReport {
        store: String::new(),
        redis_url: None,
        redis_version: None,
        redis_persistence: None,
        users: opts.users,
        events: opts.events,
        capacity: opts.capacity,
        concurrency: opts.concurrency,
        shards,
        complete_batch: opts.complete_batch,
        joins_per_sec: opts.users as f64 / join_secs,
        join_p50_us: lat.value_at_quantile(0.5),
        join_p99_us: lat.value_at_quantile(0.99),
        join_max_us: lat.max(),
        promotions_total: records.len() as u64,
        promotions_per_sec: records.len() as f64 / promote_secs,
        promotion_phase_secs: promote_secs,
        completions_per_sec: completed as f64 / phase_secs,
        admitted_above_capacity: above,
        order_violations,
        expiry_events: opts.expiry_events,
        expiry_capacity: opts.expiry_capacity,
        expiry_ttl_ms: opts.expiry_ttl_ms,
        expiry_samples: xh.len(),
        expiry_to_admit_p50_ms: ms(0.5),
        expiry_to_admit_p99_ms: ms(0.99),
        expiry_to_admit_max_ms: xh.max() as f64 / 1000.0,
    })
}
