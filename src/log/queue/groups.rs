//! The queue-semantics groups of one log, shared by every request: loaded on first use, each
//! behind a lock, with waiting receives woken by new durable records, acks, nacks and timers
//! (never by polling: with the writer in another process, by the kernel's report of its
//! writes, see `log::disk_watch`).

use super::{GroupQueue, Handed};
use crate::error::{Error, ErrorKind, Result};
use crate::log::consumer::blocking;
use crate::log::disk_watch::{self, recheck_interval};
use crate::log::notify::{self, DurableEnd};
use crate::log::{ConsumerGroup, LogReader};
use chrono::Utc;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// What a receive asks for.
#[derive(Clone, Debug)]
pub struct Receive {
    /// Most messages to hand out.
    pub max: usize,
    /// Longest to wait for the first message.
    pub wait: Duration,
    /// How long each message stays out before it is handed out again unless acked.
    pub visibility: Duration,
    /// The group's topic, if the caller names it (checked; sets it for a new group).
    pub topic: Option<String>,
}

/// A group's progress, for `GET /v1/groups/{group}` and the metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupStatus {
    /// The group's name.
    pub name: String,
    /// The group's topic, if it reads only one.
    pub topic: Option<String>,
    /// Every record below this offset is acked.
    pub committed: u64,
    /// Records from the committed offset to the end of the log.
    pub lag_records: u64,
    /// Age of the oldest unacked record, seconds (0 when none).
    pub lag_seconds: f64,
    /// Messages handed out and not acked.
    pub in_flight: usize,
    /// Messages handed out again, since this process loaded the group.
    pub redeliveries: u64,
    /// Messages acked, since this process loaded the group.
    pub acks: u64,
}

/// One loaded group.
#[derive(Debug)]
struct Loaded {
    /// The queue.
    queue: Mutex<GroupQueue>,
    /// Woken on every ack and nack, which may free a key or room in flight.
    changed: Notify,
    /// Set (under the queue's lock) once the group is deleted: requests still holding it get
    /// 404 instead of writing its files again.
    deleted: AtomicBool,
}

impl Loaded {
    /// The queue, locked, unless the group was deleted meanwhile.
    fn queue(&self, name: &str) -> Result<MutexGuard<'_, GroupQueue>> {
        let queue = lock(&self.queue);
        if self.deleted.load(Ordering::SeqCst) {
            return Err(unknown(name));
        }
        Ok(queue)
    }
}

/// The groups of one log directory.
#[derive(Debug)]
pub struct Groups {
    /// The log directory.
    dir: PathBuf,
    /// Most messages out per group.
    max_in_flight: usize,
    /// Groups loaded so far.
    loaded: Mutex<HashMap<String, Arc<Loaded>>>,
}

impl Groups {
    /// The groups of the log at `dir`, each with at most `max_in_flight` messages out.
    pub fn new(dir: &Path, max_in_flight: usize) -> Groups {
        Groups {
            dir: dir.to_owned(),
            max_in_flight,
            loaded: Mutex::default(),
        }
    }

