//! Sink configuration: which sink, and each sink's own table.

pub use crate::sink::amqp::{AmqpSinkConfig, ExchangeType};
pub use crate::sink::kafka::KafkaSinkConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which sink receives events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// The embedded on-disk log.
    #[default]
    Log,
    /// RabbitMQ (AMQP 0-9-1), with publisher confirms.
    Amqp,
    /// Kafka, with an idempotent producer and delivery reports.
    Kafka,
}

/// The sink section.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// Which sink: `log`, `amqp` or `kafka`. Default `log`.
    #[serde(rename = "type")]
    pub kind: SinkKind,
    /// Settings of the embedded log.
    pub log: LogSinkConfig,
    /// Settings of the RabbitMQ sink.
    pub amqp: AmqpSinkConfig,
    /// Settings of the Kafka sink.
    pub kafka: KafkaSinkConfig,
}

/// The embedded log sink.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSinkConfig {
    /// Directory of the log's segment files. Default `./data/log`.
    pub dir: PathBuf,
    /// A segment file is closed and a new one started past this size. Default 128 MiB.
    pub segment_bytes: u64,
    /// Largest record accepted; larger events are marked failed. Default 16 MiB.
    pub max_record_bytes: usize,
}

impl Default for LogSinkConfig {
    fn default() -> Self {
        LogSinkConfig {
            dir: PathBuf::from("./data/log"),
            segment_bytes: 128 * 1024 * 1024,
            max_record_bytes: 16 * 1024 * 1024,
        }
    }
}
