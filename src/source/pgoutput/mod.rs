//! A decoder for the `pgoutput` logical replication protocol, versions 1 and 2, as a pure
//! function over the bytes of one `XLogData` payload.
//!
//! Every message kind of those versions decodes into a typed value: Begin, Commit, Origin,
//! Relation, Type, Insert, Update, Delete, Truncate, Message, and version 2's Stream Start,
//! Stop, Commit and Abort. Inside a streamed transaction (between Stream Start and Stream Stop)
//! version 2 puts the transaction's xid in front of Relation, Type, Insert, Update, Delete,
//! Truncate and Message; only a [`Decoder`], which follows the stream, knows when to read it,
//! so [`decode`] is for a session without streaming. Tags of later versions (two-phase commit)
//! come back as [`Message::Other`] so a newer server never stops the stream. Anything else that
//! does not match the layout is an [`ErrorKind::Corrupt`] error naming what is wrong, never a
//! panic. Layouts follow "Logical Replication Message Formats" in the PostgreSQL manual.

mod message;
mod reader;
#[cfg(test)]
mod tests;

use crate::error::{Error, ErrorKind, Result};

/// One decoded `pgoutput` message; borrowed values point into the payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A transaction starts.
    Begin {
        /// LSN of the commit record: the transaction's final LSN.
        final_lsn: u64,
        /// Commit time, microseconds since 2000-01-01.
        commit_time: i64,
        /// Transaction id.
        xid: u32,
    },
    /// The transaction ends.
    Commit {
        /// LSN of the commit record.
        commit_lsn: u64,
        /// End of the commit record: the position to confirm once the transaction is durable.
        end_lsn: u64,
        /// Commit time, microseconds since 2000-01-01.
        commit_time: i64,
    },
    /// The transaction was replicated into this server from another (sent after Begin when
    /// the publisher itself applied it from a subscription).
    Origin {
        /// LSN of the commit on the origin server.
        commit_lsn: u64,
        /// The origin's name.
        name: &'a str,
    },
    /// Describes a table; sent before the first change of it in a session and after DDL.
    Relation(Relation),
    /// Describes a data type a later Relation uses (only for types outside `pg_catalog`).
    Type {
        /// The type's OID.
        id: u32,
        /// Schema name (empty for `pg_catalog`).
        namespace: &'a str,
        /// Type name.
        name: &'a str,
    },
    /// A new row.
    Insert {
        /// The table, as announced by an earlier [`Message::Relation`].
        relation_id: u32,
        /// Column values in the table's column order.
        values: Vec<Value<'a>>,
    },
    /// A changed row.
    Update {
        /// The table, as announced by an earlier [`Message::Relation`].
        relation_id: u32,
        /// The old key or row, sent only when the key changed or with `REPLICA IDENTITY FULL`.
        old: Option<OldRow<'a>>,
        /// The new row; TOASTed values the update left alone are [`Value::Unchanged`].
        new: Vec<Value<'a>>,
    },
    /// A deleted row.
    Delete {
        /// The table, as announced by an earlier [`Message::Relation`].
        relation_id: u32,
        /// Its key (or whole row with `REPLICA IDENTITY FULL`).
        old: OldRow<'a>,
    },
    /// `TRUNCATE` of one or more tables.
    Truncate {
        /// `CASCADE` and `RESTART IDENTITY`.
        options: TruncateOptions,
        /// The tables truncated.
        relation_ids: Vec<u32>,
    },
    /// A `pg_logical_emit_message` call.
    Message {
        /// Whether it was emitted inside a transaction (and so arrives with its commit).
        transactional: bool,
        /// LSN of the message.
        lsn: u64,
        /// The prefix it was emitted with.
        prefix: &'a str,
        /// The content, as bytes.
        content: &'a [u8],
    },
    /// A block of a large in-progress transaction follows (version 2, `streaming 'on'`).
    StreamStart {
        /// The streamed transaction.
        xid: u32,
        /// Whether this is the transaction's first block.
        first_segment: bool,
    },
    /// The current block of a streamed transaction ends.
    StreamStop,
    /// A streamed transaction committed: apply its blocks.
    StreamCommit {
        /// The streamed transaction.
        xid: u32,
        /// LSN of the commit record.
        commit_lsn: u64,
        /// End of the commit record.
        end_lsn: u64,
        /// Commit time, microseconds since 2000-01-01.
        commit_time: i64,
    },
    /// A streamed transaction, or one of its subtransactions, aborted: discard its changes.
    StreamAbort {
        /// The streamed (top-level) transaction.
        xid: u32,
        /// The aborted subtransaction; equal to `xid` when the whole transaction aborted.
        subxid: u32,
        /// LSN and time of the abort, which version 4 adds for parallel apply.
        abort: Option<(u64, i64)>,
    },
    /// A message of a later protocol version (two-phase commit), skipped; carries its tag.
    Other(u8),
}

