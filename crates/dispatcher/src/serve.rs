//! `dispatcher serve`: configures the listed events, then runs the HTTP API, the promoter, the live-update
//! hub and (on Redis) the forwarder until SIGTERM or Ctrl-C, and drains.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dispatcher_admission::{
    AdmissionError, AdmissionStore, EntryRecord, Forwarder, ForwarderOptions, Promoter,
    PromoterOptions, RedisStore, TokenMinter,
};
use dispatcher_http::{App, EngineState, HttpOptions, LiveOptions, Rate, Tokens};
use dispatcher_outbox::relay::RelayState;
use dispatcher_token::EntryClaims;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;

use crate::config::Config;
use crate::{AnyStore, open_store, redact};

/// How long open requests and background tasks get to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(10);

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let metrics = install_metrics()?;
    let store = open_store(&cfg).await?;
    tracing::info!(
        store = match &store { AnyStore::Memory(_) => "memory", AnyStore::Redis(_) => "redis" },
        redis = cfg.redis_url.as_deref().map(redact).unwrap_or_default(),
        prefix = %cfg.key_prefix,
        shards = cfg.shards,
        "dispatcher starting"
    );
    let tokens = Arc::new(
        Tokens::from_dir(&cfg.http.key_dir)
            .with_context(|| format!("loading signing keys from {}", cfg.http.key_dir))?,
    );
    match store {
        AnyStore::Memory(s) => serve_with(s, &cfg, tokens, metrics, None).await,
        AnyStore::Redis(s) => {
            let forwarder = if cfg.forwarder.enabled {
                Some(forwarder(&s, &cfg, tokens.clone())?)
            } else {
                None
            };
            serve_with(s, &cfg, tokens, metrics, forwarder).await
        }
    }
}

/// Histogram buckets fit for latencies in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 300.0,
];

/// The Prometheus recorder.
fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .context("metric buckets")?
        .install_recorder()
        .context("installing the metrics recorder")
}

fn forwarder(store: &RedisStore, cfg: &Config, tokens: Arc<Tokens>) -> anyhow::Result<Forwarder> {
    let minter: TokenMinter = Arc::new(move |r: &EntryRecord| {
        let user = (!r.user.is_empty()).then(|| r.user.clone());
        // Through the server's token cache: the join or status read that saw the admission in this
        // process usually minted it already.
        tokens
            .mint(&EntryClaims::for_admission(
                r.event.clone(),
                user,
                r.ticket.clone(),
                r.admitted_at_ms,
                r.expires_at_ms,
            ))
            .ok_or_else(|| "minting failed".to_owned())
    });
    let opts = ForwarderOptions {
        dispatch_stream: cfg.forwarder.dispatch_stream.clone(),
        dispatch_maxlen: cfg.forwarder.dispatch_maxlen,
        reclaim_min_idle: Duration::from_millis(cfg.forwarder.reclaim_min_idle_ms),
        ..Default::default()
    };
    Forwarder::new(store, minter, opts).context("starting the forwarder")
}

/// Shortest admin token accepted, from the environment or a file alike.
const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// The admin token from `DISPATCHER_ADMIN_TOKEN`, or the file named by the configuration.
fn admin_token(cfg: &Config) -> anyhow::Result<Option<String>> {
    if let Ok(t) = std::env::var("DISPATCHER_ADMIN_TOKEN")
        && !t.trim().is_empty()
    {
        return check_admin_token(t.trim(), "DISPATCHER_ADMIN_TOKEN").map(Some);
    }
    match &cfg.http.admin_token_file {
        Some(path) => {
            let t = std::fs::read_to_string(path)
                .with_context(|| format!("reading the admin token file {path}"))?;
            let t = t.trim();
            anyhow::ensure!(!t.is_empty(), "the admin token file {path} is empty");
            check_admin_token(t, &format!("the admin token file {path}")).map(Some)
        }
        None => Ok(None),
    }
}

/// The same minimum wherever the token comes from; the error never shows the token.
fn check_admin_token(t: &str, source: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        t.chars().count() >= MIN_ADMIN_TOKEN_LEN,
        "the admin token in {source} is too short (at least {MIN_ADMIN_TOKEN_LEN} characters)"
    );
    Ok(t.to_owned())
}

/// The soft limit on open files of this process (`/proc/self/limits`); 1,024 where it cannot be read.
fn open_file_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| parse_open_file_limit(&text))
        .unwrap_or(1024)
}

fn parse_open_file_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

