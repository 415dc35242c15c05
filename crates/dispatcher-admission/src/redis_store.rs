//! The Redis admission store: key layout, the function library and its invocation, reply decoding. Each
//! operation is one Lua function (sources in `lua/`, loaded as one Redis Functions library) touching the
//! keys of one shard only, so it runs unchanged on Redis Cluster.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::collections::HashMap;

use crate::error::{AdmissionError, Result};
use crate::model::{
    BulkOutcome, BulkReleased, DeletedEvent, EntryRecord, EventId, EventInfo, EventSettings,
    EventState, EventTotals, Joined, MAX_REVOCATIONS, QueueMode, Released, Revocation, Tick,
    Ticket, TicketId, TicketState, UserId,
};
use crate::script_reply::ScriptReply;
use crate::store::{
    AdmissionStore, Clock, Configured, Release, check_bulk, check_join_batch, check_live,
    join_each, lottery_number, shard_of,
};

const LIB: &str = include_str!("lua/lib.lua");

/// The operations of the library: (name, source file body).
const OPS: [(&str, &str); 12] = [
    ("configure", include_str!("lua/configure.lua")),
    ("join", include_str!("lua/join.lua")),
    ("ticket", include_str!("lua/ticket.lua")),
    ("release", include_str!("lua/release.lua")),
    ("release_many", include_str!("lua/release_many.lua")),
    ("tick", include_str!("lua/tick.lua")),
    ("event", include_str!("lua/event.lua")),
    ("live", include_str!("lua/live.lua")),
    ("revocations", include_str!("lua/revocations.lua")),
    ("delete", include_str!("lua/delete.lua")),
    ("join_many", include_str!("lua/join_many.lua")),
    ("state", include_str!("lua/state.lua")),
];

/// The Redis Functions library of this build: its source and versioned function names. The version is a
/// hash of the source, so different builds sharing one Redis never call each other's functions.
#[derive(Debug)]
struct Library {
    source: String,
    version: String,
}

impl Library {
    fn build() -> Self {
        let mut body = String::from(LIB);
        for (op, src) in OPS {
            body.push_str(&format!("\nlocal function op_{op}()\n{src}\nend\n"));
        }
        let version = format!("{:012x}", crate::store::fnv1a64(body.as_bytes()) >> 16);
        let mut source = format!("#!lua name=dsp_{version}\n{body}\n");
        for (op, _) in OPS {
            source.push_str(&format!(
                "redis.register_function('dsp_{version}_{op}', function(keys, args) bind(keys, args) return op_{op}() end)\n"
            ));
        }
        Self { source, version }
    }

    fn function(&self, op: &str) -> String {
        format!("dsp_{}_{op}", self.version)
    }
}

/// Tuning of the Redis store.
#[derive(Debug, Clone)]
pub struct RedisStoreOptions {
    /// Key prefix, so several deployments can share one Redis.
    pub prefix: String,
    /// Number of shards (fixed for the life of a deployment).
    pub shards: u16,
    /// Approximate MAXLEN of each shard's entry stream (0 = untrimmed).
    pub entry_stream_maxlen: u64,
    /// Most tickets one script call admits (bounds the time a script holds Redis).
    pub max_admit_per_call: u64,
    /// Most expiries/abandons/purges one tick handles per kind.
    pub tick_batch: u64,
    /// Where "now" comes from.
    pub clock: Clock,
}

impl Default for RedisStoreOptions {
    fn default() -> Self {
        Self {
            prefix: "dsp".into(),
            shards: 16,
            entry_stream_maxlen: 1_000_000,
            max_admit_per_call: 1_000,
            tick_batch: 1_000,
            clock: Clock::Server,
        }
    }
}

/// A connection to one Redis or to a Redis Cluster.
#[derive(Clone)]
pub enum RedisConn {
    /// A single server (reconnecting, multiplexed).
    Single(ConnectionManager),
    /// A cluster.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisConn::Single(_) => f.write_str("RedisConn::Single"),
            RedisConn::Cluster(_) => f.write_str("RedisConn::Cluster"),
        }
    }
}

