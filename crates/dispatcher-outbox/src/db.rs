//! The relay's SQL: connecting, partition leases and their fence, reading windows of rows, and settling
//! rows (sent, retry, dead). A [`Conn`] either prepares each statement once per connection (planning a
//! window query costs more than running it) or, in poll-only mode, sends every statement unnamed
//! (`query_typed`), keeping nothing in the session, so the relay runs behind a transaction-mode pooler.

use std::time::{Duration, SystemTime};

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::Notify;

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Client, NoTls, Row as PgRow, Statement};

use crate::error::{OutboxError, Result};
use crate::snapshot::{Snapshot, Window};

/// A connection and, unless in poll-only mode, its prepared statements.
pub struct Conn {
    client: Client,
    prepared: Option<Mutex<HashMap<String, Statement>>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("prepared", &self.prepared.is_some())
            .finish()
    }
}

impl std::ops::Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl Conn {
    /// Runs `sql`: through a statement prepared once on this connection, or unnamed.
    pub async fn q(&self, sql: &str, params: &[(&(dyn ToSql + Sync), Type)]) -> Result<Vec<PgRow>> {
        let Some(cache) = &self.prepared else {
            return Ok(self.client.query_typed(sql, params).await?);
        };
        let cached = cache.lock().ok().and_then(|c| c.get(sql).cloned());
        let stmt = match cached {
            Some(s) => s,
            None => {
                let types: Vec<Type> = params.iter().map(|p| p.1.clone()).collect();
                let s = self.client.prepare_typed(sql, &types).await?;
                if let Ok(mut c) = cache.lock() {
                    c.insert(sql.to_owned(), s.clone());
                }
                s
            }
        };
        let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.0).collect();
        Ok(self.client.query(&stmt, &values).await?)
    }
}

/// How long connecting may take altogether (TCP, startup, authentication) unless told otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to Postgres with unnamed statements only (see [`connect_with`]).
pub async fn connect(url: &str, wake: Option<std::sync::Arc<Notify>>) -> Result<Conn> {
    connect_within(url, wake, false, DEFAULT_CONNECT_TIMEOUT).await
}

/// Connects to Postgres within [`DEFAULT_CONNECT_TIMEOUT`] (see [`connect_within`]).
pub async fn connect_with(
    url: &str,
    wake: Option<std::sync::Arc<Notify>>,
    prepared: bool,
) -> Result<Conn> {
    connect_within(url, wake, prepared, DEFAULT_CONNECT_TIMEOUT).await
}

/// Connects to Postgres; `prepared` keeps prepared statements in the session (not behind a
/// transaction-mode pooler). Notifications received on the connection wake `wake` (when given). The
/// connection is driven by a spawned task that ends when the client is dropped or the server goes away.
///
/// The whole of connecting (TCP, startup, authentication) must finish within `timeout`, else
/// [`OutboxError::ConnectTimeout`]: a server that accepts the connection and never answers would
/// otherwise hold the caller forever (the URL's `connect_timeout` bounds the TCP connect only).
pub async fn connect_within(
    url: &str,
    wake: Option<std::sync::Arc<Notify>>,
    prepared: bool,
    timeout: Duration,
) -> Result<Conn> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| OutboxError::invalid(format!("bad DATABASE_URL: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5).min(timeout));
    }
    config.keepalives_idle(Duration::from_secs(30));
    config.application_name("dispatcher-outbox");
    let (client, mut connection) = tokio::time::timeout(timeout, config.connect(NoTls))
        .await
        .map_err(|_| {
            OutboxError::ConnectTimeout(format!(
                "no answer from the server within {} ms of connecting (DISPATCH_CONNECT_TIMEOUT_MS)",
                timeout.as_millis()
            ))
        })??;
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        use futures_util::StreamExt;
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(_)) => {
                    if let Some(w) = &wake {
                        w.notify_one();
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "postgres connection ended");
                    break;
                }
            }
        }
    });
    Ok(Conn {
        client,
        prepared: prepared.then(|| Mutex::new(HashMap::new())),
    })
}

