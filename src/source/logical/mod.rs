//! The logical replication source: follows the outbox table's inserts, and event messages, in
//! commit order through a replication slot with `pgoutput`.
//!
//! # Capture apart from mapping
//! This module and most of its children are the capture: the replication stream (opening it,
//! the slot, the publication, heartbeats, lag, standby) and what may be confirmed of it
//! ([`progress`], [`pending`], [`replay`], [`resume`]). [`apply`] tracks transactions and asks
//! [`mapping`] what each decoded change is as an event; only [`mapping`] and [`event`] know the
//! outbox's columns and the event messages' shape.
//!
//! # Positions and acknowledgement
//! Every event of a transaction carries the transaction's commit LSN as its position (known from
//! Begin, so events can be handed out before Commit). Positions are therefore monotonic across
//! transactions but shared inside one; the pair (position, event id) is unique. The slot's
//! `confirmed_flush_lsn` is advanced only to the end of the last transaction whose events were
//! all acknowledged or rejected (see [`progress`]); after a crash the server replays from there,
//! so the unacknowledged tail may be delivered again, never lost.
//!
//! [`Source::ack_delivered`] cannot mark anything here (the server decides what to replay).
//! Instead it remembers the newest position the sink already holds, with the ids stored at it:
//! the sink stores in commit order, so every event of an earlier transaction is already there,
//! and the replay drops those and the listed ids of that transaction. With the embedded log a
//! restart therefore adds no duplicate. A sink position beyond the server's current WAL cannot
//! come from this server (a log reused across clusters); it is then ignored with a warning.
//!
//! # A lost stream
//! When the stream is lost without a restart (PostgreSQL restarted, the connection dropped), the
//! source re-opens it and the server replays from the slot's confirmed position, which may be
//! older than what this process confirmed. Nothing that was handed out is handed out again:
//! transactions before the confirmed position are settled, and the rest of what was handed out
//! is a prefix of the stream that [`replay`] recognises. Events still in a lane keep counting in
//! [`progress`], so the slot never passes them before the relay settles them.
//!
//! # Rejected events
//! A row that cannot become an event, or an event the sink refuses, has no row to mark failed
//! (it may be deleted already): it is logged with its position and counted as done, so it never
//! blocks the slot. Invalid event messages are logged with their LSN and skipped the same way.
//!
//! # One consumer per slot
//! PostgreSQL lets one session stream from a slot at a time, which makes a second relay on the
//! same slot a standby: it sees the slot active (or its START_REPLICATION is refused), says so
//! once, and retries quietly with backoff until the slot is free (see [`standby`]). No advisory
//! lock is needed.
//!
//! # Schema, publication and slot changes
//! None of them may let an event pass unseen: a Relation message without a column outboxd reads
//! stops the stream before the row ([`mapping`]); the heartbeat checks that the publication still
//! carries the table ([`heartbeat`]); a publication re-created under the slot is explained, never
//! re-created by outboxd ([`publication`]); a slot that outboxd recorded and that is gone is
//! created again only with the opt-in of an invalidated slot ([`history`], [`slot::prepare`]).

mod apply;
pub(crate) mod event;
mod heartbeat;
mod history;
mod mapping;
mod marking;
pub mod marks;
mod parking;
mod pending;
mod progress;
pub mod publication;
mod read;
mod replay;
mod resume;
pub mod slot;
pub mod snapshot;
mod standby;
mod store_calls;
mod stream;
pub mod tables;
mod timestamp;

