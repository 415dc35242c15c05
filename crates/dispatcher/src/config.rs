//! Configuration: a TOML file, overridden by `DISPATCHER_*` environment variables, with defaults that work.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use dispatcher_admission::{EventId, EventSettings};
use serde::Deserialize;

/// The whole configuration of a `dispatcher` process.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Redis URL; absent = the in-process store. Env: `DISPATCHER_REDIS_URL` (alias `REDIS_URL`).
    pub redis_url: Option<String>,
    /// Redis Cluster seed nodes; when set, used instead of `redis_url`. Env: `DISPATCHER_REDIS_CLUSTER`
    /// (comma-separated).
    pub redis_cluster: Vec<String>,
    /// Key prefix so several deployments share one Redis. Env: `DISPATCHER_KEY_PREFIX`.
    pub key_prefix: String,
    /// Shards events are spread over; fixed for the life of a deployment. Env: `DISPATCHER_SHARDS`.
    pub shards: u16,
    /// HTTP listen address (the HTTP API arrives with the next engine). Env: `DISPATCHER_HTTP_ADDR`.
    pub http_addr: String,
    /// `text` or `json`. Env: `DISPATCHER_LOG_FORMAT`.
    pub log_format: String,
    /// Approximate MAXLEN of each shard's entry stream. Env: `DISPATCHER_ENTRY_STREAM_MAXLEN`.
    pub entry_stream_maxlen: u64,
    /// Promoter tuning.
    pub promoter: PromoterConfig,
    /// The HTTP API.
    pub http: HttpConfig,
    /// The entry → dispatch forwarder (Redis stores only).
    pub forwarder: ForwarderConfig,
    /// The outbox relay (Postgres → Redis Stream).
    pub outbox: OutboxConfig,
    /// Push delivery (Redis Stream → WebSocket consumers) and the reference consumer.
    pub delivery: DeliveryConfig,
    /// Events configured (created or updated) at start.
    pub events: Vec<EventConfig>,
}

/// Promoter tuning.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PromoterConfig {
    /// Whether this process runs a promoter. Env: `DISPATCHER_PROMOTER_ENABLED`.
    pub enabled: bool,
    /// Safety-net sweep period, ms.
    pub sweep_interval_ms: u64,
    /// Longest sleep between timer rounds, ms.
    pub max_sleep_ms: u64,
    /// Event passes in flight.
    pub concurrency: usize,
}

/// The HTTP API's settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Whether `serve` runs the HTTP server. Env: `DISPATCHER_HTTP_ENABLED`.
    pub enabled: bool,
    /// Directory of the token signing keys; the first key is generated when it holds none. Env:
    /// `DISPATCHER_KEY_DIR`.
    pub key_dir: String,
    /// File holding the admin bearer token. Env: `DISPATCHER_ADMIN_TOKEN_FILE` (or the token itself in
    /// `DISPATCHER_ADMIN_TOKEN`). Without either, the admin API answers 401 to everything.
    pub admin_token_file: Option<String>,
    /// Joins per second per client address, and the burst. Env: `DISPATCHER_JOIN_RATE_PER_IP`.
    pub join_rate_per_ip: f64,
    pub join_burst_per_ip: f64,
    /// Joins per second per user id, and the burst.
    pub join_rate_per_user: f64,
    pub join_burst_per_user: f64,
    /// Visitor requests per second per client address, and the burst. Env:
    /// `DISPATCHER_REQUEST_RATE_PER_IP`.
    pub request_rate_per_ip: f64,
    pub request_burst_per_ip: f64,
    /// Take the client address from `X-Forwarded-For` (only behind a trusted proxy). Env:
    /// `DISPATCHER_TRUST_FORWARDED_FOR`.
    pub trust_forwarded_for: bool,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Origins the waiting page may send admitted visitors on to.
    pub redirect_origins: Vec<String>,
    /// Live update pass period, ms.
    pub live_interval_ms: u64,
    /// Most concurrent joins of one event sent to the store in one call (1 = no coalescing).
    pub join_batch: usize,
    /// A request's header must arrive within this (also how long an idle keep-alive connection stays
    /// open), ms. Env: `DISPATCHER_HTTP_HEADER_TIMEOUT_MS`.
    pub header_timeout_ms: u64,
    /// A request's body must arrive within this, ms. Env: `DISPATCHER_HTTP_BODY_TIMEOUT_MS`.
    pub body_timeout_ms: u64,
    /// A connection on which nothing moves for this long is closed, ms. Env:
    /// `DISPATCHER_HTTP_IDLE_TIMEOUT_MS`.
    pub idle_timeout_ms: u64,
    /// Open connections in total; default from the process's open-file limit (672 at 1,024). Env:
    /// `DISPATCHER_HTTP_MAX_CONNECTIONS`.
    pub max_connections: Option<usize>,
    /// Open connections per client (TCP peer) address. Env: `DISPATCHER_HTTP_MAX_CONNECTIONS_PER_IP`.
    pub max_connections_per_ip: usize,
    /// Open live streams in total; default three quarters of `max_connections`. Env:
    /// `DISPATCHER_LIVE_MAX_STREAMS`.
    pub max_live_streams: Option<usize>,
    /// Open live streams per client address. Env: `DISPATCHER_LIVE_MAX_STREAMS_PER_IP`.
    pub max_live_streams_per_ip: usize,
    /// How long a visitor call waits for the store before 503 (or failing open), ms. Env:
    /// `DISPATCHER_VISITOR_TIMEOUT_MS`.
    pub visitor_timeout_ms: u64,
    /// Where `serve` serves `/metrics`; when set, the public port does not. Env:
    /// `DISPATCHER_METRICS_ADDR`.
    pub metrics_addr: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            key_dir: "dispatcher-keys".into(),
            admin_token_file: None,
            join_rate_per_ip: 5.0,
            join_burst_per_ip: 20.0,
            join_rate_per_user: 1.0,
            join_burst_per_user: 5.0,
            request_rate_per_ip: 50.0,
            request_burst_per_ip: 200.0,
            trust_forwarded_for: false,
            max_body_bytes: 16 * 1024,
            redirect_origins: Vec::new(),
            live_interval_ms: 1_000,
            join_batch: 256,
            header_timeout_ms: 10_000,
            body_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: None,
            max_connections_per_ip: 64,
            max_live_streams: None,
            max_live_streams_per_ip: 32,
            visitor_timeout_ms: 2_000,
            metrics_addr: None,
        }
    }
}

