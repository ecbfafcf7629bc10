//! Checks that no type can express: ranges, identifier rules, settings that exclude each other.

use super::{Config, TlsMode};
use crate::error::{Error, Result, check_range as range};

/// PostgreSQL truncates identifiers longer than this many bytes (NAMEDATALEN - 1).
const MAX_IDENTIFIER_BYTES: usize = 63;

impl Config {
    /// Checks every constraint; the error names the key and the rule it broke.
    pub fn validate(&self) -> Result<()> {
        let source = &self.source;
        source.pg_config()?;
        let tls_mode = source.tls_mode()?;
        range("source.batch_size", source.batch_size as u64, 1, 100_000)?;
        range(
            "source.poll_interval_ms",
            source.poll_interval_ms,
            10,
            3_600_000,
        )?;
        range(
            "source.connect_timeout_ms",
            source.connect_timeout_ms,
            100,
            600_000,
        )?;
        identifier("source.table.schema", &source.table.schema)?;
        identifier("source.table.name", &source.table.name)?;
        identifier("source.channel", &source.channel())?;
        if source.application_name.len() > MAX_IDENTIFIER_BYTES {
            return Err(Error::config(
                "source.application_name",
                "must be at most 63 bytes",
            ));
        }
        let columns = source.columns.all();
        for (i, (key, name)) in columns.iter().enumerate() {
            identifier(&format!("source.columns.{key}"), name)?;
            if let Some((other, _)) = columns[..i].iter().find(|(_, n)| n == name) {
                return Err(Error::config(
                    &format!("source.columns.{key}"),
                    format!("\"{name}\" is already used by source.columns.{other}"),
                ));
            }
        }
        source.logical.validate()?;
        source.cdc.validate(
            source.mode == super::SourceMode::Cdc,
            source.mode.is_logical(),
            &source.logical.publication,
        )?;
        let outbox = super::TablePattern::Table {
            schema: source.table.schema.clone(),
            table: source.table.name.clone(),
        };
        let listed_in = [
            ("source.cdc.tables", source.cdc.table_patterns()),
            ("source.cdc.insert_only", source.cdc.insert_only_patterns()),
        ];
        let outbox_listed = listed_in.iter().find(|(_, p)| p.contains(&outbox));
        if let (super::SourceMode::Logical, Some((key, _))) = (source.mode, outbox_listed) {
            return Err(Error::config(
                key,
                format!(
                    "\"{outbox}\" is the outbox table, whose inserts logical mode already turns \
                     into outbox events; remove it (or use mode = \"cdc\" to capture it as a table)"
                ),
            ));
        }
        if source.tls.root_cert.is_some() && tls_mode == TlsMode::Disable {
            return Err(Error::config(
                "source.tls.root_cert",
                "is set but source.tls.mode is \"disable\"; set mode to verify-ca or verify-full",
            ));
        }

        self.sink.validate()?;

        range(
            "relay.retry_initial_ms",
            self.relay.retry_initial_ms,
            1,
            60_000,
        )?;
        range(
            "relay.retry_max_ms",
            self.relay.retry_max_ms,
            self.relay.retry_initial_ms,
            3_600_000,
        )
        .map_err(|_| {
            Error::config(
                "relay.retry_max_ms",
                "must be at least relay.retry_initial_ms and at most 3600000",
            )
        })?;
        signed_range(
            "relay.max_attempts",
            self.relay.max_attempts.into(),
            1,
            1_000_000,
        )?;
        range(
            "relay.publish_timeout_ms",
            self.relay.publish_timeout_ms,
            100,
            3_600_000,
        )?;
        range("relay.lanes", self.relay.lanes as u64, 1, 256)?;
        if let Some(destination) = &self.relay.dead_letter_topic {
            self.sink.check_destination(destination)?;
        }
        range(
            "relay.shutdown_grace_ms",
            self.relay.shutdown_grace_ms,
            0,
            3_600_000,
        )?;
        if self.source.leader_lease_ms != 0 {
            range(
                "source.leader_lease_ms",
                self.source.leader_lease_ms,
                1_000,
                3_600_000,
            )?;
        }
        range(
            "source.max_batch_bytes",
            self.source.max_batch_bytes as u64,
            64 << 10,
            1 << 30,
        )?;
        range(
            "source.max_event_bytes",
            self.source.max_event_bytes as u64,
            1 << 10,
            1 << 30,
        )?;
        if self.sink.kind == super::SinkKind::Kafka
            && self.relay.publish_timeout_ms <= self.sink.kafka.message_timeout_ms + 1_000
        {
            // The Kafka sink purges an unsettled batch at its message timeout, which keeps an
            // aggregate's records in order; a relay timeout first would abandon the batch
            // with its records still queued, to be timed out one by one later.
            return Err(Error::config(
                "relay.publish_timeout_ms",
                format!(
                    "must exceed sink.kafka.message_timeout_ms ({} ms) by more than 1000 ms",
                    self.sink.kafka.message_timeout_ms
                ),
            ));
        }
        let log = &self.sink.log;
        if self.sink.kind == super::SinkKind::Log
            && log.durability == crate::log::Durability::Interval
            && self.relay.publish_timeout_ms <= 2 * log.fsync_interval_ms
        {
            // A publish resolves only once an fsync covered it, up to an interval later: a
            // timeout within that would abandon publishes that are about to succeed.
            return Err(Error::config(
                "relay.publish_timeout_ms",
                format!(
                    "must exceed twice sink.log.fsync_interval_ms ({} ms) with \
                     sink.log.durability = \"interval\"",
                    log.fsync_interval_ms
                ),
            ));
        }
        signed_range(
            "source.cleanup_batch",
            self.source.cleanup_batch,
            1,
            100_000,
        )?;
        range(
            "source.cleanup_interval_ms",
            self.source.cleanup_interval_ms,
            10,
            86_400_000,
        )?;
        range(
            "relay.stats_interval_ms",
            self.relay.stats_interval_ms,
            100,
            3_600_000,
        )?;
        self.http.validate()?;
        if self.http.enabled
            && self.http.consume.enabled
            && self.sink.kind != crate::sink::SinkKind::Log
        {
            return Err(Error::config(
                "http.consume.enabled",
                "serves the embedded log, so it needs sink.type = \"log\"",
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.logging.level).is_err() {
            return Err(Error::config(
                "logging.level",
                format!(
                    "\"{}\" is not a valid filter (e.g. \"info\")",
                    self.logging.level
                ),
            ));
        }
        Ok(())
    }
}

/// `value`, a signed setting, must lie in `min..=max`; the message shows it as given.
fn signed_range(key: &str, value: i64, min: i64, max: i64) -> Result<()> {
    if value < min || value > max {
        return Err(Error::config(
            key,
            format!("must be between {min} and {max} (got {value})"),
        ));
    }
    Ok(())
}

/// A name PostgreSQL will keep as written: non-empty, at most 63 bytes, and free of what has no
/// business in a name: braces (they mark placeholders in outboxd's statement templates) and
/// control characters (NUL, newlines, escapes that would garble a log line or a terminal).
fn identifier(key: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::config(key, "must not be empty"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| c.is_control() || matches!(c, '{' | '}'))
    {
        return Err(Error::config(
            key,
            format!("must not contain {bad:?} (no braces or control characters in names)"),
        ));
    }
    if name.len() > MAX_IDENTIFIER_BYTES {
        return Err(Error::config(
            key,
            format!("must be at most {MAX_IDENTIFIER_BYTES} bytes (PostgreSQL would truncate it)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DbUrl;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn out_of_range_names_key_and_bounds() {
        let mut cfg = Config::default();
        cfg.source.batch_size = 0;
        let err = cfg.validate().unwrap_err().to_string();
        assert_eq!(
            err,
            "source.batch_size: must be between 1 and 100000 (got 0)"
        );
    }

    #[test]
    fn log_retention_below_one_segment_is_refused_naming_the_key() {
        let mut cfg = Config::default();
        cfg.sink.log.retention_bytes = Some(1024);
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("sink.log.retention_bytes: must be at least"),
            "{err}"
        );
        cfg.sink.log.retention_bytes = None;
        cfg.sink.log.fsync_interval_ms = 0;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.starts_with("sink.log.fsync_interval_ms"), "{err}");
    }

    #[test]
    fn a_publish_timeout_within_the_kafka_message_timeout_is_refused() {
        let mut cfg = Config::default();
        cfg.sink.kind = crate::sink::SinkKind::Kafka;
        cfg.sink.kafka.message_timeout_ms = 30_000;
        cfg.relay.publish_timeout_ms = 30_500;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.starts_with("relay.publish_timeout_ms"), "{err}");
        assert!(
            err.contains("sink.kafka.message_timeout_ms (30000 ms)"),
            "{err}"
        );
        cfg.relay.publish_timeout_ms = 60_000;
        cfg.validate().unwrap();
    }

    #[test]
    fn a_publish_timeout_within_the_fsync_interval_is_refused() {
        let mut cfg = Config::default();
        cfg.sink.log.durability = crate::log::Durability::Interval;
        cfg.sink.log.fsync_interval_ms = 3000;
        cfg.relay.publish_timeout_ms = 1000;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.starts_with("relay.publish_timeout_ms"), "{err}");
        assert!(
            err.contains("sink.log.fsync_interval_ms (3000 ms)"),
            "{err}"
        );
        cfg.relay.publish_timeout_ms = 7000;
        cfg.validate().unwrap();
    }

    #[test]
    fn duplicate_column_names_are_refused() {
        let mut cfg = Config::default();
        cfg.source.columns.sent_at = "id".into();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.starts_with("source.columns.sent_at"), "{err}");
    }

    #[test]
    fn names_with_braces_or_control_characters_are_refused_naming_the_key() {
        let mut cfg = Config::default();
        cfg.source.columns.txid = "a{sent_at}".into();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("source.columns.txid: must not contain '{'"),
            "{err}"
        );
        let mut cfg = Config::default();
        cfg.source.channel = Some("c\nx".into());
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("source.channel: must not contain '\\n'"),
            "{err}"
        );
        let mut cfg = Config::default();
        cfg.source.table.name = "t}".into();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.starts_with("source.table.name"), "{err}");
    }

    #[test]
    fn invalid_url_error_hides_the_password() {
        let mut cfg = Config::default();
        cfg.source.url = DbUrl::new("postgres://u:hunter2@h:notaport/db");
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.starts_with("source.url"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
