//! A decoder for the `pgoutput` logical replication protocol (version 1), as a pure function
//! over the bytes of one `XLogData` payload.
//!
//! Only what the outbox needs is decoded: Begin, Commit, Relation, Insert and Message. Every other
//! message (Update, Delete, Truncate, Type, Origin, and the streaming messages of later protocol
//! versions) is recognised by its tag and returned as [`Message::Other`], so a publication that
//! also carries them never stops the stream. Layouts follow "Logical Replication Message Formats"
//! in the PostgreSQL manual.

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
    /// Describes a table; sent before the first change of it in a session and after DDL.
    Relation(Relation),
    /// A new row.
    Insert {
        /// The table, as announced by an earlier [`Message::Relation`].
        relation_id: u32,
        /// Column values in the table's column order.
        values: Vec<Value<'a>>,
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
    /// Any other message, skipped; carries its tag for logging.
    Other(u8),
}

/// A table as described by a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The relation id that later Insert messages refer to.
    pub id: u32,
    /// Schema name (empty for `pg_catalog`).
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Column names in column order.
    pub columns: Vec<String>,
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

/// Decodes one `pgoutput` message.
pub fn decode(bytes: &[u8]) -> Result<Message<'_>> {
    let mut r = Reader { bytes, at: 0 };
    let tag = r.u8()?;
    let message = match tag {
        b'B' => Message::Begin {
            final_lsn: r.u64()?,
            commit_time: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => {
            let _flags = r.u8()?;
            Message::Commit {
                commit_lsn: r.u64()?,
                end_lsn: r.u64()?,
                commit_time: r.i64()?,
            }
        }
        b'R' => {
            let id = r.u32()?;
            let namespace = r.cstr()?.to_string();
            let name = r.cstr()?.to_string();
            let _replica_identity = r.u8()?;
            let count = r.u16()?;
            let mut columns = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let _flags = r.u8()?;
                columns.push(r.cstr()?.to_string());
                let _type_oid = r.u32()?;
                let _type_modifier = r.u32()?;
            }
            Message::Relation(Relation {
                id,
                namespace,
                name,
                columns,
            })
        }
        b'I' => {
            let relation_id = r.u32()?;
            let kind = r.u8()?;
            if kind != b'N' {
                return Err(malformed(format!(
                    "insert tuple marker {:?}, expected 'N'",
                    kind as char
                )));
            }
            Message::Insert {
                relation_id,
                values: r.tuple()?,
            }
        }
        b'M' => {
            let flags = r.u8()?;
            let lsn = r.u64()?;
            let prefix = r.cstr()?;
            let len = r.u32()? as usize;
            Message::Message {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content: r.take(len)?,
            }
        }
        other => Message::Other(other),
    };
    Ok(message)
}

/// A cursor over a message, failing on truncation instead of panicking.
struct Reader<'a> {
    /// The whole message.
    bytes: &'a [u8],
    /// Offset of the next unread byte.
    at: usize,
}

impl<'a> Reader<'a> {
    /// The next `len` bytes.
    fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len());
        let Some(end) = end else {
            return Err(malformed(format!(
                "truncated: {len} bytes wanted at offset {}, {} left",
                self.at,
                self.bytes.len() - self.at
            )));
        };
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    /// The next `N` bytes as an array.
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// One byte.
    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    /// A big-endian Int16.
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// A big-endian Int32.
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A big-endian Int64 read as unsigned (LSNs).
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A big-endian Int64.
    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// A NUL-terminated UTF-8 string.
    fn cstr(&mut self) -> Result<&'a str> {
        let rest = &self.bytes[self.at..];
        let Some(len) = rest.iter().position(|b| *b == 0) else {
            return Err(malformed("string without its NUL terminator"));
        };
        let text = std::str::from_utf8(&rest[..len])
            .map_err(|_| malformed("string is not UTF-8 (server_encoding must be UTF8)"))?;
        self.at += len + 1;
        Ok(text)
    }

    /// TupleData: a column count, then each column's kind and value.
    fn tuple(&mut self) -> Result<Vec<Value<'a>>> {
        let count = self.u16()?;
        let mut values = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let value = match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    Value::Text(self.take(len)?)
                }
                b'b' => {
                    let len = self.u32()? as usize;
                    Value::Binary(self.take(len)?)
                }
                other => {
                    return Err(malformed(format!(
                        "unknown column kind {:?}",
                        other as char
                    )));
                }
            };
            values.push(value);
        }
        Ok(values)
    }
}

