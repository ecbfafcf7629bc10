//! The captured tables in the publication: which tables `source.cdc.tables` names, whether each
//! can be published safely, and the publication that carries their inserts, updates, deletes and
//! truncates (created, or extended when tables are added to the configuration).
//!
//! # Replica identity
//! Once a table is in a publication that publishes updates and deletes, PostgreSQL refuses
//! UPDATE and DELETE on it unless it has a replica identity: a primary key (identity DEFAULT),
//! a unique index (USING INDEX) or FULL. A table without one (no primary key and identity
//! DEFAULT, or identity NOTHING) is never added: that would break the application's own writes.
//! Start-up stops with the table's name and the `ALTER TABLE … REPLICA IDENTITY FULL` that fixes
//! it. A table named in `source.cdc.insert_only` is the exception: it goes to a second
//! publication that publishes inserts only (see [`super::inserts`]), so only its inserts are
//! captured and the application's UPDATE and DELETE keep working.
//!
//! # Tables created later
//! A `schema.*` entry is resolved at start-up (and `outboxd migrate`) and again on every
//! heartbeat (`source.logical.heartbeat_interval_ms`): a new table of the schema is checked and
//! added to the publication then (with `source.auto_migrate`), and its changes are captured
//! from that moment. Changes made to it between its creation and that heartbeat are not in the
//! stream. A new table without a usable identity is not added: the relay logs an error naming
//! it and the fix on every heartbeat until it is fixed.

use super::inserts;
pub use super::listing::Found;
use super::listing::{add_to, published};
use crate::config::{SourceConfig, TablePattern};
use crate::error::{Error, ErrorKind, Result};
use crate::outbox::OutboxTable;
use crate::pg::{classify, quote_ident};
use tokio_postgres::Client;

/// What the publication publishes for captured tables.
pub const PUBLISH: &str = "insert, update, delete, truncate";

/// outboxd's own tables, never captured by a `schema.*` entry: the slot records
/// (`outboxd_slots`), snapshot progress (`outboxd_snapshots`), the dead-letter store
/// (`outboxd_dead_letters`), the delivery marks (`outboxd_delivered`) and, in logical mode, the
/// outbox
/// (its inserts are outbox events).
pub fn own_tables(source: &SourceConfig) -> Vec<(String, String)> {
    let table = &source.table;
    let mut own = vec![(table.schema.clone(), "outboxd_slots".to_owned())];
    own.push((table.schema.clone(), "outboxd_snapshots".to_owned()));
    own.push((table.schema.clone(), "outboxd_dead_letters".to_owned()));
    own.push((table.schema.clone(), "outboxd_delivered".to_owned()));
    if source.mode.uses_outbox() {
        own.push((table.schema.clone(), table.name.clone()));
    }
    own
}

/// The tables the configured entries match, `source.cdc.insert_only` winning over
/// `source.cdc.tables`; an entry that matches nothing is an error that names it.
pub async fn resolve(client: &Client, source: &SourceConfig) -> Result<Vec<Found>> {
    let mut found: Vec<Found> = Vec::new();
    let lists = [
        ("source.cdc.tables", false, source.cdc.table_patterns()),
        (
            "source.cdc.insert_only",
            true,
            source.cdc.insert_only_patterns(),
        ),
    ];
    let entries = lists
        .into_iter()
        .flat_map(|(key, only, patterns)| patterns.into_iter().map(move |p| (key, only, p)));
    for (key, insert_only, pattern) in entries {
        let (schema, table) = match &pattern {
            TablePattern::Table { schema, table } => (schema.clone(), Some(table.clone())),
            TablePattern::Schema(schema) => (schema.clone(), None),
        };
        let rows = client
            .query(
                "SELECT c.relname::text, \
                    c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS ( \
                        SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)) \
                    OR (c.relreplident = 'i' AND NOT EXISTS ( \
                        SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND ($2::text IS NULL OR c.relname = $2) \
                   AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
                 ORDER BY c.relname",
                &[&schema, &table],
            )
            .await
            .map_err(|err| classify("listing the tables of source.cdc.tables", err))?;
        if rows.is_empty() {
            return Err(Error::new(
                ErrorKind::Schema,
                match &pattern {
                    TablePattern::Table { .. } => format!(
                        "{key}: table {pattern} does not exist (or is not an \
                         ordinary or partitioned table); create it or remove it from the list"
                    ),
                    TablePattern::Schema(_) => format!(
                        "{key}: \"{pattern}\" matches no table (schema \"{schema}\" \
                         is missing or has no tables); create them or remove the entry"
                    ),
                },
            ));
        }
        let own = own_tables(source);
        for row in rows {
            let item = Found {
                schema: schema.clone(),
                table: row.get(0),
                unusable_identity: row.get(1),
                insert_only,
            };
            let is_own = own.contains(&(item.schema.clone(), item.table.clone()));
            if is_own && table.is_none() {
                continue;
            }
            let same = |t: &&mut Found| t.schema == item.schema && t.table == item.table;
            match found.iter_mut().find(same) {
                Some(earlier) => earlier.insert_only |= insert_only,
                None => found.push(item),
            }
        }
    }
    Ok(found)
}