fn http_options(cfg: &Config) -> anyhow::Result<HttpOptions> {
    let h = &cfg.http;
    Ok(HttpOptions {
        admin_token: admin_token(cfg)?,
        join_rate_per_ip: Rate::new(h.join_rate_per_ip, h.join_burst_per_ip),
        join_rate_per_user: Rate::new(h.join_rate_per_user, h.join_burst_per_user),
        request_rate_per_ip: Rate::new(h.request_rate_per_ip, h.request_burst_per_ip),
        trust_forwarded_for: h.trust_forwarded_for,
        max_body_bytes: h.max_body_bytes,
        redirect_origins: h.redirect_origins.clone(),
        live: LiveOptions {
            interval: Duration::from_millis(h.live_interval_ms),
            ..Default::default()
        },
        join_batch: h.join_batch,
        edge: cfg.edge_options(open_file_limit()),
        visitor_budget: Duration::from_millis(h.visitor_timeout_ms),
        public_metrics: h.metrics_addr.is_none(),
        ..Default::default()
    })
}

async fn serve_with<S: AdmissionStore>(
    store: Arc<S>,
    cfg: &Config,
    tokens: Arc<Tokens>,
    metrics: PrometheusHandle,
    forwarder: Option<Forwarder>,
) -> anyhow::Result<()> {
    for e in &cfg.events {
        let r = store
            .configure(&e.id, &e.settings)
            .await
            .with_context(|| format!("configuring event {}", e.id))?;
        tracing::info!(event = %e.id, created = r.created, admitted = r.admitted, "event configured");
    }
    let opts = http_options(cfg)?;
    if opts.admin_token.is_none() {
        tracing::warn!(
            "no admin token configured (DISPATCHER_ADMIN_TOKEN or DISPATCHER_ADMIN_TOKEN_FILE): the admin API refuses every call"
        );
    }
    let app = App::new(store.clone(), tokens, opts, Some(metrics.clone()));
    for e in &cfg.events {
        app.remember_settings(&e.id, &e.settings);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    if cfg.outbox.database_url.is_some() {
        // Fail at start on bad settings, not later in the background.
        cfg.relay_options()?;
        let cfg = cfg.clone();
        let stop = stop_rx.clone();
        if cfg.outbox.enabled {
            app.set_engine_state("outbox", EngineState::Connecting);
        }
        let reporter = app.clone();
        let report = move |s: RelayState| {
            let state = match s {
                RelayState::Connecting => EngineState::Connecting,
                RelayState::Running => EngineState::Running,
                RelayState::Stopped => EngineState::Stopped,
            };
            reporter.set_engine_state("outbox", state);
        };
        tasks.spawn(async move {
            if let Err(e) = crate::outbox::run_relay(&cfg, stop, report).await {
                tracing::error!(error = redact(&format!("{e:#}")), "outbox relay failed");
            }
        });
        tracing::info!("outbox relay starting");
    }
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    if cfg.http.enabled {
        let listener = tokio::net::TcpListener::bind(&cfg.http_addr)
            .await
            .with_context(|| format!("listening on {}", cfg.http_addr))?;
        let addr = listener.local_addr().context("listen address")?;
        let edge = app.opts.edge.clone();
        tracing::info!(
            addr = %addr,
            max_connections = edge.max_connections,
            max_connections_per_ip = edge.max_connections_per_ip,
            max_live_streams = edge.max_live_streams,
            "http listening"
        );
        let router = dispatcher_http::router(app.clone());
        let stop = stopped();
        tasks.spawn(async move {
            if let Err(e) = dispatcher_http::serve(listener, router, &edge, stop).await {
                tracing::error!(error = %e, "http server failed");
            }
        });
    }
    if let Some(addr) = &cfg.http.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("DISPATCHER_METRICS_ADDR: listening on {addr}"))?;
        tracing::info!(addr = %listener.local_addr().context("metrics address")?, "metrics listening");
        let router = dispatcher_http::metrics_router(app.clone());
        // A scraper or two: a few connections, the usual timeouts.
        let edge = dispatcher_http::EdgeOptions {
            max_connections: 64,
            ..Default::default()
        };
        let stop = stopped();
        tasks.spawn(async move {
            if let Err(e) = dispatcher_http::serve(listener, router, &edge, stop).await {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }
    {
        let app = app.clone();
        let stop = stopped();
        tasks.spawn(async move { app.run_background(stop).await });
    }
    if cfg.promoter.enabled {
        let promoter = Promoter::new(
            store.clone(),
            PromoterOptions {
                sweep_interval: Duration::from_millis(cfg.promoter.sweep_interval_ms),
                max_sleep: Duration::from_millis(cfg.promoter.max_sleep_ms),
                concurrency: cfg.promoter.concurrency,
                ..Default::default()
            },
        );
        app.set_promoter_running(true);
        let stop = stopped();
        tasks.spawn(async move { promoter.run(stop).await });
        tracing::info!("promoter running");
    }
    if let Some(f) = forwarder {
        tracing::info!(
            dispatch_stream = f.dispatch_stream(),
            consumer = f.consumer(),
            "forwarder running"
        );
        let stop = stopped();
        tasks.spawn(async move { f.run(stop).await });
    }
    {
        let stop = stopped();
        tasks.spawn(async move {
            let upkeep = async {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    metrics.run_upkeep();
                }
            };
            tokio::select! { _ = stop => {} _ = upkeep => {} }
        });
    }
    if !cfg.events.is_empty() {
        let store = store.clone();
        let events = cfg.events.clone();
        let stop = stopped();
        tasks.spawn(async move {
            let upkeep = async {
                loop {
                    tokio::time::sleep(EVENT_CHECK).await;
                    reapply_missing_events(store.as_ref(), &events).await;
                }
            };
            tokio::select! { _ = stop => {} _ = upkeep => {} }
        });
    }
    shutdown_signal().await;
    tracing::info!("shutting down: draining requests and background work");
    app.begin_shutdown();
    app.set_promoter_running(false);
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            after_s = DRAIN.as_secs(),
            "drain timed out; stopping anyway"
        );
        tasks.abort_all();
    }
    tracing::info!("dispatcher stopped");
    Ok(())
}

