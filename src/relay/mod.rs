//! The relay: takes batches from the source, spreads their events over parallel lanes by a hash
//! of their ordering key, and acknowledges what the sink confirmed.
//!
//! # Ordering and isolation
//! An aggregate always takes the same lane (see [`lane_of`]), and a lane publishes the events
//! it was given in the order the source handed them out, one publish at a time: an aggregate's
//! events reach the sink in order. Lanes publish concurrently, each through its own sink handle
//! ([`Sink::fork`]), so a slow or failing aggregate holds up its own lane only.
//!
//! Events the sink could not take this time (`Retry`, `Deferred`) are handled by whoever can
//! hand them out again. The polling source can: it keeps every aggregate with events in flight
//! out of its fetches, and parks a failing aggregate with its own backoff, so nothing later of
//! that aggregate is in any lane meanwhile. A logical replication stream is read once, so there
//! the lane retries the failed events itself before anything after them ([`Redelivery`]).
//!
//! # Acknowledgement
//! Finished lanes are settled together: one acknowledgement for all the events they delivered,
//! one rejection for those refused for good. The source is never told anything about an event
//! before the sink confirmed it, so a crash at any point loses nothing.

mod dead_letters;
mod lane;
mod settled;

pub use lane::{Redelivery, lane_of};

use crate::config::{OnDeadLetter, RelayConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::metrics;
use crate::sink::{Outcome, Sink};
use crate::source::{Batch, Leadership, Source};
use dead_letters::DeadLetters;
use lane::Finished;
use settled::Settled;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How far past its normal in-flight bound the relay goes on fetching while some lane can take
/// events and another is stuck (see `Relay::has_room`).
const STUCK_LANE_FACTOR: usize = 8;

/// How often the sink is probed while no lane publishes (see [`Sink::probe`]).
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Relays until `shutdown` is cancelled (returns `Ok`) or an error no retry can fix (returns it;
/// e.g. a poisoned log after a failed fsync: nothing more is acknowledged, and `outboxd run`
/// logs the error and exits non-zero).
///
/// Shutdown stops claiming at once. Publishes already under way are finished and acknowledged;
/// lanes waiting to retry give up, leaving their events pending for the next run. Nothing is
/// lost or marked twice.
pub async fn run<S: Source, K: Sink + 'static>(
    source: &mut S,
    mut sink: K,
    config: &RelayConfig,
    shutdown: CancellationToken,
) -> Result<()> {
    // A previous run may have stored events and crashed before acknowledging them: acknowledge
    // what the sink already holds first, so those are not fetched and stored again.
    let stored = sink.already_delivered();
    if !stored.is_empty() {
        let acked = source.ack_delivered(&stored, &shutdown).await?;
        if acked > 0 {
            tracing::info!(
                events = acked,
                sink = sink.name(),
                "acknowledged events the sink already held from a previous run"
            );
        }
    }
    let mut relay = Relay::new(source, sink, config, shutdown).await?;
    let result = relay.run().await;
    drop(relay);
    source.finish().await;
    metrics::get().in_flight.set(0);
    tracing::info!("relay stopped");
    result
}

/// A lane between publishes.
struct Idle<K> {
    /// Its sink handle; `None` while it publishes.
    sink: Option<K>,
    /// Events waiting for it, in the order the source handed them out.
    queue: VecDeque<Event>,
}

/// The relay's running state.
struct Relay<'a, S, K> {
    /// Where events come from.
    source: &'a mut S,
    /// Delivery settings.
    config: Arc<RelayConfig>,
    /// Cancelled to stop.
    shutdown: CancellationToken,
    /// The lanes, indexed by [`lane_of`].
    lanes: Vec<Idle<K>>,
    /// Publishes under way, one per busy lane.
    running: JoinSet<Finished<K>>,
    /// Events handed out by the source and not yet settled.
    in_flight: usize,
    /// Most events in flight before the relay stops fetching.
    max_in_flight: usize,
    /// Bytes of event content in flight (see [`Event::content_len`]).
    in_flight_bytes: usize,
    /// Most bytes in flight before the relay stops fetching: memory stays bounded by what the
    /// lanes hold, whatever the events carry.
    max_in_flight_bytes: usize,
    /// Most events fetched per batch (a lane's queue counts as short below it).
    max_publish: usize,
    /// Most events in one lane's publish. A source read once keeps lanes' queues deep (the
    /// stream is fetched ahead), and whatever a run has published when the process dies is
    /// delivered again: so there a run takes a lane's share of a batch, as a fetch of a
    /// polling source gives it, and a crash repeats no more than in polling mode.
    max_run: usize,
    /// What the lanes do with events to try again.
    redelivery: Redelivery,
    /// What lanes confirm before each publish, if the source elects a leader.
    leadership: Option<Leadership>,
    /// Tells the source to return from a wait, because finished lanes want settling.
    wake: Notify,
    /// The sink's name, for logs and metrics.
    sink_name: &'static str,
    /// Where dead letters are also published (`relay.dead_letter_topic`), if set.
    dead_letters: Option<DeadLetters<K>>,
    /// Whether the source is told which events were delivered (it wants to, and the sink
    /// cannot report what it holds itself).
    notes_deliveries: bool,
}