/// The error for a table PostgreSQL would refuse UPDATE and DELETE on once published.
pub fn unusable(table: &Found) -> Error {
    let quoted = table.quoted();
    Error::new(
        ErrorKind::Schema,
        format!(
            "table {quoted} has no usable replica identity (no primary key and REPLICA IDENTITY \
             DEFAULT, or NOTHING): once published, PostgreSQL would refuse its UPDATE and DELETE \
             statements, so it is not added. Fix: ALTER TABLE {quoted} REPLICA IDENTITY FULL \
             (old rows are then logged whole), or add a primary key, or ALTER TABLE {quoted} \
             REPLICA IDENTITY USING INDEX <a unique index on NOT NULL columns>; or capture its \
             inserts only: list it in source.cdc.insert_only; or remove it from \
             source.cdc.tables"
        ),
    )
}

/// Creates the publication (with the outbox, in logical mode) or adds the tables it lacks and
/// widens what it publishes. Refuses a table without usable identity, a publication that
/// carries tables outboxd does not capture, and creating a missing publication while the slot
/// exists (the slot could never use it).
pub async fn ensure(
    client: &Client,
    source: &SourceConfig,
    outbox: Option<&OutboxTable>,
    slot_exists: bool,
) -> Result<()> {
    let found = resolve(client, source).await?;
    let (only, tables): (Vec<Found>, Vec<Found>) = found.into_iter().partition(|t| t.insert_only);
    if let Some(bad) = tables.iter().find(|t| t.unusable_identity) {
        return Err(unusable(bad));
    }
    let publication = &source.logical.publication;
    let quoted_pub = quote_ident(publication);
    let Some((listed, every_operation)) = published(client, publication).await? else {
        if slot_exists {
            return Err(Error::new(
                ErrorKind::Schema,
                format!(
                    "publication {quoted_pub} does not exist but replication slot \"{}\" does: \
                     the slot could never use a new one; drop the slot (SELECT \
                     pg_drop_replication_slot('{}')) and run outboxd migrate again",
                    source.logical.slot, source.logical.slot
                ),
            ));
        }
        let mut names: Vec<String> = outbox.map(|o| o.qualified.clone()).into_iter().collect();
        names.extend(tables.iter().map(Found::quoted));
        let for_tables = match names.is_empty() {
            true => String::new(),
            false => format!("FOR TABLE {}", names.join(", ")),
        };
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {quoted_pub} {for_tables} \
                 WITH (publish = '{PUBLISH}', publish_via_partition_root = true)"
            ))
            .await
            .map_err(|err| classify("creating the publication", err))?;
        tracing::info!(%publication, tables = %names.join(", "), "publication created");
        // Created with it, even empty: made later, a slot that already exists could not
        // stream it (see `inserts`), so insert-only tables can be added at any time.
        return inserts::ensure(client, source, &only, false).await;
    };
    if let Some(moved) = only.iter().find(|t| t.listed_in(&listed)) {
        return Err(inserts::in_main_publication(source, moved));
    }
    let ours = |schema: &str, table: &str| {
        tables
            .iter()
            .any(|t| t.schema == schema && t.table == table)
            || outbox.is_some_and(|o| o.schema == schema && o.name == table)
    };
    if let Some((schema, table)) = listed.iter().find(|(s, t)| !ours(s, t)) {
        return Err(Error::new(
            ErrorKind::Schema,
            format!(
                "publication {quoted_pub} also publishes {schema}.{table}, which is not in \
                 source.cdc.tables: its changes would be decoded and dropped. Use a publication \
                 of outboxd's own (source.logical.publication), add the table to \
                 source.cdc.tables, or remove it: ALTER PUBLICATION {quoted_pub} DROP TABLE \
                 {}.{}",
                quote_ident(schema),
                quote_ident(table)
            ),
        ));
    }
    if !every_operation {
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {quoted_pub} SET \
                 (publish = '{PUBLISH}', publish_via_partition_root = true)"
            ))
            .await
            .map_err(|err| classify("widening what the publication publishes", err))?;
        tracing::info!(%publication, publish = PUBLISH, "publication now publishes every change");
    }
    add_missing(client, source, &tables, &listed).await?;
    if !source.cdc.insert_only.is_empty() {
        inserts::ensure(client, source, &only, slot_exists).await?;
    }
    Ok(())
}

