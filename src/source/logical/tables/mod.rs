//! Change data capture: the mapping of the captured tables' inserts, updates, deletes and
//! truncates to change events whose payload is Debezium's envelope, beside the outbox mapping
//! (see [`super::mapping`]), through the same stream.
//!
//! Each Relation message replaces what is known of a table's columns, so a change after `ALTER
//! TABLE` is read with the columns it was written with. A change's key is the table's primary
//! key as a JSON object (`{"id":42}`), or its replica identity's columns when it has no primary
//! key; a truncate has an empty key. An update that changes the key becomes a delete of the old
//! key and a create of the new one (as Debezium does), so every key's events tell its whole
//! story. Each event's id is the commit position and the change's number in its transaction,
//! the same every time the stream is replayed, so the embedded log stores it once.

mod array;
pub mod catalog;
mod envelope;
mod inserts;
mod json;
mod listing;
mod prepared;
pub mod publication;
mod temporal;

pub use json::Types;
pub(super) use prepared::{PreparedRow, prepare};

use super::mapping::Txn;
use super::pending::Decoded;
use crate::config::TablePattern;
use crate::event::{Event, Operation, Origin, Rejected};
use crate::source::pgoutput::{Column, OldRow, Relation, ReplicaIdentity, Value};
use catalog::Catalog;
use envelope::row;
use pgwire_replication::Lsn;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::fmt::Write;

/// A captured table as its last Relation message described it (or the catalog, for a
/// snapshot: see [`Table::read_from_catalog`]).
#[derive(Clone, Debug)]
pub(super) struct Table {
    /// Its schema.
    schema: String,
    /// Its name.
    name: String,
    /// Its columns, in order.
    columns: Vec<Column>,
    /// Indexes of the key's columns.
    key: Vec<usize>,
    /// Whether old rows arrive whole (`REPLICA IDENTITY FULL`).
    full: bool,
}

impl Table {
    /// A table as a snapshot reads it: its columns from the catalog (published ones, in
    /// attribute order, as a Relation message lists them) and the indexes of its key's.
    pub(super) fn read_from_catalog(
        schema: &str,
        name: &str,
        columns: Vec<Column>,
        key: Vec<usize>,
    ) -> Self {
        Table {
            schema: schema.to_owned(),
            name: name.to_owned(),
            columns,
            key,
            full: false,
        }
    }
}

/// Maps the captured tables' changes to events; forgets its relations when the stream is lost.
pub(super) struct TableMapping {
    /// Which tables are captured.
    patterns: Vec<TablePattern>,
    /// outboxd's own tables, which a `schema.*` entry does not capture.
    own: Vec<(String, String)>,
    /// The database's name, key columns and user types.
    catalog: Catalog,
    /// Largest payload of one event; a larger change becomes a dead letter.
    max_event_bytes: usize,
    /// Captured tables announced on this stream.
    relations: HashMap<u32, Table>,
    /// Changes seen so far in the current transaction (the second half of each event's id).
    seq: u64,
}

/// One change of a captured table: its LSN and the transaction's.
#[derive(Clone, Copy, Debug)]
pub(super) struct At {
    /// The change's own LSN.
    pub(super) lsn: u64,
    /// Its transaction.
    pub(super) txn: Txn,
}

/// What one change event is built from.
struct Change<'r, 'v> {
    /// The operation.
    op: Operation,
    /// The old row (or key), if the change has one.
    old: Option<&'r [Value<'v>]>,
    /// The new row, if the change has one.
    new: Option<&'r [Value<'v>]>,
}

impl TableMapping {
    /// A mapping for the tables `patterns` match but for outboxd's `own`, with what `catalog`
    /// knows of them.
    pub(super) fn new(
        patterns: Vec<TablePattern>,
        own: Vec<(String, String)>,
        catalog: Catalog,
        max_bytes: usize,
    ) -> Self {
        TableMapping {
            patterns,
            own,
            catalog,
            max_event_bytes: max_bytes,
            relations: HashMap::new(),
            seq: 0,
        }
    }

