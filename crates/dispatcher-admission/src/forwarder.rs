//! The forwarder (Redis store only): moves every admission from its shard's entry stream to the dispatch
//! stream, with a freshly minted token, through a consumer group; reclaims what a crashed forwarder left
//! pending; trims the entry streams behind the group and reports the group's lag.
//!
//! # Flow
//!
//! Every round issues one non-blocking `XREADGROUP … COUNT batch_size` per shard (on a single Redis the
//! shards are read by one multi-stream `XREADGROUP`; on a Cluster the shards live in different slots, so
//! each gets its own command, all in flight at once on the multiplexed connection). Never `BLOCK`: it would
//! stall every other caller of the shared connection; a round that finds nothing sleeps `poll_interval`
//! instead. For each entry read, one dispatch message is written with `XADD <dispatch> MAXLEN ~ n *` (all
//! messages of a round in one pipeline, one round trip), and only THEN the entries are acknowledged, one
//! `XACK` per shard. An entry is never acknowledged before its message was written.
//!
//! # Delivery: at least once, duplicates only by ticket id
//!
//! A forwarder that dies between writing and acknowledging (or whose acknowledgement fails) leaves its
//! entries pending; any forwarder reclaims entries idle for `reclaim_min_idle` with `XAUTOCLAIM` and forwards
//! them once more. The dispatch stream may therefore hold a message twice, and consumers must drop
//! duplicates **by the `ticket` field** (one admission = one ticket; the entry id is not unique across
//! shards). After a failed round a forwarder first re-reads its own pending entries (`XREADGROUP … 0`)
//! rather than waiting for the idle time.
//!
//! # Poison entries
//!
//! An entry whose fields are malformed (missing, non-numeric, an invalid event/ticket/user id) or whose token
//! the minter refuses (or panics on) gets no dispatch message: it is acknowledged, logged at `warn` (entry id,
//! shard, event, reason; never the ticket id) and counted in `dispatcher_forwarder_poison_total`, so it
//! cannot block the stream. Pending entries that no longer exist in the stream (removed by the entry
//! stream's `MAXLEN` cap, or `XDEL`) are acknowledged and counted in
//! `dispatcher_forwarder_pending_deleted_total`: their admission may never have been forwarded.
//!
//! # Group start id "0"
//!
//! The group is created with `XGROUP CREATE <stream> <group> 0 MKSTREAM` (`BUSYGROUP` is fine): a new
//! deployment forwards admissions made before its first forwarder started, and a group lost with a Redis
//! restarted without persistence is recreated in the same way (on `NOGROUP`). With `$` those admissions
//! would silently never be dispatched.
//!
//! # Trimming
//!
//! At most every `trim_interval` per shard, each entry stream is trimmed with `XTRIM <stream> MINID ~ <id>`,
//! where `<id>` is the oldest entry this group still needs: the smaller of the successor of the group's
//! `last-delivered-id` (entries not yet read) and the oldest pending id (read but not acknowledged), from
//! `XINFO GROUPS` and the `XPENDING` summary, read in that order in one pipeline. Entries of other groups
//! are not considered. `MINID` never removes ids at or above `<id>`, so nothing unread or unacknowledged is
//! trimmed; the Lua `MAXLEN ~` cap of the entry streams stays as the hard memory bound, and the lag gauge
//! (`pending + unread`) warns before that cap would drop unread admissions.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use parking_lot::Mutex;
use redis::{RedisError, Value};

use crate::entry;
use crate::error::{AdmissionError, Result};
use crate::model::EntryRecord;
use crate::redis_store::{RedisConn, RedisStore};
use crate::reply::{int, pairs, protocol, stream_entries, stream_replies, text};
use crate::telemetry;

/// Mints the token of one admission; `Err` carries the reason (the entry is then treated as poison).
pub type TokenMinter =
    Arc<dyn Fn(&EntryRecord) -> std::result::Result<String, String> + Send + Sync>;

/// Default consumer group of the forwarders.
pub const DEFAULT_GROUP: &str = "dispatcher-forwarder";

/// The dispatch stream's hard length bound, as a multiple of `dispatch_maxlen` (the trim target).
pub const DISPATCH_HARD_CAP_FACTOR: u64 = 10;

/// Tokens minted between two yields to the runtime.
const INLINE_MINT: usize = 16;

/// How often the run loop removes dead consumers from the group.
const CONSUMER_CLEANUP_EVERY: Duration = Duration::from_secs(60);