/// A row read for publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub xid: u64,
    pub message_id: String,
    pub event_id: String,
    pub event_type: String,
    pub aggregate_id: String,
    pub payload: String,
    /// `occurred_at`, µs since the Unix epoch.
    pub occurred_us: i64,
    pub attempts: i32,
    pub partition: i16,
    /// Listed in `outbox_retry` (it failed before, or waits behind a row that did).
    pub parked: bool,
}

const ROW_COLUMNS: &str = "o.id, o.xid::text, o.message_id::text, o.event_id::text, o.event_type, \
     o.aggregate_id, o.payload::text, (extract(epoch from o.occurred_at) * 1000000)::int8, o.attempts, \
     o.partition";

fn parse_row(r: &PgRow, parked: bool) -> Result<OutboxRow> {
    let xid: String = r.try_get(1)?;
    Ok(OutboxRow {
        id: r.try_get(0)?,
        xid: xid
            .parse()
            .map_err(|_| OutboxError::Protocol(format!("bad xid8 {xid:?}")))?,
        message_id: r.try_get(2)?,
        event_id: r.try_get(3)?,
        event_type: r.try_get(4)?,
        aggregate_id: r.try_get(5)?,
        payload: r.try_get(6)?,
        occurred_us: r.try_get(7)?,
        attempts: r.try_get(8)?,
        partition: r.try_get(9)?,
        parked,
    })
}

async fn q(client: &Conn, sql: &str, params: &[(&(dyn ToSql + Sync), Type)]) -> Result<Vec<PgRow>> {
    Ok(client.query_typed(sql, params).await?)
}

/// The current transaction snapshot.
pub async fn current_snapshot(client: &Conn) -> Result<Snapshot> {
    let rows = q(client, "SELECT pg_current_snapshot()::text", &[]).await?;
    let text: String = rows
        .first()
        .ok_or_else(|| OutboxError::Protocol("no snapshot".into()))?
        .try_get(0)?;
    text.parse()
        .map_err(|e: crate::snapshot::BadSnapshot| OutboxError::Protocol(e.to_string()))
}

fn xids(v: &[u64]) -> Vec<String> {
    v.iter().map(u64::to_string).collect()
}

/// Where a window read continues: after row `(xid, id)`.
pub type Key = (u64, i64);

/// Window reads leave out rows listed in `outbox_retry`: the session holds those already (it loaded them
/// with [`load_parked`] or parked them itself) until a settle removes them, in the same transaction that
/// marks them sent or dead. Without this, a window read again after a crash (its checkpoint not yet
/// stored) would queue a second copy of a row waiting for its retry, which then retried on its own,
/// held its aggregate back, and was published even after the row itself went dead.
const NOT_PARKED: &str = "NOT EXISTS (SELECT 1 FROM dispatcher.outbox_retry r WHERE r.id = o.id)";

/// One page of pending rows of `partitions` from the late transactions of `window`, after `after`, in
/// `(xid, id)` order.
pub async fn read_late(
    client: &Conn,
    window: &Window,
    partitions: &[i16],
    after: Key,
    limit: i64,
) -> Result<Vec<OutboxRow>> {
    let sql = format!(
        "SELECT {ROW_COLUMNS} FROM dispatcher.outbox o
         WHERE o.xid = ANY($1::text[]::xid8[]) AND o.partition = ANY($2) AND o.status = 'pending'
           AND {NOT_PARKED}
           AND (o.xid, o.id) > ($3::text::xid8, $4)
         ORDER BY o.xid, o.id LIMIT $5"
    );
    // The row comparison never starts below the first late transaction (see `read_new`).
    let after = after.max((window.late.first().copied().unwrap_or(0), 0));
    let late = xids(&window.late);
    let after_xid = after.0.to_string();
    let rows = q(
        client,
        &sql,
        &[
            (&late, Type::TEXT_ARRAY),
            (&partitions, Type::INT2_ARRAY),
            (&after_xid, Type::TEXT),
            (&after.1, Type::INT8),
            (&limit, Type::INT8),
        ],
    )
    .await?;
    rows.iter().map(|r| parse_row(r, false)).collect()
}

