//! Snapshots and backfills of captured tables, consistent with the stream (DBLog's watermarks).
//!
//! A table is read in chunks of `source.cdc.snapshot_chunk_rows` rows by primary key. For each
//! chunk a task of its own ([`reader`]) writes a low watermark (`pg_logical_emit_message(false,
//! '<prefix>-snapshot', '<run>:<n>:low')`), reads the chunk in a short `REPEATABLE READ`
//! transaction ([`chunk`]), prepares its rows' JSON and writes a high watermark, while the
//! stream goes on. When the stream decodes the low
//! watermark it starts collecting the keys of that table it changes ([`window`]); at the high
//! watermark the chunk's rows whose keys the stream changed in between are dropped (the
//! stream's own events, already queued before, carry their newer state or their deletion) and
//! the rest are queued as `"op": "r"` events positioned at the high watermark's transaction. So
//! they go through the same lanes, in order with the stream's events of the same key, and the
//! slot's confirmation covers them like any transaction's events.
//!
//! # Progress and restarts
//! A chunk is done once the slot may be confirmed past its high watermark (every event of it,
//! and everything before it, acknowledged by the sink). Only then is its last key written to
//! `outboxd_snapshots` ([`store`]). Up to [`DEPTH`] chunks are in flight at once, each of
//! `snapshot_chunk_rows / DEPTH` rows: the next chunk is read while the sink takes the one
//! before (so neither waits for the other), what is held stays within `snapshot_chunk_rows`
//! rows, and a relay killed mid-snapshot delivers at most that many rows again after its
//! restart. A lost stream abandons the chunks in flight; they are read again from the last
//! recorded key.
//!
//! # Sharing with the stream
//! A chunk is read only when the stream has nothing ready to decode and fewer than a chunk's
//! rows of decoded events wait; the stream's events always go first. A chunk read is one short
//! transaction, never one for the whole table, and at most `snapshot_chunk_rows` rows are held.

pub mod chunk;
mod dispatch;
mod reader;
pub mod store;
mod watermark;
mod window;

use super::LogicalSource;
use super::tables::{At, Table};
use crate::config::{SnapshotMode, SourceConfig};
use crate::error::Result;
use crate::pg::Session;
use chunk::Shape;
use reader::Prepared;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use store::Job;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use window::{Seen, Window};

/// How often the records are read for new backfill requests while none runs.
const POLL: Duration = Duration::from_secs(1);

/// Longest wait for a chunk whose high watermark the stream decoded before the reader's answer
/// came in (the answer normally follows within milliseconds).
const HELD_WAIT: Duration = Duration::from_secs(30);

/// Chunks in flight at once (read, or queued and not yet delivered). Two let the next chunk be
/// read while the sink takes the one before; each is `snapshot_chunk_rows / DEPTH` rows.
const DEPTH: usize = 2;

/// The prefix of watermark messages, beside the event messages' `prefix`.
pub fn watermark_prefix(prefix: &str) -> String {
    format!("{prefix}-snapshot")
}

/// The job being run.
struct Active {
    /// As recorded.
    job: Job,
    /// The table as read.
    shape: Arc<Shape>,
    /// The table as the mapping builds its events.
    table: Arc<Table>,
    /// The last key recorded: the sink holds every row up to it.
    last_key: Option<Vec<String>>,
    /// The last key queued: the next chunk is read after it.
    read_after: Option<Vec<String>>,
    /// Whether the final chunk was queued (nothing more to read).
    exhausted: bool,
    /// Rows delivered, for the remaining-rows metric.
    rows_done: i64,
}

/// A chunk queued as events at `position`; done once the slot may pass it.
struct Queued {
    /// The high watermark's transaction.
    position: u64,
    /// Key of the chunk's last row (read, whether delivered or dropped).
    last_key: Option<Vec<String>>,
    /// Rows queued.
    rows: i64,
    /// Whether it was the final chunk.
    last: bool,
}

/// The snapshot side of the logical source.
pub(super) struct Snapshots {
    /// Whether tables are captured at all.
    enabled: bool,
    /// `source.cdc.snapshot`.
    mode: SnapshotMode,
    /// Rows per chunk.
    chunk_rows: usize,
    /// The schema of the records.
    schema: String,
    /// The slot (records are per slot).
    slot: String,
    /// The watermarks' prefix.
    prefix: String,
    /// This process's id in watermarks, so a replayed watermark of an earlier run is ignored.
    run: String,
    /// Chunks read by this process.
    seq: u64,
    /// Not before this may the next step run (polling, or after an error).
    not_before: Instant,
    /// When to look for tables without an initial snapshot.
    next_tables: Instant,
    /// The job being run.
    active: Option<Active>,
    /// The chunk reader's session while no chunk is being read.
    reader: Option<Session>,
    /// The chunk being read, in the reader's task (see [`reader`]).
    reading: Option<JoinHandle<(Session, Result<Prepared>)>>,
    /// The chunk read and waiting for the stream to decode its watermarks.
    waiting: Option<Prepared>,
    /// The high watermark, decoded before its chunk came in from the reader: the stream
    /// waits for it (see [`LogicalSource::finish_held_chunk`]).
    held: Option<(Seen, At)>,
    /// Chunks queued as events, oldest first, recorded in this order once delivered.
    queued: VecDeque<Queued>,
    /// The stream's side.
    window: Window,
}

