//! Numbers about the outbox table itself: pending events, the oldest one's age, dead letters and
//! the last publish. Sampled into metrics while the relay runs, and printed by `outboxd status`.

use crate::config::SourceConfig;
use crate::error::Result;
use crate::outbox::OutboxTable;
use crate::pg::classify;
use crate::retry::sleep_or_shutdown;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// A snapshot of the outbox's state.
#[derive(Clone, Debug, Serialize)]
pub struct OutboxStats {
    /// Events waiting to be delivered: exact up to [`PENDING_COUNTED_UP_TO`], an estimate
    /// beyond (see [`Self::pending_estimated`]).
    pub pending: i64,
    /// Whether [`Self::pending`] is estimated: the span of positions from the oldest pending
    /// event to the newest, an upper bound (sent rows and dead letters in between count too).
    pub pending_estimated: bool,
    /// Of [`Self::pending`], the events waiting behind a dead letter of their aggregate (which
    /// hold back nothing else); they flow once an operator retries or skips it.
    pub pending_blocked: i64,
    /// Age of the oldest pending event in seconds, if any is pending.
    pub oldest_pending_age_seconds: Option<f64>,
    /// Dead letters still in force: failed and not skipped by an operator.
    pub dead_letters: i64,
    /// Dead letters an operator skipped (kept for the record, no longer counted above).
    pub skipped_dead_letters: i64,
    /// When the sink last confirmed an event (none in `delete` mode).
    pub last_sent_at: Option<DateTime<Utc>>,
}

/// Pending events counted one by one; beyond this, [`sample`] estimates (see
/// [`OutboxStats::pending_estimated`]), so a sample costs at most this many index entries
/// however large the backlog.
pub const PENDING_COUNTED_UP_TO: i64 = 100_000;

/// Reads the current numbers. Each query is answered from a partial or unique index and reads
/// at most [`PENDING_COUNTED_UP_TO`] pending rows, so this stays cheap however many sent rows
/// the table keeps and however long the backlog. `blocking` says whether dead letters hold
/// back their aggregate (`on_dead_letter = "block_aggregate"`); only then are events behind them
/// counted, which costs a pass over the pending rows when there is a dead letter (so `status`
/// does it, the periodic sampler does not).
pub async fn sample(client: &Client, table: &OutboxTable, blocking: bool) -> Result<OutboxStats> {
    // The oldest pending events, in position order, up to one past the cap.
    let pending = client
        .query_one(
            &table.render(
                "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8 \
                 FROM (SELECT {created_at} AS created_at FROM {table} \
                       WHERE {sent_at} IS NULL AND {failed_at} IS NULL \
                       ORDER BY {position} LIMIT $1) AS head",
            ),
            &[&(PENDING_COUNTED_UP_TO + 1)],
        )
        .await
        .map_err(|err| classify("counting pending events", err))?;
    let counted: i64 = pending.get(0);
    let (pending_count, pending_estimated) = match counted > PENDING_COUNTED_UP_TO {
        false => (counted, false),
        true => (estimate_pending(client, table).await?.max(counted), true),
    };
    // A skipped dead letter no longer blocks anything: counting it would keep an alert on
    // `outboxd_dead_letters_current` firing after the operator dealt with it.
    let dead = client
        .query_one(
            &table.render(
                "SELECT count(*) FILTER (WHERE {skipped_at} IS NULL), \
                 count(*) FILTER (WHERE {skipped_at} IS NOT NULL) \
                 FROM {table} WHERE {failed_at} IS NOT NULL",
            ),
            &[],
        )
        .await
        .map_err(|err| classify("counting failed events", err))?;
    let dead_letters: i64 = dead.get(0);
    let pending_blocked = match blocking && dead_letters > 0 {
        true => count_blocked(client, table).await?,
        false => 0,
    };
    let last_sent_at = client
        .query_opt(
            &table.render(
                "SELECT {sent_at} FROM {table} WHERE {sent_at} IS NOT NULL \
                 ORDER BY {sent_at} DESC LIMIT 1",
            ),
            &[],
        )
        .await
        .map_err(|err| classify("reading the last publish", err))?
        .map(|row| row.get(0));
    Ok(OutboxStats {
        pending: pending_count,
        pending_estimated,
        pending_blocked,
        oldest_pending_age_seconds: pending.get::<_, Option<f64>>(1).map(|age| age.max(0.0)),
        dead_letters,
        skipped_dead_letters: dead.get(1),
        last_sent_at,
    })
}

