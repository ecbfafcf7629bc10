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
pub mod aws;
pub mod headers;
pub mod kafka;
pub mod log;
pub mod nats;
pub mod redis;
pub mod template;
pub mod tls;
pub mod webhook;

pub use self::amqp::{AmqpSink, AmqpSinkConfig, ExchangeType};
pub use self::aws::{SnsSink, SnsSinkConfig, SqsSink, SqsSinkConfig};
pub use self::kafka::{KafkaSink, KafkaSinkConfig};
pub use self::log::{LogSink, LogSinkConfig};
pub use self::nats::{NatsSink, NatsSinkConfig};
pub use self::redis::{RedisSink, RedisSinkConfig};
pub use self::webhook::{WebhookSink, WebhookSinkConfig};

use crate::error::Result;
use crate::event::{Event, Stored, TableName};
use serde::{Deserialize, Serialize};
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

    /// Whether the sink can tell what it holds ([`Sink::already_delivered`]), so the source
    /// needs no notes of its own of what was delivered. Default `false`.
    fn reads_back(&self) -> bool {
        false
    }

    /// Another handle on the same sink, for a parallel lane of the relay: publishes through
    /// it may run at the same time as through this one. Reports nothing from
    /// [`Sink::already_delivered`].
    fn fork(&self) -> impl Future<Output = Result<Self>> + Send
    where
        Self: Sized;

    /// Another handle on the same sink (as [`Sink::fork`]) whose events go to `destination`
    /// instead of the configured one: a template like the sink's own (the log's and Kafka's
    /// topic, AMQP's routing key on the same exchange, the NATS subject, the Redis stream key,
    /// the webhook URL, the SQS queue URL, the SNS topic ARN). The relay publishes dead letters
    /// through it (`relay.dead_letter_topic`); an error names that key. Sinks that cannot say so
    /// (the default).
    fn redirect(&self, destination: &str) -> impl Future<Output = Result<Self>> + Send
    where
        Self: Sized,
    {
        let reason = format!(
            "the {} sink cannot publish dead letters elsewhere ({destination:?})",
            self.name()
        );
        async move { Err(crate::error::Error::config(DEAD_LETTER_KEY, reason)) }
    }

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

/// What every sink is told when it opens, beside its own table of the configuration.
#[derive(Clone, Debug, Default)]
pub struct SinkContext {
    /// How many events can be stored but unacknowledged at once (the source's batch size times
    /// the relay's lanes and the one being fetched); the embedded log reads back this many.
    pub in_flight: usize,
    /// The outbox table, which `{schema}` and `{table}` stand for in templates.
    pub outbox: TableName,
}

/// A sink that can be chosen by configuration.
pub trait OpenSink: Sink + Sized {
    /// Its table of the configuration, `[sink.<name>]`.
    type Config: Clone + std::fmt::Debug + Default + Serialize + for<'de> Deserialize<'de>;

    /// Connects (or opens) the sink. Failing here is final: a misconfigured relay says so at
    /// once instead of retrying.
    fn open(
        config: &Self::Config,
        context: &SinkContext,
    ) -> impl Future<Output = Result<Self>> + Send;

    /// Checks every key of `config` against its constraint; the error names the key.
    fn validate(config: &Self::Config) -> Result<()>;

    /// Checks `destination` as a template of this sink's destination (see [`Sink::redirect`]),
    /// so `outboxd check` finds a bad `relay.dead_letter_topic`. By default any template of
    /// the shared placeholders passes.
    fn check_destination(destination: &str) -> std::result::Result<(), String> {
        template::Template::parse(destination, template::ALL_FIELDS).map(|_| ())
    }
}

/// The configuration key of the dead-letter destination, which errors about it name.
pub const DEAD_LETTER_KEY: &str = "relay.dead_letter_topic";

