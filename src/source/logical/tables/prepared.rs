//! A snapshot row's event in two halves: what depends only on the row (its key and its `after`
//! object), written by the chunk reader's task as soon as the chunk is read, and the rest
//! (position, id, the `source` block), written by the stream when the chunk's high watermark
//! places it. The row's JSON, the costly half, is thus written beside the stream rather than
//! in its way.

use super::envelope::{self, row};
use super::{At, Table, TableMapping, Types};
use crate::event::Operation;
use crate::source::logical::pending::Decoded;
use crate::source::pgoutput::Value;

/// A snapshot row's key and `after` object, written ahead of its event.
#[derive(Debug)]
pub struct PreparedRow {
    /// The key as the events' keys (`{"id":42}`).
    pub key: String,
    /// The row as a JSON object, or why it could not be written (a value not of its type).
    after: Result<String, String>,
}

/// Prepares a row of `table` read by a snapshot, `values` in its columns' order.
pub fn prepare(types: &Types, table: &Table, values: &[Value<'_>]) -> PreparedRow {
    let mut key = String::with_capacity(32);
    let after = (|| {
        if !table.key.is_empty() {
            row(
                &mut key,
                types,
                &table.columns,
                values,
                Some(&table.key),
                None,
            )?;
        }
        let mut out = String::with_capacity(48 * table.columns.len());
        row(&mut out, types, &table.columns, values, None, None)?;
        Ok(out)
    })();
    PreparedRow { key, after }
}

impl TableMapping {
    /// A prepared snapshot row as an `"op": "r"` event whose `source.snapshot` is `"true"`
    /// (`"last"` in the final chunk), numbered `seq` in the transaction of the high watermark
    /// it is positioned at.
    pub(in crate::source::logical) fn read_prepared(
        &self,
        table: &Table,
        prepared: PreparedRow,
        at: At,
        seq: u64,
        last: bool,
    ) -> Decoded {
        let snapshot = if last { "last" } else { "true" };
        let built = prepared.after.map(|after| {
            let mut out = String::with_capacity(after.len() + 256);
            envelope::open(&mut out);
            out.push_str("null");
            envelope::after(&mut out);
            out.push_str(&after);
            let origin = self.origin(table, at, snapshot);
            let now_ms = chrono::Utc::now().timestamp_millis();
            envelope::close(&mut out, &origin, 'r', &[], now_ms);
            out
        });
        self.finish(table, Operation::Read, prepared.key, built, at, seq)
    }
}
