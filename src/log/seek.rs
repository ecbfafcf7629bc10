//! Finding where to start reading, through the segments' sparse indexes: the byte position of
//! an offset, and the first offset appended at or after a time.
//!
//! Indexes are hints. An entry is used only after the frame it points at is read back and
//! holds the entry's offset; otherwise the segment is scanned from its start. A missing index
//! is rebuilt in memory (readers never write to the log directory).

use super::codec;
use super::frame::{self, Frame};
use super::index::{self, Entry};
use super::segment;
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::Path;

/// The entries of segment `base`'s index, or of an in-memory rebuild if it has none.
/// `sealed` says whether damage found while rebuilding is corruption (see [`index::scan`]).
pub(crate) fn entries(dir: &Path, base: u64, interval: u64, sealed: bool) -> Result<Vec<Entry>> {
    match index::load(dir, base)? {
        Some(entries) if !entries.is_empty() => Ok(entries),
        _ => index::scan(dir, base, interval, sealed),
    }
}

/// Where to start reading segment `base` to reach `offset`: a verified index entry at or
/// before it, or the segment's start.
pub(crate) fn start_for_offset(dir: &Path, base: u64, offset: u64) -> Result<(u64, u64)> {
    let entries = index::load(dir, base)?.unwrap_or_default();
    Ok(match index::floor_offset(&entries, offset) {
        Some(entry) if holds(dir, base, &entry)? => (entry.pos, entry.offset),
        _ => (0, base),
    })
}

