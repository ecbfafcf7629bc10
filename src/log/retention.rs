//! Retention: deleting whole old segments once the log is over its size or age limit.
//!
//! Only a prefix of the log goes, oldest segment first, so what remains is still one run of
//! consecutive offsets; the active (newest) segment is never deleted. A reader that still has a
//! deleted segment open reads it to its end (the file lives on until closed) and moves on to
//! the next; a reader positioned before the first remaining offset starts at that offset.
//!
//! Consumer groups win by default: a segment holding a record at or after some group's
//! committed offset (not acked by that group yet) is kept even past a limit, and counted in
//! [`held_segments`], so a stalled or abandoned group shows instead of silently filling the
//! disk (delete it with `DELETE /v1/groups/{group}` or commit it past). With
//! `retention_over_groups` retention wins: such segments go, and the records deleted before a
//! group acked them are counted in [`unacked_deleted_records`].

use super::{ConsumerGroup, WriterOptions, segment};
use crate::error::{Error, Result};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// See [`held_segments`].
static HELD_SEGMENTS: AtomicU64 = AtomicU64::new(0);
/// See [`unacked_deleted_records`].
static UNACKED_DELETED: AtomicU64 = AtomicU64::new(0);

/// Segments past a retention limit that the last retention run kept because a consumer group
/// has not acked their records.
pub fn held_segments() -> u64 {
    HELD_SEGMENTS.load(Ordering::Relaxed)
}

/// Records retention deleted (with `retention_over_groups`) before every group acked them,
/// since start.
pub fn unacked_deleted_records() -> u64 {
    UNACKED_DELETED.load(Ordering::Relaxed)
}

/// The lowest committed offset of the groups of the log at `dir`: every group has acked what
/// is below it. `None` without groups.
fn groups_floor(dir: &Path) -> Result<Option<u64>> {
    let mut floor: Option<u64> = None;
    for name in ConsumerGroup::list(dir)? {
        let committed = ConsumerGroup::open(dir, &name)?.ack_state()?.committed;
        floor = Some(floor.map_or(committed, |floor| floor.min(committed)));
    }
    Ok(floor)
}

/// Deletes the oldest segments of `dir` while the log breaks a limit of `options`, keeping at
/// least the newest segment. Returns the base offsets deleted.
///
/// Age is the segment file's modification time: the time of its last append.
pub(crate) fn apply(dir: &Path, options: &WriterOptions, now: SystemTime) -> Result<Vec<u64>> {
    Ok(run(dir, options, now)?.deleted)
}

/// What one retention run did (the counts also go to [`held_segments`] and
/// [`unacked_deleted_records`], which the metrics read).
#[derive(Debug, Default)]
#[cfg_attr(not(test), expect(dead_code, reason = "the counts are read by tests"))]
pub(crate) struct Run {
    /// Base offsets of the segments deleted.
    pub deleted: Vec<u64>,
    /// Segments past a limit kept for the groups.
    pub held: u64,
    /// Records deleted before every group acked them.
    pub unacked_deleted: u64,
}

