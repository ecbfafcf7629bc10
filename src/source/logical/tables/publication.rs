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
//! it.
//!
//! # Tables created later
//! A `schema.*` entry is resolved at start-up (and `outboxd migrate`) and again on every
//! heartbeat (`source.logical.heartbeat_interval_ms`): a new table of the schema is checked and
//! added to the publication then (with `source.auto_migrate`), and its changes are captured
//! from that moment. Changes made to it between its creation and that heartbeat are not in the
//! stream. A new table without a usable identity is not added: the relay logs an error naming
//! it and the fix on every heartbeat until it is fixed.

use crate::config::{SourceConfig, TablePattern};
use crate::error::{Error, ErrorKind, Result};
use crate::outbox::OutboxTable;
use crate::pg::{classify, quote_ident};
use tokio_postgres::Client;

/// What the publication publishes for captured tables.
pub const PUBLISH: &str = "insert, update, delete, truncate";

/// A table that a `source.cdc.tables` entry names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub table: String,
    /// Whether PostgreSQL would refuse its UPDATE and DELETE once published.
    pub unusable_identity: bool,
}

impl Found {
    /// `schema.table` for SQL, each part quoted only if it needs it.
    pub fn quoted(&self) -> String {
        format!("{}.{}", sql_name(&self.schema), sql_name(&self.table))
    }
}

/// A name as SQL needs it: bare if it is a plain lower-case identifier, quoted otherwise.
fn sql_name(name: &str) -> String {
    let plain = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    match plain {
        true => name.to_owned(),
        false => quote_ident(name),
    }
}

/// outboxd's own tables, never captured by a `schema.*` entry: the slot records
/// (`outboxd_slots`) and, in logical mode, the outbox (its inserts are outbox events).
pub fn own_tables(source: &SourceConfig) -> Vec<(String, String)> {
    let table = &source.table;
    let mut own = vec![(table.schema.clone(), "outboxd_slots".to_owned())];
    if source.mode.uses_outbox() {
        own.push((table.schema.clone(), table.name.clone()));
    }
    own
}

/// The tables the configured entries match; an entry that matches nothing is an error that
/// names it.
pub async fn resolve(client: &Client, source: &SourceConfig) -> Result<Vec<Found>> {
    let mut found: Vec<Found> = Vec::new();
    for pattern in source.cdc.patterns() {
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
                        "source.cdc.tables: table {pattern} does not exist (or is not an \
                         ordinary or partitioned table); create it or remove it from the list"
                    ),
                    TablePattern::Schema(_) => format!(
                        "source.cdc.tables: \"{pattern}\" matches no table (schema \"{schema}\" \
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
            };
            let is_own = own.contains(&(item.schema.clone(), item.table.clone()));
            let skipped = is_own && table.is_none();
            if !skipped && !found.contains(&item) {
                found.push(item);
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
             REPLICA IDENTITY USING INDEX <a unique index on NOT NULL columns>; or remove it \
             from source.cdc.tables"
        ),
    )
}

/// The tables the publication lists, and whether it publishes every operation.
async fn published(
    client: &Client,
    publication: &str,
) -> Result<Option<(Vec<(String, String)>, bool)>> {
    let row = client
        .query_opt(
            "SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate AND pubviaroot, \
                    puballtables FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|err| classify("reading the publication", err))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let every_operation: bool = row.get(0);
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables \
             WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|err| classify("reading the publication's tables", err))?;
    let tables = rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(Some((tables, every_operation)))
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
    let tables = resolve(client, source).await?;
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
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {quoted_pub} FOR TABLE {} \
                 WITH (publish = '{PUBLISH}', publish_via_partition_root = true)",
                names.join(", ")
            ))
            .await
            .map_err(|err| classify("creating the publication", err))?;
        tracing::info!(%publication, tables = %names.join(", "), "publication created");
        return Ok(());
    };
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
    Ok(())
}

/// Adds the `tables` the publication does not list; returns their names.
async fn add_missing(
    client: &Client,
    source: &SourceConfig,
    tables: &[Found],
    listed: &[(String, String)],
) -> Result<Vec<String>> {
    let missing: Vec<String> = tables
        .iter()
        .filter(|t| !listed.iter().any(|(s, n)| *s == t.schema && *n == t.table))
        .map(Found::quoted)
        .collect();
    if !missing.is_empty() {
        let publication = &source.logical.publication;
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {} ADD TABLE {}",
                quote_ident(publication),
                missing.join(", ")
            ))
            .await
            .map_err(|err| classify("adding tables to the publication", err))?;
        tracing::info!(%publication, tables = %missing.join(", "), "tables added to the publication");
    }
    Ok(missing)
}

/// At start-up: every configured table exists, has a usable identity and is published, and
/// the publication publishes every operation; otherwise the error says what to run.
pub async fn check(client: &Client, source: &SourceConfig) -> Result<()> {
    let tables = resolve(client, source).await?;
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
    if let Some(table) = tables
        .iter()
        .find(|t| !listed.iter().any(|(s, n)| *s == t.schema && *n == t.table))
    {
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
    let tables = resolve(client, source).await?;
    let Some((listed, _)) = published(client, &source.logical.publication).await? else {
        return Ok(Vec::new());
    };
    let new: Vec<Found> = tables
        .into_iter()
        .filter(|t| !listed.iter().any(|(s, n)| *s == t.schema && *n == t.table))
        .filter(|t| match t.unusable_identity {
            true => {
                tracing::error!(error = %unusable(t), "new table not captured");
                false
            }
            false => true,
        })
        .collect();
    add_missing(client, source, &new, &listed).await
}
