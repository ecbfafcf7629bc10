//! Settings of the logical replication source (`source.mode = "logical"`).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The `[source.logical]` section; read only when `source.mode = "logical"`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogicalConfig {
    /// Publication that carries the outbox table's inserts. Default `outboxd`.
    pub publication: String,
    /// Logical replication slot (plugin `pgoutput`). Slots count against the cluster-wide
    /// `max_replication_slots`, so give every relay its own name. Default `outboxd`.
    pub slot: String,
    /// Prefix of `pg_logical_emit_message` calls that carry events; heartbeats use
    /// `<prefix>-heartbeat`. Default `outboxd`.
    pub message_prefix: String,
    /// How often a heartbeat message is written so an idle slot still advances, in milliseconds.
    /// Default 30000.
    pub heartbeat_interval_ms: u64,
    /// Slot lag (WAL bytes the slot holds back) above which a warning is logged.
    /// Default 1073741824 (1 GiB).
    pub lag_warn_bytes: u64,
    /// When the slot was invalidated (`wal_status = 'lost'`), drop and re-create it instead of
    /// stopping. Events written while it was lost are then never delivered. Default `false`.
    pub recreate_lost_slot: bool,
}

impl Default for LogicalConfig {
    fn default() -> Self {
        LogicalConfig {
            publication: "outboxd".into(),
            slot: "outboxd".into(),
            message_prefix: "outboxd".into(),
            heartbeat_interval_ms: 30_000,
            lag_warn_bytes: 1 << 30,
            recreate_lost_slot: false,
        }
    }
}

impl LogicalConfig {
    /// Checks names and ranges; the error names the key.
    pub fn validate(&self) -> Result<()> {
        // START_REPLICATION takes the slot bare and the publication inside quotes, so both are
        // held to PostgreSQL's slot-name rule: nothing there can be spliced into the command.
        plain_name("source.logical.slot", &self.slot)?;
        plain_name("source.logical.publication", &self.publication)?;
        if self.message_prefix.is_empty() || self.message_prefix.contains('\0') {
            return Err(Error::config(
                "source.logical.message_prefix",
                "must be non-empty and contain no NUL character",
            ));
        }
        if !(100..=3_600_000).contains(&self.heartbeat_interval_ms) {
            return Err(Error::config(
                "source.logical.heartbeat_interval_ms",
                format!(
                    "must be between 100 and 3600000 (got {})",
                    self.heartbeat_interval_ms
                ),
            ));
        }
        Ok(())
    }
}

/// Lower-case letters, digits and `_`, 1 to 63 bytes: what PostgreSQL allows for a slot name.
fn plain_name(key: &str, name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Err(Error::config(
            key,
            format!("\"{name}\" must be 1 to 63 lower-case letters, digits or underscores"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_odd_slot_names_are_refused() {
        LogicalConfig::default().validate().unwrap();
        let mut cfg = LogicalConfig {
            slot: "My-Slot".into(),
            ..LogicalConfig::default()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.starts_with("source.logical.slot: "), "{err}");
        cfg.slot = "ok".into();
        cfg.publication = "a' b".into();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.starts_with("source.logical.publication: "), "{err}");
    }
}
