//! Entry points for the fuzz targets in `fuzz/` and for `tests/fuzz_regressions.rs`, which
//! replays the inputs they found. Not a stable API.
//!
//! Each entry point takes arbitrary bytes and runs them through the code that handles bytes
//! from outside the process: `pgoutput` messages from the replication stream, a record body
//! and its frame, a log directory left by a crash, a disk error or someone else's program.
//! That code must answer every input with a value or an error, never with a panic, a hang or
//! an allocation sized by a length field it has not checked. The entry points return nothing;
//! they panic only where a property that must hold for every input does not (each `assert!`
//! says which), so the fuzzer reports it as a crash.

use crate::config::ColumnsConfig;
use crate::event::{Event, Position};
use crate::log::NewRecord;
use crate::log::frame::{self, Frame, HEADER_LEN};
use crate::log::{Durability, LogReader, LogWriter, WriterOptions, codec, index, segment};
use crate::source::logical::event::{self as logical_event, Columns};
use crate::source::pgoutput::{self, Column, Message, OldRow, Relation, ReplicaIdentity};
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use std::io::Cursor;
use std::path::Path;

/// Separates the messages of a [`pgoutput_message`] input.
pub const MESSAGE_MARK: &[u8] = b"\n@@msg@@";

/// Most messages one input may hold, to keep one run short.
const MAX_MESSAGES: usize = 64;

/// Decodes `data` as the payloads of consecutive `XLogData` messages of one session (split at
/// [`MESSAGE_MARK`]; an input without one is a single message) and, where the relay would go
/// on, turns each result into an event the way the logical source does.
///
/// One [`pgoutput::Decoder`] reads them all, so a Stream Start lets the fuzzer reach the
/// streamed forms of the change messages (with their leading xid). An Insert, the new row of
/// an Update and the old row of a Delete are read as rows of an outbox table with the default
/// column layout, and an emitted message as an event message, so the fuzzer reaches the row
/// and message checks too.
pub fn pgoutput_message(data: &[u8]) {
    let mut decoder = pgoutput::Decoder::default();
    for payload in split(data, MESSAGE_MARK).take(MAX_MESSAGES) {
        if let Ok(decoded) = decoder.decode(payload) {
            map_message(decoded.message);
        }
    }
}

/// Runs one decoded message through the mapping the logical source applies to it.
fn map_message(message: Message<'_>) {
    let columns = ColumnsConfig::default();
    let outbox = Columns::of(&outbox_relation(&columns), &columns);
    let row = |values: &[pgoutput::Value<'_>]| {
        let _ = logical_event::from_row(&outbox, values, Position(1), logical_event::pg_time(0));
    };
    match message {
        Message::Begin { commit_time, .. }
        | Message::Commit { commit_time, .. }
        | Message::StreamCommit { commit_time, .. } => {
            logical_event::pg_time(commit_time);
        }
        Message::StreamAbort {
            abort: Some((_, time)),
            ..
        } => {
            logical_event::pg_time(time);
        }
        Message::Relation(relation) => {
            Columns::of(&relation, &columns);
        }
        Message::Insert { values, .. } | Message::Update { new: values, .. } => row(&values),
        Message::Delete { old, .. } => match old {
            OldRow::Key(values) | OldRow::Row(values) => row(&values),
        },
        Message::Message { lsn, content, .. } => {
            let _ = logical_event::from_message(
                "outboxd",
                content,
                lsn,
                Position(lsn),
                logical_event::pg_time(0),
            );
        }
        Message::Origin { .. }
        | Message::Type { .. }
        | Message::Truncate { .. }
        | Message::StreamStart { .. }
        | Message::StreamStop
        | Message::StreamAbort { abort: None, .. }
        | Message::Other(_) => {}
    }
}

/// The outbox table as a Relation message announces it, columns in migration order.
fn outbox_relation(names: &ColumnsConfig) -> Relation {
    let columns = [
        &names.id,
        &names.aggregate_type,
        &names.aggregate_id,
        &names.event_type,
        &names.payload,
        &names.headers,
        &names.created_at,
    ];
    Relation {
        id: 1,
        namespace: "public".to_owned(),
        name: "outbox".to_owned(),
        replica_identity: ReplicaIdentity::Default,
        columns: columns.into_iter().map(Column::named).collect(),
    }
}