/// A table as described by a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The relation id that later change messages refer to.
    pub id: u32,
    /// Schema name (empty for `pg_catalog`).
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Which old values updates and deletes carry.
    pub replica_identity: ReplicaIdentity,
    /// The columns, in column order.
    pub columns: Vec<Column>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Whether the column is part of the key (the replica identity).
    pub key: bool,
    /// Column name.
    pub name: String,
    /// OID of its data type.
    pub type_id: u32,
    /// Its type modifier (`atttypmod`; -1 when none).
    pub type_modifier: i32,
}

impl Column {
    /// A non-key column of unknown type: what a caller that matches columns by name needs.
    pub fn named(name: impl Into<String>) -> Column {
        Column {
            key: false,
            name: name.into(),
            type_id: 0,
            type_modifier: -1,
        }
    }
}

/// A table's `REPLICA IDENTITY`: which old values an update or delete sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `DEFAULT`: the primary key.
    Default,
    /// `NOTHING`: no old values.
    Nothing,
    /// `FULL`: the whole old row.
    Full,
    /// `USING INDEX`: the columns of a unique index.
    Index,
}

/// The old values an Update or Delete carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldRow<'a> {
    /// Tag `K`: the key columns (others are null).
    Key(Vec<Value<'a>>),
    /// Tag `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Row(Vec<Value<'a>>),
}

/// The option bits of a Truncate message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TruncateOptions(pub u8);

impl TruncateOptions {
    /// Bit 1: `TRUNCATE … CASCADE`.
    pub const CASCADE: u8 = 1;
    /// Bit 2: `TRUNCATE … RESTART IDENTITY`.
    pub const RESTART_IDENTITY: u8 = 2;

    /// Whether the truncate cascaded to referencing tables.
    pub fn cascade(self) -> bool {
        self.0 & Self::CASCADE != 0
    }

    /// Whether sequences owned by the tables were reset.
    pub fn restart_identity(self) -> bool {
        self.0 & Self::RESTART_IDENTITY != 0
    }
}

/// One column value of a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value that was not sent (only in updates).
    Unchanged,
    /// The value in text format.
    Text(&'a [u8]),
    /// The value in binary format (only with `binary 'true'`, which outboxd does not request).
    Binary(&'a [u8]),
}

/// A message with the xid that version 2 puts in front of it inside a streamed transaction.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// The (sub)transaction the change belongs to, when it came inside a stream block.
    pub xid: Option<u32>,
    /// The message.
    pub message: Message<'a>,
}

/// Decodes the messages of one replication session in order, following Stream Start and
/// Stream Stop so it knows which messages carry a leading xid.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The transaction of the stream block being read, if one is open.
    stream: Option<u32>,
}

impl Decoder {
    /// Decodes the next message of the session. A Stream Start inside a block, or a Stream
    /// Stop, Stream Commit or Stream Abort inside none or the wrong one, is an error.
    pub fn decode<'a>(&mut self, bytes: &'a [u8]) -> Result<Decoded<'a>> {
        let decoded = message::decode(bytes, self.stream.is_some())?;
        match (&decoded.message, self.stream) {
            (Message::StreamStart { xid, .. }, None) => self.stream = Some(*xid),
            (Message::StreamStart { xid, .. }, Some(open)) => {
                return Err(malformed(format!(
                    "stream start of transaction {xid} inside the open block of {open}"
                )));
            }
            (Message::StreamStop, Some(_)) => self.stream = None,
            (Message::StreamStop, None) => {
                return Err(malformed("stream stop without a stream start"));
            }
            (Message::StreamCommit { xid, .. } | Message::StreamAbort { xid, .. }, Some(open)) => {
                return Err(malformed(format!(
                    "end of streamed transaction {xid} inside the open block of {open}"
                )));
            }
            (Message::Begin { .. } | Message::Commit { .. }, Some(open)) => {
                return Err(malformed(format!(
                    "begin or commit inside the open stream block of {open}"
                )));
            }
            _ => {}
        }
        Ok(decoded)
    }
}

/// Decodes one `pgoutput` message of a session without streaming (version 1, or version 2
/// with `streaming` off): no message carries a leading xid.
pub fn decode(bytes: &[u8]) -> Result<Message<'_>> {
    message::decode(bytes, false).map(|decoded| decoded.message)
}

/// A protocol violation: the stream cannot be trusted past it.
fn malformed(what: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        format!("malformed pgoutput message: {what}"),
    )
}