use super::{Batch, Refusal, Source};
use crate::config::{RelayConfig, SourceConfig};
use crate::error::{Error, Result};
use crate::event::{Event, Position, Rejected, Stored};
use crate::outbox::OutboxTable;
use crate::pg::Session;
use crate::retry::{Backoff, sleep_or_shutdown};
use mapping::{OutboxMapping, Txn};
use parking::Parking;
use pending::Pending;
use pgwire_replication::{Lsn, ReplicationClient};
use progress::Progress;
use replay::Replay;
use resume::Resume;
use standby::Standby;
use std::sync::Arc;
use std::time::Duration;
use store_calls::with_store;
use tables::TableMapping;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// Longest wait at shutdown for the final confirmed position to reach the server (standby
/// status updates go out once per second at most).
const FINAL_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// Streams outbox events from a logical replication slot.
pub struct LogicalSource {
    /// Source settings.
    config: SourceConfig,
    /// Retry timing settings.
    relay: RelayConfig,
    /// The outbox table's names.
    table: OutboxTable,
    /// The replication stream, while open.
    stream: Option<ReplicationClient>,
    /// An ordinary session for heartbeats and lag, while open.
    sql: Option<Session>,
    /// What the stream's changes are as events (the outbox's rows, event messages).
    mapping: OutboxMapping,
    /// What the captured tables' changes are as events (change data capture).
    tables: TableMapping,
    /// The transaction being decoded, between Begin and Commit.
    txn: Option<Txn>,
    /// Events and rows that cannot become events, decoded and not yet handed out.
    pending: Pending,
    /// What may be confirmed to the slot.
    progress: Progress,
    /// What this process handed out, to recognise it on a re-opened stream.
    replay: Replay,
    /// What the sink held at start-up, until the source hands out something past it.
    resume: Option<Resume>,
    /// Delays between reconnection attempts; reset by every success.
    backoff: Backoff,
    /// Whether this relay stands by for the slot (to say so once).
    standby: Standby,
    /// When the next heartbeat and lag measurement are due.
    next_heartbeat: Instant,
    /// Whether the lag is over the warning threshold (to warn once per crossing).
    lagging: bool,
    /// Snapshots and backfills of captured tables.
    snapshot: snapshot::Snapshots,
    /// The newest position handed to the stream to confirm, for the final confirmation at
    /// shutdown.
    confirmed: u64,
    /// Dead letters and the events parked behind them, in the store.
    parking: Parking,
    /// Per key, the last event the sink took (see [`marks`]); `None` without the table.
    marks: Option<marks::Marks>,
}

impl LogicalSource {
    /// Connects once, checks the outbox table and the slot (re-creating a lost slot only if
    /// configured), so mistakes fail start-up with a clear message. The stream is opened by the
    /// first [`Source::next_batch`].
    pub async fn start(config: &SourceConfig, relay: &RelayConfig) -> Result<Self> {
        let table = OutboxTable::new(config);
        let session = crate::pg::connect(config).await?;
        if config.mode.uses_outbox() {
            crate::outbox::migrate::verify(&session.client, &table, &config.columns.all()).await?;
            publication::check(&session.client, config, &table).await?;
        }
        let patterns = config.cdc.patterns();
        let catalog = match patterns.is_empty() {
            true => tables::catalog::Catalog::default(),
            false => {
                tables::publication::check(&session.client, config).await?;
                tables::catalog::load(&session.client, &patterns).await?
            }
        };
        slot::check_slot(&session.client, config).await?;
        let parking = Parking::start(&session.client, config, relay).await?;
        let marks = marking::start(&session.client, config).await;
        history::record_quietly(&session.client, &table, &config.logical.slot, false).await;
        Ok(LogicalSource {
            config: config.clone(),
            relay: relay.clone(),
            mapping: OutboxMapping::new(config, &table),
            tables: TableMapping::new(
                patterns,
                tables::publication::own_tables(config),
                catalog,
                config.max_event_bytes,
            ),
            table,
            stream: None,
            sql: Some(session),
            txn: None,
            pending: Pending::default(),
            progress: Progress::default(),
            replay: Replay::default(),
            resume: None,
            backoff: Backoff::from_config(relay),
            standby: Standby::default(),
            next_heartbeat: Instant::now(),
            lagging: false,
            snapshot: snapshot::Snapshots::new(config),
            confirmed: 0,
            parking,
            marks,
        })
    }

