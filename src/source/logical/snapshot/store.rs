//! The durable record of snapshots and backfills, `<schema>.outboxd_snapshots` (the schema of
//! `source.table`, beside `outboxd_slots`): one row per slot and table, which is at once the
//! progress of a running snapshot (the last key of the last chunk the sink holds), the control
//! channel of `outboxd backfill` (it writes a `pending` row, or `cancel` on one) and what
//! `outboxd status` shows. Created by `outboxd migrate`; nothing else needs DDL.

use crate::error::Result;
use crate::pg::{classify, quote_ident};
use chrono::{DateTime, Utc};
use tokio_postgres::Client;

/// The table's name in its schema.
pub const TABLE: &str = "outboxd_snapshots";

/// The record table, quoted, in `schema`.
pub fn record_table(schema: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(TABLE))
}

/// Creates the record table if it is missing.
pub async fn create_table(client: &Client, schema: &str) -> Result<()> {
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} (
                 slot           text        NOT NULL,
                 table_schema   text        NOT NULL,
                 table_name     text        NOT NULL,
                 kind           text        NOT NULL,
                 condition      text,
                 state          text        NOT NULL,
                 last_key       text,
                 rows_done      bigint      NOT NULL DEFAULT 0,
                 rows_estimated bigint,
                 detail         text,
                 requested_at   timestamptz NOT NULL DEFAULT now(),
                 started_at     timestamptz,
                 updated_at     timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (slot, table_schema, table_name)
             )",
            record_table(schema)
        ))
        .await
        .map_err(|err| classify("creating the snapshot records (outboxd_snapshots)", err))
}

/// Whether the record table exists.
pub async fn exists(client: &Client, schema: &str) -> Result<bool> {
    let found: Option<String> = client
        .query_one("SELECT to_regclass($1)::text", &[&record_table(schema)])
        .await
        .map_err(|err| classify("looking for the snapshot records", err))?
        .get(0);
    Ok(found.is_some())
}

/// A snapshot or backfill as recorded.
#[derive(Clone, Debug)]
pub struct Job {
    /// The table's schema.
    pub schema: String,
    /// The table's name.
    pub table: String,
    /// `initial` (the first snapshot) or `backfill` (asked for by `outboxd backfill`).
    pub kind: String,
    /// The backfill's `--where` condition, if any.
    pub condition: Option<String>,
    /// `pending`, `running`, `done`, `cancelled` or `failed`.
    pub state: String,
    /// The key values (text forms, JSON array) of the last row of the last chunk the sink holds.
    pub last_key: Option<Vec<String>>,
    /// Rows delivered so far.
    pub rows_done: i64,
    /// The table's estimated rows when the job started.
    pub rows_estimated: Option<i64>,
    /// Why it failed, if it did.
    pub detail: Option<String>,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it last moved.
    pub updated_at: DateTime<Utc>,
}

/// The columns [`Job`] reads, in order.
const COLUMNS: &str = "table_schema, table_name, kind, condition, state, last_key, rows_done, \
                       rows_estimated, detail, started_at, updated_at";

/// A row of [`COLUMNS`] as a job.
fn job(row: &tokio_postgres::Row) -> Job {
    let last_key: Option<String> = row.get(5);
    Job {
        schema: row.get(0),
        table: row.get(1),
        kind: row.get(2),
        condition: row.get(3),
        state: row.get(4),
        last_key: last_key.and_then(|text| serde_json::from_str(&text).ok()),
        rows_done: row.get(6),
        rows_estimated: row.get(7),
        detail: row.get(8),
        started_at: row.get(9),
        updated_at: row.get(10),
    }
}

/// Every job of `slot`, by table.
pub async fn list(client: &Client, schema: &str, slot: &str) -> Result<Vec<Job>> {
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM {} WHERE slot = $1 ORDER BY table_schema, table_name",
                record_table(schema)
            ),
            &[&slot],
        )
        .await
        .map_err(|err| classify("reading the snapshot records", err))?;
    Ok(rows.iter().map(job).collect())
}

/// The job to run next: a running one first (resumed after a restart), then the oldest
/// pending one.
pub async fn next(client: &Client, schema: &str, slot: &str) -> Result<Option<Job>> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM {} WHERE slot = $1 AND state IN ('running', 'pending') \
                 ORDER BY state = 'running' DESC, requested_at, table_schema, table_name LIMIT 1",
                record_table(schema)
            ),
            &[&slot],
        )
        .await
        .map_err(|err| classify("reading the snapshot records", err))?;
    Ok(row.as_ref().map(job))
}

/// Records an initial snapshot of each of `tables` that has no record yet (a table captured
/// for the first time); returns how many were added.
pub async fn add_initial(
    client: &Client,
    schema: &str,
    slot: &str,
    tables: &[(String, String)],
) -> Result<u64> {
    let mut added = 0;
    for (table_schema, table) in tables {
        added += client
            .execute(
                &format!(
                    "INSERT INTO {} (slot, table_schema, table_name, kind, state) \
                     VALUES ($1, $2, $3, 'initial', 'pending') ON CONFLICT DO NOTHING",
                    record_table(schema)
                ),
                &[&slot, table_schema, table],
            )
            .await
            .map_err(|err| classify("recording an initial snapshot", err))?;
    }
    Ok(added)
}

