//! A consumer: reads the log from a starting point (an offset, a time, a consumer group's
//! committed offset), optionally only one topic, can commit its progress to a group, and
//! follows the log as it grows. `outboxd log …` and the HTTP consumer API both read through it.
//!
//! Following waits on the writer's announcements (see `notify.rs`) when the writer runs in this
//! process, so a waiting consumer wakes as soon as a record is durable, in every durability
//! mode, and never sees a record before then. When another process writes the log there is no
//! announcement to wait on: [`Consumer::wait`] waits for the kernel to report a write to the
//! log's directory (see `disk_watch.rs`), re-checking on a long timer only as a fallback.

use super::disk_watch::{self, recheck_interval};
use super::notify::{self, DurableEnd};
use super::{ConsumerGroup, LogReader, Record, WriterOptions, seek};
use crate::error::Result;
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::watch;

/// Index spacing of indexes rebuilt in memory to seek by time in segments that have none.
const INDEX_INTERVAL: u64 = WriterOptions::DEFAULT.index_interval_bytes;

/// Where a consumer starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// At the first record whose offset is at least this one.
    Offset(u64),
    /// At the first record appended at or after this time.
    Time(DateTime<Utc>),
    /// At the group's committed offset, or at the beginning if it never committed.
    Group(String),
}

/// Reads records in offset order from a starting point, and follows the log.
#[derive(Debug)]
pub struct Consumer {
    /// The log directory.
    dir: PathBuf,
    /// Reads the records.
    reader: LogReader,
    /// Only records of this topic are returned (the others are skipped).
    topic: Option<String>,
    /// The group to commit to, if started from one.
    group: Option<ConsumerGroup>,
    /// The writer's announcements of how far the log is durable.
    durable: watch::Receiver<DurableEnd>,
    /// A record read but not yet announced durable: returned once it is.
    held: Option<Record>,
    /// The offset after the last record returned or skipped (the start before any).
    position: u64,
    /// The durable end the last read that found nothing saw: waiting needs more than it.
    caught_up: u64,
    /// Writes to the log's directory, once waited for with no writer in this process.
    disk: Option<watch::Receiver<u64>>,
}

impl Consumer {
    /// Opens a consumer of the log at `dir` positioned at `start`.
    pub fn open(dir: &Path, start: Start) -> Result<Consumer> {
        let mut group = None;
        let offset = match start {
            Start::Offset(offset) => offset,
            Start::Time(time) => seek::offset_at_time(dir, time, INDEX_INTERVAL)?,
            Start::Group(name) => {
                let opened = ConsumerGroup::open(dir, &name)?;
                let offset = opened.offset()?.unwrap_or(0);
                group = Some(opened);
                offset
            }
        };
        let mut reader = LogReader::open(dir)?;
        reader.seek(offset)?;
        Ok(Consumer {
            dir: dir.to_owned(),
            reader,
            topic: None,
            group,
            durable: notify::subscribe(dir),
            held: None,
            position: offset,
            caught_up: 0,
            disk: None,
        })
    }

    /// Returns only records of `topic` (all records with `None`).
    pub fn with_topic(mut self, topic: Option<String>) -> Consumer {
        self.topic = topic;
        self
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The offset after the last record returned or skipped: where a resumed read starts.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next record of the topic that is durable now, or `None` when there is none yet (see
    /// [`wait`](Consumer::wait)). Blocking file I/O (reads are usually from the page cache).
    // Not `Iterator::next`: reading fails and the end moves, so `None` does not mean "done".
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Record>> {
        // Marked before reading, so a write after the read moves it again (see `wait`).
        if let Some(disk) = &mut self.disk {
            disk.borrow_and_update();
        }
        loop {
            let durable = *self.durable.borrow_and_update();
            let record = match self.held.take() {
                Some(record) => record,
                None => match self.reader.next()? {
                    Some(record) => record,
                    None => {
                        self.caught_up(durable);
                        return Ok(None);
                    }
                },
            };
            if let DurableEnd::Below(end) = durable
                && record.offset >= end
            {
                self.held = Some(record);
                self.caught_up(durable);
                return Ok(None);
            }
            self.position = record.offset + 1;
            if self
                .topic
                .as_ref()
                .is_none_or(|topic| &record.topic == topic)
            {
                return Ok(Some(record));
            }
        }
    }

    /// Up to `limit` records available now (see [`next`](Consumer::next)).
    pub fn next_batch(&mut self, limit: usize) -> Result<Vec<Record>> {
        let mut records = Vec::new();
        while records.len() < limit {
            match self.next()? {
                Some(record) => records.push(record),
                None => break,
            }
        }
        Ok(records)
    }

    /// Waits until records past those read so far may be there: until the writer in this
    /// process announces a durable end beyond them or, with no writer here, until the kernel
    /// reports a write to the log's directory (or [`recheck_interval`] passes, a fallback).
    /// Cancel-safe.
    pub async fn wait(&mut self) {
        let floor = self.position.max(self.caught_up);
        let announced = self
            .durable
            .wait_for(|end| match end {
                DurableEnd::Below(end) => *end > floor,
                DurableEnd::Unknown => true,
            })
            .await
            .map(|end| *end);
        // The registry keeps every sender alive, so the channel never closes.
        if !matches!(announced, Ok(DurableEnd::Unknown)) {
            return;
        }
        let Some(disk) = &mut self.disk else {
            self.disk = disk_watch::subscribe(&self.dir);
            if self.disk.is_none() {
                tokio::time::sleep(recheck_interval(false)).await;
            }
            // With a new watch, return at once: a write between the last read and the watch's
            // start is not reported, so the caller reads again first.
            return;
        };
        let closed = tokio::select! {
            changed = disk.changed() => changed.is_err(),
            // A writer in this process started: its announcements take over.
            _ = self.durable.changed() => false,
            () = tokio::time::sleep(recheck_interval(true)) => false,
        };
        if closed {
            // The watch ended (its directory went away, or it was being retired): watch anew.
            self.disk = None;
        }
    }

    /// Up to `limit` records, waiting until `deadline` for the first one (a long poll). The
    /// reads block in place (see [`blocking`]).
    pub async fn read(&mut self, limit: usize, deadline: Instant) -> Result<Vec<Record>> {
        loop {
            let batch = blocking(|| self.next_batch(limit))?;
            if !batch.is_empty() || Instant::now() >= deadline {
                return Ok(batch);
            }
            tokio::select! {
                () = self.wait() => {}
                () = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
    }

    /// Commits [`position`](Consumer::position) as the group's next offset, durably (see
    /// [`ConsumerGroup::commit`]). Does nothing for a consumer not started from a group.
    pub fn commit(&self) -> Result<()> {
        match &self.group {
            Some(group) => group.commit(self.position),
            None => Ok(()),
        }
    }

    /// Notes that reading found nothing more below `durable`.
    fn caught_up(&mut self, durable: DurableEnd) {
        if let DurableEnd::Below(end) = durable {
            self.caught_up = self.caught_up.max(end);
        }
    }
}

/// Runs blocking file I/O from async code: in place on a multi-threaded runtime (the worker
/// hands its other tasks on first), directly on a current-thread runtime (tests) or outside one.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    if Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread) {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

#[cfg(test)]
mod tests;
