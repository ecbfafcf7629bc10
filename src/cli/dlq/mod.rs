//! `outboxd dlq`: inspect, retry or skip dead letters (outbox rows marked failed in polling
//! mode; the dead-letter store in logical and CDC modes, `stored.rs`).

mod letters;
mod requeue;
mod stored;

use self::letters::{list_line, select};
use self::requeue::Which;
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::outbox::OutboxTable;
use clap::Subcommand;
use serde::Serialize;

/// The `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first, with when and why each failed.
    List {
        /// Include events an operator skipped.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter in full: payload, headers, when it was written and failed.
    Show {
        /// The event id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Deliver dead letters again (they keep their place in their aggregate's order). Skipped
    /// dead letters stay skipped unless named by id. A row rejected for its content fails again
    /// unless it is repaired first (see README, "Dead letters").
    Retry {
        /// The event id (also a skipped one).
        #[arg(required_unless_present_any = ["aggregate", "all"], conflicts_with_all = ["aggregate", "all"])]
        id: Option<String>,
        /// Every dead letter of this aggregate that is not skipped.
        #[arg(long, conflicts_with = "all")]
        aggregate: Option<String>,
        /// Every dead letter that is not skipped.
        #[arg(long)]
        all: bool,
        /// Retry even though a later event of the aggregate was delivered (or may be on its
        /// way): consumers then see this event after it.
        #[arg(long)]
        out_of_order: bool,
    },
    /// Drop dead letters on purpose: they are kept, marked skipped, and no longer block their
    /// aggregate.
    Skip {
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
}

/// Runs a `dlq` subcommand.
pub async fn run(config: &Config, command: DlqCommand) -> Result<()> {
    // A stream read once keeps its dead letters in the store; polling keeps them as rows.
    if config.source.mode.is_logical() {
        return stored::run(config, command).await;
    }
    let table = OutboxTable::new(&config.source);
    let session = crate::pg::connect(&config.source).await?;
    crate::outbox::migrate::verify(&session.client, &table, &config.source.columns.all()).await?;
    let client = &session.client;
    match command {
        DlqCommand::List { all, json } => {
            let filter = if all { "" } else { " AND {skipped_at} IS NULL" };
            let letters = select(client, &table, filter, &[], false).await?;
            if json {
                return print_json(&letters);
            }
            if letters.is_empty() {
                println!("no dead letters");
            }
            for letter in &letters {
                println!("{}", list_line(letter));
            }
            Ok(())
        }
        // Pretty JSON either way: the fields are what a person repairing the row needs.
        DlqCommand::Show { id, json: _ } => {
            let mut letters = select(client, &table, " AND {id}::text = $1", &[&id], true).await?;
            let Some(letter) = letters.pop() else {
                return Err(not_found(&Which::Id(id)));
            };
            print_json(&letter)
        }
        DlqCommand::Retry {
            id,
            aggregate,
            all,
            out_of_order,
        } => {
            let which = which(id, aggregate);
            let requeued = requeue::retry(client, config, &table, &which, out_of_order).await?;
            if requeued == 0 && !all {
                return Err(not_found(&which));
            }
            println!("re-queued {requeued} dead letter(s)");
            Ok(())
        }
        DlqCommand::Skip { id, aggregate, all } => {
            let which = which(id, aggregate);
            let skipped = requeue::skip(client, &table, &which).await?;
            if skipped == 0 && !all {
                return Err(not_found(&which));
            }
            println!(
                "skipped {skipped} dead letter(s); later events of their aggregates will flow"
            );
            Ok(())
        }
    }
}

/// The dead letters named on the command line (`--all` when neither id nor aggregate).
fn which(id: Option<String>, aggregate: Option<String>) -> Which {
    match (id, aggregate) {
        (Some(id), _) => Which::Id(id),
        (_, Some(aggregate)) => Which::Aggregate(aggregate),
        _ => Which::All,
    }
}

/// Prints `value` as pretty JSON.
fn print_json(value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|err| Error::with_source(ErrorKind::Internal, "encoding JSON", err))?;
    println!("{text}");
    Ok(())
}

/// The error for an id or aggregate with no dead letter to act on.
fn not_found(which: &Which) -> Error {
    let message = match which {
        Which::Id(id) => format!("no dead letter matches {id:?}"),
        Which::Aggregate(aggregate) => format!(
            "no dead letter in force for aggregate {aggregate:?} (skipped ones are retried only \
             by id; see `outboxd dlq list --all`)"
        ),
        Which::All => "no dead letters".to_string(),
    };
    Error::new(ErrorKind::Database, message)
}
