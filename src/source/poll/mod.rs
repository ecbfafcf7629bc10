//! The polling source: reads pending rows from the outbox table in position order, woken by
//! LISTEN/NOTIFY, with a poll interval as fallback.

mod flight;

use super::guard::Guard;
use super::leader::{become_leader, fenced_acknowledgement};
use super::lease::{Leadership, Renewal};
use super::{Batch, Exhausted, Source};
use crate::config::{OnDeadLetter, OnSent, RelayConfig, SourceConfig};
use crate::error::{Error, Result};
use crate::event::{Position, Rejected, Stored};
use crate::outbox::OutboxTable;
use crate::outbox::acker::{Acker, Fence};
use crate::outbox::blocked;
use crate::outbox::decode::{self, PendingRow};
use crate::outbox::migrate;
use crate::pg::{Session, classify, quote_ident};
use crate::retry::{Backoff, sleep_or_shutdown};
use flight::Flight;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// First re-check delay after the visibility guard held rows back; doubles up to the poll
/// interval. A held-back row waits for some other transaction to end, which need not notify.
const FIRST_RECHECK: Duration = Duration::from_millis(2);

/// How often marks behind dead letters are checked for release when nothing suggests one is
/// due: only a dead letter removed by hand (not through `outboxd dlq`, which releases its own
/// marks) needs it, and checking before every fetch cost a query per batch.
const RELEASE_INTERVAL: Duration = Duration::from_secs(10);

/// Polls the outbox table as the elected leader.
pub struct PollSource {
    /// Source settings.
    config: SourceConfig,
    /// Retry timing settings.
    relay: RelayConfig,
    /// Names and statements.
    table: OutboxTable,
    /// The leader session, once elected; `None` after it was lost.
    session: Option<Session>,
    /// Delay before re-checking rows held back by the visibility guard.
    recheck: Duration,
    /// Delays between reconnection attempts; reset by every success.
    backoff: Backoff,
    /// In-flight events and parked aggregates, which fetches leave out.
    flight: Flight,
    /// Reports rows the visibility guard holds back.
    guard: Guard,
    /// Marks delivered rows sent (or deletes them) in the background; their events stay in
    /// flight until that committed.
    acker: Acker,
    /// The leader session's server process id, 0 while there is none: acknowledgements land
    /// only while that session holds the lock.
    leader_pid: Arc<AtomicI32>,
    /// The leader session as lanes check it before publishing.
    leadership: Leadership,
    /// Renews the leader's lease while this relay leads.
    renewal: Option<Renewal>,
    /// When the marks behind dead letters are next checked for release: at once after this
    /// relay became leader or marked rows (a mark may have landed just after an operator
    /// released its dead letter), otherwise every [`RELEASE_INTERVAL`].
    release_at: Instant,
}

impl PollSource {
    /// Connects once and checks the outbox table, so configuration and schema mistakes fail
    /// start-up with a clear message. Leadership is taken by the first [`Source::next_batch`].
    pub async fn start(config: &SourceConfig, relay: &RelayConfig) -> Result<Self> {
        let table = OutboxTable::new(config);
        let session = crate::pg::connect(config).await?;
        migrate::verify(&session.client, &table, &config.columns.all()).await?;
        let delete = config.on_sent == OnSent::Delete;
        migrate::verify_privileges(&session.client, &table, delete).await?;
        crate::metrics::get().source_up.set(1);
        let acknowledge = match config.on_sent {
            OnSent::Mark => table.mark_sent.clone(),
            OnSent::Delete => table.delete_sent.clone(),
        };
        let leader_pid = Arc::new(AtomicI32::new(0));
        let fence = Fence {
            leader_pid: leader_pid.clone(),
            lock_key: table.leader_lock_key(),
        };
        Ok(PollSource {
            acker: Acker::start(
                config,
                relay,
                fenced_acknowledgement(&acknowledge, &quote_ident(&config.columns.position)),
                fence,
            ),
            leader_pid,
            config: config.clone(),
            relay: relay.clone(),
            table,
            session: None,
            recheck: FIRST_RECHECK,
            backoff: Backoff::from_config(relay),
            flight: Flight::default(),
            guard: Guard::default(),
            leadership: Leadership::default(),
            renewal: None,
            release_at: Instant::now(),
        })
    }