    /// Whether any table is captured.
    pub(super) fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The user types known (for a snapshot's rows, prepared outside the mapping).
    pub(super) fn types(&self) -> &Types {
        &self.catalog.types
    }

    /// Replaces what is known of keys and types (after tables or types were created).
    pub(super) fn set_catalog(&mut self, catalog: Catalog) {
        self.catalog = catalog;
    }

    /// Forgets the relations of a stream that is gone.
    pub(super) fn clear(&mut self) {
        self.relations.clear();
    }

    /// A transaction begins: its changes are numbered from 0.
    pub(super) fn begin(&mut self) {
        self.seq = 0;
    }

    /// Learns a relation's columns, if it is a captured table.
    pub(super) fn relation(&mut self, relation: &Relation) {
        let (schema, name) = (&relation.namespace, &relation.name);
        let own = self.own.iter().any(|(s, t)| s == schema && t == name);
        let captured = self.patterns.iter().any(|p| match p {
            TablePattern::Schema(_) => !own && p.matches(schema, name),
            TablePattern::Table { .. } => p.matches(schema, name),
        });
        if !captured {
            self.relations.remove(&relation.id);
            return;
        }
        let by_name = |n: &String| relation.columns.iter().position(|c| &c.name == n);
        let primary: Option<Vec<usize>> = self
            .catalog
            .primary_key(schema, name)
            .and_then(|names| names.iter().map(by_name).collect());
        let key = primary.unwrap_or_else(|| {
            let flagged = relation.columns.iter().enumerate().filter(|(_, c)| c.key);
            flagged.map(|(i, _)| i).collect()
        });
        self.relations.insert(
            relation.id,
            Table {
                schema: schema.clone(),
                name: name.clone(),
                columns: relation.columns.clone(),
                key,
                full: relation.replica_identity == ReplicaIdentity::Full,
            },
        );
    }

    /// Whether `relation_id` is a captured table.
    pub(super) fn captures(&self, relation_id: u32) -> bool {
        self.relations.contains_key(&relation_id)
    }

    /// The event of an inserted row.
    pub(super) fn insert(&mut self, id: u32, new: &[Value<'_>], at: At) -> Option<Decoded> {
        let table = self.relations.get(&id)?;
        let item = self.change(table, Operation::Insert, None, Some(new), at, self.seq);
        self.seq += 1;
        Some(item)
    }

    /// The events of an updated row: one update, or a delete and a create if its key changed.
    pub(super) fn update(
        &mut self,
        id: u32,
        old: Option<&OldRow<'_>>,
        new: &[Value<'_>],
        at: At,
    ) -> Vec<Decoded> {
        let Some(table) = self.relations.get(&id) else {
            return Vec::new();
        };
        let old = old.map(|old| match old {
            OldRow::Key(values) | OldRow::Row(values) => values.as_slice(),
        });
        let types = &self.catalog.types;
        let key_changed = !table.key.is_empty()
            && old.is_some_and(|old| {
                let (mut a, mut b) = (String::new(), String::new());
                let old_key = row(&mut a, types, &table.columns, old, Some(&table.key), None);
                let new_key = row(
                    &mut b,
                    types,
                    &table.columns,
                    new,
                    Some(&table.key),
                    Some(old),
                );
                old_key.is_ok() && new_key.is_ok() && a != b
            });
        let seq = self.seq;
        let items = match key_changed {
            false => vec![self.change(table, Operation::Update, old, Some(new), at, seq)],
            true => vec![
                self.change(table, Operation::Delete, old, None, at, seq),
                self.change(table, Operation::Insert, None, Some(new), at, seq + 1),
            ],
        };
        self.seq += items.len() as u64;
        items
    }

    /// The event of a deleted row.
    pub(super) fn delete(&mut self, id: u32, old: &OldRow<'_>, at: At) -> Option<Decoded> {
        let table = self.relations.get(&id)?;
        let (OldRow::Key(values) | OldRow::Row(values)) = old;
        let item = self.change(table, Operation::Delete, Some(values), None, at, self.seq);
        self.seq += 1;
        Some(item)
    }

    /// The events of a truncate: one per captured table.
    pub(super) fn truncate(&mut self, ids: &[u32], at: At) -> Vec<Decoded> {
        let mut items = Vec::new();
        for id in ids {
            if let Some(table) = self.relations.get(id) {
                items.push(self.change(table, Operation::Truncate, None, None, at, self.seq));
                self.seq += 1;
            }
        }
        items
    }

    /// Change number `seq` of its transaction as an event, or as a dead letter naming the
    /// table, the key and the reason.
    fn change(
        &self,
        table: &Table,
        op: Operation,
        old: Option<&[Value<'_>]>,
        new: Option<&[Value<'_>]>,
        at: At,
        seq: u64,
    ) -> Decoded {
        let change = Change { op, old, new };
        self.event(table, change, at, seq)
    }

    /// [`Self::change`]: the event of `change`.
    fn event(&self, table: &Table, change: Change<'_, '_>, at: At, seq: u64) -> Decoded {
        let Change { op, old, new } = change;
        let types = &self.catalog.types;
        let columns = &table.columns;
        let mut key = String::with_capacity(32);
        let built = (|| {
            if let (false, Some(values)) = (table.key.is_empty(), new.or(old)) {
                row(&mut key, types, columns, values, Some(&table.key), old)?;
            }
            let whole_old = if table.full {
                None
            } else {
                Some(table.key.as_slice())
            };
            // One buffer for the whole envelope, rows written straight into it.
            let mut out = String::with_capacity(256 + 48 * columns.len());
            envelope::open(&mut out);
            match (op, old) {
                (Operation::Update | Operation::Delete, Some(old)) => {
                    row(&mut out, types, columns, old, whole_old, None)?;
                }
                _ => out.push_str("null"),
            }
            envelope::after(&mut out);
            let mut unchanged = Vec::new();
            match new {
                Some(new) => {
                    let fill = old.filter(|_| table.full);
                    unchanged = row(&mut out, types, columns, new, None, fill)?;
                }
                None => out.push_str("null"),
            }
            // A streamed change: snapshot rows are written by `prepared.rs`.
            let origin = self.origin(table, at, "false");
            let now_ms = chrono::Utc::now().timestamp_millis();
            envelope::close(&mut out, &origin, op_letter(op), &unchanged, now_ms);
            Ok::<_, String>(out)
        })();
        self.finish(table, op, key, built, at, seq)
    }

    /// The envelope's `source` block for a change of `table` at `at`.
    fn origin<'a>(
        &'a self,
        table: &'a Table,
        at: At,
        snapshot: &'static str,
    ) -> envelope::Origin<'a> {
        envelope::Origin {
            db: &self.catalog.db,
            schema: &table.schema,
            table: &table.name,
            lsn: at.lsn,
            xid: at.txn.xid,
            commit_ms: at.txn.commit_time.timestamp_millis(),
            snapshot,
        }
    }

    /// Change number `seq` at `at` as an event with `key` and the envelope `built`, or as a
    /// dead letter naming the table, the key and the reason (the envelope could not be
    /// written, or it is over `source.max_event_bytes`).
    fn finish(
        &self,
        table: &Table,
        op: Operation,
        key: String,
        built: Result<String, String>,
        at: At,
        seq: u64,
    ) -> Decoded {
        let position = at.txn.position;
        // Written in place: a temporary string per part is measurable at snapshot rates.
        let mut id = String::with_capacity(32);
        let _ = write!(id, "{}:{seq}", Lsn::from_u64(position.0));
        let qualified = format!("{}.{}", table.schema, table.name);
        let rejected = |reason: String| {
            let key = if key.is_empty() {
                "(none)"
            } else {
                key.as_str()
            };
            Decoded::Rejected(Rejected {
                position,
                id: id.clone(),
                reason: format!("table {qualified}, key {key}: {reason}"),
            })
        };
        let payload = match built {
            Ok(payload) if payload.len() > self.max_event_bytes => {
                let size = payload.len();
                return rejected(format!(
                    "the change event is {size} bytes, over source.max_event_bytes ({})",
                    self.max_event_bytes
                ));
            }
            Ok(payload) => payload,
            Err(reason) => return rejected(reason),
        };
        let mut headers = String::with_capacity(32);
        let _ = write!(headers, "{{\"lsn\":\"{}\"}}", Lsn::from_u64(at.lsn));
        let (Ok(payload), Ok(headers)) = (
            RawValue::from_string(payload),
            RawValue::from_string(headers),
        ) else {
            return rejected("the change event is not valid JSON".into());
        };
        Decoded::Event(Event {
            id,
            subject: qualified,
            key,
            event_type: op.name().to_owned(),
            op,
            origin: Origin::Table {
                schema: table.schema.clone(),
                table: table.name.clone(),
            },
            payload,
            headers: Some(headers),
            created_at: at.txn.commit_time,
            position,
        })
    }
}

/// Debezium's operation letter.
fn op_letter(op: Operation) -> char {
    match op {
        Operation::Insert => 'c',
        Operation::Update => 'u',
        Operation::Delete => 'd',
        Operation::Read => 'r',
        _ => 't',
    }
}

#[cfg(test)]
mod tests;