impl RedisConn {
    /// How long a reply may take before the call fails as unavailable. Generous: one multiplexed
    /// connection pipelines hundreds of calls, and a bulk call may wait behind all of them.
    pub const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
    /// How long connecting may take.
    pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

    /// Connects to one server by URL (`redis://`, `rediss://`); reconnects by itself.
    pub async fn single(url: &str) -> Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| AdmissionError::invalid(format!("bad Redis URL: {e}")))?;
        // A call made while Redis is unreachable fails within about a second (two quick reconnect tries)
        // instead of waiting through the client's default retry schedule of 10+ s: callers (a join that
        // fails closed or open, the promoter's backoff) decide what to do, not the connection.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(Self::RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(Self::CONNECT_TIMEOUT))
            .set_number_of_retries(2)
            .set_min_delay(std::time::Duration::from_millis(50))
            .set_max_delay(std::time::Duration::from_millis(400));
        Ok(RedisConn::Single(
            client.get_connection_manager_with_config(config).await?,
        ))
    }

    /// Connects to a cluster through any of its nodes.
    pub async fn cluster(nodes: &[String]) -> Result<Self> {
        let client = redis::cluster::ClusterClient::builder(nodes.to_vec())
            .response_timeout(Self::RESPONSE_TIMEOUT)
            .connection_timeout(Self::CONNECT_TIMEOUT)
            .build()
            .map_err(|e| AdmissionError::invalid(format!("bad cluster node URL: {e}")))?;
        Ok(RedisConn::Cluster(client.get_async_connection().await?))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// The admission store on Redis ≥ 7.0 or Redis Cluster.
pub struct RedisStore {
    conn: RedisConn,
    opts: RedisStoreOptions,
    library: Library,
    loaded: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("conn", &self.conn)
            .field("opts", &self.opts)
            .finish()
    }
}

/// Key names of one shard and event.
struct EventKeys([String; 13]);

