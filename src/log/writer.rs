//! The one writer of a log directory: appends batches durably, rolls segments, and refuses to
//! go on after a failed write or fsync.

use super::record::{self, NewRecord};
use super::{recovery, segment};
use crate::error::{Error, ErrorKind, Result};
use chrono::Utc;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Name of the file whose lock marks the directory's writer.
const LOCK_FILE: &str = "LOCK";

/// How a [`LogWriter`] lays out its segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterOptions {
    /// Size at which a segment is closed and a new one started. A record that alone exceeds it
    /// still goes in, into a segment of its own. Default 128 MiB.
    pub segment_bytes: u64,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            segment_bytes: 128 * 1024 * 1024,
        }
    }
}

/// The exclusive writer of a log directory.
///
/// Durability: [`append`](LogWriter::append) returns offsets only after the records' bytes are
/// fdatasynced (and, for a new segment, the directory too). After a failed write or fsync the
/// writer is poisoned: the kernel may have dropped the dirty pages while reporting the error
/// only once, so retrying could "succeed" without the data on disk. Every later append fails
/// with [`ErrorKind::SinkPoisoned`]; reopening (after a restart) recovers from what is on disk.
#[derive(Debug)]
pub struct LogWriter {
    /// The log directory.
    dir: PathBuf,
    /// Segment layout.
    options: WriterOptions,
    /// The locked `LOCK` file; held open so the lock lasts as long as the writer.
    _lock: File,
    /// The segment being appended to, opened for appending.
    segment: File,
    /// Path of `segment`, for messages.
    segment_path: PathBuf,
    /// Bytes in `segment`, all of them whole valid frames.
    segment_len: u64,
    /// Offset the next record gets.
    next_offset: u64,
    /// Set by the first failed write or fsync: what failed, for every later error.
    poisoned: Option<String>,
}

impl LogWriter {
    /// Opens (creating the directory if needed) for exclusive writing; recovers a torn tail.
    ///
    /// Fails with [`ErrorKind::Locked`] while another writer, in this process or another, has
    /// the directory open.
    pub fn open(dir: &Path, options: WriterOptions) -> Result<LogWriter> {
        create_dir(dir)?;
        let lock = lock(dir)?;
        let (base, recovered) = match segment::list(dir)?.last() {
            Some(&base) => (base, recovery::recover(&segment::path(dir, base), base)?),
            None => {
                create_segment(dir, 0).map_err(|(what, err)| Error::io(what, err))?;
                (
                    0,
                    recovery::Recovered {
                        valid_bytes: 0,
                        next_offset: 0,
                    },
                )
            }
        };
        let segment_path = segment::path(dir, base);
        let segment = OpenOptions::new()
            .append(true)
            .open(&segment_path)
            .map_err(|err| {
                Error::io(
                    format!(
                        "opening log segment {} for appending",
                        segment_path.display()
                    ),
                    err,
                )
            })?;
        Ok(LogWriter {
            dir: dir.to_owned(),
            options,
            _lock: lock,
            segment,
            segment_path,
            segment_len: recovered.valid_bytes,
            next_offset: recovered.next_offset,
            poisoned: None,
        })
    }

