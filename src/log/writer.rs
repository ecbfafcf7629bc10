//! The one writer of a log directory: appends batches, rolls segments by size and age, keeps
//! their sparse indexes, applies retention, cuts a failed write back off the log, and refuses
//! to go on after a failed fsync.

mod cut_back;

#[cfg(test)]
use self::cut_back::FailWrite;
use self::cut_back::{Failure, IoFailure};
use super::frame;
use super::index::{self, Entry, Sampler};
use super::notify::{self, DurableEnd};
use super::record::NewRecord;
use super::{Durability, WriterOptions, permissions, recovery, retention, segment};
use crate::error::{Error, ErrorKind, Result};
use chrono::{DateTime, Utc};
use std::fs::{File, TryLockError};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// Name of the file whose lock marks the directory's writer.
const LOCK_FILE: &str = "LOCK";

/// How often appends look at retention by age when no roll triggered it.
const RETENTION_CHECK: Duration = Duration::from_secs(60);

/// The exclusive writer of a log directory.
///
/// Durability: with [`Durability::Batch`], [`append`](LogWriter::append) returns offsets only
/// after the records' bytes are fdatasynced (and, for a new segment, the directory too); with
/// the other modes it returns after write(2) and [`sync`](LogWriter::sync) (or the syncer of
/// [`super::Syncer`]) makes them durable.
///
/// Failures: a failed write(2) (a full disk, `ENOSPC`) is reported by the kernel at once and
/// for that call only, so the writer cuts the log back to where the append began (removing
/// segments it started, truncating partial frames and index entries, fsyncing the cut) and
/// returns a retryable [`ErrorKind::SinkUnavailable`]: the same append may be tried again once
/// there is space, and gets the same offsets. Readers may have seen whole records of the failed
/// append meanwhile; a retry of the same batch puts the same events back at those offsets.
/// After a failed fsync, or a cut-back that itself failed, the writer is poisoned instead: the
/// kernel may have dropped dirty pages while reporting the error only once, so retrying could
/// "succeed" without the data on disk. Every later append fails with
/// [`ErrorKind::SinkPoisoned`]; reopening (after a restart) recovers from what is on disk.
#[derive(Debug)]
pub struct LogWriter {
    /// The log directory.
    dir: PathBuf,
    /// Layout, durability and retention.
    options: WriterOptions,
    /// The locked `LOCK` file; held open so the lock lasts as long as the writer.
    _lock: File,
    /// The segment being appended to, opened for appending.
    segment: File,
    /// Path of `segment`, for messages.
    segment_path: PathBuf,
    /// Base offset of `segment`.
    segment_base: u64,
    /// Bytes in `segment`, all of them whole valid frames.
    segment_len: u64,
    /// Append time of the first record of `segment`, `None` while it is empty.
    segment_first_at: Option<DateTime<Utc>>,
    /// The sparse index of `segment`, opened for appending.
    index: File,
    /// Bytes in `index`, so a failed append can cut its entries off again.
    index_len: u64,
    /// Decides which records of `segment` get an index entry.
    sampler: Sampler,
    /// Append time of the last record; appends never go back in time, so seeking by time can
    /// binary-search even if the clock steps back.
    last_at: DateTime<Utc>,
    /// Offset the next record gets.
    next_offset: u64,
    /// When retention last ran.
    retention_checked: Instant,
    /// Set by the first failed fsync (or failed cut-back): what failed, for every later error.
    poisoned: Option<String>,
    /// Announces how far the log is durable to followers in this process (see `notify.rs`).
    durable: watch::Sender<DurableEnd>,
    /// Test hook: makes a coming segment write fail part-way, as on a full disk.
    #[cfg(test)]
    fail_write: Option<FailWrite>,
}

