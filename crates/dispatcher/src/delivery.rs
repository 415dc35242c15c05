//! `dispatcher delivery run|bridge` and `dispatcher consumer`: push delivery's dispatcher, its pub/sub
//! ingest bridge and the reference consumer service, wired from the configuration.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use dispatcher_delivery::consumer::{self, ConsumerOptions, Handler, Message, Outcome};
use dispatcher_delivery::keys::Partitioning;
use dispatcher_delivery::leader::{self, LeaderOptions};
use dispatcher_delivery::lease::LeaseTiming;
use dispatcher_delivery::stats::{self, Stats};
use dispatcher_delivery::{bridge, store};
use dispatcher_wire::frame::MessageId;
use tokio::sync::watch;

use crate::config::Config;
use crate::{env_map, init_tracing, redact};

#[derive(Debug, Subcommand)]
pub enum DeliveryCommand {
    /// Run a dispatcher: compete for partition leases and push their messages to the consumers until
    /// SIGTERM (then drain in-flight acks and release the leases).
    Run(RunArgs),
    /// Feed a Redis pub/sub channel into the source stream (messages published while the bridge is not
    /// subscribed are lost: pub/sub keeps nothing).
    Bridge {
        #[command(flatten)]
        common: Common,
        /// The pub/sub channel.
        #[arg(long)]
        channel: String,
        /// Approximate MAXLEN of each partition stream (0 = none).
        #[arg(long, default_value_t = 0)]
        maxlen: u64,
    },
}

#[derive(Debug, Args)]
pub struct Common {
    /// TOML configuration file; environment variables override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Append counters, latency histograms and lease events to this file once a second (JSON lines).
    #[arg(long)]
    stats_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ConsumerArgs {
    #[command(flatten)]
    common: Common,
    /// Listen address (overrides delivery.consumer_addr).
    #[arg(long)]
    listen: Option<String>,
    /// Consumer id (overrides delivery.consumer_id).
    #[arg(long)]
    id: Option<String>,
    /// What the handler does: `noop` (result: the body's length), `sleep:<ms>`, `fail-every:<n>` (every
    /// n-th message asks for a retry), `reject-every:<n>` (every n-th goes to the dead letters).
    #[arg(long, default_value = "noop")]
    handler: String,
    /// Append `R <partition> <id>` before each handler run and `W …` / `D …` when its result was recorded /
    /// found done already, one write per batch (an audit trail that survives SIGKILL).
    #[arg(long)]
    run_log: Option<PathBuf>,
}

/// The shared secret, from `DISPATCHER_SHARED_SECRET` or the configured file; never logged.
fn secret(cfg: &Config) -> anyhow::Result<Vec<u8>> {
    let s = if let Ok(s) = std::env::var("DISPATCHER_SHARED_SECRET") {
        s.into_bytes()
    } else if let Some(f) = &cfg.delivery.secret_file {
        let mut b =
            std::fs::read(f).with_context(|| format!("reading the shared secret file {f}"))?;
        while b.last().is_some_and(|c| c.is_ascii_whitespace()) {
            b.pop();
        }
        b
    } else {
        bail!(
            "push delivery needs a shared secret: set DISPATCHER_SHARED_SECRET_FILE (or delivery.secret_file) \
             or DISPATCHER_SHARED_SECRET"
        );
    };
    check_secret(&s)?;
    Ok(s)
}

/// Least bytes of a shared secret once surrounding blanks are trimmed.
const SECRET_MIN_BYTES: usize = 16;
/// Least distinct byte values in a shared secret.
const SECRET_MIN_DISTINCT: usize = 8;

/// Refuses a shared secret that is guessable by its shape: shorter than [`SECRET_MIN_BYTES`] once
/// surrounding blanks are trimmed (a whitespace-only value is empty), or with fewer than
/// [`SECRET_MIN_DISTINCT`] distinct bytes (`aaaaaaaaaaaaaaaa`). The message never shows the secret.
fn check_secret(secret: &[u8]) -> anyhow::Result<()> {
    let trimmed = secret.trim_ascii();
    if trimmed.len() < SECRET_MIN_BYTES {
        bail!(
            "the shared secret must be at least {SECRET_MIN_BYTES} bytes, not counting surrounding blanks \
             (it has {}); generate one with e.g. `openssl rand -hex 32`",
            trimmed.len()
        );
    }
    let mut seen = [false; 256];
    for b in trimmed {
        seen[usize::from(*b)] = true;
    }
    let distinct = seen.iter().filter(|s| **s).count();
    if distinct < SECRET_MIN_DISTINCT {
        bail!(
            "the shared secret must use at least {SECRET_MIN_DISTINCT} different byte values (it uses \
             {distinct}); generate one with e.g. `openssl rand -hex 32`"
        );
    }
    Ok(())
}

fn partitioning(cfg: &Config) -> anyhow::Result<Partitioning> {
    let d = &cfg.delivery;
    let stream = d
        .stream
        .clone()
        .unwrap_or_else(|| format!("{}:jobs", cfg.key_prefix));
    Partitioning::new(stream, d.partitions, format!("{}:", cfg.key_prefix))
        .context("delivery settings")
}

fn redis_url(cfg: &Config) -> anyhow::Result<String> {
    cfg.redis_url
        .clone()
        .context("push delivery runs on Redis: set DISPATCHER_REDIS_URL (or REDIS_URL)")
}

async fn open_store(cfg: &Config) -> anyhow::Result<store::Store> {
    let url = redis_url(cfg)?;
    let conn = store::connect(&url)
        .await
        .with_context(|| format!("connecting to Redis at {}", redact(&url)))?;
    store::Store::new(conn, partitioning(cfg)?, cfg.delivery.group.clone())
        .await
        .context("loading the delivery functions into Redis")
}

fn shutdown_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("shutting down: draining");
        let _ = tx.send(true);
    });
    rx
}