/// The offset of the first record appended at or after `time`, or the offset after the last
/// record if there is none yet (so a reader placed there waits for new records).
///
/// Append times never decrease along the log (the writer makes sure), so this is a binary
/// search over segments by their first record's time, then over one segment's index.
pub(crate) fn offset_at_time(dir: &Path, time: DateTime<Utc>, interval: u64) -> Result<u64> {
    let bases = segment::list(dir)?;
    let Some(&last_base) = bases.last() else {
        return Ok(0);
    };
    // Segments whose first record is before `time`, as a prefix: find its length.
    let (mut lo, mut hi) = (0, bases.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        let sealed = bases[mid] != last_base;
        let first = entries(dir, bases[mid], interval, sealed)?
            .first()
            .map(|e| e.appended_at);
        if first.is_some_and(|first| first < time) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let Some(k) = lo.checked_sub(1) else {
        return Ok(bases[0]);
    };
    let base = bases[k];
    let entries = entries(dir, base, interval, base != last_base)?;
    let start = index::floor_time(&entries, time)
        .filter(|entry| holds(dir, base, entry).unwrap_or(false))
        .map_or((0, base), |entry| (entry.pos, entry.offset));
    if let Some(offset) = scan_for_time(dir, base, start, time)? {
        return Ok(offset);
    }
    match bases.get(k + 1) {
        Some(&next) => Ok(next),
        None => scan_end(dir, base, start),
    }
}

/// Reads segment `base` from `(pos, offset)` and returns the first offset appended at or
/// after `time`, or `None` if the segment's valid records end first.
fn scan_for_time(
    dir: &Path,
    base: u64,
    (pos, offset): (u64, u64),
    time: DateTime<Utc>,
) -> Result<Option<u64>> {
    let mut src = open_at(dir, base, pos)?;
    let mut next = offset;
    while let Frame::Valid(body) = read(dir, base, &mut src)? {
        if codec::header(&body).is_ok_and(|header| header.appended_at >= time) {
            return Ok(Some(next));
        }
        next += 1;
    }
    Ok(None)
}

/// The offset after the last valid record of segment `base`, reading from `(pos, offset)`.
pub(crate) fn scan_end(dir: &Path, base: u64, (pos, offset): (u64, u64)) -> Result<u64> {
    let mut src = open_at(dir, base, pos)?;
    let mut next = offset;
    while let Frame::Valid(_) = read(dir, base, &mut src)? {
        next += 1;
    }
    Ok(next)
}

/// Whether the frame at `entry.pos` of segment `base` is valid and holds `entry.offset`.
fn holds(dir: &Path, base: u64, entry: &Entry) -> Result<bool> {
    // An entry past the segment's end is stale or hand-made, not an error: the segment is
    // scanned instead. Seeking there first would not do, since a file system may refuse the
    // position outright (ext4 does from 16 TiB on, with EINVAL).
    let path = segment::path(dir, base);
    let len = std::fs::metadata(&path)
        .map_err(|err| Error::io(format!("reading log segment {}", path.display()), err))?
        .len();
    if entry.pos >= len {
        return Ok(false);
    }
    let mut src = open_at(dir, base, entry.pos)?;
    Ok(match read(dir, base, &mut src)? {
        Frame::Valid(body) => codec::header(&body).is_ok_and(|h| h.offset == entry.offset),
        _ => false,
    })
}

/// Segment `base`, buffered, positioned at byte `pos`.
fn open_at(dir: &Path, base: u64, pos: u64) -> Result<BufReader<File>> {
    let path = segment::path(dir, base);
    let io_error = |err| Error::io(format!("reading log segment {}", path.display()), err);
    let mut file = File::open(&path).map_err(io_error)?;
    file.seek(SeekFrom::Start(pos)).map_err(io_error)?;
    Ok(BufReader::with_capacity(1 << 16, file))
}

/// The next frame of segment `base`.
fn read(dir: &Path, base: u64, src: &mut BufReader<File>) -> Result<Frame> {
    frame::read_frame(src).map_err(|err| {
        let path = segment::path(dir, base);
        Error::io(format!("reading log segment {}", path.display()), err)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::testing::{append_range, read_all};
    use crate::log::{LogReader, LogWriter, Record, WriterOptions};
    use chrono::TimeDelta;

    /// Segments of ~2 KiB with an index entry every ~500 bytes.
    const SMALL: WriterOptions = WriterOptions {
        index_interval_bytes: 500,
        ..WriterOptions::with_segment_bytes(2048)
    };

    /// A log of 120 records in 40 batches over many segments, and its records by linear scan.
    fn log_of_batches() -> (tempfile::TempDir, LogWriter, Vec<Record>) {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::open(dir.path(), SMALL).unwrap();
        for batch in 0..40 {
            append_range(&mut writer, batch * 3..batch * 3 + 3, 150);
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        let records = read_all(&mut LogReader::open(dir.path()).unwrap());
        assert_eq!(records.len(), 120);
        (dir, writer, records)
    }

    /// Checks seek and seek_time against the linear scan `records` for every offset and time.
    fn assert_seeks_match_scan(dir: &Path, records: &[Record]) {
        let mut reader = LogReader::open(dir).unwrap();
        for expected in records {
            reader.seek(expected.offset).unwrap();
            assert_eq!(reader.next().unwrap().unwrap().offset, expected.offset);
        }
        let one = TimeDelta::nanoseconds(1);
        for at in records.iter().map(|r| r.appended_at) {
            for time in [at - one, at, at + one] {
                let linear = records.iter().find(|r| r.appended_at >= time);
                reader.seek_time(time).unwrap();
                let found = reader.next().unwrap();
                assert_eq!(
                    found.map(|r| r.offset),
                    linear.map(|r| r.offset),
                    "at {time}"
                );
            }
        }
    }

    #[test]
    fn seeking_by_offset_and_by_time_equals_a_linear_scan() {
        // given a log over many segments, each with an index
        let (dir, _writer, records) = log_of_batches();
        let indexes = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("index".as_ref()))
            .count();
        assert!(indexes > 10, "{indexes} indexes");
        // then every seek lands where a scan from the start would
        assert_seeks_match_scan(dir.path(), &records);
    }

    #[test]
    fn seeks_still_match_after_the_index_files_are_deleted_or_garbled() {
        // given a log whose index files are then deleted (one garbled)
        let (dir, writer, records) = log_of_batches();
        drop(writer);
        let bases = segment::list(dir.path()).unwrap();
        for &base in &bases {
            std::fs::remove_file(segment::index_path(dir.path(), base)).unwrap();
        }
        std::fs::write(segment::index_path(dir.path(), bases[1]), [7u8; 100]).unwrap();

        // then readers rebuild them in memory and seek the same
        assert_seeks_match_scan(dir.path(), &records);

        // and a reopened writer rebuilds them on disk
        let _writer = LogWriter::open(dir.path(), SMALL).unwrap();
        for &base in &bases {
            let entries = index::load(dir.path(), base).unwrap().unwrap();
            assert_eq!(entries.first().map(|e| (e.offset, e.pos)), Some((base, 0)));
        }
        assert_seeks_match_scan(dir.path(), &records);
    }

    #[test]
    fn an_index_entry_beyond_where_the_file_system_can_seek_falls_back_to_scanning() {
        // given a log whose index (checksums valid) points offset 3 at byte 2^50: past the
        // segment's end, and past what ext4 can seek to
        let dir = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
        append_range(&mut writer, 0..5, 50);
        drop(writer);
        let appended_at = read_all(&mut LogReader::open(dir.path()).unwrap())[0].appended_at;
        let mut index = Vec::new();
        for (offset, pos) in [(0, 0), (3, 1 << 50)] {
            let entry = Entry {
                offset,
                pos,
                appended_at,
            };
            entry.encode(&mut index);
        }
        std::fs::write(segment::index_path(dir.path(), 0), index).unwrap();
        assert_eq!(index::load(dir.path(), 0).unwrap().unwrap().len(), 2);

        // when a reader seeks to offset 3, then it finds it by scanning the segment
        let mut reader = LogReader::open(dir.path()).unwrap();
        reader.seek(3).unwrap();
        assert_eq!(reader.next().unwrap().unwrap().offset, 3);
        assert_eq!(reader.bounds().unwrap(), (0, 5));
    }

    #[test]
    fn a_missing_index_of_a_damaged_sealed_segment_is_reported_when_rebuilt() {
        // given a closed segment with a flipped byte and no index
        let (dir, writer, _) = log_of_batches();
        drop(writer);
        let bases = segment::list(dir.path()).unwrap();
        std::fs::remove_file(segment::index_path(dir.path(), bases[0])).unwrap();
        crate::log::testing::flip_byte(&segment::path(dir.path(), bases[0]), 300);

        // then the writer refuses to open, naming the segment
        let err = LogWriter::open(dir.path(), SMALL).err().unwrap();
        assert_eq!(err.kind(), crate::error::ErrorKind::Corrupt);
        assert!(err.to_string().contains("while indexing"), "{err}");
    }
}
