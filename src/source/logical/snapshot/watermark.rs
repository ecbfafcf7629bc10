//! The stream's side of a chunk's watermarks: a low one opens the chunk's window, a high one
//! queues the chunk's rows that the stream did not change in between (see the module above).

use super::{Queued, chunk};
use crate::source::logical::LogicalSource;
use crate::source::logical::pending::Decoded;
use crate::source::logical::tables::At;
use crate::source::pgoutput::Value;

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
        let Some(rows) = self.snapshot.waiting.take() else {
            return;
        };
        let (Some(txn), true) = (self.txn, transactional) else {
            return;
        };
        let Some(active) = &self.snapshot.active else {
            return;
        };
        if seen.stale {
            // Read again from the same key: the snapshot missed a change queued before it.
            tracing::debug!("snapshot chunk raced a commit; reading it again");
            return;
        }
        let key_of = |row: &tokio_postgres::Row| -> Vec<String> {
            active
                .shape
                .key
                .iter()
                .map(|&i| chunk::value(row, i).unwrap_or_default().to_owned())
                .collect()
        };
        let last_key = rows.rows.last().map(key_of);
        let at = At { lsn, txn };
        let mut items = Vec::new();
        if !seen.truncated {
            for (seq, row) in rows.rows.iter().enumerate() {
                let values: Vec<Value<'_>> = (0..active.shape.columns.len())
                    .map(|i| match chunk::value(row, i) {
                        Some(text) => Value::Text(text.as_bytes()),
                        None => Value::Null,
                    })
                    .collect();
                let item = self
                    .tables
                    .read(&active.table, &values, at, seq as u64, rows.last);
                if let Decoded::Event(event) = &item
                    && seen.keys.contains(&event.key)
                {
                    continue;
                }
                items.push(item);
            }
        }
        let queued = items.len() as i64;
        for item in items {
            self.push(item);
        }
        let snapshots = &mut self.snapshot;
        if let Some(active) = &mut snapshots.active {
            active.read_after = last_key.clone().or(active.read_after.take());
            active.exhausted = rows.last;
        }
        snapshots.queued.push_back(Queued {
            position: txn.position.0,
            last_key,
            rows: queued,
            last: rows.last,
        });
    }
}
