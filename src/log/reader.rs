//! Reading the log from any offset, alongside a live writer and without its lock.

use super::record::{self, Frame, Record};
use super::{WriterOptions, scan, seek, segment};
use crate::error::{Error, ErrorKind, Result};
use chrono::{DateTime, Utc};
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Index spacing of indexes a reader rebuilds in memory for segments that have none.
const INDEX_INTERVAL: u64 = WriterOptions::DEFAULT.index_interval_bytes;

/// Read buffer per open segment.
const READ_BUFFER: usize = 1 << 16;

/// Reads records in offset order.
///
/// Only whole, checksum-valid records are returned. At the end of the newest segment a partial
/// or failing frame is taken for a write in progress and read again on the next call, unless a
/// valid record follows it; anywhere else it is corruption, reported as
/// [`ErrorKind::Corrupt`] and never returned as data.
#[derive(Debug)]
pub struct LogReader {
    /// The log directory.
    dir: PathBuf,
    /// The segment being read; `None` until the log has a segment to read.
    cursor: Option<Cursor>,
    /// Records below this offset are skipped (set by [`seek`](LogReader::seek)).
    min_offset: u64,
}

/// A position inside one segment.
#[derive(Debug)]
struct Cursor {
    /// Offset of the segment's first record.
    base: u64,
    /// The segment's path, for messages.
    path: PathBuf,
    /// The segment, buffered; positioned at `pos` between calls.
    src: BufReader<File>,
    /// Byte position of the next frame.
    pos: u64,
    /// Offset the next frame's record must have.
    next_offset: u64,
    /// Whether a later segment exists. The writer starts a segment only after its last write
    /// to the previous one returned, so a sealed segment's bytes are final.
    sealed: bool,
}

impl LogReader {
    /// Opens for reading at the start of the log; never takes the writer's lock, and works
    /// while a writer appends.
    pub fn open(dir: &Path) -> Result<LogReader> {
        segment::list(dir)?;
        Ok(LogReader {
            dir: dir.to_owned(),
            cursor: None,
            min_offset: 0,
        })
    }

    /// Positions the reader at the first record whose offset is >= `offset`, including one
    /// appended later if the log does not reach `offset` yet.
    pub fn seek(&mut self, offset: u64) -> Result<()> {
        self.min_offset = offset;
        self.cursor = None;
        self.place()
    }

    /// Positions the reader at the first record appended at or after `time` (found through the
    /// segments' indexes), or at the end of the log if there is none yet.
    pub fn seek_time(&mut self, time: DateTime<Utc>) -> Result<()> {
        let offset = seek::offset_at_time(&self.dir, time, INDEX_INTERVAL)?;
        self.seek(offset)
    }

    /// The next complete, checksum-valid record, or `Ok(None)` at the current end of the log;
    /// call again later to see new appends, including into segments created since.
    // Not `Iterator::next`: reading fails and the end moves, so `None` does not mean "done".
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Record>> {
        loop {
            if self.cursor.is_none() {
                self.place()?;
            }
            let Some(cursor) = self.cursor.as_mut() else {
                return Ok(None);
            };
            let at = cursor.pos;
            match cursor.read()? {
                Frame::Valid(body) => {
                    let record = record::decode_body(&body)
                        .map_err(|reason| corrupt(&cursor.path, at, &reason))?;
                    if record.offset != cursor.next_offset {
                        let reason = format!(
                            "holds offset {} where offset {} belongs",
                            record.offset, cursor.next_offset
                        );
                        return Err(corrupt(&cursor.path, at, &reason));
                    }
                    cursor.next_offset += 1;
                    if record.offset >= self.min_offset {
                        return Ok(Some(record));
                    }
                }
                frame if !cursor.sealed => {
                    let bases = segment::list(&self.dir)?;
                    if !bases.iter().any(|&base| base > cursor.base) {
                        // The tail of the newest segment: maybe a write in progress, unless a
                        // valid record follows (a write in progress is never followed by one).
                        if let Some(reason) = damage(&frame)
                            && let Err(err) = cursor.check_nothing_valid_follows(at, &reason)
                        {
                            // The scan saw the segment later than the read did: a write in
                            // progress then may have completed the frame since. Only a frame
                            // that is still not valid, with a valid record after it, is damage.
                            if cursor.frame_is_valid_now(at)? {
                                continue;
                            }
                            return Err(err);
                        }
                        return Ok(None);
                    }
                    // A later segment exists, so this one is final: read the frame again.
                    cursor.sealed = true;
                }
                Frame::End => self.advance()?,
                Frame::Incomplete => return Err(corrupt(&cursor.path, at, "incomplete frame")),
                Frame::Damaged(reason) => return Err(corrupt(&cursor.path, at, &reason)),
            }
        }
    }