/// The forwarder's settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ForwarderConfig {
    /// Whether `serve` runs a forwarder (Redis stores only). Env: `DISPATCHER_FORWARDER_ENABLED`.
    pub enabled: bool,
    /// The dispatch stream's key; default `<key_prefix>:dispatch`. Env: `DISPATCHER_DISPATCH_STREAM`.
    pub dispatch_stream: Option<String>,
    /// Approximate MAXLEN of the dispatch stream.
    pub dispatch_maxlen: u64,
    /// How long an admission must have been pending (read, not acknowledged) before any forwarder takes
    /// it over from its crashed owner, ms. Short means a crash delays admissions less; below the Redis
    /// response timeout (10 s), a live forwarder's slow batch may be forwarded twice (duplicates by
    /// ticket id, which consumers drop).
    pub reclaim_min_idle_ms: u64,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dispatch_stream: None,
            dispatch_maxlen: 1_000_000,
            reclaim_min_idle_ms: 15_000,
        }
    }
}

/// The outbox relay's settings; the environment names of the outbox relay it replaces are kept.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// The relay's kill switch: `false` stops publishing, rows stay pending and the relay keeps its place.
    /// Env: `DISPATCHER_ENABLED`.
    pub enabled: bool,
    /// Postgres holding `dispatcher.outbox`; `serve` runs the relay only when set. Env: `DATABASE_URL`.
    pub database_url: Option<String>,
    /// Fallback poll period when no wake-up arrives, ms. Env: `DISPATCH_TICK_MS`.
    pub tick_ms: u64,
    /// Rows per read and per publish call. Env: `DISPATCH_BATCH_SIZE`.
    pub batch_size: usize,
    /// Attempts before a row goes dead. Env: `DISPATCH_MAX_ATTEMPTS`.
    pub max_attempts: u32,
    /// Stream key; default `<key_prefix>:outbox`. Env: `DISPATCH_STREAM_NAME`.
    pub stream_name: Option<String>,
    /// Approximate MAXLEN of the stream (0 = no trimming). Env: `REDIS_STREAM_MAXLEN`.
    pub stream_maxlen: u64,
    /// `outbox prune` deletes sent rows older than this. Env: `OUTBOX_RETENTION_DAYS`.
    pub retention_days: u32,
    /// `outbox prune` deletes dead rows older than this. Env: `DLQ_RETENTION_DAYS`.
    pub dlq_retention_days: u32,
    /// Partition lease, ms: a crashed relay's rows go to the others after it. Env: `DISPATCH_LEASE_MS`.
    pub lease_ms: u64,
    /// LISTEN for the producers' wake-up; `false` polls only (behind a transaction-mode pooler). Env:
    /// `DISPATCH_LISTEN`.
    pub listen: bool,
    /// First retry delay and the cap, ms (exponential, jittered). Env: `DISPATCH_RETRY_BASE_MS`,
    /// `DISPATCH_RETRY_MAX_MS`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Largest stream entry; a bigger row goes dead at once. Env: `DISPATCH_MAX_ENTRY_BYTES`.
    pub max_entry_bytes: usize,
    /// Most rows per second one relay publishes (0 = no limit, else 0.001 to 1000000). Env:
    /// `DISPATCH_MAX_ROWS_PER_SEC`.
    pub max_rows_per_sec: f64,
    /// How long connecting to Postgres may take altogether (TCP, startup, authentication), ms. Env:
    /// `DISPATCH_CONNECT_TIMEOUT_MS`.
    pub connect_timeout_ms: u64,
    /// Where `outbox run` serves `/metrics` (none by default). Env: `DISPATCHER_METRICS_ADDR`.
    pub metrics_addr: Option<String>,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            database_url: None,
            tick_ms: 100,
            batch_size: 1000,
            max_attempts: 10,
            stream_name: None,
            stream_maxlen: 1_000_000,
            retention_days: 7,
            dlq_retention_days: 30,
            lease_ms: 5_000,
            listen: true,
            retry_base_ms: 500,
            retry_max_ms: 300_000,
            max_entry_bytes: 1024 * 1024,
            max_rows_per_sec: 0.0,
            connect_timeout_ms: 10_000,
            metrics_addr: None,
        }
    }
}

