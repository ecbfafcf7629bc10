//! One lane: publishes the events handed to it, in order, one publish at a time, retrying
//! transient sink failures with backoff.

use crate::config::{OnDeadLetter, RelayConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::metrics::{self, SinkLabels};
use crate::retry::{Backoff, sleep_or_shutdown};
use crate::sink::{Outcome, Sink};
use crate::source::Leadership;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The lane the events of one ordering key always take, out of `lanes`: a stable hash (CRC32C) of
/// the key, so the choice does not change between runs or builds.
pub fn lane_of(key: &str, lanes: usize) -> usize {
    crc32c::crc32c(key.as_bytes()) as usize % lanes.max(1)
}

/// What a lane hands back after publishing one run of events.
pub struct Finished<K> {
    /// Which lane.
    pub lane: usize,
    /// The lane's sink handle, for its next run.
    pub sink: K,
    /// The events it was given.
    pub events: Vec<Event>,
    /// One entry per event: its outcome, or `None` if shutdown came before it was settled (it
    /// stays pending and is delivered by the next run). `Err` is a failure no retry can fix.
    pub outcomes: Result<Vec<Option<Outcome>>>,
}

/// How a lane treats events the sink reports `Retry` or `Busy` (and the `Deferred` ones behind
/// them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redelivery {
    /// Hand them back: the source hands them out again after a backoff (polling); `Busy` ones
    /// without counting an attempt.
    BySource,
    /// Try them again in place, before anything later in the lane, since the source reads its
    /// stream once (logical replication); after `relay.max_attempts` a failing event is refused.
    InLane,
}

/// What a lane checks before each publish.
struct Guard<'a> {
    /// The relay's leadership, when the source elects one.
    leadership: Option<Leadership>,
    /// The relay's shutdown.
    shutdown: &'a CancellationToken,
}

impl Guard<'_> {
    /// Whether this relay still leads (always, when the source elects none). A relay that
    /// does not hands the run back unpublished: its new leader delivers those events.
    async fn still_leads(&self) -> bool {
        let Some(leadership) = &self.leadership else {
            return true;
        };
        let leads = leadership.confirm().await;
        if !leads {
            tracing::warn!(
                "this relay no longer leads; handing its lane's events back unpublished"
            );
        }
        leads
    }
}

/// Publishes `events` through `sink` and reports what became of each.
pub async fn run<K: Sink>(
    lane: usize,
    mut sink: K,
    events: Vec<Event>,
    config: Arc<RelayConfig>,
    redelivery: Redelivery,
    leadership: Option<Leadership>,
    shutdown: CancellationToken,
) -> Finished<K> {
    let guard = Guard {
        leadership,
        shutdown: &shutdown,
    };
    let outcomes = settle(&mut sink, &events, &config, redelivery, &guard).await;
    Finished {
        lane,
        sink,
        events,
        outcomes,
    }
}