/// How often `serve` checks that the configured events still exist in the store.
const EVENT_CHECK: Duration = Duration::from_secs(2);

/// Configures again every event of the configuration file that the store no longer knows (a Redis
/// restarted without persistence, flushed, or failed over to an empty replica), so joins stop failing
/// with `unknown_event` without a restart. An event deleted through the admin API is configured again
/// too while it stays in the file: the file is the source of truth for its events.
async fn reapply_missing_events<S: AdmissionStore>(
    store: &S,
    events: &[crate::config::EventConfig],
) {
    for e in events {
        // Only a store that answers "unknown event" is repaired; an unreachable one is tried again at the
        // next check.
        if let Err(AdmissionError::UnknownEvent(_)) = store.event(&e.id).await {
            match store.configure(&e.id, &e.settings).await {
                Ok(_) => tracing::warn!(
                    event = %e.id,
                    "configured event was missing from the store (Redis restarted without its data?); configured it again"
                ),
                Err(err) => {
                    tracing::warn!(event = %e.id, error = %err, "configuring a missing event failed; retrying")
                }
            }
        }
    }
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown signal received; draining");
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Serves `/metrics` on `addr` (from `DISPATCHER_METRICS_ADDR`) for the commands without the HTTP API
/// (`outbox run`, `delivery run`, `consumer`); nothing when `None`.
pub fn metrics_listener(addr: Option<&str>) -> anyhow::Result<()> {
    let Some(addr) = addr else { return Ok(()) };
    let addr: std::net::SocketAddr = addr
        .parse()
        .with_context(|| format!("DISPATCHER_METRICS_ADDR={addr:?} is not an address"))?;
    PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .context("metric buckets")?
        .with_http_listener(addr)
        .install()
        .context("serving /metrics")?;
    tracing::info!(%addr, "metrics listening");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_soft_limit_is_read_from_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             127431               127431               processes \n\
                    Max open files            256                  524288               files     \n";
        assert_eq!(parse_open_file_limit(text), Some(256));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_file_limit(unlimited), Some(u64::MAX));
        assert_eq!(parse_open_file_limit("nothing here"), None);
        assert!(open_file_limit() > 0);
    }

    #[test]
    fn admin_tokens_need_sixteen_characters_from_any_source() {
        assert!(check_admin_token("x", "DISPATCHER_ADMIN_TOKEN").is_err());
        assert!(check_admin_token("0123456789abcde", "DISPATCHER_ADMIN_TOKEN").is_err());
        assert!(check_admin_token("0123456789abcdef", "DISPATCHER_ADMIN_TOKEN").is_ok());
        let e = check_admin_token("short-secret", "DISPATCHER_ADMIN_TOKEN").expect_err("short");
        assert!(
            !format!("{e:#}").contains("short-secret"),
            "the error never shows the token"
        );
    }
}