    /// Offset of the first record in the log and the offset after the last (equal when the
    /// log is empty). Reads the newest segment from its last index entry to count its records.
    pub fn bounds(&self) -> Result<(u64, u64)> {
        let bases = segment::list(&self.dir)?;
        let (Some(&first), Some(&last)) = (bases.first(), bases.last()) else {
            return Ok((0, 0));
        };
        let start = seek::start_for_offset(&self.dir, last, u64::MAX)?;
        Ok((first, seek::scan_end(&self.dir, last, start)?))
    }

    /// Opens the segment holding `min_offset` at the nearest index entry before it and skips
    /// the records below it, checking their checksums but not decoding them. Leaves no cursor
    /// while the log has no segment.
    fn place(&mut self) -> Result<()> {
        // Retention may delete the chosen segment between listing and opening it: list again.
        let mut attempts = 0;
        let mut cursor = loop {
            let bases = segment::list(&self.dir)?;
            if bases.is_empty() {
                return Ok(());
            }
            let base = bases[segment::holding(&bases, self.min_offset)];
            let start = match seek::start_for_offset(&self.dir, base, self.min_offset) {
                Ok(start) => start,
                Err(_) if attempts < 3 && !segment::path(&self.dir, base).exists() => {
                    attempts += 1;
                    continue;
                }
                Err(err) => return Err(err),
            };
            match Cursor::open_at(&self.dir, base, start) {
                Ok(cursor) => break cursor,
                Err(_) if attempts < 3 && !segment::path(&self.dir, base).exists() => {
                    attempts += 1;
                }
                Err(err) => return Err(err),
            }
        };
        while cursor.next_offset < self.min_offset {
            // Whatever stops the skip (the end, a write in progress, damage) is next() to judge.
            let Frame::Valid(_) = cursor.read()? else {
                break;
            };
            cursor.next_offset += 1;
        }
        self.cursor = Some(cursor);
        Ok(())
    }

    /// Moves from the end of a sealed segment to the start of the next one.
    fn advance(&mut self) -> Result<()> {
        let Some(current) = self.cursor.as_ref() else {
            return Ok(());
        };
        let bases = segment::list(&self.dir)?;
        let Some(&next) = bases.iter().find(|&&base| base > current.base) else {
            return Err(Error::new(
                ErrorKind::Internal,
                format!("log segment after {} disappeared", current.path.display()),
            ));
        };
        if next != current.next_offset && !current.path.exists() {
            // Retention deleted this segment while we read it and the next ones too: move on
            // to the oldest record still there.
            tracing::warn!(
                from = current.next_offset,
                to = next,
                "log records were deleted by retention before this reader got to them"
            );
        } else if next != current.next_offset {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "log segment {} starts at offset {next}, but {} ends before offset {}",
                    segment::path(&self.dir, next).display(),
                    current.path.display(),
                    current.next_offset
                ),
            ));
        }
        self.cursor = Some(Cursor::open(&self.dir, next)?);
        Ok(())
    }
}

impl Cursor {
    /// Opens the segment with base offset `base` at its first frame.
    fn open(dir: &Path, base: u64) -> Result<Cursor> {
        Cursor::open_at(dir, base, (0, base))
    }

    /// Opens the segment with base offset `base` at byte `pos`, where the frame of record
    /// `offset` starts.
    fn open_at(dir: &Path, base: u64, (pos, offset): (u64, u64)) -> Result<Cursor> {
        let path = segment::path(dir, base);
        let open_error = |err| Error::io(format!("opening log segment {}", path.display()), err);
        let mut file = File::open(&path).map_err(open_error)?;
        file.seek(SeekFrom::Start(pos)).map_err(open_error)?;
        Ok(Cursor {
            base,
            path,
            src: BufReader::with_capacity(READ_BUFFER, file),
            pos,
            next_offset: offset,
            sealed: false,
        })
    }

    /// Fails with [`ErrorKind::Corrupt`] if a valid record follows the damaged frame at `at`
    /// anywhere in the segment as it is now: then the damage is in the middle of the data,
    /// and waiting at it would hide every record after it.
    fn check_nothing_valid_follows(&self, at: u64, reason: &str) -> Result<()> {
        let io_error = |err| Error::io(format!("reading log segment {}", self.path.display()), err);
        let file = File::open(&self.path).map_err(io_error)?;
        let end = file.metadata().map_err(io_error)?.len();
        match scan::valid_frame_after(&file, at + 1, end, self.next_offset).map_err(io_error)? {
            Some(valid) => Err(corrupt(
                &self.path,
                at,
                &format!(
                    "{reason}, and a valid record (offset {} at byte {}) follows",
                    valid.offset, valid.pos
                ),
            )),
            None => Ok(()),
        }
    }

