//! `dispatcher outbox migrate|run|status|replay|prune`: the outbox relay and its operations as commands.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use dispatcher_outbox::ops::{self, PruneOptions, ReplayFilter};
use dispatcher_outbox::relay::RelayState;
use dispatcher_outbox::{Relay, db, publish, schema};
use tokio::sync::watch;

use crate::config::Config;
use crate::{env_map, init_tracing, redact};

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Create or upgrade the outbox schema (`dispatcher.outbox` and its companions).
    Migrate(Common),
    /// Run the relay until SIGTERM (then publish what was read, store its place and release its leases).
    Run(Common),
    /// Rows by status, the oldest pending row, leases, the stream and its consumer groups' lag.
    Status {
        #[command(flatten)]
        common: Common,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Put dead rows back to pending (attempts reset) so the relay publishes them again.
    Replay(ReplayArgs),
    /// Delete sent rows older than OUTBOX_RETENTION_DAYS and dead rows older than DLQ_RETENTION_DAYS, in
    /// short batches.
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct Common {
    /// TOML configuration file; environment variables override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    common: Common,
    /// Only rows that occurred within this long before now (e.g. 30m, 24h, 7d).
    #[arg(long, value_parser = parse_age)]
    since: Option<Duration>,
    /// Only rows that occurred more than this long before now.
    #[arg(long, value_parser = parse_age)]
    until: Option<Duration>,
    /// Only rows whose last error contains this text (case-insensitive).
    #[arg(long = "error")]
    error_contains: Option<String>,
    /// Only these row ids (repeatable).
    #[arg(long = "id")]
    ids: Vec<i64>,
    /// Only this event type.
    #[arg(long)]
    event_type: Option<String>,
    /// Re-publish `sent` rows instead (after a Redis data loss or trimming that outran a consumer group).
    #[arg(long)]
    sent: bool,
    /// Count the rows, change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    common: Common,
    /// Override OUTBOX_RETENTION_DAYS.
    #[arg(long)]
    sent_days: Option<u32>,
    /// Override DLQ_RETENTION_DAYS.
    #[arg(long)]
    dead_days: Option<u32>,
    /// Rows deleted per transaction.
    #[arg(long, default_value_t = 5_000)]
    batch: i64,
    /// Count the rows, change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// `30s`, `15m`, `24h`, `7d`.
fn parse_age(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?}: give a unit (s, m, h or d), e.g. 24h"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: not a number of s, m, h or d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

fn database_url(cfg: &Config) -> anyhow::Result<String> {
    cfg.outbox
        .database_url
        .clone()
        .context("the outbox needs Postgres: set DATABASE_URL (or outbox.database_url)")
}

async fn connect(cfg: &Config) -> anyhow::Result<db::Conn> {
    let url = database_url(cfg)?;
    let timeout = Duration::from_millis(cfg.outbox.connect_timeout_ms);
    db::connect_within(&url, None, false, timeout)
        .await
        .with_context(|| format!("connecting to Postgres at {}", redact(&url)))
}

pub async fn run(cmd: OutboxCommand) -> anyhow::Result<()> {
    match cmd {
        OutboxCommand::Migrate(c) => {
            let cfg = Config::load(c.config.as_deref(), &env_map())?;
            let mut client = connect(&cfg).await?;
            let applied = schema::migrate(&mut client)
                .await
                .context("applying the outbox migrations")?;
            if applied.is_empty() {
                println!(
                    "outbox schema is up to date (version {})",
                    schema::SCHEMA_VERSION
                );
            } else {
                println!("applied outbox migrations {applied:?}");
            }
            Ok(())
        }
        OutboxCommand::Run(c) => {
            let cfg = Config::load(c.config.as_deref(), &env_map())?;
            init_tracing(&cfg.log_format);
            relay(&cfg).await
        }
        OutboxCommand::Status { common, json } => {
            let cfg = Config::load(common.config.as_deref(), &env_map())?;
            status(&cfg, json).await
        }
        OutboxCommand::Replay(a) => {
            let cfg = Config::load(a.common.config.as_deref(), &env_map())?;
            if let (Some(s), Some(u)) = (a.since, a.until)
                && u >= s
            {
                bail!("--until must be less long ago than --since");
            }
            let now = std::time::SystemTime::now();
            let filter = ReplayFilter {
                since: a.since.and_then(|d| now.checked_sub(d)),
                until: a.until.and_then(|d| now.checked_sub(d)),
                error_contains: a.error_contains,
                ids: a.ids,
                event_type: a.event_type,
                sent: a.sent,
                dry_run: a.dry_run,
            };
            let mut client = connect(&cfg).await?;
            let n = ops::replay(&mut client, &filter)
                .await
                .context("replaying dead rows")?;
            let which = if a.sent { "sent" } else { "dead" };
            if a.dry_run {
                println!("{n} {which} rows match (dry run: nothing changed)");
            } else {
                println!("{n} {which} rows put back to pending");
            }
            Ok(())
        }
        OutboxCommand::Prune(a) => {
            let cfg = Config::load(a.common.config.as_deref(), &env_map())?;
            let days = |d: u32| Duration::from_secs(u64::from(d) * 86_400);
            let o = PruneOptions {
                sent_older_than: days(a.sent_days.unwrap_or(cfg.outbox.retention_days)),
                dead_older_than: days(a.dead_days.unwrap_or(cfg.outbox.dlq_retention_days)),
                batch: a.batch,
                dry_run: a.dry_run,
            };
            let client = connect(&cfg).await?;
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(200));
            let done = ops::prune(&client, &o, &mut |p| {
                bar.set_message(format!("deleted {} sent, {} dead rows", p.sent, p.dead));
            })
            .await
            .context("pruning the outbox")?;
            bar.finish_and_clear();
            let verb = if a.dry_run { "would delete" } else { "deleted" };
            println!(
                "{verb} {} sent rows (older than {} d) and {} dead rows (older than {} d) in {} batches",
                done.sent,
                o.sent_older_than.as_secs() / 86_400,
                done.dead,
                o.dead_older_than.as_secs() / 86_400,
                done.batches
            );
            Ok(())
        }
    }
}

async fn status(cfg: &Config, json: bool) -> anyhow::Result<()> {
    let client = connect(cfg).await?;
    let st = ops::status(&client)
        .await
        .context("reading the outbox status")?;
    let stream = cfg
        .outbox
        .stream_name
        .clone()
        .unwrap_or_else(|| format!("{}:outbox", cfg.key_prefix));
    let info = match &cfg.redis_url {
        Some(url) => match publish::connect(url).await {
            Ok(conn) => publish::stream_info(&conn, &stream).await.ok(),
            Err(_) => None,
        },
        None => None,
    };
    if json {
        let v = serde_json::json!({
            "pending": st.pending, "sent": st.sent, "dead": st.dead, "retrying": st.retrying,
            "oldest_pending_age_secs": st.oldest_pending_age_secs,
            "leases": st.leases, "relays": st.relays,
            "stream": stream, "stream_info": info, "maxlen": cfg.outbox.stream_maxlen,
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "outbox rows: {} pending ({} waiting for a retry), {} sent, {} dead",
        st.pending, st.retrying, st.sent, st.dead
    );
    match st.oldest_pending_age_secs {
        Some(a) => println!("oldest pending row: {a:.1} s old"),
        None => println!("oldest pending row: none"),
    }
    if st.leases.is_empty() {
        println!("relays: none holds a partition");
    }
    for l in &st.leases {
        println!("relay {}: {} partitions", l.owner, l.partitions);
    }
    match info {
        Some(i) => {
            println!(
                "stream {stream}: {} entries (MAXLEN ~{})",
                i.length, cfg.outbox.stream_maxlen
            );
            for g in &i.groups {
                let lag = g
                    .lag
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "unknown".into());
                let risk = publish::lag_ratio(g.lag, cfg.outbox.stream_maxlen)
                    .map(|r| {
                        format!(
                            " ({:.0} % of MAXLEN{})",
                            r * 100.0,
                            if r >= 0.8 {
                                ": WARNING, trimming will soon drop unread entries"
                            } else {
                                ""
                            }
                        )
                    })
                    .unwrap_or_default();
                println!(
                    "  group {}: lag {lag}{risk}, {} delivered but unacknowledged",
                    g.name, g.pending
                );
            }
        }
        None => println!("stream {stream}: Redis not configured or unreachable"),
    }
    Ok(())
}

/// Runs the relay (the kill switch and the metrics listener included) until SIGTERM or Ctrl-C.
async fn relay(cfg: &Config) -> anyhow::Result<()> {
    crate::serve::metrics_listener(cfg.outbox.metrics_addr.as_deref())?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        crate::serve::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    run_relay(cfg, stop_rx, |_| {}).await
}

/// The relay of `serve` and `outbox run`: idles when the kill switch is off. `report` hears the relay's
/// state as it changes (connecting, running, stopped), for `serve`'s `/readyz`; it hears nothing while
/// the kill switch is off (the relay is not running on purpose).
pub async fn run_relay(
    cfg: &Config,
    mut stop: watch::Receiver<bool>,
    report: impl Fn(RelayState) + Send + 'static,
) -> anyhow::Result<()> {
    let opts = cfg.relay_options()?;
    if !cfg.outbox.enabled {
        tracing::warn!(
            "outbox relay disabled by DISPATCHER_ENABLED=false: rows stay pending, nothing is published"
        );
        let _ = stop.wait_for(|s| *s).await;
        return Ok(());
    }
    tracing::info!(
        stream = %opts.stream,
        maxlen = opts.maxlen,
        batch = opts.batch_size,
        tick_ms = opts.tick.as_millis() as u64,
        listen = opts.listen,
        connect_timeout_ms = opts.connect_timeout.as_millis() as u64,
        max_rows_per_sec = opts.max_rows_per_sec,
        owner = %opts.owner,
        "outbox relay starting"
    );
    let relay = Relay::new(opts).context("outbox settings")?;
    let mut state = relay.state();
    tokio::spawn(async move {
        loop {
            report(*state.borrow_and_update());
            if state.changed().await.is_err() {
                break;
            }
        }
    });
    relay.run(stop).await.context("outbox relay")
}

#[cfg(test)]
mod tests {
    use super::parse_age;
    use std::time::Duration;

    #[test]
    fn ages_need_a_unit() {
        assert_eq!(parse_age("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_age("24").is_err());
        assert!(parse_age("h").is_err());
        assert!(parse_age("5w").is_err());
    }
}