pub async fn run(cmd: DeliveryCommand) -> anyhow::Result<()> {
    match cmd {
        DeliveryCommand::Run(a) => {
            let cfg = Config::load(a.common.config.as_deref(), &env_map())?;
            init_tracing(&cfg.log_format);
            let d = &cfg.delivery;
            let secret = secret(&cfg)?;
            let mut opts = LeaderOptions::new(d.consumers.clone(), secret);
            if let Some(id) = &d.node_id {
                opts.node_id = id.clone();
            }
            let ttl = Duration::from_millis(d.lease_ttl_ms);
            opts.lease = LeaseTiming::new(ttl, ttl / 5).context("lease timing")?;
            opts.acquire_every = (ttl / 6).max(Duration::from_millis(50));
            opts.ack_timeout = Duration::from_millis(d.ack_timeout_ms);
            opts.max_attempts = d.max_attempts;
            opts.read_batch = d.read_batch;
            opts.max_in_flight = d.max_in_flight;
            opts.validate().context("delivery settings")?;
            crate::serve::metrics_listener(d.metrics_addr.as_deref())?;
            let store = open_store(&cfg).await?;
            let shutdown = shutdown_on_signal();
            let stats = Arc::new(Stats::default());
            if let Some(path) = a.stats_file {
                tokio::spawn(stats::write_periodically(
                    stats.clone(),
                    opts.node_id.clone(),
                    path,
                    Duration::from_secs(1),
                    shutdown.clone(),
                ));
            }
            tracing::info!(
                node = %opts.node_id,
                consumers = opts.consumers.len(),
                partitions = store.keys().partitions,
                stream = %store.keys().stream,
                "dispatcher starting"
            );
            leader::run(store, redis_url(&cfg)?, opts, stats, shutdown)
                .await
                .context("push delivery")
        }
        DeliveryCommand::Bridge {
            common,
            channel,
            maxlen,
        } => {
            let cfg = Config::load(common.config.as_deref(), &env_map())?;
            init_tracing(&cfg.log_format);
            let url = redis_url(&cfg)?;
            let n = bridge::run(
                &url,
                &channel,
                partitioning(&cfg)?,
                maxlen,
                shutdown_on_signal(),
            )
            .await
            .context("pub/sub bridge")?;
            println!("bridge appended {n} messages");
            Ok(())
        }
    }
}

/// The reference consumer's handler.
#[derive(Debug)]
struct ReferenceHandler {
    mode: Mode,
    seen: std::sync::atomic::AtomicU64,
    log: Option<Mutex<std::fs::File>>,
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Noop,
    Sleep(Duration),
    FailEvery(u64),
    RejectEvery(u64),
}

fn parse_mode(s: &str) -> anyhow::Result<Mode> {
    let num = |v: &str| -> anyhow::Result<u64> {
        let n: u64 = v
            .parse()
            .with_context(|| format!("--handler {s:?}: {v:?} is not a number"))?;
        if n == 0 {
            bail!("--handler {s:?}: must be positive");
        }
        Ok(n)
    };
    Ok(match s.split_once(':') {
        None if s == "noop" => Mode::Noop,
        Some(("sleep", v)) => Mode::Sleep(Duration::from_millis(num(v)?)),
        Some(("fail-every", v)) => Mode::FailEvery(num(v)?),
        Some(("reject-every", v)) => Mode::RejectEvery(num(v)?),
        _ => {
            bail!("--handler {s:?}: expected noop, sleep:<ms>, fail-every:<n> or reject-every:<n>")
        }
    })
}