/// Publishes `events`, then again, after a backoff, every event this lane keeps trying: busy
/// ones (no attempt counted), and with [`Redelivery::InLane`] failed ones too (refused once
/// they failed `max_attempts` times, so one poisoned event cannot hold its lane and the slot
/// for ever). A deferred event goes with its aggregate: tried again here if an earlier event
/// of that aggregate is, otherwise handed back. Everything else is settled.
async fn settle<K: Sink>(
    sink: &mut K,
    events: &[Event],
    config: &RelayConfig,
    redelivery: Redelivery,
    guard: &Guard<'_>,
) -> Result<Vec<Option<Outcome>>> {
    let shutdown = guard.shutdown;
    let mut outcomes: Vec<Option<Outcome>> = vec![None; events.len()];
    let mut attempts = vec![0i32; events.len()];
    let mut todo: Vec<usize> = (0..events.len()).collect();
    let mut backoff = Backoff::from_config(config);
    // Keys refused for good in this call: with `block_aggregate`, their later events wait
    // behind the dead letter (the relay hands them to the source to park) instead of being
    // tried again here.
    let mut dead: HashSet<String> = HashSet::new();
    let block = config.on_dead_letter == OnDeadLetter::BlockAggregate;
    loop {
        // The first round publishes the slice as given; only retries copy.
        let retrying: Vec<Event>;
        let batch = if todo.len() == events.len() {
            events
        } else {
            retrying = todo.iter().map(|&i| events[i].clone()).collect();
            &retrying
        };
        let Some(results) = publish(sink, batch, config, guard).await? else {
            return Ok(outcomes);
        };
        let mut again = Vec::new();
        let mut kept: HashSet<&str> = HashSet::new();
        let mut failed = 0;
        for (&i, outcome) in todo.iter().zip(results) {
            let aggregate = events[i].key.as_str();
            let keep = match outcome {
                Outcome::Busy(reason) => {
                    metrics::get()
                        .busy
                        .get_or_create(&SinkLabels { sink: sink.name() })
                        .inc();
                    tracing::debug!(id = %events[i].id, reason, "sink busy; trying again");
                    if redelivery == Redelivery::BySource {
                        // The source hands it out again after a growing backoff of its own:
                        // a key the broker keeps refusing holds nothing in the lane meanwhile.
                        outcomes[i] = Some(Outcome::Busy(reason));
                        false
                    } else {
                        true
                    }
                }
                Outcome::Retry(reason) if redelivery == Redelivery::InLane => {
                    failed += 1;
                    attempts[i] += 1;
                    if attempts[i] >= config.max_attempts {
                        metrics::get().dead_letters.inc();
                        let reason = crate::dlq::exhausted(attempts[i], &reason);
                        outcomes[i] = Some(Outcome::Refused(reason));
                        if block {
                            dead.insert(aggregate.to_string());
                        }
                        false
                    } else {
                        tracing::warn!(id = %events[i].id, attempt = attempts[i], reason,
                            "event failed; retrying it before the rest of its lane");
                        true
                    }
                }
                Outcome::Deferred if dead.contains(aggregate) => false,
                Outcome::Deferred => kept.contains(aggregate) || redelivery == Redelivery::InLane,
                Outcome::Refused(reason) => {
                    if block {
                        dead.insert(aggregate.to_string());
                    }
                    outcomes[i] = Some(Outcome::Refused(reason));
                    false
                }
                settled => {
                    outcomes[i] = Some(settled);
                    false
                }
            };
            if keep {
                kept.insert(aggregate);
                again.push(i);
            } else if outcomes[i].is_none() {
                outcomes[i] = Some(Outcome::Deferred);
            }
        }
        if again.is_empty() {
            return Ok(outcomes);
        }
        metrics::get()
            .retries
            .get_or_create(&SinkLabels { sink: sink.name() })
            .inc_by(failed);
        if !sleep_or_shutdown(backoff.next_delay(), shutdown).await {
            return Ok(outcomes);
        }
        todo = again;
    }
}

/// Publishes one run of events, retrying the whole run while the sink fails transiently.
/// Returns `None` if shutdown came during a retry wait.
async fn publish<K: Sink>(
    sink: &mut K,
    events: &[Event],
    config: &RelayConfig,
    guard: &Guard<'_>,
) -> Result<Option<Vec<Outcome>>> {
    let metrics = metrics::get();
    let mut backoff = Backoff::from_config(config);
    let timeout = Duration::from_millis(config.publish_timeout_ms);
    let shutdown = guard.shutdown;
    loop {
        if !guard.still_leads().await {
            return Ok(None);
        }
        let attempt = match tokio::time::timeout(timeout, sink.publish(events)).await {
            Ok(result) => result,
            Err(_) => Err(Error::new(
                ErrorKind::SinkUnavailable,
                format!(
                    "publish did not complete within relay.publish_timeout_ms ({} ms)",
                    config.publish_timeout_ms
                ),
            )),
        };
        match attempt {
            Ok(outcomes) => {
                metrics.sink_up.set(1);
                metrics.observe_published(sink.name(), events, &outcomes);
                return Ok(Some(outcomes));
            }
            Err(err) if err.is_retryable() => {
                metrics.sink_up.set(0);
                metrics
                    .retries
                    .get_or_create(&SinkLabels { sink: sink.name() })
                    .inc();
                let delay = backoff.next_delay();
                tracing::warn!(error = %err.chain(), sink = sink.name(),
                    retry_in_ms = delay.as_millis() as u64, "publish failed; retrying");
                if !sleep_or_shutdown(delay, shutdown).await {
                    return Ok(None);
                }
            }
            Err(err) => {
                metrics.sink_up.set(0);
                return Err(err);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aggregate_always_takes_the_same_lane_and_the_lanes_are_all_used() {
        let mut used = [0usize; 4];
        for id in 0..1000 {
            let aggregate = format!("order-{id}");
            let lane = lane_of(&aggregate, 4);
            assert_eq!(lane, lane_of(&aggregate, 4));
            used[lane] += 1;
        }
        assert!(used.iter().all(|&n| n > 150), "{used:?}");
        assert_eq!(lane_of("anything", 1), 0);
        assert_eq!(lane_of("anything", 0), 0);
    }
}