impl<'a, S: Source, K: Sink + 'static> Relay<'a, S, K> {
    /// Opens a sink handle per lane.
    async fn new(
        source: &'a mut S,
        sink: K,
        config: &RelayConfig,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let count = config.lanes.clamp(1, sink.max_lanes().max(1));
        let mut lanes = Vec::with_capacity(count);
        for _ in 1..count {
            lanes.push(Idle {
                sink: Some(sink.fork().await?),
                queue: VecDeque::new(),
            });
        }
        let sink_name = sink.name();
        let notes_deliveries = source.notes_deliveries() && !sink.reads_back();
        let config = Arc::new(config.clone());
        let leadership = source.leadership();
        let dead_letters = DeadLetters::open(&sink, &config, leadership.clone()).await?;
        lanes.push(Idle {
            sink: Some(sink),
            queue: VecDeque::new(),
        });
        let redelivery = if source.redelivers() {
            Redelivery::BySource
        } else {
            Redelivery::InLane
        };
        let max_publish = source.batch_size().max(1);
        let max_run = match redelivery {
            Redelivery::InLane => max_publish.div_ceil(count.max(1)),
            Redelivery::BySource => max_publish,
        };
        let batch_bytes = source.batch_bytes();
        Ok(Relay {
            source,
            config,
            shutdown,
            lanes,
            running: JoinSet::new(),
            in_flight: 0,
            // One batch more than the lanes take at once, so the next is fetched while they
            // publish.
            max_in_flight: max_publish * (count + 1),
            in_flight_bytes: 0,
            max_in_flight_bytes: batch_bytes.saturating_mul(count + 1),
            max_publish,
            max_run,
            redelivery,
            leadership,
            wake: Notify::new(),
            sink_name,
            dead_letters,
            notes_deliveries,
        })
    }

    /// Fetches, dispatches and settles until shutdown (and every lane is done) or a fatal error.
    async fn run(&mut self) -> Result<()> {
        let mut finished = Vec::new();
        let mut stopping = false;
        let grace = Duration::from_millis(self.config.shutdown_grace_ms);
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            stopping |= self.shutdown.is_cancelled();
            if !stopping {
                self.start_idle_lanes();
            }
            if stopping && self.running.is_empty() {
                return Ok(());
            }
            if stopping {
                let deadline = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + grace);
                match tokio::time::timeout_at(deadline, self.running.join_next()).await {
                    Ok(Some(done)) => finished.push(joined(done)?),
                    Ok(None) => {}
                    Err(_) => {
                        // Publishes still unconfirmed (e.g. a broker that stopped answering)
                        // are abandoned: their events were never acknowledged, so the next run
                        // delivers them again.
                        tracing::warn!(
                            lanes = self.running.len(),
                            grace_ms = grace.as_millis() as u64,
                            "publishes still unconfirmed after relay.shutdown_grace_ms; \
                             leaving their events for the next run"
                        );
                        self.running.abort_all();
                        return Ok(());
                    }
                }
                while let Some(done) = self.running.try_join_next() {
                    finished.push(joined(done)?);
                }
                if !finished.is_empty() {
                    self.settle(std::mem::take(&mut finished), false).await?;
                }
                continue;
            }
            if !stopping && self.has_room() {
                match self.fetch(&mut finished).await? {
                    Some(batch) => self.dispatch(batch).await?,
                    None => stopping = true,
                }
            } else if let Some(done) = self.running.join_next().await {
                finished.push(joined(done)?);
            }
            while let Some(done) = self.running.try_join_next() {
                finished.push(joined(done)?);
            }
            if !finished.is_empty() {
                self.settle(std::mem::take(&mut finished), !stopping)
                    .await?;
            }
        }
    }

    /// Waits for the source's next batch; lanes finishing meanwhile are collected into
    /// `finished` (and the source woken, so they are settled promptly) while the fetch goes on,
    /// since a fetch cut short would be wasted work.
    ///
    /// While no lane publishes, the sink is probed every [`PROBE_INTERVAL`] so readiness
    /// follows the broker even with nothing to send.
    async fn fetch(&mut self, finished: &mut Vec<Finished<K>>) -> Result<Option<Batch>> {
        let next = self.source.next_batch(&self.shutdown, &self.wake);
        tokio::pin!(next);
        let probe = tokio::time::sleep(PROBE_INTERVAL);
        tokio::pin!(probe);
        loop {
            tokio::select! {
                batch = &mut next => return batch,
                Some(done) = self.running.join_next() => {
                    finished.push(joined(done)?);
                    self.wake.notify_one();
                }
                _ = &mut probe, if self.running.is_empty() => {
                    probe_idle(&mut self.lanes).await;
                    probe.as_mut().reset(tokio::time::Instant::now() + PROBE_INTERVAL);
                }
            }
        }
    }

    /// Rejects the batch's bad rows and queues its events on their lanes.
    async fn dispatch(&mut self, batch: Batch) -> Result<()> {
        if !batch.rejected.is_empty() {
            for bad in &batch.rejected {
                tracing::error!(id = %bad.id, position = %bad.position, reason = %bad.reason,
                    "outbox row cannot be delivered; dead-lettered");
            }
            self.source.reject(&batch.rejected, &self.shutdown).await?;
            metrics::get()
                .dead_letters
                .inc_by(batch.rejected.len() as u64);
        }
        self.in_flight += batch.events.len();
        self.in_flight_bytes += batch.events.iter().map(Event::content_len).sum::<usize>();
        let count = self.lanes.len();
        for event in batch.events {
            let lane = lane_of(&event.key, count);
            self.lanes[lane].queue.push_back(event);
        }
        metrics::get().in_flight.set(self.in_flight as i64);
        Ok(())
    }

    /// Starts a publish on every lane that has events and is not publishing.
    fn start_idle_lanes(&mut self) {
        for (index, lane) in self.lanes.iter_mut().enumerate() {
            if lane.queue.is_empty() {
                continue;
            }
            let Some(sink) = lane.sink.take() else {
                continue;
            };
            let take = lane.queue.len().min(self.max_run);
            let events: Vec<Event> = lane.queue.drain(..take).collect();
            self.running.spawn(lane::run(
                index,
                sink,
                events,
                self.config.clone(),
                self.redelivery,
                self.leadership.clone(),
                self.shutdown.clone(),
            ));
        }
    }

    /// Gives the finished lanes their sinks back and tells the source what became of their
    /// events, in as few calls as possible. Returns the first fatal error any lane hit.
    ///
    /// With `restart`, lanes with queued events publish again before the source is told: an
    /// acknowledgement can take as long as a publish (marking rows sent), and the events queued
    /// behind it do not depend on it.
    async fn settle(&mut self, finished: Vec<Finished<K>>, restart: bool) -> Result<()> {
        let mut settled = Settled {
            marks: self.notes_deliveries.then(Vec::new),
            ..Settled::default()
        };
        let mut fatal = None;
        for done in finished {
            self.lanes[done.lane].sink = Some(done.sink);
            self.in_flight -= done.events.len();
            self.in_flight_bytes -= done.events.iter().map(Event::content_len).sum::<usize>();
            match done.outcomes {
                Ok(outcomes) => {
                    let stopped = self.stopped_aggregates(&done.events, &outcomes);
                    let parking = match self.redelivery {
                        Redelivery::BySource => HashSet::new(),
                        Redelivery::InLane => stopped.clone(),
                    };
                    settled.add(&done.events, outcomes, &parking);
                    self.hold_back(done.lane, &stopped, &mut settled);
                }
                Err(err) => {
                    fatal.get_or_insert(err);
                    settled.release(&done.events);
                    let all = done.events.iter().map(|e| e.key.clone()).collect();
                    self.hold_back(done.lane, &all, &mut settled);
                }
            }
        }
        metrics::get().in_flight.set(self.in_flight as i64);
        if let Some(err) = fatal {
            return Err(err);
        }
        settled.log(self.sink_name);
        if restart {
            self.start_idle_lanes();
        }
        let shutdown = &self.shutdown;
        if let Some(dead_letters) = &mut self.dead_letters {
            dead_letters.before_refusing(&mut settled, shutdown).await?;
        }
        if !settled.refused.is_empty() || !settled.parked.is_empty() {
            let (refused, parked) = (&settled.refused, &settled.parked);
            self.source.refuse(refused, parked, shutdown).await?;
        }
        let exhausted = self.source.retry_later(&settled.retry, shutdown).await?;
        if let Some(dead_letters) = &mut self.dead_letters {
            dead_letters
                .after_exhausting(&settled, &exhausted, shutdown)
                .await?;
        }
        if let Some(marks) = settled.marks.take().filter(|marks| !marks.is_empty()) {
            self.source.delivered(marks);
        }
        self.source.ack(&settled.delivered, shutdown).await?;
        self.source.release(&settled.released);
        self.source.busy(&settled.busy);
        Ok(())
    }
}

