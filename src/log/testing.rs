//! Helpers shared by the log's unit tests.

use super::{LogReader, LogWriter, NewRecord, Record, segment};
use crate::event::{Event, Position};
use chrono::DateTime;
use serde_json::value::RawValue;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The event numbered `n`, with a payload of about `payload_len` bytes that depends on `n`, so
/// a record read back can be compared with what was sent.
pub(crate) fn event(n: u64, payload_len: usize) -> Event {
    let filler: String = (0..payload_len)
        .map(|i| char::from(b'a' + ((n as usize + i) % 26) as u8))
        .collect();
    let payload = format!(r#"{{"n":{n},"filler":"{filler}","nested":[1,{{"x":null}}]}}"#);
    Event {
        id: format!("event-{n}"),
        subject: "orders".to_owned(),
        key: format!("order-{}", n % 7),
        op: crate::event::Operation::Insert,
        origin: crate::event::Origin::Outbox,
        event_type: "OrderPlaced".to_owned(),
        payload: RawValue::from_string(payload).unwrap(),
        headers: None,
        created_at: DateTime::from_timestamp(1_700_000_000 + n as i64, 0).unwrap(),
        position: Position(n),
    }
}

/// Appends the events numbered `numbers` as one batch and returns the offsets assigned.
pub(crate) fn append_range(
    writer: &mut LogWriter,
    numbers: Range<u64>,
    payload_len: usize,
) -> Range<u64> {
    try_append_range(writer, numbers, payload_len).unwrap()
}

/// [`append_range`] that returns the writer's error; the same numbers always give the same
/// events, so a failed call can be retried.
pub(crate) fn try_append_range(
    writer: &mut LogWriter,
    numbers: Range<u64>,
    payload_len: usize,
) -> crate::error::Result<Range<u64>> {
    let events: Vec<Event> = numbers.map(|n| event(n, payload_len)).collect();
    let batch: Vec<NewRecord<'_>> = events
        .iter()
        .map(|event| NewRecord {
            topic: &event.subject,
            event,
        })
        .collect();
    writer.append(&batch)
}

/// Every record from the reader's position to the current end of the log.
pub(crate) fn read_all(reader: &mut LogReader) -> Vec<Record> {
    let mut records = Vec::new();
    while let Some(record) = reader.next().unwrap() {
        records.push(record);
    }
    records
}

/// Paths of the segment files in `dir`, in offset order.
pub(crate) fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    segment::list(dir)
        .unwrap()
        .into_iter()
        .map(|base| segment::path(dir, base))
        .collect()
}

/// Copies the files of `from` (not recursive) into `to`.
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Inverts one bit of the byte at `at` in the file at `path`.
pub(crate) fn flip_byte(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= 0x04;
    std::fs::write(path, bytes).unwrap();
}

/// Byte positions of the frames of the segment at `path`, in order, up to its first frame
/// that is not valid.
pub(crate) fn frame_starts(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap();
    let mut src = std::io::Cursor::new(&bytes);
    let mut starts = Vec::new();
    let mut pos = 0;
    while let super::frame::Frame::Valid(body) = super::frame::read_frame(&mut src).unwrap() {
        starts.push(pos);
        pos += super::frame::Frame::len_on_disk(&body);
    }
    starts
}