/// A protocol violation: the stream cannot be trusted past it.
fn malformed(what: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        format!("malformed pgoutput message: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds messages the way the server lays them out.
    #[derive(Default)]
    struct Wire(Vec<u8>);

    impl Wire {
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn u16(mut self, v: u16) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn cstr(mut self, v: &str) -> Self {
            self.0.extend(v.as_bytes());
            self.0.push(0);
            self
        }
        fn text(self, v: &str) -> Self {
            let mut w = self.u8(b't').u32(v.len() as u32);
            w.0.extend(v.as_bytes());
            w
        }
    }

    #[test]
    fn begin_and_commit_carry_their_lsns() {
        let begin = Wire::default()
            .u8(b'B')
            .u64(0x1_0000_0010)
            .u64(5)
            .u32(731)
            .0;
        assert_eq!(
            decode(&begin).unwrap(),
            Message::Begin {
                final_lsn: 0x1_0000_0010,
                commit_time: 5,
                xid: 731
            }
        );
        let commit = Wire::default().u8(b'C').u8(0).u64(16).u64(72).u64(9).0;
        assert_eq!(
            decode(&commit).unwrap(),
            Message::Commit {
                commit_lsn: 16,
                end_lsn: 72,
                commit_time: 9
            }
        );
    }

    #[test]
    fn relation_then_insert_with_null_and_text_columns() {
        let relation = Wire::default()
            .u8(b'R')
            .u32(16_384)
            .cstr("public")
            .cstr("outbox")
            .u8(b'd')
            .u16(2)
            .u8(1)
            .cstr("id")
            .u32(2950)
            .u32(u32::MAX)
            .u8(0)
            .cstr("headers")
            .u32(3802)
            .u32(u32::MAX)
            .0;
        let Message::Relation(rel) = decode(&relation).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(
            (rel.id, rel.namespace.as_str(), rel.name.as_str()),
            (16_384, "public", "outbox")
        );
        assert_eq!(rel.columns, ["id", "headers"]);
        let insert = Wire::default()
            .u8(b'I')
            .u32(16_384)
            .u8(b'N')
            .u16(2)
            .text("6f1c")
            .u8(b'n')
            .0;
        assert_eq!(
            decode(&insert).unwrap(),
            Message::Insert {
                relation_id: 16_384,
                values: vec![Value::Text(b"6f1c"), Value::Null]
            }
        );
    }

    #[test]
    fn emitted_message_keeps_prefix_content_and_transactional_flag() {
        let message = Wire::default()
            .u8(b'M')
            .u8(1)
            .u64(99)
            .cstr("outboxd")
            .u32(2)
            .u8(b'{')
            .u8(b'}')
            .0;
        assert_eq!(
            decode(&message).unwrap(),
            Message::Message {
                transactional: true,
                lsn: 99,
                prefix: "outboxd",
                content: b"{}"
            }
        );
    }

    #[test]
    fn updates_deletes_truncates_types_origins_and_stream_messages_are_skipped() {
        for tag in [b'U', b'D', b'T', b'Y', b'O', b'S', b'E', b'c', b'A'] {
            assert_eq!(decode(&[tag, 1, 2, 3]).unwrap(), Message::Other(tag));
        }
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        let insert = Wire::default()
            .u8(b'I')
            .u32(1)
            .u8(b'N')
            .u16(1)
            .u8(b't')
            .u32(10)
            .0;
        let err = decode(&insert).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(decode(&[b'B', 0, 0]).is_err());
        assert!(decode(&[]).is_err());
        assert!(decode(&[b'R', 0, 0, 0, 1, b'x']).is_err());
    }
}