/// One page of pending rows of `partitions` from the new transactions of `window`, after `after`, in
/// `(xid, id)` order: an index range scan on `(xid, id)` that starts where the last page ended.
pub async fn read_new(
    client: &Conn,
    window: &Window,
    partitions: &[i16],
    after: Key,
    limit: i64,
) -> Result<Vec<OutboxRow>> {
    let sql = format!(
        "SELECT {ROW_COLUMNS} FROM dispatcher.outbox o
         WHERE o.xid < $1::text::xid8
           AND NOT (o.xid = ANY($2::text[]::xid8[]))
           AND o.partition = ANY($3) AND o.status = 'pending'
           AND {NOT_PARKED}
           AND (o.xid, o.id) > ($4::text::xid8, $5)
         ORDER BY o.xid, o.id LIMIT $6"
    );
    // One lower bound only, the row comparison: with a second one on `xid` the btree may start from
    // the weaker of the two and walk the index from the beginning. `(xid, id) > (from, 0)` is
    // `xid >= from` (ids are positive).
    let after = after.max((window.from, 0));
    let to = window.to.to_string();
    let in_progress = xids(&window.in_progress);
    let after_xid = after.0.to_string();
    let rows = q(
        client,
        &sql,
        &[
            (&to, Type::TEXT),
            (&in_progress, Type::TEXT_ARRAY),
            (&partitions, Type::INT2_ARRAY),
            (&after_xid, Type::TEXT),
            (&after.1, Type::INT8),
            (&limit, Type::INT8),
        ],
    )
    .await?;
    rows.iter().map(|r| parse_row(r, false)).collect()
}

/// A partition this relay now holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub partition: i16,
    pub epoch: i64,
    pub checkpoint: Snapshot,
}

/// Records this relay as alive.
pub async fn heartbeat(client: &Conn, owner: &str) -> Result<()> {
    q(
        client,
        "INSERT INTO dispatcher.outbox_relay (owner, seen_at) VALUES ($1, now())
         ON CONFLICT (owner) DO UPDATE SET seen_at = now()",
        &[(&owner, Type::TEXT)],
    )
    .await?;
    Ok(())
}

/// Forgets this relay (clean stop).
pub async fn deregister(client: &Conn, owner: &str) -> Result<()> {
    q(
        client,
        "DELETE FROM dispatcher.outbox_relay WHERE owner = $1",
        &[(&owner, Type::TEXT)],
    )
    .await?;
    Ok(())
}

/// Relays alive (seen within `lease`) and partitions nobody holds.
pub async fn fair_share(client: &Conn, lease: Duration) -> Result<(i64, i64)> {
    let ms = lease.as_millis() as f64;
    let rows = q(
        client,
        "SELECT (SELECT count(*) FROM dispatcher.outbox_relay
                 WHERE seen_at > now() - $1 * interval '1 millisecond'),
                (SELECT count(*) FROM dispatcher.outbox_lease WHERE expires_at <= now())",
        &[(&ms, Type::FLOAT8)],
    )
    .await?;
    let r = rows
        .first()
        .ok_or_else(|| OutboxError::Protocol("no fair share row".into()))?;
    Ok((r.try_get(0)?, r.try_get(1)?))
}

