//! `dlq retry` and `dlq skip`: changing a dead letter's state, without ever letting a retried
//! event reach the sink after a later event of its aggregate.

use crate::config::{Config, OnDeadLetter, OnSent};
use crate::error::{Error, ErrorKind, Result};
use crate::outbox::OutboxTable;
use crate::pg::classify;
use tokio_postgres::Client;

/// Rows changed per statement, so a large backlog moves in short transactions and progress can
/// be shown.
const CHUNK: i64 = 1000;

/// Which dead letters a `retry` or `skip` means.
pub enum Which {
    /// One event, by id: the only way to retry a skipped dead letter.
    Id(String),
    /// Every dead letter in force (not skipped) of an aggregate.
    Aggregate(String),
    /// Every dead letter in force.
    All,
}

impl Which {
    /// The `AND …` clause (template) selecting these dead letters, with `$1` bound to
    /// [`Which::value`]. A skipped dead letter stays skipped unless named by its id.
    fn filter(&self) -> &'static str {
        match self {
            Which::Id(_) => " AND {id}::text = $1",
            Which::Aggregate(_) => " AND {skipped_at} IS NULL AND {aggregate_id}::text = $1",
            Which::All => " AND {skipped_at} IS NULL AND $1 = ''",
        }
    }

    /// The value bound to `$1`.
    fn value(&self) -> &str {
        match self {
            Which::Id(value) | Which::Aggregate(value) => value,
            Which::All => "",
        }
    }
}

/// Makes the chosen dead letters pending again, in chunks, showing progress on stderr.
///
/// Refuses (changing nothing) when a later event of a chosen letter's aggregate was already
/// delivered, or may be on its way, unless `out_of_order`: the retried event would reach the
/// sink after it.
pub async fn retry(
    client: &Client,
    config: &Config,
    table: &OutboxTable,
    which: &Which,
    out_of_order: bool,
) -> Result<u64> {
    if !out_of_order {
        check_order(client, config, table, which).await?;
    }
    let sql = table.render(&format!(
        "UPDATE {{table}} SET {{failed_at}} = NULL, {{skipped_at}} = NULL, {{attempts}} = 0 \
         WHERE {{position}} IN (SELECT {{position}} FROM {{table}} \
         WHERE {{failed_at}} IS NOT NULL{} ORDER BY {{position}} LIMIT $2)",
        which.filter()
    ));
    let requeued = in_chunks(client, &sql, which.value(), "re-queued").await?;
    release_blocked(client, table).await?;
    Ok(requeued)
}

/// Marks the chosen dead letters skipped, in chunks: they are kept for the record and no longer
/// hold back their aggregate.
pub async fn skip(client: &Client, table: &OutboxTable, which: &Which) -> Result<u64> {
    let sql = table.render(&format!(
        "UPDATE {{table}} SET {{skipped_at}} = now() \
         WHERE {{position}} IN (SELECT {{position}} FROM {{table}} \
         WHERE {{failed_at}} IS NOT NULL AND {{skipped_at}} IS NULL{} \
         ORDER BY {{position}} LIMIT $2)",
        which.filter()
    ));
    let skipped = in_chunks(client, &sql, which.value(), "skipped").await?;
    release_blocked(client, table).await?;
    Ok(skipped)
}

/// Gives the rows that the relay marked blocked behind a dead letter no longer in force back to
/// its fetch, so they flow at once (the relay also does this before every fetch, which covers a
/// fetch that marked rows while this command ran).
async fn release_blocked(client: &Client, table: &OutboxTable) -> Result<()> {
    crate::outbox::blocked::release(client, table)
        .await
        .map_err(|err| classify("releasing events waiting behind these dead letters", err))?;
    Ok(())
}

/// Runs `sql` (`$1` the filter value, `$2` the chunk size) until it changes fewer than a chunk.
async fn in_chunks(client: &Client, sql: &str, value: &str, done: &str) -> Result<u64> {
    let mut total = 0;
    loop {
        let moved = client
            .execute(sql, &[&value, &CHUNK])
            .await
            .map_err(|err| {
                unrepaired(err).unwrap_or_else(|err| classify(format!("{done} dead letters"), err))
            })?;
        total += moved;
        if moved > 0 && total > CHUNK as u64 {
            eprintln!("{done} {total} so far…");
        }
        if moved < CHUNK as u64 {
            return Ok(total);
        }
    }
}

