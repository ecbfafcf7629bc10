//! Decoding the replication stream into the pending queue: transactions, the outbox's Relation
//! and Insert messages, and event messages.
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
use super::{LogicalSource, OpenTxn, slot};
use crate::error::{Error, ErrorKind, Result};
use crate::event::Position;
use crate::source::pgoutput::{self, Message};
use pgwire_replication::{Lsn, ReplicationEvent};

/// What a relation of the stream is to outboxd.
#[derive(Debug)]
pub(super) enum Layout {
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

impl LogicalSource {
    /// Decodes one replication event into the pending batch. Returns whether a transaction
    /// ended (a good moment to hand out what is pending).
    pub(super) fn apply(&mut self, event: ReplicationEvent) -> Result<bool> {
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                commit_time_micros,
                ..
            } => {
                self.txn = Some(OpenTxn {
                    position: Position(final_lsn.as_u64()),
                    commit_time: event::pg_time(commit_time_micros),
                });
                self.progress.begin(final_lsn.as_u64());
            }
            ReplicationEvent::Commit { lsn, end_lsn, .. } => {
                self.progress.commit(lsn.as_u64(), end_lsn.as_u64());
                self.txn = None;
                self.confirm();
                return Ok(true);
            }
            ReplicationEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => self.message(transactional, lsn.as_u64(), &prefix, &content),
            ReplicationEvent::XLogData { data, .. } => self.xlog(&data)?,
            ReplicationEvent::KeepAlive { .. } | ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(false)
    }

    /// A Relation or Insert (anything else in XLogData is skipped).
    fn xlog(&mut self, data: &[u8]) -> Result<()> {
        match pgoutput::decode(data)? {
            Message::Relation(relation) => {
                let ours =
                    relation.namespace == self.table.schema && relation.name == self.table.name;
                let layout = match ours {
                    false => Layout::Other,
                    true => {
                        let missing = event::missing(&relation, &self.config.columns);
                        match missing.is_empty() {
                            true => Layout::Outbox(Columns::of(&relation, &self.config.columns)),
                            false => Layout::Incomplete {
                                missing,
                                present: relation.columns.iter().map(|c| c.name.clone()).collect(),
                            },
                        }
                    }
                };
                self.relations.insert(relation.id, layout);
            }
            Message::Insert {
                relation_id,
                values,
            } => {
                let (Some(layout), Some(txn)) = (self.relations.get(&relation_id), self.txn) else {
                    return Ok(());
                };
                let columns = match layout {
                    Layout::Other => return Ok(()),
                    Layout::Outbox(columns) => columns,
                    Layout::Incomplete { missing, present } => {
                        return Err(self.incomplete(txn.position, missing, present));
                    }
                };
                let max = self.config.max_event_bytes;
                match event::from_row_within(columns, &values, txn.position, txn.commit_time, max) {
                    Ok(event) => self.push(Decoded::Event(event)),
                    Err(rejected) => self.push(Decoded::Rejected(rejected)),
                }
            }
            Message::Other(tag) => {
                tracing::trace!(tag = %(tag as char), "pgoutput message skipped");
            }
            _ => {}
        }
        Ok(())
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

    /// A `pg_logical_emit_message`: a heartbeat, an event, or someone else's.
    fn message(&mut self, transactional: bool, lsn: u64, prefix: &str, content: &[u8]) {
        let logical = &self.config.logical;
        if !transactional && prefix == slot::heartbeat_prefix(&logical.message_prefix) {
            self.progress.marker(lsn);
            self.confirm();
            return;
        }
        if prefix != logical.message_prefix {
            return;
        }
        let at = Lsn::from_u64(lsn).to_pg_string();
        let Some(txn) = self.txn.filter(|_| transactional) else {
            tracing::warn!(lsn = %at, "event message is not transactional; skipped (use \
                pg_logical_emit_message(true, ...))");
            return;
        };
        match event::from_message(prefix, content, lsn, txn.position, txn.commit_time) {
            Ok(event) => self.push(Decoded::Event(event)),
            Err(reason) => {
                tracing::error!(lsn = %at, reason, "invalid event message; dead-lettered");
                crate::metrics::get().dead_letters.inc();
            }
        }
    }

    /// Queues a decoded event or rejected row, unless it is settled already: its transaction
    /// was confirmed, this process handed it out before the stream was lost, or the sink held
    /// it at start-up.
    fn push(&mut self, item: Decoded) {
        let position = item.position();
        // Each filter follows the stream, so each sees every item.
        let settled = self.progress.settled(position);
        let handed = self.replay.repeats(position, item.id());
        let held = match (&mut self.resume, &item) {
            (Some(resume), Decoded::Event(event)) => resume.holds(event),
            _ => false,
        };
        if settled || handed || held {
            return;
        }
        self.progress.decoded(position);
        self.pending.push(item);
    }
}
