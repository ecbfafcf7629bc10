//! Looking past damage in a segment for a valid record, without trusting the damaged frame's
//! own length: one flipped bit there would send a reader anywhere, and a recovery that took
//! the bytes after a damaged length for a torn tail would cut acknowledged records.
//!
//! Every byte position after the damage is tried as a frame start. Cheap tests come first (a
//! possible length that fits, a known format version, for the binary format an offset at or
//! after the damaged one), then the checksum over the body, then a full decode, so scanning a
//! torn tail of a few megabytes costs milliseconds.

use super::codec::{VERSION_JSON, is_binary};
use super::frame::{self, HEADER_LEN, MAX_BODY_LEN};
use std::fs::File;
use std::io::{self, Seek, SeekFrom};

/// Bytes read per step of the scan.
const WINDOW: usize = 1 << 20;

/// Bytes of a frame start the cheap tests look at: the header, the version byte and the
/// binary format's offset.
const PROBE: usize = HEADER_LEN + 1 + 8;

/// A valid record found after damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    /// Byte position of its frame.
    pub(crate) pos: u64,
    /// Its offset.
    pub(crate) offset: u64,
}

/// The first frame of `file` that starts in `from..end`, ends by `end`, has a matching
/// checksum, decodes, and holds an offset of at least `min_offset`; `None` if there is none.
/// A file that shrinks meanwhile (a writer cutting back a failed append) ends the scan there.
pub(crate) fn valid_frame_after(
    file: &File,
    from: u64,
    mut end: u64,
    min_offset: u64,
) -> io::Result<Option<Found>> {
    let mut buf = vec![0; (WINDOW + PROBE).min(end.saturating_sub(from) as usize)];
    let mut start = from;
    while start < end {
        let want = ((end - start) as usize).min(buf.len());
        let got = read_at(file, start, &mut buf[..want])?;
        if got < want {
            end = start + got as u64;
        }
        let window = &buf[..got];
        // Frame starts whose probe bytes all lie in this window; the rest start the next one.
        let last = start + got as u64 >= end;
        let starts = if last { got } else { got + 1 - PROBE };
        for i in 0..starts {
            let pos = start + i as u64;
            let Some((len, crc)) = plausible(&window[i..], pos, end, min_offset) else {
                continue;
            };
            if let Some(offset) = check(file, pos, len, crc, min_offset)? {
                return Ok(Some(Found { pos, offset }));
            }
        }
        if last {
            break;
        }
        start += starts as u64;
    }
    Ok(None)
}

/// The length and checksum of a frame starting at `pos` whose first bytes are `bytes`, if it
/// passes the cheap tests.
fn plausible(bytes: &[u8], pos: u64, end: u64, min_offset: u64) -> Option<(usize, u32)> {
    if bytes.len() < HEADER_LEN + 2 {
        return None;
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().ok()?);
    if !(2..=MAX_BODY_LEN).contains(&len) || pos + (HEADER_LEN + len) as u64 > end {
        return None;
    }
    match bytes[HEADER_LEN] {
        version if is_binary(version) => {
            let offset = u64::from_le_bytes(bytes.get(HEADER_LEN + 1..PROBE)?.try_into().ok()?);
            // No segment holds more records than bytes.
            (offset >= min_offset && offset - min_offset <= end).then_some((len, crc))
        }
        VERSION_JSON => (bytes[HEADER_LEN + 1] == b'{').then_some((len, crc)),
        _ => None,
    }
}

/// The offset of the record in the frame at `pos`, if its body has checksum `crc`, decodes,
/// and holds an offset of at least `min_offset`.
fn check(file: &File, pos: u64, len: usize, crc: u32, min_offset: u64) -> io::Result<Option<u64>> {
    let mut body = vec![0; len];
    if read_at(file, pos + HEADER_LEN as u64, &mut body)? < len || crc32c::crc32c(&body) != crc {
        return Ok(None);
    }
    Ok(frame::decode_body(&body)
        .ok()
        .map(|record| record.offset)
        .filter(|&offset| offset >= min_offset))
}

/// Fills `buf` from byte `pos` of `file` as far as the file goes; returns the bytes read.
fn read_at(mut file: &File, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
    file.seek(SeekFrom::Start(pos))?;
    frame::read_up_to(&mut file, buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::testing::{append_range, frame_starts, segment_paths};
    use crate::log::{LogWriter, WriterOptions};

    #[test]
    fn the_next_record_is_found_from_anywhere_inside_the_one_before_it() {
        // given a segment of 40 records
        let dir = tempfile::tempdir().unwrap();
        let mut writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
        append_range(&mut writer, 0..40, 100);
        let path = &segment_paths(dir.path())[0];
        let starts = frame_starts(path);
        let file = File::open(path).unwrap();
        let end = file.metadata().unwrap().len();

        // then from every byte inside record 20, the scan lands on record 21
        for from in starts[20] + 1..=starts[21] {
            let found = valid_frame_after(&file, from, end, 20).unwrap();
            assert_eq!(
                found,
                Some(Found {
                    pos: starts[21],
                    offset: 21
                }),
                "from {from}"
            );
        }
        // and records before the minimum offset do not count
        assert_eq!(valid_frame_after(&file, 0, end, 40).unwrap(), None);
        // and inside the last record there is nothing to find
        assert_eq!(
            valid_frame_after(&file, starts[39] + 1, end, 39).unwrap(),
            None
        );
    }
}
