//! Configuration: one TOML file, every key overridable by `OUTBOXD_*` environment variables.
//!
//! Every struct denies unknown keys, so a typo is an error that names the key instead of a
//! setting that silently does nothing. Defaults are documented on each field and shown in full by
//! `outboxd check-config`.

mod cdc;
mod explain;
mod http;
mod load;
mod logical;
mod source_url;
mod validate;

pub use crate::secret::{Conninfo, DbUrl, MASK, Secret, mask_connection_string};
pub use crate::sink::{
    AmqpSinkConfig, ExchangeType, KafkaSinkConfig, LogSinkConfig, SinkConfig, SinkKind,
};
pub use cdc::{CdcConfig, ChunkRows, SnapshotMode, TablePattern};
pub use http::{ConsumeConfig, HttpConfig, HttpTlsConfig};
pub use load::{DEFAULT_PATH, ENV_PREFIX, from_sources, load, origin};
pub use logical::LogicalConfig;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The whole configuration.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where events come from.
    pub source: SourceConfig,
    /// Where events go.
    pub sink: SinkConfig,
    /// How the relay retries and shuts down.
    pub relay: RelayConfig,
    /// Log output.
    pub logging: LoggingConfig,
    /// The HTTP endpoint for metrics and health checks.
    pub http: HttpConfig,
}

/// How events are captured from PostgreSQL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceMode {
    /// Claim unsent rows from the outbox table, woken by LISTEN/NOTIFY.
    #[default]
    Poll,
    /// Follow the outbox table's inserts (and event messages) through a logical replication
    /// slot with `pgoutput`; needs `wal_level = logical` and the REPLICATION attribute.
    /// `source.cdc.tables` adds table changes through the same slot.
    Logical,
    /// Change data capture only: the inserts, updates, deletes and truncates of the tables in
    /// `source.cdc.tables`, through a logical replication slot; no outbox table.
    Cdc,
}

impl SourceMode {
    /// Whether the mode reads a logical replication slot (`logical` or `cdc`).
    pub fn is_logical(self) -> bool {
        matches!(self, SourceMode::Logical | SourceMode::Cdc)
    }

    /// Whether the mode reads the outbox table (`poll` or `logical`).
    pub fn uses_outbox(self) -> bool {
        matches!(self, SourceMode::Poll | SourceMode::Logical)
    }

    /// The mode's name as configured.
    pub fn name(self) -> &'static str {
        match self {
            SourceMode::Poll => "poll",
            SourceMode::Logical => "logical",
            SourceMode::Cdc => "cdc",
        }
    }
}

/// What happens to an outbox row once its event is durably in the sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnSent {
    /// Set the sent timestamp and keep the row (an audit trail; clean up separately).
    #[default]
    Mark,
    /// Delete the row (the table stays small).
    Delete,
}

/// TLS to PostgreSQL, with libpq's `sslmode` names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// Encrypt, but do not verify the server certificate (protects against passive sniffing only).
    Require,
    /// Encrypt and verify the certificate chain, but not the host name.
    VerifyCa,
    /// Encrypt, verify the chain and that the certificate names the host connected to.
    VerifyFull,
}

