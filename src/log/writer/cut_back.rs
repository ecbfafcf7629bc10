//! Cutting a failed append back off the log.
//!
//! A write(2) that fails (a full disk: `ENOSPC`) is reported at once and for that call only, and
//! whatever bytes the kernel took are in the page cache: truncating the files back to where the
//! append began restores a known state, and the append can be tried again. A failed fsync is
//! different: the kernel may have dropped dirty pages of earlier appends while reporting the
//! error only once, so it poisons the writer (see [`LogWriter`]).

use super::{LogWriter, open_append};
use crate::error::{Error, ErrorKind};
use crate::log::index::Sampler;
use crate::log::{Durability, segment};
use chrono::{DateTime, Utc};
use std::io::{self, Write};
use std::path::Path;

/// What an I/O step was doing, and its error.
pub(super) type IoFailure = (String, io::Error);

/// A failed step of an append, sorted by what it leaves behind.
#[derive(Debug)]
pub(super) enum Failure {
    /// A write(2), or creating or opening a file: can be cut back and retried.
    Write(IoFailure),
    /// An fsync: nothing since the last good fsync can be trusted; poisons the writer.
    Sync(IoFailure),
}

impl Failure {
    /// As an error outside an append (opening the log), where nothing needs cutting back.
    pub(super) fn into_error(self) -> Error {
        let (Failure::Write((what, err)) | Failure::Sync((what, err))) = self;
        Error::io(what, err)
    }
}

/// Where an append began: what [`LogWriter::cut_back`] restores after a failed write.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mark {
    /// Base offset of the active segment.
    base: u64,
    /// Its length.
    segment_len: u64,
    /// Its index's length.
    index_len: u64,
    /// Append time of its first record.
    segment_first_at: Option<DateTime<Utc>>,
    /// Its index sampler.
    sampler: Sampler,
}

/// A test-only fault: let `after` segment writes through, then store only `keep` bytes of the
/// next one and fail it with `ENOSPC`, as a disk that fills up mid-write does.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(super) struct FailWrite {
    /// Segment writes that still succeed.
    pub(super) after: usize,
    /// Bytes of the failing write that reach the file.
    pub(super) keep: usize,
}

impl LogWriter {
    /// Writes `chunk` to the active segment (or, under test, fails as [`FailWrite`] says).
    pub(super) fn write_segment(&mut self, chunk: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if let Some(fault) = &mut self.fail_write {
            if fault.after > 0 {
                fault.after -= 1;
            } else {
                let keep = fault.keep.min(chunk.len());
                self.fail_write = None;
                self.segment.write_all(&chunk[..keep])?;
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        self.segment.write_all(chunk)
    }

    /// Where the log stands now, to cut a failed append back to.
    pub(super) fn mark(&self) -> Mark {
        Mark {
            base: self.segment_base,
            segment_len: self.segment_len,
            index_len: self.index_len,
            segment_first_at: self.segment_first_at,
            sampler: self.sampler,
        }
    }

    /// After a failed write: cuts the log back to `mark` and returns a retryable error naming
    /// what failed and the log directory; if the cut itself fails, the log's end is unknown
    /// and the writer is poisoned instead.
    pub(super) fn cut_back(&mut self, mark: Mark, (what, err): IoFailure) -> Error {
        match self.rewind(mark) {
            Ok(()) => Error::with_source(
                ErrorKind::SinkUnavailable,
                format!(
                    "{what} (log directory {}); the partial append was cut off and can be retried",
                    self.dir.display()
                ),
                err,
            ),
            Err(Failure::Write((then, cut_err)) | Failure::Sync((then, cut_err))) => {
                self.poison((format!("{what}: {err}; then {then}"), cut_err))
            }
        }
    }

    /// Restores the files and state of `mark`: removes segments started since, truncates the
    /// active segment and its index to their lengths then, and fsyncs the cut (unless the
    /// durability mode never fsyncs), so no partial frame or record of the failed append
    /// remains, even after a crash.
    fn rewind(&mut self, mark: Mark) -> Result<(), Failure> {
        let dir = self.dir.clone();
        // Always looked for: a roll may have created a segment before failing to switch to it.
        let removed = remove_segments_after(&dir, mark.base).map_err(|err| {
            Failure::Write((format!("removing new segments in {}", dir.display()), err))
        })?;
        if self.segment_base != mark.base {
            let path = segment::path(&dir, mark.base);
            self.segment = open_append(&path).map_err(Failure::Write)?;
            self.index =
                open_append(&segment::index_path(&dir, mark.base)).map_err(Failure::Write)?;
            self.segment_path = path;
            self.segment_base = mark.base;
        }
        let path = self.segment_path.display().to_string();
        self.segment
            .set_len(mark.segment_len)
            .map_err(|err| Failure::Write((format!("truncating {path}"), err)))?;
        self.index
            .set_len(mark.index_len)
            .map_err(|err| Failure::Write((format!("truncating the index of {path}"), err)))?;
        if self.options.durability != Durability::None {
            self.segment
                .sync_data()
                .map_err(|err| Failure::Sync((format!("fsyncing {path}"), err)))?;
            if removed {
                segment::sync_dir(&dir).map_err(|err| {
                    Failure::Sync((format!("fsyncing log directory {}", dir.display()), err))
                })?;
            }
        }
        self.segment_len = mark.segment_len;
        self.index_len = mark.index_len;
        self.segment_first_at = mark.segment_first_at;
        self.sampler = mark.sampler;
        Ok(())
    }
}

/// Removes the segments (and their indexes) whose base offset is above `base`: those a failed
/// append started. Returns whether there were any.
fn remove_segments_after(dir: &Path, base: u64) -> io::Result<bool> {
    let mut removed = false;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(newer) = name.to_str().and_then(segment::parse_name) else {
            continue;
        };
        if newer <= base {
            continue;
        }
        std::fs::remove_file(segment::path(dir, newer))?;
        match std::fs::remove_file(segment::index_path(dir, newer)) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        removed = true;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::testing::{read_all, segment_paths, try_append_range as append};
    use crate::log::{LogReader, WriterOptions};
    use std::ops::Range;

    /// Name and length of every file in `dir` but the lock.
    fn file_lengths(dir: &Path) -> Vec<(String, u64)> {
        let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let name = entry.file_name().into_string().unwrap();
                (name, entry.metadata().unwrap().len())
            })
            .filter(|(name, _)| name != "LOCK")
            .collect();
        files.sort();
        files
    }