impl ReferenceHandler {
    fn log(&self, tag: char, ids: impl Iterator<Item = (u16, MessageId)>) {
        let Some(f) = &self.log else { return };
        let mut buf = String::new();
        for (p, id) in ids {
            buf.push(tag);
            buf.push(' ');
            buf.push_str(&p.to_string());
            buf.push(' ');
            buf.push_str(&id.to_string());
            buf.push('\n');
        }
        if buf.is_empty() {
            return;
        }
        if let Ok(mut f) = f.lock()
            && let Err(e) = f.write_all(buf.as_bytes())
        {
            tracing::error!(error = %e, "writing the run log");
        }
    }
}

impl Handler for ReferenceHandler {
    async fn handle(&self, msg: Message) -> Outcome {
        let n = self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        match self.mode {
            Mode::Noop => {}
            Mode::Sleep(d) => tokio::time::sleep(d).await,
            Mode::FailEvery(k) if n.is_multiple_of(k) && msg.attempt == 1 => {
                return Outcome::Retry("asked to fail".into());
            }
            Mode::RejectEvery(k) if n.is_multiple_of(k) => {
                return Outcome::Reject("asked to reject".into());
            }
            _ => {}
        }
        Outcome::Done(format!("ok {}", msg.body.len()).into_bytes())
    }

    fn running(&self, ids: &[(u16, MessageId)]) {
        self.log('R', ids.iter().copied());
    }

    fn recorded(&self, results: &[(u16, MessageId, bool)]) {
        self.log('W', results.iter().filter(|r| r.2).map(|r| (r.0, r.1)));
        self.log('D', results.iter().filter(|r| !r.2).map(|r| (r.0, r.1)));
    }
}

pub async fn consumer(a: ConsumerArgs) -> anyhow::Result<()> {
    let cfg = Config::load(a.common.config.as_deref(), &env_map())?;
    init_tracing(&cfg.log_format);
    let d = &cfg.delivery;
    let addr = a.listen.clone().unwrap_or_else(|| d.consumer_addr.clone());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let id =
        a.id.clone()
            .or_else(|| d.consumer_id.clone())
            .unwrap_or_else(|| format!("consumer-{port}"));
    let mut opts = ConsumerOptions::new(id.clone(), secret(&cfg)?);
    opts.window = d.window;
    opts.claim_ttl = Duration::from_millis(d.claim_ttl_ms);
    opts.retention = Duration::from_secs(d.result_retention_secs);
    opts.max_handshakes = d.max_handshakes;
    opts.handshake_timeout = Duration::from_millis(d.handshake_timeout_ms);
    let log = match &a.run_log {
        Some(p) => Some(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening the run log {}", p.display()))?,
        )),
        None => None,
    };
    let handler = Arc::new(ReferenceHandler {
        mode: parse_mode(&a.handler)?,
        seen: std::sync::atomic::AtomicU64::new(0),
        log,
    });
    crate::serve::metrics_listener(d.metrics_addr.as_deref())?;
    let store = open_store(&cfg).await?;
    tracing::info!(addr = %addr, consumer = %id, "consumer listening");
    eprintln!("consumer {id} listening on ws://{addr}/");
    consumer::serve(listener, store, opts, handler, shutdown_on_signal())
        .await
        .context("consumer")
}

#[cfg(test)]
mod tests {
    use super::check_secret;

    #[test]
    fn weak_shared_secrets_are_refused_without_showing_them() {
        for (secret, needle) in [
            (&b""[..], "at least 16 bytes"),
            (b"                                ", "at least 16 bytes"),
            (b" \t\n \r\n                       ", "at least 16 bytes"),
            (b"   short-secret      ", "at least 16 bytes"),
            (b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "different byte values"),
            (b"abababababababababababababababab", "different byte values"),
            (b"abcdefgabcdefgabcdefg", "different byte values"),
        ] {
            let e = check_secret(secret).expect_err(needle).to_string();
            assert!(e.contains(needle), "{e}");
            if secret.trim_ascii().len() >= 4 {
                assert!(
                    !e.contains(std::str::from_utf8(secret.trim_ascii()).expect("ascii")),
                    "{e}"
                );
            }
        }
        check_secret(b"0123456789abcdef").expect("16 bytes, 16 distinct values");
        check_secret(b"abcdefghabcdefgh").expect("16 bytes, 8 distinct values");
        check_secret(&[0u8, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7]).expect("binary secrets");
    }
}