impl LogWriter {
    /// Opens (creating the directory if needed) for exclusive writing; recovers a torn tail,
    /// rebuilds missing or stale indexes, and applies retention.
    ///
    /// Fails with [`ErrorKind::Locked`] while another writer, in this process or another, has
    /// the directory open, and with [`ErrorKind::Corrupt`] on damage that is not a torn tail.
    pub fn open(dir: &Path, options: WriterOptions) -> Result<LogWriter> {
        create_dir(dir, options.dir_mode)?;
        let lock = lock(dir)?;
        let bases = segment::list(dir)?;
        let interval = options.index_interval_bytes;
        for &base in bases.iter().take(bases.len().saturating_sub(1)) {
            ensure_index(dir, base, interval)?;
        }
        let base = match bases.last() {
            Some(&base) => base,
            None => {
                create_segment(dir, 0).map_err(Failure::into_error)?;
                0
            }
        };
        let segment_path = segment::path(dir, base);
        let recovered = recovery::recover(&segment_path, base, interval)?;
        index::write(dir, base, &recovered.entries)?;
        let segment = open_append(&segment_path).map_err(|(what, err)| Error::io(what, err))?;
        if options.durability != Durability::None {
            // Records a crashed process wrote but never fsynced are still in the page cache and
            // read back as valid; make them durable before anyone relies on them (the log sink
            // reports the log's tail as delivered).
            segment
                .sync_data()
                .map_err(|err| Error::io(format!("fsyncing {}", segment_path.display()), err))?;
        }
        let index = open_append(&segment::index_path(dir, base))
            .map_err(|(what, err)| Error::io(what, err))?;
        let index_len = (recovered.entries.len() * index::ENTRY_LEN) as u64;
        let mut sampler = Sampler::new(interval);
        if let Some(last) = recovered.entries.last() {
            sampler.take(last.pos);
        }
        retention::apply(dir, &options, SystemTime::now())?;
        // Everything recovered is durable (fsynced above) or, with `none`, as durable as that
        // mode makes anything.
        let durable = notify::channel(dir);
        notify::announce(&durable, recovered.next_offset);
        Ok(LogWriter {
            dir: dir.to_owned(),
            options,
            _lock: lock,
            segment,
            segment_path,
            segment_base: base,
            segment_len: recovered.valid_bytes,
            segment_first_at: recovered.first_at,
            index,
            index_len,
            sampler,
            last_at: recovered.last_at.unwrap_or(DateTime::UNIX_EPOCH),
            next_offset: recovered.next_offset,
            retention_checked: Instant::now(),
            poisoned: None,
            durable,
            #[cfg(test)]
            fail_write: None,
        })
    }

