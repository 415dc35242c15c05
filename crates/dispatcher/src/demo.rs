//! `dispatcher demo`: a simulated crowd joins a few events; visitors heartbeat while waiting, shop when
//! admitted, and complete, leave or let their session expire, while the promoter admits them. Shows
//! admissions as they happen and checks the invariants at the end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use dispatcher_admission::{
    AdmissionStore, EventId, EventSettings, Promoter, PromoterOptions, TicketState, UserId,
};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use rand::Rng;

use crate::config::Config;
use crate::{open_store, with_store};

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Visitors in the crowd.
    #[arg(long, default_value_t = 3_000)]
    users: u64,
    /// Capacity of the first event (the others get half and double).
    #[arg(long, default_value_t = 60)]
    capacity: u64,
    /// Visitors arrive over this many seconds.
    #[arg(long, default_value_t = 4.0)]
    arrival_secs: f64,
    /// Session TTL, ms: visitors who never complete are expired after it.
    #[arg(long, default_value_t = 2_000)]
    session_ttl_ms: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    completed: u64,
    expired: u64,
    left: u64,
    other: u64,
}

pub async fn run(args: DemoArgs, mut cfg: Config) -> anyhow::Result<()> {
    if args.users == 0
        || args.capacity == 0
        || args.arrival_secs.is_nan()
        || args.arrival_secs < 0.0
    {
        anyhow::bail!("--users and --capacity must be positive and --arrival-secs non-negative");
    }
    if cfg.redis_url.is_some() || !cfg.redis_cluster.is_empty() {
        // Keep the demo's keys apart from a real deployment's.
        cfg.key_prefix = format!("{}-demo-{}", cfg.key_prefix, std::process::id());
    }
    let store = open_store(&cfg).await?;
    with_store!(store, |s| run_with(s, args).await)
}

