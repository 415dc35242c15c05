//! Operations on the outbox as commands: status, replay of dead rows, pruning of old rows.

use std::time::{Duration, SystemTime};

use tokio_postgres::Client;
use tokio_postgres::types::Type;

use crate::error::{OutboxError, Result};

/// Counts by status and how far behind the relays are.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OutboxStatus {
    pub pending: i64,
    pub sent: i64,
    pub dead: i64,
    /// Pending rows waiting for a retry or behind one.
    pub retrying: i64,
    /// Age of the oldest pending row, seconds.
    pub oldest_pending_age_secs: Option<f64>,
    /// Partitions held by a live lease, by owner.
    pub leases: Vec<LeaseStatus>,
    /// Relays seen in the last minute.
    pub relays: Vec<String>,
}

/// Who holds how many partitions.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LeaseStatus {
    pub owner: String,
    pub partitions: i64,
}

/// Reads the status (one pass over the table for the counts).
pub async fn status(client: &Client) -> Result<OutboxStatus> {
    crate::schema::check(client).await?;
    let r = client
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'pending'),
                    count(*) FILTER (WHERE status = 'sent'),
                    count(*) FILTER (WHERE status = 'dead'),
                    extract(epoch from clock_timestamp() - min(occurred_at) FILTER (WHERE status = 'pending'))::float8,
                    (SELECT count(*) FROM dispatcher.outbox_retry)
             FROM dispatcher.outbox",
            &[],
        )
        .await?;
    let leases = client
        .query(
            "SELECT owner, count(*) FROM dispatcher.outbox_lease
             WHERE expires_at > now() AND owner IS NOT NULL GROUP BY owner ORDER BY owner",
            &[],
        )
        .await?
        .iter()
        .map(|r| LeaseStatus {
            owner: r.get(0),
            partitions: r.get(1),
        })
        .collect();
    let relays = client
        .query(
            "SELECT owner FROM dispatcher.outbox_relay WHERE seen_at > now() - interval '1 minute'
             ORDER BY owner",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(OutboxStatus {
        pending: r.get(0),
        sent: r.get(1),
        dead: r.get(2),
        oldest_pending_age_secs: r.get(3),
        retrying: r.get(4),
        leases,
        relays,
    })
}

/// Which dead rows to replay. Every given filter must match; with none, every dead row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayFilter {
    /// `occurred_at` at or after.
    pub since: Option<SystemTime>,
    /// `occurred_at` before.
    pub until: Option<SystemTime>,
    /// `last_error` contains this text (case-insensitive).
    pub error_contains: Option<String>,
    /// Only these ids.
    pub ids: Vec<i64>,
    /// Only this event type.
    pub event_type: Option<String>,
    /// Replay `sent` rows instead of `dead` ones (re-publish what a Redis data loss or `MAXLEN` trimming
    /// dropped).
    pub sent: bool,
    /// Count, change nothing.
    pub dry_run: bool,
}