/// [`apply`], reporting what was kept for the groups and what they lost.
pub(crate) fn run(dir: &Path, options: &WriterOptions, now: SystemTime) -> Result<Run> {
    if !options.has_retention() {
        return Ok(Run::default());
    }
    let bases = segment::list(dir)?;
    let mut sizes = Vec::with_capacity(bases.len());
    for &base in &bases {
        let path = segment::path(dir, base);
        let meta = std::fs::metadata(&path)
            .map_err(|err| Error::io(format!("inspecting {}", path.display()), err))?;
        let modified = meta.modified().unwrap_or(now);
        sizes.push((base, meta.len(), modified));
    }
    let mut total: u64 = sizes.iter().map(|(_, len, _)| len).sum();
    let mut deleted = Vec::new();
    let floor = groups_floor(dir)?;
    let mut held = 0;
    let mut unacked_deleted = 0;
    for (i, &(base, len, modified)) in sizes.iter().enumerate().take(sizes.len().saturating_sub(1))
    {
        let too_big = options.retention_bytes.is_some_and(|max| total > max);
        let too_old = options
            .retention
            .is_some_and(|max| now.duration_since(modified).is_ok_and(|age| age > max));
        if !too_big && !too_old {
            break;
        }
        // The segment's records are base..end; those at or after `floor` are unacked.
        let end = sizes[i + 1].0;
        let unacked = floor.map_or(0, |floor| end.saturating_sub(floor.max(base)));
        if held > 0 || (unacked > 0 && !options.retention_over_groups) {
            held += 1;
            continue;
        }
        if unacked > 0 {
            unacked_deleted += unacked;
            UNACKED_DELETED.fetch_add(unacked, Ordering::Relaxed);
            tracing::warn!(dir = %dir.display(), base, unacked,
                "retention deleted records a consumer group has not acked \
                 (sink.log.retention_over_groups)");
        }
        delete(dir, base)?;
        total -= len;
        deleted.push(base);
    }
    HELD_SEGMENTS.store(held, Ordering::Relaxed);
    if !deleted.is_empty() {
        segment::sync_dir(dir)
            .map_err(|err| Error::io(format!("fsyncing log directory {}", dir.display()), err))?;
        tracing::info!(dir = %dir.display(), segments = deleted.len(), first_kept_bytes = total,
            "retention deleted old log segments");
    }
    Ok(Run {
        deleted,
        held,
        unacked_deleted,
    })
}

