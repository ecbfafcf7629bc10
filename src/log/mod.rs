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
//!   closed once the next record would push it past [`WriterOptions::segment_bytes`]; a record
//!   larger than that gets a segment of its own.
//!
//! A segment is a sequence of frames, one per record:
//!
//! ```text
//! +---------------+----------------+-----------------------------------------------+
//! | len: u32 LE   | crc32c: u32 LE | body: `len` bytes                             |
//! | (body length) | (of the body)  | version byte 1, then the Record as serde_json |
//! +---------------+----------------+-----------------------------------------------+
//! ```
//!
//! A body over 256 MiB is refused as a damaged header.
//!
//! # Durability and recovery
//!
//! An append is one write per segment followed by `fdatasync` (and a directory fsync when it
//! creates a segment); offsets are returned only after both. A crash can therefore leave only
//! the newest segment with a torn tail, which the writer cuts off when it opens. After a failed
//! write or fsync the writer is poisoned and refuses every further append (see [`LogWriter`]).
//!
//! # Reading
//!
//! Readers return only whole, checksum-valid records. At the end of the newest segment a
//! partial or failing frame may be a write in progress, so it reads as "nothing yet" and is
//! tried again on the next call; in any older segment it is reported as corruption.

mod codec;
mod durability;
mod group;
mod index;
mod options;
mod reader;
mod record;
mod recovery;
mod retention;
mod seek;
mod segment;
mod syncer;
#[cfg(test)]
pub(crate) mod testing;
mod writer;

pub use self::durability::Durability;
pub use self::group::ConsumerGroup;
pub use self::options::WriterOptions;
pub use self::reader::LogReader;
pub use self::record::{NewRecord, Record};
pub use self::syncer::{Durable, SyncProbe, Syncer};
pub use self::writer::LogWriter;
