//! The embedded event log: append-only segment files in one directory, written by one
//! [`LogWriter`] and read by any number of [`LogReader`]s, in this process or others.
//!
//! # On-disk format
//!
//! Offsets are one global sequence starting at 0; the topic is a field of each record, not a
//! partition. The directory holds:
//!
//! - `LOCK`: the writer holds an exclusive lock on it for as long as it is open. Readers never
//!   touch it.
//! - Segment files named `{base_offset:020}.log` (e.g. `00000000000000000042.log`), where the
//!   base offset is the offset of the segment's first record. The records of a segment have
//!   consecutive offsets, and each segment starts where the previous one ended. A segment is
//!   closed once the next record would push it past [`WriterOptions::segment_bytes`] (a record
//!   larger than that gets a segment of its own), or once its first record is older than
//!   [`WriterOptions::segment_max_age`].
//! - Beside each segment its sparse index `{base_offset:020}.index` (see `index.rs`): an entry
//!   every [`WriterOptions::index_interval_bytes`] with offset, byte position and append time,
//!   to seek by offset or time. The `.log` file is the source of truth; an index is checked
//!   before use and rebuilt from its segment when missing or stale.
//! - `groups/<name>.offset`: the committed next offset of each [`ConsumerGroup`].
//!
//! A segment is a sequence of frames, one per record:
//!
//! ```text
//! +---------------+----------------+-----------------------------------------------+
//! | len: u32 LE   | crc32c: u32 LE | body: `len` bytes                             |
//! | (body length) | (of the body)  | version byte, then the record (see codec.rs): |
//! |               |                | 2 = compact binary (written), 1 = JSON (read) |
//! +---------------+----------------+-----------------------------------------------+
//! ```
//!
//! A body over 256 MiB is refused as a damaged header. Append times never decrease along the
//! log (the writer clamps a clock that steps back), which is what makes seeking by time a
//! binary search.
//!
//! # Durability and recovery
//!
//! An append is one write per segment touched; [`Durability`] decides when it is fsynced
//! (`batch`: before `append` returns; `interval`: by a [`Syncer`] that callers wait on;
//! `none`: at segment close only). Creating a segment also fsyncs the directory. A crash can
//! therefore leave only the newest segment with a torn tail, which the writer cuts off when it
//! opens; damage followed by valid records is corruption and stops the writer instead. A failed
//! write (a full disk) is cut back off the log at once and can be retried; after a failed fsync
//! the writer is poisoned and refuses every further append (see [`LogWriter`]).
//!
//! # Retention
//!
//! With `retention_bytes` and/or `retention`, the writer deletes the oldest whole segments
//! (never the active one) on open, after each roll, and at most once a minute while appending.
//!
//! # Reading
//!
//! Readers return only whole, checksum-valid records. At the end of the newest segment a
//! partial or failing frame may be a write in progress, so it reads as "nothing yet" and is
//! tried again on the next call, unless a valid record follows it somewhere (found without
//! trusting its length, see `scan.rs`); then, as in any older segment, it is reported as
//! corruption.

pub(crate) mod codec;
pub mod consumer;
pub(crate) mod disk_watch;
mod durability;
pub(crate) mod frame;
mod group;
pub(crate) mod index;
pub(crate) mod json;
pub(crate) mod notify;
mod options;
pub(crate) mod permissions;
pub mod queue;
mod reader;
pub(crate) mod record;
mod recovery;
mod retention;
mod scan;
mod seek;
pub(crate) mod segment;
mod syncer;
#[cfg(test)]
pub(crate) mod testing;
mod writer;

pub use self::consumer::{Consumer, Start, blocking};
pub use self::disk_watch::{RECHECK_ENV, WATCHED_RECHECK};
pub use self::durability::Durability;
pub use self::group::{AckState, ConsumerGroup};
pub use self::notify::DurableEnd;
pub use self::options::WriterOptions;
pub use self::permissions::DEFAULT_DIR_MODE;
pub use self::reader::LogReader;
pub use self::record::{NewRecord, Record, RecordView};
pub use self::retention::{held_segments, unacked_deleted_records};
pub(crate) use self::syncer::lock as lock_writer;
pub use self::syncer::{Durable, SyncProbe, Syncer};
pub use self::writer::{LogWriter, create_dir};
