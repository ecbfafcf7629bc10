//! The publication that carries the outbox's inserts: created once (never again behind the
//! user's back while a slot exists), checked at start-up and on every heartbeat, and the one
//! stream error it explains.
//!
//! PostgreSQL decodes a slot's WAL with the catalog as it was when the WAL was written. A change
//! made while the table was out of the publication is therefore never in the stream, and a
//! publication dropped and re-created after the slot's position is, for that slot, a different
//! publication that does not exist yet: each needs an operator, and each gets a message that says
//! what happened and what every way out costs.

use crate::config::SourceConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::outbox::OutboxTable;
use crate::pg::{classify, quote_ident};
use tokio_postgres::Client;

/// How the publication stands towards the outbox table.
#[derive(Debug, PartialEq, Eq)]
pub enum Membership {
    /// It publishes the table's inserts under the table's own name.
    Covered,
    /// There is no publication of that name.
    NoPublication,
    /// The publication exists but does not include the table.
    NotMember,
    /// The table is partitioned and the publication sends its rows under each partition's
    /// name (`publish_via_partition_root = false`), which outboxd does not read.
    PartitionsOnly,
}

/// Reads how the configured publication stands towards `table`.
pub async fn membership(
    client: &Client,
    source: &SourceConfig,
    table: &OutboxTable,
) -> Result<Membership> {
    let publication = &source.logical.publication;
    let row = client
        .query_one(
            "SELECT (SELECT pubviaroot FROM pg_publication WHERE pubname = $1), \
             EXISTS (SELECT 1 FROM pg_publication_tables \
                     WHERE pubname = $1 AND schemaname = $2 AND tablename = $3), \
             coalesce((SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass($4)), false)",
            &[publication, &table.schema, &table.name, &table.qualified],
        )
        .await
        .map_err(|err| classify("reading the publication's tables", err))?;
    let (via_root, listed, partitioned): (Option<bool>, bool, bool) =
        (row.get(0), row.get(1), row.get(2));
    Ok(match via_root {
        None => Membership::NoPublication,
        Some(false) if partitioned => Membership::PartitionsOnly,
        Some(_) if listed => Membership::Covered,
        Some(_) => Membership::NotMember,
    })
}

/// Creates the publication if it is missing and no slot exists, then checks that it carries the
/// table. With a slot, a missing publication is an error: creating it would leave the slot
/// unable to stream (see the module docs).
pub async fn ensure(
    client: &Client,
    source: &SourceConfig,
    table: &OutboxTable,
    slot_exists: bool,
) -> Result<()> {
    let publication = &source.logical.publication;
    if membership(client, source, table).await? == Membership::NoPublication && !slot_exists {
        // Via the root: a partitioned outbox's rows then arrive under the table's own name.
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {} FOR TABLE {} \
                 WITH (publish = 'insert', publish_via_partition_root = true)",
                quote_ident(publication),
                table.qualified
            ))
            .await
            .map_err(|err| classify("creating the publication", err))?;
        tracing::info!(%publication, table = %table.qualified, "publication created");
    }
    check(client, source, table).await
}

/// Fails with what is wrong and how to fix it unless the publication carries the table.
pub async fn check(client: &Client, source: &SourceConfig, table: &OutboxTable) -> Result<()> {
    match membership(client, source, table).await? {
        Membership::Covered => Ok(()),
        other => Err(refusal(client, source, table, &other).await),
    }
}

/// The error for a publication that does not carry the table.
async fn refusal(
    client: &Client,
    source: &SourceConfig,
    table: &OutboxTable,
    membership: &Membership,
) -> Error {
    let publication = quote_ident(&source.logical.publication);
    let qualified = &table.qualified;
    let message = match membership {
        Membership::Covered => return Error::new(ErrorKind::Internal, "publication is fine"),
        Membership::NotMember => format!(
            "publication {publication} does not include {qualified}: inserts made while it is \
             out are not in the replication stream and are NOT delivered; stopping. Add it with: \
             ALTER PUBLICATION {publication} ADD TABLE {qualified}, then re-insert the rows \
             written while it was out (the outbox keeps them; logical mode never deletes rows)"
        ),
        Membership::PartitionsOnly => format!(
            "{qualified} is partitioned and publication {publication} publishes its rows under \
             each partition's name, which outboxd does not read; fix: ALTER PUBLICATION \
             {publication} SET (publish_via_partition_root = true)"
        ),
        Membership::NoPublication => {
            let choices = slot_choices(client, source).await;
            format!(
                "publication {publication} does not exist but replication slot \"{}\" does: \
                 outboxd does not re-create it behind your back, since the slot decodes its WAL \
                 with the catalog of that time and could never use a new one. Re-create it \
                 (CREATE PUBLICATION {publication} FOR TABLE {qualified} WITH (publish = \
                 'insert', publish_via_partition_root = true)), then {choices}",
                source.logical.slot
            )
        }
    };
    Error::new(ErrorKind::Schema, message)
}

/// Turns a stream error that says the publication does not exist, while the catalog lists it,
/// into the explanation: it was dropped and re-created after the slot's position. Any other
/// error is returned as it is.
pub async fn explain_stream_error(client: &Client, source: &SourceConfig, err: Error) -> Error {
    let publication = &source.logical.publication;
    let text = err.to_string();
    if !text.contains(&format!("publication \"{publication}\" does not exist")) {
        return err;
    }
    let listed = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[publication],
        )
        .await
        .is_ok_and(|row| row.is_some());
    if !listed {
        return err;
    }
    let choices = slot_choices(client, source).await;
    Error::new(
        ErrorKind::Schema,
        format!(
            "publication \"{publication}\" exists, yet replication slot \"{slot}\" reports it \
             does not: it was dropped and re-created after the slot's position, and PostgreSQL \
             decodes the slot's WAL with the catalog of that time, so this slot can never \
             stream again. Nothing was re-created by outboxd. To go on, {choices} ({text})",
            slot = source.logical.slot
        ),
    )
}

/// The two ways past a slot that cannot use the publication, with what each loses.
async fn slot_choices(client: &Client, source: &SourceConfig) -> String {
    let slot = &source.logical.slot;
    let positions = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text, pg_current_wal_lsn()::text \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await
        .ok()
        .flatten();
    let (from, now): (Option<String>, Option<String>) = positions
        .map(|row| (row.get(0), row.get(1)))
        .unwrap_or_default();
    let from = from.unwrap_or_else(|| "its position".into());
    let now = now.unwrap_or_else(|| "the current position".into());
    format!(
        "choose one: (a) advance the slot past the re-creation: SELECT \
         pg_replication_slot_advance('{slot}', '<an LSN after the publication was re-created>') \
         (now {now}): events written between {from} and that LSN are NOT delivered, later ones \
         are; or (b) drop the slot (SELECT pg_drop_replication_slot('{slot}')) and start with \
         source.logical.recreate_lost_slot = true: outboxd creates it at the current position \
         and every event written since {from} is NOT delivered. Either way the outbox table \
         still holds the rows written in between; re-insert those that must be delivered"
    )
}