/// The error for a retry refused by a constraint of the table (migration 6: a NULL payload may
/// only sit in a dead letter), saying what to do; any other error is handed back.
fn unrepaired(err: tokio_postgres::Error) -> std::result::Result<Error, tokio_postgres::Error> {
    let Some(db) = err.as_db_error() else {
        return Err(err);
    };
    if db.code() != &tokio_postgres::error::SqlState::CHECK_VIOLATION {
        return Err(err);
    }
    Ok(Error::new(
        ErrorKind::Database,
        format!(
            "stopped at a dead letter that still breaks constraint {} (its payload is NULL): \
             repair the row, e.g. UPDATE <outbox> SET payload = '{{}}' WHERE id = '<id>' (see \
             `outboxd dlq list`), then retry again",
            db.constraint().unwrap_or("?")
        ),
    ))
}

/// Fails if retrying `which` could deliver an event after a later event of its aggregate: one
/// that is marked sent, or one that is pending, free to flow (not behind a dead letter in force)
/// and so possibly in flight while a relay is active. With `on_sent = "delete"` delivered rows
/// are gone, so a letter whose aggregate may have flowed past it (skipped, or
/// `on_dead_letter = "skip"`) is refused too.
async fn check_order(
    client: &Client,
    config: &Config,
    table: &OutboxTable,
    which: &Which,
) -> Result<()> {
    let blocking = config.relay.on_dead_letter == OnDeadLetter::BlockAggregate;
    let (relay, _) = crate::source::leader::who_leads(client, table).await?;
    let relay_active = relay.is_some();
    let sql = table.render(&format!(
        "WITH l AS (SELECT {{aggregate_id}} AS aggregate, min({{position}}) AS first, \
         bool_or({{skipped_at}} IS NOT NULL) AS skipped \
         FROM {{table}} WHERE {{failed_at}} IS NOT NULL{} GROUP BY 1) \
         SELECT (SELECT {{id}}::text FROM {{table}} WHERE {{position}} = l.first), \
         e.{{id}}::text, e.{{sent_at}} IS NOT NULL, l.aggregate::text, l.skipped \
         FROM l LEFT JOIN {{table}} AS e ON e.{{aggregate_id}} = l.aggregate \
         AND e.{{position}} > l.first \
         AND (e.{{sent_at}} IS NOT NULL OR ($2 AND e.{{sent_at}} IS NULL \
              AND e.{{failed_at}} IS NULL AND NOT ($3 AND EXISTS (SELECT 1 FROM {{table}} AS d \
              WHERE d.{{aggregate_id}} = e.{{aggregate_id}} AND d.{{failed_at}} IS NOT NULL \
              AND d.{{skipped_at}} IS NULL AND d.{{position}} < e.{{position}})))) \
         WHERE e.{{id}} IS NOT NULL OR $4 AND (l.skipped OR NOT $3) \
         ORDER BY e.{{sent_at}} IS NOT NULL DESC, l.first, e.{{position}} LIMIT 1",
        which.filter()
    ));
    let deletes = config.source.on_sent == OnSent::Delete;
    let row = client
        .query_opt(&sql, &[&which.value(), &relay_active, &blocking, &deletes])
        .await
        .map_err(|err| classify("checking the order of dead letters to retry", err))?;
    let Some(row) = row else {
        return Ok(());
    };
    let (letter, later, sent): (String, Option<String>, Option<bool>) =
        (row.get(0), row.get(1), row.get(2));
    let aggregate: String = row.get(3);
    let why = match (later, sent) {
        (Some(later), Some(true)) => format!("the later event {later} was already delivered"),
        (Some(later), _) => format!(
            "the later event {later} is pending and may already be on its way (a relay is \
             active); stop the relay first"
        ),
        (None, _) => "with source.on_sent = \"delete\" delivered rows are gone, so outboxd cannot \
                      tell whether a later event was delivered"
            .to_string(),
    };
    Err(Error::new(
        ErrorKind::Database,
        format!(
            "refusing to retry dead letter {letter} of aggregate {aggregate:?}: {why}; a retry \
             would deliver it after a later event of its aggregate (pass --out-of-order to \
             deliver it anyway)"
        ),
    ))
}
