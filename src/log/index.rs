//! The sparse index of a segment: `{base_offset:020}.index`, one entry every
//! [`WriterOptions::index_interval_bytes`](super::WriterOptions) of records, to seek by offset
//! or by append time without reading a segment from its start.
//!
//! The `.log` file stays the source of truth: an index is a hint. Every entry carries its own
//! checksum, a reader checks the frame an entry points at before trusting it, and a missing,
//! short or stale index is rebuilt by scanning the segment (by the writer on open, by a reader
//! in memory). Entries are fixed-size:
//!
//! ```text
//! | offset: u64 | byte position: u64 | appended_at secs: i64 | nanos: u32 | crc32c: u32 |
//! ```

use super::codec;
use super::frame::{self, Frame};
use super::segment;
use crate::error::{Error, ErrorKind, Result};
use chrono::{DateTime, Utc};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

/// Bytes per entry on disk.
pub(crate) const ENTRY_LEN: usize = 32;

/// One indexed record: where its frame starts and when it was appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The record's offset.
    pub(crate) offset: u64,
    /// Byte position of its frame in the segment.
    pub(crate) pos: u64,
    /// When it was appended; never decreasing along the log.
    pub(crate) appended_at: DateTime<Utc>,
}

impl Entry {
    /// Appends the entry's bytes to `buf`.
    pub(crate) fn encode(&self, buf: &mut Vec<u8>) {
        let start = buf.len();
        buf.extend_from_slice(&self.offset.to_le_bytes());
        buf.extend_from_slice(&self.pos.to_le_bytes());
        buf.extend_from_slice(&self.appended_at.timestamp().to_le_bytes());
        buf.extend_from_slice(&self.appended_at.timestamp_subsec_nanos().to_le_bytes());
        let crc = crc32c::crc32c(&buf[start..]);
        buf.extend_from_slice(&crc.to_le_bytes());
    }

    /// Decodes one entry; `None` if its checksum fails.
    fn decode(bytes: &[u8; ENTRY_LEN]) -> Option<Entry> {
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
        let half = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
        if crc32c::crc32c(&bytes[..28]) != half(28) {
            return None;
        }
        Some(Entry {
            offset: word(0),
            pos: word(8),
            appended_at: DateTime::from_timestamp(word(16) as i64, half(24))?,
        })
    }
}

/// Decides which records get an entry: the first of a segment, then the first at least
/// `interval` bytes after the previous entry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sampler {
    /// Bytes between entries.
    interval: u64,
    /// Position of the last entry, `None` before the first.
    last: Option<u64>,
}

impl Sampler {
    /// A sampler for an empty segment.
    pub(crate) fn new(interval: u64) -> Self {
        Sampler {
            interval,
            last: None,
        }
    }

    /// Whether the record whose frame starts at `pos` gets an entry (and notes it if so).
    pub(crate) fn take(&mut self, pos: u64) -> bool {
        let due = self.last.is_none_or(|last| pos >= last + self.interval);
        if due {
            self.last = Some(pos);
        }
        due
    }
}

/// Loads the index of segment `base`: its entries up to the first damaged or out-of-order
/// one, or `None` if there is no index file. Callers verify entries against the segment.
pub(crate) fn load(dir: &Path, base: u64) -> Result<Option<Vec<Entry>>> {
    let path = segment::index_path(dir, base);
    let mut bytes = Vec::new();
    match File::open(&path).and_then(|mut file| file.read_to_end(&mut bytes)) {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(Error::io(format!("reading index {}", path.display()), err)),
    }
    let mut entries: Vec<Entry> = Vec::with_capacity(bytes.len() / ENTRY_LEN);
    for chunk in bytes.chunks_exact(ENTRY_LEN) {
        let Some(entry) = chunk.try_into().ok().and_then(Entry::decode) else {
            break;
        };
        let in_order = entries
            .last()
            .map_or(entry.offset == base && entry.pos == 0, |prev| {
                entry.offset > prev.offset
                    && entry.pos > prev.pos
                    && entry.appended_at >= prev.appended_at
            });
        if !in_order {
            break;
        }
        entries.push(entry);
    }
    Ok(Some(entries))
}