    /// Appends all records as one write, fdatasyncs, and only then returns the offsets assigned
    /// (first..last+1). Blocking: call it from a blocking thread.
    ///
    /// A batch that crosses a segment boundary is one write per segment. If the append fails,
    /// no offsets are assigned, but records may be on disk; they are found again on reopen, so
    /// a caller retrying after a restart may store them twice (at-least-once).
    pub fn append(&mut self, batch: &[NewRecord<'_>]) -> Result<Range<u64>> {
        if let Some(cause) = &self.poisoned {
            return Err(Error::new(ErrorKind::SinkPoisoned, poisoned_message(cause)));
        }
        let first = self.next_offset;
        // Encode everything before touching the disk, so an unencodable record fails the batch
        // without writing anything and without poisoning the writer.
        let appended_at = Utc::now();
        let mut buf = Vec::new();
        let mut frame_ends = Vec::with_capacity(batch.len());
        for (offset, record) in (first..).zip(batch) {
            record::encode_frame(&mut buf, offset, appended_at, record)?;
            frame_ends.push(buf.len());
        }
        match self.write_frames(&buf, &frame_ends, first) {
            Ok(()) => {
                self.next_offset = first + batch.len() as u64;
                Ok(first..self.next_offset)
            }
            Err((what, err)) => {
                let cause = format!("{what}: {err}");
                let message = poisoned_message(&cause);
                tracing::error!(error = %cause, "embedded log poisoned");
                self.poisoned = Some(cause);
                Err(Error::with_source(ErrorKind::SinkPoisoned, message, err))
            }
        }
    }

    /// Offset the next appended record will get.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes `record` takes on disk, frame header included, to enforce size limits before
    /// appending. An upper bound: the offset and append time it will get change its length by
    /// a few bytes, and this assumes the longest.
    pub fn encoded_len(record: &NewRecord<'_>) -> Result<usize> {
        record::max_encoded_len(record)
    }

    /// Writes the encoded frames (`frame_ends` marks where each ends in `buf`; the first has
    /// offset `first`), rolling to new segments where the current one would grow too large.
    fn write_frames(
        &mut self,
        buf: &[u8],
        frame_ends: &[usize],
        first: u64,
    ) -> Result<(), (String, io::Error)> {
        let mut chunk_start = 0;
        let mut frame_start = 0;
        for (offset, &frame_end) in (first..).zip(frame_ends) {
            let before = self.segment_len + (frame_start - chunk_start) as u64;
            let after = before + (frame_end - frame_start) as u64;
            if before > 0 && after > self.options.segment_bytes {
                self.write_chunk(&buf[chunk_start..frame_start])?;
                self.roll(offset)?;
                chunk_start = frame_start;
            }
            frame_start = frame_end;
        }
        self.write_chunk(&buf[chunk_start..])
    }

    /// Writes whole frames to the current segment and fdatasyncs them.
    fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), (String, io::Error)> {
        if chunk.is_empty() {
            return Ok(());
        }
        let path = &self.segment_path;
        self.segment
            .write_all(chunk)
            .map_err(|err| (format!("writing {}", path.display()), err))?;
        self.segment
            .sync_data()
            .map_err(|err| (format!("fsyncing {}", path.display()), err))?;
        self.segment_len += chunk.len() as u64;
        Ok(())
    }

    /// Starts a new segment whose first record will have offset `base`.
    fn roll(&mut self, base: u64) -> Result<(), (String, io::Error)> {
        let (segment, segment_path) = create_segment(&self.dir, base)?;
        self.segment = segment;
        self.segment_path = segment_path;
        self.segment_len = 0;
        Ok(())
    }
}

/// Creates `dir` if missing, and makes its entry in the parent durable.
fn create_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let create_error = |err| Error::io(format!("creating log directory {}", dir.display()), err);
    std::fs::create_dir_all(dir).map_err(create_error)?;
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    segment::sync_dir(parent).map_err(create_error)
}

/// Takes the writer lock of `dir`, returning the file that holds it.
fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|err| Error::io(format!("opening lock file {}", path.display()), err))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Error::new(
            ErrorKind::Locked,
            format!(
                "log directory {} is locked by another writer ({})",
                dir.display(),
                path.display()
            ),
        )),
        Err(TryLockError::Error(err)) => Err(Error::io(format!("locking {}", path.display()), err)),
    }
}

/// Creates the empty segment with base offset `base` and fsyncs the directory so the new file
/// survives a crash. Returns the file, opened for appending, and its path.
fn create_segment(dir: &Path, base: u64) -> Result<(File, PathBuf), (String, io::Error)> {
    let path = segment::path(dir, base);
    let file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(|err| (format!("creating log segment {}", path.display()), err))?;
    segment::sync_dir(dir)
        .map_err(|err| (format!("fsyncing log directory {}", dir.display()), err))?;
    Ok((file, path))
}

