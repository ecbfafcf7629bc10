//! Versioned, idempotent schema migrations for the outbox table, and the start-up schema check.
//!
//! Migrations are SQL templates in `migrations/`, compiled into the binary and rendered with the
//! configured (quoted) names. Applied versions are recorded per outbox table in
//! `<schema>.outboxd_migrations`; a transaction-scoped advisory lock lets several relays start at
//! once without racing each other.

use crate::error::{Error, ErrorKind, Result};
use crate::outbox::OutboxTable;
use crate::pg::{classify, quote_ident};
use tokio_postgres::{Client, GenericClient};

/// One migration file.
struct Migration {
    /// Version, in application order.
    version: i32,
    /// Short name, recorded beside the version.
    name: &'static str,
    /// The SQL template.
    template: &'static str,
}

/// Every migration, oldest first.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "outbox_table",
        template: include_str!("../../migrations/0001_outbox_table.sql"),
    },
    Migration {
        version: 2,
        name: "notify_trigger",
        template: include_str!("../../migrations/0002_notify_trigger.sql"),
    },
    Migration {
        version: 3,
        name: "failed_index",
        template: include_str!("../../migrations/0003_failed_index.sql"),
    },
    Migration {
        version: 4,
        name: "dead_letters",
        template: include_str!("../../migrations/0004_dead_letters.sql"),
    },
    Migration {
        version: 5,
        name: "dead_letter_hash_index",
        template: include_str!("../../migrations/0005_dead_letter_hash_index.sql"),
    },
    Migration {
        version: 6,
        name: "payload_not_null",
        template: include_str!("../../migrations/0006_payload_not_null.sql"),
    },
    Migration {
        version: 7,
        name: "sent_index",
        template: include_str!("../../migrations/0007_sent_index.sql"),
    },
    Migration {
        version: 8,
        name: "blocked_index",
        template: include_str!("../../migrations/0008_blocked_index.sql"),
    },
];

/// The migration that installs the trigger; re-applied whenever the channel changes, and
/// applied only where the trigger is wanted (see [`OutboxTable::notify`]).
const TRIGGER_VERSION: i32 = 2;

/// The oldest PostgreSQL with `xid8` and `pg_snapshot_xmin`, which the visibility guard needs.
const MIN_SERVER_VERSION: i32 = 130_000;

/// Applies pending migrations to `table`; returns the versions applied (empty when up to date).
pub async fn migrate(client: &mut Client, table: &OutboxTable) -> Result<Vec<i32>> {
    check_server_version(client).await?;
    // An up-to-date schema needs no DDL, so a relay whose role may not create or alter anything
    // (see README, "Least privilege") can keep auto_migrate on.
    match is_current(client, table).await? {
        Some(Trigger::AsWanted) => return Ok(Vec::new()),
        Some(Trigger::Unwanted) => {
            remove_trigger_if_allowed(client, table).await;
            return Ok(Vec::new());
        }
        Some(Trigger::Missing) | None => {}
    }
    let db = |what: &str| {
        let what = what.to_string();
        move |err: tokio_postgres::Error| {
            let denied =
                err.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE);
            let err = classify(format!("migrating {}: {what}", table.qualified), err);
            if !denied {
                return err;
            }
            // A least-privileged relay (README, "Least privilege") meets a new migration
            // after an upgrade: say who can apply it, not only what failed.
            Error::new(
                ErrorKind::Schema,
                format!(
                    "{}; this role may not change the outbox table: run `outboxd migrate` once \
                     as the table's owner (this version adds migrations up to {:04})",
                    err.chain(),
                    MIGRATIONS.last().map_or(0, |m| m.version)
                ),
            )
        }
    };
    let tx = client.transaction().await.map_err(db("begin"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&(table.leader_lock_key() ^ 1)],
    )
    .await
    .map_err(db("taking the migration lock"))?;
    let schema = quote_ident(&table.schema);
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.outboxd_migrations (
             outbox     text        NOT NULL,
             version    integer     NOT NULL,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (outbox, version)
         );"
    ))
    .await
    .map_err(db("creating the migrations table"))?;
    let history = format!("{schema}.outboxd_migrations");
    let done: Vec<i32> = tx
        .query(
            &format!("SELECT version FROM {history} WHERE outbox = $1"),
            &[&table.name],
        )
        .await
        .map_err(db("reading applied migrations"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        // The trigger follows `table.notify` (see below); its migration is recorded either way.
        let skip = migration.version == TRIGGER_VERSION && !table.notify;
        if !skip {
            tx.batch_execute(&table.render(migration.template))
                .await
                .map_err(db(&format!(
                    "applying {:04}_{}",
                    migration.version, migration.name
                )))?;
        }
        tx.execute(
            &format!("INSERT INTO {history} (outbox, version, name) VALUES ($1, $2, $3)"),
            &[&table.name, &migration.version, &migration.name],
        )
        .await
        .map_err(db("recording the migration"))?;
        applied.push(migration.version);
    }
    match trigger_state(&tx, table).await? {
        Trigger::AsWanted => {}
        Trigger::Unwanted => {
            tx.batch_execute(&table.render("DROP TRIGGER IF EXISTS {trigger} ON {table}"))
                .await
                .map_err(db(
                    "removing the notify trigger (source.notify = false or logical mode)",
                ))?;
            tracing::info!(table = %table.qualified, "notify trigger removed");
        }
        Trigger::Missing => {
            let trigger = MIGRATIONS
                .iter()
                .find(|m| m.version == TRIGGER_VERSION)
                .expect("listed");
            tx.batch_execute(&table.render(trigger.template))
                .await
                .map_err(db(
                    "installing the notify trigger for the configured channel",
                ))?;
        }
    }
    tx.commit().await.map_err(db("commit"))?;
    Ok(applied)
}