/// Decodes `data` both as a record body (what a reader decodes once a frame's checksum
/// matched) and as a run of frames (what recovery and readers read from a segment).
///
/// Properties checked: a body that decodes has a header that agrees with it, and re-encoding
/// the record gives a body that decodes to the same record.
pub fn log_record(data: &[u8]) {
    check_body(data);
    let mut src = Cursor::new(data);
    while let Ok(Frame::Valid(body)) = frame::read_frame(&mut src) {
        check_body(&body);
    }
}

/// Decodes one body and checks it against its header and its re-encoding.
fn check_body(body: &[u8]) {
    let header = codec::header(body);
    let Ok(record) = frame::decode_body(body) else {
        return;
    };
    let expected = codec::Header {
        offset: record.offset,
        appended_at: record.appended_at,
    };
    assert_eq!(
        header,
        Ok(expected),
        "the header disagrees with the decoded record"
    );
    let mut again = Vec::new();
    let new = NewRecord {
        topic: &record.topic,
        event: &record.event,
    };
    if frame::encode_frame(&mut again, record.offset, record.appended_at, &new).is_err() {
        return;
    }
    let decoded = frame::decode_body(&again[HEADER_LEN..])
        .expect("a decoded record must decode again after encoding");
    assert_eq!(
        serde_json::to_string(&decoded).ok(),
        serde_json::to_string(&record).ok(),
        "re-encoding changed the record"
    );
}

/// Separates the files of a [`log_directory`] input.
pub const FILE_MARK: &[u8] = b"\n@@file@@";

/// Flag (first input byte) of [`log_directory`]: recompute every frame's checksum.
pub const FIX_FRAME_CHECKSUMS: u8 = 1;

/// Flag (first input byte) of [`log_directory`]: recompute every index entry's checksum.
pub const FIX_INDEX_CHECKSUMS: u8 = 2;

/// Most files one input may create, to keep one run short.
const MAX_FILES: usize = 16;

/// Writes a log directory described by `data` into the empty directory `dir`, reads it, seeks
/// in it, opens a writer on it (recovery), and appends to and reads it again.
///
/// Input layout: one flags byte ([`FIX_FRAME_CHECKSUMS`], [`FIX_INDEX_CHECKSUMS`]), then files
/// separated by [`FILE_MARK`], each a kind byte and the content: `L` a segment, `I` the index
/// of the segment before it; other kinds are skipped. A segment's base offset (its file name)
/// is the offset in its first frame's header when that is readable and above the previous
/// segment's, else one above the previous base. The checksum flags let the fuzzer change
/// lengths and bodies without having to forge a CRC, which it cannot, so it gets past the
/// checksum into the record and recovery logic.
///
/// Properties checked: no read returns more records than the bytes could hold; after a
/// writer opened (recovery succeeded) and appended a record, a reader that reads the whole
/// log without error ends with that record.
pub fn log_directory(data: &[u8], dir: &Path) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut last_base: Option<u64> = None;
    for file in split(rest, FILE_MARK).take(MAX_FILES) {
        let Some((&kind, content)) = file.split_first() else {
            continue;
        };
        let mut content = content.to_vec();
        match kind {
            b'L' => {
                if flags & FIX_FRAME_CHECKSUMS != 0 {
                    fix_frame_checksums(&mut content);
                }
                let base = match (first_offset(&content), last_base) {
                    (Some(offset), Some(last)) if offset > last => offset,
                    (Some(offset), None) => offset,
                    (_, Some(last)) => last.saturating_add(1),
                    (None, None) => 0,
                };
                if last_base == Some(base) {
                    continue; // u64::MAX already taken
                }
                last_base = Some(base);
                write(&segment::path(dir, base), &content);
            }
            b'I' => {
                let Some(base) = last_base else { continue };
                if flags & FIX_INDEX_CHECKSUMS != 0 {
                    fix_index_checksums(&mut content);
                }
                write(&segment::index_path(dir, base), &content);
            }
            _ => {}
        }
    }
    // Each record takes at least a frame header and a version byte.
    let most = data.len() / (HEADER_LEN + 1) + 1;

    let Ok(mut reader) = LogReader::open(dir) else {
        return;
    };
    let (records, _) = read_to_end(&mut reader, most);
    let _ = reader.bounds();
    let first = records.first().copied();
    let middle = records.get(records.len() / 2).copied();
    let last = records.last().copied();
    let offsets = [first, middle, last]
        .into_iter()
        .flatten()
        .map(|(offset, _)| offset);
    for offset in offsets.chain([0, u64::MAX]) {
        if reader.seek(offset).is_ok() {
            let _ = reader.next();
        }
    }
    let times = [first, middle, last]
        .into_iter()
        .flatten()
        .map(|(_, at)| at);
    for time in times.chain([DateTime::UNIX_EPOCH, DateTime::<Utc>::MAX_UTC]) {
        if reader.seek_time(time).is_ok() {
            let _ = reader.next();
        }
    }

    let options = WriterOptions {
        index_interval_bytes: 256,
        durability: Durability::None,
        ..WriterOptions::with_segment_bytes(4096)
    };
    let Ok(mut writer) = LogWriter::open(dir, options) else {
        return;
    };
    let event = sample_event();
    let batch = [NewRecord {
        topic: "fuzz",
        event: &event,
    }];
    let Ok(appended) = writer.append(&batch) else {
        return;
    };
    drop(writer);
    let Ok(mut reader) = LogReader::open(dir) else {
        return;
    };
    let (records, clean) = read_to_end(&mut reader, most + 1);
    if clean {
        assert_eq!(
            records.last().map(|(offset, _)| *offset),
            Some(appended.start),
            "a record appended after recovery is not the last one read"
        );
    }
}

