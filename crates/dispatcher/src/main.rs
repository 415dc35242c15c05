//! The `dispatcher` binary: command line, configuration and wiring of the engines. The only crate that
//! uses `anyhow`; libraries return typed errors and this edge adds context.

mod config;
mod delivery;
mod demo;
mod outbox;
mod redact;
mod serve;
mod token;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use dispatcher_admission::{
    MemoryStore, MemoryStoreOptions, RedisConn, RedisStore, RedisStoreOptions,
};
use dispatcher_bench::admission::{AdmissionBenchOptions, AdmissionBenchReport};
use dispatcher_bench::pool::PoolBenchOptions;

use crate::config::Config;

/// mimalloc instead of the system allocator: a profile of `serve` under join load spent ~20 % of its
/// time in glibc malloc/free (small per-request allocations across threads).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "dispatcher",
    version,
    about = "Moves work from where it is produced to where it is consumed"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate a crowd joining a few events and show admissions as they happen.
    Demo(demo::DemoArgs),
    /// Run the service: HTTP API, promoter, live updates and (on Redis) the forwarder.
    Serve {
        /// TOML configuration file; environment variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Benchmarks (how they measure: docs/benchmarks.md).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Entry tokens: verify one offline, manage the signing keys.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// The transactional outbox relay (Postgres → Redis Stream) and its operations.
    #[command(subcommand)]
    Outbox(outbox::OutboxCommand),
    /// Push delivery (Redis Stream → WebSocket consumers): the dispatcher and the pub/sub bridge.
    #[command(subcommand)]
    Delivery(delivery::DeliveryCommand),
    /// The reference consumer service: listens for dispatchers, runs a handler, records each result once.
    Consumer(delivery::ConsumerArgs),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Joins, promotions and expiry → admission latency of the admission engine.
    Admission(AdmissionArgs),
    /// No-op jobs per second and memory under overload of the worker pool.
    Pool(PoolArgs),
    /// Joins per second through the HTTP API (open loop) against a `dispatcher serve` process.
    Join(JoinArgs),
    /// Live (SSE) connections, updates per second, slot freed → token latency.
    Live(LiveArgs),
    /// The outbox relay (its own process) against real Postgres and Redis: drain, wake-up cost,
    /// commit → stream latency, xmin horizon, overload.
    Outbox(OutboxBenchArgs),
    /// Push delivery as separate processes (3 dispatchers, 3 consumers): the ceiling, then leader and
    /// consumer kills at a fixed rate with a ledger (lost, duplicated, reprocessed, failover gaps).
    Delivery(DeliveryBenchArgs),
}