impl<S: Source, K: Sink + 'static> Relay<'_, S, K> {
    /// Whether to fetch more. Normally while less than `lanes + 1` batches are in flight. Past
    /// that, while some lane could still take events and the total stays under
    /// [`STUCK_LANE_FACTOR`] times that: one lane stuck on a key the sink keeps refusing
    /// (retried in place in logical mode) then holds up only itself, not every lane, while its
    /// queue grows within a bound.
    fn has_room(&self) -> bool {
        let (events, bytes) = (self.in_flight, self.in_flight_bytes);
        if events < self.max_in_flight && bytes < self.max_in_flight_bytes {
            return true;
        }
        let lane_can_take = self
            .lanes
            .iter()
            .any(|lane| lane.sink.is_some() || lane.queue.len() < self.max_publish);
        lane_can_take
            && events < self.max_in_flight.saturating_mul(STUCK_LANE_FACTOR)
            && bytes < self.max_in_flight_bytes.saturating_mul(STUCK_LANE_FACTOR)
    }

    /// The aggregates of a finished run whose later events must not go out yet: those with an
    /// event that was not delivered, unless it became a dead letter and `on_dead_letter =
    /// "skip"` lets its aggregate go on. A source that hands events out again takes the later
    /// ones back; a stream read once settles each event in the lane instead, except behind a
    /// dead letter with `block_aggregate`, where the source parks them.
    fn stopped_aggregates(
        &self,
        events: &[Event],
        outcomes: &[Option<Outcome>],
    ) -> HashSet<String> {
        let skip = self.config.on_dead_letter == OnDeadLetter::Skip;
        let by_source = self.redelivery == Redelivery::BySource;
        if skip && !by_source {
            return HashSet::new();
        }
        events
            .iter()
            .zip(outcomes)
            .filter(|(_, outcome)| match outcome {
                Some(Outcome::Delivered) => false,
                Some(Outcome::Refused(_)) => !skip,
                _ => by_source,
            })
            .map(|(event, _)| event.key.clone())
            .collect()
    }