/// Push delivery's settings (`dispatcher delivery run`, `dispatcher consumer`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// The source stream; default `<key_prefix>:jobs`. With one partition it is read as it is (so the
    /// outbox's stream or the dispatch stream can be delivered); with more, partition `p` reads
    /// `{<stream>:<p>}`. Env: `DISPATCHER_DELIVERY_STREAM`.
    pub stream: Option<String>,
    /// Partitions, each leased on its own. Env: `DISPATCHER_DELIVERY_PARTITIONS`.
    pub partitions: u16,
    /// The consumer group on the source streams. Env: `DISPATCHER_DELIVERY_GROUP`.
    pub group: String,
    /// Consumers the dispatcher dials (`ws://host:port/`). Env: `DISPATCHER_CONSUMERS` (comma-separated).
    pub consumers: Vec<String>,
    /// File holding the shared secret of the hello/auth exchange. Env: `DISPATCHER_SHARED_SECRET_FILE` (or
    /// the secret itself in `DISPATCHER_SHARED_SECRET`).
    pub secret_file: Option<String>,
    /// This instance's id (lease owner); default a random one. Env: `DISPATCHER_NODE_ID`.
    pub node_id: Option<String>,
    /// Lease TTL, ms; a dead leader's partitions move after about this long. Env:
    /// `DISPATCHER_LEASE_TTL_MS`.
    pub lease_ttl_ms: u64,
    /// Deliveries not acknowledged within this go to another consumer, ms. Env: `DISPATCHER_ACK_TIMEOUT_MS`.
    pub ack_timeout_ms: u64,
    /// Deliveries of one message before it goes to the dead-letter stream. Env:
    /// `DISPATCHER_DELIVERY_MAX_ATTEMPTS`.
    pub max_attempts: u16,
    /// Entries read per call.
    pub read_batch: usize,
    /// Messages in flight per partition at most.
    pub max_in_flight: usize,
    /// Consumer: listen address. Env: `DISPATCHER_CONSUMER_ADDR`.
    pub consumer_addr: String,
    /// Consumer: its id in the hello; default `consumer-<port>`. Env: `DISPATCHER_CONSUMER_ID`.
    pub consumer_id: Option<String>,
    /// Consumer: credit granted to each dispatcher connection. Env: `DISPATCHER_CONSUMER_WINDOW`.
    pub window: u32,
    /// Consumer: how long a claim keeps another consumer from running the same message, ms; keep it
    /// below `ack_timeout_ms` and above the slowest handler. Env: `DISPATCHER_CLAIM_TTL_MS`.
    pub claim_ttl_ms: u64,
    /// Consumer: how long results are kept (and duplicates recognised), seconds.
    pub result_retention_secs: u64,
    /// Consumer: connections still in their WebSocket upgrade or hello/auth at once; more are closed at
    /// once. Env: `DISPATCHER_CONSUMER_MAX_HANDSHAKES`.
    pub max_handshakes: usize,
    /// Consumer: how long a connection has for the upgrade and hello/auth altogether, ms. Env:
    /// `DISPATCHER_CONSUMER_HANDSHAKE_TIMEOUT_MS`.
    pub handshake_timeout_ms: u64,
    /// Where `delivery run` and `consumer` serve `/metrics` (none by default). Env:
    /// `DISPATCHER_METRICS_ADDR`.
    pub metrics_addr: Option<String>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            stream: None,
            partitions: 12,
            group: "dispatcher".into(),
            consumers: Vec::new(),
            secret_file: None,
            node_id: None,
            lease_ttl_ms: 1_000,
            ack_timeout_ms: 30_000,
            max_attempts: 5,
            read_batch: 256,
            max_in_flight: 8_192,
            consumer_addr: "127.0.0.1:7070".into(),
            consumer_id: None,
            window: 2_048,
            claim_ttl_ms: 10_000,
            result_retention_secs: 86_400,
            max_handshakes: 64,
            handshake_timeout_ms: 10_000,
            metrics_addr: None,
        }
    }
}

/// An event to configure at start.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EventConfig {
    /// The event id.
    pub id: EventId,
    /// Its settings.
    #[serde(flatten)]
    pub settings: EventSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_cluster: Vec::new(),
            key_prefix: "dsp".into(),
            shards: 16,
            http_addr: "127.0.0.1:8080".into(),
            log_format: "text".into(),
            entry_stream_maxlen: 1_000_000,
            promoter: PromoterConfig::default(),
            http: HttpConfig::default(),
            forwarder: ForwarderConfig::default(),
            outbox: OutboxConfig::default(),
            delivery: DeliveryConfig::default(),
            events: Vec::new(),
        }
    }
}

impl Default for PromoterConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            sweep_interval_ms: 1_000,
            max_sleep_ms: 50,
            concurrency: 64,
        }
    }
}

