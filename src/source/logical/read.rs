//! The stream's reading loop: decoded changes until a batch is ready, with heartbeats, lag
//! and the dead-letter store's looks between transactions.

use super::{LogicalSource, stream};
use crate::error::{Error, Result};
use crate::source::Batch;
use pgwire_replication::{PgWireError, ReplicationEvent};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

impl LogicalSource {
    /// Reads the stream until a batch is ready (see [`crate::source::Source::next_batch`]); also returns an
    /// empty batch when the dead-letter store is due a look.
    pub(super) async fn read_batch(
        &mut self,
        shutdown: &CancellationToken,
        wake: &Notify,
    ) -> Result<Option<Batch>> {
        loop {
            if shutdown.is_cancelled() {
                return Ok(None);
            }
            // Large transactions are handed out in chunks as they are decoded.
            if self.pending.events() >= self.config.batch_size
                || self.pending.bytes() >= self.config.max_batch_bytes
            {
                return Ok(Some(self.take_batch()));
            }
            if !self.ensure_stream(shutdown).await? {
                return Ok(None);
            }
            // A high watermark decoded before its chunk came in: nothing after it is decoded
            // until the chunk's rows are queued there.
            if self.snapshot.is_held() {
                self.finish_held_chunk().await;
                continue;
            }
            // Between transactions, hand out what is pending unless more is already waiting.
            let flush = !self.pending.is_empty() && self.txn.is_none();
            let heartbeat_due = self.next_heartbeat;
            let (watching, look_due) = self.parking.look_due();
            let between = self.txn.is_none();
            let snapshot_due = self.snapshot_due();
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            let reading = self.snapshot.reading();
            let received: std::result::Result<Option<ReplicationEvent>, PgWireError> = tokio::select! {
                biased;
                // 1. Shutdown first: stop reading at once.
                _ = shutdown.cancelled() => return Ok(None),
                // 2. Whatever the server already sent.
                received = stream.recv() => received,
                // 3. Nothing more ready: hand out the pending batch.
                _ = std::future::ready(()), if flush => return Ok(Some(self.take_batch())),
                // The relay has acknowledgements to make: return between transactions.
                _ = wake.notified(), if self.txn.is_none() => return Ok(Some(self.take_batch())),
                // A snapshot chunk came in from its reader.
                joined = async { reading.expect("guarded").await }, if reading.is_some() => {
                    self.chunk_read(joined);
                    continue;
                }
                // 4. Idle: heartbeat and lag.
                // A snapshot chunk, when the stream has nothing ready (see `snapshot`).
                _ = tokio::time::sleep_until(snapshot_due.unwrap_or(heartbeat_due)),
                    if snapshot_due.is_some() && between => {
                    self.snapshot_step().await;
                    continue;
                }
                // 5. The dead-letter store is due a look (parked events to hand out).
                _ = tokio::time::sleep_until(look_due), if watching && between => {
                    return Ok(Some(Batch::default()));
                }
                _ = tokio::time::sleep_until(heartbeat_due) => {
                    self.heartbeat().await?;
                    continue;
                }
            };
            match received {
                Ok(Some(event)) => {
                    self.apply(event)?;
                }
                Ok(None) => {
                    let err = Error::new(
                        crate::error::ErrorKind::Transient,
                        "the replication stream ended",
                    );
                    if !self.wait_after(err, shutdown).await? {
                        return Ok(None);
                    }
                }
                Err(err) => {
                    let err = stream::classify("reading the replication stream", err);
                    if !self.wait_after(err, shutdown).await? {
                        return Ok(None);
                    }
                }
            }
        }
    }
}
