//! `outboxd dlq`: inspect, retry or skip dead letters (events marked failed).

use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::outbox::OutboxTable;
use crate::pg::classify;
use clap::Subcommand;
use serde::Serialize;
use tokio_postgres::Client;

/// Rows re-queued per statement by `dlq retry --all`, so a large backlog moves in short
/// transactions and progress can be shown.
const RETRY_CHUNK: i64 = 1000;

/// The `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        /// Include events an operator skipped.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter in full, payload included.
    Show {
        /// The event id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Deliver dead letters again (they keep their place in their aggregate's order).
    Retry {
        /// The event id.
        #[arg(required_unless_present_any = ["aggregate", "all"], conflicts_with_all = ["aggregate", "all"])]
        id: Option<String>,
        /// Every dead letter of this aggregate.
        #[arg(long, conflicts_with = "all")]
        aggregate: Option<String>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Drop a dead letter on purpose: it is kept, marked skipped, and no longer blocks its
    /// aggregate.
    Skip {
        /// The event id.
        id: String,
    },
}

/// One dead letter as listed.
#[derive(Debug, Serialize)]
struct DeadLetter {
    /// Event id.
    id: String,
    /// Position in the outbox.
    position: i64,
    /// Aggregate type.
    aggregatetype: Option<String>,
    /// Aggregate id.
    aggregateid: Option<String>,
    /// Event type.
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// Attempts made.
    attempts: i32,
    /// Why it failed.
    last_error: Option<String>,
    /// When it was given up on.
    failed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When an operator skipped it.
    skipped_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The payload (only for `show`).
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<serde_json::Value>,
}

/// Runs a `dlq` subcommand.
pub async fn run(config: &Config, command: DlqCommand) -> Result<()> {
    let table = OutboxTable::new(&config.source);
    let session = crate::pg::connect(&config.source).await?;
    crate::migrate::verify(&session.client, &table, &config.source.columns.all()).await?;
    let client = &session.client;
    match command {
        DlqCommand::List { all, json } => {
            let filter = if all { "" } else { " AND {skipped_at} IS NULL" };
            let letters = select(client, &table, filter, &[]).await?;
            if json {
                return print_json(&letters);
            }
            if letters.is_empty() {
                println!("no dead letters");
            }
            for l in &letters {
                let skipped = if l.skipped_at.is_some() {
                    " (skipped)"
                } else {
                    ""
                };
                println!(
                    "{}  {}/{}  {}  attempts={}  {}{skipped}",
                    l.id,
                    l.aggregatetype.as_deref().unwrap_or("-"),
                    l.aggregateid.as_deref().unwrap_or("-"),
                    l.event_type.as_deref().unwrap_or("-"),
                    l.attempts,
                    l.last_error.as_deref().unwrap_or("")
                );
            }
            Ok(())
        }
        DlqCommand::Show { id, json } => {
            let mut letters = select(client, &table, " AND {id}::text = $1", &[&id]).await?;
            let Some(letter) = letters.pop() else {
                return Err(not_found(&id));
            };
            if json {
                return print_json(&letter);
            }
            let text = serde_json::to_string_pretty(&letter)
                .map_err(|err| Error::with_source(ErrorKind::Internal, "encoding", err))?;
            println!("{text}");
            Ok(())
        }
        DlqCommand::Retry { id, aggregate, all } => {
            let (filter, value) = match (id, aggregate, all) {
                (Some(id), _, _) => (" AND {id}::text = $1", id),
                (_, Some(aggregate), _) => (" AND {aggregate_id}::text = $1", aggregate),
                _ => (" AND $1 = ''", String::new()),
            };
            let requeued = retry(client, &table, filter, &value).await?;
            if requeued == 0 && !all {
                return Err(not_found(&value));
            }
            println!("re-queued {requeued} dead letter(s)");
            Ok(())
        }
        DlqCommand::Skip { id } => {
            let sql = table.render(
                "UPDATE {table} SET {skipped_at} = now() \
                 WHERE {id}::text = $1 AND {failed_at} IS NOT NULL AND {skipped_at} IS NULL",
            );
            let skipped = client
                .execute(&sql, &[&id])
                .await
                .map_err(|err| classify("skipping a dead letter", err))?;
            if skipped == 0 {
                return Err(not_found(&id));
            }
            println!("skipped {id}; later events of its aggregate will flow");
            Ok(())
        }
    }
}

/// Dead letters matching `filter` (a rendered `AND …` clause), oldest first.
async fn select(
    client: &Client,
    table: &OutboxTable,
    filter: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<DeadLetter>> {
    let sql = table.render(&format!(
        "SELECT {{id}}::text, {{position}}, {{aggregate_type}}::text, {{aggregate_id}}::text, \
         {{event_type}}::text, {{attempts}}, {{last_error}}, {{failed_at}}, {{skipped_at}}, \
         {{payload}}::text FROM {{table}} WHERE {{failed_at}} IS NOT NULL{filter} \
         ORDER BY {{position}}"
    ));
    let rows = client
        .query(&sql, params)
        .await
        .map_err(|err| classify("reading dead letters", err))?;
    Ok(rows
        .iter()
        .map(|row| DeadLetter {
            id: row.get(0),
            position: row.get(1),
            aggregatetype: row.get(2),
            aggregateid: row.get(3),
            event_type: row.get(4),
            attempts: row.get(5),
            last_error: row.get(6),
            failed_at: row.get(7),
            skipped_at: row.get(8),
            payload: row
                .get::<_, Option<String>>(9)
                .filter(|_| params.len() == 1 && filter.contains("{id}"))
                .map(|text| serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))),
        })
        .collect())
}

/// Makes matching dead letters pending again, in chunks, showing progress on stderr.
async fn retry(client: &Client, table: &OutboxTable, filter: &str, value: &str) -> Result<u64> {
    let sql = table.render(&format!(
        "UPDATE {{table}} SET {{failed_at}} = NULL, {{skipped_at}} = NULL, {{attempts}} = 0 \
         WHERE {{position}} IN (SELECT {{position}} FROM {{table}} \
         WHERE {{failed_at}} IS NOT NULL{filter} ORDER BY {{position}} LIMIT $2)"
    ));
    let mut total = 0;
    loop {
        let moved = client
            .execute(&sql, &[&value, &RETRY_CHUNK])
            .await
            .map_err(|err| classify("re-queuing dead letters", err))?;
        total += moved;
        if moved > 0 && total > RETRY_CHUNK as u64 {
            eprintln!("re-queued {total} so far…");
        }
        if moved < RETRY_CHUNK as u64 {
            return Ok(total);
        }
    }
}

/// Prints `value` as pretty JSON.
fn print_json(value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|err| Error::with_source(ErrorKind::Internal, "encoding JSON", err))?;
    println!("{text}");
    Ok(())
}

/// The error for an id or aggregate with no dead letter.
fn not_found(what: &str) -> Error {
    Error::new(
        ErrorKind::Database,
        format!("no dead letter matches {what:?}"),
    )
}
