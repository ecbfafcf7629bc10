//! The polling source's book of what is in flight and what waits: which aggregates a fetch
//! must leave out, and until when.
//!
//! An aggregate is left out while one of its events is in flight (handed out, not yet
//! settled), so its later events wait for the earlier ones; and while it is parked (a failed
//! event waits for its retry, or the broker was busy), so one failing aggregate holds up only
//! itself.

use crate::config::RelayConfig;
use crate::event::{Event, Position, Rejected};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// In-flight events and parked aggregates.
#[derive(Debug, Default)]
pub struct Flight {
    /// Aggregates waiting to retry a failed event, with the time they may go again.
    parked: HashMap<String, Instant>,
    /// Events handed out and not yet settled: position → aggregate.
    in_flight: HashMap<u64, String>,
    /// How many events of each aggregate are in flight.
    aggregates_in_flight: HashMap<String, usize>,
    /// Rows whose dead letter could not be recorded, with the time to try again: until then
    /// they are left out of batches.
    unrecordable: HashMap<u64, Instant>,
    /// Busy rounds in a row per aggregate; forgotten once one of its events is delivered.
    busy_streak: HashMap<String, u32>,
}

impl Flight {
    /// The aggregates a fetch must leave out (parked, forgetting those whose wait is over, and
    /// in flight), and how long until the next parked one is due.
    pub fn excluded_now(&mut self) -> (Vec<String>, Option<Duration>) {
        let now = Instant::now();
        self.parked.retain(|_, until| *until > now);
        let next = self.parked.values().min().map(|until| *until - now);
        let mut excluded: Vec<String> = self.aggregates_in_flight.keys().cloned().collect();
        excluded.extend(
            self.parked
                .keys()
                .filter(|aggregate| !self.aggregates_in_flight.contains_key(*aggregate))
                .cloned(),
        );
        (excluded, next)
    }

    /// Records events as handed out.
    pub fn hand_out(&mut self, events: &[Event]) {
        for event in events {
            self.in_flight.insert(event.position.0, event.key.clone());
            *self
                .aggregates_in_flight
                .entry(event.key.clone())
                .or_default() += 1;
        }
    }

    /// Forgets events as in flight, once settled one way or another.
    pub fn settled(&mut self, positions: impl IntoIterator<Item = Position>) {
        for position in positions {
            let Some(aggregate) = self.in_flight.remove(&position.0) else {
                continue;
            };
            if let Some(count) = self.aggregates_in_flight.get_mut(&aggregate) {
                *count -= 1;
                if *count == 0 {
                    self.aggregates_in_flight.remove(&aggregate);
                }
            }
        }
    }

    /// The aggregate of an event in flight.
    pub fn aggregate_of(&self, position: Position) -> Option<&String> {
        self.in_flight.get(&position.0)
    }

    /// Parks `aggregate` until at least `until`.
    pub fn park(&mut self, aggregate: String, until: Instant) {
        let slot = self.parked.entry(aggregate).or_insert(until);
        *slot = (*slot).max(until);
    }

    /// Parks each busy event's aggregate for a backoff that doubles with every busy round in a
    /// row (up to `relay.retry_max_ms`), and settles the events.
    pub fn busy(&mut self, positions: &[Position], relay: &RelayConfig) {
        let now = Instant::now();
        for position in positions {
            let Some(aggregate) = self.in_flight.get(&position.0).cloned() else {
                continue;
            };
            let streak = self.busy_streak.entry(aggregate.clone()).or_default();
            *streak = streak.saturating_add(1);
            let ceiling = (relay.retry_initial_ms as f64 * 2f64.powi((*streak).min(30) as i32 - 1))
                .min(relay.retry_max_ms as f64);
            let delay = Duration::from_millis((ceiling * (0.5 + fastrand::f64() / 2.0)) as u64);
            self.park(aggregate, now + delay);
        }
        self.settled(positions.iter().copied());
    }

    /// Events were delivered: their aggregates' busy streaks end.
    pub fn delivered(&mut self, positions: &[Position]) {
        if self.busy_streak.is_empty() {
            return;
        }
        for position in positions {
            if let Some(aggregate) = self.in_flight.get(&position.0) {
                self.busy_streak.remove(aggregate);
            }
        }
    }

    /// Dead letters that could not be recorded: their rows stay out of batches, and their
    /// aggregates wait, until `until`.
    pub fn unrecordable(&mut self, positions: &[i64], aggregates: Vec<String>, until: Instant) {
        for aggregate in aggregates {
            self.parked.insert(aggregate, until);
        }
        for position in positions {
            self.unrecordable.insert(*position as u64, until);
        }
    }

    /// Leaves out of `rejected` the rows whose dead letter is waiting to be recorded again.
    pub fn drop_unrecordable(&mut self, rejected: &mut Vec<Rejected>) {
        if self.unrecordable.is_empty() {
            return;
        }
        let now = Instant::now();
        self.unrecordable.retain(|_, until| *until > now);
        let waiting = &self.unrecordable;
        rejected.retain(|bad| !waiting.contains_key(&bad.position.0));
    }
}
