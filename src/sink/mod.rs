//! Sinks: where events go.
//!
//! # Contract
//! [`Sink::publish`] resolves only once every event it reports as [`Outcome::Delivered`] is
//! durably stored by the sink (for the embedded log: written and fsynced). The relay marks an
//! outbox row sent only after that, so a crash at any point loses nothing; it may deliver the
//! batch in flight again, so delivery is at-least-once and consumers must tolerate duplicates.
//! Events of one batch are stored in the order given.
//!
//! A sink that can tell what it already holds (the embedded log can) reports it through
//! [`Sink::already_delivered`] at start-up, and the relay acknowledges those events before
//! fetching anything: a crash between storing a batch and acknowledging it then produces no
//! duplicate.

pub mod amqp;
pub mod headers;
pub mod kafka;
pub mod log;
pub mod template;

pub use self::amqp::AmqpSink;
pub use self::kafka::KafkaSink;
pub use self::log::LogSink;

use crate::config::{SinkConfig, SinkKind};
use crate::error::Result;
use crate::event::{Event, Stored};
use std::future::Future;

/// What became of one event handed to [`Sink::publish`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Durably stored.
    Delivered,
    /// Refused for good (too large, unencodable); the reason is kept on the outbox row.
    Refused(String),
    /// Failed this time while the sink itself works (e.g. a nack for one message). The event
    /// counts an attempt and is retried after a backoff; its aggregate waits meanwhile, the
    /// others flow.
    Retry(String),
    /// The sink is up but cannot take it right now (a RabbitMQ nack: a full queue, a broker
    /// error): the relay's lane tries it again after a backoff, in order, without counting an
    /// attempt, so backpressure never turns an event into a dead letter.
    Busy(String),
    /// Not attempted, because an earlier event of the same aggregate in this batch was refused
    /// or failed. The source hands it out again later; no attempt is counted.
    ///
    /// Ordering rule for every sink: once an event of an aggregate is `Refused`, `Retry` or
    /// `Busy`, no later event of that aggregate from the same batch may be stored; report them
    /// `Deferred`.
    Deferred,
}

/// A destination for events.
pub trait Sink: Send {
    /// Stores `events` in order and reports one [`Outcome`] per event, in the same order.
    ///
    /// An `Err` means no event of this call may be assumed stored; the relay retries the whole
    /// batch if the error is retryable.
    fn publish(&mut self, events: &[Event]) -> impl Future<Output = Result<Vec<Outcome>>> + Send;

    /// (position, event id) of events the sink already stored that a previous run may not
    /// have acknowledged; the relay acknowledges those still pending before its first fetch.
    /// Called once; sinks that cannot tell return nothing (the default).
    fn already_delivered(&mut self) -> Vec<Stored> {
        Vec::new()
    }

    /// Another handle on the same sink, for a parallel lane of the relay: publishes through
    /// it may run at the same time as through this one. Reports nothing from
    /// [`Sink::already_delivered`].
    fn fork(&self) -> impl Future<Output = Result<Self>> + Send
    where
        Self: Sized;

    /// Most lanes worth running on this sink; the relay runs `min(relay.lanes, this)`.
    fn max_lanes(&self) -> usize {
        usize::MAX
    }

    /// A short name for logs and metrics, e.g. `log`.
    fn name(&self) -> &'static str;

    /// Whether the sink can take events right now (for readiness checks). Must be cheap: it
    /// reads cached state and never does I/O. Sinks without a connection are always healthy.
    fn is_healthy(&self) -> bool {
        true
    }

    /// Checks whether the sink could take events now, reconnecting if it must. The relay calls
    /// it while no lane publishes, so `/readyz` follows a broker that goes away (or comes back)
    /// while there is nothing to send. Defaults to [`Sink::is_healthy`].
    fn probe(&mut self) -> impl Future<Output = bool> + Send {
        let healthy = self.is_healthy();
        async move { healthy }
    }
}

/// The configured sink, dispatched by enum so the relay stays generic-free at the top level.
pub enum AnySink {
    /// The embedded log.
    Log(LogSink),
    /// RabbitMQ (boxed: it is much larger than the log sink).
    Amqp(Box<AmqpSink>),
    /// Kafka (boxed, like RabbitMQ).
    Kafka(Box<KafkaSink>),
}

impl AnySink {
    /// Opens the sink chosen by `config`; `in_flight` bounds how many events can be stored but
    /// unacknowledged (the source's batch size times the relay's lanes).
    pub async fn open(config: &SinkConfig, in_flight: usize) -> Result<Self> {
        match config.kind {
            SinkKind::Log => Ok(AnySink::Log(LogSink::open(&config.log, in_flight).await?)),
            SinkKind::Amqp => Ok(AnySink::Amqp(Box::new(AmqpSink::open(&config.amqp).await?))),
            SinkKind::Kafka => Ok(AnySink::Kafka(Box::new(
                KafkaSink::open(&config.kafka).await?,
            ))),
        }
    }
}

impl Sink for AnySink {
    async fn publish(&mut self, events: &[Event]) -> Result<Vec<Outcome>> {
        match self {
            AnySink::Log(sink) => sink.publish(events).await,
            AnySink::Amqp(sink) => sink.publish(events).await,
            AnySink::Kafka(sink) => sink.publish(events).await,
        }
    }

    fn already_delivered(&mut self) -> Vec<Stored> {
        match self {
            AnySink::Log(sink) => sink.already_delivered(),
            AnySink::Amqp(sink) => sink.already_delivered(),
            AnySink::Kafka(sink) => sink.already_delivered(),
        }
    }

    async fn fork(&self) -> Result<Self> {
        Ok(match self {
            AnySink::Log(sink) => AnySink::Log(sink.fork().await?),
            AnySink::Amqp(sink) => AnySink::Amqp(Box::new(sink.fork().await?)),
            AnySink::Kafka(sink) => AnySink::Kafka(Box::new(sink.fork().await?)),
        })
    }

    fn max_lanes(&self) -> usize {
        match self {
            AnySink::Log(sink) => sink.max_lanes(),
            AnySink::Amqp(sink) => sink.max_lanes(),
            AnySink::Kafka(sink) => sink.max_lanes(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            AnySink::Log(sink) => sink.name(),
            AnySink::Amqp(sink) => sink.name(),
            AnySink::Kafka(sink) => sink.name(),
        }
    }

    fn is_healthy(&self) -> bool {
        match self {
            AnySink::Log(sink) => sink.is_healthy(),
            AnySink::Amqp(sink) => sink.is_healthy(),
            AnySink::Kafka(sink) => sink.is_healthy(),
        }
    }

    async fn probe(&mut self) -> bool {
        match self {
            AnySink::Log(sink) => sink.probe().await,
            AnySink::Amqp(sink) => sink.probe().await,
            AnySink::Kafka(sink) => sink.probe().await,
        }
    }
}
