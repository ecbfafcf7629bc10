//! How far a log is durable, announced by its writer to the followers in the same process.
//!
//! Every log directory has one [`watch`] channel in a process-wide registry, keyed by the
//! directory's absolute path. The [`LogWriter`](super::LogWriter) announces the offset below
//! which every record is durable as its [`Durability`](super::Durability) defines it: after
//! each append with `batch` (fsynced) and `none` (written), after each fsync of the
//! [`Syncer`](super::Syncer) with `interval`. Followers ([`Consumer`](super::Consumer)) wait on
//! the channel instead of polling the files, and never hand out a record the writer has not
//! announced (a failed append cut back off the log was never announced).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, PoisonError};
use tokio::sync::watch;

/// What followers know of a log's durable end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurableEnd {
    /// No writer of this log runs in this process (another process writes it, or none does):
    /// followers see whole records as they are read and re-check on a timer.
    Unknown,
    /// Every record below this offset is durable; a writer in this process announces more.
    Below(u64),
}

/// The channels, by absolute log directory.
static REGISTRY: LazyLock<Mutex<HashMap<PathBuf, watch::Sender<DurableEnd>>>> =
    LazyLock::new(Mutex::default);

/// The channel of the log at `dir`, created (as [`DurableEnd::Unknown`]) on first use.
pub(crate) fn channel(dir: &Path) -> watch::Sender<DurableEnd> {
    let key = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    REGISTRY
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(key)
        .or_insert_with(|| watch::channel(DurableEnd::Unknown).0)
        .clone()
}

/// Follows the durable end of the log at `dir`.
pub fn subscribe(dir: &Path) -> watch::Receiver<DurableEnd> {
    channel(dir).subscribe()
}

/// Announces that every record below `end` is durable (never moving the end back).
pub(crate) fn announce(sender: &watch::Sender<DurableEnd>, end: u64) {
    sender.send_if_modified(|current| match current {
        DurableEnd::Below(done) if *done >= end => false,
        _ => {
            *current = DurableEnd::Below(end);
            true
        }
    });
}

/// Says that this process no longer writes the log (its writer was dropped).
pub(crate) fn forget(sender: &watch::Sender<DurableEnd>) {
    sender.send_replace(DurableEnd::Unknown);
}
