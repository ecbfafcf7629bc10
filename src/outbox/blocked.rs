//! Rows marked blocked behind a dead letter (`on_dead_letter = "block_aggregate"`, migration 8):
//! marking what a fetch found waiting, and releasing the marks whose dead letter is no longer in
//! force.
//!
//! A mark only keeps a row out of the blocking fetch's index; whether a row may be delivered is
//! still decided by the fetch against the dead letters in force. So a mark set late (a fetch
//! found the row blocked just before an operator retried its dead letter) delays the row only
//! until the next [`release`], which the relay runs before its next fetch after marking rows
//! or taking the lead, and every few seconds otherwise.

use crate::outbox::OutboxTable;
use tokio_postgres::Client;

/// Marks the rows a blocking fetch found behind a dead letter: `(position, dead letter)` pairs.
pub async fn mark(
    client: &Client,
    table: &OutboxTable,
    rows: &[(i64, i64)],
) -> Result<u64, tokio_postgres::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let (positions, letters): (Vec<i64>, Vec<i64>) = rows.iter().copied().unzip();
    client
        .execute(&table.mark_blocked, &[&positions, &letters])
        .await
}

/// Clears the marks behind dead letters that are no longer in force; returns how many rows it
/// released. Read-only unless there is something to release, so the relay's fetch loop takes no
/// write lock on the table while nothing changed.
pub async fn release(client: &Client, table: &OutboxTable) -> Result<u64, tokio_postgres::Error> {
    let letters: Vec<i64> = client
        .query(&table.released_letters, &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if letters.is_empty() {
        return Ok(0);
    }
    client.execute(&table.release_blocked, &[&letters]).await
}