/// Reads until the end of the log or an error, at most `most` records (more is a bug: the
/// bytes cannot hold them). Returns (offset, append time) of each and whether the end was
/// reached without an error.
fn read_to_end(reader: &mut LogReader, most: usize) -> (Vec<(u64, DateTime<Utc>)>, bool) {
    let mut records = Vec::new();
    loop {
        match reader.next() {
            Ok(Some(record)) => {
                records.push((record.offset, record.appended_at));
                assert!(
                    records.len() <= most,
                    "read more records than the bytes can hold"
                );
            }
            Ok(None) => return (records, true),
            Err(_) => return (records, false),
        }
    }
}

/// The pieces of `data` between occurrences of `mark`.
fn split<'a>(data: &'a [u8], mark: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.windows(mark.len()).position(|w| w == mark) {
            Some(at) => {
                rest = Some(&current[at + mark.len()..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// Offset in the header of the first frame of a segment's bytes, if the header is readable.
fn first_offset(segment: &[u8]) -> Option<u64> {
    let body = segment.get(HEADER_LEN..)?;
    codec::header(body).ok().map(|header| header.offset)
}

/// Sets the checksum of each frame whose length fits in the bytes left to that of its body.
fn fix_frame_checksums(segment: &mut [u8]) {
    let mut at = 0;
    while let Some(header) = segment.get(at..at + HEADER_LEN) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let body = at + HEADER_LEN;
        let Some(end) = body.checked_add(len).filter(|end| *end <= segment.len()) else {
            return;
        };
        let crc = crc32c::crc32c(&segment[body..end]);
        segment[at + 4..body].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}

/// Sets the checksum of each whole index entry to that of its other bytes.
fn fix_index_checksums(entries: &mut [u8]) {
    for entry in entries.chunks_exact_mut(index::ENTRY_LEN) {
        let crc = crc32c::crc32c(&entry[..index::ENTRY_LEN - 4]);
        entry[index::ENTRY_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Writes a file of the fuzzed directory; failing to is a problem of the harness.
fn write(path: &Path, content: &[u8]) {
    std::fs::write(path, content).expect("writing a file of the fuzzed log directory");
}

/// The event appended after recovery.
fn sample_event() -> Event {
    Event {
        id: "fuzz-1".to_owned(),
        subject: "fuzz".to_owned(),
        key: "1".to_owned(),
        op: crate::event::Operation::Insert,
        origin: crate::event::Origin::Outbox,
        event_type: "Appended".to_owned(),
        payload: RawValue::from_string("{}".to_owned()).expect("valid JSON"),
        headers: None,
        created_at: DateTime::UNIX_EPOCH,
        position: Position(1),
    }
}