impl RedisStore {
    /// A store over an open connection.
    pub fn new(conn: RedisConn, opts: RedisStoreOptions) -> Result<Self> {
        if opts.shards == 0 || opts.shards > 4096 {
            return Err(AdmissionError::invalid("shards must be between 1 and 4096"));
        }
        if opts.prefix.is_empty()
            || opts.prefix.len() > 32
            || !opts
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(AdmissionError::invalid(
                "key prefix must be 1..=32 of [A-Za-z0-9._-]",
            ));
        }
        if opts.max_admit_per_call == 0 || opts.tick_batch == 0 {
            return Err(AdmissionError::invalid(
                "max_admit_per_call and tick_batch must be positive",
            ));
        }
        Ok(Self {
            conn,
            opts,
            library: Library::build(),
            loaded: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Connects to `url` (a single server) with the given options.
    pub async fn connect(url: &str, opts: RedisStoreOptions) -> Result<Self> {
        Self::new(RedisConn::single(url).await?, opts)
    }

    /// The options in force.
    pub fn options(&self) -> &RedisStoreOptions {
        &self.opts
    }

    /// A clone of the connection, for callers that read the streams directly.
    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    fn shard_tag(&self, shard: u16) -> String {
        format!("{}:{{s{shard}}}", self.opts.prefix)
    }

    /// Key of a shard's entry stream.
    pub fn entry_stream_key(&self, shard: u16) -> String {
        format!("{}:entry", self.shard_tag(shard))
    }

    fn keys(&self, event: &EventId) -> EventKeys {
        let tag = self.shard_tag(shard_of(event, self.opts.shards));
        let e = format!("{tag}:e:{}", event.as_str());
        EventKeys([
            format!("{e}:cfg"),
            format!("{e}:w"),
            format!("{e}:a"),
            format!("{e}:p"),
            format!("{e}:t"),
            format!("{e}:u"),
            format!("{e}:f"),
            format!("{tag}:active"),
            format!("{tag}:due"),
            format!("{tag}:entry"),
            format!("{tag}:events"),
            format!("{e}:rv"),
            format!("{e}:q"),
        ])
    }

    /// Loads the function library (idempotent: an existing library of the same version is kept). On a
    /// cluster the client sends it to every primary.
    pub async fn load_library(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<String> = redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg(&self.library.source)
            .query_async(&mut conn)
            .await;
        match r {
            Ok(_) => {}
            Err(e) if e.to_string().contains("already exists") => {}
            Err(e) => return Err(e.into()),
        }
        self.loaded
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// live.lua: many tickets of one event, with presence for the waiting ones when `presence`.
    async fn read_tickets(
        &self,
        event: &EventId,
        tickets: &[TicketId],
        presence: bool,
    ) -> Result<Vec<Option<Ticket>>> {
        check_live(tickets)?;
        let mut args = Vec::with_capacity(tickets.len() + 1);
        args.push(if presence { "1" } else { "0" }.to_owned());
        args.extend(tickets.iter().map(|t| t.as_str().to_owned()));
        let items = self.run("live", event, &args).await?;
        let mut r = ScriptReply::new("live", &items);
        let out = tickets
            .iter()
            .map(|_| r.opt_ticket())
            .collect::<Result<Vec<_>>>()?;
        r.finish()?;
        Ok(out)
    }

    async fn run(&self, op: &str, event: &EventId, args: &[String]) -> Result<Vec<Value>> {
        if !self.loaded.load(std::sync::atomic::Ordering::Relaxed) {
            self.load_library().await?;
        }
        let keys = self.keys(event);
        let now = self
            .opts
            .clock
            .manual_now()
            .map(|n| n.to_string())
            .unwrap_or_default();
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(self.library.function(op)).arg(keys.0.len());
        for k in &keys.0 {
            cmd.arg(k);
        }
        cmd.arg(now)
            .arg(event.as_str())
            .arg(self.opts.entry_stream_maxlen)
            .arg(self.opts.max_admit_per_call);
        for a in args {
            cmd.arg(a);
        }
        let mut conn = self.conn.clone();
        let v: Value = match cmd.query_async(&mut conn).await {
            Ok(v) => v,
            // A restarted Redis without persistence, or a new node, lacks the library: load and retry once.
            Err(e) if e.to_string().contains("Function not found") => {
                self.load_library().await?;
                cmd.query_async(&mut conn).await?
            }
            Err(e) => return Err(e.into()),
        };
        let items = match v {
            Value::Array(items) => items,
            other => {
                return Err(AdmissionError::Protocol(format!(
                    "unexpected reply {other:?}"
                )));
            }
        };
        let code = items
            .first()
            .map(as_string)
            .transpose()?
            .unwrap_or_default();
        match code.as_str() {
            "OK" => Ok(items),
            "UNKNOWN_EVENT" => Err(AdmissionError::UnknownEvent(event.to_string())),
            "UNKNOWN_TICKET" => Err(AdmissionError::UnknownTicket),
            "CLOSED" => Err(AdmissionError::EventClosed(event.to_string())),
            "REJECTED" => Err(AdmissionError::Rejected(event.to_string())),
            // join_many only: the batch must go one by one (the pre-queue).
            "PREQUEUE" => Ok(items),
            "CONFLICT" => {
                let what = items.get(1).map(as_string).transpose()?.unwrap_or_default();
                Err(conflict(&what))
            }
            other => Err(AdmissionError::Protocol(format!(
                "unknown reply code {other:?}"
            ))),
        }
    }
}

/// release_many.lua's arguments: the target state, whether to answer views, the tickets.
fn release_many_args(tickets: &[TicketId], how: Release, views: bool) -> Vec<String> {
    let mut args = Vec::with_capacity(tickets.len() + 2);
    args.push(how.code().to_owned());
    args.push(if views { "1" } else { "0" }.to_owned());
    args.extend(tickets.iter().map(|t| t.as_str().to_owned()));
    args
}

/// One ticket's outcome code in release_many.lua's reply.
fn bulk_outcome(code: &str) -> Result<BulkOutcome> {
    Ok(match code {
        "C" => BulkOutcome::Released,
        "=" => BulkOutcome::Already,
        "U" => BulkOutcome::Unknown,
        x => match x.strip_prefix('X').and_then(TicketState::from_code) {
            Some(s) => BulkOutcome::Conflict(s),
            None => return Err(AdmissionError::Protocol(format!("bad outcome {x:?}"))),
        },
    })
}

fn conflict(state_code: &str) -> AdmissionError {
    match TicketState::from_code(state_code) {
        Some(s) => AdmissionError::state_conflict(s),
        None => AdmissionError::Conflict(state_code.to_owned()),
    }
}

fn as_string(v: &Value) -> Result<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone())
            .map_err(|_| AdmissionError::Protocol("non-UTF-8 string".into())),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(i) => Ok(i.to_string()),
        Value::Okay => Ok("OK".into()),
        other => Err(AdmissionError::Protocol(format!(
            "expected string, got {other:?}"
        ))),
    }
}

