//! How much of an append survives a crash by the time it is acknowledged.

use serde::{Deserialize, Serialize};

/// When appended records are fsynced, and so what a crash can take away.
///
/// The relay acknowledges an event to the source (marks its row sent) only once
/// [`LogSink::publish`](crate::sink::LogSink) resolves, so each mode's guarantee is also the
/// relay's: what a crash can lose from the log is never lost from the outbox unless the mode
/// says so.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `fdatasync` after every batch, before `publish` returns. Nothing acknowledged is ever
    /// lost, whatever crashes (process, OS, power). One fsync per batch bounds throughput.
    #[default]
    Batch,
    /// A background syncer fsyncs every `sink.log.fsync_interval_ms`; `publish` resolves only
    /// once a completed fsync covers its records. Same guarantee as `batch`, fewer fsyncs when
    /// batches are small and frequent, at the price of up to one interval of extra latency.
    Interval,
    /// `publish` returns after write(2), without fsync. A process crash loses nothing (the
    /// bytes are in the page cache); an OS crash or power loss can lose the tail of the log
    /// although its rows were already marked sent — those events are gone.
    None,
}

impl Durability {
    /// Whether each append fsyncs before returning.
    pub fn syncs_each_append(self) -> bool {
        self == Durability::Batch
    }
}
