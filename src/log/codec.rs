//! Record bodies: the bytes inside a frame, after the frame's length and checksum.
//!
//! Version 3 (written now) is a compact binary layout that stores the whole change event;
//! versions 2 (the same layout for outbox events only) and 1 (serde_json of the record) are
//! still read, so logs written by earlier releases stay readable.
//!
//! ```text
//! version 3:
//!   u8  version = 3
//!   u64 offset                 | fixed header: recovery and the index read only this part
//!   i64 appended_at seconds    | (the same in versions 2 and 3)
//!   u32 appended_at nanos      |
//!   u64 position
//!   i64 created_at seconds, u32 created_at nanos
//!   u8  operation (see Operation::to_byte), u8 origin: 0 outbox, 1 table, 2 message
//!   then each u32 length + bytes: topic, id, subject (aggregatetype), key (aggregateid), type;
//!   the origin's names (table: schema, table; message: prefix; outbox: none); payload;
//!   then headers as u32 length + bytes, or u32::MAX when absent.
//! version 2: as version 3 without the two bytes after created_at and without origin names
//!   (every event is an insert into the outbox).
//! ```
//!
//! All integers are little-endian. The payload and headers are stored exactly as received.

use super::record::Record;
use crate::event::{Event, Operation, Origin, Position};
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

/// The JSON body of the first format.
pub(crate) const VERSION_JSON: u8 = 1;

/// The binary body of outbox events only.
pub(crate) const VERSION_OUTBOX: u8 = 2;

/// The binary body of change events, written now.
pub(crate) const VERSION_BINARY: u8 = 3;

/// Bytes of the binary fixed header: version, offset, appended_at.
const FIXED_HEADER: usize = 1 + 8 + 8 + 4;

/// Length marker of absent headers.
const ABSENT: u32 = u32::MAX;

/// Origin byte of the outbox table.
const ORIGIN_OUTBOX: u8 = 0;
/// Origin byte of a captured table.
const ORIGIN_TABLE: u8 = 1;
/// Origin byte of a logical decoding message.
const ORIGIN_MESSAGE: u8 = 2;

/// What the index and recovery need from a body, without decoding the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// The record's offset.
    pub(crate) offset: u64,
    /// When it was appended.
    pub(crate) appended_at: DateTime<Utc>,
}

/// Whether a body of this version starts with the binary fixed header.
pub(crate) fn is_binary(version: u8) -> bool {
    version == VERSION_OUTBOX || version == VERSION_BINARY
}

/// The origin's byte and the names stored after the event's type.
fn origin_parts(origin: &Origin) -> (u8, [&str; 2], usize) {
    match origin {
        Origin::Outbox => (ORIGIN_OUTBOX, ["", ""], 0),
        Origin::Table { schema, table } => (ORIGIN_TABLE, [schema, table], 2),
        Origin::Message { prefix } => (ORIGIN_MESSAGE, [prefix, ""], 1),
    }
}

/// Exact length of the current body of a record with this topic and event.
pub(crate) fn body_len(topic: &str, event: &Event) -> usize {
    let (_, _, names) = origin_parts(&event.origin);
    FIXED_HEADER + 8 + 12 + 2 + 4 * (7 + names) + topic.len() + event.content_len()
}

/// Appends the current body of a record to `buf`.
pub(crate) fn encode(buf: &mut Vec<u8>, offset: u64, at: DateTime<Utc>, topic: &str, e: &Event) {
    buf.push(VERSION_BINARY);
    buf.extend_from_slice(&offset.to_le_bytes());
    put_time(buf, at);
    buf.extend_from_slice(&e.position.0.to_le_bytes());
    put_time(buf, e.created_at);
    let (origin, names, count) = origin_parts(&e.origin);
    buf.push(e.op.to_byte());
    buf.push(origin);
    for field in [topic, &e.id, &e.subject, &e.key, &e.event_type] {
        put_bytes(buf, field.as_bytes());
    }
    for name in &names[..count] {
        put_bytes(buf, name.as_bytes());
    }
    put_bytes(buf, e.payload.get().as_bytes());
    match &e.headers {
        Some(headers) => put_bytes(buf, headers.get().as_bytes()),
        None => buf.extend_from_slice(&ABSENT.to_le_bytes()),
    }
}

/// Reads the offset and append time of a body of any version.
pub(crate) fn header(body: &[u8]) -> Result<Header, String> {
    match body.first() {
        Some(&version) if is_binary(version) => {
            let mut src = Src { rest: &body[1..] };
            Ok(Header {
                offset: src.u64()?,
                appended_at: src.time()?,
            })
        }
        Some(_) => {
            let record = decode(body)?;
            Ok(Header {
                offset: record.offset,
                appended_at: record.appended_at,
            })
        }
        None => Err("empty body".to_owned()),
    }
}

/// Decodes a body of any version; the error says what is wrong with it.
pub(crate) fn decode(body: &[u8]) -> Result<Record, String> {
    match body.split_first() {
        Some((&VERSION_JSON, json)) => {
            serde_json::from_slice(json).map_err(|err| format!("undecodable record: {err}"))
        }
        Some((&version, rest)) if is_binary(version) => decode_binary(version, rest),
        Some((version, _)) => Err(format!("unknown format version {version}")),
        None => Err("empty body".to_owned()),
    }
}