/// Adds the `tables` the publication does not list; returns their names.
async fn add_missing(
    client: &Client,
    source: &SourceConfig,
    tables: &[Found],
    listed: &[(String, String)],
) -> Result<Vec<String>> {
    add_to(client, &source.logical.publication, tables, listed).await
}

/// At start-up: every configured table exists, has a usable identity and is published, and
/// the publication publishes every operation; otherwise the error says what to run.
pub async fn check(client: &Client, source: &SourceConfig) -> Result<()> {
    let found = resolve(client, source).await?;
    let (only, tables): (Vec<Found>, Vec<Found>) = found.into_iter().partition(|t| t.insert_only);
    if let Some(bad) = tables.iter().find(|t| t.unusable_identity) {
        return Err(unusable(bad));
    }
    let publication = quote_ident(&source.logical.publication);
    let fix = "run outboxd migrate (or start with source.auto_migrate = true)";
    let Some((listed, every_operation)) = published(client, &source.logical.publication).await?
    else {
        return Err(Error::new(
            ErrorKind::Schema,
            format!("publication {publication} does not exist; {fix}"),
        ));
    };
    if !every_operation {
        return Err(Error::new(
            ErrorKind::Schema,
            format!(
                "publication {publication} does not publish '{PUBLISH}' via the partition root; {fix}"
            ),
        ));
    }
    if let Some(moved) = only.iter().find(|t| t.listed_in(&listed)) {
        return Err(inserts::in_main_publication(source, moved));
    }
    if !only.is_empty() {
        inserts::check(client, source, &only).await?;
    }
    if let Some(table) = tables.iter().find(|t| !t.listed_in(&listed)) {
        return Err(Error::new(
            ErrorKind::Schema,
            format!(
                "table {} is not in publication {publication}: its changes are not in the \
                 stream; {fix}, or ALTER PUBLICATION {publication} ADD TABLE {}",
                table.quoted(),
                table.quoted()
            ),
        ));
    }
    Ok(())
}

/// On a heartbeat: adds the tables a `schema.*` entry matches that were created since, each
/// checked for a usable identity first (one without is logged, not added). Returns the names
/// added.
pub async fn add_new(client: &Client, source: &SourceConfig) -> Result<Vec<String>> {
    let found = resolve(client, source).await?;
    let (only, tables): (Vec<Found>, Vec<Found>) = found.into_iter().partition(|t| t.insert_only);
    let Some((listed, _)) = published(client, &source.logical.publication).await? else {
        return Ok(Vec::new());
    };
    let mut added = inserts::add_new(client, source, &only).await?;
    let new: Vec<Found> = tables
        .into_iter()
        .filter(|t| !t.listed_in(&listed))
        .filter(|t| match t.unusable_identity {
            true => {
                tracing::error!(error = %unusable(t), "new table not captured");
                false
            }
            false => true,
        })
        .collect();
    added.extend(add_missing(client, source, &new, &listed).await?);
    Ok(added)
}
