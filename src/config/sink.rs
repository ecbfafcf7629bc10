//! Sink configuration: which sink, and each sink's own table.

use crate::log::{Durability, WriterOptions};
pub use crate::sink::amqp::{AmqpSinkConfig, ExchangeType};
pub use crate::sink::kafka::KafkaSinkConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

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
    /// A segment whose first record is older than this is closed at the next append, so
    /// retention by age can free it. Default: unset (segments roll by size only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment_max_age_ms: Option<u64>,
    /// Largest record accepted; larger events are marked failed. Default 16 MiB.
    pub max_record_bytes: usize,
    /// When appends are fsynced: `batch`, `interval` or `none` (see [`Durability`]). Default
    /// `batch`.
    pub durability: Durability,
    /// With `durability = "interval"`, how often the background syncer fsyncs. Default 50.
    pub fsync_interval_ms: u64,
    /// Oldest whole segments are deleted while the log is larger than this. Default: unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_bytes: Option<u64>,
    /// Segments last written longer ago than this are deleted. Default: unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<u64>,
    /// Bytes of records between two entries of a segment's sparse index. Default 4096.
    pub index_interval_bytes: u64,
    /// Permissions of the log directory, octal: it is created with them and narrowed to them
    /// if wider; files inside get the same bits without execute. Default `"0700"` (files
    /// `0600`), as records hold payloads; `"0750"` lets a group read (files `0640`).
    pub dir_mode: String,
}

impl Default for LogSinkConfig {
    fn default() -> Self {
        let defaults = WriterOptions::DEFAULT;
        LogSinkConfig {
            dir: PathBuf::from("./data/log"),
            segment_bytes: defaults.segment_bytes,
            segment_max_age_ms: None,
            max_record_bytes: 16 * 1024 * 1024,
            durability: defaults.durability,
            fsync_interval_ms: 50,
            retention_bytes: None,
            retention_ms: None,
            index_interval_bytes: defaults.index_interval_bytes,
            dir_mode: format!("{:04o}", defaults.dir_mode),
        }
    }
}

impl LogSinkConfig {
    /// The log writer's options these settings stand for.
    pub fn writer_options(&self) -> WriterOptions {
        WriterOptions {
            segment_bytes: self.segment_bytes,
            segment_max_age: self.segment_max_age_ms.map(Duration::from_millis),
            index_interval_bytes: self.index_interval_bytes,
            durability: self.durability,
            retention_bytes: self.retention_bytes,
            retention: self.retention_ms.map(Duration::from_millis),
            dir_mode: self.dir_mode_bits().unwrap_or(crate::log::DEFAULT_DIR_MODE),
        }
    }

    /// `dir_mode` as permission bits, if it is an octal number of at most `777` that leaves the
    /// owner read, write and search.
    pub fn dir_mode_bits(&self) -> Option<u32> {
        let digits = self.dir_mode.strip_prefix("0o").unwrap_or(&self.dir_mode);
        u32::from_str_radix(digits, 8)
            .ok()
            .filter(|mode| *mode <= 0o777 && mode & 0o700 == 0o700)
    }
}
