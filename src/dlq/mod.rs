//! The dead-letter store of logical and CDC modes: a table in PostgreSQL that keeps every event
//! the sink refused for good, whole, with why and when, and the later events of its key parked
//! behind it (`on_dead_letter = "block_aggregate"`), until an operator retries or skips it.
//!
//! Polling mode needs none of this: its outbox row is the event and keeps the dead letter's
//! state. A replication stream is read once, so logical mode keeps what it cannot deliver here,
//! where confirming the slot past it loses nothing.
//!
//! One table, `<schema>.outboxd_dead_letters` (the schema of `source.table`), holds the letters
//! of every relay configuration against the database, each under its slot's name. A row is
//! `dead` (refused; blocks its key), `parked` (a later event of a blocked key, or a dead letter
//! an operator retried: handed out again once no `dead` row of its key precedes it) or
//! `skipped` (dropped on purpose, kept for the record).

mod rows;

pub use rows::{Letter, Ready};

use crate::config::SourceConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Event, Rejected};
use crate::pg::{classify, quote_ident};
use tokio_postgres::Client;

/// Which dead letters an operator names.
#[derive(Clone, Debug)]
pub enum Which {
    /// One event, by id.
    Id(String),
    /// Every dead letter of one key.
    Key(String),
    /// Every dead letter.
    All,
}

/// The store of one relay configuration (one slot).
#[derive(Clone, Debug)]
pub struct Store {
    /// The table, schema-qualified and quoted.
    table: String,
    /// The slot whose letters this is.
    slot: String,
}

/// Starts a transaction on `client`, so that several writes to the store land together or not
/// at all (a session lost on the way takes the transaction with it).
pub async fn begin(client: &Client) -> Result<()> {
    client
        .batch_execute("BEGIN")
        .await
        .map_err(|err| classify("starting a dead-letter store transaction", err))
}

/// Commits the transaction [`begin`] started.
pub async fn commit(client: &Client) -> Result<()> {
    client
        .batch_execute("COMMIT")
        .await
        .map_err(|err| classify("committing to the dead-letter store", err))
}

impl Store {
    /// The store for `source`'s slot, in the schema of `source.table`.
    pub fn new(source: &SourceConfig) -> Store {
        Store {
            table: format!("{}.outboxd_dead_letters", quote_ident(&source.table.schema)),
            slot: source.logical.slot.clone(),
        }
    }

