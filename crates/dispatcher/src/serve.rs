//! `dispatcher serve`: configures the listed events and runs the promoter until SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dispatcher_admission::{AdmissionStore, Promoter, PromoterOptions};

use crate::config::Config;
use crate::{open_store, redact, with_store};

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let store = open_store(&cfg).await?;
    tracing::info!(
        store = match &store { crate::AnyStore::Memory(_) => "memory", crate::AnyStore::Redis(_) => "redis" },
        redis = cfg.redis_url.as_deref().map(redact).unwrap_or_default(),
        prefix = %cfg.key_prefix,
        shards = cfg.shards,
        "dispatcher starting"
    );
    with_store!(store, |s| serve_with(s, &cfg).await)
}

async fn serve_with<S: AdmissionStore>(store: Arc<S>, cfg: &Config) -> anyhow::Result<()> {
    for e in &cfg.events {
        let r = store
            .configure(&e.id, &e.settings)
            .await
            .with_context(|| format!("configuring event {}", e.id))?;
        tracing::info!(event = %e.id, created = r.created, admitted = r.admitted, "event configured");
    }
    let shutdown = shutdown_signal();
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
        tracing::info!("promoter running");
        promoter.run(shutdown).await;
    } else {
        shutdown.await;
    }
    tracing::info!("dispatcher stopped");
    Ok(())
}

async fn shutdown_signal() {
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