/// The message of every error from a poisoned writer; `cause` says what failed first.
fn poisoned_message(cause: &str) -> String {
    format!(
        "embedded log is poisoned after a failed write/fsync: {cause}; restart outboxd after \
         fixing the disk"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::LogReader;
    use crate::log::testing::{append_range, event, read_all, segment_paths};

    #[test]
    fn batches_read_back_with_consecutive_offsets_and_identical_payloads() {
        // given three appended batches
        let dir = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
        assert_eq!(append_range(&mut writer, 0..5, 300), 0..5);
        assert_eq!(append_range(&mut writer, 5..6, 0), 5..6);
        assert_eq!(append_range(&mut writer, 6..20, 4_000), 6..20);
        assert_eq!(writer.next_offset(), 20);

        // when read back, then every record is there, in order, payload bytes unchanged
        let mut reader = LogReader::open(dir.path()).unwrap();
        let records = read_all(&mut reader);
        assert_eq!(records.len(), 20);
        for (n, record) in (0..).zip(&records) {
            let sent_len = match n {
                0..5 => 300,
                5 => 0,
                _ => 4_000,
            };
            let sent = event(n, sent_len);
            assert_eq!(record.offset, n);
            assert_eq!(record.topic, sent.aggregate_type);
            assert_eq!(record.event.id, sent.id);
            assert_eq!(record.event.payload.get(), sent.payload.get());
            assert_eq!(record.event.created_at, sent.created_at);
        }
        assert_eq!(reader.bounds().unwrap(), (0, 20));
    }

    #[test]
    fn an_empty_batch_assigns_no_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
        assert_eq!(writer.append(&[]).unwrap(), 0..0);
        assert_eq!(writer.next_offset(), 0);
    }

    #[test]
    fn tiny_segments_roll_and_a_reopened_writer_continues_the_offsets() {
        // given segments of 1 KiB and records of about 400 bytes
        let dir = tempfile::tempdir().unwrap();
        let options = WriterOptions {
            segment_bytes: 1024,
        };
        let mut writer = LogWriter::open(dir.path(), options).unwrap();
        append_range(&mut writer, 0..7, 200);
        append_range(&mut writer, 7..30, 200);
        // and one record larger than a whole segment
        append_range(&mut writer, 30..31, 5_000);
        append_range(&mut writer, 31..33, 200);
        drop(writer);

        // then records span many segments, none over the limit unless it holds one record
        let paths = segment_paths(dir.path());
        assert!(paths.len() >= 10, "only {} segments", paths.len());
        let mut reader = LogReader::open(dir.path()).unwrap();
        let records = read_all(&mut reader);
        for pair in paths.windows(2) {
            let base = |p: &PathBuf| segment::parse_name(p.file_name()?.to_str()?);
            let (first, next) = (base(&pair[0]).unwrap(), base(&pair[1]).unwrap());
            let len = std::fs::metadata(&pair[0]).unwrap().len();
            assert!(
                len <= 1024 || next - first == 1,
                "{} has {len} bytes",
                pair[0].display()
            );
        }

        // and when the writer reopens, offsets continue where they stopped
        let mut writer = LogWriter::open(dir.path(), options).unwrap();
        assert_eq!(writer.next_offset(), 33);
        append_range(&mut writer, 33..35, 200);
        let records: Vec<u64> = records
            .into_iter()
            .chain(read_all(&mut reader))
            .map(|r| r.offset)
            .collect();
        assert_eq!(records, (0..35).collect::<Vec<_>>());
    }

    #[test]
    fn a_second_writer_is_locked_out_until_the_first_is_dropped() {
        // given a live writer
        let dir = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
        append_range(&mut writer, 0..1, 10);

        // then a second writer is refused, naming the lock file
        let err = LogWriter::open(dir.path(), WriterOptions::default())
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::Locked);
        assert!(
            err.to_string().contains("is locked by another writer"),
            "{err}"
        );
        assert!(err.to_string().contains("LOCK"), "{err}");
        // and a reader is not
        let mut reader = LogReader::open(dir.path()).unwrap();
        assert_eq!(read_all(&mut reader).len(), 1);

        // when the first writer is dropped, then the second gets in
        drop(writer);
        let writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
        assert_eq!(writer.next_offset(), 1);
    }

    #[test]
    fn a_failed_write_poisons_the_writer_for_good() {
        // given a writer whose segment handle can no longer be written
        let dir = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
        append_range(&mut writer, 0..2, 10);
        let good = std::mem::replace(
            &mut writer.segment,
            File::open(&writer.segment_path).unwrap(),
        );

        // when an append fails, then it and every later append report poisoning
        let sent = event(2, 10);
        let batch = [NewRecord {
            topic: "orders",
            event: &sent,
        }];
        let err = writer.append(&batch).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::SinkPoisoned);
        assert!(err.to_string().contains("restart outboxd"), "{err}");
        writer.segment = good;
        let err = writer.append(&batch).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::SinkPoisoned);
        assert!(err.to_string().contains("writing"), "{err}");
        // and no offsets were assigned
        assert_eq!(writer.next_offset(), 2);
    }
}