/// Takes up to `want` partitions: those this relay held before and those whose lease expired. Each gets
/// a new epoch and the session `token` that fences every later write. Partitions this relay held beyond
/// `want` are released.
pub async fn acquire(
    client: &Conn,
    owner: &str,
    token: i64,
    want: i64,
    lease: Duration,
) -> Result<Vec<Held>> {
    let ms = lease.as_millis() as f64;
    let rows = q(
        client,
        "UPDATE dispatcher.outbox_lease l
         SET owner = $1, token = $2, epoch = l.epoch + 1,
             expires_at = now() + $3 * interval '1 millisecond', renewed_at = now()
         WHERE l.partition IN (
             SELECT partition FROM dispatcher.outbox_lease
             WHERE owner = $1 OR expires_at <= now()
             ORDER BY (owner IS NOT DISTINCT FROM $1) DESC, partition
             LIMIT $4 FOR UPDATE SKIP LOCKED)
         RETURNING l.partition, l.epoch, l.checkpoint",
        &[
            (&owner, Type::TEXT),
            (&token, Type::INT8),
            (&ms, Type::FLOAT8),
            (&want, Type::INT8),
        ],
    )
    .await?;
    q(
        client,
        "UPDATE dispatcher.outbox_lease SET owner = NULL, expires_at = '-infinity'
         WHERE owner = $1 AND token <> $2",
        &[(&owner, Type::TEXT), (&token, Type::INT8)],
    )
    .await?;
    let mut held = Vec::with_capacity(rows.len());
    for r in rows {
        let checkpoint: Option<String> = r.try_get(2)?;
        held.push(Held {
            partition: r.try_get(0)?,
            epoch: r.try_get(1)?,
            checkpoint: match checkpoint {
                Some(c) => c.parse().map_err(|e: crate::snapshot::BadSnapshot| {
                    OutboxError::Protocol(e.to_string())
                })?,
                None => Snapshot::origin(),
            },
        });
    }
    held.sort_by_key(|h| h.partition);
    Ok(held)
}

/// Extends this session's leases and stores new checkpoints (`None` = unchanged). Fails with
/// [`OutboxError::LeaseLost`] unless every partition in `checkpoints` is still this session's.
pub async fn renew(
    client: &Conn,
    owner: &str,
    token: i64,
    lease: Duration,
    checkpoints: &[(i16, Option<String>)],
) -> Result<()> {
    let ms = lease.as_millis() as f64;
    let parts: Vec<i16> = checkpoints.iter().map(|c| c.0).collect();
    let ckpts: Vec<Option<&str>> = checkpoints.iter().map(|c| c.1.as_deref()).collect();
    let rows = q(
        client,
        "UPDATE dispatcher.outbox_lease l
         SET expires_at = now() + $3 * interval '1 millisecond', renewed_at = now(),
             checkpoint = COALESCE(c.ckpt, l.checkpoint)
         FROM unnest($4::int2[], $5::text[]) AS c(part, ckpt)
         WHERE l.partition = c.part AND l.owner = $1 AND l.token = $2
         RETURNING l.partition",
        &[
            (&owner, Type::TEXT),
            (&token, Type::INT8),
            (&ms, Type::FLOAT8),
            (&parts, Type::INT2_ARRAY),
            (&ckpts, Type::TEXT_ARRAY),
        ],
    )
    .await?;
    if rows.len() != parts.len() {
        return Err(OutboxError::LeaseLost(format!(
            "{} of {} partitions were taken over",
            parts.len() - rows.len(),
            parts.len()
        )));
    }
    Ok(())
}

/// Gives up this session's partitions (clean stop), keeping their checkpoints.
pub async fn release(client: &Conn, owner: &str, token: i64) -> Result<()> {
    q(
        client,
        "UPDATE dispatcher.outbox_lease SET owner = NULL, expires_at = '-infinity'
         WHERE owner = $1 AND token = $2",
        &[(&owner, Type::TEXT), (&token, Type::INT8)],
    )
    .await?;
    Ok(())
}

/// Rows of `partitions` listed in `outbox_retry`, in `(xid, id)` order, with when each is due (`None` =
/// held behind an earlier row of its aggregate). Entries whose row is gone or no longer pending are
/// removed.
pub async fn load_parked(
    client: &Conn,
    partitions: &[i16],
) -> Result<Vec<(OutboxRow, Option<SystemTime>)>> {
    q(
        client,
        "DELETE FROM dispatcher.outbox_retry r WHERE r.partition = ANY($1) AND NOT EXISTS (
             SELECT 1 FROM dispatcher.outbox o WHERE o.id = r.id AND o.status = 'pending')",
        &[(&partitions, Type::INT2_ARRAY)],
    )
    .await?;
    let sql = format!(
        "SELECT {ROW_COLUMNS}, r.due_at FROM dispatcher.outbox_retry r
         JOIN dispatcher.outbox o ON o.id = r.id
         WHERE r.partition = ANY($1) ORDER BY o.xid, o.id"
    );
    let rows = q(client, &sql, &[(&partitions, Type::INT2_ARRAY)]).await?;
    rows.iter()
        .map(|r| Ok((parse_row(r, true)?, r.try_get::<_, Option<SystemTime>>(10)?)))
        .collect()
}