    /// Makes sure a leader session is open, electing (and reconnecting) as needed; `false` on
    /// shutdown.
    async fn ensure_leader(&mut self, shutdown: &CancellationToken) -> Result<bool> {
        if self.session.as_ref().is_some_and(Session::is_closed) {
            tracing::warn!("lost the connection to PostgreSQL; reconnecting");
            self.session = None;
            self.leadership.lose();
            self.renewal = None;
            self.leader_pid.store(0, Ordering::Release);
            crate::metrics::get().source_up.set(0);
            crate::metrics::get().relay_active.set(0);
        }
        while self.session.is_none() {
            match become_leader(&self.config, &self.table, shutdown).await {
                Ok(Some((session, pid))) => {
                    self.leadership
                        .lead(&session, pid, self.table.leader_lock_key());
                    self.renewal = (self.config.leader_lease_ms > 0).then(|| {
                        Renewal::start(&session, Duration::from_millis(self.config.leader_lease_ms))
                    });
                    self.session = Some(session);
                    self.release_at = Instant::now();
                    self.leader_pid.store(pid, Ordering::Release);
                    self.backoff = Backoff::from_config(&self.relay);
                }
                Ok(None) => return Ok(false),
                Err(err) => {
                    if !self.wait_after(err, shutdown).await? {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(true)
    }

    /// The leader session; call only after [`Self::ensure_leader`] returned `true`.
    fn session(&self) -> &Session {
        self.session
            .as_ref()
            .expect("ensure_leader opened a session")
    }

    /// After a failed statement: drops the session, and waits a backoff delay if the error may
    /// heal (returning `false` on shutdown), or returns the error if it will not.
    async fn wait_after(&mut self, err: Error, shutdown: &CancellationToken) -> Result<bool> {
        self.session = None;
        self.leadership.lose();
        self.renewal = None;
        self.leader_pid.store(0, Ordering::Release);
        crate::metrics::get().source_up.set(0);
        crate::metrics::get().relay_active.set(0);
        if !err.is_retryable() {
            return Err(err);
        }
        let delay = self.backoff.next_delay();
        tracing::warn!(error = %err.chain(), retry_in_ms = delay.as_millis() as u64, "postgres unavailable");
        Ok(sleep_or_shutdown(delay, shutdown).await)
    }

    /// Runs one statement with `params` on the leader session, re-electing and retrying while
    /// the error may heal. Returns its rows (none for a statement without `RETURNING`), or
    /// `None` if shutdown came first.
    async fn query_as_leader(
        &mut self,
        what: &str,
        statement: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        shutdown: &CancellationToken,
    ) -> Result<Option<Vec<tokio_postgres::Row>>> {
        loop {
            if !self.ensure_leader(shutdown).await? {
                return Ok(None);
            }
            match self.session().client.query(statement, params).await {
                Ok(rows) => return Ok(Some(rows)),
                Err(err) => {
                    if !self
                        .wait_after(classify(what.to_string(), err), shutdown)
                        .await?
                    {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Forgets the events of background acknowledgements that committed since the last call.
    fn acknowledged(&mut self) -> Result<()> {
        for positions in self.acker.ready()? {
            self.flight.settled(positions);
        }
        Ok(())
    }
}

impl Source for PollSource {
    async fn next_batch(
        &mut self,
        shutdown: &CancellationToken,
        wake: &Notify,
    ) -> Result<Option<Batch>> {
        let limit = self.config.batch_size as i64;
        let poll_interval = Duration::from_millis(self.config.poll_interval_ms);
        loop {
            if shutdown.is_cancelled() {
                return Ok(None);
            }
            if !self.ensure_leader(shutdown).await? {
                return Ok(None);
            }
            self.acknowledged()?;
            let (excluded, next_due) = self.flight.excluded_now();
            let statement = match self.relay.on_dead_letter {
                OnDeadLetter::BlockAggregate => &self.table.fetch_pending_blocking,
                OnDeadLetter::Skip => &self.table.fetch_pending,
            };
            if self.relay.on_dead_letter == OnDeadLetter::BlockAggregate
                && Instant::now() >= self.release_at
            {
                // Rows marked blocked behind a dead letter that is no longer in force (retried
                // or skipped, also while a fetch was marking them) go back to the fetch's index.
                self.release_at = Instant::now() + RELEASE_INTERVAL;
                if let Err(err) = blocked::release(&self.session().client, &self.table).await {
                    let err = classify("releasing events behind released dead letters", err);
                    if !self.wait_after(err, shutdown).await? {
                        return Ok(None);
                    }
                    continue;
                }
            }
            let session = self.session();
            let notified = session.notified.clone();
            let (max_event, max_batch) = (
                self.config.max_event_bytes as i64,
                self.config.max_batch_bytes as i64,
            );
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                [&limit, &excluded, &max_event, &max_batch];
            let rows = match session.client.query(statement, &params).await {
                Ok(rows) => rows,
                Err(err) => {
                    let err = classify("fetching pending events", err);
                    if !self.wait_after(err, shutdown).await? {
                        return Ok(None);
                    }
                    continue;
                }
            };
            let blocking = self.relay.on_dead_letter == OnDeadLetter::BlockAggregate;
            let rows = rows.iter().map(PendingRow::from_row).collect();
            let mut selection = decode::select(rows, blocking);
            self.flight.drop_unrecordable(&mut selection.rejected);
            if let Some(session) = &self.session {
                match blocked::mark(&session.client, &self.table, &selection.blocked).await {
                    // An operator may have released the dead letter while these were marked.
                    Ok(marked) if marked > 0 => self.release_at = Instant::now(),
                    Ok(_) => {}
                    Err(err) => {
                        // Nothing was handed out yet: the same rows come again after
                        // reconnecting.
                        let err = classify("marking events blocked behind a dead letter", err);
                        if !self.wait_after(err, shutdown).await? {
                            return Ok(None);
                        }
                        continue;
                    }
                }
            }
            let held_back = selection.held_back > 0;
            if let Some(session) = &self.session {
                self.guard
                    .observe(selection.held_back, &session.client)
                    .await;
            }
            if !selection.events.is_empty() || !selection.rejected.is_empty() {
                self.recheck = FIRST_RECHECK;
                self.flight.hand_out(&selection.events);
                return Ok(Some(Batch {
                    events: selection.events,
                    rejected: selection.rejected,
                }));
            }
            if !selection.blocked.is_empty() {
                // The fetch found rows blocked behind a dead letter (now marked); rows after
                // them may be deliverable, and the next fetch walks past the marked ones.
                continue;
            }
            let wait = if held_back {
                let wait = self.recheck;
                self.recheck = (wait * 2).min(poll_interval);
                wait
            } else {
                poll_interval
            };
            let wait = next_due.map_or(wait, |due| wait.min(due));
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(None),
                _ = wake.notified() => return Ok(Some(Batch::default())),
                _ = notified.notified() => {}
                // Aggregates left out while their acknowledgement ran may go again.
                done = self.acker.next() => self.flight.settled(done?),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn batch_size(&self) -> usize {
        self.config.batch_size
    }

    fn batch_bytes(&self) -> usize {
        self.config.max_batch_bytes
    }

    fn release(&mut self, positions: &[Position]) {
        self.flight.settled(positions.iter().copied());
    }

    fn leadership(&self) -> Option<Leadership> {
        Some(self.leadership.clone())
    }

    /// Parks each busy event's aggregate for a backoff that doubles with every busy round in a
    /// row (up to `relay.retry_max_ms`), so a key the broker keeps refusing is sent less and
    /// less often, and holds nothing in flight meanwhile.
    fn busy(&mut self, positions: &[Position]) {
        self.flight.busy(positions, &self.relay);
    }

    /// Queues the acknowledgement on the background sessions (see [`Acker`]); the events stay
    /// in flight, their aggregates left out of fetches, until it committed.
    async fn ack(&mut self, positions: &[Position], _shutdown: &CancellationToken) -> Result<()> {
        if positions.is_empty() {
            return Ok(());
        }
        self.acknowledged()?;
        self.flight.delivered(positions);
        let mut committed = Vec::new();
        self.acker
            .send(positions.to_vec(), |done| committed.push(done))
            .await?;
        for done in committed {
            self.flight.settled(done);
        }
        Ok(())
    }

    async fn finish(&mut self) {
        let mut committed = Vec::new();
        let left = self.acker.finish(|done| committed.push(done)).await;
        for done in committed {
            self.flight.settled(done);
        }
        if left > 0 {
            tracing::warn!(
                batches = left,
                "stopping before acknowledgements committed; their events will be delivered again"
            );
        }
    }

    async fn ack_delivered(
        &mut self,
        delivered: &[Stored],
        shutdown: &CancellationToken,
    ) -> Result<u64> {
        if delivered.is_empty() {
            return Ok(0);
        }
        let positions: Vec<i64> = delivered.iter().map(|d| d.position.0 as i64).collect();
        let ids: Vec<&str> = delivered.iter().map(|d| d.id.as_str()).collect();
        let statement = match self.config.on_sent {
            OnSent::Mark => self.table.mark_delivered.clone(),
            OnSent::Delete => self.table.delete_delivered.clone(),
        };
        let done = self
            .query_as_leader(
                "acknowledging events already in the sink",
                &statement,
                &[&positions, &ids],
                shutdown,
            )
            .await?;
        Ok(done.map_or(0, |rows| rows.len() as u64))
    }

    async fn reject(&mut self, rejected: &[Rejected], shutdown: &CancellationToken) -> Result<()> {
        if rejected.is_empty() {
            return Ok(());
        }
        let aggregates: Vec<String> = rejected
            .iter()
            .filter_map(|r| self.flight.aggregate_of(r.position).cloned())
            .collect();
        self.flight.settled(rejected.iter().map(|r| r.position));
        let positions: Vec<i64> = rejected.iter().map(|r| r.position.0 as i64).collect();
        let reasons: Vec<&str> = rejected.iter().map(|r| r.reason.as_str()).collect();
        let statement = self.table.mark_failed.clone();
        let recorded = self
            .query_as_leader(
                "marking events failed",
                &statement,
                &[&positions, &reasons],
                shutdown,
            )
            .await;
        if let Err(err) = recorded {
            // A dead letter that cannot be recorded must not stop the relay (every other
            // aggregate would stop with it): its rows stay pending, their aggregates wait, and
            // the recording is tried again after the longest retry delay.
            let ids: Vec<&str> = rejected.iter().map(|r| r.id.as_str()).collect();
            let delay = Duration::from_millis(self.relay.retry_max_ms);
            tracing::error!(error = %err.chain(), ?ids, retry_in_ms = delay.as_millis() as u64,
                "cannot record dead letters; their aggregates wait and recording is retried");
            let until = Instant::now() + delay;
            self.flight.unrecordable(&positions, aggregates, until);
        }
        Ok(())
    }

    async fn retry_later(
        &mut self,
        failed: &[Rejected],
        shutdown: &CancellationToken,
    ) -> Result<Vec<Exhausted>> {
        if failed.is_empty() {
            return Ok(Vec::new());
        }
        self.flight.settled(failed.iter().map(|r| r.position));
        let positions: Vec<i64> = failed.iter().map(|r| r.position.0 as i64).collect();
        let reasons: Vec<&str> = failed.iter().map(|r| r.reason.as_str()).collect();
        let statement = self.table.mark_retry.clone();
        let max = self.relay.max_attempts;
        let what = "recording failed attempts";
        let Some(rows) = self
            .query_as_leader(what, &statement, &[&positions, &reasons, &max], shutdown)
            .await?
        else {
            return Ok(Vec::new());
        };
        let (initial, cap) = (
            self.relay.retry_initial_ms as f64,
            self.relay.retry_max_ms as f64,
        );
        let mut exhausted = Vec::new();
        for row in rows {
            let (position, attempts, dead): (i64, i32, bool) = (row.get(0), row.get(1), row.get(2));
            let aggregate: Option<String> = row.get(3);
            if dead {
                exhausted.push(Exhausted {
                    position: Position(position as u64),
                    attempts,
                });
                crate::metrics::get().dead_letters.inc();
                tracing::error!(
                    position,
                    attempts,
                    aggregate = aggregate.as_deref().unwrap_or(""),
                    "event failed {attempts} times; moved to the dead letters"
                );
                continue;
            }
            // Per-aggregate backoff: exponential in the attempts so far, capped, full jitter.
            let ceiling = (initial * 2f64.powi(attempts.clamp(0, 30) - 1)).min(cap);
            let delay = Duration::from_millis((ceiling * fastrand::f64()) as u64);
            if let Some(aggregate) = aggregate {
                self.flight.park(aggregate, Instant::now() + delay);
            }
        }
        Ok(exhausted)
    }
}