    /// Takes the events of `stopped` aggregates out of `lane`'s queue and hands them back
    /// unsettled. A lane's queue can hold more than one publish, so one fetch's events of an
    /// aggregate may be split over two runs; once the first run settled the aggregate as not
    /// delivered, the second must not be published whatever became of the first.
    fn hold_back(&mut self, lane: usize, stopped: &HashSet<String>, settled: &mut Settled) {
        if stopped.is_empty() {
            return;
        }
        let queue = &mut self.lanes[lane].queue;
        let before = queue.len();
        let mut bytes = 0;
        let park = self.redelivery == Redelivery::InLane;
        queue.retain(|event| {
            let keep = !stopped.contains(&event.key);
            if !keep {
                match park {
                    true => settled.parked.push(event.clone()),
                    false => settled.released.push(event.position),
                }
                bytes += event.content_len();
            }
            keep
        });
        self.in_flight_bytes -= bytes;
        self.in_flight -= before - queue.len();
    }
}

/// Probes the sink through every idle lane's handle and sets the sink gauge from the result.
async fn probe_idle<K: Sink>(lanes: &mut [Idle<K>]) {
    let mut up = true;
    for sink in lanes.iter_mut().filter_map(|lane| lane.sink.as_mut()) {
        up &= sink.probe().await;
    }
    let metrics = metrics::get();
    if up != (metrics.sink_up.get() == 1) {
        tracing::info!(sink_up = up, "sink probe changed readiness");
    }
    metrics.sink_up.set(up as i64);
}

/// The outcome of a lane's task; a panic in a lane is an internal error.
fn joined<K>(
    done: std::result::Result<Finished<K>, tokio::task::JoinError>,
) -> Result<Finished<K>> {
    done.map_err(|err| Error::with_source(ErrorKind::Internal, "a relay lane failed", err))
}
