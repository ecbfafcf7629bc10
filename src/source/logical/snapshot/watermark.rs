//! The stream's side of a chunk's watermarks: a low one opens the chunk's window, a high one
//! queues the chunk's rows that the stream did not change in between (see the module above).

use super::{Queued, Seen};
use crate::source::logical::LogicalSource;
use crate::source::logical::tables::At;

impl LogicalSource {
    /// A watermark message decoded at `lsn`: a low one opens its chunk's window, a high one
    /// queues the chunk's rows the stream did not change in between.
    pub(in crate::source::logical) fn watermark(
        &mut self,
        transactional: bool,
        lsn: u64,
        content: &[u8],
    ) {
        let text = String::from_utf8_lossy(content);
        let Some((id, side)) = text.rsplit_once(':') else {
            return;
        };
        if side == "low" {
            self.snapshot.window.low(id);
            return;
        }
        let Some(seen) = self.snapshot.window.high(id) else {
            return;
        };
        let (Some(txn), true) = (self.txn, transactional) else {
            self.snapshot.waiting = None;
            return;
        };
        let at = At { lsn, txn };
        match (&self.snapshot.waiting, &self.snapshot.reading) {
            (Some(_), _) => self.queue_chunk(seen, at),
            // The reader's answer is not in yet: the stream waits for it.
            (None, Some(_)) => self.snapshot.held = Some((seen, at)),
            (None, None) => {}
        }
    }

    /// Queues the chunk read (`waiting`) at its high watermark `at`, but for the rows whose
    /// keys the stream changed between the watermarks (`seen`); a chunk whose snapshot missed
    /// a transaction decoded before its low watermark is read again instead.
    pub(in crate::source::logical) fn queue_chunk(&mut self, seen: Seen, at: At) {
        let Some(prepared) = self.snapshot.waiting.take() else {
            return;
        };
        let Some(active) = &self.snapshot.active else {
            return;
        };
        if self
            .snapshot
            .window
            .missed(&prepared.invisible, seen.low_at)
        {
            // Read again from the same key: the snapshot missed a change queued before it.
            tracing::debug!("snapshot chunk raced a commit; reading it again");
            return;
        }
        let mut items = Vec::new();
        if !seen.truncated {
            for (seq, row) in prepared.rows.into_iter().enumerate() {
                if seen.keys.contains(&row.key) {
                    continue;
                }
                let table = &active.table;
                let item = self
                    .tables
                    .read_prepared(table, row, at, seq as u64, prepared.last);
                items.push(item);
            }
        }
        let queued = items.len() as i64;
        for item in items {
            self.push(item);
        }
        let snapshots = &mut self.snapshot;
        let last_key = prepared.last_key;
        if let Some(active) = &mut snapshots.active {
            active.read_after = last_key.clone().or(active.read_after.take());
            active.exhausted = prepared.last;
        }
        snapshots.queued.push_back(Queued {
            position: at.txn.position.0,
            last_key,
            rows: queued,
            last: prepared.last,
        });
    }
}