    /// Creates the table and its index if missing (`outboxd migrate`, `auto_migrate`).
    pub async fn create(&self, client: &Client, schema: &str) -> Result<()> {
        let table = &self.table;
        let sql = format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {table} (
                 seq             bigserial   PRIMARY KEY,
                 slot            text        NOT NULL,
                 state           text        NOT NULL
                                 CHECK (state IN ('dead', 'parked', 'skipped')),
                 event_id        text        NOT NULL,
                 key             text,
                 origin          text        NOT NULL,
                 operation       text        NOT NULL,
                 type            text        NOT NULL,
                 position        bigint      NOT NULL,
                 event           text,
                 reason          text,
                 attempts        integer     NOT NULL DEFAULT 0,
                 first_failed_at timestamptz,
                 last_failed_at  timestamptz,
                 parked_at       timestamptz,
                 retried_at      timestamptz,
                 skipped_at      timestamptz
             );
             CREATE INDEX IF NOT EXISTS outboxd_dead_letters_key
                 ON {table} (slot, key, seq) WHERE state <> 'skipped';",
            schema = quote_ident(schema),
        );
        client
            .batch_execute(&sql)
            .await
            .map_err(|err| classify(format!("creating the dead-letter store {table}"), err))
    }

    /// Whether the table exists (a relay without `auto_migrate` checks at start).
    pub async fn exists(&self, client: &Client) -> Result<bool> {
        let row = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&self.table])
            .await
            .map_err(|err| classify("looking for the dead-letter store", err))?;
        Ok(row.get(0))
    }

    /// Stores events the sink refused for good, with their reasons, as `dead`; returns nothing
    /// until every row is committed (the caller confirms past them only then).
    pub async fn record(&self, client: &Client, letters: &[(&Event, &str)]) -> Result<()> {
        for (event, reason) in letters {
            client
                .execute(
                    &format!(
                        "INSERT INTO {} (slot, state, event_id, key, origin, operation, type, \
                         position, event, reason, attempts, first_failed_at, last_failed_at) \
                         VALUES ($1, 'dead', $2, $3, $4, $5, $6, $7, $8, $9, $10, now(), now())",
                        self.table
                    ),
                    &[
                        &rows::params(&self.slot, event, Some(reason)).as_slice()[..],
                        &[&attempts_in(reason)],
                    ]
                    .concat(),
                )
                .await
                .map_err(|err| classify("recording a dead letter", err))?;
        }
        Ok(())
    }

    /// Stores rows the source could not turn into events (no event to keep, no key to block:
    /// the id, the position and the reason are what there is).
    pub async fn record_undecodable(&self, client: &Client, rows: &[Rejected]) -> Result<()> {
        for row in rows {
            client
                .execute(
                    &format!(
                        "INSERT INTO {} (slot, state, event_id, origin, operation, type, \
                         position, reason, attempts, first_failed_at, last_failed_at) \
                         VALUES ($1, 'dead', $2, 'undecodable', '', '', $3, $4, 1, now(), now())",
                        self.table
                    ),
                    &[&self.slot, &row.id, &(row.position.0 as i64), &row.reason],
                )
                .await
                .map_err(|err| classify("recording an undecodable row", err))?;
        }
        Ok(())
    }

    /// Whether the store holds anything of this slot that is not skipped.
    pub async fn has_rows(&self, client: &Client) -> Result<bool> {
        let row = client
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM {} WHERE slot = $1 AND state <> 'skipped')",
                    self.table
                ),
                &[&self.slot],
            )
            .await
            .map_err(|err| classify("reading the dead-letter store", err))?;
        Ok(row.get(0))
    }

    /// Parks later events of blocked keys, in the order given.
    pub async fn park(&self, client: &Client, events: &[&Event]) -> Result<()> {
        for event in events {
            client
                .execute(
                    &format!(
                        "INSERT INTO {} (slot, state, event_id, key, origin, operation, type, \
                         position, event, reason, parked_at) \
                         VALUES ($1, 'parked', $2, $3, $4, $5, $6, $7, $8, $9, now())",
                        self.table
                    ),
                    &rows::params(&self.slot, event, None).as_slice(),
                )
                .await
                .map_err(|err| classify("parking an event behind a dead letter", err))?;
        }
        Ok(())
    }

    /// The keys with a dead or parked event: later events of these wait in the store.
    pub async fn blocked_keys(&self, client: &Client) -> Result<Vec<String>> {
        let rows = client
            .query(
                &format!(
                    "SELECT DISTINCT key FROM {} WHERE slot = $1 AND state <> 'skipped' \
                     AND key IS NOT NULL",
                    self.table
                ),
                &[&self.slot],
            )
            .await
            .map_err(|err| classify("reading the dead-letter store", err))?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Up to `limit` parked events that may go out now (no dead letter of their key before
    /// them), oldest first, skipping `exclude` (already handed out).
    pub async fn ready(&self, client: &Client, limit: i64, exclude: &[i64]) -> Result<Vec<Ready>> {
        let rows = client
            .query(
                &format!(
                    "SELECT s.seq, s.event FROM {t} s \
                     WHERE s.slot = $1 AND s.state = 'parked' AND NOT (s.seq = ANY($3)) \
                       AND NOT EXISTS (SELECT 1 FROM {t} d WHERE d.slot = s.slot \
                           AND d.key = s.key AND d.state = 'dead' AND d.seq < s.seq) \
                     ORDER BY s.seq LIMIT $2",
                    t = self.table
                ),
                &[&self.slot, &limit, &exclude],
            )
            .await
            .map_err(|err| classify("reading parked events", err))?;
        rows.iter().map(rows::ready).collect()
    }

    /// Removes delivered events; returns the keys left with nothing in the store.
    pub async fn delivered(&self, client: &Client, seqs: &[i64]) -> Result<Vec<String>> {
        let rows = client
            .query(
                &format!(
                    "WITH gone AS (DELETE FROM {t} WHERE slot = $1 AND seq = ANY($2) \
                         RETURNING key) \
                     SELECT DISTINCT g.key FROM gone g WHERE NOT EXISTS (SELECT 1 FROM {t} s \
                         WHERE s.slot = $1 AND s.key = g.key AND s.state <> 'skipped' \
                         AND NOT (s.seq = ANY($2)))",
                    t = self.table
                ),
                &[&self.slot, &seqs],
            )
            .await
            .map_err(|err| classify("removing delivered dead letters", err))?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// A retried event refused again: dead once more, one more attempt, the new reason.
    pub async fn failed_again(&self, client: &Client, seq: i64, reason: &str) -> Result<()> {
        client
            .execute(
                &format!(
                    "UPDATE {} SET state = 'dead', reason = $3, attempts = attempts + 1, \
                     last_failed_at = now(), first_failed_at = coalesce(first_failed_at, now()) \
                     WHERE slot = $1 AND seq = $2",
                    self.table
                ),
                &[&self.slot, &seq, &reason],
            )
            .await
            .map_err(|err| classify("recording a failed retry", err))?;
        Ok(())
    }

    /// Dead letters (and with `all`, parked and skipped events too), oldest first.
    pub async fn list(&self, client: &Client, all: bool) -> Result<Vec<Letter>> {
        let filter = if all { "" } else { " AND state = 'dead'" };
        self.select(client, filter, None).await
    }

    /// One event of the store by id (the newest row if it failed more than once).
    pub async fn show(&self, client: &Client, id: &str) -> Result<Option<Letter>> {
        Ok(self
            .select(client, " AND event_id = $2", Some(id))
            .await?
            .pop())
    }

    /// Hands the named dead letters back to the relay (in their key's order, before any later
    /// event of the key); returns how many.
    pub async fn retry(&self, client: &Client, which: &Which) -> Result<u64> {
        // A row that never became an event has nothing to deliver.
        let set = "state = 'parked', retried_at = now()";
        self.change(client, which, set, "'dead' AND event IS NOT NULL")
            .await
    }

    /// Drops the named dead letters on purpose; later events of their keys flow. Returns how
    /// many.
    pub async fn skip(&self, client: &Client, which: &Which) -> Result<u64> {
        self.change(
            client,
            which,
            "state = 'skipped', skipped_at = now()",
            "'dead'",
        )
        .await
    }

    /// Applies `set` to the rows in state `from` that `which` names.
    async fn change(&self, client: &Client, which: &Which, set: &str, from: &str) -> Result<u64> {
        let (filter, value) = match which {
            Which::Id(id) => (" AND event_id = $2", Some(id.as_str())),
            Which::Key(key) => (" AND key = $2", Some(key.as_str())),
            Which::All => ("", None),
        };
        let sql = format!(
            "UPDATE {} SET {set} WHERE slot = $1 AND state = {from}{filter}",
            self.table
        );
        let result = match value {
            Some(value) => client.execute(&sql, &[&self.slot, &value]).await,
            None => client.execute(&sql, &[&self.slot]).await,
        };
        result.map_err(|err| classify("changing dead letters", err))
    }

    /// Rows of this slot matching `filter` (with `$2` bound to `value`), oldest first.
    async fn select(
        &self,
        client: &Client,
        filter: &str,
        value: Option<&str>,
    ) -> Result<Vec<Letter>> {
        let sql = format!(
            "SELECT {} FROM {} WHERE slot = $1{filter} ORDER BY seq",
            rows::COLUMNS,
            self.table
        );
        let result = match value {
            Some(value) => client.query(&sql, &[&self.slot, &value]).await,
            None => client.query(&sql, &[&self.slot]).await,
        };
        let found = result.map_err(|err| classify("reading the dead-letter store", err))?;
        found.iter().map(rows::letter).collect()
    }
}

/// The reason of an event that failed `relay.max_attempts` times in a row.
pub fn exhausted(attempts: i32, last: &str) -> String {
    format!("failed {attempts} times (relay.max_attempts); last error: {last}")
}

/// How many attempts a reason made by [`exhausted`] counts; one for any other refusal.
fn attempts_in(reason: &str) -> i32 {
    reason
        .strip_prefix("failed ")
        .and_then(|rest| rest.split_once(" times (relay.max_attempts)"))
        .and_then(|(count, _)| count.parse().ok())
        .unwrap_or(1)
}

/// The error for a store that `outboxd migrate` has not created.
pub fn missing(store: &Store) -> Error {
    Error::new(
        ErrorKind::Config,
        format!(
            "the dead-letter store {} does not exist; run `outboxd migrate` (or set \
             source.auto_migrate = true)",
            store.table
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exhausted_reason_counts_its_attempts_and_any_other_one() {
        assert_eq!(attempts_in(&exhausted(7, "timeout")), 7);
        assert_eq!(attempts_in("RabbitMQ refused the message"), 1);
        assert_eq!(attempts_in("failed often"), 1);
    }
}