/// A row that failed: its attempt count, error and fate.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub id: i64,
    pub attempts: i32,
    pub error: String,
    /// `None` = dead.
    pub retry_at: Option<SystemTime>,
}

/// A row to list in `outbox_retry`.
#[derive(Debug, Clone, PartialEq)]
pub struct Park {
    pub id: i64,
    pub partition: i16,
    pub aggregate_id: String,
    pub xid: u64,
    pub due_at: Option<SystemTime>,
}

/// What one settle transaction writes.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Settlement {
    /// Rows in the stream, with when they were picked.
    pub sent: Vec<(i64, SystemTime)>,
    /// Rows that failed (retry or dead).
    pub failed: Vec<Failure>,
    /// Rows to (re)list in `outbox_retry`.
    pub park: Vec<Park>,
    /// Rows to remove from `outbox_retry` (settled).
    pub unpark: Vec<i64>,
}

impl Settlement {
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
            && self.failed.is_empty()
            && self.park.is_empty()
            && self.unpark.is_empty()
    }

    pub fn rows(&self) -> usize {
        self.sent.len() + self.failed.len() + self.park.len()
    }

    pub fn absorb(&mut self, other: Settlement) {
        self.sent.extend(other.sent);
        self.failed.extend(other.failed);
        self.park.extend(other.park);
        self.unpark.extend(other.unpark);
    }
}

/// Writes `s` in one transaction, fenced: it commits only while this session still holds all `held`
/// partitions (their lease rows are locked FOR SHARE, so a takeover waits for it or wins before it).
pub async fn settle(
    client: &Conn,
    owner: &str,
    token: i64,
    held: usize,
    s: &Settlement,
) -> Result<()> {
    client.batch_execute("BEGIN").await?;
    let r = settle_in(client, owner, token, held, s).await;
    match r {
        Ok(()) => client.batch_execute("COMMIT").await?,
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    }
    Ok(())
}