/// Deletes one segment: the index first, so a crash in between leaves a segment without an
/// index (rebuilt on open) rather than an index without a segment.
fn delete(dir: &Path, base: u64) -> Result<()> {
    for path in [segment::index_path(dir, base), segment::path(dir, base)] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(Error::io(format!("deleting {}", path.display()), err)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::testing::{append_range, read_all, segment_paths};
    use crate::log::{ConsumerGroup, LogReader, LogWriter};
    use std::fs::File;
    use std::time::Duration;

    /// Sizes of the segment files in `dir`, in offset order.
    fn sizes(dir: &Path) -> Vec<u64> {
        let paths = segment_paths(dir);
        paths
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .collect()
    }

    #[test]
    fn retention_by_size_deletes_only_whole_oldest_segments() {
        // given a log with a size limit of three segments
        let dir = tempfile::tempdir().unwrap();
        let options = WriterOptions {
            retention_bytes: Some(3 * 2048),
            ..WriterOptions::with_segment_bytes(2048)
        };
        let mut writer = LogWriter::open(dir.path(), options).unwrap();
        // and a reader holding the first segment open
        let mut early = LogReader::open(dir.path()).unwrap();
        append_range(&mut writer, 0..2, 200);
        assert_eq!(early.next().unwrap().unwrap().offset, 0);

        // when far more is appended
        for start in (2..202).step_by(4) {
            append_range(&mut writer, start..start + 4, 200);
        }

        // then the log stays within the limit, whole segments gone from the front only
        let total: u64 = sizes(dir.path()).iter().sum();
        assert!(total <= 3 * 2048 + 2048, "{total} bytes");
        let (first, end) = LogReader::open(dir.path()).unwrap().bounds().unwrap();
        assert!(first > 0 && end == 202, "{first}..{end}");
        let rest = read_all(&mut LogReader::open(dir.path()).unwrap());
        let offsets: Vec<u64> = rest.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (first..202).collect::<Vec<_>>());
        // and the early reader finishes its (deleted) segment, then moves on to what is left
        let seen: Vec<u64> = read_all(&mut early).iter().map(|r| r.offset).collect();
        assert_eq!(seen.last(), Some(&201));
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        // and a reader seeking into deleted history starts at the first record kept
        let mut late = LogReader::open(dir.path()).unwrap();
        late.seek(1).unwrap();
        assert_eq!(late.next().unwrap().unwrap().offset, first);
    }

    #[test]
    fn retention_by_age_deletes_old_segments_but_never_the_active_one() {
        // given four segments, all last written two hours ago
        let dir = tempfile::tempdir().unwrap();
        let mut writer =
            LogWriter::open(dir.path(), WriterOptions::with_segment_bytes(2048)).unwrap();
        append_range(&mut writer, 0..16, 200);
        let paths = segment_paths(dir.path());
        assert!(paths.len() >= 4);
        let old = SystemTime::now() - Duration::from_secs(7200);
        for path in &paths {
            File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        // and the second newest written just now
        let recent = &paths[paths.len() - 2];
        File::options()
            .write(true)
            .open(recent)
            .unwrap()
            .set_modified(SystemTime::now())
            .unwrap();

        // when retention of one hour runs
        let options = WriterOptions {
            retention: Some(Duration::from_secs(3600)),
            ..WriterOptions::with_segment_bytes(2048)
        };
        let deleted = apply(dir.path(), &options, SystemTime::now()).unwrap();

        // then the old prefix is gone, the recent and the active (old) segments stay
        assert_eq!(deleted.len(), paths.len() - 2);
        assert_eq!(segment_paths(dir.path()), paths[paths.len() - 2..].to_vec());
        assert!(!segment::index_path(dir.path(), deleted[0]).exists());
    }

    #[test]
    fn retention_keeps_what_a_group_has_not_acked_unless_it_is_told_to_win() {
        // given a log of many small segments, and a group that has acked only offset 0..10
        let dir = tempfile::tempdir().unwrap();
        let mut writer =
            LogWriter::open(dir.path(), WriterOptions::with_segment_bytes(2048)).unwrap();
        append_range(&mut writer, 0..40, 200);
        drop(writer);
        ConsumerGroup::open(dir.path(), "slow")
            .unwrap()
            .commit(10)
            .unwrap();
        let bases = segment::list(dir.path()).unwrap();
        assert!(bases.len() >= 4, "{bases:?}");
        let limit = WriterOptions {
            retention_bytes: Some(2048),
            ..WriterOptions::with_segment_bytes(2048)
        };

        // when retention runs with a limit of one segment, then only segments wholly below
        // offset 10 go, and the others are counted as held for the group
        // (The run's own count: the gauge is shared by every test in this process.)
        let done = run(dir.path(), &limit, SystemTime::now()).unwrap();
        let first_kept = segment::list(dir.path()).unwrap()[0];
        assert!(
            first_kept <= 10,
            "kept from {first_kept}; deleted {:?}",
            done.deleted
        );
        assert!(done.held > 0, "{done:?}");

        // when retention is told to win, then it deletes down to its limit and counts what the
        // group lost
        let over = WriterOptions {
            retention_over_groups: true,
            ..limit
        };
        let before = unacked_deleted_records();
        let lost = run(dir.path(), &over, SystemTime::now()).unwrap();
        assert_eq!(segment::list(dir.path()).unwrap().len(), 1);
        assert!(lost.unacked_deleted > 0 && lost.held == 0, "{lost:?}");
        assert!(unacked_deleted_records() >= before + lost.unacked_deleted);
    }

    #[test]
    fn segments_roll_by_age_so_retention_can_free_them() {
        // given a maximum segment age of 50 ms
        let dir = tempfile::tempdir().unwrap();
        let options = WriterOptions {
            segment_max_age: Some(Duration::from_millis(50)),
            ..WriterOptions::DEFAULT
        };
        let mut writer = LogWriter::open(dir.path(), options).unwrap();
        append_range(&mut writer, 0..3, 10);
        append_range(&mut writer, 3..4, 10);
        assert_eq!(segment_paths(dir.path()).len(), 1);

        // when the next append comes later than that, then it starts a new segment
        std::thread::sleep(Duration::from_millis(60));
        append_range(&mut writer, 4..6, 10);
        assert_eq!(segment::list(dir.path()).unwrap(), vec![0, 4]);
    }
}
