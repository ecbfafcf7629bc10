//! Sources: where events come from.
//!
//! # Contract
//! A [`Source`] hands out events in delivery order: within one aggregate, never a later event
//! before an earlier one. It is then told, through [`Source::ack`], which events are durably in
//! the sink, and only then may it forget them; events it handed out but never saw acknowledged
//! are handed out again after a restart (at-least-once). [`Source::reject`] records events that
//! can never be delivered, with the reason, so they stop blocking the stream.

mod any;
mod decode;
mod leader;
pub mod logical;
pub mod pgoutput;
pub mod poll;

pub use any::AnySource;
pub use logical::LogicalSource;
pub use poll::PollSource;

use crate::error::Result;
use crate::event::{Event, Position, Rejected};
use std::future::Future;
use tokio_util::sync::CancellationToken;

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
    /// Waits for the next non-empty batch. Returns `Ok(None)` once `shutdown` is cancelled.
    /// Cancel-safe: dropping the future loses nothing, since nothing is acknowledged by it.
    fn next_batch(
        &mut self,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = Result<Option<Batch>>> + Send;

    /// Records that these events are durably in the sink. After this returns they are never
    /// handed out again.
    fn ack(
        &mut self,
        positions: &[Position],
        shutdown: &CancellationToken,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Acknowledges, like [`Source::ack`], the events among `delivered` (position, event id)
    /// that are still pending with exactly that position *and* id; everything else is left
    /// alone, so records of another (e.g. recreated) outbox table never mark a row. Returns how
    /// many were acknowledged. Used at start-up with what the sink already holds.
    fn ack_delivered(
        &mut self,
        delivered: &[(Position, String)],
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
    /// once it has failed `relay.max_attempts` times. The default hands them out again at once.
    fn retry_later(
        &mut self,
        failed: &[Rejected],
        shutdown: &CancellationToken,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (failed, shutdown);
        async { Ok(()) }
    }
}