/// The span of positions from the oldest pending event to the newest: two index look-ups.
async fn estimate_pending(client: &Client, table: &OutboxTable) -> Result<i64> {
    let sql = table.render(
        "SELECT coalesce((SELECT {position} FROM {table} \
             WHERE {sent_at} IS NULL AND {failed_at} IS NULL ORDER BY {position} DESC LIMIT 1) \
           - (SELECT {position} FROM {table} \
             WHERE {sent_at} IS NULL AND {failed_at} IS NULL ORDER BY {position} LIMIT 1) + 1, 0)",
    );
    Ok(client
        .query_one(&sql, &[])
        .await
        .map_err(|err| classify("estimating pending events", err))?
        .get::<_, Option<i64>>(0)
        .unwrap_or(0))
}

/// Pending events behind a dead letter (not skipped) of their aggregate. Driven from the dead
/// letters, which are few, so it costs one pass over the pending rows at most.
async fn count_blocked(client: &Client, table: &OutboxTable) -> Result<i64> {
    let sql = table.render(
        "SELECT count(*) FROM (SELECT {aggregate_id} AS aggregate, min({position}) AS first \
         FROM {table} WHERE {failed_at} IS NOT NULL AND {skipped_at} IS NULL GROUP BY 1) AS d \
         JOIN {table} AS o ON o.{aggregate_id} = d.aggregate AND o.{position} > d.first \
         WHERE o.{sent_at} IS NULL AND o.{failed_at} IS NULL",
    );
    Ok(client
        .query_one(&sql, &[])
        .await
        .map_err(|err| classify("counting events behind dead letters", err))?
        .get(0))
}

/// Samples every `interval` into the metrics until `shutdown`, on a connection of its own so a
/// slow count never delays the relay, and logs progress while a backlog drains into `sink`
/// (see [`crate::progress`]). Failures are logged and retried at the next tick.
pub fn spawn_sampler(
    source: SourceConfig,
    interval: Duration,
    shutdown: CancellationToken,
    sink: &'static str,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let table = OutboxTable::new(&source);
        let mut session = None;
        let mut progress = crate::progress::Progress::default();
        loop {
            if session.as_ref().is_none_or(crate::pg::Session::is_closed) {
                session = crate::pg::connect(&source).await.ok();
            }
            if let Some(open) = &session {
                match sample(&open.client, &table, false).await {
                    Ok(stats) => {
                        record(&stats);
                        let delivered = crate::progress::delivered(sink);
                        let lag = stats.oldest_pending_age_seconds.unwrap_or(0.0);
                        let now = std::time::Instant::now();
                        if let Some(report) = progress.observe(now, delivered, stats.pending, lag) {
                            crate::progress::log(&report);
                        }
                    }
                    Err(err) => {
                        tracing::debug!(error = %err.chain(), "sampling outbox stats failed")
                    }
                }
            }
            if !sleep_or_shutdown(interval, &shutdown).await {
                return;
            }
        }
    })
}

/// Copies a snapshot into the gauges.
fn record(stats: &OutboxStats) {
    let metrics = crate::metrics::get();
    metrics.pending.set(stats.pending);
    metrics
        .oldest_pending_age
        .set(stats.oldest_pending_age_seconds.unwrap_or(0.0));
    metrics.dead_letters_current.set(stats.dead_letters);
}
