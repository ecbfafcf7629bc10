//! Marking delivered rows sent (or deleting them) in the background, on sessions of their own.
//!
//! Marking a batch of 1,000 rows sent took ~18 ms of PostgreSQL's time in the benchmark, far
//! more than fetching the next batch (~3 ms). On the leader session the two queued behind each
//! other; here the acknowledgements run on [`SESSIONS`] other sessions, in parallel with the
//! fetches and with each other (they touch disjoint rows).
//!
//! The polling source keeps acknowledged events *in flight* until their statement committed,
//! so their aggregates stay out of its fetches and nothing is handed out twice meanwhile. A
//! crash before the commit leaves them pending, to be delivered again: the same as a crash
//! before acknowledging.
//!
//! Each statement is fenced (see `leader::fenced_acknowledgement`): it changes rows only while
//! this relay's leader session holds the lock, and says whether the fence held. One fenced out
//! (the leader session died while the statement waited, e.g. for a table lock) changed nothing;
//! its events were delivered, so it is run again under this relay's next leader session instead
//! of being reported, and the events stay in flight meanwhile: they are neither taken as
//! acknowledged nor fetched and delivered again.

use crate::config::{RelayConfig, SourceConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::event::Position;
use crate::pg::{Session, classify};
use crate::retry::{Backoff, sleep_or_shutdown};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

/// Sessions acknowledging at once. Two, since beyond that PostgreSQL's own work on a 2-core
/// machine gained nothing; each is opened on first use.
const SESSIONS: usize = 2;

/// Acknowledgements sent and not yet committed before [`Acker::send`] waits for one.
pub const MAX_OUTSTANDING: usize = 2 * SESSIONS;

/// How often an acknowledgement looks for a leader session while there is none.
const LEADER_POLL: Duration = Duration::from_millis(100);

/// How long [`Acker::finish`] waits for outstanding acknowledgements at shutdown.
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Whose leadership an acknowledgement needs (see `leader::FENCE`).
#[derive(Clone, Debug)]
pub struct Fence {
    /// The leader session's server process id; 0 while there is none.
    pub leader_pid: Arc<AtomicI32>,
    /// The leader lock's key.
    pub lock_key: i64,
}

/// What a worker reports for one acknowledgement: the positions its statement covered once it
/// committed, or an error no retry can fix.
pub type Done = Result<Vec<Position>>;

/// Runs acknowledgements on background sessions and reports each once committed.
pub struct Acker {
    /// Acknowledgements to run: the positions, as `int8` for the statement.
    jobs: mpsc::Sender<Vec<Position>>,
    /// Committed (or failed for good) acknowledgements.
    done: mpsc::UnboundedReceiver<Done>,
    /// Acknowledgements sent and not yet reported.
    outstanding: usize,
    /// Stops the workers' retries (on drop, or when [`Acker::finish`] gave up).
    stop: CancellationToken,
    /// The leadership acknowledgements need.
    fence: Fence,
}

impl Acker {
    /// Starts the workers, which run `statement` (`$1` an `int8[]` of positions, `$2` and `$3`
    /// the leader's process id and lock key from `fence`) on sessions opened from `config`.
    pub fn start(
        config: &SourceConfig,
        relay: &RelayConfig,
        statement: String,
        fence: Fence,
    ) -> Self {
        let (jobs, queue) = mpsc::channel::<Vec<Position>>(MAX_OUTSTANDING);
        let (report, done) = mpsc::unbounded_channel();
        let queue = Arc::new(Mutex::new(queue));
        let statement: Arc<str> = statement.into();
        let stop = CancellationToken::new();
        for _ in 0..SESSIONS {
            let worker = Worker {
                config: config.clone(),
                relay: relay.clone(),
                statement: statement.clone(),
                fence: fence.clone(),
                session: None,
            };
            tokio::spawn(worker.run(queue.clone(), report.clone(), stop.clone()));
        }
        Acker {
            jobs,
            done,
            outstanding: 0,
            stop,
            fence,
        }
    }

    /// Queues an acknowledgement, first waiting for an earlier one (handed to `settle`) while
    /// [`MAX_OUTSTANDING`] are under way.
    pub async fn send(
        &mut self,
        positions: Vec<Position>,
        mut settle: impl FnMut(Vec<Position>),
    ) -> Result<()> {
        while self.outstanding >= MAX_OUTSTANDING {
            let done = self.next().await?;
            settle(done);
        }
        self.outstanding += 1;
        if self.jobs.send(positions).await.is_err() {
            return Err(Error::new(
                ErrorKind::Internal,
                "the acknowledging sessions stopped",
            ));
        }
        Ok(())
    }

    /// Acknowledgements that committed since the last call, without waiting.
    pub fn ready(&mut self) -> Result<Vec<Vec<Position>>> {
        let mut committed = Vec::new();
        while let Ok(done) = self.done.try_recv() {
            self.outstanding -= 1;
            committed.push(done?);
        }
        Ok(committed)
    }

    /// Waits for the next acknowledgement to commit; pending for ever while none is under way
    /// (for use in a `select!`).
    pub async fn next(&mut self) -> Result<Vec<Position>> {
        if self.outstanding == 0 {
            return std::future::pending().await;
        }
        let done =
            self.done.recv().await.ok_or_else(|| {
                Error::new(ErrorKind::Internal, "the acknowledging sessions stopped")
            })?;
        self.outstanding -= 1;
        done
    }

    /// Waits (at most [`FINISH_TIMEOUT`]) until every acknowledgement sent has committed,
    /// handing each to `settle`; returns how many were given up. Without a leader session
    /// nothing can land any more, so it does not wait at all.
    pub async fn finish(&mut self, mut settle: impl FnMut(Vec<Position>)) -> usize {
        let deadline = tokio::time::Instant::now() + FINISH_TIMEOUT;
        while self.outstanding > 0 && self.fence.leader_pid.load(Ordering::Acquire) != 0 {
            match tokio::time::timeout_at(deadline, self.next()).await {
                Ok(Ok(done)) => settle(done),
                Ok(Err(err)) => {
                    tracing::error!(error = %err.chain(), "acknowledging delivered events failed");
                }
                Err(_) => break,
            }
        }
        self.stop.cancel();
        self.outstanding
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One background session and how to reopen it.
struct Worker {
    /// Where to connect.
    config: SourceConfig,
    /// Retry timing.
    relay: RelayConfig,
    /// The acknowledging statement.
    statement: Arc<str>,
    /// The leadership it needs.
    fence: Fence,
    /// The open session, if any.
    session: Option<Session>,
}

impl Worker {
    /// Takes acknowledgements off `queue` until it closes or `stop` is cancelled.
    async fn run(
        mut self,
        queue: Arc<Mutex<mpsc::Receiver<Vec<Position>>>>,
        report: mpsc::UnboundedSender<Done>,
        stop: CancellationToken,
    ) {
        loop {
            let job = tokio::select! {
                _ = stop.cancelled() => return,
                job = async { queue.lock().await.recv().await } => job,
            };
            let Some(positions) = job else { return };
            let Some(done) = self.acknowledge(positions, &stop).await else {
                return;
            };
            if report.send(done).is_err() {
                return;
            }
        }
    }

    /// Runs the statement for `positions` until it commits, reconnecting with backoff while the
    /// error may heal; `None` if `stop` came first.
    async fn acknowledge(
        &mut self,
        positions: Vec<Position>,
        stop: &CancellationToken,
    ) -> Option<Done> {
        let values: Vec<i64> = positions.iter().map(|p| p.0 as i64).collect();
        let statement = self.statement.clone();
        let mut backoff = Backoff::from_config(&self.relay);
        let lock_key = self.fence.lock_key;
        // The leader session an earlier try was fenced out under: it lost the lock, so only a
        // later leader session can acknowledge.
        let mut fenced_out = 0;
        loop {
            // Between leaders (the leader session is being re-opened) the statement could not
            // land: wait for the next one.
            let pid = match self.fence.leader_pid.load(Ordering::Acquire) {
                pid if pid == fenced_out => 0,
                pid => pid,
            };
            let result = if pid == 0 {
                Err(Error::new(
                    ErrorKind::Transient,
                    "waiting for the leader session to acknowledge",
                ))
            } else {
                match self.session().await {
                    Ok(session) => session
                        .client
                        .query_one(&*statement, &[&values, &pid, &lock_key])
                        .await
                        .map_err(|err| classify("acknowledging delivered events", err)),
                    Err(err) => Err(err),
                }
            };
            let err = match result {
                Ok(row) if row.get::<_, bool>(0) => {
                    let changed: Vec<i64> = row.get(1);
                    if changed.len() < positions.len() {
                        // The others are no longer pending (another relay marked them, or
                        // they were deleted): nothing is left to acknowledge for them.
                        tracing::debug!(
                            events = positions.len(),
                            changed = changed.len(),
                            "some delivered events were no longer pending"
                        );
                    }
                    return Some(Ok(positions));
                }
                Ok(_) => {
                    // The leader session lost its lock while the statement waited: it changed
                    // nothing. The events stay in flight (delivered, not yet acknowledged) and
                    // are acknowledged under this relay's next leader session, so they are
                    // neither lost nor fetched and delivered a second time.
                    tracing::warn!(
                        events = positions.len(),
                        leader_pid = pid,
                        "acknowledgement fenced out: the leader session lost its lock; \
                         retrying under the next leader session"
                    );
                    fenced_out = pid;
                    Error::new(ErrorKind::Transient, "acknowledgement fenced out")
                }
                Err(err) if err.is_retryable() => err,
                Err(err) => return Some(Err(err)),
            };
            let delay = if pid == 0 || fenced_out == pid {
                // Normal while the leader session is re-opened, and for as long as another relay
                // leads: nothing has failed, so no backoff grows meanwhile.
                tracing::debug!("acknowledgement waits for a leader session");
                LEADER_POLL
            } else {
                self.session = None;
                let delay = backoff.next_delay();
                tracing::warn!(error = %err.chain(), retry_in_ms = delay.as_millis() as u64,
                    "acknowledging delivered events failed; retrying");
                delay
            };
            if !sleep_or_shutdown(delay, stop).await {
                return None;
            }
        }
    }

    /// The open session, connecting first if there is none or it closed.
    async fn session(&mut self) -> Result<&Session> {
        let session = match self.session.take() {
            Some(session) if !session.is_closed() => session,
            _ => crate::pg::connect(&self.config).await?,
        };
        Ok(self.session.insert(session))
    }
}
