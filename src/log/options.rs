//! How a [`LogWriter`](super::LogWriter) lays out, syncs and expires its segments.

use super::Durability;
use std::time::Duration;

/// Settings of a [`LogWriter`](super::LogWriter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterOptions {
    /// Size at which a segment is closed and a new one started. A record that alone exceeds it
    /// still goes in, into a segment of its own. Default 128 MiB.
    pub segment_bytes: u64,
    /// A non-empty segment whose first record is older than this is closed at the next append,
    /// so retention by age can drop data without waiting for a segment to fill. Default none.
    pub segment_max_age: Option<Duration>,
    /// Bytes of records between two entries of a segment's sparse index. Default 4 KiB.
    pub index_interval_bytes: u64,
    /// When appends are fsynced; see [`Durability`]. Default [`Durability::Batch`].
    pub durability: Durability,
    /// Oldest segments are deleted while the log's segments total more than this. Default none.
    pub retention_bytes: Option<u64>,
    /// Segments last written longer ago than this are deleted. Default none.
    pub retention: Option<Duration>,
    /// Whether retention deletes segments holding records a consumer group has not acked (see
    /// `retention.rs`). Default `false`: the groups win.
    pub retention_over_groups: bool,
    /// Permission bits of the log directory (created with them, narrowed to them if wider);
    /// files get the same bits without execute. Default `0o700` (files `0o600`): records hold
    /// payloads.
    pub dir_mode: u32,
}

impl WriterOptions {
    /// The defaults, in a `const` context (tests build tiny layouts from it).
    pub const DEFAULT: WriterOptions = WriterOptions {
        segment_bytes: 128 * 1024 * 1024,
        segment_max_age: None,
        index_interval_bytes: 4096,
        durability: Durability::Batch,
        retention_bytes: None,
        retention: None,
        retention_over_groups: false,
        dir_mode: super::permissions::DEFAULT_DIR_MODE,
    };

    /// The defaults with another segment size.
    pub const fn with_segment_bytes(segment_bytes: u64) -> Self {
        WriterOptions {
            segment_bytes,
            ..WriterOptions::DEFAULT
        }
    }

    /// Whether any retention limit is set.
    pub fn has_retention(&self) -> bool {
        self.retention_bytes.is_some() || self.retention.is_some()
    }
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions::DEFAULT
    }
}
