//! Mapping decoded changes to events, apart from the replication stream that carries them: the
//! outbox's Relation and Insert messages become outbox events (or rejected rows), and event
//! messages become events. The capture side ([`super::apply`]) tracks transactions, heartbeats
//! and progress, and asks this module what each change means; a new kind of change (a table
//! captured for CDC) is a new mapping here, not a change to the stream.
//!
//! # The outbox's columns
//! Every Relation message of the outbox carries its columns as they were when the following
//! rows were written. One that lacks a column outboxd reads (renamed or dropped) stops the
//! stream before the next row, with an error that names the column and the fix: the row's
//! transaction is never confirmed, so the server sends it again once the relay can read it.
//! Taking the missing value as NULL instead would dead-letter every later row and move the slot
//! past them.

use super::event::{self, Columns};
use super::pending::Decoded;
use crate::config::SourceConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::event::Position;
use crate::outbox::OutboxTable;
use crate::source::pgoutput::{Relation, Value};
use chrono::{DateTime, Utc};
use pgwire_replication::Lsn;
use std::collections::HashMap;

/// The transaction a change belongs to, as the capture side knows it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Txn {
    /// Its commit LSN: the position of its events.
    pub(super) position: Position,
    /// Its commit time, the `created_at` of emitted events.
    pub(super) commit_time: DateTime<Utc>,
    /// Its transaction id.
    pub(super) xid: u32,
}

/// What a relation of the stream is to outboxd.
#[derive(Debug)]
enum Layout {
    /// Some other table (published by someone else): its rows are skipped.
    Other,
    /// The outbox, with every column outboxd reads.
    Outbox(Columns),
    /// The outbox without some column outboxd reads: the `source.columns` keys and the
    /// columns it has instead.
    Incomplete {
        /// `(key, configured name)` of each missing column.
        missing: Vec<(&'static str, String)>,
        /// The columns the relation has.
        present: Vec<String>,
    },
}

/// Maps the changes of one stream to events; forgets its relations when the stream is lost.
pub(super) struct OutboxMapping {
    /// Source settings: the column names, the event size limit, the message prefix.
    config: SourceConfig,
    /// The outbox table's names.
    table: OutboxTable,
    /// Relations announced on this stream: what each is to outboxd.
    relations: HashMap<u32, Layout>,
    /// Whether the outbox table is read (`logical` mode; not `cdc`).
    outbox: bool,
}

impl OutboxMapping {
    /// A mapping for the outbox `table` as `config` names its columns.
    pub(super) fn new(config: &SourceConfig, table: &OutboxTable) -> Self {
        OutboxMapping {
            config: config.clone(),
            table: table.clone(),
            relations: HashMap::new(),
            outbox: config.mode.uses_outbox(),
        }
    }

    /// Forgets the relations of a stream that is gone (the next one announces them again).
    pub(super) fn clear(&mut self) {
        self.relations.clear();
    }

    /// Learns what a relation is: the outbox (with its columns, or missing some), or another
    /// table.
    pub(super) fn relation(&mut self, relation: &Relation) {
        let ours = self.outbox
            && relation.namespace == self.table.schema
            && relation.name == self.table.name;
        let layout = match ours {
            false => Layout::Other,
            true => {
                let missing = event::missing(relation, &self.config.columns);
                match missing.is_empty() {
                    true => Layout::Outbox(Columns::of(relation, &self.config.columns)),
                    false => Layout::Incomplete {
                        missing,
                        present: relation.columns.iter().map(|c| c.name.clone()).collect(),
                    },
                }
            }
        };
        self.relations.insert(relation.id, layout);
    }

    /// What an inserted row of `relation_id` in `txn` is: an event, a rejected row, or nothing
    /// (another table's, or a relation not announced). An error stops the stream before the row.
    pub(super) fn insert(
        &self,
        relation_id: u32,
        values: &[Value<'_>],
        txn: Txn,
    ) -> Result<Option<Decoded>> {
        let Some(layout) = self.relations.get(&relation_id) else {
            return Ok(None);
        };
        let columns = match layout {
            Layout::Other => return Ok(None),
            Layout::Outbox(columns) => columns,
            Layout::Incomplete { missing, present } => {
                return Err(self.incomplete(txn.position, missing, present));
            }
        };
        let max = self.config.max_event_bytes;
        Ok(Some(
            match event::from_row_within(columns, values, txn.position, txn.commit_time, max) {
                Ok(event) => Decoded::Event(event),
                Err(rejected) => Decoded::Rejected(rejected),
            },
        ))
    }

    /// What a transactional message with outboxd's prefix at `lsn` in `txn` is: an event, or
    /// nothing (an invalid one is logged with its LSN and counted as a dead letter; it has no
    /// row to mark).
    pub(super) fn message(&self, content: &[u8], lsn: u64, txn: Txn) -> Option<Decoded> {
        let prefix = &self.config.logical.message_prefix;
        match event::from_message(prefix, content, lsn, txn.position, txn.commit_time) {
            Ok(event) => Some(Decoded::Event(event)),
            Err(reason) => {
                let at = Lsn::from_u64(lsn).to_pg_string();
                tracing::error!(lsn = %at, reason, "invalid event message; dead-lettered");
                crate::metrics::get().dead_letters.inc();
                None
            }
        }
    }

    /// The error that stops the stream before a row of an outbox that lacks some column.
    fn incomplete(
        &self,
        position: Position,
        missing: &[(&'static str, String)],
        present: &[String],
    ) -> Error {
        let at = Lsn::from_u64(position.0).to_pg_string();
        let names: Vec<String> = missing
            .iter()
            .map(|(key, name)| format!("\"{name}\" (source.columns.{key})"))
            .collect();
        let keys: Vec<String> = missing
            .iter()
            .map(|(key, _)| format!("source.columns.{key}"))
            .collect();
        Error::new(
            ErrorKind::Schema,
            format!(
                "outbox table {table} has no column {names} in the transaction committed at \
                 {at} (renamed or dropped; the stream carries the columns as they were when the \
                 row was written: {present}); stopping before that row, which is not confirmed \
                 and is delivered once the relay can read it. If it was renamed, set {keys} to \
                 the name it had then and restart (set it back once the stream is past a rename \
                 back); if it was dropped, add it back, re-insert the rows written meanwhile, and \
                 move the slot past them with SELECT pg_replication_slot_advance('{slot}', \
                 '<an LSN after {at}>')",
                table = self.table.qualified,
                names = names.join(", "),
                present = present.join(", "),
                keys = keys.join(", "),
                slot = self.config.logical.slot,
            ),
        )
    }
}
