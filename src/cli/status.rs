//! `outboxd status`: the outbox at a glance, for a person or (`--json`) a script.

use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::outbox::OutboxTable;
use crate::stats::{OutboxStats, sample};
use chrono::Utc;
use serde::Serialize;

/// What `status --json` prints.
#[derive(Serialize)]
struct Status<'a> {
    /// The outbox table, qualified.
    outbox: &'a str,
    /// Capture mode.
    mode: &'a str,
    /// The table's numbers.
    #[serde(flatten)]
    stats: &'a OutboxStats,
    /// Replication slot lag in bytes (logical mode only).
    slot_lag_bytes: Option<i64>,
}

/// Prints the status of the configured outbox.
pub async fn run(config: &Config, json: bool) -> Result<()> {
    let table = OutboxTable::new(&config.source);
    let session = crate::pg::connect(&config.source).await?;
    crate::migrate::verify(&session.client, &table, &config.source.columns.all()).await?;
    let stats = sample(&session.client, &table).await?;
    let logical = config.source.mode == crate::config::SourceMode::Logical;
    let slot_lag_bytes = match logical {
        true => crate::source::logical::slot::lag(&session.client, &config.source.logical.slot)
            .await?
            .map(|(lag, _)| lag),
        false => None,
    };
    let mode = if logical { "logical" } else { "poll" };
    let status = Status {
        outbox: &table.qualified,
        mode,
        stats: &stats,
        slot_lag_bytes,
    };
    if json {
        let text = serde_json::to_string_pretty(&status)
            .map_err(|err| Error::with_source(ErrorKind::Internal, "encoding status", err))?;
        println!("{text}");
        return Ok(());
    }
    let age = stats
        .oldest_pending_age_seconds
        .map_or("-".to_string(), |age| format!("{age:.1} s"));
    let last = stats.last_sent_at.map_or("-".to_string(), |at| {
        let ago = (Utc::now() - at).num_milliseconds() as f64 / 1000.0;
        format!("{} ({ago:.1} s ago)", at.format("%Y-%m-%dT%H:%M:%S%.3fZ"))
    });
    println!("{:<16}{}", "outbox", status.outbox);
    println!("{:<16}{}", "mode", status.mode);
    println!("{:<16}{}", "pending", stats.pending);
    println!("{:<16}{}", "oldest pending", age);
    println!("{:<16}{}", "dead letters", stats.dead_letters);
    let lag = match (logical, slot_lag_bytes) {
        (false, _) => "n/a (poll mode)".to_string(),
        (true, None) => format!("slot {:?} does not exist", config.source.logical.slot),
        (true, Some(bytes)) => format!("{bytes} bytes"),
    };
    println!("{:<16}{lag}", "slot lag");
    println!("{:<16}{}", "last publish", last);
    Ok(())
}