/// The PostgreSQL source.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// Connection string, URL or `key=value` form. Default `postgres://postgres@127.0.0.1:5432/postgres`.
    pub url: DbUrl,
    /// Password, if not in `url`; set it through `OUTBOXD_SOURCE__PASSWORD` rather than the file.
    pub password: Secret,
    /// File whose first line is the password (e.g. a mounted secret). Exclusive with `password`.
    pub password_file: Option<PathBuf>,
    /// Capture mode. Default `poll`.
    pub mode: SourceMode,
    /// Apply the migrations in `migrations/` at start-up. Default `true`.
    pub auto_migrate: bool,
    /// Most events claimed per batch. Default 1000.
    pub batch_size: usize,
    /// The active relay renews a lease every quarter of this, in milliseconds; a standby
    /// terminates the session of an active relay that has not renewed it for this long (paused,
    /// frozen) and takes over. 0 turns it off (a paused leader then holds its lock as long as
    /// its connection lives). Default 10000.
    pub leader_lease_ms: u64,
    /// Most bytes of payload and headers per batch: a batch ends before the row that would
    /// take it past this (but always holds at least one row), so memory stays bounded whatever
    /// the rows hold. Default 16777216 (16 MiB).
    pub max_batch_bytes: usize,
    /// Largest payload plus headers of one event. A larger row becomes a dead letter without
    /// its body ever being loaded. Default 67108864 (64 MiB).
    pub max_event_bytes: usize,
    /// Fallback poll interval when no notification arrives, in milliseconds. Default 1000.
    pub poll_interval_ms: u64,
    /// Time allowed to establish a connection, in milliseconds. Default 5000.
    pub connect_timeout_ms: u64,
    /// `application_name` reported to PostgreSQL. Default `outboxd`.
    pub application_name: String,
    /// LISTEN/NOTIFY channel. Default: `outboxd_` followed by the table name.
    pub channel: Option<String>,
    /// Polling mode: install the trigger that wakes the relay on commit (NOTIFY). A
    /// transaction that ran NOTIFY cannot `PREPARE TRANSACTION`, so with two-phase commit
    /// (XA/JTA) set `false`: the trigger is removed and new rows wait for the poll interval.
    /// Logical mode never installs it. Default `true`.
    pub notify: bool,
    /// Keep or delete rows once sent. Default `mark`.
    pub on_sent: OnSent,
    /// With `on_sent = "mark"`, sent rows older than this are deleted in the background, in
    /// small batches. Default 604800000 (7 days); 0 keeps them forever.
    pub retention_ms: u64,
    /// Rows deleted per cleanup statement (short transactions, short locks). Default 1000.
    pub cleanup_batch: i64,
    /// Pause between cleanup rounds once nothing is left to delete, in milliseconds. Default
    /// 10000.
    pub cleanup_interval_ms: u64,
    /// TLS settings.
    pub tls: TlsConfig,
    /// The outbox table.
    pub table: TableConfig,
    /// Column names, for running against an outbox table that already exists.
    pub columns: ColumnsConfig,
    /// Logical replication settings (used when `mode = "logical"` or `"cdc"`).
    pub logical: LogicalConfig,
    /// The tables whose changes are captured (`mode = "cdc"`, or beside the outbox in
    /// `"logical"`).
    pub cdc: CdcConfig,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            url: DbUrl::new("postgres://postgres@127.0.0.1:5432/postgres"),
            password: Secret::default(),
            password_file: None,
            mode: SourceMode::Poll,
            auto_migrate: true,
            batch_size: 1000,
            leader_lease_ms: 10_000,
            max_batch_bytes: 16 << 20,
            max_event_bytes: 64 << 20,
            poll_interval_ms: 1000,
            connect_timeout_ms: 5000,
            application_name: "outboxd".into(),
            channel: None,
            notify: true,
            on_sent: OnSent::Mark,
            retention_ms: 7 * 24 * 3600 * 1000,
            cleanup_batch: 1000,
            cleanup_interval_ms: 10_000,
            tls: TlsConfig::default(),
            table: TableConfig::default(),
            columns: ColumnsConfig::default(),
            logical: LogicalConfig::default(),
            cdc: CdcConfig::default(),
        }
    }
}

impl SourceConfig {
    /// The LISTEN/NOTIFY channel in effect.
    pub fn channel(&self) -> String {
        self.channel
            .clone()
            .unwrap_or_else(|| format!("outboxd_{}", self.table.name))
    }
}

/// TLS to PostgreSQL.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// `disable`, `require`, `verify-ca` or `verify-full`. Default `disable`.
    pub mode: TlsMode,
    /// PEM file of CA certificates to trust; without it the Mozilla root set is used.
    pub root_cert: Option<PathBuf>,
}

/// Which table holds the outbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TableConfig {
    /// Schema. Default `public`.
    pub schema: String,
    /// Table name. Default `outbox`.
    pub name: String,
}

impl Default for TableConfig {
    fn default() -> Self {
        TableConfig {
            schema: "public".into(),
            name: "outbox".into(),
        }
    }
}

/// Column names of the outbox table. The first seven follow Debezium's outbox event router; the
/// rest are outboxd's bookkeeping, added by the migration when missing.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ColumnsConfig {
    /// Event id (uuid). Default `id`.
    pub id: String,
    /// Aggregate type, the default topic. Default `aggregatetype`.
    pub aggregate_type: String,
    /// Aggregate id, the ordering key. Default `aggregateid`.
    pub aggregate_id: String,
    /// Event type. Default `type`.
    pub event_type: String,
    /// JSON payload. Default `payload`.
    pub payload: String,
    /// JSON object of extra headers, nullable. Default `headers`.
    pub headers: String,
    /// When the event was written. Default `created_at`.
    pub created_at: String,
    /// Monotonic position that orders events (bigint identity). Default `position`.
    pub position: String,
    /// Writing transaction's id (`xid8`), for the visibility guard. Default `txid`.
    pub txid: String,
    /// When the event was confirmed by the sink; NULL while pending. Default `sent_at`.
    pub sent_at: String,
    /// Delivery attempts so far. Default `attempts`.
    pub attempts: String,
    /// The last delivery error. Default `last_error`.
    pub last_error: String,
    /// When the event was given up on; NULL unless failed. Default `failed_at`.
    pub failed_at: String,
    /// When an operator skipped the failed event on purpose (`outboxd dlq skip`). Default
    /// `skipped_at`.
    pub skipped_at: String,
    /// The position of the dead letter a pending row waits behind, set by the blocking fetch
    /// (`on_dead_letter = "block_aggregate"`) so later fetches need not walk the row again;
    /// NULL otherwise. Default `blocked_by`.
    pub blocked_by: String,
}