/// Asks for a backfill of a table (replacing a finished or running job of it); `outboxd
/// backfill` does this, and the relay picks it up within a second.
pub async fn request(
    client: &Client,
    schema: &str,
    slot: &str,
    table: (&str, &str),
    condition: Option<&str>,
) -> Result<()> {
    client
        .execute(
            &format!(
                "INSERT INTO {} (slot, table_schema, table_name, kind, condition, state) \
                 VALUES ($1, $2, $3, 'backfill', $4, 'pending') \
                 ON CONFLICT (slot, table_schema, table_name) DO UPDATE SET kind = 'backfill', \
                   condition = $4, state = 'pending', last_key = NULL, rows_done = 0, \
                   rows_estimated = NULL, detail = NULL, requested_at = now(), \
                   started_at = NULL, updated_at = now()",
                record_table(schema)
            ),
            &[&slot, &table.0, &table.1, &condition],
        )
        .await
        .map_err(|err| classify("recording the backfill request", err))?;
    Ok(())
}

/// Marks a pending or running job of a table cancelled; returns whether there was one.
pub async fn cancel(
    client: &Client,
    schema: &str,
    slot: &str,
    table: (&str, &str),
) -> Result<bool> {
    let changed = client
        .execute(
            &format!(
                "UPDATE {} SET state = 'cancelled', updated_at = now() WHERE slot = $1 AND \
                 table_schema = $2 AND table_name = $3 AND state IN ('pending', 'running')",
                record_table(schema)
            ),
            &[&slot, &table.0, &table.1],
        )
        .await
        .map_err(|err| classify("cancelling the backfill", err))?;
    Ok(changed > 0)
}

/// Marks a job started, with the table's estimated rows; returns whether it is still wanted
/// (not cancelled or replaced meanwhile).
pub async fn start(
    client: &Client,
    schema: &str,
    slot: &str,
    job: &Job,
    estimate: i64,
) -> Result<bool> {
    let changed = client
        .execute(
            &format!(
                "UPDATE {} SET state = 'running', rows_estimated = $4, \
                   started_at = coalesce(started_at, now()), updated_at = now() \
                 WHERE slot = $1 AND table_schema = $2 AND table_name = $3 \
                   AND state IN ('pending', 'running')",
                record_table(schema)
            ),
            &[&slot, &job.schema, &job.table, &estimate],
        )
        .await
        .map_err(|err| classify("starting a snapshot", err))?;
    Ok(changed > 0)
}

/// Records a chunk the sink holds: its last key, the rows it delivered, and whether it was the
/// final one. Returns whether the job is still wanted: a cancelled (or re-requested) job is not
/// written over, and the relay drops it.
pub async fn chunk_done(
    client: &Client,
    schema: &str,
    slot: &str,
    job: &Job,
    last_key: &[String],
    rows: i64,
    finished: bool,
) -> Result<bool> {
    let key = serde_json::to_string(last_key).unwrap_or_default();
    let state = if finished { "done" } else { "running" };
    let changed = client
        .execute(
            &format!(
                "UPDATE {} SET last_key = $4, rows_done = rows_done + $5, state = $6, \
                   updated_at = now() \
                 WHERE slot = $1 AND table_schema = $2 AND table_name = $3 AND state = 'running' \
                   AND kind = $7 AND condition IS NOT DISTINCT FROM $8",
                record_table(schema)
            ),
            &[
                &slot,
                &job.schema,
                &job.table,
                &key,
                &rows,
                &state,
                &job.kind,
                &job.condition,
            ],
        )
        .await
        .map_err(|err| classify("recording snapshot progress", err))?;
    Ok(changed > 0)
}

/// Whether a job is still wanted (running, not cancelled or replaced).
pub async fn wanted(client: &Client, schema: &str, slot: &str, job: &Job) -> Result<bool> {
    let row = client
        .query_opt(
            &format!(
                "SELECT 1 FROM {} WHERE slot = $1 AND table_schema = $2 AND table_name = $3 \
                   AND state = 'running' AND kind = $4 AND condition IS NOT DISTINCT FROM $5",
                record_table(schema)
            ),
            &[&slot, &job.schema, &job.table, &job.kind, &job.condition],
        )
        .await
        .map_err(|err| classify("reading the snapshot records", err))?;
    Ok(row.is_some())
}

/// Marks a job failed with the reason (a table it cannot read: no primary key, gone).
pub async fn fail(
    client: &Client,
    schema: &str,
    slot: &str,
    job: &Job,
    reason: &str,
) -> Result<()> {
    client
        .execute(
            &format!(
                "UPDATE {} SET state = 'failed', detail = $4, updated_at = now() \
                 WHERE slot = $1 AND table_schema = $2 AND table_name = $3",
                record_table(schema)
            ),
            &[&slot, &job.schema, &job.table, &reason],
        )
        .await
        .map_err(|err| classify("recording a failed snapshot", err))?;
    Ok(())
}