async fn run_with<S: AdmissionStore>(store: Arc<S>, args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let events: Vec<(EventId, u64)> = vec![
        (EventId::new("concert-a")?, args.capacity),
        (EventId::new("sneaker-drop")?, (args.capacity / 2).max(1)),
        (EventId::new("festival")?, args.capacity * 2),
    ];
    println!(
        "dispatcher demo: {} visitors join {} events on the {} store (session TTL {} ms)",
        args.users,
        events.len(),
        store.kind(),
        args.session_ttl_ms
    );
    for (e, cap) in &events {
        let s = EventSettings {
            session_ttl_ms: args.session_ttl_ms,
            abandon_timeout_ms: 5_000,
            ..EventSettings::with_capacity(*cap)
        };
        store
            .configure(e, &s)
            .await
            .with_context(|| format!("configuring {e}"))?;
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let promoter = Promoter::new(store.clone(), PromoterOptions::default());
    let mut rx = stop_rx.clone();
    let promoter_task = tokio::spawn(promoter.run(async move {
        let _ = rx.wait_for(|v| *v).await;
    }));

    // The crowd.
    let mut visitors = tokio::task::JoinSet::new();
    for i in 0..args.users {
        let store = store.clone();
        let mut rng = rand::rng();
        let (event, _) = events[rng.random_range(0..events.len())].clone();
        let arrive = Duration::from_secs_f64(rng.random::<f64>() * args.arrival_secs);
        let shop = Duration::from_millis(rng.random_range(200..1_500));
        let behaviour: f64 = rng.random();
        visitors.spawn(async move { visitor(store, event, i, arrive, shop, behaviour).await });
    }

    // Live view: one bar per event, plus admissions printed as they happen.
    let mp = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>13} [{bar:30.green/white}] {msg}")
        .context("progress template")?
        .progress_chars("█▓░");
    let bars: Vec<ProgressBar> = events
        .iter()
        .map(|(e, cap)| {
            let b = mp.add(ProgressBar::new(*cap));
            b.set_style(style.clone());
            b.set_prefix(e.to_string());
            b
        })
        .collect();
    let mut cursors: Vec<String> = vec!["0".into(); store.shard_count() as usize];
    let mut printed: HashMap<String, u64> = HashMap::new();
    let mut max_admitted: HashMap<String, u64> = HashMap::new();
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    let mut order_violations = 0u64;
    let mut outcomes = Outcome::default();
    let mut finished = 0u64;
    let deadline = started + Duration::from_secs(args.timeout_secs);
    loop {
        while let Some(r) = visitors.try_join_next() {
            finished += 1;
            match r.context("visitor task")?? {
                TicketState::Completed => outcomes.completed += 1,
                TicketState::Expired => outcomes.expired += 1,
                TicketState::Left => outcomes.left += 1,
                _ => outcomes.other += 1,
            }
        }
        for sh in 0..store.shard_count() {
            let recs = store
                .entry_records(sh, &cursors[sh as usize], 10_000)
                .await?;
            if let Some(last) = recs.last() {
                cursors[sh as usize] = last.entry_id.clone();
            }
            for r in recs {
                let prev = last_seq.insert(r.event.clone(), r.seq).unwrap_or(0);
                if r.seq <= prev {
                    order_violations += 1;
                }
                let n = printed.entry(r.event.clone()).or_default();
                *n += 1;
                if *n <= 3 || n.is_multiple_of(250) {
                    let line = format!(
                        "  +{:>6.2}s  admitted {:<12} to {:<13} (#{} in line, admission {} of this event)",
                        started.elapsed().as_secs_f64(),
                        r.user,
                        r.event,
                        r.seq,
                        n
                    );
                    mp.suspend(|| println!("{line}"));
                }
            }
        }
        let mut all_idle = true;
        for ((e, cap), bar) in events.iter().zip(&bars) {
            let info = store.event(e).await?;
            let m = max_admitted.entry(e.to_string()).or_default();
            *m = (*m).max(info.admitted);
            bar.set_position(info.admitted.min(*cap));
            bar.set_message(format!(
                "admitted {:>4}/{:<4} waiting {:>5}  joined {:>5}",
                info.admitted, cap, info.waiting, info.joined
            ));
            if info.waiting + info.admitted > 0 {
                all_idle = false;
            }
        }
        if finished == args.users && all_idle {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("demo did not finish within {} s", args.timeout_secs);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for b in &bars {
        b.finish();
    }
    let _ = stop_tx.send(true);
    let _ = promoter_task.await;

    println!(
        "\nall {} visitors served in {:.1} s: {} completed, {} expired (never completed), {} left the queue, {} other",
        args.users,
        started.elapsed().as_secs_f64(),
        outcomes.completed,
        outcomes.expired,
        outcomes.left,
        outcomes.other
    );
    let mut ok = order_violations == 0;
    for (e, cap) in &events {
        let m = max_admitted.get(e.as_str()).copied().unwrap_or(0);
        let admissions = printed.get(e.as_str()).copied().unwrap_or(0);
        println!(
            "  {:<13} capacity {cap:>4}: {admissions:>5} admissions, at most {m} admitted at once",
            e.as_str()
        );
        ok &= m <= *cap;
    }
    println!(
        "  admission order = join order: {}",
        if order_violations == 0 { "yes" } else { "NO" }
    );
    if !ok {
        anyhow::bail!("an invariant was violated");
    }
    println!("invariants held.");
    Ok(())
}

/// One visitor: arrives, joins, heartbeats while waiting, shops once admitted, then completes — or
/// leaves while waiting (5 %), or never completes so the session expires (10 %).
async fn visitor<S: AdmissionStore>(
    store: Arc<S>,
    event: EventId,
    i: u64,
    arrive: Duration,
    shop: Duration,
    behaviour: f64,
) -> anyhow::Result<TicketState> {
    tokio::time::sleep(arrive).await;
    let user = UserId::new(format!("user-{i}"))?;
    let mut t = store.join(&event, Some(&user)).await?.ticket;
    let leaves_after = (behaviour < 0.05).then(|| Instant::now() + Duration::from_millis(300));
    while t.state == TicketState::Waiting {
        if leaves_after.is_some_and(|at| Instant::now() >= at) {
            return Ok(store.leave(&event, &t.id).await?.ticket.state);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        t = store.heartbeat(&event, &t.id).await?;
    }
    if t.state != TicketState::Admitted {
        return Ok(t.state);
    }
    tokio::time::sleep(shop).await;
    if behaviour > 0.90 {
        // Walks away without completing: wait for the session to expire.
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = store.ticket(&event, &t.id).await?;
            if now.state.is_final() {
                return Ok(now.state);
            }
        }
    }
    match store.complete(&event, &t.id).await {
        Ok(r) => Ok(r.ticket.state),
        // The session may have expired while shopping.
        Err(dispatcher_admission::AdmissionError::Conflict(_)) => {
            Ok(store.ticket(&event, &t.id).await?.state)
        }
        Err(e) => Err(e.into()),
    }
}
