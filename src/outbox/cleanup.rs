//! Deleting sent rows once their retention has passed (`source.on_sent = "mark"`), in small
//! batches so no statement holds locks for long and the table does not grow without bound.

use crate::config::SourceConfig;
use crate::error::Result;
use crate::outbox::OutboxTable;
use crate::pg::{Session, classify};
use crate::retry::sleep_or_shutdown;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Deletes up to `cleanup_batch` sent rows older than the retention, oldest first; returns how
/// many. Walks the sent-at index (migration 7) from its oldest entry, so a round costs what it
/// deletes, not what is kept: a round that finds nothing expired reads one index entry.
pub async fn delete_expired(
    session: &Session,
    table: &OutboxTable,
    source: &SourceConfig,
) -> Result<u64> {
    let sql = table.render(
        "DELETE FROM {table} WHERE {position} IN (SELECT {position} FROM {table} \
         WHERE {sent_at} IS NOT NULL AND {sent_at} < now() - make_interval(secs => $1) \
         ORDER BY {sent_at} LIMIT $2 FOR UPDATE SKIP LOCKED)",
    );
    let seconds = source.retention_ms as f64 / 1000.0;
    session
        .client
        .execute(&sql, &[&seconds, &source.cleanup_batch])
        .await
        .map_err(|err| classify("deleting expired sent rows", err))
}

/// Runs cleanup rounds until `shutdown`: batches back to back while there is work, then a pause
/// of `cleanup_interval_ms`. Failures are logged and retried next round.
pub fn spawn(source: SourceConfig, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let table = OutboxTable::new(&source);
        let pause = Duration::from_millis(source.cleanup_interval_ms);
        let mut session: Option<Session> = None;
        loop {
            if session.as_ref().is_none_or(Session::is_closed) {
                session = crate::pg::connect(&source).await.ok();
            }
            let mut deleted = 0;
            if let Some(open) = &session {
                match delete_expired(open, &table, &source).await {
                    Ok(count) => deleted = count,
                    Err(err) => tracing::warn!(error = %err.chain(), "cleanup failed"),
                }
            }
            if deleted > 0 {
                tracing::debug!(deleted, "deleted expired sent rows");
            }
            let wait = if deleted as i64 >= source.cleanup_batch {
                Duration::ZERO
            } else {
                pause
            };
            if !sleep_or_shutdown(wait, &shutdown).await {
                return;
            }
        }
    })
}
