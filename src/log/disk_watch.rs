//! Writes to a log directory by any process, as the kernel reports them (Linux `inotify`), for
//! followers with no writer in their own process to announce records (`outboxd log tail -f`
//! beside a running relay, a standby relay serving the consumer API).
//!
//! One watch per directory and process, shared by every follower: `inotify` instances are a
//! per-user limit (often 128), and one is enough. A thread of its own reads the events (not a
//! task: it must outlive the runtime that first asked, as tests and the CLI run several), and
//! bumps a counter on a [`watch`] channel for every change to a segment file or to the
//! directory itself. A follower marks the counter seen before it reads, and waits for it to
//! move: a write after the read always moves it after the mark, so no write is missed. The
//! thread ends, and forgets the directory, once the directory is gone or, at the next event,
//! once no follower listens.
//!
//! The kernel does not report writes made on another host (network filesystems), so followers
//! still re-check on a long timer (see [`recheck_interval`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// How long a follower with a watch waits before re-checking anyway: only a fallback, for
/// writes the kernel does not report.
pub const WATCHED_RECHECK: Duration = Duration::from_secs(2);

/// How often a follower re-checks when the directory cannot be watched (no `inotify`, or its
/// limits reached).
pub const UNWATCHED_RECHECK: Duration = Duration::from_millis(50);

/// Test lever: milliseconds to use instead of both intervals (a test sets it very long, so a
/// record written by another process can only arrive in time through the watch).
pub const RECHECK_ENV: &str = "OUTBOXD_TEST_LOG_RECHECK_MS";

/// The watches, by absolute log directory.
static WATCHES: LazyLock<Mutex<HashMap<PathBuf, watch::Sender<u64>>>> =
    LazyLock::new(Mutex::default);

/// How long a follower waits before re-checking a directory whether or not it heard of a
/// change: [`WATCHED_RECHECK`] with a watch, [`UNWATCHED_RECHECK`] without ([`RECHECK_ENV`]
/// overrides both).
pub fn recheck_interval(watched: bool) -> Duration {
    static OVERRIDE: LazyLock<Option<Duration>> = LazyLock::new(|| {
        std::env::var(RECHECK_ENV)
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis)
    });
    match *OVERRIDE {
        Some(interval) => interval,
        None if watched => WATCHED_RECHECK,
        None => UNWATCHED_RECHECK,
    }
}

/// Changes to the log at `dir` from now on (the current count is marked seen), or `None` when
/// the directory cannot be watched (the caller re-checks on [`UNWATCHED_RECHECK`]).
pub fn subscribe(dir: &Path) -> Option<watch::Receiver<u64>> {
    let key = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    let mut watches = WATCHES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(sender) = watches.get(&key) {
        return Some(sender.subscribe());
    }
    match start(&key) {
        Ok(sender) => {
            let changes = sender.subscribe();
            watches.insert(key, sender);
            Some(changes)
        }
        Err(err) => {
            tracing::debug!(dir = %key.display(), error = %err, "cannot watch the log directory");
            None
        }
    }
}

/// Forgets the watch of `dir` if it is still `sender`'s (a newer one may have replaced it).
fn forget(dir: &Path, sender: &watch::Sender<u64>) {
    let mut watches = WATCHES.lock().unwrap_or_else(PoisonError::into_inner);
    if watches.get(dir).is_some_and(|s| s.same_channel(sender)) {
        watches.remove(dir);
    }
}

#[cfg(target_os = "linux")]
use self::linux::start;

#[cfg(not(target_os = "linux"))]
/// No watch outside Linux: followers re-check on [`UNWATCHED_RECHECK`].
fn start(_dir: &Path) -> std::io::Result<watch::Sender<u64>> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(target_os = "linux")]
mod linux {
    use super::forget;
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use tokio::sync::watch;

    /// What is watched: writes, new and renamed-in files (a new segment, a recovered one), and
    /// the directory's own removal.
    const MASK: u32 = libc::IN_MODIFY
        | libc::IN_CLOSE_WRITE
        | libc::IN_CREATE
        | libc::IN_MOVED_TO
        | libc::IN_DELETE_SELF
        | libc::IN_MOVE_SELF
        | libc::IN_ONLYDIR;

    /// Bytes of the fixed part of an event (`struct inotify_event` before its name).
    const EVENT_HEADER: usize = std::mem::size_of::<libc::inotify_event>();