/// Tuning of a forwarder.
#[derive(Debug, Clone)]
pub struct ForwarderOptions {
    /// Consumer group on every entry stream. Default `dispatcher-forwarder`.
    pub group: String,
    /// This process's consumer name; must be unique among live forwarders. Default
    /// [`ForwarderOptions::default_consumer_name`].
    pub consumer: String,
    /// Key of the dispatch stream; `None` = `<prefix>:dispatch`.
    pub dispatch_stream: Option<String>,
    /// Length the dispatch stream is trimmed towards (never past what a consumer group still needs; the
    /// hard cap on `XADD` is `DISPATCH_HARD_CAP_FACTOR` times it). 0 = untrimmed. Default 1,000,000.
    pub dispatch_maxlen: u64,
    /// Most entries read per shard per round (and per `XAUTOCLAIM` call). Default 500.
    pub batch_size: usize,
    /// Sleep after a round that found no backlog. Default 5 ms.
    pub poll_interval: Duration,
    /// How often pending entries of other (crashed) consumers are reclaimed. Default 1 s.
    pub reclaim_interval: Duration,
    /// How long an entry must have been pending before it is reclaimed. Default 15 s (above
    /// [`RedisConn::RESPONSE_TIMEOUT`], so a live forwarder's slow batch is normally not taken over).
    pub reclaim_min_idle: Duration,
    /// How often each entry stream is trimmed and its lag measured. Default 1 s.
    pub trim_interval: Duration,
    /// Warn when a shard's lag reaches this fraction of the entry stream's `MAXLEN`. Default 0.8.
    pub lag_warn_ratio: f64,
    /// Consumers of the group with nothing pending and idle this long are removed (every consumer name
    /// is new per process, so the list would otherwise grow with every restart). Default 1 h.
    pub dead_consumer_idle: Duration,
    /// First retry delay after a failed round. Default 10 ms.
    pub backoff_min: Duration,
    /// Longest retry delay. Default 2 s.
    pub backoff_max: Duration,
    /// Test failpoint: a round returns an error right after writing to the dispatch stream, before
    /// `XACK` (a crash between write and acknowledge). Only with the cargo feature `failpoints`, which
    /// only tests turn on.
    #[cfg(feature = "failpoints")]
    #[doc(hidden)]
    pub stop_after_write: bool,
    /// Test failpoint: after writing a batch to the dispatch stream and before `XACK`, log
    /// `failpoint forwarder_after_write reached` at warn and hang forever (a crash test SIGKILLs the
    /// process there). Also switched on by the environment variable
    /// `DISPATCHER_FAILPOINT=forwarder_after_write`, read once in [`Forwarder::new`]. Only with the cargo
    /// feature `failpoints`: a release build has neither the option nor the variable.
    #[cfg(feature = "failpoints")]
    #[doc(hidden)]
    pub hang_after_write: bool,
}

impl ForwarderOptions {
    /// `<hostname>-<pid>-<8 random hex digits>`: unique per process, recognisable in `XINFO CONSUMERS`.
    pub fn default_consumer_name() -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_default();
        let mut host: String = host
            .trim()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            .take(64)
            .collect();
        if host.is_empty() {
            host.push_str("host");
        }
        format!(
            "{host}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        )
    }
}

impl Default for ForwarderOptions {
    fn default() -> Self {
        Self {
            group: DEFAULT_GROUP.into(),
            consumer: Self::default_consumer_name(),
            dispatch_stream: None,
            dispatch_maxlen: 1_000_000,
            batch_size: 500,
            poll_interval: Duration::from_millis(5),
            reclaim_interval: Duration::from_secs(1),
            reclaim_min_idle: Duration::from_secs(15),
            trim_interval: Duration::from_secs(1),
            lag_warn_ratio: 0.8,
            dead_consumer_idle: Duration::from_secs(3600),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(2),
            #[cfg(feature = "failpoints")]
            stop_after_write: false,
            #[cfg(feature = "failpoints")]
            hang_after_write: false,
        }
    }
}

/// What one call ([`Forwarder::run_once`], [`Forwarder::reclaim_once`]) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardStats {
    /// Admissions read or claimed (including poison and deleted entries; an entry holding a step of several
    /// admissions counts each).
    pub read: u64,
    /// Dispatch messages written.
    pub forwarded: u64,
    /// Entries taken over from another (or this) consumer's pending list by `XAUTOCLAIM`.
    pub reclaimed: u64,
    /// Poison entries acknowledged without a message.
    pub poison: u64,
    /// Pending entries found deleted from the entry stream, acknowledged.
    pub deleted: u64,
    /// Entries acknowledged (one per step, however many admissions it held).
    pub acked: u64,
    /// Some shard returned a full batch: more entries are probably waiting.
    pub backlog: bool,
}

impl std::ops::AddAssign for ForwardStats {
    fn add_assign(&mut self, o: Self) {
        self.read += o.read;
        self.forwarded += o.forwarded;
        self.reclaimed += o.reclaimed;
        self.poison += o.poison;
        self.deleted += o.deleted;
        self.acked += o.acked;
        self.backlog |= o.backlog;
    }
}

/// Running totals of a forwarder.
#[derive(Debug, Default)]
pub struct ForwarderTotals {
    /// Rounds run by [`Forwarder::run`].
    pub rounds: AtomicU64,
    /// Dispatch messages written.
    pub forwarded: AtomicU64,
    /// Entries reclaimed.
    pub reclaimed: AtomicU64,
    /// Poison entries.
    pub poison: AtomicU64,
    /// Pending entries found deleted.
    pub deleted: AtomicU64,
    /// Failed rounds.
    pub errors: AtomicU64,
}

/// The group's position on one shard's entry stream, as measured by [`Forwarder::trim_once`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLag {
    /// The shard.
    pub shard: u16,
    /// Entries read but not yet acknowledged.
    pub pending: u64,
    /// Entries not yet read by the group (Redis's `lag`; the stream length if Redis cannot tell).
    pub unread: u64,
    /// The `MINID` the stream was trimmed to (the oldest entry the group still needs).
    pub trimmed_to: String,
    /// Entries removed by this trim.
    pub trimmed: u64,
}