    /// Whether the frame at byte `at` reads as valid from the file as it is now (the cursor's
    /// own position is left alone).
    fn frame_is_valid_now(&self, at: u64) -> Result<bool> {
        let io_error = |err| Error::io(format!("reading log segment {}", self.path.display()), err);
        let mut file = File::open(&self.path).map_err(io_error)?;
        file.seek(SeekFrom::Start(at)).map_err(io_error)?;
        let frame = record::read_frame(&mut std::io::BufReader::new(file)).map_err(io_error)?;
        Ok(matches!(frame, Frame::Valid(_)))
    }

    /// Reads the frame at `pos`, moving past it only if it is valid.
    fn read(&mut self) -> Result<Frame> {
        let read_error =
            |err| Error::io(format!("reading log segment {}", self.path.display()), err);
        let frame = record::read_frame(&mut self.src).map_err(read_error)?;
        match &frame {
            Frame::Valid(body) => self.pos += Frame::len_on_disk(body),
            // Back to the frame's start, dropping buffered bytes, so the next try sees
            // whatever the writer has added since.
            _ => {
                self.src
                    .seek(SeekFrom::Start(self.pos))
                    .map_err(read_error)?;
            }
        }
        Ok(frame)
    }
}

/// What is wrong with a frame that is neither valid nor the clean end of the data.
fn damage(frame: &Frame) -> Option<String> {
    match frame {
        Frame::Valid(_) | Frame::End => None,
        Frame::Incomplete => Some("incomplete frame".to_owned()),
        Frame::Damaged(reason) => Some(reason.clone()),
    }
}

