//! What became of a round of finished lanes' events, sorted by what the source must be told.

use crate::event::{Event, Position, Rejected, Stored};
use crate::metrics::{self, SinkLabels};
use crate::sink::Outcome;
use crate::source::Refusal;
use std::collections::HashSet;

/// Finished events sorted by what the source must do with them.
#[derive(Debug, Default)]
pub(super) struct Settled {
    /// To acknowledge.
    pub(super) delivered: Vec<Position>,
    /// The delivered events with their keys, collected only for a source that notes
    /// deliveries ([`crate::source::Source::notes_deliveries`]).
    pub(super) marks: Option<Vec<Stored>>,
    /// Refused for good: dead letters, with their events.
    pub(super) refused: Vec<Refusal>,
    /// Later events of keys refused in this round, held back behind their dead letter
    /// (`block_aggregate` with a source read once): the source parks them.
    pub(super) parked: Vec<Event>,
    /// Failed this time: the source counts an attempt and hands them out later.
    pub(super) retry: Vec<Rejected>,
    /// The events of `retry`, in the same order: those the source turns into dead letters
    /// are published to `relay.dead_letter_topic`.
    pub(super) retried: Vec<Event>,
    /// Not attempted (deferred, or abandoned at shutdown): the source hands them out again.
    pub(super) released: Vec<Position>,
    /// Not taken this time, the sink being busy: the source hands them out again after a
    /// backoff, without counting an attempt.
    pub(super) busy: Vec<Position>,
}

impl Settled {
    /// Sorts one lane's events by outcome; the not-attempted events of `parking` keys are
    /// parked rather than released.
    pub(super) fn add(
        &mut self,
        events: &[Event],
        outcomes: Vec<Option<Outcome>>,
        parking: &HashSet<String>,
    ) {
        for (event, outcome) in events.iter().zip(outcomes) {
            let failed = |reason| Rejected {
                position: event.position,
                id: event.id.clone(),
                reason,
            };
            match outcome {
                Some(Outcome::Delivered) => {
                    self.delivered.push(event.position);
                    if let Some(marks) = &mut self.marks {
                        marks.push(Stored {
                            position: event.position,
                            id: event.id.clone(),
                            key: event.key.clone(),
                        });
                    }
                }
                Some(Outcome::Refused(reason)) => self.refused.push(Refusal {
                    rejected: failed(reason),
                    event: event.clone(),
                }),
                Some(Outcome::Retry(reason)) => {
                    self.retry.push(failed(reason));
                    self.retried.push(event.clone());
                }
                Some(Outcome::Busy(_)) => self.busy.push(event.position),
                Some(Outcome::Deferred) | None if parking.contains(&event.key) => {
                    self.parked.push(event.clone())
                }
                Some(Outcome::Deferred) | None => self.released.push(event.position),
            }
        }
    }

    /// Marks every event of a lane as handed back unsettled.
    pub(super) fn release(&mut self, events: &[Event]) {
        self.released
            .extend(events.iter().map(|event| event.position));
    }

    /// Logs refusals and failures, and counts the failures as retries.
    pub(super) fn log(&self, sink: &'static str) {
        for Refusal { rejected: bad, .. } in &self.refused {
            tracing::error!(id = %bad.id, position = %bad.position, reason = %bad.reason,
                sink, "sink refused event; dead-lettered");
        }
        for failed in &self.retry {
            tracing::warn!(id = %failed.id, position = %failed.position, reason = %failed.reason,
                sink, "event failed; its aggregate waits to retry");
        }
        if !self.retry.is_empty() {
            metrics::get()
                .retries
                .get_or_create(&SinkLabels { sink })
                .inc_by(self.retry.len() as u64);
        }
    }
}
