//! The background syncer of [`Durability::Interval`](super::Durability::Interval): fsyncs the
//! log every interval and announces how far the log is durable.

use super::LogWriter;
use crate::error::{Error, ErrorKind, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::watch;

/// How far the log is known to be durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Durable {
    /// Every record below this offset is fsynced.
    Below(u64),
    /// An fsync failed: the writer is poisoned and nothing more will become durable.
    Failed(String),
}

/// Shared between the syncer thread, its handle and everyone waiting.
struct Shared {
    /// The writer whose segment is synced.
    writer: Arc<Mutex<LogWriter>>,
    /// The latest [`Durable`], for waiters.
    durable: watch::Sender<Durable>,
    /// Announces durable offsets to followers (see `notify.rs`).
    announce: watch::Sender<super::notify::DurableEnd>,
    /// Completed fsyncs, so tests can observe that publishing waited for one.
    fsyncs: AtomicU64,
}

/// Fsyncs the log on a background thread every interval while records wait to be durable.
///
/// The fsync runs on a second handle of the active segment, without holding the writer, so
/// appends go on during it. Dropping the syncer runs a last fsync and stops the thread.
pub struct Syncer {
    /// State shared with the thread.
    shared: Arc<Shared>,
    /// Dropped to stop the thread.
    stop: Option<mpsc::Sender<()>>,
    /// The thread, joined on drop.
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts syncing `writer` every `interval`; everything appended before now counts as
    /// durable only once the first fsync completes.
    pub fn start(writer: Arc<Mutex<LogWriter>>, interval: Duration) -> Result<Syncer> {
        let (start, announce) = {
            let mut writer = lock(&writer);
            (writer.sync()?, writer.durable_channel())
        };
        super::notify::announce(&announce, start);
        let (durable, _) = watch::channel(Durable::Below(start));
        let shared = Arc::new(Shared {
            writer,
            durable,
            announce,
            fsyncs: AtomicU64::new(0),
        });
        let (stop, stopped) = mpsc::channel::<()>();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("outboxd-log-syncer".to_owned())
            .spawn(move || {
                loop {
                    match stopped.recv_timeout(interval) {
                        Err(RecvTimeoutError::Timeout) => thread_shared.sync_once(),
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                            thread_shared.sync_once();
                            return;
                        }
                    }
                }
            })
            .map_err(|err| Error::io("starting the log syncer thread", err))?;
        Ok(Syncer {
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Waits until every record below `end` is durable; fails if an fsync failed first.
    pub async fn wait_durable(&self, end: u64) -> Result<()> {
        let mut durable = self.shared.durable.subscribe();
        let reached = durable
            .wait_for(|d| matches!(d, Durable::Failed(_)) || *d >= Durable::Below(end))
            .await
            .map_err(|err| Error::with_source(ErrorKind::Internal, "log syncer stopped", err))?
            .clone();
        match reached {
            Durable::Below(_) => Ok(()),
            Durable::Failed(message) => Err(Error::new(ErrorKind::SinkPoisoned, message)),
        }
    }

    /// A handle to watch and drive the syncer from elsewhere (tests, diagnostics).
    pub fn probe(&self) -> SyncProbe {
        SyncProbe(self.shared.clone())
    }
}

/// Observes (and can trigger) a [`Syncer`]'s fsyncs while it is in use.
#[derive(Clone)]
pub struct SyncProbe(
    /// The syncer's shared state.
    Arc<Shared>,
);

impl SyncProbe {
    /// Runs one fsync now, on the calling thread (blocking).
    pub fn sync_now(&self) {
        self.0.sync_once();
    }

    /// How many fsyncs completed.
    pub fn fsyncs(&self) -> u64 {
        self.0.fsyncs.load(Ordering::SeqCst)
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    /// Fsyncs whatever was appended since the last fsync and announces it.
    fn sync_once(&self) {
        let target = lock(&self.writer).sync_target();
        let (file, end) = match target {
            Ok(target) => target,
            Err(err) => return self.fail(err),
        };
        if matches!(*self.durable.borrow(), Durable::Below(done) if done >= end) {
            return;
        }
        match file.sync_data() {
            Ok(()) => {
                self.fsyncs.fetch_add(1, Ordering::SeqCst);
                super::notify::announce(&self.announce, end);
                self.durable.send_if_modified(|durable| match durable {
                    Durable::Below(done) if *done < end => {
                        *done = end;
                        true
                    }
                    _ => false,
                });
            }
            Err(err) => {
                let what = "fsyncing the active log segment (interval syncer)".to_owned();
                let err = lock(&self.writer).poison((what, err));
                self.fail(err);
            }
        }
    }

    /// Announces a failure; waiters get it as their error.
    fn fail(&self, err: Error) {
        self.durable.send_replace(Durable::Failed(err.chain()));
    }
}

impl PartialOrd for Durable {
    /// Orders durable offsets; a failure is unordered (it is checked first by waiters).
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Durable::Below(a), Durable::Below(b)) => a.partial_cmp(b),
            _ => None,
        }
    }
}

/// Locks the writer, going on after a panic elsewhere: the writer's own poisoning covers I/O.
pub(crate) fn lock(writer: &Mutex<LogWriter>) -> std::sync::MutexGuard<'_, LogWriter> {
    writer.lock().unwrap_or_else(PoisonError::into_inner)
}