    /// Drops the stream and everything decoded from it that was not handed out: the next stream
    /// starts again at the slot's confirmed position, and repeats what was handed out (see the
    /// module docs).
    fn drop_stream(&mut self) {
        if let Some(mut stream) = self.stream.take() {
            stream.abort();
        }
        self.mapping.clear();
        self.tables.clear();
        self.snapshot.lost_stream();
        self.txn = None;
        self.pending.clear();
        self.progress.rewind();
        self.replay.rewind();
        if let Some(resume) = &mut self.resume {
            resume.rewind();
        }
        crate::metrics::get().source_up.set(0);
        crate::metrics::get().relay_active.set(0);
    }

    /// After the slot was re-created: nothing of the old one comes again, so nothing of it may
    /// hold the new one back (acknowledgements of its events still in lanes are ignored).
    fn forget_old_slot(&mut self) {
        self.progress.forget();
        self.replay.forget();
        self.resume = None;
    }

    /// Opens the ordinary session if it is closed.
    async fn sql_session(&mut self) -> Result<()> {
        if self.sql.as_ref().is_none_or(Session::is_closed) {
            self.sql = Some(crate::pg::connect(&self.config).await?);
        }
        Ok(())
    }

    /// The ordinary session's client, opened if closed.
    async fn sql_client(&mut self) -> Result<Arc<Client>> {
        self.sql_session().await?;
        let sql = self.sql.as_ref().expect("opened above");
        Ok(sql.client.clone())
    }

    /// Marks stream positions settled (stored or parked) and confirms what that allows.
    fn settled(&mut self, positions: &[u64]) {
        for position in positions {
            self.progress.done(*position);
        }
        self.confirm();
    }

    /// Tells the server how far the slot may advance, if that moved.
    fn confirm(&mut self) {
        if let (Some(lsn), Some(stream)) = (self.progress.confirmable(), &self.stream) {
            stream.update_applied_lsn(Lsn::from_u64(lsn));
            self.confirmed = self.confirmed.max(lsn);
            if let Some(marks) = &self.marks {
                marks.confirmed(lsn);
            }
        }
    }

    /// Hands out up to `batch_size` pending events, and the rejected rows among them.
    fn take_batch(&mut self) -> Batch {
        let batch = self.pending.take(
            self.config.batch_size,
            self.config.max_batch_bytes,
            &mut self.progress,
            &mut self.replay,
        );
        // Once something past what the sink held is handed out, a lost stream's repeat of
        // those events is recognised by the replay.
        let newest = batch.events.last();
        if (self.resume.as_ref().zip(newest)).is_some_and(|(r, e)| r.is_over(e.position.0)) {
            self.resume = None;
        }
        batch
    }

    /// After a stream error: drops the stream, and waits a backoff delay if it may heal
    /// (`false` on shutdown), or returns the error if not.
    async fn wait_after(&mut self, err: Error, shutdown: &CancellationToken) -> Result<bool> {
        self.drop_stream();
        if !err.is_retryable() {
            // A re-created publication gets its own explanation.
            if self.sql_session().await.is_ok()
                && let Some(sql) = &self.sql
            {
                return Err(
                    publication::explain_stream_error(&sql.client, &self.config, err).await,
                );
            }
            return Err(err);
        }
        let delay = self.backoff.next_delay();
        tracing::warn!(error = %err.chain(), retry_in_ms = delay.as_millis() as u64,
            "replication stream lost; reconnecting");
        Ok(sleep_or_shutdown(delay, shutdown).await)
    }
}

impl Source for LogicalSource {
    fn batch_size(&self) -> usize {
        self.config.batch_size
    }

    fn batch_bytes(&self) -> usize {
        self.config.max_batch_bytes
    }

    /// A replication stream is read once; the relay retries failed events itself.
    fn redelivers(&self) -> bool {
        false
    }

