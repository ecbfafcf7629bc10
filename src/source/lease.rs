//! The leader's lease: what lets a standby take over from a leader that is alive but stalled
//! (paused, frozen, stuck in a long pause), and what keeps a deposed leader from publishing.
//!
//! The advisory lock alone elects only by connection: a paused process keeps its session, so
//! its lock, for as long as it is paused. So the leader renews a lease by running a statement
//! on its leader session every quarter of `source.leader_lease_ms`; PostgreSQL records each in
//! the session's `state_change`. A standby checks the lock holder's session: one idle for longer
//! than the lease belongs to a stalled leader, and the standby terminates it
//! (`pg_terminate_backend`), which releases the lock and, with it, the fence of the old leader's
//! acknowledgements. The standby then takes the lock as usual.
//!
//! A deposed leader that resumes must not publish what the new leader delivers meanwhile:
//! each lane asks [`Leadership::confirm`] before every publish, a round trip on the leader
//! session that fails once that session was terminated. At most a publish already on the wire
//! when the pause began can repeat.

use crate::config::SourceConfig;
use crate::error::Result;
use crate::pg::{Session, classify, connect};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// Whether the session of server process `$pid` holds the leader lock `$key` (statement
/// placeholders such as `"$2"`). A macro, so that [`FENCE`], [`fenced_acknowledgement`] and the
/// lease's leadership check share one text, each with its own placeholders.
macro_rules! lock_held {
    ($pid:literal, $key:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM pg_catalog.pg_locks AS l \
             WHERE l.locktype = 'advisory' AND l.granted AND l.pid = ",
            $pid,
            " AND l.objsubid = 1 AND ((l.classid::int8 << 32) | l.objid::int8) = ",
            $key,
            ")"
        )
    };
}
pub(crate) use lock_held;

/// The lock holder's session in this database, its process id and how long it has been idle.
const HOLDER: &str = "SELECT l.pid, a.state = 'idle' AND a.state_change IS NOT NULL, \
    (extract(epoch FROM clock_timestamp() - a.state_change) * 1000)::int8 \
    FROM pg_catalog.pg_locks AS l JOIN pg_catalog.pg_stat_activity AS a ON a.pid = l.pid \
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
    AND ((l.classid::int8 << 32) | l.objid::int8) = $1 \
    AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())";

/// Whether the session of process `$1` holds the lock `$2`.
const HOLDS: &str = concat!("SELECT ", lock_held!("$1", "$2"));

/// The leader session's client, its server process id and the lock key.
type Leader = (Arc<Client>, i32, i64);

/// The current leader session, as lanes see it.
#[derive(Clone, Default)]
pub struct Leadership {
    /// The leader session, while this relay leads.
    current: Arc<Mutex<Option<Leader>>>,
}

impl Leadership {
    /// Records that this relay leads through `session` (process `pid`, lock `key`).
    pub fn lead(&self, session: &Session, pid: i32, key: i64) {
        *self.lock() = Some((session.client.clone(), pid, key));
    }

    /// Records that this relay no longer leads.
    pub fn lose(&self) {
        *self.lock() = None;
    }

    /// Whether this relay still leads, asked of the server: the leader session answers and
    /// still holds the lock. A terminated or paused-and-deposed session answers no.
    pub async fn confirm(&self) -> bool {
        let Some((client, pid, key)) = self.lock().clone() else {
            return false;
        };
        match client.query_one(HOLDS, &[&pid, &key]).await {
            Ok(row) => row.get(0),
            Err(err) => {
                tracing::debug!(error = %err, "leadership check failed");
                false
            }
        }
    }

    /// The guarded state; a poisoned lock still holds a usable value.
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Leader>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Renews the lease on the leader session until dropped: a cheap statement every quarter of
/// `lease`, which PostgreSQL records as the session's `state_change`.
pub struct Renewal {
    /// The renewing task.
    task: JoinHandle<()>,
}

impl Renewal {
    /// Starts renewing on `session`'s client.
    pub fn start(session: &Session, lease: Duration) -> Self {
        let client = session.client.clone();
        let every = lease / 4;
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if client.simple_query("SELECT 1").await.is_err() {
                    return;
                }
            }
        });
        Renewal { task }
    }
}

impl Drop for Renewal {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// While this relay stands by for lock `key`: every quarter of the lease, looks at the lock
/// holder's session and terminates it once it has been idle longer than `lease` (its relay
/// stopped renewing). Returns when `stop` is cancelled; never returns an error (a failed check
/// is logged and tried again).
pub async fn depose_stalled(
    config: &SourceConfig,
    key: i64,
    lease: Duration,
    stop: &CancellationToken,
) {
    let mut session: Option<Session> = None;
    let mut refused = false;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(lease / 4) => {}
        }
        let client = match &session {
            Some(open) if !open.is_closed() => open.client.clone(),
            _ => match connect(config).await {
                Ok(open) => session.insert(open).client.clone(),
                Err(err) => {
                    tracing::debug!(error = %err.chain(), "cannot check the leader's lease");
                    continue;
                }
            },
        };
        match check(&client, key, lease).await {
            Ok(Some(pid)) => {
                tracing::warn!(
                    leader_pid = pid,
                    lease_ms = lease.as_millis() as u64,
                    "the active relay stopped renewing its lease (paused or stalled); \
                     terminating its session to take over"
                );
                let terminated = client
                    .query_one("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .map(|row| row.get::<_, bool>(0));
                if !matches!(terminated, Ok(true)) && !refused {
                    refused = true;
                    tracing::warn!(
                        leader_pid = pid,
                        "cannot terminate the stalled leader's session: grant this role \
                         pg_signal_backend (or run every relay as the same role)"
                    );
                }
            }
            Ok(None) => {}
            Err(err) => {
                session = None;
                tracing::debug!(error = %err.chain(), "cannot check the leader's lease");
            }
        }
    }
}

/// The lock holder's process id if its session has been idle for longer than `lease`.
async fn check(client: &Client, key: i64, lease: Duration) -> Result<Option<i32>> {
    let row = client
        .query_opt(HOLDER, &[&key])
        .await
        .map_err(|err| classify("checking the leader's lease", err))?;
    Ok(row.and_then(|row| {
        let (pid, idle, idle_ms): (i32, bool, Option<i64>) = (row.get(0), row.get(1), row.get(2));
        (idle && idle_ms.unwrap_or(0) > lease.as_millis() as i64).then_some(pid)
    }))
}