    /// Ids of every record in the log at `dir`, in log order.
    fn ids(dir: &Path) -> Vec<String> {
        let records = read_all(&mut LogReader::open(dir).unwrap());
        records.into_iter().map(|r| r.event.id).collect()
    }

    /// Ids of the events numbered `numbers`.
    fn expected_ids(numbers: Range<u64>) -> Vec<String> {
        numbers.map(|n| format!("event-{n}")).collect()
    }

    #[test]
    fn a_write_that_fails_part_way_is_cut_back_and_the_same_append_then_succeeds() {
        // given a log holding two records, whose next write stores 7 bytes and then finds the
        // disk full
        let dir = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
        append(&mut writer, 0..2, 100).unwrap();
        let before = file_lengths(dir.path());
        writer.fail_write = Some(FailWrite { after: 0, keep: 7 });

        // when three records are appended
        let err = append(&mut writer, 2..5, 100).unwrap_err();

        // then the append fails retryably, naming the cause and the log directory
        let message = err.chain();
        assert_eq!(err.kind(), ErrorKind::SinkUnavailable, "{message}");
        assert!(err.is_retryable());
        assert!(message.contains("No space left on device"), "{message}");
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        // and the partial frame is gone, no offsets were assigned, and the writer is usable
        assert_eq!(file_lengths(dir.path()), before);
        assert_eq!(writer.next_offset(), 2);
        assert_eq!(append(&mut writer, 2..5, 100).unwrap(), 2..5);

        // and the log reads back whole, each record once, and reopens at the same end
        assert_eq!(ids(dir.path()), expected_ids(0..5));
        drop(writer);
        let writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
        assert_eq!(writer.next_offset(), 5);
    }

    #[test]
    fn a_write_that_fails_after_a_roll_removes_the_new_segments_and_cuts_the_old_one_back() {
        // given 1 KiB segments with an index entry for every record, one record in the active
        // segment, and a disk that fills during the third segment write of the next append
        let dir = tempfile::tempdir().unwrap();
        let options = WriterOptions {
            index_interval_bytes: 1,
            ..WriterOptions::with_segment_bytes(1024)
        };
        let mut writer = LogWriter::open(dir.path(), options).unwrap();
        append(&mut writer, 0..1, 200).unwrap();
        let before = file_lengths(dir.path());
        writer.fail_write = Some(FailWrite {
            after: 2,
            keep: 100,
        });

        // when a batch that spans several segments is appended
        let err = append(&mut writer, 1..12, 300).unwrap_err();

        // then it fails retryably, and the directory is byte for byte as it was
        assert_eq!(err.kind(), ErrorKind::SinkUnavailable, "{}", err.chain());
        assert_eq!(file_lengths(dir.path()), before);
        assert_eq!(writer.next_offset(), 1);

        // and when the append is retried, every record reads back once, in order, and a
        // reopened writer finds the same log
        assert_eq!(append(&mut writer, 1..12, 300).unwrap(), 1..12);
        assert_eq!(ids(dir.path()), expected_ids(0..12));
        drop(writer);
        let writer = LogWriter::open(dir.path(), options).unwrap();
        assert_eq!(writer.next_offset(), 12);
        assert!(segment_paths(dir.path()).len() >= 4);
    }
}