    /// Starts watching `dir` (before returning, so every later write is reported) and the
    /// thread that turns its events into counts.
    pub fn start(dir: &Path) -> io::Result<watch::Sender<u64>> {
        // SAFETY: inotify_init1 takes flags only; the result is checked before use.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = CString::new(dir.as_os_str().as_bytes())?;
        // SAFETY: a valid descriptor and a NUL-terminated path that outlives the call.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), MASK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let sender = watch::channel(0).0;
        let counts = sender.clone();
        let dir = dir.to_owned();
        std::thread::Builder::new()
            .name("outboxd-log-watch".into())
            .spawn(move || run(fd, &dir, &counts))?;
        Ok(sender)
    }

    /// Reads events until the directory is gone or nobody listens, counting the relevant ones.
    fn run(fd: OwnedFd, dir: &Path, counts: &watch::Sender<u64>) {
        // Room for many events at once; every event fits (names are at most NAME_MAX bytes).
        let mut buf = vec![0u8; 64 * (EVENT_HEADER + 256)];
        loop {
            // SAFETY: a valid descriptor and a buffer of the given length.
            let read = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if read < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            let (relevant, gone) = scan(&buf[..read as usize]);
            if relevant {
                counts.send_modify(|count| *count = count.wrapping_add(1));
            }
            if gone || counts.receiver_count() == 0 {
                break;
            }
        }
        forget(dir, counts);
        // Followers still holding a receiver see the count move once more and re-check.
        counts.send_modify(|count| *count = count.wrapping_add(1));
    }

    /// Whether `events` hold a change a follower must look at (to a segment, or the directory
    /// itself), and whether the watch ended (the directory was removed or moved).
    pub(super) fn scan(mut events: &[u8]) -> (bool, bool) {
        let (mut relevant, mut gone) = (false, false);
        while events.len() >= EVENT_HEADER {
            // SAFETY: at least EVENT_HEADER bytes remain; read_unaligned needs no alignment.
            let event: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(events.as_ptr().cast()) };
            let end = (EVENT_HEADER + event.len as usize).min(events.len());
            let name = &events[EVENT_HEADER..end];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            events = &events[end..];
            if event.mask & (libc::IN_IGNORED | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0 {
                gone = true;
            }
            // Index, lock and group files change too; only segments hold records.
            relevant |= name.is_empty() || name.ends_with(b".log");
        }
        (relevant, gone)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_to_a_segment_moves_the_count_and_one_to_another_file_does_not() {
        // Given a watched log directory.
        let dir = tempfile::tempdir().unwrap();
        let mut changes = subscribe(dir.path()).expect("inotify works here");
        // When another file is written, then a segment.
        std::fs::write(dir.path().join("00000000000000000000.index"), b"x").unwrap();
        std::fs::write(dir.path().join("00000000000000000000.log"), b"x").unwrap();
        // Then the count moves (for the segment).
        tokio::time::timeout(Duration::from_secs(30), changes.changed())
            .await
            .expect("the watch reported the write")
            .unwrap();
        // And a second follower shares the watch.
        let second = subscribe(dir.path()).unwrap();
        assert!(second.same_channel(&changes), "one watch per directory");
    }

    #[test]
    fn events_on_other_files_are_not_relevant_and_a_removed_directory_ends_the_watch() {
        let event = |mask: u32, name: &str| {
            let mut bytes = Vec::new();
            // Names are NUL-padded to a multiple of 16 bytes, as the kernel does.
            let padded = if name.is_empty() {
                0
            } else {
                (name.len() as u32 / 16 + 1) * 16
            };
            let header = libc::inotify_event {
                wd: 1,
                mask,
                cookie: 0,
                len: padded,
            };
            // SAFETY: inotify_event is plain data; viewing it as bytes is sound.
            bytes.extend_from_slice(unsafe {
                std::slice::from_raw_parts((&header as *const libc::inotify_event).cast(), 16)
            });
            let mut name = name.as_bytes().to_vec();
            name.resize(padded as usize, 0);
            bytes.extend_from_slice(&name);
            bytes
        };
        let index = event(libc::IN_MODIFY, "00000000000000000000.index");
        assert_eq!(linux::scan(&index), (false, false));
        let segment = event(libc::IN_MODIFY, "00000000000000000000.log");
        assert_eq!(
            linux::scan(&[index.clone(), segment].concat()),
            (true, false)
        );
        assert_eq!(linux::scan(&event(libc::IN_IGNORED, "")), (true, true));
    }
}