/// Declares the sinks, once: the `sink.type` names ([`SinkKind`]), the `[sink]` section with
/// one table per sink ([`SinkConfig`]), and [`AnySink`], which opens the configured one and
/// forwards every [`Sink`] call to it. Adding a sink adds one line to the invocation below.
macro_rules! sinks {
    ($($(#[$attr:meta])* $variant:ident($field:ident: $sink:ty),)+) => {
        /// Which sink receives events: `sink.type`.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum SinkKind {
            $($(#[$attr])* $variant,)+
        }

        /// The `[sink]` section: which sink, and each sink's own table.
        #[derive(Clone, Debug, Default, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct SinkConfig {
            /// Which sink. Default `log`.
            #[serde(rename = "type")]
            pub kind: SinkKind,
            $(
                #[doc = concat!("`[sink.", stringify!($field), "]`.")]
                pub $field: <$sink as OpenSink>::Config,
            )+
        }

        impl SinkConfig {
            /// Validates every sink's table, the unused ones too: a typo there is still a typo.
            pub fn validate(&self) -> Result<()> {
                $(<$sink as OpenSink>::validate(&self.$field)?;)+
                Ok(())
            }

            /// Checks `destination` as a destination of the configured sink (see
            /// [`Sink::redirect`]); the error names `relay.dead_letter_topic`.
            pub fn check_destination(&self, destination: &str) -> Result<()> {
                if destination.is_empty() {
                    return Err(crate::error::Error::config(DEAD_LETTER_KEY, "must not be empty"));
                }
                match self.kind {
                    $(SinkKind::$variant => <$sink as OpenSink>::check_destination(destination),)+
                }
                .map_err(|reason| crate::error::Error::config(DEAD_LETTER_KEY, reason))
            }
        }

        /// The configured sink, dispatched by enum so the relay stays generic-free at the top
        /// level (each sink boxed: they differ much in size).
        pub enum AnySink {
            $(
                #[doc = concat!("The `", stringify!($field), "` sink.")]
                $variant(Box<$sink>),
            )+
        }

        impl AnySink {
            /// Opens the sink `config` chooses.
            pub async fn open(config: &SinkConfig, context: &SinkContext) -> Result<Self> {
                Ok(match config.kind {
                    $(SinkKind::$variant => AnySink::$variant(Box::new(
                        <$sink as OpenSink>::open(&config.$field, context).await?,
                    )),)+
                })
            }
        }

        impl Sink for AnySink {
            async fn publish(&mut self, events: &[Event]) -> Result<Vec<Outcome>> {
                match self {
                    $(AnySink::$variant(sink) => sink.publish(events).await,)+
                }
            }

            fn already_delivered(&mut self) -> Vec<Stored> {
                match self {
                    $(AnySink::$variant(sink) => sink.already_delivered(),)+
                }
            }

            async fn fork(&self) -> Result<Self> {
                Ok(match self {
                    $(AnySink::$variant(sink) => AnySink::$variant(Box::new(sink.fork().await?)),)+
                })
            }

            async fn redirect(&self, destination: &str) -> Result<Self> {
                Ok(match self {
                    $(AnySink::$variant(sink) => {
                        AnySink::$variant(Box::new(sink.redirect(destination).await?))
                    })+
                })
            }

            fn reads_back(&self) -> bool {
                match self {
                    $(AnySink::$variant(sink) => sink.reads_back(),)+
                }
            }

            fn max_lanes(&self) -> usize {
                match self {
                    $(AnySink::$variant(sink) => sink.max_lanes(),)+
                }
            }

            fn name(&self) -> &'static str {
                match self {
                    $(AnySink::$variant(sink) => sink.name(),)+
                }
            }

            fn is_healthy(&self) -> bool {
                match self {
                    $(AnySink::$variant(sink) => sink.is_healthy(),)+
                }
            }

            async fn probe(&mut self) -> bool {
                match self {
                    $(AnySink::$variant(sink) => sink.probe().await,)+
                }
            }
        }
    };
}

sinks! {
    /// The embedded on-disk log.
    #[default]
    Log(log: LogSink),
    /// RabbitMQ (AMQP 0-9-1), with publisher confirms.
    Amqp(amqp: AmqpSink),
    /// Kafka, with an idempotent producer and delivery reports.
    Kafka(kafka: KafkaSink),
    /// NATS JetStream, with publish acknowledgements and `Nats-Msg-Id` deduplication.
    Nats(nats: NatsSink),
    /// Redis Streams, an `XADD` per event.
    Redis(redis: RedisSink),
    /// HTTP webhooks, signed per Standard Webhooks; a 2xx answer delivers.
    Webhook(webhook: WebhookSink),
    /// Amazon SQS, `SendMessageBatch` (FIFO queues grouped by key).
    Sqs(sqs: SqsSink),
    /// Amazon SNS, `PublishBatch` (FIFO topics grouped by key).
    Sns(sns: SnsSink),
}