/// Decodes stream entries (`XRANGE` reply, or one stream of an `XREAD` reply) into one record per
/// admission (entry.rs); an admission that does not decode is left out (the forwarder reports such poison).
fn parse_entries(v: &Value) -> Result<Vec<EntryRecord>> {
    let mut out = Vec::new();
    for e in crate::reply::stream_entries(v)? {
        let Some(Ok(fields)) = e.fields else { continue };
        for r in crate::entry::decode(&e.id, &fields) {
            match r {
                Ok(rec) => out.push(rec),
                Err(p) => {
                    tracing::debug!(entry = %e.id, reason = %p.reason, "undecodable admission skipped")
                }
            }
        }
    }
    Ok(out)
}

impl AdmissionStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn shard_count(&self) -> u16 {
        self.opts.shards
    }

    async fn now_ms(&self) -> Result<u64> {
        if let Some(n) = self.opts.clock.manual_now() {
            return Ok(n);
        }
        let mut conn = self.conn.clone();
        let (s, us): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
        Ok(s * 1000 + us / 1000)
    }

    async fn configure(&self, event: &EventId, settings: &EventSettings) -> Result<Configured> {
        settings.validate()?;
        let items = self
            .run(
                "configure",
                event,
                &[
                    settings.capacity.to_string(),
                    settings.rate_per_minute.unwrap_or(0).to_string(),
                    settings.session_ttl_ms.to_string(),
                    settings.abandon_timeout_ms.to_string(),
                    settings.state.as_str().to_string(),
                    settings.retention_ms.to_string(),
                    settings.queue_mode.as_str().to_string(),
                    if settings.fail_open { "1" } else { "0" }.to_string(),
                    settings.starts_at_ms.unwrap_or(0).to_string(),
                ],
            )
            .await?;
        let mut r = ScriptReply::new("configure", &items);
        Ok(Configured {
            created: r.flag()?,
            admitted: r.u64()?,
        })
    }

    async fn set_state(&self, event: &EventId, state: EventState) -> Result<u64> {
        let items = self
            .run("state", event, &[state.as_str().to_owned()])
            .await?;
        ScriptReply::new("state", &items).u64()
    }

    async fn event(&self, event: &EventId) -> Result<EventInfo> {
        let items = self.run("event", event, &[]).await?;
        // event.lua's order: settings, counts, mode, totals, pre-queue, start.
        let mut r = ScriptReply::new("event", &items);
        let capacity = r.u64()?;
        let rate = r.u64()?;
        let session_ttl_ms = r.u64()?;
        let abandon_timeout_ms = r.u64()?;
        let state = r.text()?;
        let retention_ms = r.u64()?;
        let (joined, waiting, admitted, finished) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        let active = r.flag()?;
        let mode = r.text()?;
        let fail_open = r.flag()?;
        let totals = EventTotals {
            admitted: r.u64()?,
            completed: r.u64()?,
            expired: r.u64()?,
            abandoned: r.u64()?,
            left: r.u64()?,
            revoked: r.u64()?,
        };
        let pre_queued = r.u64()?;
        let starts_at_ms = Some(r.u64()?).filter(|t| *t > 0);
        Ok(EventInfo {
            id: event.clone(),
            settings: EventSettings {
                capacity,
                rate_per_minute: (rate > 0).then_some(rate),
                session_ttl_ms,
                abandon_timeout_ms,
                state: EventState::parse(&state)
                    .ok_or_else(|| AdmissionError::Protocol(format!("bad state {state:?}")))?,
                retention_ms,
                queue_mode: QueueMode::parse(&mode)
                    .ok_or_else(|| AdmissionError::Protocol(format!("bad queue mode {mode:?}")))?,
                fail_open,
                starts_at_ms,
            },
            totals,
            joined,
            waiting,
            admitted,
            finished,
            active,
            pre_queued,
        })
    }

    async fn join(&self, event: &EventId, user: Option<&UserId>) -> Result<Joined> {
        let id = TicketId::generate();
        let items = self
            .run(
                "join",
                event,
                &[
                    id.as_str().to_owned(),
                    user.map(|u| u.as_str().to_owned()).unwrap_or_default(),
                    lottery_number().to_string(),
                ],
            )
            .await?;
        let mut r = ScriptReply::new("join", &items);
        Ok(Joined {
            created: r.flag()?,
            ticket: r.ticket()?,
        })
    }

    async fn join_many(
        &self,
        event: &EventId,
        users: &[Option<UserId>],
    ) -> Result<Vec<Result<Joined>>> {
        check_join_batch(users)?;
        let ids: Vec<TicketId> = users.iter().map(|_| TicketId::generate()).collect();
        let mut args = Vec::with_capacity(users.len() * 2);
        for (id, u) in ids.iter().zip(users) {
            args.push(id.as_str().to_owned());
            args.push(
                u.as_ref()
                    .map(|u| u.as_str().to_owned())
                    .unwrap_or_default(),
            );
        }
        let items = self.run("join_many", event, &args).await?;
        if items.first().map(as_string).transpose()?.as_deref() == Some("PREQUEUE") {
            return Ok(join_each(self, event, users).await);
        }
        let mut r = ScriptReply::new("join_many", &items);
        let now = r.u64()?;
        let expires = r.u64()?;
        let mut out = Vec::with_capacity(users.len());
        while !r.is_done() {
            let k = out.len();
            match r.text()?.as_str() {
                "N" => {
                    let (Some(id), Some(user)) = (ids.get(k), users.get(k)) else {
                        return Err(AdmissionError::Protocol("join_many reply too long".into()));
                    };
                    let seq = r.u64()?;
                    let rank = r.i64()?;
                    let admitted = rank < 0;
                    out.push(Ok(Joined {
                        created: true,
                        ticket: Ticket {
                            id: id.clone(),
                            seq,
                            state: if admitted {
                                TicketState::Admitted
                            } else {
                                TicketState::Waiting
                            },
                            user: user.clone(),
                            joined_at_ms: now,
                            admitted_at_ms: admitted.then_some(now),
                            expires_at_ms: admitted.then_some(expires),
                            ended_at_ms: None,
                            ahead: (!admitted).then_some(rank as u64),
                        },
                    }));
                }
                "E" => out.push(Ok(Joined {
                    created: false,
                    ticket: r.ticket()?,
                })),
                "X" => out.push(Err(AdmissionError::Rejected(event.to_string()))),
                other => {
                    return Err(AdmissionError::Protocol(format!(
                        "bad join_many outcome {other:?}"
                    )));
                }
            }
        }
        if out.len() != users.len() {
            return Err(AdmissionError::Protocol("join_many reply length".into()));
        }
        Ok(out)
    }

    async fn ticket(&self, event: &EventId, ticket: &TicketId) -> Result<Ticket> {
        let items = self
            .run("ticket", event, &[ticket.as_str().to_owned(), "0".into()])
            .await?;
        ScriptReply::new("ticket", &items).ticket()
    }

    async fn heartbeat(&self, event: &EventId, ticket: &TicketId) -> Result<Ticket> {
        let items = self
            .run("ticket", event, &[ticket.as_str().to_owned(), "1".into()])
            .await?;
        ScriptReply::new("heartbeat", &items).ticket()
    }

    async fn release(&self, event: &EventId, ticket: &TicketId, how: Release) -> Result<Released> {
        let items = self
            .run(
                "release",
                event,
                &[ticket.as_str().to_owned(), how.code().to_owned()],
            )
            .await?;
        let mut r = ScriptReply::new("release", &items);
        Ok(Released {
            changed: r.flag()?,
            admitted_next: r.u64()?,
            ticket: r.ticket()?,
        })
    }

    async fn release_many(
        &self,
        event: &EventId,
        tickets: &[TicketId],
        how: Release,
    ) -> Result<BulkReleased> {
        check_bulk(tickets)?;
        let items = self
            .run(
                "release_many",
                event,
                &release_many_args(tickets, how, false),
            )
            .await?;
        let mut r = ScriptReply::new("release_many", &items);
        let changed = r.u64()?;
        let admitted_next = r.u64()?;
        let outcomes = tickets
            .iter()
            .map(|_| bulk_outcome(&r.text()?))
            .collect::<Result<Vec<_>>>()?;
        r.finish()?;
        Ok(BulkReleased {
            changed,
            admitted_next,
            outcomes,
        })
    }

    async fn release_each(
        &self,
        event: &EventId,
        tickets: &[TicketId],
        how: Release,
    ) -> Result<Vec<Result<Released>>> {
        check_bulk(tickets)?;
        let items = self
            .run(
                "release_many",
                event,
                &release_many_args(tickets, how, true),
            )
            .await?;
        let mut r = ScriptReply::new("release_many", &items);
        let _changed = r.u64()?;
        let admitted = r.u64()?;
        let outcomes = tickets
            .iter()
            .map(|_| bulk_outcome(&r.text()?))
            .collect::<Result<Vec<_>>>()?;
        let views = tickets
            .iter()
            .map(|_| r.opt_ticket())
            .collect::<Result<Vec<_>>>()?;
        r.finish()?;
        Ok(crate::store::released_each(outcomes, views, admitted))
    }

    async fn promote(&self, event: &EventId) -> Result<u64> {
        let items = self
            .run(
                "tick",
                event,
                &[self.opts.tick_batch.to_string(), "1".into()],
            )
            .await?;
        let mut r = ScriptReply::new("tick", &items);
        let (_expired, _abandoned) = (r.u64()?, r.u64()?);
        r.u64()
    }

    async fn tick(&self, event: &EventId) -> Result<Tick> {
        let items = self
            .run(
                "tick",
                event,
                &[self.opts.tick_batch.to_string(), "0".into()],
            )
            .await?;
        let mut r = ScriptReply::new("tick", &items);
        Ok(Tick {
            expired: r.u64()?,
            abandoned: r.u64()?,
            admitted: r.u64()?,
            purged: r.u64()?,
            orphaned: r.u64()?,
        })
    }

    async fn due_events(
        &self,
        shard: u16,
        now_ms: u64,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<EventId>> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(format!("{}:due", self.shard_tag(shard)))
            .arg("-inf")
            .arg(now_ms)
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(offset)
            .arg(limit)
            .query_async(&mut conn)
            .await?;
        Ok(ids
            .into_iter()
            .filter_map(|s| EventId::new(s).ok())
            .collect())
    }

    async fn next_due(&self) -> Result<Option<u64>> {
        // One command per shard (on a cluster the shards live on different nodes), all in flight at once.
        let heads = futures_util::future::try_join_all((0..self.opts.shards).map(|shard| {
            let mut conn = self.conn.clone();
            let key = format!("{}:due", self.shard_tag(shard));
            async move {
                redis::cmd("ZRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES")
                    .query_async::<Vec<(String, f64)>>(&mut conn)
                    .await
            }
        }))
        .await?;
        Ok(heads
            .iter()
            .filter_map(|v| v.first().map(|(_, score)| *score as u64))
            .min())
    }

    async fn active_events(&self, shard: u16) -> Result<Vec<EventId>> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{}:active", self.shard_tag(shard)))
            .query_async(&mut conn)
            .await?;
        let mut out: Vec<EventId> = ids
            .into_iter()
            .filter_map(|s| EventId::new(s).ok())
            .collect();
        out.sort();
        Ok(out)
    }

    async fn events(&self, shard: u16) -> Result<Vec<EventId>> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{}:events", self.shard_tag(shard)))
            .query_async(&mut conn)
            .await?;
        let mut out: Vec<EventId> = ids
            .into_iter()
            .filter_map(|s| EventId::new(s).ok())
            .collect();
        out.sort();
        Ok(out)
    }

    async fn entry_records(
        &self,
        shard: u16,
        after: &str,
        count: usize,
    ) -> Result<Vec<EntryRecord>> {
        let mut conn = self.conn.clone();
        let start = if after == "0" || after.is_empty() {
            "-".to_owned()
        } else {
            format!("({after}")
        };
        let v: Value = redis::cmd("XRANGE")
            .arg(self.entry_stream_key(shard))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await?;
        parse_entries(&v)
    }

    async fn live(&self, event: &EventId, tickets: &[TicketId]) -> Result<Vec<Option<Ticket>>> {
        self.read_tickets(event, tickets, true).await
    }

    async fn read_many(
        &self,
        event: &EventId,
        tickets: &[TicketId],
    ) -> Result<Vec<Option<Ticket>>> {
        self.read_tickets(event, tickets, false).await
    }

    async fn entry_records_many(
        &self,
        cursors: &[(u16, String)],
        count: usize,
    ) -> Result<Vec<Vec<EntryRecord>>> {
        if cursors.is_empty() {
            return Ok(Vec::new());
        }
        if matches!(self.conn, RedisConn::Cluster(_)) {
            // Streams of different shards live in different slots: one read per shard, all in flight.
            return futures_util::future::try_join_all(
                cursors
                    .iter()
                    .map(|(shard, after)| self.entry_records(*shard, after, count)),
            )
            .await;
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(count).arg("STREAMS");
        for (shard, _) in cursors {
            cmd.arg(self.entry_stream_key(*shard));
        }
        for (_, after) in cursors {
            cmd.arg(if after.is_empty() {
                "0-0"
            } else {
                after.as_str()
            });
        }
        let mut conn = self.conn.clone();
        let v: Value = cmd.query_async(&mut conn).await?;
        let mut by_key: HashMap<String, Vec<EntryRecord>> = HashMap::new();
        for (key, entries) in crate::reply::stream_replies(v)? {
            by_key.insert(key, parse_entries(&entries)?);
        }
        Ok(cursors
            .iter()
            .map(|(shard, _)| {
                by_key
                    .remove(&self.entry_stream_key(*shard))
                    .unwrap_or_default()
            })
            .collect())
    }

    async fn revocations(&self, event: &EventId) -> Result<Vec<Revocation>> {
        let items = self
            .run("revocations", event, &[MAX_REVOCATIONS.to_string()])
            .await?;
        let mut r = ScriptReply::new("revocations", &items);
        let mut out = Vec::new();
        while !r.is_done() {
            out.push(Revocation {
                ticket: r.text()?,
                expires_at_ms: r.u64()?,
            });
        }
        Ok(out)
    }

    async fn delete_event(&self, event: &EventId, force: bool) -> Result<DeletedEvent> {
        let items = self
            .run("delete", event, &[if force { "1" } else { "0" }.to_owned()])
            .await?;
        Ok(DeletedEvent {
            event: event.to_string(),
            tickets: ScriptReply::new("delete", &items).u64()?,
        })
    }

    async fn last_entry_id(&self, shard: u16) -> Result<String> {
        let mut conn = self.conn.clone();
        let v: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
            .arg(self.entry_stream_key(shard))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        Ok(v.into_iter()
            .next()
            .map(|(id, _)| id)
            .unwrap_or_else(|| "0-0".to_owned()))
    }

    async fn changed(&self) {
        std::future::pending::<()>().await
    }
}