impl Snapshots {
    /// The snapshot state for `config`.
    pub(super) fn new(config: &SourceConfig) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Snapshots {
            enabled: !config.cdc.tables.is_empty(),
            mode: config.cdc.snapshot,
            chunk_rows: config.cdc.snapshot_chunk_rows.0,
            schema: config.table.schema.clone(),
            slot: config.logical.slot.clone(),
            prefix: watermark_prefix(&config.logical.message_prefix),
            run: format!("{:x}-{:x}", now.as_nanos(), std::process::id()),
            seq: 0,
            not_before: Instant::now(),
            next_tables: Instant::now(),
            active: None,
            reader: None,
            reading: None,
            waiting: None,
            held: None,
            queued: VecDeque::new(),
            window: Window::default(),
        }
    }

    /// The stream is gone: the chunks in flight are read again from the last recorded key.
    pub(super) fn lost_stream(&mut self) {
        self.window.clear();
        if let Some(reading) = self.reading.take() {
            // Its session goes with it: it may be inside the chunk's transaction.
            reading.abort();
        }
        self.held = None;
        self.waiting = None;
        self.queued.clear();
        if let Some(active) = &mut self.active {
            active.read_after = active.last_key.clone();
            active.exhausted = false;
        }
    }

    /// Rows per chunk read.
    fn chunk_limit(&self) -> usize {
        (self.chunk_rows / DEPTH).max(1)
    }

    /// A transaction `xid` begins in the stream.
    pub(super) fn begin(&mut self, xid: u32) {
        if self.enabled {
            self.window.begin(xid);
        }
    }

    /// A captured table's change, seen by the stream (whether queued or a repeat).
    pub(super) fn change(&mut self, schema: &str, table: &str, key: &str, truncate: bool) {
        if self.window.is_waiting() {
            self.window.change(schema, table, key, truncate);
        }
    }

    /// Whether the stream must wait for the chunk being read (its high watermark came first).
    pub(super) fn is_held(&self) -> bool {
        self.held.is_some()
    }

    /// The chunk read in progress, to wait for its answer beside the stream.
    pub(super) fn reading(&mut self) -> Option<&mut JoinHandle<(Session, Result<Prepared>)>> {
        self.reading.as_mut()
    }

    /// Whether `prefix` is the watermarks'.
    pub(super) fn is_watermark(&self, prefix: &str) -> bool {
        self.enabled && prefix == self.prefix
    }
}

impl LogicalSource {
    /// When the next snapshot step may run, if one is wanted: `None` while a chunk waits for
    /// the stream, [`DEPTH`] chunks wait for the sink, or too many events wait to be handed
    /// out.
    pub(super) fn snapshot_due(&self) -> Option<Instant> {
        let snapshots = &self.snapshot;
        if !snapshots.enabled
            || self.stream.is_none()
            || snapshots.waiting.is_some()
            || snapshots.reading.is_some()
        {
            return None;
        }
        if let Some(front) = snapshots.queued.front()
            && self.progress.settled(front.position)
        {
            return Some(snapshots.not_before);
        }
        let Some(active) = &snapshots.active else {
            // A new job only once the last one's chunks are recorded.
            return snapshots.queued.is_empty().then_some(snapshots.not_before);
        };
        // The next chunk is read once less than a chunk's rows wait to be handed out, so it
        // is ready when the sink is done with the one before; what waits stays within
        // `snapshot_chunk_rows` rows and the stream's events (always decoded first) wait behind
        // at most that many.
        if active.exhausted
            || snapshots.queued.len() >= DEPTH
            || self.pending.events() >= snapshots.chunk_limit()
        {
            return None;
        }
        Some(snapshots.not_before)
    }

    /// One step of the snapshot in progress: record a finished chunk, pick a job, or read the
    /// next chunk. Failures are logged and retried a little later; they never stop the stream.
    pub(super) async fn snapshot_step(&mut self) {
        if let Err(err) = self.try_snapshot_step().await {
            tracing::warn!(error = %err.chain(), "snapshot step failed; retrying");
            self.snapshot.not_before = Instant::now() + POLL;
            self.snapshot.waiting = None;
            self.snapshot.window.abandon();
        }
    }

    /// [`Self::snapshot_step`], with its errors.
    async fn try_snapshot_step(&mut self) -> Result<()> {
        self.sql_session().await?;
        let snapshots = &self.snapshot;
        if snapshots
            .queued
            .front()
            .is_some_and(|front| self.progress.settled(front.position))
        {
            return self.record_chunk().await;
        }
        if snapshots.active.is_none() {
            return match snapshots.queued.is_empty() {
                true => self.pick_job().await,
                false => Ok(()),
            };
        }
        self.read_chunk().await
    }

