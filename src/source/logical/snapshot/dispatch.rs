//! The source's side of a chunk read: checking the job is still wanted, starting the read in
//! the reader's task ([`super::reader`]), and taking its answer.

use super::reader::{self, Prepared};
use super::{HELD_WAIT, POLL, store};
use crate::error::{Error, ErrorKind, Result};
use crate::pg::Session;
use crate::source::logical::LogicalSource;
use tokio::time::Instant;

impl LogicalSource {
    /// Checks the job is still wanted, then starts the chunk's read in the reader's task
    /// (low watermark, chunk, high watermark: see [`reader`]).
    pub(super) async fn read_chunk(&mut self) -> Result<()> {
        let (Some(sql), Some(active)) = (&self.sql, &self.snapshot.active) else {
            return Ok(());
        };
        let snapshots = &self.snapshot;
        if !store::wanted(&sql.client, &snapshots.schema, &snapshots.slot, &active.job).await? {
            tracing::info!(table = %format!("{}.{}", active.job.schema, active.job.table),
                "snapshot cancelled or replaced; stopping it");
            self.snapshot.active = None;
            self.snapshot.queued.clear();
            return Ok(());
        }
        let session = match self.snapshot.reader.take() {
            Some(session) if !session.is_closed() => session,
            _ => crate::pg::connect(&self.config).await?,
        };
        let (snapshots, tables) = (&mut self.snapshot, &self.tables);
        let Some(active) = &snapshots.active else {
            return Ok(());
        };
        let request = reader::Request {
            id: format!("{}:{}", snapshots.run, snapshots.seq),
            prefix: snapshots.prefix.clone(),
            shape: active.shape.clone(),
            table: active.table.clone(),
            types: tables.types().clone(),
            after: active.read_after.clone(),
            condition: active.job.condition.clone(),
            limit: snapshots.chunk_limit(),
        };
        snapshots.seq += 1;
        // Expected before the read starts: the stream may decode the low watermark before
        // the reader's answer comes in.
        let (schema, table) = (&active.job.schema, &active.job.table);
        snapshots.window.expect(request.id.clone(), schema, table);
        snapshots.reading = Some(tokio::spawn(async move {
            let result = reader::read(&session, request).await;
            (session, result)
        }));
        Ok(())
    }

    /// The reader's task ended: its chunk waits for the stream's high watermark (or is
    /// queued at once, if the stream got there first); a failed read is tried again later.
    pub(in crate::source::logical) fn chunk_read(
        &mut self,
        joined: std::result::Result<(Session, Result<Prepared>), tokio::task::JoinError>,
    ) {
        let snapshots = &mut self.snapshot;
        snapshots.reading = None;
        let failed = match joined {
            Ok((session, Ok(prepared))) => {
                snapshots.reader = Some(session);
                snapshots.waiting = Some(prepared);
                if let Some((seen, at)) = snapshots.held.take() {
                    self.queue_chunk(seen, at);
                }
                return;
            }
            // The session may be inside the chunk's transaction: it is dropped.
            Ok((_, Err(err))) => err,
            Err(join) => Error::new(
                ErrorKind::Internal,
                format!("the snapshot chunk reader stopped: {join}"),
            ),
        };
        tracing::warn!(error = %failed.chain(), "reading a snapshot chunk failed; retrying");
        snapshots.held = None;
        snapshots.not_before = Instant::now() + POLL;
        snapshots.window.abandon();
    }

    /// Waits for the chunk whose high watermark the stream has decoded before the reader's
    /// answer came in (the reader writes it last, so the wait is short). Nothing after the
    /// watermark is decoded before the chunk's rows are queued at it.
    pub(in crate::source::logical) async fn finish_held_chunk(&mut self) {
        let Some(reading) = self.snapshot.reading.as_mut() else {
            self.snapshot.held = None;
            return;
        };
        match tokio::time::timeout(HELD_WAIT, reading).await {
            Ok(joined) => self.chunk_read(joined),
            Err(_) => {
                // Its high watermark is committed, so only the answer to that is missing: the
                // session is as good as gone. The chunk is read again from the same key.
                if let Some(reading) = self.snapshot.reading.take() {
                    reading.abort();
                }
                tracing::warn!("a snapshot chunk's reader did not answer; reading it again");
                self.snapshot.held = None;
                self.snapshot.not_before = Instant::now() + POLL;
            }
        }
    }
}
