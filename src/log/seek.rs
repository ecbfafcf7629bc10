//! Finding where to start reading, through the segments' sparse indexes: the byte position of
//! an offset, and the first offset appended at or after a time.
//!
//! Indexes are hints. An entry is used only after the frame it points at is read back and
//! holds the entry's offset; otherwise the segment is scanned from its start. A missing index
//! is rebuilt in memory (readers never write to the log directory).

use super::codec;
use super::index::{self, Entry};
use super::record::{self, Frame};
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
    record::read_frame(src).map_err(|err| {
        let path = segment::path(dir, base);
        Error::io(format!("reading log segment {}", path.display()), err)
    })
}