    /// Parked events due to go out again come first; events of blocked keys are parked.
    async fn next_batch(
        &mut self,
        shutdown: &CancellationToken,
        wake: &Notify,
    ) -> Result<Option<Batch>> {
        if self.parking.due() {
            let limit = self.config.batch_size;
            let ready = with_store!(
                self,
                shutdown,
                "reading parked events",
                |parking, client| { parking.ready(client, limit) }
            );
            match ready {
                None => return Ok(None),
                Some(Some(batch)) => return Ok(Some(batch)),
                Some(None) => {}
            }
        }
        let Some(mut batch) = self.read_batch(shutdown, wake).await? else {
            return Ok(None);
        };
        if self.parking.diverts(&batch.events) {
            let parked = with_store!(self, shutdown, "parking events", |parking, client| {
                parking.divert(client, &mut batch.events)
            });
            let Some(parked) = parked else {
                return Ok(None);
            };
            self.settled(&parked);
        }
        Ok(Some(batch))
    }

    async fn ack(&mut self, positions: &[Position], shutdown: &CancellationToken) -> Result<()> {
        // Events from the dead-letter store leave it; the rest move the slot.
        if positions.iter().any(|p| Parking::is_store(*p)) {
            let what = "removing delivered dead letters";
            let stream = with_store!(self, shutdown, what, |parking, client| {
                parking.delivered(client, positions)
            });
            if let Some(stream) = stream {
                self.settled(&stream);
            }
            return Ok(());
        }
        for position in positions {
            self.progress.done(position.0);
        }
        self.confirm();
        Ok(())
    }

    fn notes_deliveries(&self) -> bool {
        self.marks.is_some()
    }

    /// Noted per key, so the replay after a crash skips them (see [`marks`]).
    fn delivered(&mut self, mut stored: Vec<Stored>) {
        if let Some(marks) = &self.marks {
            stored.retain(|mark| !Parking::is_store(mark.position));
            marks.delivered(stored);
        }
    }

    async fn ack_delivered(
        &mut self,
        delivered: &[Stored],
        _shutdown: &CancellationToken,
    ) -> Result<u64> {
        self.resume_from_sink(delivered).await;
        Ok(0)
    }

    /// Sends the final confirmed position and waits (at most [`FINAL_CONFIRM_TIMEOUT`]) until
    /// the stream reported it to the server, then ends the stream cleanly. Standby status
    /// updates go out at most once per status interval; without this, a clean stop would leave
    /// the slot up to that interval behind what the sink holds, and brokers would get those
    /// events again on the next start.
    async fn finish(&mut self) {
        self.confirm();
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        let target = self.confirmed;
        let deadline = Instant::now() + FINAL_CONFIRM_TIMEOUT;
        let metrics = stream.metrics();
        while metrics.last_applied_lsn().as_u64() < target && stream.is_running() {
            if Instant::now() >= deadline {
                tracing::warn!(
                    confirmed = %Lsn::from_u64(target).to_pg_string(),
                    "the final confirmed position did not reach the server in time; the \
                     newest events may be delivered again on the next start"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match tokio::time::timeout_at(deadline, stream.shutdown()).await {
            Ok(Ok(())) => tracing::info!(
                confirmed = %Lsn::from_u64(target).to_pg_string(),
                "replication stream closed"
            ),
            Ok(Err(err)) => tracing::debug!(error = %err, "replication stream ended with an error"),
            Err(_) => stream.abort(),
        }
    }

    /// Rows that never became events: stored (id, position, reason) before the slot moves
    /// past them.
    async fn reject(&mut self, rejected: &[Rejected], shutdown: &CancellationToken) -> Result<()> {
        let stored = with_store!(
            self,
            shutdown,
            "storing undecodable rows",
            |parking, client| { parking.undecodable(client, rejected) }
        );
        if stored.is_some() {
            let positions: Vec<u64> = rejected.iter().map(|bad| bad.position.0).collect();
            self.settled(&positions);
        }
        Ok(())
    }

    /// Refused events go to the dead-letter store whole, with the events held back behind
    /// them, before the slot moves past them.
    async fn refuse(
        &mut self,
        refused: &[Refusal],
        parked: &[Event],
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let settled = with_store!(self, shutdown, "storing dead letters", |parking, client| {
            parking.refuse(client, refused, parked)
        });
        if let Some(settled) = settled {
            self.settled(&settled);
        }
        Ok(())
    }
}