/// Puts matching dead rows back to pending with their attempts reset. A replayed row re-enters the
/// relay's stream of new rows (it takes the replaying transaction's id), so it is published like a row
/// just written. Returns how many rows matched.
pub async fn replay(client: &mut Client, f: &ReplayFilter) -> Result<u64> {
    crate::schema::check(client).await?;
    if let (Some(a), Some(b)) = (f.since, f.until)
        && a >= b
    {
        return Err(OutboxError::invalid("--since must be before --until"));
    }
    let pattern = f.error_contains.as_ref().map(|t| {
        format!(
            "%{}%",
            t.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        )
    });
    let ids: Option<&Vec<i64>> = (!f.ids.is_empty()).then_some(&f.ids);
    let filter = "status = $6
           AND ($1::timestamptz IS NULL OR occurred_at >= $1)
           AND ($2::timestamptz IS NULL OR occurred_at < $2)
           AND ($3::text IS NULL OR last_error ILIKE $3)
           AND ($4::int8[] IS NULL OR id = ANY($4))
           AND ($5::text IS NULL OR event_type = $5)";
    let status = if f.sent { "sent" } else { "dead" };
    let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 6] = [
        (&f.since, Type::TIMESTAMPTZ),
        (&f.until, Type::TIMESTAMPTZ),
        (&pattern, Type::TEXT),
        (&ids, Type::INT8_ARRAY),
        (&f.event_type, Type::TEXT),
        (&status, Type::TEXT),
    ];
    if f.dry_run {
        let rows = client
            .query_typed(
                &format!("SELECT count(*) FROM dispatcher.outbox WHERE {filter}"),
                &params,
            )
            .await?;
        return Ok(rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0) as u64);
    }
    let tx = client.transaction().await?;
    let rows = tx
        .query_typed(
            &format!(
                "UPDATE dispatcher.outbox
                 SET status = 'pending', attempts = 0, last_error = NULL, next_attempt_at = NULL,
                     picked_at = NULL, xid = pg_current_xact_id()
                 WHERE {filter}"
            ),
            &params,
        )
        .await?;
    let _ = rows;
    let n = tx
        .query_typed(
            "SELECT count(*) FROM dispatcher.outbox WHERE xid = pg_current_xact_id()",
            &[],
        )
        .await?
        .first()
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(0);
    tx.batch_execute("NOTIFY dispatcher_outbox").await?;
    tx.commit().await?;
    Ok(n as u64)
}

/// What pruning removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneOptions {
    /// Sent rows older than this (`OUTBOX_RETENTION_DAYS`).
    pub sent_older_than: Duration,
    /// Dead rows older than this (`DLQ_RETENTION_DAYS`).
    pub dead_older_than: Duration,
    /// Rows deleted per transaction: each batch locks only its own rows, briefly.
    pub batch: i64,
    /// Count, change nothing.
    pub dry_run: bool,
}

/// How much pruning removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    pub sent: u64,
    pub dead: u64,
    pub batches: u64,
}

/// Deletes old sent and dead rows in batches of `batch`, each its own short transaction, walking the
/// table by id; `progress` is called after every batch.
pub async fn prune(
    client: &Client,
    o: &PruneOptions,
    progress: &mut (dyn FnMut(&Pruned) + Send),
) -> Result<Pruned> {
    crate::schema::check(client).await?;
    if o.batch < 1 || o.batch > 100_000 {
        return Err(OutboxError::invalid(
            "the prune batch must be 1 to 100000 rows",
        ));
    }
    let now = SystemTime::now();
    let sent_cut = now
        .checked_sub(o.sent_older_than)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let dead_cut = now
        .checked_sub(o.dead_older_than)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut done = Pruned::default();
    if o.dry_run {
        let r = client
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 'sent' AND occurred_at < $1),
                        count(*) FILTER (WHERE status = 'dead' AND occurred_at < $2)
                 FROM dispatcher.outbox",
                &[&sent_cut, &dead_cut],
            )
            .await?;
        done.sent = r.get::<_, i64>(0) as u64;
        done.dead = r.get::<_, i64>(1) as u64;
        return Ok(done);
    }
    let mut after = 0i64;
    loop {
        let rows = client
            .query(
                "WITH victims AS (
                     SELECT id FROM dispatcher.outbox
                     WHERE id > $1 AND ((status = 'sent' AND occurred_at < $2)
                                     OR (status = 'dead' AND occurred_at < $3))
                     ORDER BY id LIMIT $4)
                 DELETE FROM dispatcher.outbox o USING victims v WHERE o.id = v.id
                 RETURNING o.id, o.status",
                &[&after, &sent_cut, &dead_cut, &o.batch],
            )
            .await?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let id: i64 = r.get(0);
            after = after.max(id);
            if r.get::<_, &str>(1) == "sent" {
                done.sent += 1;
            } else {
                done.dead += 1;
            }
        }
        done.batches += 1;
        progress(&done);
    }
    client
        .execute(
            "DELETE FROM dispatcher.outbox_relay WHERE seen_at < now() - interval '1 day'",
            &[],
        )
        .await?;
    Ok(done)
}
