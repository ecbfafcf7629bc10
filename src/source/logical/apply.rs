//! The capture side of decoding: transactions (Begin, Commit), heartbeat messages and what may
//! be confirmed, with each change handed to the [`mapping`](super::mapping) to say what it is,
//! and what it maps to queued for handing out.

use super::mapping::Txn;
use super::pending::Decoded;
use super::tables::At;
use super::{LogicalSource, slot};
use crate::error::Result;
use crate::event::Position;
use crate::source::pgoutput::{self, Message};
use pgwire_replication::{Lsn, ReplicationEvent};

impl LogicalSource {
    /// Decodes one replication event into the pending batch. Returns whether a transaction
    /// ended (a good moment to hand out what is pending).
    pub(super) fn apply(&mut self, event: ReplicationEvent) -> Result<bool> {
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                commit_time_micros,
                xid,
            } => {
                self.txn = Some(Txn {
                    position: Position(final_lsn.as_u64()),
                    commit_time: super::event::pg_time(commit_time_micros),
                    xid,
                });
                self.tables.begin();
                self.snapshot.begin(xid);
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
            ReplicationEvent::XLogData {
                data, wal_start, ..
            } => self.xlog(&data, wal_start.as_u64())?,
            // Between transactions, a keepalive's `wal_end` is how far the server has read:
            // everything before it that the stream carries has arrived, so once that is settled
            // the slot may be confirmed there. Without this the confirmed position stops at the
            // last commit the stream carried, and the server's reading past it (unpublished
            // writes, heartbeat records, aborts) is never confirmed: a fast shutdown waits for
            // the walsender, which waits until the client confirms all it read, for ever.
            // (Mid-transaction, `wal_end` may lie past the commit still being sent.)
            ReplicationEvent::KeepAlive { wal_end, .. } if self.txn.is_none() => {
                if wal_end.as_u64() != 0 {
                    self.progress.marker(wal_end.as_u64());
                    self.confirm();
                }
            }
            ReplicationEvent::KeepAlive { .. } | ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(false)
    }

    /// A Relation, or a change at `lsn`: an outbox insert, or a captured table's change
    /// (anything else in XLogData is skipped).
    fn xlog(&mut self, data: &[u8], lsn: u64) -> Result<()> {
        let message = pgoutput::decode(data)?;
        if let Message::Relation(relation) = &message {
            self.mapping.relation(relation);
            self.tables.relation(relation);
            return Ok(());
        }
        let Some(txn) = self.txn else {
            return Ok(());
        };
        let at = At { lsn, txn };
        match message {
            Message::Insert {
                relation_id,
                values,
            } if self.tables.captures(relation_id) => {
                if let Some(decoded) = self.tables.insert(relation_id, &values, at) {
                    self.push(decoded);
                }
            }
            Message::Insert {
                relation_id,
                values,
            } => {
                if let Some(decoded) = self.mapping.insert(relation_id, &values, txn)? {
                    self.push(decoded);
                }
            }
            Message::Update {
                relation_id,
                old,
                new,
            } => {
                for decoded in self.tables.update(relation_id, old.as_ref(), &new, at) {
                    self.push(decoded);
                }
            }
            Message::Delete { relation_id, old } => {
                if let Some(decoded) = self.tables.delete(relation_id, &old, at) {
                    self.push(decoded);
                }
            }
            Message::Truncate { relation_ids, .. } => {
                for decoded in self.tables.truncate(&relation_ids, at) {
                    self.push(decoded);
                }
            }
            Message::Other(tag) => {
                tracing::trace!(tag = %(tag as char), "pgoutput message skipped");
            }
            _ => {}
        }
        Ok(())
    }

    /// A `pg_logical_emit_message`: a heartbeat, an event, or someone else's.
    fn message(&mut self, transactional: bool, lsn: u64, prefix: &str, content: &[u8]) {
        let logical = &self.config.logical;
        if !transactional && prefix == slot::heartbeat_prefix(&logical.message_prefix) {
            self.progress.marker(lsn);
            self.confirm();
            return;
        }
        if self.snapshot.is_watermark(prefix) {
            self.watermark(transactional, lsn, content);
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
        if let Some(decoded) = self.mapping.message(content, lsn, txn) {
            self.push(decoded);
        }
    }

    /// Queues a decoded event or rejected row, unless it is settled already: its transaction
    /// was confirmed, this process handed it out before the stream was lost, or the sink held
    /// it at start-up.
    pub(super) fn push(&mut self, item: Decoded) {
        let position = item.position();
        // A snapshot chunk waiting for its high watermark drops the rows the stream changes.
        if let Decoded::Event(event) = &item
            && let crate::event::Origin::Table { schema, table } = &event.origin
            && event.op != crate::event::Operation::Read
        {
            let truncate = event.op == crate::event::Operation::Truncate;
            self.snapshot.change(schema, table, &event.key, truncate);
        }
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
        if let Decoded::Event(event) = &item
            && let crate::event::Origin::Table { schema, table } = &event.origin
            && event.op != crate::event::Operation::Read
        {
            let labels = crate::metrics::TableLabels {
                schema: schema.clone(),
                table: table.clone(),
                op: event.op.name(),
            };
            crate::metrics::get()
                .table_changes
                .get_or_create(&labels)
                .inc();
        }
        self.pending.push(item);
    }
}
