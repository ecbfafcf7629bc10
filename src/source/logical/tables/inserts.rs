//! The publication of the insert-only tables (`source.cdc.insert_only`):
//! `<source.logical.publication>_inserts`, publishing inserts and nothing else.
//!
//! A table without a usable replica identity cannot be in a publication that publishes updates
//! or deletes: PostgreSQL would refuse the application's UPDATE and DELETE on it. In a
//! publication that publishes only inserts it can, and the stream is started with both
//! publications (`publication_names` takes a list), so one slot carries every change of the
//! captured tables and the inserts of these.
//!
//! # Created with the main publication
//! PostgreSQL (before 18) decodes a slot's WAL with the catalog of its time and stops with
//! "publication does not exist" for a publication created after the slot's position. So this
//! publication is created together with the main one, even while empty, and tables are added
//! to it later as the configuration names them. If the slot exists and this publication does
//! not (made by an outboxd without insert-only capture), the error says how to get there.

use super::listing::{Found, add_to, published};
use crate::config::{CdcConfig, SourceConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::pg::{classify, quote_ident};
use tokio_postgres::Client;

/// What the insert-only publication publishes.
pub const PUBLISH: &str = "insert";

/// The insert-only publication's name.
pub fn name(source: &SourceConfig) -> String {
    CdcConfig::inserts_publication(&source.logical.publication)
}

/// Whether it publishes inserts only, via the partition root; the tables it lists.
async fn state(client: &Client, name: &str) -> Result<Option<(bool, Vec<(String, String)>)>> {
    let row = client
        .query_opt(
            "SELECT pubinsert AND NOT pubupdate AND NOT pubdelete AND NOT pubtruncate \
                    AND pubviaroot \
             FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|err| classify("reading the insert-only publication", err))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let listed = published(client, name).await?.unwrap_or_default().0;
    Ok(Some((row.get(0), listed)))
}

/// Creates the publication (with `tables`) or narrows what it publishes to inserts and adds the
/// tables it lacks. Refuses a table it lists that is not insert-only, and creating it while
/// the slot exists (see the module docs).
pub async fn ensure(
    client: &Client,
    source: &SourceConfig,
    tables: &[Found],
    slot_exists: bool,
) -> Result<()> {
    let name = name(source);
    let quoted = quote_ident(&name);
    let Some((inserts_only, listed)) = state(client, &name).await? else {
        if slot_exists {
            return Err(missing_under_slot(source));
        }
        let names: Vec<String> = tables.iter().map(Found::quoted).collect();
        let for_tables = match names.is_empty() {
            true => String::new(),
            false => format!("FOR TABLE {}", names.join(", ")),
        };
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {quoted} {for_tables} \
                 WITH (publish = '{PUBLISH}', publish_via_partition_root = true)"
            ))
            .await
            .map_err(|err| classify("creating the insert-only publication", err))?;
        tracing::info!(publication = %name, tables = %names.join(", "), "publication created");
        return Ok(());
    };
    if let Some((schema, table)) = listed
        .iter()
        .find(|(s, t)| !tables.iter().any(|f| f.schema == *s && f.table == *t))
    {
        return Err(Error::new(
            ErrorKind::Schema,
            format!(
                "publication {quoted} also publishes the inserts of {schema}.{table}, which is \
                 not in source.cdc.insert_only: they would be decoded and dropped. Add it to \
                 source.cdc.insert_only, or remove it: ALTER PUBLICATION {quoted} DROP TABLE \
                 {}.{}",
                quote_ident(schema),
                quote_ident(table)
            ),
        ));
    }
    if !inserts_only {
        // Narrowing is always safe: publishing more would break the tables' UPDATE and DELETE.
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {quoted} SET \
                 (publish = '{PUBLISH}', publish_via_partition_root = true)"
            ))
            .await
            .map_err(|err| classify("narrowing the insert-only publication", err))?;
        tracing::info!(publication = %name, "publication now publishes inserts only");
    }
    add_to(client, &name, tables, &listed).await?;
    Ok(())
}

/// At start-up: the publication exists, publishes inserts only and lists every insert-only
/// table; otherwise the error says what to run.
pub async fn check(client: &Client, source: &SourceConfig, tables: &[Found]) -> Result<()> {
    let name = name(source);
    let quoted = quote_ident(&name);
    let fix = "run outboxd migrate (or start with source.auto_migrate = true)";
    let Some((inserts_only, listed)) = state(client, &name).await? else {
        return Err(Error::new(
            ErrorKind::Schema,
            format!(
                "publication {quoted} (the insert-only tables of source.cdc.insert_only) does \
                 not exist; {fix}"
            ),
        ));
    };
    if !inserts_only {
        return Err(Error::new(
            ErrorKind::Schema,
            format!(
                "publication {quoted} must publish inserts only, via the partition root (more \
                 would make PostgreSQL refuse UPDATE and DELETE on its tables); {fix}, or \
                 ALTER PUBLICATION {quoted} SET (publish = 'insert', \
                 publish_via_partition_root = true)"
            ),
        ));
    }
    if let Some(table) = tables.iter().find(|t| !t.listed_in(&listed)) {
        return Err(Error::new(
            ErrorKind::Schema,
            format!(
                "table {} is not in publication {quoted}: its inserts are not in the stream; \
                 {fix}, or ALTER PUBLICATION {quoted} ADD TABLE {}",
                table.quoted(),
                table.quoted()
            ),
        ));
    }
    Ok(())
}

/// On a heartbeat: adds the insert-only `tables` the publication does not list yet (created
/// since in a `schema.*` entry's schema). Returns their names.
pub async fn add_new(
    client: &Client,
    source: &SourceConfig,
    tables: &[Found],
) -> Result<Vec<String>> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let name = name(source);
    let Some((_, listed)) = state(client, &name).await? else {
        return Ok(Vec::new());
    };
    add_to(client, &name, tables, &listed).await
}

/// The error for an insert-only table that the main publication publishes every change of.
pub fn in_main_publication(source: &SourceConfig, table: &Found) -> Error {
    let main = quote_ident(&source.logical.publication);
    Error::new(
        ErrorKind::Schema,
        format!(
            "table {} is in source.cdc.insert_only, but publication {main} publishes all of its \
             changes (and PostgreSQL refuses its UPDATE and DELETE if it has no replica \
             identity); move it: ALTER PUBLICATION {main} DROP TABLE {}, then run outboxd \
             migrate",
            table.quoted(),
            table.quoted()
        ),
    )
}

/// The error for a slot that exists while this publication does not.
fn missing_under_slot(source: &SourceConfig) -> Error {
    let quoted = quote_ident(&name(source));
    let slot = &source.logical.slot;
    Error::new(
        ErrorKind::Schema,
        format!(
            "publication {quoted} (for source.cdc.insert_only) does not exist but replication \
             slot \"{slot}\" does: PostgreSQL decodes the slot's older WAL with a catalog \
             without it and would stop the stream, so outboxd does not create it behind the \
             slot. Create it now (CREATE PUBLICATION {quoted} WITH (publish = 'insert', \
             publish_via_partition_root = true)), keep the relay running without \
             source.cdc.insert_only until the slot's confirmed_flush_lsn (pg_replication_slots) \
             is past pg_current_wal_lsn() of that moment, then add the tables to \
             source.cdc.insert_only"
        ),
    )
}
