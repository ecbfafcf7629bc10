//! Reading the log from any offset, alongside a live writer and without its lock.

use super::Record;
use super::frame::{self, Frame};
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
                    let record = frame::decode_body(&body)
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
        let frame = frame::read_frame(&mut std::io::BufReader::new(file)).map_err(io_error)?;
        Ok(matches!(frame, Frame::Valid(_)))
    }

    /// Reads the frame at `pos`, moving past it only if it is valid.
    fn read(&mut self) -> Result<Frame> {
        let read_error =
            |err| Error::io(format!("reading log segment {}", self.path.display()), err);
        let frame = frame::read_frame(&mut self.src).map_err(read_error)?;
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
mod tests;
