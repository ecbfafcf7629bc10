//! The `[sink.log]` table: where the embedded log keeps its segments, how it syncs and what
//! it retains.

use crate::error::{Error, Result, check_range as range};
use crate::log::{Durability, WriterOptions};
use crate::sink::template::{ALL_FIELDS, Template};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// The embedded log sink.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSinkConfig {
    /// Directory of the log's segment files. Default `./data/log`.
    pub dir: PathBuf,
    /// The topic each record is appended under; the placeholders of every sink's templates
    /// (`{aggregatetype}`, `{aggregateid}`, `{type}`, `{schema}`, `{table}`, `{op}`, `{key}`).
    /// Default `{aggregatetype}`.
    pub topic: String,
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
    /// Whether retention may delete records a consumer group has not acked. Default `false`:
    /// segments a group still needs are kept past the limits (counted in
    /// `outboxd_log_retention_held_segments`); with `true` they go, and what the groups lost is
    /// counted in `outboxd_log_retention_unacked_deleted_records_total`.
    pub retention_over_groups: bool,
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
            topic: "{aggregatetype}".into(),
            segment_bytes: defaults.segment_bytes,
            segment_max_age_ms: None,
            max_record_bytes: 16 * 1024 * 1024,
            durability: defaults.durability,
            fsync_interval_ms: 50,
            retention_bytes: None,
            retention_ms: None,
            retention_over_groups: false,
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
            retention_over_groups: self.retention_over_groups,
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

    /// The parsed `topic` template.
    pub fn topic_template(&self) -> Result<Template> {
        Template::parse(&self.topic, ALL_FIELDS)
            .map_err(|reason| Error::config("sink.log.topic", reason))
    }

    /// Checks every key against its constraint; the error names the key.
    pub fn validate(&self) -> Result<()> {
        if self.dir.as_os_str().is_empty() {
            return Err(Error::config("sink.log.dir", "must not be empty"));
        }
        self.topic_template()?;
        range("sink.log.segment_bytes", self.segment_bytes, 4096, 1 << 40)?;
        if self.dir_mode_bits().is_none() {
            return Err(Error::config(
                "sink.log.dir_mode",
                format!(
                    "\"{}\" is not an octal mode of at most 0777 that gives the owner rwx \
                     (e.g. \"0700\" or \"0750\")",
                    self.dir_mode
                ),
            ));
        }
        range(
            "sink.log.max_record_bytes",
            self.max_record_bytes as u64,
            1024,
            256 << 20,
        )?;
        range(
            "sink.log.fsync_interval_ms",
            self.fsync_interval_ms,
            1,
            60_000,
        )?;
        range(
            "sink.log.index_interval_bytes",
            self.index_interval_bytes,
            64,
            64 << 20,
        )?;
        if let Some(age) = self.segment_max_age_ms {
            range("sink.log.segment_max_age_ms", age, 1_000, u64::MAX >> 1)?;
        }
        if let Some(bytes) = self.retention_bytes {
            range(
                "sink.log.retention_bytes",
                bytes,
                self.segment_bytes,
                u64::MAX,
            )
            .map_err(|_| {
                Error::config(
                    "sink.log.retention_bytes",
                    "must be at least sink.log.segment_bytes (a smaller limit would delete \
                     every closed segment at once)",
                )
            })?;
        }
        if let Some(age) = self.retention_ms {
            range("sink.log.retention_ms", age, 1_000, u64::MAX >> 1)?;
        }
        Ok(())
    }
}
