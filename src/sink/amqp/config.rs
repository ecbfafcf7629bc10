//! The `[sink.amqp]` table: where and how events are published to RabbitMQ.

use super::routing::RoutingKeyTemplate;
use crate::error::{Error, Result};
use crate::secret::DbUrl;
use lapin::uri::AMQPUri;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

/// RabbitMQ's default `max_message_size` (128 MiB).
const DEFAULT_MAX_MESSAGE_SIZE: usize = 128 << 20;

/// RabbitMQ's ceiling for `max_message_size` (512 MiB).
const LARGEST_MAX_MESSAGE_SIZE: usize = 512 << 20;

/// The kind of exchange events are published to, with AMQP's names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    /// Routes on the exact routing key.
    Direct,
    /// Routes on routing-key patterns (`order.*`, `#`).
    #[default]
    Topic,
    /// Routes every message to every bound queue.
    Fanout,
    /// Routes on message headers.
    Headers,
}

/// The RabbitMQ sink.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpSinkConfig {
    /// Broker URL, `amqp://` or `amqps://`, with user, password and URL-encoded vhost (`%2f` is
    /// `/`). The password is masked wherever the URL is printed. Default
    /// `amqp://127.0.0.1:5672/%2f` (user and password `guest`).
    pub url: DbUrl,
    /// Exchange events are published to. Default `outbox`.
    pub exchange: String,
    /// Type of the exchange, used when `declare` is on. Default `topic`.
    pub exchange_type: ExchangeType,
    /// Declare the exchange (durable) at connect time. Default `false`: the exchange must exist,
    /// which is checked passively, so a typo in `exchange` stops start-up instead of creating an
    /// exchange with no queues bound, whose every event would be refused as unroutable.
    pub declare: bool,
    /// Routing key; `{aggregatetype}`, `{aggregateid}` and `{type}` are replaced by the event's
    /// fields. Default `{aggregatetype}.{type}`.
    pub routing_key: String,
    /// Time the broker has to confirm a published message before the batch is retried, in
    /// milliseconds. Default 30000.
    pub confirm_timeout_ms: u64,
    /// Most published messages awaiting their confirm at once. Default 1000.
    pub max_in_flight: usize,
    /// Largest message body the broker takes, in bytes: set it to the broker's
    /// `max_message_size` (which AMQP does not advertise). A larger event is a dead letter at
    /// once instead of a message the broker closes the channel for. Default 134217728, RabbitMQ's
    /// default (128 MiB).
    pub max_message_size: usize,
    /// PEM file of CA certificates trusted for an `amqps://` broker, besides Mozilla's roots
    /// (for a private CA). Default: unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for AmqpSinkConfig {
    fn default() -> Self {
        AmqpSinkConfig {
            url: DbUrl::new("amqp://127.0.0.1:5672/%2f"),
            exchange: "outbox".into(),
            exchange_type: ExchangeType::Topic,
            declare: false,
            routing_key: "{aggregatetype}.{type}".into(),
            confirm_timeout_ms: 30_000,
            max_in_flight: 1000,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            ca_file: None,
        }
    }
}

impl AmqpSinkConfig {
    /// The URL parsed. The parser's own message may quote the URL, password and all, so it is
    /// never passed on.
    pub fn uri(&self) -> Result<AMQPUri> {
        self.url.expose().parse().map_err(|_: String| {
            Error::config(
                "sink.amqp.url",
                format!(
                    "is not a valid amqp:// or amqps:// URL ({})",
                    self.url.masked()
                ),
            )
        })
    }

    /// Checks every `sink.amqp` key; the error names the key and the rule it broke.
    pub fn validate(&self) -> Result<()> {
        if !(self.url.expose().starts_with("amqp://") || self.url.expose().starts_with("amqps://"))
        {
            return Err(Error::config(
                "sink.amqp.url",
                format!(
                    "must start with amqp:// or amqps:// ({})",
                    self.url.masked()
                ),
            ));
        }
        self.uri()?;
        if let Some(path) = &self.ca_file {
            if !self.url.expose().starts_with("amqps://") {
                return Err(Error::config(
                    "sink.amqp.ca_file",
                    "is set but sink.amqp.url is not amqps://",
                ));
            }
            let pem = std::fs::read(path).map_err(|err| {
                Error::config(
                    "sink.amqp.ca_file",
                    format!("cannot read {}: {err}", path.display()),
                )
            })?;
            if !CertificateDer::pem_slice_iter(&pem).any(|cert| cert.is_ok()) {
                return Err(Error::config(
                    "sink.amqp.ca_file",
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
        }
        if self.exchange.is_empty() || self.exchange.len() > 255 {
            return Err(Error::config(
                "sink.amqp.exchange",
                "must be 1 to 255 bytes (the default exchange is not supported)",
            ));
        }
        RoutingKeyTemplate::parse(&self.routing_key)
            .map_err(|reason| Error::config("sink.amqp.routing_key", reason))?;
        if !(100..=600_000).contains(&self.confirm_timeout_ms) {
            return Err(Error::config(
                "sink.amqp.confirm_timeout_ms",
                format!(
                    "must be between 100 and 600000 (got {})",
                    self.confirm_timeout_ms
                ),
            ));
        }
        if !(1..=65_535).contains(&self.max_in_flight) {
            return Err(Error::config(
                "sink.amqp.max_in_flight",
                format!("must be between 1 and 65535 (got {})", self.max_in_flight),
            ));
        }
        if !(1..=LARGEST_MAX_MESSAGE_SIZE).contains(&self.max_message_size) {
            return Err(Error::config(
                "sink.amqp.max_message_size",
                format!(
                    "must be between 1 and {LARGEST_MAX_MESSAGE_SIZE} bytes, RabbitMQ's ceiling \
                     (got {})",
                    self.max_message_size
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        AmqpSinkConfig::default().validate().unwrap();
    }

    #[test]
    fn a_bad_url_is_refused_without_printing_the_password() {
        let config = AmqpSinkConfig {
            url: DbUrl::new("amqp://u:hunter2@host:notaport/%2f"),
            ..AmqpSinkConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("sink.amqp.url"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn other_schemes_are_refused() {
        let config = AmqpSinkConfig {
            url: DbUrl::new("http://127.0.0.1:5672"),
            ..AmqpSinkConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("sink.amqp.url: must start with"), "{err}");
    }

    #[test]
    fn an_unknown_placeholder_names_the_key() {
        let config = AmqpSinkConfig {
            routing_key: "{aggregate}.x".into(),
            ..AmqpSinkConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("sink.amqp.routing_key"), "{err}");
    }
}
