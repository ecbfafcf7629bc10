//! Retention: deleting whole old segments once the log is over its size or age limit.
//!
//! Only a prefix of the log goes, oldest segment first, so what remains is still one run of
//! consecutive offsets; the active (newest) segment is never deleted. A reader that still has a
//! deleted segment open reads it to its end (the file lives on until closed) and moves on to
//! the next; a reader positioned before the first remaining offset starts at that offset.

use super::{WriterOptions, segment};
use crate::error::{Error, Result};
use std::path::Path;
use std::time::SystemTime;

/// Deletes the oldest segments of `dir` while the log breaks a limit of `options`, keeping at
/// least the newest segment. Returns the base offsets deleted.
///
/// Age is the segment file's modification time: the time of its last append.
pub(crate) fn apply(dir: &Path, options: &WriterOptions, now: SystemTime) -> Result<Vec<u64>> {
    if !options.has_retention() {
        return Ok(Vec::new());
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
    for &(base, len, modified) in sizes.iter().take(sizes.len().saturating_sub(1)) {
        let too_big = options.retention_bytes.is_some_and(|max| total > max);
        let too_old = options
            .retention
            .is_some_and(|max| now.duration_since(modified).is_ok_and(|age| age > max));
        if !too_big && !too_old {
            break;
        }
        delete(dir, base)?;
        total -= len;
        deleted.push(base);
    }
    if !deleted.is_empty() {
        segment::sync_dir(dir)
            .map_err(|err| Error::io(format!("fsyncing log directory {}", dir.display()), err))?;
        tracing::info!(dir = %dir.display(), segments = deleted.len(), first_kept_bytes = total,
            "retention deleted old log segments");
    }
    Ok(deleted)
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