impl ShardLag {
    /// Entries the group has not finished: pending plus unread.
    pub fn lag(&self) -> u64 {
        self.pending + self.unread
    }
}

/// Moves admissions from the entry streams to the dispatch stream. See the module documentation.
pub struct Forwarder {
    conn: RedisConn,
    streams: Vec<String>,
    shard_of_stream: HashMap<String, u16>,
    dispatch: String,
    entry_maxlen: u64,
    multi_stream_reads: bool,
    opts: ForwarderOptions,
    minter: TokenMinter,
    state: Mutex<State>,
    totals: Arc<ForwarderTotals>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("conn", &self.conn)
            .field("dispatch", &self.dispatch)
            .field("shards", &self.streams.len())
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct State {
    /// Every shard's group is known to exist.
    groups_ready: bool,
    /// Per shard: re-read this consumer's own pending entries (`0`) before new ones (`>`).
    own_pending: Vec<bool>,
}

/// One entry as read from a stream.
enum Item {
    Record(EntryRecord),
    Poison {
        id: String,
        event: String,
        reason: String,
    },
    /// Pending, but no longer in the stream.
    Deleted(String),
}

impl Item {
    fn id(&self) -> &str {
        match self {
            Item::Record(r) => &r.entry_id,
            Item::Poison { id, .. } | Item::Deleted(id) => id,
        }
    }
}

/// The entries of one shard taken in one step.
struct ShardItems {
    shard: u16,
    items: Vec<Item>,
}

/// Minted or refused, per record.
type Minted = Vec<(u16, EntryRecord, std::result::Result<String, String>)>;

impl Forwarder {
    /// A forwarder over the entry streams of `store` (its connection, key prefix and shards).
    pub fn new(store: &RedisStore, minter: TokenMinter, opts: ForwarderOptions) -> Result<Self> {
        #[cfg(feature = "failpoints")]
        let opts = ForwarderOptions {
            hang_after_write: opts.hang_after_write
                || std::env::var("DISPATCHER_FAILPOINT").as_deref() == Ok("forwarder_after_write"),
            ..opts
        };
        let invalid = |m: &str| Err(AdmissionError::InvalidInput(m.to_owned()));
        if opts.group.is_empty() || opts.consumer.is_empty() {
            return invalid("forwarder group and consumer names must not be empty");
        }
        if opts.batch_size == 0 || opts.batch_size > 100_000 {
            return invalid("forwarder batch_size must be between 1 and 100000");
        }
        if opts.poll_interval.is_zero() || opts.backoff_min.is_zero() {
            return invalid("forwarder poll_interval and backoff_min must be positive");
        }
        if opts.backoff_max < opts.backoff_min {
            return invalid("forwarder backoff_max must not be below backoff_min");
        }
        if !(opts.lag_warn_ratio > 0.0 && opts.lag_warn_ratio <= 1.0) {
            return invalid("forwarder lag_warn_ratio must be in (0, 1]");
        }
        let store_opts = store.options();
        let dispatch = opts
            .dispatch_stream
            .clone()
            .unwrap_or_else(|| format!("{}:dispatch", store_opts.prefix));
        if dispatch.is_empty() {
            return invalid("dispatch stream key must not be empty");
        }
        let shards = store_opts.shards;
        let streams: Vec<String> = (0..shards).map(|s| store.entry_stream_key(s)).collect();
        let shard_of_stream = streams
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i as u16))
            .collect();
        let conn = store.connection();
        Ok(Self {
            multi_stream_reads: matches!(conn, RedisConn::Single(_)),
            conn,
            streams,
            shard_of_stream,
            dispatch,
            entry_maxlen: store_opts.entry_stream_maxlen,
            opts,
            minter,
            state: Mutex::new(State {
                groups_ready: false,
                own_pending: vec![false; usize::from(shards)],
            }),
            totals: Arc::new(ForwarderTotals::default()),
        })
    }

    /// Key of the dispatch stream.
    pub fn dispatch_stream(&self) -> &str {
        &self.dispatch
    }

    /// This forwarder's consumer name.
    pub fn consumer(&self) -> &str {
        &self.opts.consumer
    }

    /// The options in force.
    pub fn options(&self) -> &ForwarderOptions {
        &self.opts
    }

    /// Running totals.
    pub fn totals(&self) -> Arc<ForwarderTotals> {
        self.totals.clone()
    }

    /// One round over all shards: read new entries (or, after a failure, this consumer's own pending
    /// ones), write their dispatch messages, acknowledge them.
    pub async fn run_once(&self) -> Result<ForwardStats> {
        let r = self.run_once_inner().await;
        if r.is_err() {
            self.after_error();
        }
        r
    }

    async fn run_once_inner(&self) -> Result<ForwardStats> {
        self.ensure_groups().await?;
        let (mut batches, mut backlog, drained_own) = self.read_new().await?;
        if batches.is_empty() && drained_own {
            // Only empty own-pending lists were read: read the new entries in the same round.
            (batches, backlog, _) = self.read_new().await?;
        }
        let mut stats = self.forward(batches, false).await?;
        stats.backlog |= backlog;
        Ok(stats)
    }

    /// Claims every entry that has been pending (with any consumer of the group) for at least
    /// `reclaim_min_idle`, following the `XAUTOCLAIM` cursor to its end on every shard, and forwards the
    /// claimed entries once more. Deleted pending entries that Redis reports are acknowledged.
    pub async fn reclaim_once(&self) -> Result<ForwardStats> {
        let r = self.reclaim_once_inner().await;
        if r.is_err() {
            self.after_error();
        }
        r
    }

    async fn reclaim_once_inner(&self) -> Result<ForwardStats> {
        self.ensure_groups().await?;
        let per_shard =
            try_join_all((0..self.streams.len() as u16).map(|shard| self.reclaim_shard(shard)))
                .await?;
        let mut stats = ForwardStats::default();
        for s in per_shard {
            stats += s;
        }
        Ok(stats)
    }

    async fn reclaim_shard(&self, shard: u16) -> Result<ForwardStats> {
        let key = &self.streams[usize::from(shard)];
        let min_idle = u64::try_from(self.opts.reclaim_min_idle.as_millis()).unwrap_or(u64::MAX);
        let mut cursor = "0-0".to_owned();
        let mut stats = ForwardStats::default();
        loop {
            let mut conn = self.conn.clone();
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(key)
                .arg(&self.opts.group)
                .arg(&self.opts.consumer)
                .arg(min_idle)
                .arg(&cursor)
                .arg("COUNT")
                .arg(self.opts.batch_size)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.redis_error("xautoclaim", e))?;
            let Value::Array(parts) = reply else {
                return Err(protocol("XAUTOCLAIM reply is not an array"));
            };
            let next = parts
                .first()
                .and_then(text)
                .ok_or_else(|| protocol("XAUTOCLAIM reply without cursor"))?;
            let mut items = match parts.get(1) {
                Some(v) => decode_entries(v)?,
                None => Vec::new(),
            };
            // Redis 7.0+: ids that were pending but are gone from the stream (already dropped from the
            // pending list by Redis; acknowledging them again is harmless).
            if let Some(Value::Array(gone)) = parts.get(2) {
                items.extend(gone.iter().filter_map(text).map(Item::Deleted));
            }
            if !items.is_empty() {
                let claimed = items
                    .iter()
                    .filter(|i| !matches!(i, Item::Deleted(_)))
                    .count() as u64;
                let mut s = self
                    .forward(vec![ShardItems { shard, items }], true)
                    .await?;
                s.reclaimed = claimed;
                if claimed > 0 {
                    tracing::info!(shard, claimed, consumer = %self.opts.consumer, "reclaimed pending entries");
                    metrics::counter!(telemetry::FORWARDER_RECLAIMED_TOTAL).increment(claimed);
                    self.totals.reclaimed.fetch_add(claimed, Ordering::Relaxed);
                }
                stats += s;
            }
            if next == "0-0" || next == cursor {
                break;
            }
            cursor = next;
        }
        Ok(stats)
    }

    /// Trims every entry stream up to the oldest entry the group still needs and measures the group's
    /// lag per shard (gauge `dispatcher_forwarder_lag{shard}`; a warning when it nears the `MAXLEN` cap).
    pub async fn trim_once(&self) -> Result<Vec<ShardLag>> {
        let r = async {
            self.ensure_groups().await?;
            let lags =
                try_join_all((0..self.streams.len() as u16).map(|shard| self.trim_shard(shard)))
                    .await?;
            self.trim_dispatch().await?;
            Ok(lags)
        }
        .await;
        if r.is_err() {
            self.after_error();
        }
        r
    }

    /// Trims the dispatch stream towards `dispatch_maxlen`, never past an entry that one of its consumer
    /// groups (the delivery engine's, a shop's) has not read or acknowledged; with no group, by length.
    /// Returns the largest group lag (entries not yet acknowledged), also a gauge; a lag past
    /// `dispatch_maxlen` is warned about, since only the hard cap (`DISPATCH_HARD_CAP_FACTOR` ×) bounds
    /// the stream then.
    pub async fn trim_dispatch(&self) -> Result<u64> {
        if self.opts.dispatch_maxlen == 0 {
            return Ok(0);
        }
        let key = self.dispatch.as_str();
        let mut conn = self.conn.clone();
        let groups: Value = match redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(key)
            .query_async(&mut conn)
            .await
        {
            Ok(v) => v,
            // No dispatch stream yet: nothing to trim.
            Err(e) if e.to_string().contains("no such key") => return Ok(0),
            Err(e) => return Err(self.redis_error("xinfo", e)),
        };
        let Value::Array(groups) = groups else {
            return Err(protocol("XINFO GROUPS reply is not an array"));
        };
        if groups.is_empty() {
            let _: u64 = redis::cmd("XTRIM")
                .arg(key)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.opts.dispatch_maxlen)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.redis_error("xtrim", e))?;
            metrics::gauge!(telemetry::FORWARDER_DISPATCH_LAG).set(0.0);
            return Ok(0);
        }
        let mut needed: Option<StreamId> = None;
        let mut max_lag = 0u64;
        for g in &groups {
            let fields = pairs(g);
            let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
            let Some(name) = field("name").and_then(text) else {
                continue;
            };
            let Some(last) = field("last-delivered-id")
                .and_then(text)
                .and_then(|s| StreamId::parse(&s))
            else {
                continue;
            };
            let pending = field("pending").and_then(int).unwrap_or(0);
            let mut need = last.successor();
            if pending > 0 {
                let p: Value = redis::cmd("XPENDING")
                    .arg(key)
                    .arg(&name)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.redis_error("xpending", e))?;
                if let Value::Array(p) = p
                    && let Some(oldest) = p.get(1).and_then(text).and_then(|s| StreamId::parse(&s))
                {
                    need = need.min(oldest);
                }
            }
            needed = Some(needed.map_or(need, |n| n.min(need)));
            max_lag = max_lag.max(pending + field("lag").and_then(int).unwrap_or(0));
        }
        if let Some(needed) = needed {
            let _: u64 = redis::cmd("XTRIM")
                .arg(key)
                .arg("MINID")
                .arg("~")
                .arg(needed.to_string())
                .query_async(&mut conn)
                .await
                .map_err(|e| self.redis_error("xtrim", e))?;
        }
        metrics::gauge!(telemetry::FORWARDER_DISPATCH_LAG).set(max_lag as f64);
        if max_lag > self.opts.dispatch_maxlen {
            tracing::warn!(
                stream = key,
                lag = max_lag,
                hard_cap = self
                    .opts
                    .dispatch_maxlen
                    .saturating_mul(DISPATCH_HARD_CAP_FACTOR),
                "a consumer group of the dispatch stream lags beyond dispatch_maxlen; the hard cap will drop unread messages if it keeps falling behind"
            );
        }
        Ok(max_lag)
    }

    async fn trim_shard(&self, shard: u16) -> Result<ShardLag> {
        let key = &self.streams[usize::from(shard)];
        let mut conn = self.conn.clone();
        // One slot, one pipeline: the group's read position first, then the oldest pending entry (read in
        // this order, an entry is protected either as unread or as pending).
        let (groups, pending): (Value, Value) = redis::pipe()
            .cmd("XINFO")
            .arg("GROUPS")
            .arg(key)
            .cmd("XPENDING")
            .arg(key)
            .arg(&self.opts.group)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error("xinfo", e))?;
        let Value::Array(groups) = groups else {
            return Err(protocol("XINFO GROUPS reply is not an array"));
        };
        let mut info = None;
        for g in &groups {
            let fields = pairs(g);
            if fields
                .iter()
                .any(|(k, v)| k == "name" && text(v).as_deref() == Some(self.opts.group.as_str()))
            {
                info = Some(fields);
                break;
            }
        }
        let Some(info) = info else {
            self.state.lock().groups_ready = false;
            return Err(AdmissionError::Unavailable(format!(
                "consumer group {} missing on shard {shard}",
                self.opts.group
            )));
        };
        let field = |name: &str| info.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
        let last = field("last-delivered-id")
            .and_then(text)
            .and_then(|s| StreamId::parse(&s))
            .ok_or_else(|| protocol("XINFO GROUPS without last-delivered-id"))?;
        let pending_count = field("pending").and_then(int).unwrap_or(0);
        let lag_field = field("lag").and_then(int);
        let oldest_pending = match &pending {
            Value::Array(p) if pending_count > 0 => {
                p.get(1).and_then(text).and_then(|s| StreamId::parse(&s))
            }
            _ => None,
        };
        let mut needed = last.successor();
        if let Some(p) = oldest_pending {
            needed = needed.min(p);
        }
        let needed_s = needed.to_string();
        let trimmed: u64 = redis::cmd("XTRIM")
            .arg(key)
            .arg("MINID")
            .arg("~")
            .arg(&needed_s)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error("xtrim", e))?;
        let unread = match lag_field {
            Some(l) => l,
            // Redis cannot always tell (e.g. after XDEL); after the trim the stream holds little more
            // than what the group still needs, so its length is a close upper bound.
            None => redis::cmd("XLEN")
                .arg(key)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.redis_error("xlen", e))?,
        };
        let lag = ShardLag {
            shard,
            pending: pending_count,
            unread,
            trimmed_to: needed_s,
            trimmed,
        };
        metrics::gauge!(telemetry::FORWARDER_LAG, "shard" => shard.to_string())
            .set(lag.lag() as f64);
        if self.entry_maxlen > 0
            && lag.lag() as f64 >= self.opts.lag_warn_ratio * self.entry_maxlen as f64
        {
            tracing::warn!(
                shard,
                lag = lag.lag(),
                pending = lag.pending,
                entry_stream_maxlen = self.entry_maxlen,
                "forwarder lag nears the entry stream's MAXLEN: unread admissions will be trimmed away"
            );
        }
        if trimmed > 0 {
            tracing::debug!(shard, trimmed, min_id = %lag.trimmed_to, "entry stream trimmed");
        }
        Ok(lag)
    }

    /// Removes consumers of the group (never this one) that have nothing pending and have been idle for
    /// `dead_consumer_idle`; returns how many. Removing a consumer with nothing pending loses nothing: a
    /// live one that reads again is recreated by Redis.
    pub async fn cleanup_consumers_once(&self) -> Result<u64> {
        let idle_ms = u64::try_from(self.opts.dead_consumer_idle.as_millis()).unwrap_or(u64::MAX);
        let removed = try_join_all(self.streams.iter().map(|key| async move {
            let mut conn = self.conn.clone();
            let v: Value = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(key)
                .arg(&self.opts.group)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.redis_error("xinfo", e))?;
            let Value::Array(consumers) = v else {
                return Err(protocol("XINFO CONSUMERS reply is not an array"));
            };
            let mut removed = 0u64;
            for c in &consumers {
                let f = pairs(c);
                let get = |n: &str| f.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
                let (Some(name), Some(pending), Some(idle)) = (
                    get("name").and_then(text),
                    get("pending").and_then(int),
                    get("idle").and_then(int),
                ) else {
                    continue;
                };
                if name == self.opts.consumer || pending > 0 || idle < idle_ms {
                    continue;
                }
                let _: i64 = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(key)
                    .arg(&self.opts.group)
                    .arg(&name)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.redis_error("xgroup_delconsumer", e))?;
                tracing::info!(stream = %key, consumer = %name, idle_ms = idle, "removed idle consumer");
                removed += 1;
            }
            Ok::<_, AdmissionError>(removed)
        }))
        .await?;
        Ok(removed.into_iter().sum())
    }

    /// Runs until `shutdown` resolves, then returns once the batch in flight has been written and
    /// acknowledged. Redis errors are logged, counted and retried with capped exponential backoff.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        tracing::info!(
            consumer = %self.opts.consumer,
            group = %self.opts.group,
            dispatch_stream = %self.dispatch,
            shards = self.streams.len(),
            "forwarder started"
        );
        let mut schedule = Schedule {
            reclaim_at: Instant::now(),
            trim_at: Instant::now() + self.opts.trim_interval,
            cleanup_at: Instant::now() + CONSUMER_CLEANUP_EVERY,
        };
        let mut backoff = self.opts.backoff_min;
        let mut stopping = false;
        loop {
            let result = {
                let step = self.step(&mut schedule);
                tokio::pin!(step);
                tokio::select! {
                    r = &mut step => r,
                    () = &mut shutdown, if !stopping => {
                        stopping = true;
                        step.await
                    }
                }
            };
            self.totals.rounds.fetch_add(1, Ordering::Relaxed);
            let pause = match result {
                Ok(backlog) => {
                    backoff = self.opts.backoff_min;
                    (!backlog).then_some(self.opts.poll_interval)
                }
                Err(e) => {
                    self.totals.errors.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(telemetry::FORWARDER_ERRORS_TOTAL).increment(1);
                    let wait = backoff.mul_f64(0.75 + rand::random::<f64>() * 0.5);
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "forwarder round failed");
                    backoff = (backoff * 2).min(self.opts.backoff_max);
                    Some(wait)
                }
            };
            if stopping {
                break;
            }
            match pause {
                None => tokio::task::yield_now().await,
                Some(d) => tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(d) => {}
                },
            }
        }
        tracing::info!(consumer = %self.opts.consumer, "forwarder stopped");
    }

    /// One iteration of the loop: a reclaim pass when due, one round, then trimming when due. Returns
    /// whether there is a backlog (no pause before the next iteration).
    async fn step(&self, schedule: &mut Schedule) -> Result<bool> {
        let mut backlog = false;
        if Instant::now() >= schedule.reclaim_at {
            let s = self.reclaim_once().await?;
            schedule.reclaim_at = Instant::now() + self.opts.reclaim_interval;
            backlog |= s.backlog;
        }
        let s = self.run_once().await?;
        backlog |= s.backlog;
        if Instant::now() >= schedule.trim_at {
            self.trim_once().await?;
            schedule.trim_at = Instant::now() + self.opts.trim_interval;
        }
        if Instant::now() >= schedule.cleanup_at {
            schedule.cleanup_at = Instant::now() + CONSUMER_CLEANUP_EVERY;
            self.cleanup_consumers_once().await?;
        }
        Ok(backlog)
    }

    /// After a failure, entries may have been delivered to this consumer but not forwarded: re-read them.
    fn after_error(&self) {
        let mut st = self.state.lock();
        st.own_pending.iter_mut().for_each(|p| *p = true);
    }

    fn redis_error(&self, op: &'static str, e: RedisError) -> AdmissionError {
        metrics::counter!(telemetry::REDIS_ERRORS_TOTAL, "op" => op).increment(1);
        let text = e.to_string();
        // The group (or the whole stream) is gone, e.g. after a Redis restart without persistence.
        if e.code() == Some("NOGROUP") || text.contains("NOGROUP") || text.contains("no such key") {
            self.state.lock().groups_ready = false;
        }
        AdmissionError::redis(op, &e)
    }

    /// Creates the group on every entry stream (from id 0, creating the stream) unless known to exist.
    async fn ensure_groups(&self) -> Result<()> {
        if self.state.lock().groups_ready {
            return Ok(());
        }
        try_join_all(self.streams.iter().map(|key| async move {
            let mut conn = self.conn.clone();
            let r: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(key)
                .arg(&self.opts.group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match r {
                Ok(()) => {
                    tracing::info!(stream = %key, group = %self.opts.group, "consumer group created from id 0");
                    Ok(())
                }
                Err(e) if e.code() == Some("BUSYGROUP") || e.to_string().contains("BUSYGROUP") => {
                    Ok(())
                }
                Err(e) => Err(self.redis_error("xgroup_create", e)),
            }
        }))
        .await?;
        self.state.lock().groups_ready = true;
        Ok(())
    }

    /// Reads up to `batch_size` entries per shard; returns them, whether some shard may hold more, and
    /// whether some shard's own pending list turned out drained (it reads new entries from now on).
    async fn read_new(&self) -> Result<(Vec<ShardItems>, bool, bool)> {
        let own = self.state.lock().own_pending.clone();
        let shards = self.streams.len() as u16;
        let mut out: Vec<ShardItems> = Vec::new();
        if self.multi_stream_reads {
            let all: Vec<u16> = (0..shards).collect();
            let mut conn = self.conn.clone();
            let reply: Value = self
                .xreadgroup(&all, &own)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.redis_error("xreadgroup", e))?;
            for (key, entries) in stream_replies(reply)? {
                let Some(&shard) = self.shard_of_stream.get(&key) else {
                    return Err(protocol("XREADGROUP replied for an unknown stream"));
                };
                out.push(ShardItems {
                    shard,
                    items: decode_entries(&entries)?,
                });
            }
        } else {
            let replies = try_join_all((0..shards).map(|shard| {
                let cmd = self.xreadgroup(&[shard], &own);
                let mut conn = self.conn.clone();
                async move {
                    let reply: Value = cmd
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| self.redis_error("xreadgroup", e))?;
                    let mut items = Vec::new();
                    for (_, entries) in stream_replies(reply)? {
                        items.extend(decode_entries(&entries)?);
                    }
                    Ok::<_, AdmissionError>(ShardItems { shard, items })
                }
            }))
            .await?;
            out.extend(replies.into_iter().filter(|b| !b.items.is_empty()));
        }
        out.retain(|b| !b.items.is_empty());
        let mut backlog = false;
        let mut drained_own = false;
        {
            let mut st = self.state.lock();
            for (shard, was_own) in own.iter().enumerate() {
                let n = out
                    .iter()
                    .find(|b| usize::from(b.shard) == shard)
                    .map_or(0, |b| b.items.len());
                if *was_own && n == 0 {
                    // This consumer's own pending list is drained: back to new entries.
                    st.own_pending[shard] = false;
                    drained_own = true;
                }
                backlog |= n >= self.opts.batch_size || (*was_own && n > 0);
            }
        }
        Ok((out, backlog, drained_own))
    }

    fn xreadgroup(&self, shards: &[u16], own: &[bool]) -> redis::Cmd {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.opts.group)
            .arg(&self.opts.consumer)
            .arg("COUNT")
            .arg(self.opts.batch_size)
            .arg("STREAMS");
        for &s in shards {
            cmd.arg(&self.streams[usize::from(s)]);
        }
        for &s in shards {
            let own = own.get(usize::from(s)).copied().unwrap_or(false);
            cmd.arg(if own { "0" } else { ">" });
        }
        cmd
    }

    /// Writes one dispatch message per valid record (one pipeline), then acknowledges every item (one
    /// XACK per shard). Nothing is acknowledged unless the write succeeded.
    async fn forward(&self, batches: Vec<ShardItems>, claimed: bool) -> Result<ForwardStats> {
        let mut stats = ForwardStats::default();
        let mut acks: Vec<(u16, Vec<String>)> = Vec::with_capacity(batches.len());
        let mut records: Vec<(u16, EntryRecord)> = Vec::new();
        let mut poison: Vec<(u16, String, String, String)> = Vec::new();
        let mut deleted: Vec<(u16, String)> = Vec::new();
        for b in batches {
            stats.read += b.items.len() as u64;
            // The admissions of one step share their entry's id: acknowledge each entry once.
            let mut ids: Vec<String> = b.items.iter().map(|i| i.id().to_owned()).collect();
            ids.dedup();
            acks.push((b.shard, ids));
            for item in b.items {
                match item {
                    Item::Record(r) => records.push((b.shard, r)),
                    Item::Poison { id, event, reason } => poison.push((b.shard, id, event, reason)),
                    Item::Deleted(id) => deleted.push((b.shard, id)),
                }
            }
        }
        let minted = self.mint(records).await?;
        let mut pipe = redis::pipe();
        for (shard, rec, token) in &minted {
            match token {
                Ok(token) => {
                    let c = pipe.cmd("XADD").arg(&self.dispatch);
                    if self.opts.dispatch_maxlen > 0 {
                        // The hard memory bound only: the periodic trim keeps the stream near
                        // `dispatch_maxlen` without passing entries a consumer group has not read.
                        c.arg("MAXLEN").arg("~").arg(
                            self.opts
                                .dispatch_maxlen
                                .saturating_mul(DISPATCH_HARD_CAP_FACTOR),
                        );
                    }
                    c.arg("*")
                        .arg("ticket")
                        .arg(&rec.ticket)
                        .arg("event")
                        .arg(&rec.event)
                        .arg("user")
                        .arg(&rec.user)
                        .arg("seq")
                        .arg(rec.seq)
                        .arg("admitted_at_ms")
                        .arg(rec.admitted_at_ms)
                        .arg("expires_at_ms")
                        .arg(rec.expires_at_ms)
                        .arg("token")
                        .arg(token)
                        .arg("entry")
                        .arg(&rec.entry_id)
                        .ignore();
                }
                Err(reason) => poison.push((
                    *shard,
                    rec.entry_id.clone(),
                    rec.event.clone(),
                    format!("token minter failed: {reason}"),
                )),
            }
        }
        let written = pipe.len() as u64;
        if written > 0 {
            let mut conn = self.conn.clone();
            pipe.exec_async(&mut conn)
                .await
                .map_err(|e| self.redis_error("xadd", e))?;
            stats.forwarded = written;
            metrics::counter!(telemetry::FORWARDER_FORWARDED_TOTAL).increment(written);
            self.totals.forwarded.fetch_add(written, Ordering::Relaxed);
        }
        #[cfg(feature = "failpoints")]
        {
            if self.opts.hang_after_write && written > 0 {
                tracing::warn!(written, "failpoint forwarder_after_write reached");
                std::future::pending::<()>().await;
            }
            if self.opts.stop_after_write {
                return Err(AdmissionError::Unavailable(
                    "failpoint: stopped after writing the dispatch stream, before XACK".into(),
                ));
            }
        }
        let acked = try_join_all(acks.into_iter().filter(|(_, ids)| !ids.is_empty()).map(
            |(shard, ids)| {
                let mut conn = self.conn.clone();
                let key = &self.streams[usize::from(shard)];
                async move {
                    redis::cmd("XACK")
                        .arg(key)
                        .arg(&self.opts.group)
                        .arg(&ids)
                        .query_async::<u64>(&mut conn)
                        .await
                        .map_err(|e| self.redis_error("xack", e))
                }
            },
        ))
        .await?;
        stats.acked = acked.iter().sum();
        for (shard, id, event, reason) in &poison {
            tracing::warn!(shard = *shard, entry = %id, event = %event, reason = %reason, claimed,
                "poison entry acknowledged without a dispatch message");
        }
        for (shard, id) in &deleted {
            tracing::warn!(shard = *shard, entry = %id,
                "pending entry was deleted from the entry stream before it was acknowledged; acknowledged");
        }
        stats.poison = poison.len() as u64;
        stats.deleted = deleted.len() as u64;
        if stats.poison > 0 {
            metrics::counter!(telemetry::FORWARDER_POISON_TOTAL).increment(stats.poison);
            self.totals
                .poison
                .fetch_add(stats.poison, Ordering::Relaxed);
        }
        if stats.deleted > 0 {
            metrics::counter!(telemetry::FORWARDER_PENDING_DELETED_TOTAL).increment(stats.deleted);
            self.totals
                .deleted
                .fetch_add(stats.deleted, Ordering::Relaxed);
        }
        Ok(stats)
    }

    /// Mints a token per record; small batches inline, large ones on the blocking pool. A minter that
    /// panics refuses that record only.
    async fn mint(&self, records: Vec<(u16, EntryRecord)>) -> Result<Minted> {
        fn mint_all(minter: &TokenMinter, records: Vec<(u16, EntryRecord)>) -> Minted {
            records
                .into_iter()
                .map(|(shard, rec)| {
                    let token =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| minter(&rec)))
                            .unwrap_or_else(|_| Err("minter panicked".to_owned()));
                    (shard, rec, token)
                })
                .collect()
        }
        // Minted on this task in small chunks with a yield between them: the forwarder is background
        // work, and a burst of admissions (thousands of Ed25519 signatures) must not take the CPU from the
        // requests the same process serves (a blocking-pool thread would compete with them at the OS level).
        let mut out = Vec::with_capacity(records.len());
        let mut rest = records.into_iter().peekable();
        while rest.peek().is_some() {
            let chunk: Vec<(u16, EntryRecord)> = rest.by_ref().take(INLINE_MINT).collect();
            out.extend(mint_all(&self.minter, chunk));
            tokio::task::yield_now().await;
        }
        Ok(out)
    }
}

