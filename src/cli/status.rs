//! `outboxd status`: the outbox at a glance, for a person or (`--json`) a script.

use crate::config::{Config, OnDeadLetter};
use crate::error::{Error, ErrorKind, Result};
use crate::outbox::OutboxTable;
use crate::outbox::stats::{OutboxStats, sample};
use crate::source::guard::{self, Holder};
use crate::source::leader::{ActiveRelay, who_leads};
use chrono::Utc;
use serde::Serialize;

/// What `status --json` prints.
#[derive(Serialize)]
struct Status<'a> {
    /// The outbox table's schema, unquoted.
    schema: &'a str,
    /// The outbox table's name, unquoted.
    table: &'a str,
    /// Capture mode.
    mode: &'a str,
    /// The table's numbers.
    #[serde(flatten)]
    stats: &'a OutboxStats,
    /// Replication slot lag in bytes (logical mode only).
    slot_lag_bytes: Option<i64>,
    /// Pending events the visibility guard holds back now (polling mode only): written after
    /// a transaction that is still open began.
    held_back_events: Option<i64>,
    /// The oldest open transaction, which holds them (while any are held back).
    holding_transaction: Option<Holder>,
    /// Whether a relay holds the table's leader lock.
    relay_active: bool,
    /// The relay holding it, as PostgreSQL sees its session.
    active_relay: Option<ActiveRelay>,
    /// Relays waiting for the lock (hot standbys).
    standby_relays: i64,
}

/// Prints the status of the configured outbox (in cdc mode, of the slot and captured tables).
pub async fn run(config: &Config, json: bool) -> Result<()> {
    let table = OutboxTable::new(&config.source);
    let session = crate::pg::connect(&config.source).await?;
    if config.source.mode == crate::config::SourceMode::Cdc {
        return cdc(config, &session.client, json).await;
    }
    crate::outbox::migrate::verify(&session.client, &table, &config.source.columns.all()).await?;
    let blocking = config.relay.on_dead_letter == OnDeadLetter::BlockAggregate;
    let stats = sample(&session.client, &table, blocking).await?;
    let logical = config.source.mode.is_logical();
    let slot_lag_bytes = match logical {
        true => crate::source::logical::slot::lag(&session.client, &config.source.logical.slot)
            .await?
            .map(|(lag, _)| lag),
        false => None,
    };
    let held_back_events = match logical {
        true => None,
        false => Some(guard::held_back(&session.client, &table).await?),
    };
    let holding_transaction = match held_back_events {
        Some(held) if held > 0 => guard::oldest_holder(&session.client).await?,
        _ => None,
    };
    let (active_relay, standby_relays) = who_leads(&session.client, &table).await?;
    let mode = if logical { "logical" } else { "poll" };
    let status = Status {
        schema: &table.schema,
        table: &table.name,
        mode,
        stats: &stats,
        slot_lag_bytes,
        held_back_events,
        holding_transaction: holding_transaction.clone(),
        relay_active: active_relay.is_some(),
        active_relay,
        standby_relays,
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
    println!("{:<16}{}", "outbox", table.qualified);
    println!("{:<16}{}", "mode", status.mode);
    println!("{:<16}{}", "relay", relay_line(&status));
    let pending = match stats.pending_blocked {
        0 => stats.pending.to_string(),
        blocked => format!("{} ({blocked} waiting behind dead letters)", stats.pending),
    };
    println!("{:<16}{pending}", "pending");
    println!("{:<16}{}", "oldest pending", age);
    if let Some(held) = held_back_events {
        let by = holding_transaction.map_or(String::new(), |h| {
            format!(
                " by the transaction of pid {} (open {:.1} s)",
                h.pid, h.age_seconds
            )
        });
        println!("{:<16}{held}{by}", "held back");
    }
    let dead = match stats.skipped_dead_letters {
        0 => stats.dead_letters.to_string(),
        skipped => format!("{} (and {skipped} skipped)", stats.dead_letters),
    };
    println!("{:<16}{dead}", "dead letters");
    let lag = match (logical, slot_lag_bytes) {
        (false, _) => "n/a (poll mode)".to_string(),
        (true, None) => format!("slot {:?} does not exist", config.source.logical.slot),
        (true, Some(bytes)) => format!("{bytes} bytes"),
    };
    println!("{:<16}{lag}", "slot lag");
    println!("{:<16}{}", "last publish", last);
    Ok(())
}

/// `status` in cdc mode: there is no outbox table; the slot's lag and the captured tables.
async fn cdc(config: &Config, client: &tokio_postgres::Client, json: bool) -> Result<()> {
    let slot = &config.source.logical.slot;
    let lag = crate::source::logical::slot::lag(client, slot).await?;
    let lag = lag.map(|(bytes, _)| bytes);
    let tables = crate::source::logical::tables::publication::resolve(client, &config.source)
        .await?
        .iter()
        .map(|found| format!("{}.{}", found.schema, found.table))
        .collect::<Vec<_>>();
    let schema = &config.source.table.schema;
    let backfills = match crate::source::logical::snapshot::store::exists(client, schema).await? {
        true => crate::source::logical::snapshot::store::list(client, schema, slot).await?,
        false => Vec::new(),
    };
    if json {
        let backfills: Vec<_> = backfills.iter().map(super::backfill::line).collect();
        let status = serde_json::json!({"mode": "cdc", "tables": tables, "slot_lag_bytes": lag,
            "backfills": backfills});
        println!("{status:#}");
        return Ok(());
    }
    println!("{:<16}cdc", "mode");
    println!("{:<16}{}", "tables", tables.join(", "));
    match lag {
        Some(bytes) => println!("{:<16}{bytes} bytes", "slot lag"),
        None => println!("{:<16}slot {slot:?} does not exist", "slot lag"),
    }
    for job in &backfills {
        println!("{:<16}{}", "backfill", super::backfill::line(job));
    }
    Ok(())
}

/// "active: outboxd at 10.0.0.5 (pid 123) since …, 1 standing by", or "none active".
fn relay_line(status: &Status<'_>) -> String {
    let standby = match status.standby_relays {
        0 => String::new(),
        n => format!(", {n} standing by"),
    };
    let Some(relay) = &status.active_relay else {
        return format!("none active{standby}");
    };
    let name = relay.application_name.as_deref().unwrap_or("?");
    let host = relay
        .client_hostname
        .as_deref()
        .or(relay.client_addr.as_deref())
        .unwrap_or("local socket");
    let since = relay.session_started_at.map_or(String::new(), |at| {
        format!(" session since {}", at.format("%Y-%m-%dT%H:%M:%SZ"))
    });
    format!(
        "active: {name} at {host} (pid {}){since}{standby}",
        relay.pid
    )
}