/// Decodes a binary body of `version` after its version byte.
fn decode_binary(version: u8, rest: &[u8]) -> Result<Record, String> {
    let mut src = Src { rest };
    let offset = src.u64()?;
    let appended_at = src.time()?;
    let position = Position(src.u64()?);
    let created_at = src.time()?;
    let (op, origin) = if version == VERSION_BINARY {
        let op = src.byte()?;
        let op = Operation::from_byte(op).ok_or_else(|| format!("unknown operation {op}"))?;
        (op, src.byte()?)
    } else {
        (Operation::Insert, ORIGIN_OUTBOX)
    };
    let topic = src.string()?;
    let id = src.string()?;
    let subject = src.string()?;
    let key = src.string()?;
    let event_type = src.string()?;
    let origin = match origin {
        ORIGIN_OUTBOX => Origin::Outbox,
        ORIGIN_TABLE => Origin::Table {
            schema: src.string()?,
            table: src.string()?,
        },
        ORIGIN_MESSAGE => Origin::Message {
            prefix: src.string()?,
        },
        other => return Err(format!("unknown origin {other}")),
    };
    let payload = raw_json(src.string()?)?;
    let headers = match src.len()? {
        ABSENT => None,
        len => Some(raw_json(src.string_of(len as usize)?)?),
    };
    if !src.rest.is_empty() {
        return Err(format!(
            "{} unexpected bytes after the record",
            src.rest.len()
        ));
    }
    Ok(Record {
        offset,
        topic,
        appended_at,
        event: Event {
            id,
            subject,
            key,
            event_type,
            op,
            origin,
            payload,
            headers,
            created_at,
            position,
        },
    })
}

/// Wraps stored JSON text without re-encoding it.
fn raw_json(text: String) -> Result<Box<RawValue>, String> {
    RawValue::from_string(text).map_err(|err| format!("stored JSON is invalid: {err}"))
}

/// Appends a time as seconds and nanoseconds.
fn put_time(buf: &mut Vec<u8>, at: DateTime<Utc>) {
    buf.extend_from_slice(&at.timestamp().to_le_bytes());
    buf.extend_from_slice(&at.timestamp_subsec_nanos().to_le_bytes());
}

/// Appends a length-prefixed byte string.
fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf.extend_from_slice(bytes);
}

/// The unread rest of a body.
struct Src<'a> {
    /// Bytes not yet consumed.
    rest: &'a [u8],
}

impl<'a> Src<'a> {
    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.rest.len() < n {
            return Err("record ends early".to_owned());
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// One byte.
    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    /// A little-endian `u64`.
    fn u64(&mut self) -> Result<u64, String> {
        let bytes = self.take(8)?;
        Ok(u64::from_le_bytes(
            bytes.try_into().map_err(|_| "short u64")?,
        ))
    }

    /// A little-endian `u32` length.
    fn len(&mut self) -> Result<u32, String> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes(
            bytes.try_into().map_err(|_| "short u32")?,
        ))
    }

    /// A time stored as seconds and nanoseconds.
    fn time(&mut self) -> Result<DateTime<Utc>, String> {
        let secs = self.u64()? as i64;
        let nanos = self.len()?;
        DateTime::from_timestamp(secs, nanos).ok_or_else(|| format!("impossible time {secs}s"))
    }

    /// A length-prefixed UTF-8 string.
    fn string(&mut self) -> Result<String, String> {
        let len = self.len()? as usize;
        self.string_of(len)
    }

    /// A UTF-8 string of `len` bytes.
    fn string_of(&mut self, len: usize) -> Result<String, String> {
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a text field is not UTF-8".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::testing::event;

    #[test]
    fn a_binary_body_round_trips_every_field_and_has_the_predicted_length() {
        let mut sent = event(9, 300);
        sent.headers = Some(RawValue::from_string(r#"{"trace":"x"}"#.to_owned()).unwrap());
        let at = Utc::now();
        let mut buf = Vec::new();
        encode(&mut buf, 41, at, "orders", &sent);
        assert_eq!(buf.len(), body_len("orders", &sent));

        let record = decode(&buf).unwrap();
        assert_eq!((record.offset, record.appended_at), (41, at));
        assert_eq!(record.topic, "orders");
        assert_eq!(record.event.id, sent.id);
        assert_eq!(record.event.key, sent.key);
        assert_eq!(record.event.subject, sent.subject);
        assert_eq!(record.event.event_type, sent.event_type);
        assert_eq!(record.event.payload.get(), sent.payload.get());
        assert_eq!(record.event.headers.unwrap().get(), r#"{"trace":"x"}"#);
        assert_eq!(record.event.created_at, sent.created_at);
        assert_eq!(record.event.position, sent.position);
        assert_eq!(
            header(&buf).unwrap(),
            Header {
                offset: 41,
                appended_at: at
            }
        );
    }

    #[test]
    fn a_version_one_json_body_still_decodes() {
        let sent = event(3, 20);
        let json = format!(
            r#"{{"offset":3,"topic":"orders","appended_at":"2024-01-01T00:00:00Z","event":{}}}"#,
            serde_json::to_string(&sent).unwrap()
        );
        let mut body = vec![VERSION_JSON];
        body.extend_from_slice(json.as_bytes());
        let record = decode(&body).unwrap();
        assert_eq!(record.offset, 3);
        assert_eq!(record.event.payload.get(), sent.payload.get());
        assert_eq!(header(&body).unwrap().offset, 3);
    }

    #[test]
    fn a_cut_binary_body_is_an_error_not_a_panic() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, Utc::now(), "orders", &event(1, 10));
        for len in 0..buf.len() {
            assert!(decode(&buf[..len]).is_err(), "cut at {len}");
        }
    }
}