    /// Records the oldest chunk in flight, delivered, and ends its job if it was the last or
    /// is no longer wanted. (Taken off the queue only once recorded: a failed record is tried
    /// again.)
    async fn record_chunk(&mut self) -> Result<()> {
        let snapshots = &mut self.snapshot;
        let Some(sql) = &self.sql else {
            return Ok(());
        };
        let Some(active) = &mut snapshots.active else {
            // The job was dropped: what it still had in flight is not recorded.
            snapshots.queued.clear();
            return Ok(());
        };
        let Some(Queued {
            last_key,
            rows,
            last,
            ..
        }) = snapshots.queued.front()
        else {
            return Ok(());
        };
        let (rows, last) = (*rows, *last);
        let key = last_key.clone().or_else(|| active.last_key.clone());
        let wanted = store::chunk_done(
            &sql.client,
            &snapshots.schema,
            &snapshots.slot,
            &active.job,
            key.as_deref().unwrap_or_default(),
            rows,
            last,
        )
        .await?;
        snapshots.queued.pop_front();
        active.last_key = key;
        active.rows_done += rows;
        let table = format!("{}.{}", active.job.schema, active.job.table);
        let metrics = crate::metrics::get();
        let labels = crate::metrics::BackfillLabels {
            table: table.clone(),
        };
        metrics
            .backfill_rows
            .get_or_create(&labels)
            .inc_by(rows as u64);
        let remaining = match last {
            true => 0,
            false => (active.shape.estimate - active.rows_done).max(0),
        };
        metrics
            .backfill_remaining
            .get_or_create(&labels)
            .set(remaining);
        if last || !wanted {
            match wanted {
                true => tracing::info!(table, kind = %active.job.kind, rows = active.rows_done,
                    "snapshot done"),
                false => tracing::info!(table, "snapshot cancelled or replaced; stopping it"),
            }
            metrics.backfill_remaining.get_or_create(&labels).set(0);
            self.snapshot.active = None;
            self.snapshot.queued.clear();
        }
        Ok(())
    }

    /// Adds initial snapshots of tables captured for the first time, then takes the next job
    /// (a running one first: the one a restart interrupted).
    async fn pick_job(&mut self) -> Result<()> {
        let Some(sql) = &self.sql else {
            return Ok(());
        };
        let snapshots = &mut self.snapshot;
        snapshots.not_before = Instant::now() + POLL;
        if !store::exists(&sql.client, &snapshots.schema).await? {
            // `outboxd migrate` creates it; without it there is nothing to resume from.
            tracing::warn!(
                "no snapshot records (outboxd_snapshots): run `outboxd migrate`; \
                snapshots and backfills wait until then"
            );
            snapshots.not_before = Instant::now() + Duration::from_secs(60);
            return Ok(());
        }
        if snapshots.mode == SnapshotMode::Initial && Instant::now() >= snapshots.next_tables {
            let interval = Duration::from_millis(self.config.logical.heartbeat_interval_ms);
            snapshots.next_tables = Instant::now() + interval;
            let found = super::tables::publication::resolve(&sql.client, &self.config).await?;
            let tables: Vec<_> = found.into_iter().map(|f| (f.schema, f.table)).collect();
            let added =
                store::add_initial(&sql.client, &snapshots.schema, &snapshots.slot, &tables)
                    .await?;
            if added > 0 {
                tracing::info!(tables = added, "initial snapshots recorded");
            }
        }
        let Some(job) = store::next(&sql.client, &snapshots.schema, &snapshots.slot).await? else {
            // Nothing to read: the chunk reader's session is closed until the next job.
            snapshots.reader = None;
            return Ok(());
        };
        let table = format!("{}.{}", job.schema, job.table);
        let shape = match chunk::shape(&sql.client, &job.schema, &job.table).await {
            Ok(shape) => Arc::new(shape),
            Err(err) if err.kind() == crate::error::ErrorKind::Schema => {
                let reason = err.to_string();
                tracing::warn!(table, reason, "snapshot refused");
                store::fail(
                    &sql.client,
                    &snapshots.schema,
                    &snapshots.slot,
                    &job,
                    &reason,
                )
                .await?;
                return Ok(());
            }
            Err(err) => return Err(err),
        };
        let estimate = shape.estimate;
        if !store::start(
            &sql.client,
            &snapshots.schema,
            &snapshots.slot,
            &job,
            estimate,
        )
        .await?
        {
            return Ok(());
        }
        tracing::info!(table, kind = %job.kind, estimated_rows = estimate,
            resume_after = ?job.last_key, "snapshot started");
        let mapped = Arc::new(Table::read_from_catalog(
            &job.schema,
            &job.table,
            shape.columns.clone(),
            shape.key.clone(),
        ));
        snapshots.not_before = Instant::now();
        snapshots.active = Some(Active {
            last_key: job.last_key.clone(),
            read_after: job.last_key.clone(),
            exhausted: false,
            rows_done: job.rows_done,
            job,
            shape,
            table: mapped,
        });
        Ok(())
    }
}
