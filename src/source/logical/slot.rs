//! The server side of logical mode: prerequisites, the publication, the replication slot, the
//! heartbeat that keeps an idle slot moving, and the slot's lag.
//!
//! All of it runs on an ordinary (non-replication) connection.

use super::{history, publication};
use crate::config::SourceConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::outbox::OutboxTable;
use crate::pg::{classify, quote_ident};
use tokio_postgres::Client;

/// Checks what logical mode needs from the server and the role, then creates the publication
/// and the slot if they do not exist. Each missing prerequisite gets its own message that says
/// what is missing and how to fix it.
///
/// A slot that outboxd recorded before (see [`history`]) and that is gone was dropped: the
/// events written since are in no slot, so it is created again only with the same opt-in as an
/// invalidated slot (`source.logical.recreate_lost_slot`). A missing publication is never
/// created while the slot exists (see [`publication`]).
pub async fn prepare(client: &Client, source: &SourceConfig) -> Result<()> {
    let logical = &source.logical;
    let table = OutboxTable::new(source);
    check_prerequisites(client, &logical.slot).await?;
    let slot_exists = slot_status(client, &logical.slot).await?.is_some();
    let outbox = source.mode.uses_outbox().then_some(&table);
    if source.cdc.captures() {
        super::tables::publication::ensure(client, source, outbox, slot_exists).await?;
    }
    if outbox.is_some() {
        publication::ensure(client, source, &table, slot_exists).await?;
    }
    if let Err(err) = history::create_table(client, &table).await {
        tracing::warn!(error = %err.chain(), "cannot keep slot records; a dropped slot would \
            not be told from a new one");
    }
    if !slot_exists {
        if let Some(seen) = history::seen(client, &table, &logical.slot).await? {
            if !logical.recreate_lost_slot {
                return Err(dropped(&logical.slot, &seen));
            }
            tracing::error!(slot = %logical.slot, first_seen = %seen.first, last_seen = %seen.last,
                "replication slot existed before and was dropped: events written since it was                  dropped may have been LOST; creating it afresh because                  source.logical.recreate_lost_slot = true");
        }
        create_slot(client, &logical.slot).await?;
    }
    history::record_quietly(client, &table, &logical.slot, !slot_exists).await;
    Ok(())
}

/// The error for a slot that outboxd recorded and that no longer exists.
fn dropped(slot: &str, seen: &history::Seen) -> Error {
    Error::new(
        ErrorKind::Database,
        format!(
            "replication slot \"{slot}\" existed before (outboxd recorded it from {} to {}) \
             but no longer exists: it was dropped, and events written since are in no slot, so \
             creating it now would silently skip them; compare the outbox table with the sink, \
             then set source.logical.recreate_lost_slot = true once to create it afresh at the \
             current WAL position",
            seen.first.format("%Y-%m-%dT%H:%M:%SZ"),
            seen.last.format("%Y-%m-%dT%H:%M:%SZ")
        ),
    )
}

/// `wal_level = logical`, a free replication slot (unless ours exists) and the REPLICATION
/// attribute (or superuser).
async fn check_prerequisites(client: &Client, slot: &str) -> Result<()> {
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), \
             current_setting('max_replication_slots')::int, \
             (SELECT count(*)::int FROM pg_replication_slots), \
             EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1), \
             current_user::text, \
             (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)",
            &[&slot],
        )
        .await
        .map_err(|err| classify("checking logical replication prerequisites", err))?;
    let wal_level: String = row.get(0);
    let (max_slots, used_slots): (i32, i32) = (row.get(1), row.get(2));
    let (slot_exists, role): (bool, String) = (row.get(3), row.get(4));
    let may_replicate: Option<bool> = row.get(5);
    if wal_level != "logical" {
        return Err(Error::new(
            ErrorKind::Database,
            format!(
                "wal_level is \"{wal_level}\" but source.mode = \"logical\" needs \"logical\"; \
                 run ALTER SYSTEM SET wal_level = logical and restart PostgreSQL"
            ),
        ));
    }
    if max_slots == 0 {
        return Err(Error::new(
            ErrorKind::Database,
            "max_replication_slots is 0 but source.mode = \"logical\" needs a replication slot; \
             run ALTER SYSTEM SET max_replication_slots = 10 and restart PostgreSQL",
        ));
    }
    if !slot_exists && used_slots >= max_slots {
        return Err(Error::new(
            ErrorKind::Database,
            format!(
                "all {max_slots} replication slots (max_replication_slots) are in use, so slot \
                 \"{slot}\" cannot be created; drop an unused slot with \
                 SELECT pg_drop_replication_slot('<name>') or raise max_replication_slots and \
                 restart PostgreSQL"
            ),
        ));
    }
    if may_replicate != Some(true) {
        return Err(Error::new(
            ErrorKind::Database,
            format!(
                "role {} lacks the REPLICATION attribute that source.mode = \"logical\" needs; \
                 grant it with: ALTER ROLE {} WITH REPLICATION",
                quote_ident(&role),
                quote_ident(&role)
            ),
        ));
    }
    Ok(())
}