/// Builds the entries of segment `base` by reading it whole. Stops at the end of the valid
/// records; damage before the end is reported when `sealed` (nothing can still be writing
/// there), and ends the scan otherwise (the tail of the newest segment may be in progress).
pub(crate) fn scan(dir: &Path, base: u64, interval: u64, sealed: bool) -> Result<Vec<Entry>> {
    let path = segment::path(dir, base);
    let file = File::open(&path)
        .map_err(|err| Error::io(format!("opening log segment {}", path.display()), err))?;
    let mut src = BufReader::with_capacity(1 << 16, file);
    let read_error = |err| Error::io(format!("reading log segment {}", path.display()), err);
    let mut sampler = Sampler::new(interval);
    let mut entries = Vec::new();
    let (mut pos, mut next_offset) = (0u64, base);
    loop {
        let reason = match frame::read_frame(&mut src).map_err(read_error)? {
            Frame::End => return Ok(entries),
            Frame::Valid(body) => match codec::header(&body) {
                Ok(header) if header.offset == next_offset => {
                    if sampler.take(pos) {
                        entries.push(Entry {
                            offset: header.offset,
                            pos,
                            appended_at: header.appended_at,
                        });
                    }
                    pos += Frame::len_on_disk(&body);
                    next_offset += 1;
                    continue;
                }
                Ok(header) => format!(
                    "holds offset {} where offset {next_offset} belongs",
                    header.offset
                ),
                Err(reason) => reason,
            },
            Frame::Incomplete => "incomplete frame".to_owned(),
            Frame::Damaged(reason) => reason,
        };
        if !sealed {
            return Ok(entries);
        }
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "log segment {} is corrupt at byte {pos}: {reason} (found while indexing it)",
                path.display()
            ),
        ));
    }
}

/// Writes the index of segment `base` atomically (temporary file, fsync, rename), so a crash
/// leaves the old index or the new one, never half of one.
pub(crate) fn write(dir: &Path, base: u64, entries: &[Entry]) -> Result<()> {
    let path = segment::index_path(dir, base);
    let write_error = |err| Error::io(format!("writing index {}", path.display()), err);
    let mut buf = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for entry in entries {
        entry.encode(&mut buf);
    }
    super::permissions::replace_file(dir, &path, &buf).map_err(write_error)
}

/// The last entry at or before `offset` (entries ascending), if any.
pub(crate) fn floor_offset(entries: &[Entry], offset: u64) -> Option<Entry> {
    let at = entries.partition_point(|entry| entry.offset <= offset);
    at.checked_sub(1).map(|at| entries[at])
}

/// The last entry appended strictly before `time`, if any: a record at or after `time` can
/// only come after it.
pub(crate) fn floor_time(entries: &[Entry], time: DateTime<Utc>) -> Option<Entry> {
    let at = entries.partition_point(|entry| entry.appended_at < time);
    at.checked_sub(1).map(|at| entries[at])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_a_flipped_bit_drops_the_rest() {
        let at = Utc::now();
        let entries = [
            Entry {
                offset: 5,
                pos: 0,
                appended_at: at,
            },
            Entry {
                offset: 9,
                pos: 4100,
                appended_at: at,
            },
            Entry {
                offset: 12,
                pos: 8300,
                appended_at: at,
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 5, &entries).unwrap();
        assert_eq!(load(dir.path(), 5).unwrap().unwrap(), entries);

        let path = segment::index_path(dir.path(), 5);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[ENTRY_LEN + 3] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(load(dir.path(), 5).unwrap().unwrap(), entries[..1]);
        assert!(load(dir.path(), 6).unwrap().is_none());
    }

    #[test]
    fn floors_find_the_entry_to_start_scanning_from() {
        let t = |s| DateTime::from_timestamp(s, 0).unwrap();
        let entries = [
            Entry {
                offset: 0,
                pos: 0,
                appended_at: t(10),
            },
            Entry {
                offset: 4,
                pos: 90,
                appended_at: t(20),
            },
        ];
        assert_eq!(floor_offset(&entries, 3).unwrap().offset, 0);
        assert_eq!(floor_offset(&entries, 4).unwrap().offset, 4);
        assert_eq!(floor_time(&entries, t(10)), None);
        assert_eq!(floor_time(&entries, t(20)).unwrap().offset, 0);
        assert_eq!(floor_time(&entries, t(21)).unwrap().offset, 4);
    }
}
