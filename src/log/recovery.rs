//! Recovery of the last segment when a writer opens: keep every whole, valid record and cut off
//! whatever a crash left half-written after them.

use super::frame::{self, Frame};
use super::index::{Entry, Sampler};
use super::scan;
use crate::error::{Error, ErrorKind, Result};
use chrono::{DateTime, Utc};
use std::fs::{File, OpenOptions};
use std::io::BufReader;
use std::path::Path;

/// What recovery found in the last segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// Length of the segment after recovery: the end of its last valid frame.
    pub(crate) valid_bytes: u64,
    /// Offset the next appended record gets.
    pub(crate) next_offset: u64,
    /// The segment's sparse index, rebuilt from the records kept.
    pub(crate) entries: Vec<Entry>,
    /// Append time of the segment's first record, if it has one (for rolling by age).
    pub(crate) first_at: Option<DateTime<Utc>>,
    /// Append time of its last record, if it has one (append times never go back).
    pub(crate) last_at: Option<DateTime<Utc>>,
}

/// Scans the segment at `path` (whose first record has offset `base`) frame by frame and
/// truncates it after the last valid frame, fsyncing the cut; rebuilds its index on the way,
/// with an entry every `interval` bytes.
///
/// An incomplete frame, an impossible length, a checksum mismatch or an undecodable body at
/// the end mean the same here: the tail of a write that never completed, since nothing
/// acknowledged it. Bodies are decoded whole, not just their header: a record readers cannot
/// decode would stop them for good, and the writer would append after it. Two things are
/// reported as [`ErrorKind::Corrupt`] instead of being cut, because cutting would throw away
/// records that were acknowledged:
/// - a valid frame with the wrong offset (the writer never produces one);
/// - damage followed anywhere by a valid record of a later offset: damage in the middle of
///   the data (bit rot, a stray write), not a torn tail. The damaged frame's length is not
///   trusted to find what follows (see [`scan`]): a flipped bit in it must not turn the rest
///   of the segment into "tail".
pub(crate) fn recover(path: &Path, base: u64, interval: u64) -> Result<Recovered> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|err| Error::io(format!("opening log segment {}", path.display()), err))?;
    let read_error = |err| Error::io(format!("reading log segment {}", path.display()), err);
    let file_len = file.metadata().map_err(read_error)?.len();

    let mut src = BufReader::with_capacity(1 << 16, &file);
    let mut sampler = Sampler::new(interval);
    let mut found = Recovered {
        valid_bytes: 0,
        next_offset: base,
        entries: Vec::new(),
        first_at: None,
        last_at: None,
    };
    let torn_reason = loop {
        let body = match frame::read_frame(&mut src).map_err(read_error)? {
            Frame::Valid(body) => body,
            Frame::End => break None,
            Frame::Incomplete => break Some("incomplete frame".to_owned()),
            Frame::Damaged(reason) => break Some(reason),
        };
        let decoded = match frame::decode_body(&body) {
            Ok(decoded) => decoded,
            Err(reason) => break Some(format!("record does not decode: {reason}")),
        };
        if decoded.offset != found.next_offset {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "log segment {} holds offset {} at byte {} where offset {} belongs",
                    path.display(),
                    decoded.offset,
                    found.valid_bytes,
                    found.next_offset
                ),
            ));
        }
        if sampler.take(found.valid_bytes) {
            found.entries.push(Entry {
                offset: decoded.offset,
                pos: found.valid_bytes,
                appended_at: decoded.appended_at,
            });
        }
        found.first_at.get_or_insert(decoded.appended_at);
        found.last_at = Some(decoded.appended_at);
        found.valid_bytes += Frame::len_on_disk(&body);
        found.next_offset += 1;
    };

    if let Some(reason) = torn_reason {
        // The damaged frame's length may itself be the damage: look at every byte after it.
        let after =
            scan::valid_frame_after(&file, found.valid_bytes + 1, file_len, found.next_offset)
                .map_err(|err| Error::io("reading past damage in a log segment", err))?;
        if let Some(valid) = after {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "log segment {} is corrupt at byte {} (offset {}: {reason}) and valid \
                     records follow (offset {} at byte {}); refusing to cut acknowledged \
                     records. Restore the segment from a backup, or truncate it at byte {} by \
                     hand to accept the loss of every record from offset {} on",
                    path.display(),
                    found.valid_bytes,
                    found.next_offset,
                    valid.offset,
                    valid.pos,
                    found.valid_bytes,
                    found.next_offset
                ),
            ));
        }
        truncate(&file, path, found.valid_bytes)?;
        tracing::warn!(
            path = %path.display(),
            offset = found.next_offset,
            valid_bytes = found.valid_bytes,
            dropped_bytes = file_len - found.valid_bytes,
            reason,
            "truncated torn tail of embedded log from this offset on"
        );
    }
    Ok(found)
}