struct Schedule {
    reclaim_at: Instant,
    trim_at: Instant,
    cleanup_at: Instant,
}

/// A stream entry id `ms-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct StreamId {
    ms: u64,
    seq: u64,
}

impl StreamId {
    fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The smallest id greater than this one.
    fn successor(self) -> Self {
        match self.seq.checked_add(1) {
            Some(seq) => Self { ms: self.ms, seq },
            None => Self {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Decodes a list of stream entries into items: one per admission (a step's entry holds them all, sharing
/// the entry id), one poison item for an entry that does not decode, one deleted item for a pending entry
/// no longer in the stream.
fn decode_entries(v: &Value) -> Result<Vec<Item>> {
    let mut out = Vec::new();
    for e in stream_entries(v)? {
        match e.fields {
            None => out.push(Item::Deleted(e.id)),
            Some(Err(reason)) => out.push(Item::Poison {
                id: e.id,
                event: String::new(),
                reason,
            }),
            Some(Ok(fields)) => {
                for r in entry::decode(&e.id, &fields) {
                    out.push(match r {
                        Ok(rec) => Item::Record(rec),
                        Err(p) => Item::Poison {
                            id: e.id.clone(),
                            event: p.event,
                            reason: p.reason,
                        },
                    });
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_order_and_succeed() {
        let a = StreamId::parse("5-3").expect("id");
        assert_eq!(a.successor().to_string(), "5-4");
        assert_eq!(
            StreamId::parse(&format!("7-{}", u64::MAX))
                .expect("id")
                .successor()
                .to_string(),
            "8-0"
        );
        assert!(StreamId::parse("5-10").expect("id") > StreamId::parse("5-9").expect("id"));
        assert!(StreamId::parse("x").is_none());
    }
}
