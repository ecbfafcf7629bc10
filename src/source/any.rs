//! The configured source, dispatched by enum so `outboxd run` picks one by `source.mode`.

use super::{Batch, LogicalSource, PollSource, Source};
use crate::config::{RelayConfig, SourceConfig, SourceMode};
use crate::error::Result;
use crate::event::{Position, Rejected};
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
            SourceMode::Logical => {
                AnySource::Logical(Box::new(LogicalSource::start(config, relay).await?))
            }
        })
    }
}

impl Source for AnySource {
    async fn next_batch(&mut self, shutdown: &CancellationToken) -> Result<Option<Batch>> {
        match self {
            AnySource::Poll(source) => source.next_batch(shutdown).await,
            AnySource::Logical(source) => source.next_batch(shutdown).await,
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
        delivered: &[(Position, String)],
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
}