impl Default for ColumnsConfig {
    fn default() -> Self {
        ColumnsConfig {
            id: "id".into(),
            aggregate_type: "aggregatetype".into(),
            aggregate_id: "aggregateid".into(),
            event_type: "type".into(),
            payload: "payload".into(),
            headers: "headers".into(),
            created_at: "created_at".into(),
            position: "position".into(),
            txid: "txid".into(),
            sent_at: "sent_at".into(),
            attempts: "attempts".into(),
            last_error: "last_error".into(),
            failed_at: "failed_at".into(),
            skipped_at: "skipped_at".into(),
            blocked_by: "blocked_by".into(),
        }
    }
}

impl ColumnsConfig {
    /// Every column as (config key, name), in declaration order.
    pub fn all(&self) -> [(&'static str, &str); 15] {
        [
            ("id", &self.id),
            ("aggregate_type", &self.aggregate_type),
            ("aggregate_id", &self.aggregate_id),
            ("event_type", &self.event_type),
            ("payload", &self.payload),
            ("headers", &self.headers),
            ("created_at", &self.created_at),
            ("position", &self.position),
            ("txid", &self.txid),
            ("sent_at", &self.sent_at),
            ("attempts", &self.attempts),
            ("last_error", &self.last_error),
            ("failed_at", &self.failed_at),
            ("skipped_at", &self.skipped_at),
            ("blocked_by", &self.blocked_by),
        ]
    }
}

/// The relay loop.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// First retry delay after a transient failure, in milliseconds. Default 100.
    pub retry_initial_ms: u64,
    /// Longest retry delay, in milliseconds. Default 30000.
    pub retry_max_ms: u64,
    /// How often the outbox is sampled for the pending / dead-letter gauges, in milliseconds.
    /// Default 5000.
    pub stats_interval_ms: u64,
    /// Failed attempts (the sink failed this event while up) before it becomes a dead letter.
    /// Default 10. Whole-sink outages (broker down) are retried forever and do not count.
    pub max_attempts: i32,
    /// What later events of an aggregate with a dead letter do: `block_aggregate` (wait for an
    /// operator's `outboxd dlq retry` or `skip`) or `skip` (continue). Default
    /// `block_aggregate`.
    pub on_dead_letter: OnDeadLetter,
    /// A publish that takes longer is abandoned and retried, in milliseconds. Default 60000.
    pub publish_timeout_ms: u64,
    /// Parallel lanes: events are spread over them by a hash of the aggregate id, each lane
    /// publishes in order through its own sink handle (for RabbitMQ, its own connection), so a
    /// slow or failing aggregate holds up only its lane. Default 4. The embedded log always
    /// runs one lane: it has one writer, and one lane keeps its records in the order the source
    /// handed them out (in logical mode, commit order).
    pub lanes: usize,
    /// At shutdown, how long publishes already under way may take to be confirmed, in
    /// milliseconds; after that they are abandoned unacknowledged (delivered again by the next
    /// run) and the relay exits. Default 10000.
    pub shutdown_grace_ms: u64,
    /// Where dead letters are also published, on the same sink: a template with the sinks'
    /// placeholders that replaces the sink's destination (the log's or Kafka's topic, AMQP's
    /// routing key, the NATS subject, the Redis stream key, the webhook URL, the SQS queue URL,
    /// the SNS topic ARN). Each goes with the header `outboxd-dead-letter-reason`. Default
    /// unset: dead letters are kept in the outbox table or dead-letter store only.
    pub dead_letter_topic: Option<String>,
}

/// What happens behind a dead letter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDeadLetter {
    /// Later events of the aggregate wait until an operator retries or skips the dead letter.
    #[default]
    BlockAggregate,
    /// Later events of the aggregate are delivered; the dead letter stays for inspection.
    Skip,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            retry_initial_ms: 100,
            retry_max_ms: 30_000,
            stats_interval_ms: 5000,
            max_attempts: 10,
            on_dead_letter: OnDeadLetter::BlockAggregate,
            publish_timeout_ms: 60_000,
            lanes: 4,
            shutdown_grace_ms: 10_000,
            dead_letter_topic: None,
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Log output.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// A `tracing` filter such as `info` or `outboxd=debug`; `RUST_LOG` wins when set.
    pub level: String,
    /// `text` or `json`. Default `text`.
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}