/// A slot's `wal_status` (`reserved`, `extended`, `unreserved` or `lost`); `None` if it does not
/// exist.
pub async fn slot_status(client: &Client, slot: &str) -> Result<Option<String>> {
    let row = client
        .query_opt(
            "SELECT coalesce(wal_status, 'reserved') FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|err| classify("reading the replication slot", err))?;
    Ok(row.map(|row| row.get(0)))
}

/// Creates the logical slot with `pgoutput`.
async fn create_slot(client: &Client, slot: &str) -> Result<()> {
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .map_err(|err| classify(format!("creating replication slot \"{slot}\""), err))?;
    tracing::info!(slot, "replication slot created");
    Ok(())
}

/// Fails clearly if the slot is missing or was invalidated; with `recreate_lost_slot` a lost
/// slot is dropped and created again, with a loud warning, since what it held is gone. Returns
/// whether it was re-created.
pub async fn check_slot(client: &Client, source: &SourceConfig) -> Result<bool> {
    let logical = &source.logical;
    let slot = logical.slot.as_str();
    match slot_status(client, slot).await?.as_deref() {
        None => Err(Error::new(
            ErrorKind::Schema,
            format!(
                "replication slot \"{slot}\" does not exist; run `outboxd migrate` or set \
                 source.auto_migrate = true"
            ),
        )),
        Some("lost") if logical.recreate_lost_slot => {
            tracing::error!(
                slot,
                "replication slot was invalidated (wal_status = lost): the WAL it needed was \
                 removed, so events written meanwhile may have been LOST; dropping and \
                 re-creating it because source.logical.recreate_lost_slot = true"
            );
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await
                .map_err(|err| classify("dropping the lost replication slot", err))?;
            create_slot(client, slot).await?;
            Ok(true)
        }
        Some("lost") => Err(lost(slot)),
        Some(_) => Ok(false),
    }
}

/// The fatal error of an invalidated slot.
pub fn lost(slot: &str) -> Error {
    Error::new(
        ErrorKind::Database,
        format!(
            "replication slot \"{slot}\" was invalidated (wal_status = lost): PostgreSQL removed \
             WAL it still needed, so events may be missing; compare the outbox with the sink, \
             then set source.logical.recreate_lost_slot = true once to start afresh"
        ),
    )
}

/// Writes a non-transactional heartbeat message, so an idle slot has something to confirm.
pub async fn heartbeat(client: &Client, prefix: &str) -> Result<()> {
    client
        .execute(
            "SELECT pg_logical_emit_message(false, $1, '')",
            &[&heartbeat_prefix(prefix)],
        )
        .await
        .map_err(|err| classify("writing the heartbeat message", err))?;
    Ok(())
}

/// The prefix of heartbeat messages.
pub fn heartbeat_prefix(prefix: &str) -> String {
    format!("{prefix}-heartbeat")
}

/// The slot's lag in WAL bytes (`pg_current_wal_lsn() - confirmed_flush_lsn`) and whether it is
/// lost; `None` if the slot does not exist.
pub async fn lag(client: &Client, slot: &str) -> Result<Option<(i64, bool)>> {
    let row = client
        .query_opt(
            "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::int8, \
             coalesce(wal_status = 'lost', false) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|err| classify("measuring the replication slot's lag", err))?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}
