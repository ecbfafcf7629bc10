//! `outboxd dlq` in logical and CDC modes: the same commands against the dead-letter store
//! (`src/dlq/`), where a stream read once keeps what the sink refused.

use super::{DlqCommand, print_json};
use crate::config::Config;
use crate::dlq::{Letter, Store, Which};
use crate::error::{Error, ErrorKind, Result};
use chrono::{DateTime, Utc};

/// Runs a `dlq` subcommand against the store of `config`'s slot.
pub async fn run(config: &Config, command: DlqCommand) -> Result<()> {
    let store = Store::new(&config.source);
    let session = crate::pg::connect(&config.source).await?;
    let client = &session.client;
    if !store.exists(client).await? {
        return Err(crate::dlq::missing(&store));
    }
    match command {
        DlqCommand::List { all, json } => {
            let letters = store.list(client, all).await?;
            if json {
                return print_json(&letters);
            }
            if letters.is_empty() {
                println!("no dead letters");
            }
            for letter in &letters {
                println!("{}", line(letter));
            }
            Ok(())
        }
        DlqCommand::Show { id, json: _ } => match store.show(client, &id).await? {
            Some(letter) => print_json(&letter),
            None => Err(not_found(&Which::Id(id))),
        },
        // Retried letters go out through the running relay, in their key's order and before
        // any later event of the key; `--out-of-order` has nothing to override here.
        DlqCommand::Retry {
            id, aggregate, all, ..
        } => {
            let which = which(id, aggregate);
            let retried = store.retry(client, &which).await?;
            if retried == 0 && !all {
                return Err(not_found(&which));
            }
            println!(
                "re-queued {retried} dead letter(s); the running relay delivers them, and the \
                 events parked behind them, within a second"
            );
            Ok(())
        }
        DlqCommand::Skip { id, aggregate, all } => {
            let which = which(id, aggregate);
            let skipped = store.skip(client, &which).await?;
            if skipped == 0 && !all {
                return Err(not_found(&which));
            }
            println!("skipped {skipped} dead letter(s); later events of their keys will flow");
            Ok(())
        }
    }
}

/// The letters named on the command line (`--all` when neither id nor key).
fn which(id: Option<String>, key: Option<String>) -> Which {
    match (id, key) {
        (Some(id), _) => Which::Id(id),
        (_, Some(key)) => Which::Key(key),
        _ => Which::All,
    }
}

/// One line of `dlq list`.
fn line(letter: &Letter) -> String {
    let when = |at: Option<DateTime<Utc>>| {
        at.map_or("-".to_string(), |at| {
            at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
        })
    };
    let state = match letter.state.as_str() {
        "dead" => String::new(),
        "skipped" => format!(" (skipped {})", when(letter.skipped_at)),
        other => format!(" ({other})"),
    };
    format!(
        "{}  {}/{}  {}  attempts={}  failed {}  {}{state}",
        letter.id,
        letter.origin,
        letter.key.as_deref().unwrap_or("-"),
        letter.event_type,
        letter.attempts,
        when(letter.last_failed_at),
        letter.reason.as_deref().unwrap_or("")
    )
}

/// The error for an id or key with no dead letter to act on.
fn not_found(which: &Which) -> Error {
    let message = match which {
        Which::Id(id) => format!("no dead letter matches {id:?}"),
        Which::Key(key) => format!("no dead letter in force for key {key:?}"),
        Which::All => "no dead letters".to_string(),
    };
    Error::new(ErrorKind::Database, message)
}
