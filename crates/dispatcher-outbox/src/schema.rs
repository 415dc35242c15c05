//! The outbox schema: migrations shipped with the crate, applied in order under an advisory lock.

use tokio_postgres::Client;

use crate::error::{OutboxError, Result};

/// The migrations, in order: (version, name, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] =
    &[(1, "outbox", include_str!("../migrations/0001_outbox.sql"))];

/// The schema version this binary needs.
pub const SCHEMA_VERSION: i32 = 1;

/// Number of partitions rows are spread over (fixed by migration 0001).
pub const PARTITIONS: i16 = 32;

/// Advisory lock key serialising concurrent `migrate` runs.
const MIGRATE_LOCK: i64 = 7_461_120_933;

/// Applies every migration not yet applied; returns the versions applied now. Safe to run from several
/// processes at once.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS dispatcher;
         CREATE TABLE IF NOT EXISTS dispatcher.schema_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
    )
    .await?;
    let rows = tx
        .query("SELECT version FROM dispatcher.schema_migrations", &[])
        .await?;
    let done: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    if let Some(newer) = done.iter().find(|v| **v > SCHEMA_VERSION) {
        return Err(OutboxError::Schema(format!(
            "the database has outbox schema version {newer}, newer than this binary's {SCHEMA_VERSION}"
        )));
    }
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO dispatcher.schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        applied.push(*version);
    }
    tx.commit().await?;
    Ok(applied)
}

/// Fails with a clear message unless the schema is at this binary's version.
pub async fn check(client: &Client) -> Result<()> {
    let row = client
        .query_one(
            "SELECT to_regclass('dispatcher.schema_migrations') IS NOT NULL",
            &[],
        )
        .await?;
    let exists: bool = row.get(0);
    let version: Option<i32> = if exists {
        client
            .query_one("SELECT max(version) FROM dispatcher.schema_migrations", &[])
            .await?
            .get(0)
    } else {
        None
    };
    match version {
        Some(v) if v == SCHEMA_VERSION => Ok(()),
        Some(v) if v > SCHEMA_VERSION => Err(OutboxError::Schema(format!(
            "the database has outbox schema version {v}, newer than this binary's {SCHEMA_VERSION}"
        ))),
        _ => Err(OutboxError::SchemaMissing),
    }
}
