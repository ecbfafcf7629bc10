//! Segment files: `{base_offset:020}.log`, where the base offset is the offset of the segment's
//! first record. Zero-padding makes the names sort like the offsets.

use crate::error::{Error, ErrorKind, Result};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Suffix of every segment file.
const SUFFIX: &str = ".log";

/// Digits of the zero-padded base offset (enough for `u64::MAX`).
const DIGITS: usize = 20;

/// The file name of the segment whose first record has offset `base`.
pub(crate) fn file_name(base: u64) -> String {
    format!("{base:0DIGITS$}{SUFFIX}")
}

/// The path of the segment with base offset `base` in `dir`.
pub(crate) fn path(dir: &Path, base: u64) -> PathBuf {
    dir.join(file_name(base))
}

/// Largest base offset a segment may have. The writer would need 2^63 appends to get past it,
/// and below it `offset + 1` cannot overflow for any record a segment file can hold, so
/// readers, recovery and the writer count offsets with plain additions. A file name above it
/// is damage or another program's file.
pub(crate) const MAX_BASE: u64 = i64::MAX as u64;

/// Suffix of every segment's index file.
const INDEX_SUFFIX: &str = ".index";

/// The path of the sparse index of the segment with base offset `base` in `dir`.
pub(crate) fn index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:0DIGITS$}{INDEX_SUFFIX}"))
}

/// The base offset a segment file name stands for, or `None` for any other file.
pub(crate) fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Base offsets of the segments in `dir`, ascending. Other files (the lock) are ignored; a
/// segment whose base is above [`MAX_BASE`] is reported as [`ErrorKind::Corrupt`].
pub(crate) fn list(dir: &Path) -> Result<Vec<u64>> {
    let listing_error = |err| Error::io(format!("listing log segments in {}", dir.display()), err);
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(listing_error)? {
        let entry = entry.map_err(listing_error)?;
        let Some(base) = entry.file_name().to_str().and_then(parse_name) else {
            continue;
        };
        if base > MAX_BASE {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "log segment {} is named for offset {base}, beyond the largest possible \
                     offset {MAX_BASE}; move it out of the log directory",
                    entry.path().display()
                ),
            ));
        }
        bases.push(base);
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Index in `bases` (ascending, non-empty) of the segment that holds `offset`: the last one
/// starting at or before it, or the first when `offset` precedes them all.
pub(crate) fn holding(bases: &[u64], offset: u64) -> usize {
    bases
        .partition_point(|&base| base <= offset)
        .saturating_sub(1)
}

/// Fsyncs `dir` itself, so a file just created or removed in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_like_offsets() {
        assert_eq!(file_name(42), "00000000000000000042.log");
        assert_eq!(parse_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert!(file_name(9) < file_name(10));
    }

    #[test]
    fn other_files_are_not_segments() {
        for name in [
            "LOCK",
            "42.log",
            "0000000000000000004x.log",
            "00000000000000000042.tmp",
        ] {
            assert_eq!(parse_name(name), None, "{name}");
        }
    }

    #[test]
    fn listing_returns_bases_ascending_and_skips_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        for base in [30, 0, 12] {
            File::create(path(dir.path(), base)).unwrap();
        }
        File::create(dir.path().join("LOCK")).unwrap();
        assert_eq!(list(dir.path()).unwrap(), vec![0, 12, 30]);
    }

    #[test]
    fn a_segment_named_beyond_the_largest_offset_is_corruption_not_an_overflow() {
        // given a log whose only segment is named for offset u64::MAX (found by fuzzing:
        // recovery computed `offset + 1` of it and overflowed)
        let dir = tempfile::tempdir().unwrap();
        File::create(path(dir.path(), u64::MAX)).unwrap();

        // then listing, and so opening a writer or a reader, reports it instead of panicking
        assert_eq!(list(dir.path()).unwrap_err().kind(), ErrorKind::Corrupt);
        let err = crate::log::LogWriter::open(dir.path(), Default::default()).unwrap_err();
        assert!(
            err.to_string().contains("18446744073709551615.log"),
            "{err}"
        );
        assert!(crate::log::LogReader::open(dir.path()).is_err());

        // while the largest possible base is still a segment
        std::fs::remove_file(path(dir.path(), u64::MAX)).unwrap();
        File::create(path(dir.path(), MAX_BASE)).unwrap();
        assert_eq!(list(dir.path()).unwrap(), vec![MAX_BASE]);
    }

    #[test]
    fn the_holding_segment_is_the_last_starting_at_or_before_the_offset() {
        let bases = [10, 20, 30];
        assert_eq!(holding(&bases, 0), 0);
        assert_eq!(holding(&bases, 10), 0);
        assert_eq!(holding(&bases, 29), 1);
        assert_eq!(holding(&bases, 30), 2);
        assert_eq!(holding(&bases, 1_000), 2);
    }
}
