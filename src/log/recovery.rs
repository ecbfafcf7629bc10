//! Recovery of the last segment when a writer opens: keep every whole, valid record and cut off
//! whatever a crash left half-written after them.

use super::record::{self, Frame};
use crate::error::{Error, ErrorKind, Result};
use std::fs::{File, OpenOptions};
use std::io::BufReader;
use std::path::Path;

/// What recovery found in the last segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// Length of the segment after recovery: the end of its last valid frame.
    pub(crate) valid_bytes: u64,
    /// Offset the next appended record gets.
    pub(crate) next_offset: u64,
}

/// Scans the segment at `path` (whose first record has offset `base`) frame by frame and
/// truncates it after the last valid frame, fsyncing the cut.
///
/// An incomplete frame, an impossible length, a checksum mismatch or an undecodable body all
/// mean the same here: the tail of a write that never completed, since nothing acknowledged it.
/// A valid frame with the wrong offset is different — the writer never produces one — so it is
/// reported as corruption instead of being cut.
pub(crate) fn recover(path: &Path, base: u64) -> Result<Recovered> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|err| Error::io(format!("opening log segment {}", path.display()), err))?;
    let read_error = |err| Error::io(format!("reading log segment {}", path.display()), err);
    let file_len = file.metadata().map_err(read_error)?.len();

    let mut src = BufReader::with_capacity(1 << 16, &file);
    let mut valid_bytes = 0;
    let mut next_offset = base;
    let torn_reason = loop {
        let body = match record::read_frame(&mut src).map_err(read_error)? {
            Frame::Valid(body) => body,
            Frame::End => break None,
            Frame::Incomplete => break Some("incomplete frame".to_owned()),
            Frame::Damaged(reason) => break Some(reason),
        };
        let record = match record::decode_body(&body) {
            Ok(record) => record,
            Err(reason) => break Some(reason),
        };
        if record.offset != next_offset {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "log segment {} holds offset {} at byte {valid_bytes} where offset \
                     {next_offset} belongs",
                    path.display(),
                    record.offset
                ),
            ));
        }
        valid_bytes += Frame::len_on_disk(&body);
        next_offset += 1;
    };

    if let Some(reason) = torn_reason {
        truncate(&file, path, valid_bytes)?;
        tracing::warn!(
            path = %path.display(),
            valid_bytes,
            dropped_bytes = file_len - valid_bytes,
            reason,
            "truncated torn tail of embedded log"
        );
    }
    Ok(Recovered {
        valid_bytes,
        next_offset,
    })
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
    use crate::log::testing::{append_range, copy_dir, flip_byte, read_all, segment_paths};
    use crate::log::{LogReader, LogWriter, WriterOptions};

    /// Records written before the torn one.
    const N: u64 = 6;

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
}