/// Cuts `file` to `len` bytes and makes the cut durable before anything is appended after it.
fn truncate(file: &File, path: &Path, len: u64) -> Result<()> {
    let truncate_error = |err| {
        Error::io(
            format!("truncating torn tail of log segment {}", path.display()),
            err,
        )
    };
    file.set_len(len).map_err(truncate_error)?;
    file.sync_all().map_err(truncate_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::frame::HEADER_LEN;
    use crate::log::testing::{
        append_range, copy_dir, flip_byte, frame_starts, read_all, segment_paths,
    };
    use crate::log::{LogReader, LogWriter, NewRecord, WriterOptions};

    /// Records written before the torn one.
    const N: u64 = 6;

    /// The frame of record `offset` whose payload is not JSON, with a checksum that matches:
    /// what a writer bug, not a torn write, would leave.
    fn undecodable_frame(offset: u64) -> Vec<u8> {
        let event = crate::log::testing::event(offset, 50);
        let record = NewRecord {
            topic: "orders",
            event: &event,
        };
        let mut frame = Vec::new();
        frame::encode_frame(&mut frame, offset, Utc::now(), &record).unwrap();
        let payload = frame
            .windows(5)
            .position(|w| w == br#"{"n":"#)
            .expect("payload in the frame");
        frame[payload] = b'!';
        let crc = crc32c::crc32c(&frame[HEADER_LEN..]);
        frame[4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        frame
    }

    /// Appends raw bytes to the file at `path`.
    fn append_bytes(path: &Path, bytes: &[u8]) {
        use std::io::Write;
        let mut file = OpenOptions::new().append(true).open(path).unwrap();
        file.write_all(bytes).unwrap();
    }

    #[test]
    fn every_torn_length_of_the_last_record_recovers_to_the_records_before_it() {
        // given a log of N records, and the segment length after N-1 and after N of them
        let original = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::open(original.path(), WriterOptions::default()).unwrap();
        append_range(&mut writer, 0..N - 1, 120);
        let segment = &segment_paths(original.path())[0];
        let end_before = std::fs::metadata(segment).unwrap().len();
        append_range(&mut writer, N - 1..N, 120);
        let end_after = std::fs::metadata(segment).unwrap().len();
        drop(writer);
        assert!(
            end_after - end_before > 200,
            "the last record is too small to tear well"
        );

        for torn_len in end_before..end_after {
            // when a copy is cut at every length inside the last record
            let copy = tempfile::tempdir().unwrap();
            copy_dir(original.path(), copy.path());
            let copied_segment = &segment_paths(copy.path())[0];
            let file = OpenOptions::new().write(true).open(copied_segment).unwrap();
            file.set_len(torn_len).unwrap();
            drop(file);

            // then a reader of the torn log sees N-1 records and waits for the rest
            let mut reader = LogReader::open(copy.path()).unwrap();
            assert_eq!(
                read_all(&mut reader).len() as u64,
                N - 1,
                "torn at {torn_len}"
            );

            // and recovery drops the torn bytes
            let mut writer = LogWriter::open(copy.path(), WriterOptions::default()).unwrap();
            assert_eq!(writer.next_offset(), N - 1, "torn at {torn_len}");
            assert_eq!(std::fs::metadata(copied_segment).unwrap().len(), end_before);
            let mut reader = LogReader::open(copy.path()).unwrap();
            let records = read_all(&mut reader);
            assert_eq!(records.len() as u64, N - 1, "torn at {torn_len}");

            // and the next append lands where the torn record was, and reads back
            append_range(&mut writer, 100..101, 120);
            let after = read_all(&mut reader);
            assert_eq!(after.len(), 1, "torn at {torn_len}");
            assert_eq!(after[0].offset, N - 1);
            assert_eq!(after[0].event.id, "event-100");
        }
    }

    #[test]
    fn a_flipped_byte_in_the_last_record_is_dropped_on_recovery() {
        // given a log whose last record has one byte flipped
        let dir = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
        append_range(&mut writer, 0..N, 120);
        drop(writer);
        let segment = &segment_paths(dir.path())[0];
        let len = std::fs::metadata(segment).unwrap().len();
        flip_byte(segment, len - 10);

        // when the writer reopens, then the damaged record is gone and its offset is reused
        let writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
        assert_eq!(writer.next_offset(), N - 1);
        let mut reader = LogReader::open(dir.path()).unwrap();
        let offsets: Vec<u64> = read_all(&mut reader).iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (0..N - 1).collect::<Vec<_>>());
    }

    #[test]
    fn a_last_record_with_a_valid_checksum_that_does_not_decode_is_cut_on_recovery() {
        // given a log whose last frame has a matching checksum but a payload that is not JSON
        let dir = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
        append_range(&mut writer, 0..N - 1, 120);
        drop(writer);
        let segment = &segment_paths(dir.path())[0];
        let end_before = std::fs::metadata(segment).unwrap().len();
        append_bytes(segment, &undecodable_frame(N - 1));

        // when the writer reopens, then that frame is cut and its offset reused
        let mut writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
        assert_eq!(writer.next_offset(), N - 1);
        assert_eq!(std::fs::metadata(segment).unwrap().len(), end_before);

        // and readers go on past it with the next append
        append_range(&mut writer, 100..101, 120);
        let mut reader = LogReader::open(dir.path()).unwrap();
        let records = read_all(&mut reader);
        assert_eq!(records.len() as u64, N);
        assert_eq!(records[N as usize - 1].event.id, "event-100");
    }

    #[test]
    fn an_undecodable_record_before_valid_ones_stops_the_writer_instead_of_cutting() {
        // given a log with a checksum-valid undecodable record in the middle
        let dir = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
        append_range(&mut writer, 0..N - 1, 120);
        drop(writer);
        let segment = &segment_paths(dir.path())[0];
        append_bytes(segment, &undecodable_frame(N - 1));
        let event = crate::log::testing::event(N, 120);
        let mut valid = Vec::new();
        let record = NewRecord {
            topic: "orders",
            event: &event,
        };
        frame::encode_frame(&mut valid, N, Utc::now(), &record).unwrap();
        append_bytes(segment, &valid);
        let len = std::fs::metadata(segment).unwrap().len();

        // when the writer reopens, then it refuses, naming the segment and the offset, and
        // cuts nothing
        let err = LogWriter::open(dir.path(), WriterOptions::default())
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        let text = err.to_string();
        assert!(text.contains("00000000000000000000.log"), "{err}");
        assert!(
            text.contains(&format!("offset {}: record does not decode", N - 1)),
            "{err}"
        );
        assert_eq!(std::fs::metadata(segment).unwrap().len(), len);
    }

    #[test]
    fn an_empty_last_segment_continues_at_its_base_offset() {
        // given two segments, the last one empty (a crash right after a roll)
        let dir = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
        append_range(&mut writer, 0..3, 50);
        drop(writer);
        File::create(crate::log::segment::path(dir.path(), 3)).unwrap();

        // when the writer reopens, then it appends into the empty segment from its base
        let mut writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
        assert_eq!(writer.next_offset(), 3);
        append_range(&mut writer, 3..4, 50);
        let mut reader = LogReader::open(dir.path()).unwrap();
        assert_eq!(read_all(&mut reader).len(), 4);
        assert_eq!(segment_paths(dir.path()).len(), 2);
    }

    #[test]
    fn a_valid_record_with_the_wrong_offset_is_corruption_not_a_torn_tail() {
        // given a segment whose name claims base 5 but whose records start at 0
        let dir = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
        append_range(&mut writer, 0..2, 50);
        drop(writer);
        let from = crate::log::segment::path(dir.path(), 0);
        std::fs::rename(&from, crate::log::segment::path(dir.path(), 5)).unwrap();

        // when the writer reopens, then it refuses instead of cutting valid records
        let err = LogWriter::open(dir.path(), WriterOptions::default())
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(
            err.to_string().contains("00000000000000000005.log"),
            "{err}"
        );
    }

    #[test]
    fn a_damaged_record_before_the_tail_stops_the_writer_instead_of_cutting() {
        // given a log whose second-to-last record has one byte flipped
        let dir = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
        append_range(&mut writer, 0..N - 1, 120);
        let segment = &segment_paths(dir.path())[0];
        let before_last = std::fs::metadata(segment).unwrap().len();
        append_range(&mut writer, N - 1..N, 120);
        drop(writer);
        flip_byte(segment, before_last - 30);
        let len = std::fs::metadata(segment).unwrap().len();

        // when the writer reopens, then it refuses, naming the segment, and cuts nothing
        let err = LogWriter::open(dir.path(), WriterOptions::default())
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(err.to_string().contains("valid records follow"), "{err}");
        assert_eq!(std::fs::metadata(segment).unwrap().len(), len);
    }

    #[test]
    fn a_flipped_bit_in_a_length_field_mid_segment_stops_the_writer_and_the_reader() {
        // given a segment of 3,000 acknowledged records
        const RECORDS: u64 = 3_000;
        const DAMAGED: usize = 1_500;
        let original = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::open(original.path(), WriterOptions::default()).unwrap();
        append_range(&mut writer, 0..RECORDS, 40);
        drop(writer);
        let starts = frame_starts(&segment_paths(original.path())[0]);
        assert_eq!(starts.len() as u64, RECORDS);

        // when any one bit of record 1,500's length is flipped (lengths that grow past the
        // end, shrink into the body, become zero or absurd)
        for bit in 0..32 {
            let copy = tempfile::tempdir().unwrap();
            copy_dir(original.path(), copy.path());
            let segment = &segment_paths(copy.path())[0];
            let mut bytes = std::fs::read(segment).unwrap();
            bytes[starts[DAMAGED] as usize + bit / 8] ^= 1 << (bit % 8);
            std::fs::write(segment, &bytes).unwrap();

            // then the writer refuses to open, naming the damage and what follows it, and cuts
            // nothing
            let err = LogWriter::open(copy.path(), WriterOptions::default())
                .err()
                .unwrap_or_else(|| panic!("bit {bit}: the writer cut acknowledged records"));
            assert_eq!(err.kind(), ErrorKind::Corrupt, "bit {bit}: {err}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("at byte {} (offset {DAMAGED}:", starts[DAMAGED])),
                "bit {bit}: {err}"
            );
            assert!(text.contains("valid records follow"), "bit {bit}: {err}");
            assert_eq!(
                std::fs::metadata(segment).unwrap().len(),
                bytes.len() as u64
            );

            // and a reader returns the records before the damage, then an error instead of
            // waiting there as if at the end of the log
            let mut reader = LogReader::open(copy.path()).unwrap();
            for offset in 0..DAMAGED as u64 {
                assert_eq!(reader.next().unwrap().unwrap().offset, offset);
            }
            let err = reader
                .next()
                .expect_err("the reader stopped silently at the damage");
            assert_eq!(err.kind(), ErrorKind::Corrupt, "bit {bit}: {err}");
            assert!(
                err.to_string().contains(&format!("offset {}", DAMAGED + 1)),
                "bit {bit}: {err}"
            );
        }
    }

    #[test]
    fn zeroes_after_the_last_record_are_a_torn_tail_and_are_cut() {
        // given a log whose file grew by a block of zeroes a crash never filled
        let dir = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
        append_range(&mut writer, 0..N, 120);
        drop(writer);
        let segment = &segment_paths(dir.path())[0];
        let len = std::fs::metadata(segment).unwrap().len();
        append_bytes(segment, &[0; 4096]);

        // when the writer reopens, then the zeroes are cut and appends continue
        let writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
        assert_eq!(writer.next_offset(), N);
        assert_eq!(std::fs::metadata(segment).unwrap().len(), len);
    }
}
