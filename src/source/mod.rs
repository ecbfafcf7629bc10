//! Sources: where events come from.
//!
//! # Contract
//! A [`Source`] hands out events in delivery order: within one aggregate, never a later event
//! before an earlier one. It is then told, through [`Source::ack`], which events are durably in
//! the sink, and only then may it forget them; events it handed out but never saw acknowledged
//! are handed out again after a restart (at-least-once). [`Source::reject`] records events that
//! can never be delivered, with the reason, so they stop blocking the stream.

mod any;
pub mod guard;
pub mod leader;
mod lease;
pub mod logical;
pub mod pgoutput;
pub mod poll;

pub use any::AnySource;
/// Most acknowledgements under way in the background at once, each of up to a batch.
pub const ACKS_UNDER_WAY: usize = crate::outbox::acker::MAX_OUTSTANDING;
pub use leader::FENCE;
pub use lease::Leadership;
pub use logical::LogicalSource;
pub use poll::PollSource;

use crate::error::Result;
use crate::event::{Event, Position, Rejected, Stored};
use std::future::Future;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// An event the sink refused for good, with the event itself (a source read once keeps no copy
/// of what it handed out, and stores the whole event as a dead letter).
#[derive(Debug)]
pub struct Refusal {
    /// The position, id and reason.
    pub rejected: Rejected,
    /// The event as it was handed out.
    pub event: Event,
}

/// An event [`Source::retry_later`] turned into a dead letter, as it failed
/// `relay.max_attempts` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exhausted {
    /// Its position.
    pub position: Position,
    /// The attempts it made.
    pub attempts: i32,
}

/// What one call to [`Source::next_batch`] produced.
#[derive(Debug, Default)]
pub struct Batch {
    /// Events to deliver, in delivery order.
    pub events: Vec<Event>,
    /// Rows that cannot become events (e.g. a NULL aggregate id), with the reason.
    pub rejected: Vec<Rejected>,
}

impl Batch {
    /// Whether the batch holds nothing at all.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.rejected.is_empty()
    }
}

/// A stream of committed outbox events.
pub trait Source: Send {
    /// Waits for the next non-empty batch. Returns `Ok(None)` once `shutdown` is cancelled, and
    /// a batch that may be empty once `wake` is notified (the relay has acknowledgements to
    /// make). Cancel-safe: dropping the future loses nothing, since nothing is acknowledged by
    /// it.
    ///
    /// Events handed out and not yet acknowledged, rejected, retried or released are *in
    /// flight*: a source that hands events out again (see [`Source::redelivers`]) keeps every
    /// later event of their aggregates back meanwhile, so at most one run of an aggregate is in
    /// flight at a time.
    fn next_batch(
        &mut self,
        shutdown: &CancellationToken,
        wake: &Notify,
    ) -> impl Future<Output = Result<Option<Batch>>> + Send;

    /// Most events one batch holds (`source.batch_size`).
    fn batch_size(&self) -> usize;

    /// Most bytes of event content one batch holds (`source.max_batch_bytes`); a batch always
    /// holds at least one event, however large.
    fn batch_bytes(&self) -> usize {
        usize::MAX
    }

    /// Whether events given to [`Source::retry_later`] or [`Source::release`] are handed out
    /// again (polling re-reads the table). A source that reads a stream once does not; the
    /// relay then retries failed events itself, in order.
    fn redelivers(&self) -> bool {
        true
    }

    /// Hands events back unsettled (not attempted, or abandoned at shutdown): they are no
    /// longer in flight and are handed out again later. No attempt is counted.
    fn release(&mut self, positions: &[Position]) {
        let _ = positions;
    }

    /// The relay's leadership, if the source elects one: lanes confirm it before every publish,
    /// so a relay deposed while paused publishes nothing stale when it resumes. `None` (the
    /// default) when the source needs no check (a replication slot has one reader at a time).
    fn leadership(&self) -> Option<Leadership> {
        None
    }

    /// Hands events back that the sink could not take this time (it is up, but busy: a nack
    /// for a full queue). Like [`Source::release`], but they, and the rest of their
    /// aggregates, are handed out again only after a backoff that grows while the sink keeps
    /// refusing them. No attempt is counted. The default releases them.
    fn busy(&mut self, positions: &[Position]) {
        self.release(positions);
    }

    /// Records that these events are durably in the sink. After this returns they are never
    /// handed out again.
    fn ack(
        &mut self,
        positions: &[Position],
        shutdown: &CancellationToken,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Acknowledges, like [`Source::ack`], the events among `delivered` that are still pending
    /// with exactly that position *and* id; everything else is left alone, so records of
    /// another (e.g. recreated) outbox table never mark a row. Returns how many were
    /// acknowledged. Used at start-up with what the sink already holds.
    fn ack_delivered(
        &mut self,
        delivered: &[Stored],
        shutdown: &CancellationToken,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Records events that will never be delivered, keeping the reason for the operator.
    fn reject(
        &mut self,
        rejected: &[Rejected],
        shutdown: &CancellationToken,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Records a failed attempt for each event. The source hands the event (and every later
    /// event of its aggregate) out again only after a backoff, and turns it into a dead letter
    /// once it has failed `relay.max_attempts` times; returns those that became dead letters
    /// now (the relay publishes them to `relay.dead_letter_topic`). The default hands them out
    /// again at once.
    fn retry_later(
        &mut self,
        failed: &[Rejected],
        shutdown: &CancellationToken,
    ) -> impl Future<Output = Result<Vec<Exhausted>>> + Send {
        let _ = (failed, shutdown);
        async { Ok(Vec::new()) }
    }

    /// Records events the sink refused for good, and the later events of their keys that the
    /// relay held back behind them (`on_dead_letter = "block_aggregate"` with a source read
    /// once, which cannot hand them out again by itself). The default rejects the refusals'
    /// rows and releases the held-back events.
    fn refuse(
        &mut self,
        refused: &[Refusal],
        parked: &[Event],
        shutdown: &CancellationToken,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            let rejected: Vec<Rejected> = refused.iter().map(|r| r.rejected.clone()).collect();
            if !rejected.is_empty() {
                self.reject(&rejected, shutdown).await?;
            }
            let positions: Vec<Position> = parked.iter().map(|event| event.position).collect();
            if !positions.is_empty() {
                self.release(&positions);
            }
            Ok(())
        }
    }

    /// Whether the source wants to hear through [`Source::delivered`] which events reached the
    /// sink (the relay then collects them). Default `false`.
    fn notes_deliveries(&self) -> bool {
        false
    }

    /// Events now durably in the sink, with their keys, in delivery order, told just before
    /// they are acknowledged (see [`Source::notes_deliveries`]). The logical source notes each
    /// key's last one, so the replay after a crash skips them. Default: nothing.
    fn delivered(&mut self, stored: Vec<Stored>) {
        let _ = stored;
    }

    /// Finishes what [`Source::ack`] started in the background, once the relay stopped, so a
    /// clean stop leaves nothing delivered to be delivered again.
    fn finish(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
