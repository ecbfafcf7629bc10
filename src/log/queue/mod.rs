//! A consumer group with queue semantics (after Sequin Stream): consumers *receive* messages,
//! each handed out for a visibility timeout, and *ack* them (done for good) or *nack* them
//! (hand out again, after an optional delay). At least once: a message neither acked within its
//! visibility timeout nor acked at all is handed out again; an acked one never is, also after a
//! restart, because an ack is durable (see [`ConsumerGroup::save_ack_state`]) before
//! [`GroupQueue::ack`] returns.
//!
//! Per-key order across the group's consumers: a message is handed out only while it is the
//! oldest unacked message of its key, so while one is out (or waiting after a nack) no later
//! message of that key goes to anyone, and other keys keep flowing. At most `max_in_flight`
//! messages are out at once.
//!
//! The queue reads ahead through a [`Consumer`] into a buffer of at most [`BUFFER`] unacked
//! messages. This file is the synchronous core; `groups.rs` shares queues between requests and
//! waits for messages.

mod groups;
#[cfg(test)]
mod tests;

pub use self::groups::{GroupStatus, Groups, Receive};

use super::group::AckState;
use super::{Consumer, ConsumerGroup, Record, Start};
use crate::error::{Error, ErrorKind, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most unacked messages a group holds in memory (read ahead, out, or waiting to go out again).
pub const BUFFER: usize = 10_000;

/// One unacked message.
#[derive(Debug)]
struct Message {
    /// The record.
    record: Arc<Record>,
    /// The current delivery, while the message is out.
    out: Option<Delivery>,
    /// Not handed out before this (after a nack with a delay).
    not_before: Option<Instant>,
    /// How often it was handed out.
    deliveries: u32,
}

/// One handing out of a message.
#[derive(Clone, Copy, Debug)]
struct Delivery {
    /// Numbers deliveries within the group; part of the ack id, so an ack from a consumer whose
    /// visibility timeout passed does not ack the message another consumer now holds.
    id: u64,
    /// When the visibility timeout ends.
    deadline: Instant,
}

/// A message handed out by [`GroupQueue::receive`].
#[derive(Clone, Debug)]
pub struct Handed {
    /// Names this delivery in [`GroupQueue::ack`] and [`GroupQueue::nack`].
    pub ack_id: String,
    /// The record.
    pub record: Arc<Record>,
    /// Whether it was handed out before.
    pub redelivered: bool,
}

/// The state of one group served with queue semantics.
#[derive(Debug)]
pub struct GroupQueue {
    /// The group's files.
    group: ConsumerGroup,
    /// What is durable: committed offset, topic, acks after it.
    state: AckState,
    /// Reads ahead into `messages`.
    consumer: Consumer,
    /// Unacked messages read so far, by offset.
    messages: BTreeMap<u64, Message>,
    /// Offsets of the unacked messages of each key.
    by_key: HashMap<String, BTreeSet<u64>>,
    /// Messages out now.
    in_flight: usize,
    /// Most messages out at once.
    max_in_flight: usize,
    /// The last delivery id given. Starts at the wall clock's microseconds, so the ids of a
    /// restarted relay are not those a consumer may still hold from before the restart.
    last_delivery: u64,
    /// Messages handed out again (after a visibility timeout or a nack), since start.
    pub redeliveries: u64,
    /// Messages acked, since start.
    pub acks: u64,
}

impl GroupQueue {
    /// Loads group `name` of the log at `dir` from its files (a new group starts at the log's
    /// beginning). `topic`, if given, must be the group's topic, and becomes it for a new group.
    pub fn open(
        dir: &Path,
        name: &str,
        topic: Option<&str>,
        max_in_flight: usize,
    ) -> Result<GroupQueue> {
        let group = ConsumerGroup::open(dir, name)?;
        let mut state = group.ack_state()?;
        if !group.exists() {
            state.topic = topic.map(str::to_owned);
        }
        check_topic(name, &state, topic)?;
        let consumer =
            Consumer::open(dir, Start::Offset(state.committed))?.with_topic(state.topic.clone());
        Ok(GroupQueue {
            group,
            state,
            consumer,
            messages: BTreeMap::new(),
            by_key: HashMap::new(),
            in_flight: 0,
            max_in_flight: max_in_flight.max(1),
            last_delivery: first_delivery_id(),
            redeliveries: 0,
            acks: 0,
        })
    }

    /// Fails unless `topic` (if given) is the group's topic.
    pub fn check_topic(&self, name: &str, topic: Option<&str>) -> Result<()> {
        check_topic(name, &self.state, topic)
    }

    /// Hands out up to `max` messages for `visibility`: the oldest unacked message of each key
    /// that is not out and not delayed, in offset order, within `max_in_flight`. Blocking I/O
    /// (reads ahead).
    pub fn receive(
        &mut self,
        max: usize,
        visibility: Duration,
        now: Instant,
    ) -> Result<Vec<Handed>> {
        self.expire(now);
        self.read_ahead()?;
        let room = self.max_in_flight.saturating_sub(self.in_flight).min(max);
        let mut handed = Vec::new();
        for (&offset, message) in &mut self.messages {
            if handed.len() >= room {
                break;
            }
            let first_of_key = self.by_key[&message.record.event.key].first() == Some(&offset);
            if message.out.is_some()
                || !first_of_key
                || message.not_before.is_some_and(|at| at > now)
            {
                continue;
            }
            self.last_delivery += 1;
            message.out = Some(Delivery {
                id: self.last_delivery,
                deadline: now + visibility,
            });
            message.not_before = None;
            let redelivered = message.deliveries > 0;
            message.deliveries += 1;
            self.redeliveries += u64::from(redelivered);
            handed.push(Handed {
                ack_id: format!("{offset}-{}", self.last_delivery),
                record: message.record.clone(),
                redelivered,
            });
        }
        self.in_flight += handed.len();
        Ok(handed)
    }

    /// Acks the messages of `ack_ids`, durably before returning; returns how many were acked.
    /// Ids of deliveries that are no longer current (the message went to another consumer
    /// since, or was acked) are ignored. Fails on an id that is not one.
    pub fn ack(&mut self, ack_ids: &[String]) -> Result<usize> {
        let mut offsets = BTreeSet::new();
        for id in ack_ids {
            let (offset, delivery) = parse_ack_id(id)?;
            if self.messages.get(&offset).is_some_and(|message| {
                message.out.is_none_or(|out| out.id == delivery) && message.deliveries > 0
            }) {
                offsets.insert(offset);
            }
        }
        if offsets.is_empty() {
            return Ok(0);
        }
        // Durable first: the new state is written before the messages leave memory.
        let mut state = self.state.clone();
        state.acked.extend(&offsets);
        let lowest_unacked = self
            .messages
            .keys()
            .find(|offset| !offsets.contains(offset));
        state.committed = lowest_unacked.map_or(self.consumer.position(), |&offset| offset);
        let committed = state.committed;
        state.acked.retain(|&acked| acked >= committed);
        if state != self.state {
            self.group.save_ack_state(&state)?;
            self.state = state;
        }
        for offset in &offsets {
            let message = self.messages.remove(offset).expect("checked above");
            let key = &message.record.event.key;
            if let Some(offsets) = self.by_key.get_mut(key) {
                offsets.remove(offset);
                if offsets.is_empty() {
                    self.by_key.remove(key);
                }
            }
            self.in_flight -= usize::from(message.out.is_some());
        }
        self.acks += offsets.len() as u64;
        Ok(offsets.len())
    }

    /// Returns the messages of `ack_ids` (current deliveries only) to the group, to be handed
    /// out again after `delay`; their keys stay blocked until then. Returns how many.
    pub fn nack(&mut self, ack_ids: &[String], delay: Duration, now: Instant) -> Result<usize> {
        let mut nacked = 0;
        for id in ack_ids {
            let (offset, delivery) = parse_ack_id(id)?;
            if let Some(message) = self.messages.get_mut(&offset)
                && message.out.is_some_and(|out| out.id == delivery)
            {
                message.out = None;
                message.not_before = Some(now + delay);
                self.in_flight -= 1;
                nacked += 1;
            }
        }
        Ok(nacked)
    }

    /// The earliest moment a message out or delayed becomes available again, if any.
    pub fn next_timer(&self) -> Option<Instant> {
        self.messages
            .values()
            .filter_map(|message| message.out.map(|out| out.deadline).or(message.not_before))
            .min()
    }

    /// Messages out now.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The committed offset: every record below it is acked.
    pub fn committed(&self) -> u64 {
        self.state.committed
    }

    /// The group's topic, if it reads only one.
    pub fn topic(&self) -> Option<&str> {
        self.state.topic.as_deref()
    }

    /// The oldest unacked record read so far, if any (for the lag in seconds).
    pub fn oldest_unacked(&mut self) -> Result<Option<Arc<Record>>> {
        self.read_ahead()?;
        Ok(self
            .messages
            .values()
            .next()
            .map(|message| message.record.clone()))
    }

    /// Ends the visibility timeouts that have passed by `now`.
    fn expire(&mut self, now: Instant) {
        for message in self.messages.values_mut() {
            if message.out.is_some_and(|out| out.deadline <= now) {
                message.out = None;
                self.in_flight -= 1;
            }
        }
    }

    /// Reads durable records into the buffer until it is full or the log has no more, skipping
    /// those acked before (out of order, by an earlier run).
    fn read_ahead(&mut self) -> Result<()> {
        while self.messages.len() < BUFFER {
            let Some(record) = self.consumer.next()? else {
                break;
            };
            if self.state.acked.contains(&record.offset) {
                continue;
            }
            self.by_key
                .entry(record.event.key.clone())
                .or_default()
                .insert(record.offset);
            self.messages.insert(
                record.offset,
                Message {
                    record: Arc::new(record),
                    out: None,
                    not_before: None,
                    deliveries: 0,
                },
            );
        }
        Ok(())
    }
}

/// The delivery id before a loaded queue's first: microseconds since 1970 (a restart takes
/// longer than the ids one run uses up at any realistic rate, so runs never share ids).
fn first_delivery_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}

/// Fails unless `topic` (if given) is the topic of the group with `state`.
fn check_topic(name: &str, state: &AckState, topic: Option<&str>) -> Result<()> {
    match topic {
        Some(topic) if state.topic.as_deref() != Some(topic) => Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "topic: group {name} reads {}, not {topic:?}",
                state
                    .topic
                    .as_ref()
                    .map_or("every topic".to_owned(), |t| format!("topic {t:?}"))
            ),
        )),
        _ => Ok(()),
    }
}

/// Splits an ack id into offset and delivery.
fn parse_ack_id(id: &str) -> Result<(u64, u64)> {
    id.split_once('-')
        .and_then(|(offset, delivery)| Some((offset.parse().ok()?, delivery.parse().ok()?)))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Invalid,
                format!("ack_ids: {id:?} is not an ack id"),
            )
        })
}
