//! The visibility guard made visible. Polling publishes a row only once every transaction that
//! began before it has ended, so one long writing transaction holds back every later row: that
//! is correct, and looks like a hang. While it lasts, the held-back count and the oldest
//! transaction holding them (its server process id and age) are metrics, `outboxd status`
//! shows them, and a line is logged once a minute.
//!
//! Any transaction with an xid holds the guard, in any database of the cluster (xids are
//! cluster-wide), and so does a prepared transaction (reported with pid -1). A role without
//! `pg_read_all_stats` does not see other roles' transactions; none is then found (pid 0).

use crate::error::Result;
use crate::outbox::OutboxTable;
use crate::pg::classify;
use serde::Serialize;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// Least time between two look-ups of the holding transaction while rows are held back.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Least time between two log lines about one hold.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Holds shorter than this are ordinary concurrency (writers commit out of order all the
/// time) and are not logged.
const LOG_AFTER: Duration = Duration::from_secs(5);

/// The oldest open transaction, which holds the guard.
#[derive(Clone, Debug, Serialize)]
pub struct Holder {
    /// Its server process id; -1 for a prepared transaction.
    pub pid: i32,
    /// Seconds since it began (or was prepared).
    pub age_seconds: f64,
}

/// Reports holds of the visibility guard as the polling source sees them.
#[derive(Debug, Default)]
pub struct Guard {
    /// When the current hold began, while rows are held back.
    since: Option<Instant>,
    /// When the holding transaction was last looked up.
    probed: Option<Instant>,
    /// When the current hold was last logged.
    logged: Option<Instant>,
    /// The holding transaction, as last looked up.
    holder: Option<Holder>,
}

impl Guard {
    /// Records a fetch in which `held_back` rows were held back, looking up the holding
    /// transaction on `client` (at most once per [`PROBE_EVERY`]). Never fails: the guard's
    /// report is not worth stopping the relay for.
    pub async fn observe(&mut self, held_back: usize, client: &Client) {
        let metrics = crate::metrics::get();
        metrics.held_back.set(held_back as i64);
        if held_back == 0 {
            if self.since.take().is_some() && self.logged.take().is_some() {
                tracing::info!("the visibility guard no longer holds events back");
            }
            *self = Guard::default();
            metrics.holding_transaction_age.set(0.0);
            metrics.holding_transaction_pid.set(0);
            return;
        }
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);
        if self.probed.is_none_or(|at| now - at >= PROBE_EVERY) {
            self.probed = Some(now);
            match oldest_holder(client).await {
                Ok(holder) => self.holder = holder,
                Err(err) => tracing::debug!(error = %err.chain(), "cannot look up the holder"),
            }
            let (pid, age) = self
                .holder
                .as_ref()
                .map_or((0, 0.0), |h| (h.pid, h.age_seconds));
            metrics.holding_transaction_pid.set(i64::from(pid));
            metrics.holding_transaction_age.set(age);
        }
        if now - since >= LOG_AFTER && self.logged.is_none_or(|at| now - at >= LOG_EVERY) {
            self.logged = Some(now);
            let (pid, age) = self
                .holder
                .as_ref()
                .map_or((0, 0.0), |h| (h.pid, h.age_seconds));
            tracing::warn!(
                held_back,
                holding_pid = pid,
                holding_age_seconds = age,
                "the visibility guard holds {held_back} events back until the transaction of \
                 pid {pid}, open for {age:.0} s, ends (rows written after a transaction began \
                 wait for it, so none is overtaken)"
            );
        }
    }
}

/// The oldest open transaction that has an xid, in the whole cluster, including prepared
/// ones; `None` if there is none.
pub async fn oldest_holder(client: &Client) -> Result<Option<Holder>> {
    let row = client
        .query_opt(
            "SELECT pid, age_s FROM ( \
               SELECT pid, extract(epoch FROM now() - xact_start)::float8 AS age_s, \
                      age(backend_xid) AS xid_age \
               FROM pg_stat_activity \
               WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() \
               UNION ALL \
               SELECT -1, extract(epoch FROM now() - prepared)::float8, age(transaction) \
               FROM pg_prepared_xacts) AS t \
             ORDER BY xid_age DESC LIMIT 1",
            &[],
        )
        .await
        .map_err(|err| classify("looking up the oldest open transaction", err))?;
    Ok(row.map(|row| Holder {
        pid: row.get(0),
        age_seconds: row.get::<_, Option<f64>>(1).unwrap_or(0.0).max(0.0),
    }))
}

/// Pending rows the guard holds back now: written by transactions that began after the oldest
/// one still open. (The relay also holds back later rows of their aggregates; this counts
/// only the rows themselves.)
pub async fn held_back(client: &Client, table: &OutboxTable) -> Result<i64> {
    let sql = table.render(
        "SELECT count(*) FROM {table} WHERE {sent_at} IS NULL AND {failed_at} IS NULL \
         AND {txid} >= pg_snapshot_xmin(pg_current_snapshot())",
    );
    Ok(client
        .query_one(&sql, &[])
        .await
        .map_err(|err| classify("counting events held back", err))?
        .get(0))
}