    /// Appends all records, one write per segment touched, and returns the offsets assigned
    /// (first..last+1) — after an fdatasync with [`Durability::Batch`], after write(2)
    /// otherwise. Blocking: call it from a blocking thread.
    ///
    /// If a write fails (a full disk), the log is cut back to where it stood and the error is
    /// retryable ([`ErrorKind::SinkUnavailable`]): nothing of the batch stays, and appending it
    /// again later gives it the same offsets. If an fsync fails, the writer is poisoned
    /// ([`ErrorKind::SinkPoisoned`]) and records may be on disk; they are found again on
    /// reopen, so a caller retrying after a restart may store them twice unless it checks what
    /// the log already holds (the log sink does).
    pub fn append(&mut self, batch: &[NewRecord<'_>]) -> Result<Range<u64>> {
        self.check_poisoned()?;
        let first = self.next_offset;
        if batch.is_empty() {
            return Ok(first..first);
        }
        // Encode everything before touching the disk, so an unencodable record fails the batch
        // without writing anything and without poisoning the writer.
        let appended_at = Utc::now().max(self.last_at);
        let mut buf = Vec::new();
        let mut frame_ends = Vec::with_capacity(batch.len());
        for (offset, record) in (first..).zip(batch) {
            frame::encode_frame(&mut buf, offset, appended_at, record)?;
            frame_ends.push(buf.len());
        }
        let mark = self.mark();
        let rolled = match self.write_frames(&buf, &frame_ends, first, appended_at) {
            Ok(rolled) => rolled,
            Err(Failure::Write(failure)) => return Err(self.cut_back(mark, failure)),
            Err(Failure::Sync(failure)) => return Err(self.poison(failure)),
        };
        self.last_at = appended_at;
        self.next_offset = first + batch.len() as u64;
        if self.options.durability != Durability::Interval {
            // `batch`: fsynced; `none`: written, all that mode promises. `interval`: the
            // syncer announces after its fsync.
            notify::announce(&self.durable, self.next_offset);
        }
        if rolled || self.retention_checked.elapsed() >= RETENTION_CHECK {
            self.apply_retention();
        }
        Ok(first..self.next_offset)
    }

    /// Fdatasyncs the active segment, making every record appended so far durable (older
    /// segments were synced when they were closed). Returns the offset after the last record
    /// now durable. A failure poisons the writer.
    pub fn sync(&mut self) -> Result<u64> {
        let (file, end) = self.sync_target()?;
        match file.sync_data() {
            Ok(()) => Ok(end),
            Err(err) => {
                Err(self.poison((format!("fsyncing {}", self.segment_path.display()), err)))
            }
        }
    }

    /// A second handle on the active segment and the offset after the last record appended:
    /// fsyncing the handle makes every record below that offset durable. Lets a syncer fsync
    /// without holding the writer, so appends are not blocked behind the fsync.
    pub(crate) fn sync_target(&self) -> Result<(File, u64)> {
        self.check_poisoned()?;
        let file = self.segment.try_clone().map_err(|err| {
            Error::io(
                format!("duplicating handle of {}", self.segment_path.display()),
                err,
            )
        })?;
        Ok((file, self.next_offset))
    }

    /// Poisons the writer after a failed fsync (also one done by a syncer on a handle from
    /// [`sync_target`](Self::sync_target)) or a failed cut-back, returning the error to report.
    pub(crate) fn poison(&mut self, (what, err): IoFailure) -> Error {
        let cause = format!("{what}: {err}");
        let message = poisoned_message(&cause);
        tracing::error!(error = %cause, "embedded log poisoned");
        self.poisoned.get_or_insert(cause);
        Error::with_source(ErrorKind::SinkPoisoned, message, err)
    }

    /// The channel announcing how far the log is durable (the syncer announces its fsyncs on
    /// it).
    pub(crate) fn durable_channel(&self) -> watch::Sender<DurableEnd> {
        self.durable.clone()
    }

    /// Offset the next appended record will get.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The writer's options.
    pub fn options(&self) -> &WriterOptions {
        &self.options
    }

    /// Bytes `record` takes on disk, frame header included, to enforce size limits before
    /// appending.
    pub fn encoded_len(record: &NewRecord<'_>) -> Result<usize> {
        frame::max_encoded_len(record)
    }

    /// The error of every operation on a poisoned writer.
    fn check_poisoned(&self) -> Result<()> {
        match &self.poisoned {
            Some(cause) => Err(Error::new(ErrorKind::SinkPoisoned, poisoned_message(cause))),
            None => Ok(()),
        }
    }

    /// Runs retention, logging instead of failing: it only frees space, and the next roll
    /// tries again.
    fn apply_retention(&mut self) {
        self.retention_checked = Instant::now();
        if let Err(err) = retention::apply(&self.dir, &self.options, SystemTime::now()) {
            tracing::warn!(error = %err.chain(), "log retention failed; will retry");
        }
    }

    /// Writes the encoded frames (`frame_ends` marks where each ends in `buf`; the first has
    /// offset `first`), rolling to new segments where the current one would grow too large or
    /// is too old. Returns whether it rolled.
    fn write_frames(
        &mut self,
        buf: &[u8],
        frame_ends: &[usize],
        first: u64,
        appended_at: DateTime<Utc>,
    ) -> Result<bool, Failure> {
        let mut rolled = false;
        let mut entries = Vec::new();
        let mut chunk_start = 0;
        let mut frame_start = 0;
        for (offset, &frame_end) in (first..).zip(frame_ends) {
            let mut before = self.segment_len + (frame_start - chunk_start) as u64;
            let after = before + (frame_end - frame_start) as u64;
            if before > 0 && (after > self.options.segment_bytes || self.too_old(appended_at)) {
                self.write_chunk(&buf[chunk_start..frame_start], &entries)?;
                entries.clear();
                self.roll(offset)?;
                rolled = true;
                chunk_start = frame_start;
                before = 0;
            }
            if self.sampler.take(before) {
                entries.push(Entry {
                    offset,
                    pos: before,
                    appended_at,
                });
            }
            self.segment_first_at.get_or_insert(appended_at);
            frame_start = frame_end;
        }
        self.write_chunk(&buf[chunk_start..], &entries)?;
        Ok(rolled)
    }

    /// Whether the active segment's first record is past `segment_max_age` at `now`.
    fn too_old(&self, now: DateTime<Utc>) -> bool {
        match (self.options.segment_max_age, self.segment_first_at) {
            (Some(max), Some(first)) => (now - first).to_std().is_ok_and(|age| age >= max),
            _ => false,
        }
    }

    /// Writes whole frames to the current segment (fdatasyncing them in batch mode), then
    /// their index entries. The index is a hint and is not fsynced here.
    fn write_chunk(&mut self, chunk: &[u8], entries: &[Entry]) -> Result<(), Failure> {
        if chunk.is_empty() {
            return Ok(());
        }
        let path = self.segment_path.display().to_string();
        self.write_segment(chunk)
            .map_err(|err| Failure::Write((format!("writing {path}"), err)))?;
        if self.options.durability.syncs_each_append() {
            self.segment
                .sync_data()
                .map_err(|err| Failure::Sync((format!("fsyncing {path}"), err)))?;
        }
        self.segment_len += chunk.len() as u64;
        if !entries.is_empty() {
            let mut bytes = Vec::with_capacity(entries.len() * index::ENTRY_LEN);
            for entry in entries {
                entry.encode(&mut bytes);
            }
            self.index
                .write_all(&bytes)
                .map_err(|err| Failure::Write((format!("writing the index of {path}"), err)))?;
            self.index_len += bytes.len() as u64;
        }
        Ok(())
    }

    /// Closes the current segment (fsyncing it unless the mode is `none`, and its index) and
    /// starts a new one whose first record will have offset `base`.
    fn roll(&mut self, base: u64) -> Result<(), Failure> {
        let path = self.segment_path.display();
        if self.options.durability != Durability::None {
            self.segment
                .sync_data()
                .map_err(|err| Failure::Sync((format!("fsyncing {path}"), err)))?;
        }
        self.index
            .sync_data()
            .map_err(|err| Failure::Sync((format!("fsyncing the index of {path}"), err)))?;
        let (segment, segment_path) = create_segment(&self.dir, base)?;
        self.index = open_append(&segment::index_path(&self.dir, base)).map_err(Failure::Write)?;
        self.segment = segment;
        self.segment_path = segment_path;
        self.segment_base = base;
        self.segment_len = 0;
        self.index_len = 0;
        self.segment_first_at = None;
        self.sampler = Sampler::new(self.options.index_interval_bytes);
        Ok(())
    }
}

impl Drop for LogWriter {
    /// Tells followers in this process that nobody here announces this log any more.
    fn drop(&mut self) {
        notify::forget(&self.durable);
    }
}

/// Makes sure the sealed segment `base` has an index that fits it, rebuilding it by a full
/// scan (which reports any damage in the segment as corruption) when it is missing or stale.
fn ensure_index(dir: &Path, base: u64, interval: u64) -> Result<()> {
    let len = std::fs::metadata(segment::path(dir, base))
        .map_err(|err| Error::io(format!("inspecting segment {base}"), err))?
        .len();
    let fits = index::load(dir, base)?
        .is_some_and(|entries| entries.last().is_some_and(|last| last.pos < len) || len == 0);
    if !fits {
        tracing::info!(dir = %dir.display(), base, "rebuilding log segment index");
        let entries = index::scan(dir, base, interval, true)?;
        index::write(dir, base, &entries)?;
    }
    Ok(())
}

/// Opens (creating if needed, with the directory's file mode) a file for appending.
fn open_append(path: &Path) -> Result<File, IoFailure> {
    permissions::create_options(path.parent().unwrap_or(Path::new(".")))
        .append(true)
        .create(true)
        .open(path)
        .map_err(|err| (format!("opening {} for appending", path.display()), err))
}

/// Creates `dir` with `mode` if missing (narrowing it to `mode` if it exists with more), and
/// makes its entry in the parent durable. Readers that start before the writer (the HTTP
/// consumer API) call it so they find an empty log rather than none.
pub fn create_dir(dir: &Path, mode: u32) -> Result<()> {
    let create_error = |err| Error::io(format!("creating log directory {}", dir.display()), err);
    if !permissions::ensure_dir(dir, mode).map_err(create_error)? {
        return Ok(());
    }
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    segment::sync_dir(parent).map_err(create_error)
}

/// Takes the writer lock of `dir`, returning the file that holds it.
fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = permissions::create_options(dir)
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
fn create_segment(dir: &Path, base: u64) -> Result<(File, PathBuf), Failure> {
    let path = segment::path(dir, base);
    let file = permissions::create_options(dir)
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(|err| Failure::Write((format!("creating log segment {}", path.display()), err)))?;
    segment::sync_dir(dir)
        .map_err(|err| Failure::Sync((format!("fsyncing log directory {}", dir.display()), err)))?;
    Ok((file, path))
}

/// The message of every error from a poisoned writer; `cause` says what failed first.
fn poisoned_message(cause: &str) -> String {
    format!(
        "embedded log is poisoned after a failed fsync or cut-back: {cause}; restart outboxd \
         after fixing the disk"
    )
}

#[cfg(test)]
mod tests;