/// The error for damage at byte `at` of the segment at `path`.
fn corrupt(path: &Path, at: u64, reason: &str) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        format!(
            "log segment {} is corrupt at byte {at}: {reason}",
            path.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::testing::{append_range, event, flip_byte, read_all, segment_paths};
    use crate::log::{LogWriter, WriterOptions};
    use std::time::{Duration, Instant};

    /// Options that put about two records of 200-byte payloads in each segment.
    const TINY: WriterOptions = WriterOptions::with_segment_bytes(1024);

    #[test]
    fn a_damaged_record_in_an_older_segment_is_corruption_never_data() {
        // given several segments, with a byte flipped in the second record of the first one
        let dir = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::open(dir.path(), TINY).unwrap();
        append_range(&mut writer, 0..10, 200);
        let first_segment = &segment_paths(dir.path())[0];
        let first_frame_len = {
            let mut reader = LogReader::open(dir.path()).unwrap();
            reader.next().unwrap().unwrap();
            reader.cursor.as_ref().unwrap().pos
        };
        flip_byte(first_segment, first_frame_len + 100);

        // when read from the start, then the intact record comes back and then the error
        let mut reader = LogReader::open(dir.path()).unwrap();
        assert_eq!(reader.next().unwrap().unwrap().offset, 0);
        let err = reader.next().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        let message = err.to_string();
        assert!(message.contains("00000000000000000000.log"), "{message}");
        assert!(
            message.contains(&format!("at byte {first_frame_len}")),
            "{message}"
        );
        // and asking again does not skip past the damage
        assert_eq!(reader.next().unwrap_err().kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn a_cut_off_older_segment_is_corruption_not_a_write_in_progress() {
        // given an older segment that ends in the middle of a frame
        let dir = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::open(dir.path(), TINY).unwrap();
        append_range(&mut writer, 0..10, 200);
        let first_segment = &segment_paths(dir.path())[0];
        let len = std::fs::metadata(first_segment).unwrap().len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(first_segment)
            .unwrap();
        file.set_len(len - 3).unwrap();

        // then reading through it fails instead of waiting forever
        let mut reader = LogReader::open(dir.path()).unwrap();
        let err = loop {
            match reader.next() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("reader waited at a damaged older segment"),
                Err(err) => break err,
            }
        };
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(err.to_string().contains("incomplete frame"), "{err}");
    }

    #[test]
    fn a_frame_seen_half_written_is_read_again_from_its_start() {
        // given a full log of two segments, saved
        let dir = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::open(dir.path(), TINY).unwrap();
        append_range(&mut writer, 0..4, 200);
        drop(writer);
        let paths = segment_paths(dir.path());
        let (first, second) = (&paths[0], &paths[1]);
        let (first_bytes, second_bytes) = (
            std::fs::read(first).unwrap(),
            std::fs::read(second).unwrap(),
        );
        // and the state a reader can see mid-append: the first segment's last frame half
        // written, no second segment yet
        std::fs::remove_file(second).unwrap();
        std::fs::write(first, &first_bytes[..first_bytes.len() - 20]).unwrap();
        let mut reader = LogReader::open(dir.path()).unwrap();
        assert_eq!(reader.next().unwrap().unwrap().offset, 0);
        assert!(reader.next().unwrap().is_none());

        // when the write completes and the next segment appears
        std::fs::write(first, &first_bytes).unwrap();
        std::fs::write(second, &second_bytes).unwrap();

        // then the completed record is read, then the new segment's
        let offsets: Vec<u64> = read_all(&mut reader).iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![1, 2, 3]);
    }

    #[test]
    fn seek_positions_at_the_first_record_at_or_after_the_offset() {
        // given records 0..40 spread over many segments
        let dir = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::open(dir.path(), TINY).unwrap();
        append_range(&mut writer, 0..40, 200);
        let mut reader = LogReader::open(dir.path()).unwrap();

        // then seeking anywhere reads from exactly there
        for offset in [0, 1, 17, 38, 39] {
            reader.seek(offset).unwrap();
            let offsets: Vec<u64> = read_all(&mut reader).iter().map(|r| r.offset).collect();
            assert_eq!(offsets, (offset..40).collect::<Vec<_>>(), "seek({offset})");
        }

        // and seeking past the end waits for that offset, skipping the records before it
        reader.seek(45).unwrap();
        assert!(reader.next().unwrap().is_none());
        append_range(&mut writer, 40..50, 200);
        let offsets: Vec<u64> = read_all(&mut reader).iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (45..50).collect::<Vec<_>>());
    }

    #[test]
    fn bounds_span_the_first_to_one_past_the_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let reader = LogReader::open(dir.path()).unwrap();
        assert_eq!(reader.bounds().unwrap(), (0, 0));
        let mut writer = LogWriter::open(dir.path(), TINY).unwrap();
        assert_eq!(reader.bounds().unwrap(), (0, 0));
        append_range(&mut writer, 0..9, 200);
        assert_eq!(reader.bounds().unwrap(), (0, 9));
    }

    #[test]
    fn a_reader_opened_before_any_segment_sees_later_appends() {
        // given a reader on an empty directory
        let dir = tempfile::tempdir().unwrap();
        let mut reader = LogReader::open(dir.path()).unwrap();
        assert!(reader.next().unwrap().is_none());

        // when a writer creates the log and rolls through segments, then all is read
        let mut writer = LogWriter::open(dir.path(), TINY).unwrap();
        append_range(&mut writer, 0..3, 200);
        assert_eq!(read_all(&mut reader).len(), 3);
        append_range(&mut writer, 3..12, 200);
        let offsets: Vec<u64> = read_all(&mut reader).iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (3..12).collect::<Vec<_>>());
    }

    #[test]
    fn a_reader_following_a_live_writer_sees_every_record_once_in_order() {
        const TOTAL: u64 = 2_000;
        const BATCH: u64 = 50;
        let dir = tempfile::tempdir().unwrap();
        // Segments of a few KiB, so the reader also crosses segments created while it reads.
        let mut writer =
            LogWriter::open(dir.path(), WriterOptions::with_segment_bytes(8192)).unwrap();

        // given a reader polling in another thread
        let reader_dir = dir.path().to_owned();
        let follower = std::thread::spawn(move || {
            let mut reader = LogReader::open(&reader_dir).unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut seen = Vec::new();
            while (seen.len() as u64) < TOTAL {
                assert!(
                    Instant::now() < deadline,
                    "only {} records after 60s",
                    seen.len()
                );
                match reader.next().unwrap() {
                    Some(record) => seen.push(record),
                    None => std::thread::sleep(Duration::from_millis(1)),
                }
            }
            // Nothing beyond what was written.
            assert!(reader.next().unwrap().is_none());
            seen
        });

        // when the writer appends in batches
        for start in (0..TOTAL).step_by(BATCH as usize) {
            append_range(&mut writer, start..start + BATCH, 100);
        }

        // then the reader saw each record exactly once, in order, intact
        let seen = follower.join().unwrap();
        for (n, record) in (0..).zip(&seen) {
            assert_eq!(record.offset, n);
            assert_eq!(record.event.payload.get(), event(n, 100).payload.get());
        }
        assert!(segment_paths(dir.path()).len() > 10);
    }
}
