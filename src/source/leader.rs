//! Leader election: one active relay per outbox table, the others on hot standby.
//!
//! The active relay holds a session-level advisory lock on a dedicated connection and runs every
//! fetch on that connection; acknowledgements run on other sessions, guarded by [`FENCE`]. If the
//! process dies or the connection drops, PostgreSQL releases the lock and a standby, blocked in
//! `pg_advisory_lock`, takes over at once. A relay that lost its connection cannot acknowledge
//! anything any more (fencing); at worst it delivers its in-flight batch a second time, never
//! out of order with a newer leader's acks.

use super::lease::lock_held;
use crate::config::SourceConfig;
use crate::error::Result;
use crate::outbox::OutboxTable;
use crate::pg::{Session, classify, connect, quote_ident};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Appended to an acknowledging statement's `WHERE` clause: it changes rows only while the
/// session of server process `$2` holds the leader lock `$3`. Acknowledgements run on sessions
/// other than the leader's, and must not land once that session lost the lock.
pub const FENCE: &str = concat!(" AND ", lock_held!("$2", "$3"));

/// Wraps an acknowledging statement (`UPDATE`/`DELETE … WHERE …`, `$1` its positions) so that
/// it changes rows only under the fence, and reports what it did: one row with whether the
/// fence held (evaluated once, after the statement got its table lock) and the positions it
/// changed, named by the quoted `position` column.
///
/// A fenced-out acknowledgement changes nothing; the caller must not take its events as
/// acknowledged (they are still pending in the table).
pub fn fenced_acknowledgement(statement: &str, position: &str) -> String {
    format!(
        "WITH fence AS MATERIALIZED (SELECT {held} AS held), \
         done AS ({statement} AND (SELECT held FROM fence) RETURNING {position}) \
         SELECT (SELECT held FROM fence), \
         coalesce(array_agg(done.{position}), '{{}}'::int8[]) FROM done",
        held = lock_held!("$2", "$3"),
    )
}

/// Connects, waits to become the leader, and subscribes to the table's channel. Returns the
/// session and its server process id, which holds the lock (see [`FENCE`]).
///
/// Returns `Ok(None)` if `shutdown` is cancelled while standing by.
pub async fn become_leader(
    source: &SourceConfig,
    table: &OutboxTable,
    shutdown: &CancellationToken,
) -> Result<Option<(Session, i32)>> {
    let session = connect(source).await?;
    crate::metrics::get().source_up.set(1);
    // Lets the server notice a vanished client while it waits for the lock (PostgreSQL 14+),
    // instead of granting the lock to a dead session.
    let _ = session
        .client
        .batch_execute("SET client_connection_check_interval = '1s'")
        .await;
    // The fetch excludes a list of aggregates (those in flight or parked); PostgreSQL looks a
    // list up by hash only when it is a constant at planning time, i.e. in a custom plan.
    let _ = session
        .client
        .batch_execute("SET plan_cache_mode = force_custom_plan")
        .await;
    let key = table.leader_lock_key();
    let row = session
        .client
        .query_one("SELECT pg_try_advisory_lock($1), pg_backend_pid()", &[&key])
        .await
        .map_err(|err| classify("trying the leader lock", err))?;
    let (won, pid): (bool, i32) = (row.get(0), row.get(1));
    if !won {
        tracing::info!(table = %table.qualified, "another relay is active; standing by");
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&key];
        // Meanwhile, a leader that stopped renewing its lease is deposed (see `lease`).
        let lease = Duration::from_millis(source.leader_lease_ms);
        let stop_checking = CancellationToken::new();
        let checking = async {
            if lease.is_zero() {
                std::future::pending::<()>().await;
            }
            super::lease::depose_stalled(source, key, lease, &stop_checking).await;
        };
        tokio::pin!(checking);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(None),
            locked = session.client.query_one("SELECT pg_advisory_lock($1)", &params) => {
                locked.map_err(|err| classify("waiting for the leader lock", err))?;
            }
            _ = &mut checking => {}
        }
        stop_checking.cancel();
    }
    // Without the trigger (`source.notify = false`) nothing is sent on the channel.
    if table.notify {
        session
            .client
            .batch_execute(&format!("LISTEN {}", quote_ident(&source.channel())))
            .await
            .map_err(|err| classify("subscribing to the outbox channel", err))?;
    }
    tracing::info!(table = %table.qualified, channel = %source.channel(), "active relay for table");
    crate::metrics::get().relay_active.set(1);
    Ok(Some((session, pid)))
}

/// The relay holding a table's leader lock, as PostgreSQL sees its session.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ActiveRelay {
    /// The session's `application_name` (`source.application_name` unless the URL sets one).
    pub application_name: Option<String>,
    /// The client's address; `None` over a Unix socket.
    pub client_addr: Option<String>,
    /// The client's host name, if the server resolves names (`log_hostname`).
    pub client_hostname: Option<String>,
    /// The server process id of the leader session.
    pub pid: i32,
    /// When the leader session connected: the relay became active at or after this time.
    pub session_started_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Which relay holds `table`'s leader lock, if any, and how many stand by waiting for it.
///
/// Reads `pg_locks` joined to `pg_stat_activity`; a role that is neither superuser nor member of
/// `pg_read_all_stats` sees other roles' sessions without application name or address.
pub async fn who_leads(
    client: &tokio_postgres::Client,
    table: &OutboxTable,
) -> Result<(Option<ActiveRelay>, i64)> {
    let rows = client
        .query(
            "SELECT l.granted, a.application_name::text, host(a.client_addr), \
             a.client_hostname::text, l.pid, a.backend_start \
             FROM pg_catalog.pg_locks AS l \
             LEFT JOIN pg_catalog.pg_stat_activity AS a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.objsubid = 1 \
             AND l.database = (SELECT oid FROM pg_catalog.pg_database \
                               WHERE datname = current_database()) \
             AND ((l.classid::int8 << 32) | l.objid::int8) = $1",
            &[&table.leader_lock_key()],
        )
        .await
        .map_err(|err| classify("looking up the active relay", err))?;
    let waiting = rows.iter().filter(|row| !row.get::<_, bool>(0)).count() as i64;
    let active = rows
        .iter()
        .find(|row| row.get::<_, bool>(0))
        .map(|row| ActiveRelay {
            application_name: row.get(1),
            client_addr: row.get(2),
            client_hostname: row.get(3),
            pid: row.get(4),
            session_started_at: row.get(5),
        });
    Ok((active, waiting))
}
