//! The layout of each message kind: which fields, in which order, follow the tag.

use super::reader::Reader;
use super::{Column, Decoded, Message, Relation, ReplicaIdentity, TruncateOptions, malformed};
use crate::error::Result;

/// Bytes a column description takes at the least: flags, an empty name's NUL, type and
/// modifier.
const MIN_COLUMN_BYTES: usize = 1 + 1 + 4 + 4;

/// Decodes one message; `in_stream` says whether it came inside a stream block, where the
/// change messages carry a leading xid.
pub(super) fn decode(bytes: &[u8], in_stream: bool) -> Result<Decoded<'_>> {
    let mut r = Reader::new(bytes);
    let tag = r.u8()?;
    // Version 2 sends the xid first in these, but only inside a stream block.
    let xid = match (in_stream, tag) {
        (true, b'R' | b'Y' | b'I' | b'U' | b'D' | b'T' | b'M') => Some(r.u32()?),
        _ => None,
    };
    let (message, kind) = match tag {
        b'B' => (begin(&mut r)?, "begin"),
        b'C' => (commit(&mut r)?, "commit"),
        b'O' => (
            Message::Origin {
                commit_lsn: r.u64()?,
                name: r.cstr()?,
            },
            "origin",
        ),
        b'R' => (Message::Relation(relation(&mut r)?), "relation"),
        b'Y' => (
            Message::Type {
                id: r.u32()?,
                namespace: r.cstr()?,
                name: r.cstr()?,
            },
            "type",
        ),
        b'I' => (
            Message::Insert {
                relation_id: r.u32()?,
                values: r.new_row("insert")?,
            },
            "insert",
        ),
        b'U' => (update(&mut r)?, "update"),
        b'D' => {
            let relation_id = r.u32()?;
            let tag = r.u8()?;
            let old = r.old_row(tag)?;
            (Message::Delete { relation_id, old }, "delete")
        }
        b'T' => (truncate(&mut r)?, "truncate"),
        b'M' => (emitted(&mut r)?, "message"),
        b'S' => (
            Message::StreamStart {
                xid: r.u32()?,
                first_segment: flag(r.u8()?, "stream start first-segment")?,
            },
            "stream start",
        ),
        b'E' => (Message::StreamStop, "stream stop"),
        b'c' => (stream_commit(&mut r)?, "stream commit"),
        b'A' => (stream_abort(&mut r)?, "stream abort"),
        other => {
            return Ok(Decoded {
                xid: None,
                message: Message::Other(other),
            });
        }
    };
    r.finish(kind)?;
    Ok(Decoded { xid, message })
}

/// Begin: final LSN, commit time, xid.
fn begin<'a>(r: &mut Reader<'a>) -> Result<Message<'a>> {
    Ok(Message::Begin {
        final_lsn: r.u64()?,
        commit_time: r.i64()?,
        xid: r.u32()?,
    })
}

/// Commit: unused flags, commit LSN, end LSN, commit time.
fn commit<'a>(r: &mut Reader<'a>) -> Result<Message<'a>> {
    let _flags = r.u8()?;
    Ok(Message::Commit {
        commit_lsn: r.u64()?,
        end_lsn: r.u64()?,
        commit_time: r.i64()?,
    })
}

/// Relation: id, schema, name, replica identity, then each column.
fn relation(r: &mut Reader<'_>) -> Result<Relation> {
    let id = r.u32()?;
    let namespace = r.cstr()?.to_owned();
    let name = r.cstr()?.to_owned();
    let replica_identity = match r.u8()? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        other => {
            return Err(malformed(format!(
                "replica identity {:?} of relation {id}, expected 'd', 'n', 'f' or 'i'",
                other as char
            )));
        }
    };
    let announced = r.u16()? as usize;
    let count = r.count(announced, MIN_COLUMN_BYTES, "columns")?;
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        let flags = r.u8()?;
        columns.push(Column {
            key: flags & 1 != 0,
            name: r.cstr()?.to_owned(),
            type_id: r.u32()?,
            type_modifier: r.i32()?,
        });
    }
    Ok(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

/// Update: relation id, an optional old key (`K`) or old row (`O`), then the new row (`N`).
fn update<'a>(r: &mut Reader<'a>) -> Result<Message<'a>> {
    let relation_id = r.u32()?;
    let tag = r.u8()?;
    let (old, marker) = match tag {
        b'K' | b'O' => (Some(r.old_row(tag)?), r.u8()?),
        other => (None, other),
    };
    let new = r.new_row_after(marker, "update")?;
    Ok(Message::Update {
        relation_id,
        old,
        new,
    })
}

/// Truncate: how many relations, option bits, then their ids.
fn truncate<'a>(r: &mut Reader<'a>) -> Result<Message<'a>> {
    let announced = r.u32()? as usize;
    let options = TruncateOptions(r.u8()?);
    let count = r.count(announced, 4, "truncated relations")?;
    let relation_ids = (0..count).map(|_| r.u32()).collect::<Result<_>>()?;
    Ok(Message::Truncate {
        options,
        relation_ids,
    })
}

/// Message: flags (bit 1: transactional), LSN, prefix, content length and content.
fn emitted<'a>(r: &mut Reader<'a>) -> Result<Message<'a>> {
    let flags = r.u8()?;
    let lsn = r.u64()?;
    let prefix = r.cstr()?;
    let len = r.u32()? as usize;
    Ok(Message::Message {
        transactional: flags & 1 == 1,
        lsn,
        prefix,
        content: r.take(len)?,
    })
}

/// Stream Commit: xid, unused flags, commit LSN, end LSN, commit time.
fn stream_commit<'a>(r: &mut Reader<'a>) -> Result<Message<'a>> {
    let xid = r.u32()?;
    let _flags = r.u8()?;
    Ok(Message::StreamCommit {
        xid,
        commit_lsn: r.u64()?,
        end_lsn: r.u64()?,
        commit_time: r.i64()?,
    })
}

/// Stream Abort: xid, subtransaction xid, and (version 4) the abort's LSN and time.
fn stream_abort<'a>(r: &mut Reader<'a>) -> Result<Message<'a>> {
    let xid = r.u32()?;
    let subxid = r.u32()?;
    let abort = match r.left() {
        0 => None,
        16 => Some((r.u64()?, r.i64()?)),
        left => {
            return Err(malformed(format!(
                "{left} bytes after the end of a stream abort message (version 4 adds 16)"
            )));
        }
    };
    Ok(Message::StreamAbort { xid, subxid, abort })
}

/// A byte that must be 0 or 1.
fn flag(byte: u8, what: &str) -> Result<bool> {
    match byte {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(malformed(format!("{what} flag {other}, expected 0 or 1"))),
    }
}