/// Removes a NOTIFY trigger that is no longer wanted (logical mode, or `source.notify =
/// false`) from an otherwise current schema. Only the table's owner may; for a least-privileged
/// role that is a warning, not a failure: capture works with the trigger, only two-phase commit
/// does not.
async fn remove_trigger_if_allowed(client: &Client, table: &OutboxTable) {
    let drop = table.render("DROP TRIGGER IF EXISTS {trigger} ON {table}");
    match client.batch_execute(&drop).await {
        Ok(()) => tracing::info!(table = %table.qualified, "notify trigger removed"),
        Err(err) => tracing::warn!(error = %err, table = %table.qualified,
            "the NOTIFY trigger is still installed, so transactions that write events cannot \
             PREPARE TRANSACTION; have the table's owner run: {drop}"),
    }
}

/// The trigger's state if every migration is recorded for `table`; `None` if some is not.
async fn is_current(client: &Client, table: &OutboxTable) -> Result<Option<Trigger>> {
    let history = format!("{}.outboxd_migrations", quote_ident(&table.schema));
    let exists: Option<String> = client
        .query_one("SELECT to_regclass($1)::text", &[&history])
        .await
        .map_err(|err| classify("looking for the migrations table", err))?
        .get(0);
    if exists.is_none() {
        return Ok(None);
    }
    let done: Vec<i32> = client
        .query(
            &format!("SELECT version FROM {history} WHERE outbox = $1"),
            &[&table.name],
        )
        .await
        .map_err(|err| classify("reading applied migrations", err))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if MIGRATIONS.iter().any(|m| !done.contains(&m.version)) {
        return Ok(None);
    }
    Ok(Some(trigger_state(client, table).await?))
}

/// The notify trigger compared with what `table.notify` asks for.
#[derive(Debug, PartialEq, Eq)]
enum Trigger {
    /// Present on the configured channel while wanted, or absent while not.
    AsWanted,
    /// Wanted, but absent or on another channel.
    Missing,
    /// Present although not wanted (logical mode, or `source.notify = false`).
    Unwanted,
}