impl Config {
    /// Loads `path` (if given) and applies environment overrides from `env`.
    pub fn load(path: Option<&Path>, env: &HashMap<String, String>) -> anyhow::Result<Self> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config file {}", p.display()))?;
                toml::from_str::<Config>(&text)
                    .with_context(|| format!("parsing config file {}", p.display()))?
            }
            None => Config::default(),
        };
        cfg.apply_env(env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn apply_env(&mut self, env: &HashMap<String, String>) -> anyhow::Result<()> {
        let get = |k: &str| {
            env.get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if let Some(v) = get("DISPATCHER_REDIS_URL").or_else(|| get("REDIS_URL")) {
            self.redis_url = Some(v);
        }
        if let Some(v) = get("DISPATCHER_REDIS_CLUSTER") {
            self.redis_cluster = v
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(v) = get("DISPATCHER_KEY_PREFIX") {
            self.key_prefix = v;
        }
        if let Some(v) = get("DISPATCHER_SHARDS") {
            self.shards = v
                .parse()
                .with_context(|| format!("DISPATCHER_SHARDS={v:?} is not a number"))?;
        }
        if let Some(v) = get("DISPATCHER_HTTP_ADDR") {
            self.http_addr = v;
        }
        if let Some(v) = get("DISPATCHER_LOG_FORMAT") {
            self.log_format = v;
        }
        if let Some(v) = get("DISPATCHER_ENTRY_STREAM_MAXLEN") {
            self.entry_stream_maxlen = v
                .parse()
                .with_context(|| format!("DISPATCHER_ENTRY_STREAM_MAXLEN={v:?} is not a number"))?;
        }
        if let Some(v) = get("DISPATCHER_PROMOTER_ENABLED") {
            self.promoter.enabled = parse_bool("DISPATCHER_PROMOTER_ENABLED", &v)?;
        }
        if let Some(v) = get("DISPATCHER_HTTP_ENABLED") {
            self.http.enabled = parse_bool("DISPATCHER_HTTP_ENABLED", &v)?;
        }
        if let Some(v) = get("DISPATCHER_FORWARDER_ENABLED") {
            self.forwarder.enabled = parse_bool("DISPATCHER_FORWARDER_ENABLED", &v)?;
        }
        if let Some(v) = get("DISPATCHER_TRUST_FORWARDED_FOR") {
            self.http.trust_forwarded_for = parse_bool("DISPATCHER_TRUST_FORWARDED_FOR", &v)?;
        }
        if let Some(v) = get("DISPATCHER_KEY_DIR") {
            self.http.key_dir = v;
        }
        if let Some(v) = get("DISPATCHER_ADMIN_TOKEN_FILE") {
            self.http.admin_token_file = Some(v);
        }
        if let Some(v) = get("DISPATCHER_DISPATCH_STREAM") {
            self.forwarder.dispatch_stream = Some(v);
        }
        if let Some(v) = get("DISPATCHER_JOIN_RATE_PER_IP") {
            self.http.join_rate_per_ip = v
                .parse()
                .with_context(|| format!("DISPATCHER_JOIN_RATE_PER_IP={v:?} is not a number"))?;
        }
        self.apply_outbox_env(&get)?;
        self.apply_delivery_env(&get)?;
        self.apply_http_edge_env(&get)?;
        if let Some(v) = get("DISPATCHER_REQUEST_RATE_PER_IP") {
            self.http.request_rate_per_ip = v
                .parse()
                .with_context(|| format!("DISPATCHER_REQUEST_RATE_PER_IP={v:?} is not a number"))?;
        }
        Ok(())
    }

    fn apply_outbox_env(&mut self, get: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        let o = &mut self.outbox;
        if let Some(v) = get("DISPATCHER_ENABLED") {
            o.enabled = parse_bool("DISPATCHER_ENABLED", &v)?;
        }
        if let Some(v) = get("DATABASE_URL") {
            o.database_url = Some(v);
        }
        if let Some(v) = get("DISPATCH_TICK_MS") {
            o.tick_ms = num("DISPATCH_TICK_MS", &v)?;
        }
        if let Some(v) = get("DISPATCH_BATCH_SIZE") {
            o.batch_size = num("DISPATCH_BATCH_SIZE", &v)?;
        }
        if let Some(v) = get("DISPATCH_MAX_ATTEMPTS") {
            o.max_attempts = num("DISPATCH_MAX_ATTEMPTS", &v)?;
        }
        if let Some(v) = get("DISPATCH_STREAM_NAME") {
            o.stream_name = Some(v);
        }
        if let Some(v) = get("REDIS_STREAM_MAXLEN") {
            o.stream_maxlen = num("REDIS_STREAM_MAXLEN", &v)?;
        }
        if let Some(v) = get("OUTBOX_RETENTION_DAYS") {
            o.retention_days = num("OUTBOX_RETENTION_DAYS", &v)?;
        }
        if let Some(v) = get("DLQ_RETENTION_DAYS") {
            o.dlq_retention_days = num("DLQ_RETENTION_DAYS", &v)?;
        }
        if let Some(v) = get("DISPATCH_LEASE_MS") {
            o.lease_ms = num("DISPATCH_LEASE_MS", &v)?;
        }
        if let Some(v) = get("DISPATCH_LISTEN") {
            o.listen = parse_bool("DISPATCH_LISTEN", &v)?;
        }
        if let Some(v) = get("DISPATCH_RETRY_BASE_MS") {
            o.retry_base_ms = num("DISPATCH_RETRY_BASE_MS", &v)?;
        }
        if let Some(v) = get("DISPATCH_RETRY_MAX_MS") {
            o.retry_max_ms = num("DISPATCH_RETRY_MAX_MS", &v)?;
        }
        if let Some(v) = get("DISPATCH_MAX_ENTRY_BYTES") {
            o.max_entry_bytes = num("DISPATCH_MAX_ENTRY_BYTES", &v)?;
        }
        if let Some(v) = get("DISPATCH_MAX_ROWS_PER_SEC") {
            o.max_rows_per_sec = num("DISPATCH_MAX_ROWS_PER_SEC", &v)?;
        }
        if let Some(v) = get("DISPATCH_CONNECT_TIMEOUT_MS") {
            o.connect_timeout_ms = num("DISPATCH_CONNECT_TIMEOUT_MS", &v)?;
        }
        if let Some(v) = get("DISPATCHER_METRICS_ADDR") {
            o.metrics_addr = Some(v);
        }
        Ok(())
    }

    fn apply_http_edge_env(&mut self, get: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        let h = &mut self.http;
        for (name, field) in [
            (
                "DISPATCHER_HTTP_HEADER_TIMEOUT_MS",
                &mut h.header_timeout_ms,
            ),
            ("DISPATCHER_HTTP_BODY_TIMEOUT_MS", &mut h.body_timeout_ms),
            ("DISPATCHER_HTTP_IDLE_TIMEOUT_MS", &mut h.idle_timeout_ms),
            ("DISPATCHER_VISITOR_TIMEOUT_MS", &mut h.visitor_timeout_ms),
        ] {
            if let Some(v) = get(name) {
                *field = num(name, &v)?;
            }
        }
        if let Some(v) = get("DISPATCHER_HTTP_MAX_CONNECTIONS") {
            h.max_connections = Some(num("DISPATCHER_HTTP_MAX_CONNECTIONS", &v)?);
        }
        if let Some(v) = get("DISPATCHER_HTTP_MAX_CONNECTIONS_PER_IP") {
            h.max_connections_per_ip = num("DISPATCHER_HTTP_MAX_CONNECTIONS_PER_IP", &v)?;
        }
        if let Some(v) = get("DISPATCHER_LIVE_MAX_STREAMS") {
            h.max_live_streams = Some(num("DISPATCHER_LIVE_MAX_STREAMS", &v)?);
        }
        if let Some(v) = get("DISPATCHER_LIVE_MAX_STREAMS_PER_IP") {
            h.max_live_streams_per_ip = num("DISPATCHER_LIVE_MAX_STREAMS_PER_IP", &v)?;
        }
        if let Some(v) = get("DISPATCHER_METRICS_ADDR") {
            h.metrics_addr = Some(v);
        }
        Ok(())
    }

    /// The HTTP edge's limits: the configured ones, the rest scaled to `open_files`.
    pub fn edge_options(&self, open_files: u64) -> dispatcher_http::EdgeOptions {
        let h = &self.http;
        let scaled = dispatcher_http::EdgeOptions::for_file_limit(open_files);
        let max_connections = h.max_connections.unwrap_or(scaled.max_connections);
        dispatcher_http::EdgeOptions {
            header_timeout: std::time::Duration::from_millis(h.header_timeout_ms),
            body_timeout: std::time::Duration::from_millis(h.body_timeout_ms),
            idle_timeout: std::time::Duration::from_millis(h.idle_timeout_ms),
            max_connections,
            max_connections_per_ip: h.max_connections_per_ip,
            max_live_streams: h
                .max_live_streams
                .unwrap_or((max_connections / 4 * 3).max(1)),
            max_live_streams_per_ip: h.max_live_streams_per_ip,
        }
    }

    fn apply_delivery_env(&mut self, get: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        let d = &mut self.delivery;
        if let Some(v) = get("DISPATCHER_DELIVERY_STREAM") {
            d.stream = Some(v);
        }
        if let Some(v) = get("DISPATCHER_DELIVERY_PARTITIONS") {
            d.partitions = num("DISPATCHER_DELIVERY_PARTITIONS", &v)?;
        }
        if let Some(v) = get("DISPATCHER_DELIVERY_GROUP") {
            d.group = v;
        }
        if let Some(v) = get("DISPATCHER_CONSUMERS") {
            d.consumers = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = get("DISPATCHER_SHARED_SECRET_FILE") {
            d.secret_file = Some(v);
        }
        if let Some(v) = get("DISPATCHER_NODE_ID") {
            d.node_id = Some(v);
        }
        if let Some(v) = get("DISPATCHER_LEASE_TTL_MS") {
            d.lease_ttl_ms = num("DISPATCHER_LEASE_TTL_MS", &v)?;
        }
        if let Some(v) = get("DISPATCHER_ACK_TIMEOUT_MS") {
            d.ack_timeout_ms = num("DISPATCHER_ACK_TIMEOUT_MS", &v)?;
        }
        if let Some(v) = get("DISPATCHER_DELIVERY_MAX_ATTEMPTS") {
            d.max_attempts = num("DISPATCHER_DELIVERY_MAX_ATTEMPTS", &v)?;
        }
        if let Some(v) = get("DISPATCHER_CONSUMER_ADDR") {
            d.consumer_addr = v;
        }
        if let Some(v) = get("DISPATCHER_CONSUMER_ID") {
            d.consumer_id = Some(v);
        }
        if let Some(v) = get("DISPATCHER_METRICS_ADDR") {
            d.metrics_addr = Some(v);
        }
        if let Some(v) = get("DISPATCHER_CLAIM_TTL_MS") {
            d.claim_ttl_ms = num("DISPATCHER_CLAIM_TTL_MS", &v)?;
        }
        if let Some(v) = get("DISPATCHER_CONSUMER_WINDOW") {
            d.window = num("DISPATCHER_CONSUMER_WINDOW", &v)?;
        }
        if let Some(v) = get("DISPATCHER_CONSUMER_MAX_HANDSHAKES") {
            d.max_handshakes = num("DISPATCHER_CONSUMER_MAX_HANDSHAKES", &v)?;
        }
        if let Some(v) = get("DISPATCHER_CONSUMER_HANDSHAKE_TIMEOUT_MS") {
            d.handshake_timeout_ms = num("DISPATCHER_CONSUMER_HANDSHAKE_TIMEOUT_MS", &v)?;
        }
        Ok(())
    }

    /// The relay's options from this configuration (Redis and Postgres must be configured).
    pub fn relay_options(&self) -> anyhow::Result<dispatcher_outbox::RelayOptions> {
        let o = &self.outbox;
        let database_url = o
            .database_url
            .clone()
            .context("the outbox needs Postgres: set DATABASE_URL (or outbox.database_url)")?;
        let redis_url = self.redis_url.clone().context(
            "the outbox relay publishes to Redis: set DISPATCHER_REDIS_URL (or REDIS_URL)",
        )?;
        let opts = dispatcher_outbox::RelayOptions {
            database_url,
            redis_url,
            stream: o
                .stream_name
                .clone()
                .unwrap_or_else(|| format!("{}:outbox", self.key_prefix)),
            maxlen: o.stream_maxlen,
            batch_size: o.batch_size,
            tick: std::time::Duration::from_millis(o.tick_ms),
            max_attempts: o.max_attempts,
            retry: dispatcher_outbox::Backoff {
                base: std::time::Duration::from_millis(o.retry_base_ms),
                max: std::time::Duration::from_millis(o.retry_max_ms.max(o.retry_base_ms)),
            },
            lease: std::time::Duration::from_millis(o.lease_ms),
            listen: o.listen,
            max_entry_bytes: o.max_entry_bytes,
            max_rows_per_sec: o.max_rows_per_sec,
            connect_timeout: std::time::Duration::from_millis(o.connect_timeout_ms),
            // An operator who forgot `outbox migrate` hears it at once.
            wait_for_schema: false,
            ..Default::default()
        };
        opts.validate().context("outbox settings")?;
        Ok(opts)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !matches!(self.log_format.as_str(), "text" | "json") {
            bail!(
                "log_format must be \"text\" or \"json\", not {:?}",
                self.log_format
            );
        }
        if self.shards == 0 || self.shards > 4096 {
            bail!("shards must be between 1 and 4096");
        }
        for (name, v) in [
            ("http.join_rate_per_ip", self.http.join_rate_per_ip),
            ("http.join_burst_per_ip", self.http.join_burst_per_ip),
            ("http.join_rate_per_user", self.http.join_rate_per_user),
            ("http.join_burst_per_user", self.http.join_burst_per_user),
            ("http.request_rate_per_ip", self.http.request_rate_per_ip),
            ("http.request_burst_per_ip", self.http.request_burst_per_ip),
        ] {
            if !v.is_finite() || !(0.0..=1e9).contains(&v) {
                bail!(
                    "{name} must be a number from 0 (0 turns the limit off) to 1000000000, not {v}"
                );
            }
        }
        if self.http.max_body_bytes < 256 || self.http.max_body_bytes > 16 * 1024 * 1024 {
            bail!("http.max_body_bytes must be between 256 and 16 MiB");
        }
        if self.http.join_batch == 0 || self.http.join_batch > 500 {
            bail!("http.join_batch must be between 1 and 500");
        }
        if self.http.live_interval_ms < 100 || self.http.live_interval_ms > 60_000 {
            bail!("http.live_interval_ms must be between 100 and 60000");
        }
        let p = &self.promoter;
        let f = &self.forwarder;
        let o = &self.outbox;
        let d = &self.delivery;
        let h = &self.http;
        // Every count and duration has an upper bound: a huge value would overflow later (a Postgres
        // interval, a Redis TTL, a Duration) instead of being refused here with its name.
        let bounds: [(&str, u64, u64, u64); 35] = [
            (
                "http.header_timeout_ms (DISPATCHER_HTTP_HEADER_TIMEOUT_MS)",
                h.header_timeout_ms,
                100,
                600_000,
            ),
            (
                "http.body_timeout_ms (DISPATCHER_HTTP_BODY_TIMEOUT_MS)",
                h.body_timeout_ms,
                100,
                600_000,
            ),
            (
                "http.idle_timeout_ms (DISPATCHER_HTTP_IDLE_TIMEOUT_MS)",
                h.idle_timeout_ms,
                1_000,
                3_600_000,
            ),
            (
                "http.visitor_timeout_ms (DISPATCHER_VISITOR_TIMEOUT_MS)",
                h.visitor_timeout_ms,
                50,
                60_000,
            ),
            (
                "http.max_connections (DISPATCHER_HTTP_MAX_CONNECTIONS)",
                h.max_connections.map_or(1, |v| v as u64),
                1,
                1_000_000,
            ),
            (
                "http.max_connections_per_ip (DISPATCHER_HTTP_MAX_CONNECTIONS_PER_IP)",
                h.max_connections_per_ip as u64,
                1,
                1_000_000,
            ),
            (
                "http.max_live_streams (DISPATCHER_LIVE_MAX_STREAMS)",
                h.max_live_streams.map_or(1, |v| v as u64),
                1,
                1_000_000,
            ),
            (
                "http.max_live_streams_per_ip (DISPATCHER_LIVE_MAX_STREAMS_PER_IP)",
                h.max_live_streams_per_ip as u64,
                1,
                1_000_000,
            ),
            (
                "entry_stream_maxlen (DISPATCHER_ENTRY_STREAM_MAXLEN)",
                self.entry_stream_maxlen,
                0,
                10_000_000_000,
            ),
            (
                "promoter.sweep_interval_ms",
                p.sweep_interval_ms,
                1,
                3_600_000,
            ),
            ("promoter.max_sleep_ms", p.max_sleep_ms, 1, 60_000),
            ("promoter.concurrency", p.concurrency as u64, 1, 10_000),
            (
                "forwarder.dispatch_maxlen",
                f.dispatch_maxlen,
                0,
                1_000_000_000,
            ),
            (
                "forwarder.reclaim_min_idle_ms",
                f.reclaim_min_idle_ms,
                1,
                86_400_000,
            ),
            ("outbox.tick_ms (DISPATCH_TICK_MS)", o.tick_ms, 1, 60_000),
            (
                "outbox.batch_size (DISPATCH_BATCH_SIZE)",
                o.batch_size as u64,
                1,
                10_000,
            ),
            (
                "outbox.max_attempts (DISPATCH_MAX_ATTEMPTS)",
                u64::from(o.max_attempts),
                1,
                1_000,
            ),
            (
                "outbox.stream_maxlen (REDIS_STREAM_MAXLEN)",
                o.stream_maxlen,
                0,
                10_000_000_000,
            ),
            (
                "outbox.retention_days (OUTBOX_RETENTION_DAYS)",
                u64::from(o.retention_days),
                0,
                36_500,
            ),
            (
                "outbox.dlq_retention_days (DLQ_RETENTION_DAYS)",
                u64::from(o.dlq_retention_days),
                0,
                36_500,
            ),
            (
                "outbox.lease_ms (DISPATCH_LEASE_MS)",
                o.lease_ms,
                500,
                600_000,
            ),
            (
                "outbox.retry_base_ms (DISPATCH_RETRY_BASE_MS)",
                o.retry_base_ms,
                1,
                3_600_000,
            ),
            (
                "outbox.retry_max_ms (DISPATCH_RETRY_MAX_MS)",
                o.retry_max_ms,
                1,
                86_400_000,
            ),
            (
                "outbox.max_entry_bytes (DISPATCH_MAX_ENTRY_BYTES)",
                o.max_entry_bytes as u64,
                1024,
                512 * 1024 * 1024,
            ),
            (
                "outbox.connect_timeout_ms (DISPATCH_CONNECT_TIMEOUT_MS)",
                o.connect_timeout_ms,
                100,
                300_000,
            ),
            (
                "delivery.partitions (DISPATCHER_DELIVERY_PARTITIONS)",
                u64::from(d.partitions),
                1,
                1024,
            ),
            (
                "delivery.lease_ttl_ms (DISPATCHER_LEASE_TTL_MS)",
                d.lease_ttl_ms,
                200,
                600_000,
            ),
            (
                "delivery.ack_timeout_ms (DISPATCHER_ACK_TIMEOUT_MS)",
                d.ack_timeout_ms,
                100,
                86_400_000,
            ),
            (
                "delivery.max_attempts (DISPATCHER_DELIVERY_MAX_ATTEMPTS)",
                u64::from(d.max_attempts),
                1,
                1_000,
            ),
            ("delivery.read_batch", d.read_batch as u64, 1, 100_000),
            (
                "delivery.max_in_flight",
                d.max_in_flight as u64,
                1,
                10_000_000,
            ),
            (
                "delivery.window (DISPATCHER_CONSUMER_WINDOW)",
                u64::from(d.window),
                1,
                1_000_000,
            ),
            (
                "delivery.max_handshakes (DISPATCHER_CONSUMER_MAX_HANDSHAKES)",
                d.max_handshakes as u64,
                1,
                100_000,
            ),
            (
                "delivery.handshake_timeout_ms (DISPATCHER_CONSUMER_HANDSHAKE_TIMEOUT_MS)",
                d.handshake_timeout_ms,
                100,
                300_000,
            ),
            (
                "delivery.claim_ttl_ms (DISPATCHER_CLAIM_TTL_MS)",
                d.claim_ttl_ms,
                100,
                86_400_000,
            ),
        ];
        for (name, v, lo, hi) in bounds {
            if !(lo..=hi).contains(&v) {
                bail!("{name} must be from {lo} to {hi}, not {v}");
            }
        }
        if !(1..=3_650 * 86_400).contains(&d.result_retention_secs) {
            bail!(
                "delivery.result_retention_secs must be from 1 to {}, not {}",
                3_650 * 86_400,
                d.result_retention_secs
            );
        }
        let (lo, hi) = dispatcher_outbox::relay::MAX_ROWS_PER_SEC_RANGE;
        let rate = o.max_rows_per_sec;
        if !(rate == 0.0 || (lo..=hi).contains(&rate)) {
            bail!(
                "outbox.max_rows_per_sec (DISPATCH_MAX_ROWS_PER_SEC) must be 0 (no limit) or from {lo} to {hi} rows/s, not {rate:?}"
            );
        }
        for e in &self.events {
            e.settings
                .validate()
                .with_context(|| format!("event {}", e.id))?;
        }
        Ok(())
    }
}

/// A number from the environment variable `name`; the error names it.
fn num<T: std::str::FromStr>(name: &str, v: &str) -> anyhow::Result<T> {
    v.parse()
        .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a valid number"))
}

fn parse_bool(name: &str, v: &str) -> anyhow::Result<bool> {
    Ok(match v {
        "1" | "true" | "yes" | "on" => true,
        "0" | "false" | "no" | "off" => false,
        other => bail!("{name}={other:?} is not a boolean"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_work_without_file_or_env() {
        let c = Config::load(None, &env(&[])).expect("defaults");
        assert_eq!(c, Config::default());
        assert!(
            c.redis_url.is_none(),
            "no Redis configured means the in-process store"
        );
    }

    #[test]
    fn env_overrides_file_and_redis_url_alias_works() {
        let dir = std::env::temp_dir().join(format!("dispatcher-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("c.toml");
        std::fs::write(
            &p,
            r#"
redis_url = "redis://file:6379"
shards = 8
[promoter]
max_sleep_ms = 20
[[events]]
id = "concert"
capacity = 1000
session_ttl_ms = 900000
"#,
        )
        .expect("write");
        let c = Config::load(Some(&p), &env(&[("REDIS_URL", "redis://alias:6379")])).expect("load");
        assert_eq!(c.redis_url.as_deref(), Some("redis://alias:6379"));
        assert_eq!(c.shards, 8);
        assert_eq!(c.promoter.max_sleep_ms, 20);
        assert_eq!(c.events[0].settings.capacity, 1000);
        let c = Config::load(
            Some(&p),
            &env(&[
                ("REDIS_URL", "redis://alias"),
                ("DISPATCHER_REDIS_URL", "redis://main"),
            ]),
        )
        .expect("load");
        assert_eq!(
            c.redis_url.as_deref(),
            Some("redis://main"),
            "DISPATCHER_REDIS_URL wins"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("dispatcher-cfg-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        for (text, needle) in [
            ("shardz = 3", "unknown field"),
            ("[[events]]\nid = \"a:b\"\ncapacity = 1", "event id"),
            ("[[events]]\nid = \"ok\"\ncapacity = 0", "capacity"),
            ("log_format = \"xml\"", "log_format"),
        ] {
            let p = dir.join("bad.toml");
            std::fs::write(&p, text).expect("write");
            let e = Config::load(Some(&p), &env(&[])).expect_err(text);
            assert!(format!("{e:#}").contains(needle), "{text}: {e:#}");
        }
        let e = Config::load(None, &env(&[("DISPATCHER_SHARDS", "many")])).expect_err("bad env");
        assert!(format!("{e:#}").contains("DISPATCHER_SHARDS"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn every_count_and_duration_has_an_upper_bound() {
        let max = u64::MAX.to_string();
        for name in [
            "DISPATCH_LEASE_MS",
            "DISPATCH_TICK_MS",
            "DISPATCH_RETRY_BASE_MS",
            "DISPATCH_RETRY_MAX_MS",
            "DISPATCH_CONNECT_TIMEOUT_MS",
            "DISPATCHER_ENTRY_STREAM_MAXLEN",
            "REDIS_STREAM_MAXLEN",
            "DISPATCHER_LEASE_TTL_MS",
            "DISPATCHER_ACK_TIMEOUT_MS",
            "DISPATCHER_CLAIM_TTL_MS",
            "DISPATCHER_CONSUMER_HANDSHAKE_TIMEOUT_MS",
            "DISPATCHER_CONSUMER_MAX_HANDSHAKES",
            "DISPATCHER_HTTP_HEADER_TIMEOUT_MS",
            "DISPATCHER_HTTP_BODY_TIMEOUT_MS",
            "DISPATCHER_HTTP_IDLE_TIMEOUT_MS",
            "DISPATCHER_VISITOR_TIMEOUT_MS",
            "DISPATCHER_HTTP_MAX_CONNECTIONS",
            "DISPATCHER_HTTP_MAX_CONNECTIONS_PER_IP",
            "DISPATCHER_LIVE_MAX_STREAMS",
            "DISPATCHER_LIVE_MAX_STREAMS_PER_IP",
        ] {
            let e = Config::load(None, &env(&[(name, &max)])).expect_err(name);
            let e = format!("{e:#}");
            assert!(e.contains(name) && e.contains(" to "), "{name}: {e}");
        }
        // Narrower types: the largest value they hold is refused too.
        for (name, v) in [
            ("DISPATCH_MAX_ATTEMPTS", u32::MAX.to_string()),
            ("OUTBOX_RETENTION_DAYS", u32::MAX.to_string()),
            ("DLQ_RETENTION_DAYS", u32::MAX.to_string()),
            ("DISPATCH_BATCH_SIZE", usize::MAX.to_string()),
            ("DISPATCH_MAX_ENTRY_BYTES", usize::MAX.to_string()),
            ("DISPATCHER_DELIVERY_MAX_ATTEMPTS", u16::MAX.to_string()),
            ("DISPATCHER_CONSUMER_WINDOW", u32::MAX.to_string()),
            ("DISPATCH_MAX_ROWS_PER_SEC", "1e-300".to_owned()),
            ("DISPATCH_MAX_ROWS_PER_SEC", "1e300".to_owned()),
            ("DISPATCH_MAX_ROWS_PER_SEC", "NaN".to_owned()),
            ("DISPATCHER_JOIN_RATE_PER_IP", "1e300".to_owned()),
        ] {
            let e = Config::load(None, &env(&[(name, &v)])).expect_err(name);
            assert!(
                format!("{e:#}").contains(name) || name.contains("JOIN_RATE"),
                "{name}: {e:#}"
            );
        }
        // The ends of the ranges are accepted.
        let c = Config::load(
            None,
            &env(&[
                ("DISPATCH_LEASE_MS", "600000"),
                ("DISPATCH_MAX_ROWS_PER_SEC", "0.001"),
                ("DISPATCH_CONNECT_TIMEOUT_MS", "300000"),
                ("DISPATCHER_ACK_TIMEOUT_MS", "86400000"),
            ]),
        )
        .expect("bounds are inclusive");
        assert_eq!(c.outbox.lease_ms, 600_000);
    }
}