async fn settle_in(
    client: &Conn,
    owner: &str,
    token: i64,
    held: usize,
    s: &Settlement,
) -> Result<()> {
    let fence = client
        .q(
            "SELECT count(*) FROM (SELECT 1 FROM dispatcher.outbox_lease
                                   WHERE owner = $1 AND token = $2 FOR SHARE) f",
            &[(&owner, Type::TEXT), (&token, Type::INT8)],
        )
        .await?;
    let n: i64 = fence
        .first()
        .ok_or_else(|| OutboxError::Protocol("no fence row".into()))?
        .try_get(0)?;
    if n != held as i64 {
        return Err(OutboxError::LeaseLost(format!(
            "holds {n} of its {held} partitions"
        )));
    }
    if !s.sent.is_empty() {
        let ids: Vec<i64> = s.sent.iter().map(|x| x.0).collect();
        let picked: Vec<SystemTime> = s.sent.iter().map(|x| x.1).collect();
        client.q(
            "UPDATE dispatcher.outbox o SET status = 'sent', sent_at = now(), picked_at = u.picked,
                    next_attempt_at = NULL
             FROM unnest($1::int8[], $2::timestamptz[]) AS u(id, picked)
             WHERE o.id = u.id AND o.status = 'pending'",
            &[(&ids, Type::INT8_ARRAY), (&picked, Type::TIMESTAMPTZ_ARRAY)],
        )
        .await?;
    }
    if !s.failed.is_empty() {
        let ids: Vec<i64> = s.failed.iter().map(|f| f.id).collect();
        let attempts: Vec<i32> = s.failed.iter().map(|f| f.attempts).collect();
        let errors: Vec<&str> = s.failed.iter().map(|f| f.error.as_str()).collect();
        let due: Vec<Option<SystemTime>> = s.failed.iter().map(|f| f.retry_at).collect();
        client.q(
            "UPDATE dispatcher.outbox o
             SET attempts = u.attempts, last_error = u.err, next_attempt_at = u.due,
                 picked_at = now(), status = CASE WHEN u.due IS NULL THEN 'dead' ELSE 'pending' END
             FROM unnest($1::int8[], $2::int4[], $3::text[], $4::timestamptz[]) AS u(id, attempts, err, due)
             WHERE o.id = u.id AND o.status = 'pending'",
            &[
                (&ids, Type::INT8_ARRAY),
                (&attempts, Type::INT4_ARRAY),
                (&errors, Type::TEXT_ARRAY),
                (&due, Type::TIMESTAMPTZ_ARRAY),
            ],
        )
        .await?;
    }
    if !s.unpark.is_empty() {
        client
            .q(
                "DELETE FROM dispatcher.outbox_retry WHERE id = ANY($1)",
                &[(&s.unpark, Type::INT8_ARRAY)],
            )
            .await?;
    }
    if !s.park.is_empty() {
        let ids: Vec<i64> = s.park.iter().map(|p| p.id).collect();
        let parts: Vec<i16> = s.park.iter().map(|p| p.partition).collect();
        let aggs: Vec<&str> = s.park.iter().map(|p| p.aggregate_id.as_str()).collect();
        let xs: Vec<String> = s.park.iter().map(|p| p.xid.to_string()).collect();
        let due: Vec<Option<SystemTime>> = s.park.iter().map(|p| p.due_at).collect();
        client
            .q(
                "INSERT INTO dispatcher.outbox_retry (id, partition, aggregate_id, xid, due_at)
             SELECT id, part, agg, x::xid8, due
             FROM unnest($1::int8[], $2::int2[], $3::text[], $4::text[], $5::timestamptz[])
                  AS u(id, part, agg, x, due)
             ON CONFLICT (id) DO UPDATE SET due_at = EXCLUDED.due_at",
                &[
                    (&ids, Type::INT8_ARRAY),
                    (&parts, Type::INT2_ARRAY),
                    (&aggs, Type::TEXT_ARRAY),
                    (&xs, Type::TEXT_ARRAY),
                    (&due, Type::TIMESTAMPTZ_ARRAY),
                ],
            )
            .await?;
    }
    Ok(())
}

/// Pending rows of `partitions` not yet read by the relay (transactions that finished after `since`)
/// plus those waiting for a retry, and the oldest one's `occurred_at` (µs): the backlog, through the
/// `(xid, id)` index from the checkpoint on.
pub async fn backlog(
    client: &Conn,
    partitions: &[i16],
    since: &Snapshot,
) -> Result<(i64, Option<i64>)> {
    let xmax = since.xmax.to_string();
    let xip = xids(&since.xip);
    let rows = q(
        client,
        "SELECT count(*), (extract(epoch from min(o.occurred_at)) * 1000000)::int8 FROM (
             SELECT occurred_at FROM dispatcher.outbox
             WHERE (xid >= $1::text::xid8 OR xid = ANY($2::text[]::xid8[]))
               AND partition = ANY($3) AND status = 'pending'
             UNION ALL
             SELECT o.occurred_at FROM dispatcher.outbox_retry r JOIN dispatcher.outbox o ON o.id = r.id
             WHERE r.partition = ANY($3)) o",
        &[
            (&xmax, Type::TEXT),
            (&xip, Type::TEXT_ARRAY),
            (&partitions, Type::INT2_ARRAY),
        ],
    )
    .await?;
    let r = rows
        .first()
        .ok_or_else(|| OutboxError::Protocol("no backlog row".into()))?;
    Ok((r.try_get(0)?, r.try_get(1)?))
}
