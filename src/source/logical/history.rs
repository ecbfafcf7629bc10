//! outboxd's own record of the slots it created or streamed from, in
//! `<schema>.outboxd_slots`: what lets it tell a slot that never existed (create it) from one
//! that was dropped (events written since are in no slot; an operator must opt in, as for an
//! invalidated slot).
//!
//! Recorded by `outboxd migrate` (and auto-migration) and refreshed at every start, so a slot
//! created by an older outboxd is known from its first start with this one.

use crate::error::Result;
use crate::outbox::OutboxTable;
use crate::pg::{classify, quote_ident};
use chrono::{DateTime, Utc};
use tokio_postgres::Client;

/// What outboxd recorded about a slot.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When outboxd first recorded it.
    pub first: DateTime<Utc>,
    /// When outboxd last saw it exist.
    pub last: DateTime<Utc>,
}

/// The record table, quoted.
fn record_table(table: &OutboxTable) -> String {
    format!("{}.outboxd_slots", quote_ident(&table.schema))
}

/// Creates the record table if it is missing (needs CREATE on the schema, like the
/// migrations; nothing is asked of a role once it exists).
pub async fn create_table(client: &Client, table: &OutboxTable) -> Result<()> {
    if exists(client, table).await? {
        return Ok(());
    }
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} (
                 slot     text        PRIMARY KEY,
                 outbox   text        NOT NULL,
                 first_at timestamptz NOT NULL DEFAULT now(),
                 last_at  timestamptz NOT NULL DEFAULT now()
             )",
            record_table(table)
        ))
        .await
        .map_err(|err| classify("creating the slot records (outboxd_slots)", err))
}

/// Records that `slot` exists now.
pub async fn record(client: &Client, table: &OutboxTable, slot: &str) -> Result<()> {
    client
        .execute(
            &format!(
                "INSERT INTO {} (slot, outbox) VALUES ($1, $2) \
                 ON CONFLICT (slot) DO UPDATE SET last_at = now(), outbox = EXCLUDED.outbox",
                record_table(table)
            ),
            &[&slot, &table.qualified],
        )
        .await
        .map_err(|err| classify("recording the replication slot", err))?;
    Ok(())
}

/// [`record`], for a role that may not write the records (or where they do not exist yet): a
/// failure is only logged (at WARN if `loud`), since the slot works either way; only a later
/// drop of it would go unnoticed.
pub async fn record_quietly(client: &Client, table: &OutboxTable, slot: &str, loud: bool) {
    let Err(err) = record(client, table, slot).await else {
        return;
    };
    match loud {
        true => tracing::warn!(error = %err.chain(), slot,
            "cannot record the replication slot in outboxd_slots; if it is ever dropped, \
             outboxd cannot tell and would create it again in silence"),
        false => tracing::debug!(error = %err.chain(), slot, "cannot record the replication slot"),
    }
}

/// Whether the record table exists.
async fn exists(client: &Client, table: &OutboxTable) -> Result<bool> {
    let found: Option<String> = client
        .query_one("SELECT to_regclass($1)::text", &[&record_table(table)])
        .await
        .map_err(|err| classify("looking for the slot records", err))?
        .get(0);
    Ok(found.is_some())
}

/// What outboxd recorded about `slot`, if anything.
pub async fn seen(client: &Client, table: &OutboxTable, slot: &str) -> Result<Option<Seen>> {
    let records = record_table(table);
    if !exists(client, table).await? {
        return Ok(None);
    }
    let row = client
        .query_opt(
            &format!("SELECT first_at, last_at FROM {records} WHERE slot = $1"),
            &[&slot],
        )
        .await
        .map_err(|err| classify("reading the slot records", err))?;
    Ok(row.map(|row| Seen {
        first: row.get(0),
        last: row.get(1),
    }))
}
