//! The configured source, dispatched by enum so `outboxd run` picks one by `source.mode`.

use super::{Batch, Exhausted, LogicalSource, PollSource, Refusal, Source};
use crate::config::{RelayConfig, SourceConfig, SourceMode};
use crate::error::Result;
use crate::event::{Event, Position, Rejected, Stored};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The source chosen by `source.mode`.
pub enum AnySource {
    /// Polling the outbox table (boxed, like the other variant: both are large).
    Poll(Box<PollSource>),
    /// Logical replication.
    Logical(Box<LogicalSource>),
}

impl AnySource {
    /// Starts the source that `config.mode` names.
    pub async fn start(config: &SourceConfig, relay: &RelayConfig) -> Result<Self> {
        Ok(match config.mode {
            SourceMode::Poll => AnySource::Poll(Box::new(PollSource::start(config, relay).await?)),
            SourceMode::Logical | SourceMode::Cdc => {
                AnySource::Logical(Box::new(LogicalSource::start(config, relay).await?))
            }
        })
    }
}

impl Source for AnySource {
    async fn next_batch(
        &mut self,
        shutdown: &CancellationToken,
        wake: &Notify,
    ) -> Result<Option<Batch>> {
        match self {
            AnySource::Poll(source) => source.next_batch(shutdown, wake).await,
            AnySource::Logical(source) => source.next_batch(shutdown, wake).await,
        }
    }

    fn leadership(&self) -> Option<super::Leadership> {
        match self {
            AnySource::Poll(source) => source.leadership(),
            AnySource::Logical(source) => source.leadership(),
        }
    }

    fn notes_deliveries(&self) -> bool {
        match self {
            AnySource::Poll(source) => source.notes_deliveries(),
            AnySource::Logical(source) => source.notes_deliveries(),
        }
    }

    fn delivered(&mut self, stored: Vec<Stored>) {
        match self {
            AnySource::Poll(source) => source.delivered(stored),
            AnySource::Logical(source) => source.delivered(stored),
        }
    }

    fn busy(&mut self, positions: &[Position]) {
        match self {
            AnySource::Poll(source) => source.busy(positions),
            AnySource::Logical(source) => source.busy(positions),
        }
    }

    fn batch_bytes(&self) -> usize {
        match self {
            AnySource::Poll(source) => source.batch_bytes(),
            AnySource::Logical(source) => source.batch_bytes(),
        }
    }

    fn batch_size(&self) -> usize {
        match self {
            AnySource::Poll(source) => source.batch_size(),
            AnySource::Logical(source) => source.batch_size(),
        }
    }

    fn redelivers(&self) -> bool {
        match self {
            AnySource::Poll(source) => source.redelivers(),
            AnySource::Logical(source) => source.redelivers(),
        }
    }

    fn release(&mut self, positions: &[Position]) {
        match self {
            AnySource::Poll(source) => source.release(positions),
            AnySource::Logical(source) => source.release(positions),
        }
    }

    async fn finish(&mut self) {
        match self {
            AnySource::Poll(source) => source.finish().await,
            AnySource::Logical(source) => source.finish().await,
        }
    }

    async fn ack(&mut self, positions: &[Position], shutdown: &CancellationToken) -> Result<()> {
        match self {
            AnySource::Poll(source) => source.ack(positions, shutdown).await,
            AnySource::Logical(source) => source.ack(positions, shutdown).await,
        }
    }

    async fn ack_delivered(
        &mut self,
        delivered: &[Stored],
        shutdown: &CancellationToken,
    ) -> Result<u64> {
        match self {
            AnySource::Poll(source) => source.ack_delivered(delivered, shutdown).await,
            AnySource::Logical(source) => source.ack_delivered(delivered, shutdown).await,
        }
    }

    async fn reject(&mut self, rejected: &[Rejected], shutdown: &CancellationToken) -> Result<()> {
        match self {
            AnySource::Poll(source) => source.reject(rejected, shutdown).await,
            AnySource::Logical(source) => source.reject(rejected, shutdown).await,
        }
    }

    async fn refuse(
        &mut self,
        refused: &[Refusal],
        parked: &[Event],
        shutdown: &CancellationToken,
    ) -> Result<()> {
        match self {
            AnySource::Poll(source) => source.refuse(refused, parked, shutdown).await,
            AnySource::Logical(source) => source.refuse(refused, parked, shutdown).await,
        }
    }

    async fn retry_later(
        &mut self,
        failed: &[Rejected],
        shutdown: &CancellationToken,
    ) -> Result<Vec<Exhausted>> {
        match self {
            AnySource::Poll(source) => source.retry_later(failed, shutdown).await,
            AnySource::Logical(source) => source.retry_later(failed, shutdown).await,
        }
    }
}
