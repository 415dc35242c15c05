//! The promoter service loop: a timer on the earliest deadline of any event (expiry, abandon, rate token,
//! retention), a periodic sweep of the active registry as a safety net, bounded fair work per event per
//! round. Leaderless: every step is an atomic store operation, so any number of promoters may run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::try_join_all;
use futures_util::stream;

use crate::error::Result;
use crate::model::{EventId, Tick};
use crate::store::AdmissionStore;
use crate::telemetry;

/// Tuning of a promoter.
#[derive(Debug, Clone)]
pub struct PromoterOptions {
    /// Every this often, every active event gets a pass even if no deadline says so.
    pub sweep_interval: Duration,
    /// Longest sleep between rounds when no deadline is known to be nearer (bounds the reaction to
    /// deadlines created by other processes).
    pub max_sleep: Duration,
    /// Most due events taken from one shard per round (each gets one bounded pass).
    pub max_events_per_shard_round: usize,
    /// Event passes in flight at once.
    pub concurrency: usize,
}

impl Default for PromoterOptions {
    fn default() -> Self {
        Self {
            sweep_interval: Duration::from_secs(1),
            max_sleep: Duration::from_millis(50),
            max_events_per_shard_round: 100_000,
            concurrency: 64,
        }
    }
}

/// Counters of what a promoter did.
#[derive(Debug, Default)]
pub struct PromoterStats {
    /// Rounds run.
    pub rounds: AtomicU64,
    /// Event passes run.
    pub passes: AtomicU64,
    /// Tickets admitted by this promoter.
    pub admitted: AtomicU64,
    /// Tickets expired by this promoter.
    pub expired: AtomicU64,
    /// Tickets abandoned by this promoter.
    pub abandoned: AtomicU64,
    /// Queued tickets without a record dropped from their lines, as reported to this promoter's passes.
    pub orphaned: AtomicU64,
    /// Rounds that hit a store error.
    pub errors: AtomicU64,
}

/// Drives time-based admission work over a store.
#[derive(Debug)]
pub struct Promoter<S> {
    store: Arc<S>,
    opts: PromoterOptions,
    stats: Arc<PromoterStats>,
}

impl<S: AdmissionStore> Promoter<S> {
    /// A promoter over `store`.
    pub fn new(store: Arc<S>, opts: PromoterOptions) -> Self {
        Self {
            store,
            opts,
            stats: Arc::new(PromoterStats::default()),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<PromoterStats> {
        self.stats.clone()
    }

    async fn pass_all(&self, events: Vec<EventId>) -> Result<Tick> {
        let store = &self.store;
        let mut passes = stream::iter(events.into_iter().map(|e| async move {
            let r = store.tick(&e).await;
            (e, r)
        }))
        .buffer_unordered(self.opts.concurrency.max(1));
        let mut total = Tick::default();
        let mut first_err = None;
        while let Some((event, r)) = passes.next().await {
            self.stats.passes.fetch_add(1, Ordering::Relaxed);
            match r {
                Ok(t) => {
                    total.admitted += t.admitted;
                    total.expired += t.expired;
                    total.abandoned += t.abandoned;
                    total.purged += t.purged;
                    total.orphaned += t.orphaned;
                    if t.orphaned > 0 {
                        tracing::warn!(event = %event, orphaned = t.orphaned,
                            "queued tickets without a record were dropped from the line");
                    }
                }
                Err(crate::AdmissionError::UnknownEvent(_)) => {
                    tracing::debug!(event = %event, "event vanished; dropped from the indexes");
                }
                Err(e) => {
                    if first_err.is_none() {
                        first_err = Some(e);
                    }
                }
            }
        }
        self.record(&total);
        match first_err {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    fn record(&self, t: &Tick) {
        self.stats.admitted.fetch_add(t.admitted, Ordering::Relaxed);
        self.stats.expired.fetch_add(t.expired, Ordering::Relaxed);
        self.stats
            .abandoned
            .fetch_add(t.abandoned, Ordering::Relaxed);
        self.stats.orphaned.fetch_add(t.orphaned, Ordering::Relaxed);
        metrics::counter!(telemetry::PROMOTIONS_TOTAL, "source" => "promoter")
            .increment(t.admitted);
        metrics::counter!(telemetry::EXPIRED_TOTAL).increment(t.expired);
        metrics::counter!(telemetry::ABANDONED_TOTAL).increment(t.abandoned);
        metrics::counter!(telemetry::PURGED_TOTAL).increment(t.purged);
        metrics::counter!(telemetry::ORPHANED_TOTAL).increment(t.orphaned);
    }

    /// One timer round: every event whose deadline has passed gets one bounded pass.
    pub async fn due_round(&self) -> Result<Tick> {
        let now = self.store.now_ms().await?;
        // All shards at once: on one multiplexed connection the queries travel as one pipeline.
        let limit = self.opts.max_events_per_shard_round;
        let events: Vec<EventId> = try_join_all(
            (0..self.store.shard_count()).map(|shard| self.store.due_events(shard, now, 0, limit)),
        )
        .await?
        .into_iter()
        .flatten()
        .collect();
        self.stats.rounds.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(telemetry::PROMOTER_ROUNDS_TOTAL).increment(1);
        let started = Instant::now();
        let r = self.pass_all(events).await;
        metrics::histogram!(telemetry::PROMOTION_DURATION).record(started.elapsed().as_secs_f64());
        r
    }

    /// One sweep: every event in the active registry gets one bounded pass.
    pub async fn sweep(&self) -> Result<Tick> {
        let events: Vec<EventId> = try_join_all(
            (0..self.store.shard_count()).map(|shard| self.store.active_events(shard)),
        )
        .await?
        .into_iter()
        .flatten()
        .collect();
        self.pass_all(events).await
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut last_sweep = Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            let round = async {
                if last_sweep.elapsed() >= self.opts.sweep_interval {
                    last_sweep = Instant::now();
                    self.sweep().await?;
                }
                self.due_round().await?;
                let now = self.store.now_ms().await?;
                let next = self.store.next_due().await?;
                Ok::<_, crate::AdmissionError>(next.map(|d| d.saturating_sub(now)))
            };
            let sleep = match round.await {
                Ok(Some(0)) => {
                    // Work is already due again (backlog beyond one bounded pass): go on, but let others run.
                    tokio::task::yield_now().await;
                    backoff = Duration::from_millis(50);
                    continue;
                }
                Ok(wait) => {
                    backoff = Duration::from_millis(50);
                    wait.map_or(self.opts.max_sleep, |ms| {
                        Duration::from_millis(ms).min(self.opts.max_sleep)
                    })
                }
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(telemetry::PROMOTER_ERRORS_TOTAL).increment(1);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "promoter round failed");
                    let b = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    b
                }
            };
            let sweep_in = self
                .opts
                .sweep_interval
                .saturating_sub(last_sweep.elapsed());
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(sleep.min(sweep_in)) => {}
                _ = self.store.changed() => {}
            }
        }
        tracing::info!("promoter stopped");
    }
}