#[derive(Debug, Args)]
struct DeliveryBenchArgs {
    /// Redis URL.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Offered messages/s in the kill scenarios (default: half the measured ceiling).
    #[arg(long)]
    rate: Option<f64>,
    /// Length of each kill scenario, seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds between kills.
    #[arg(long)]
    kill_every: Option<f64>,
    #[arg(long)]
    partitions: Option<u16>,
    /// Skip the ceiling search (then give --rate).
    #[arg(long)]
    skip_ceiling: bool,
    #[arg(long)]
    skip_consumer_kills: bool,
    /// A short run for CI.
    #[arg(long)]
    smoke: bool,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct OutboxBenchArgs {
    /// Postgres URL allowed to create a database (the bench works in its own and drops it).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    database_url: String,
    /// Redis URL.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Rows pre-filled for the drain.
    #[arg(long)]
    fill_rows: Option<u64>,
    /// Steady load, rows/s and seconds.
    #[arg(long)]
    steady_rate: Option<f64>,
    #[arg(long)]
    steady_secs: Option<f64>,
    /// Burst load, rows/s and seconds.
    #[arg(long)]
    burst_rate: Option<f64>,
    #[arg(long)]
    burst_secs: Option<f64>,
    /// How long the xmin horizon is held (the last minute, or less, is measured).
    #[arg(long)]
    horizon_secs: Option<f64>,
    /// Overload length, seconds.
    #[arg(long)]
    overload_secs: Option<f64>,
    /// Rows per producer commit at the steady rate.
    #[arg(long)]
    rows_per_commit: Option<usize>,
    #[arg(long)]
    skip_horizon: bool,
    #[arg(long)]
    skip_overload: bool,
    /// A short run for CI.
    #[arg(long)]
    smoke: bool,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct JoinArgs {
    /// Redis URL of the server's store.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Offered joins per second.
    #[arg(long, default_value_t = 40_000.0)]
    rate: f64,
    /// Run length, seconds.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Keep-alive connections (each from its own loopback address).
    #[arg(long, default_value_t = 512)]
    connections: usize,
    #[arg(long, default_value_t = 10)]
    events: u32,
    /// Capacity of each event (the first joiners are admitted, the rest wait).
    #[arg(long, default_value_t = 1_000)]
    capacity: u64,
    /// The server's join limit per client address, per second.
    #[arg(long, default_value_t = 100.0)]
    join_rate_per_ip: f64,
    /// Skip the ramp (5,000 to 50,000 joins/s offered, 5 s a step) that finds `ceiling_joins_per_sec`.
    #[arg(long)]
    no_ramp: bool,
    /// A short run for CI.
    #[arg(long)]
    smoke: bool,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct LiveArgs {
    /// Redis URL of the server's store.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Live connections held.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Run length, seconds.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Completions per second through the API.
    #[arg(long, default_value_t = 100.0)]
    complete_rate: f64,
    /// A short run for CI.
    #[arg(long)]
    smoke: bool,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct AdmissionArgs {
    /// Redis URL; without it the in-process store is measured.
    #[arg(long)]
    redis: Option<String>,
    #[arg(long, default_value_t = 1_000_000)]
    users: u64,
    #[arg(long, default_value_t = 100)]
    events: u32,
    #[arg(long, default_value_t = 1_000)]
    capacity: u64,
    /// Store operations in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Session TTL of the expiry phase, ms.
    #[arg(long, default_value_t = 500)]
    expiry_ttl_ms: u64,
    /// Tickets the completer ends per call (1 = one complete per ticket; up to 1000 = bulk release).
    #[arg(long, default_value_t = 1)]
    complete_batch: usize,
    /// A short run for CI (overrides sizes).
    #[arg(long)]
    smoke: bool,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct PoolArgs {
    #[arg(long)]
    workers: Option<usize>,
    #[arg(long)]
    queue_capacity: Option<usize>,
    #[arg(long)]
    producers: Option<usize>,
    #[arg(long)]
    throughput_secs: Option<f64>,
    #[arg(long)]
    overload_secs: Option<f64>,
    /// A short run for CI.
    #[arg(long)]
    smoke: bool,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

fn env_map() -> HashMap<String, String> {
    std::env::vars().collect()
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DISPATCHER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A store chosen at run time: Redis (single or cluster) when configured, else in-process.
#[derive(Debug)]
pub enum AnyStore {
    Memory(Arc<MemoryStore>),
    Redis(Arc<RedisStore>),
}

/// Runs `$body` with `$s` bound to the concrete store.
#[macro_export]
macro_rules! with_store {
    ($store:expr, |$s:ident| $body:expr) => {
        match $store {
            $crate::AnyStore::Memory($s) => $body,
            $crate::AnyStore::Redis($s) => $body,
        }
    };
}

pub async fn open_store(cfg: &Config) -> anyhow::Result<AnyStore> {
    let opts = RedisStoreOptions {
        prefix: cfg.key_prefix.clone(),
        shards: cfg.shards,
        entry_stream_maxlen: cfg.entry_stream_maxlen,
        ..Default::default()
    };
    if !cfg.redis_cluster.is_empty() {
        let conn = RedisConn::cluster(&cfg.redis_cluster)
            .await
            .context("connecting to the Redis Cluster")?;
        return Ok(AnyStore::Redis(Arc::new(RedisStore::new(conn, opts)?)));
    }
    match &cfg.redis_url {
        Some(url) => {
            let conn = RedisConn::single(url)
                .await
                .with_context(|| format!("connecting to Redis at {}", redact(url)))?;
            Ok(AnyStore::Redis(Arc::new(RedisStore::new(conn, opts)?)))
        }
        None => Ok(AnyStore::Memory(Arc::new(MemoryStore::new(
            MemoryStoreOptions {
                entry_stream_maxlen: cfg.entry_stream_maxlen,
                ..Default::default()
            },
        )))),
    }
}

pub use redact::redact;

/// Runs the command; an error is printed as `Error: …` with every password in it hidden (whatever a
/// library put in its message) and exit code 1.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", redact(&format!("{e:?}")));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // DISPATCHER_WORKER_THREADS: the async worker threads (default: one per core).
    if let Some(v) = std::env::var("DISPATCHER_WORKER_THREADS")
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        let n: usize = v
            .trim()
            .parse()
            .ok()
            .filter(|n| (1..=1024).contains(n))
            .with_context(|| {
                format!("DISPATCHER_WORKER_THREADS={v:?} is not a number from 1 to 1024")
            })?;
        builder.worker_threads(n);
    }
    let rt = builder.build().context("starting the async runtime")?;
    match cli.command {
        Command::Demo(args) => {
            let cfg = Config::load(None, &env_map())?;
            rt.block_on(demo::run(args, cfg))
        }
        Command::Serve { config } => {
            let cfg = Config::load(config.as_deref(), &env_map())?;
            init_tracing(&cfg.log_format);
            rt.block_on(serve::run(cfg))
        }
        Command::Bench(BenchCommand::Admission(a)) => rt.block_on(bench_admission(a)),
        Command::Bench(BenchCommand::Pool(p)) => bench_pool(p),
        Command::Bench(BenchCommand::Join(a)) => rt.block_on(bench_join(a)),
        Command::Bench(BenchCommand::Live(a)) => rt.block_on(bench_live(a)),
        Command::Bench(BenchCommand::Outbox(a)) => rt.block_on(bench_outbox(a)),
        Command::Bench(BenchCommand::Delivery(a)) => rt.block_on(bench_delivery(a)),
        Command::Token(t) => token::run(t),
        Command::Outbox(o) => rt.block_on(outbox::run(o)),
        Command::Delivery(d) => rt.block_on(delivery::run(d)),
        Command::Consumer(c) => rt.block_on(delivery::consumer(c)),
    }
}

fn this_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("locating the dispatcher binary to run as the server")
}

async fn bench_join(a: JoinArgs) -> anyhow::Result<()> {
    use dispatcher_bench::join::{JoinBenchOptions, run_with_ramp};
    let exe = this_exe()?;
    let mut opts = if a.smoke {
        JoinBenchOptions::smoke(exe, a.redis)
    } else {
        JoinBenchOptions {
            exe,
            redis: a.redis,
            rate: a.rate,
            duration: std::time::Duration::from_secs_f64(a.duration),
            connections: a.connections,
            events: a.events,
            capacity: a.capacity,
            join_rate_per_ip: a.join_rate_per_ip,
            ..JoinBenchOptions::default()
        }
    };
    if a.no_ramp {
        opts.ramp.clear();
    }
    eprintln!(
        "bench join: offering {:.0} joins/s for {:.0} s over {} connections…",
        opts.rate,
        opts.duration.as_secs_f64(),
        opts.connections
    );
    let report = run_with_ramp(&opts).await.context("join benchmark")?;
    println!("{report}");
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

async fn bench_delivery(a: DeliveryBenchArgs) -> anyhow::Result<()> {
    use dispatcher_bench::delivery::{DeliveryBenchOptions, run};
    let exe = this_exe()?;
    let mut o = if a.smoke {
        DeliveryBenchOptions::smoke(exe, a.redis)
    } else {
        DeliveryBenchOptions::full(exe, a.redis)
    };
    if let Some(v) = a.rate {
        anyhow::ensure!(
            v.is_finite() && v >= 1.0,
            "--rate must be at least 1 message/s"
        );
        o.rate = Some(v);
    }
    if let Some(v) = a.duration {
        anyhow::ensure!(v.is_finite() && v >= 1.0, "--duration must be at least 1 s");
        o.duration_secs = v;
    }
    if let Some(v) = a.kill_every {
        anyhow::ensure!(
            v.is_finite() && v >= 1.0,
            "--kill-every must be at least 1 s"
        );
        o.kill_every_secs = v;
    }
    if let Some(v) = a.partitions {
        anyhow::ensure!((1..=1024).contains(&v), "--partitions must be 1..=1024");
        o.partitions = v;
    }
    anyhow::ensure!(
        !a.skip_ceiling || o.rate.is_some(),
        "--skip-ceiling needs --rate (the default rate is half the ceiling)"
    );
    o.skip_ceiling = a.skip_ceiling;
    o.skip_consumer_kills = a.skip_consumer_kills;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let report = run(&o, &|phase: &str| {
        bar.set_message(format!("bench delivery: {phase}"))
    })
    .await
    .context("delivery benchmark")?;
    bar.finish_and_clear();
    println!("{report}");
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

async fn bench_outbox(a: OutboxBenchArgs) -> anyhow::Result<()> {
    use dispatcher_bench::outbox::{OutboxBenchOptions, run};
    let exe = this_exe()?;
    let mut o = if a.smoke {
        OutboxBenchOptions::smoke(exe, a.database_url, a.redis)
    } else {
        OutboxBenchOptions::full(exe, a.database_url, a.redis)
    };
    if let Some(v) = a.fill_rows {
        o.fill_rows = v;
    }
    if let Some(v) = a.steady_rate {
        o.steady_rate = v;
    }
    if let Some(v) = a.steady_secs {
        o.steady_secs = v;
    }
    if let Some(v) = a.burst_rate {
        o.burst_rate = v;
    }
    if let Some(v) = a.burst_secs {
        o.burst_secs = v;
    }
    if let Some(v) = a.horizon_secs {
        o.horizon_secs = v;
        o.horizon_measure_secs = o.horizon_measure_secs.min(v / 2.0);
    }
    if let Some(v) = a.overload_secs {
        o.overload_secs = v;
    }
    if let Some(v) = a.rows_per_commit {
        anyhow::ensure!(v >= 1, "--rows-per-commit must be at least 1");
        o.rows_per_commit = v;
    }
    o.skip_horizon = a.skip_horizon;
    o.skip_overload = a.skip_overload;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let report = run(&o, &|phase: &str| {
        bar.set_message(format!("bench outbox: {phase}"))
    })
    .await
    .context("outbox benchmark")?;
    bar.finish_and_clear();
    println!("{report}");
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

async fn bench_live(a: LiveArgs) -> anyhow::Result<()> {
    use dispatcher_bench::live::{LiveBenchOptions, run};
    let exe = this_exe()?;
    let opts = if a.smoke {
        LiveBenchOptions::smoke(exe, a.redis)
    } else {
        LiveBenchOptions {
            exe,
            redis: a.redis,
            connections: a.connections,
            duration: std::time::Duration::from_secs_f64(a.duration),
            complete_rate: a.complete_rate,
            ..Default::default()
        }
    };
    eprintln!(
        "bench live: {} connections for {:.0} s…",
        opts.connections,
        opts.duration.as_secs_f64()
    );
    let report = run(&opts).await.context("live benchmark")?;
    println!("{report}");
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

async fn bench_admission(a: AdmissionArgs) -> anyhow::Result<()> {
    let opts = if a.smoke {
        AdmissionBenchOptions {
            complete_batch: a.complete_batch,
            ..AdmissionBenchOptions::smoke(a.redis.clone())
        }
    } else {
        AdmissionBenchOptions {
            redis: a.redis.clone(),
            users: a.users,
            events: a.events,
            capacity: a.capacity,
            concurrency: a.concurrency,
            expiry_ttl_ms: a.expiry_ttl_ms,
            complete_batch: a.complete_batch,
            ..Default::default()
        }
    };
    let bar = indicatif::ProgressBar::new(opts.users);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
        )
        .context("progress template")?
        .progress_chars("=> "),
    );
    let progress = |phase: &str, done: u64, total: u64| {
        if bar.message() != phase {
            bar.set_message(phase.to_owned());
            bar.set_length(total);
            bar.reset();
        }
        bar.set_position(done);
    };
    let report: AdmissionBenchReport = dispatcher_bench::admission::run(&opts, &progress)
        .await
        .context("admission benchmark")?;
    bar.finish_and_clear();
    println!("{report}");
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

fn bench_pool(p: PoolArgs) -> anyhow::Result<()> {
    let mut opts = if p.smoke {
        PoolBenchOptions::smoke()
    } else {
        PoolBenchOptions::default()
    };
    if let Some(v) = p.workers {
        opts.workers = v;
    }
    if let Some(v) = p.queue_capacity {
        opts.queue_capacity = v;
    }
    if let Some(v) = p.producers {
        opts.producers = v;
    }
    if let Some(v) = p.throughput_secs {
        opts.throughput_secs = v;
    }
    if let Some(v) = p.overload_secs {
        opts.overload_secs = v;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let report = dispatcher_bench::pool::run(&opts, Some(&bar)).context("pool benchmark")?;
    bar.finish_and_clear();
    println!("{report}");
    if p.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