    /// Hands out messages of group `name` (created if new), waiting up to `request.wait` for
    /// the first one.
    pub async fn receive(&self, name: &str, request: &Receive) -> Result<Vec<Handed>> {
        let topic = request.topic.as_deref();
        let group = self.get(name, true, topic)?;
        let deadline = Instant::now() + request.wait;
        loop {
            // Subscribed before looking, so nothing that happens after the look is missed.
            let mut durable = notify::subscribe(&self.dir);
            // No writer in this process: the kernel reports another process's writes.
            let unannounced = *durable.borrow_and_update() == DurableEnd::Unknown;
            let mut disk = unannounced
                .then(|| disk_watch::subscribe(&self.dir))
                .flatten();
            let changed = group.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            let (handed, timer) = blocking(|| {
                let mut queue = group.queue(name)?;
                queue.check_topic(name, topic)?;
                let handed = queue.receive(request.max, request.visibility, Instant::now())?;
                Ok((handed, queue.next_timer()))
            })?;
            let now = Instant::now();
            if !handed.is_empty() || now >= deadline {
                return Ok(handed);
            }
            let mut wake = timer.map_or(deadline, |timer| timer.min(deadline));
            if unannounced {
                wake = wake.min(now + recheck_interval(disk.is_some()));
            }
            let written = async {
                match &mut disk {
                    Some(disk) => disk.changed().await.unwrap_or(()),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = durable.changed() => {}
                () = changed => {}
                () = written => {}
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    /// Acks `ack_ids` of group `name`, durably; returns how many were acked.
    pub async fn ack(&self, name: &str, ack_ids: &[String]) -> Result<usize> {
        let group = self.get(name, false, None)?;
        let acked = blocking(|| group.queue(name)?.ack(ack_ids))?;
        group.changed.notify_waiters();
        Ok(acked)
    }

    /// Nacks `ack_ids` of group `name`: handed out again after `delay`; returns how many.
    pub async fn nack(&self, name: &str, ack_ids: &[String], delay: Duration) -> Result<usize> {
        let group = self.get(name, false, None)?;
        let nacked = group.queue(name)?.nack(ack_ids, delay, Instant::now())?;
        group.changed.notify_waiters();
        Ok(nacked)
    }

    /// The progress of group `name`.
    pub async fn status(&self, name: &str) -> Result<GroupStatus> {
        let group = self.get(name, false, None)?;
        blocking(|| {
            let end = LogReader::open(&self.dir)?.bounds()?.1;
            let mut queue = group.queue(name)?;
            let oldest = queue.oldest_unacked()?;
            let lag_seconds = oldest.map_or(0.0, |record| {
                (Utc::now() - record.appended_at).num_milliseconds().max(0) as f64 / 1000.0
            });
            Ok(GroupStatus {
                name: name.to_owned(),
                topic: queue.topic().map(str::to_owned),
                committed: queue.committed(),
                lag_records: end.saturating_sub(queue.committed()),
                lag_seconds,
                in_flight: queue.in_flight(),
                redeliveries: queue.redeliveries,
                acks: queue.acks,
            })
        })
    }

    /// The progress of every group: those with files and those loaded.
    pub async fn list(&self) -> Result<Vec<GroupStatus>> {
        let mut names = ConsumerGroup::list(&self.dir)?;
        names.extend(lock(&self.loaded).keys().cloned());
        names.sort();
        names.dedup();
        let mut statuses = Vec::with_capacity(names.len());
        for name in names {
            statuses.push(self.status(&name).await?);
        }
        Ok(statuses)
    }

    /// The progress of the groups loaded in this process (cheap: for the metrics).
    pub async fn loaded(&self) -> Vec<GroupStatus> {
        let names: Vec<String> = lock(&self.loaded).keys().cloned().collect();
        let mut statuses = Vec::with_capacity(names.len());
        for name in names {
            if let Ok(status) = self.status(&name).await {
                statuses.push(status);
            }
        }
        statuses
    }

    /// Removes group `name`: its files, and its state in memory.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let group = ConsumerGroup::open(&self.dir, name)?;
        let loaded = lock(&self.loaded).remove(name);
        if loaded.is_none() && !group.exists() {
            return Err(unknown(name));
        }
        // Under the queue's lock, so no request still holding the group writes it again.
        let _queue = loaded.as_ref().map(|loaded| {
            let queue = lock(&loaded.queue);
            loaded.deleted.store(true, Ordering::SeqCst);
            loaded.changed.notify_waiters();
            queue
        });
        blocking(|| group.remove())
    }

    /// The loaded group `name`, loading it first; an unknown group is created only if `create`.
    fn get(&self, name: &str, create: bool, topic: Option<&str>) -> Result<Arc<Loaded>> {
        let mut loaded = lock(&self.loaded);
        if let Some(group) = loaded.get(name) {
            return Ok(group.clone());
        }
        if !create && !ConsumerGroup::open(&self.dir, name)?.exists() {
            return Err(unknown(name));
        }
        let queue = blocking(|| GroupQueue::open(&self.dir, name, topic, self.max_in_flight))?;
        let group = Arc::new(Loaded {
            queue: Mutex::new(queue),
            changed: Notify::new(),
            deleted: AtomicBool::new(false),
        });
        loaded.insert(name.to_owned(), group.clone());
        Ok(group)
    }
}

/// The error for an unknown group.
fn unknown(name: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("consumer group {name} does not exist"),
    )
}

/// Locks, going on after a panic elsewhere.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