/// Whether the notify trigger is as `table.notify` asks.
async fn trigger_state(client: &impl GenericClient, table: &OutboxTable) -> Result<Trigger> {
    let (trigger, channel) = (table.render("{trigger}"), table.render("{channel}"));
    // Rendered values are quoted; the catalog holds them bare.
    let bare = |quoted: &str, quote: char| {
        let inner = &quoted[1..quoted.len() - 1];
        inner.replace(&format!("{quote}{quote}"), &quote.to_string())
    };
    let row = client
        .query_opt(
            "SELECT tgargs FROM pg_trigger WHERE tgrelid = $1::text::regclass AND tgname = $2",
            &[&table.qualified, &bare(&trigger, '"')],
        )
        .await
        .map_err(|err| classify("reading the notify trigger", err))?;
    let expected = format!("{}\0", bare(&channel, '\''));
    let current = row
        .as_ref()
        .is_some_and(|row| row.get::<_, Vec<u8>>(0) == expected.as_bytes());
    Ok(match (table.notify, row.is_some()) {
        (true, _) if current => Trigger::AsWanted,
        (true, _) => Trigger::Missing,
        (false, true) => Trigger::Unwanted,
        (false, false) => Trigger::AsWanted,
    })
}

/// Refuses servers older than PostgreSQL 13.
async fn check_server_version(client: &Client) -> Result<()> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|err| classify("reading the server version", err))?;
    let version: i32 = row.get(0);
    if version < MIN_SERVER_VERSION {
        return Err(Error::new(
            ErrorKind::Schema,
            format!("PostgreSQL {version} is too old: outboxd needs 13 or newer (xid8 snapshots)"),
        ));
    }
    Ok(())
}

/// Checks that the outbox table exists with every configured column, so a relay started against
/// the wrong table fails at once with a message that says what to fix.
pub async fn verify(client: &Client, table: &OutboxTable, columns: &[(&str, &str)]) -> Result<()> {
    check_server_version(client).await?;
    let rows = client
        .query(
            "SELECT a.attname::text FROM pg_attribute a \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            &[&table.qualified],
        )
        .await
        .map_err(|err| classify(format!("inspecting {}", table.qualified), err))?;
    if rows.is_empty() {
        return Err(Error::new(
            ErrorKind::Schema,
            format!(
                "outbox table {} does not exist; run `outboxd migrate` or set \
                 source.auto_migrate = true",
                table.qualified
            ),
        ));
    }
    let present: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    let missing: Vec<String> = columns
        .iter()
        .filter(|(_, name)| !present.iter().any(|p| p == name))
        .map(|(key, name)| format!("\"{name}\" (source.columns.{key})"))
        .collect();
    if !missing.is_empty() {
        return Err(Error::new(
            ErrorKind::Schema,
            format!(
                "outbox table {} lacks column {}; run `outboxd migrate` or fix source.columns",
                table.qualified,
                missing.join(", ")
            ),
        ));
    }
    Ok(())
}

/// Checks that the connected role may do what the polling relay does: read pending rows, mark
/// them sent or failed (UPDATE), and in `delete` mode delete them. The error names the missing
/// privilege and the GRANT that fixes it, instead of failing later at the first acknowledgement.
pub async fn verify_privileges(client: &Client, table: &OutboxTable, delete: bool) -> Result<()> {
    let row = client
        .query_one(
            "SELECT current_user::text, has_table_privilege($1, 'SELECT'), \
             has_table_privilege($1, 'UPDATE'), has_table_privilege($1, 'DELETE')",
            &[&table.qualified],
        )
        .await
        .map_err(|err| classify(format!("checking privileges on {}", table.qualified), err))?;
    let role: String = row.get(0);
    let mut needed = vec![("SELECT", row.get::<_, bool>(1), "to read pending events")];
    needed.push(("UPDATE", row.get(2), "to mark events sent or failed"));
    if delete {
        needed.push((
            "DELETE",
            row.get(3),
            "to delete sent events (source.on_sent = \"delete\")",
        ));
    }
    if let Some((privilege, _, why)) = needed.iter().find(|(_, granted, _)| !granted) {
        let all: Vec<&str> = needed.iter().map(|(p, _, _)| *p).collect();
        return Err(Error::new(
            ErrorKind::Database,
            format!(
                "role {} lacks {privilege} on {} ({why}); grant with: GRANT {} ON {} TO {}",
                quote_ident(&role),
                table.qualified,
                all.join(", "),
                table.qualified,
                quote_ident(&role)
            ),
        ));
    }
    Ok(())
}
