//! The `[sink.kafka]` table: where and how events are produced to Kafka, and the librdkafka
//! settings it turns into.

use super::options::LibrdkafkaOptions;
use super::topic::TopicTemplate;
use crate::error::{Error, Result};
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// How produced batches are compressed, with librdkafka's names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Uncompressed.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// librdkafka's `compression.type` value.
    fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// How the producer talks to brokers, with Kafka's names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// Plain TCP, no authentication.
    #[default]
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL authentication over plain TCP.
    SaslPlaintext,
    /// SASL authentication over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// librdkafka's `security.protocol` value.
    fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether the protocol authenticates with SASL.
    fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// The SASL mechanism, with Kafka's names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    /// Username and password in the clear (use it over TLS only).
    #[default]
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// librdkafka's `sasl.mechanism` value.
    fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// The Kafka sink.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSinkConfig {
    /// Comma-separated `host:port` list of brokers to bootstrap from. Default `127.0.0.1:9092`.
    pub bootstrap_servers: String,
    /// Topic per event, with the placeholders of every sink's templates (`{aggregatetype}`,
    /// `{aggregateid}`, `{type}`, `{schema}`, `{table}`, `{op}`, `{key}`; `{table}` is the outbox
    /// table's name for outbox events). Default `outbox.event.{aggregatetype}`, as Debezium's
    /// outbox event router. A topic per key is rarely wanted: Kafka keys partition already.
    pub topic: String,
    /// Add CloudEvents binary-mode headers (`ce_id`, `ce_type`, `ce_source`, `ce_specversion`,
    /// `ce_time`, `content-type`). Default `false`.
    pub cloudevents: bool,
    /// The `ce_source` header in CloudEvents mode. Default `outboxd`.
    pub cloudevents_source: String,
    /// How long librdkafka keeps trying to deliver a message (its own retries included) before
    /// the batch fails and the relay retries it, in milliseconds. Default 30000.
    pub message_timeout_ms: u64,
    /// Compression of produced batches. Default `none`.
    pub compression: Compression,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`. Default `plaintext`.
    pub security_protocol: SecurityProtocol,
    /// PEM file of CAs trusted for the brokers' certificates. Default: the system's.
    pub ssl_ca_location: Option<PathBuf>,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`, with a `sasl_*` protocol. Default `PLAIN`.
    pub sasl_mechanism: SaslMechanism,
    /// SASL username. Default: none.
    pub sasl_username: Option<String>,
    /// SASL password; masked wherever it is printed. Default: none.
    pub sasl_password: Secret,
    /// Create a missing topic (with the two settings below) instead of failing on it. Default
    /// `false`: a topic that does not exist is an error naming it.
    pub create_topics: bool,
    /// Partitions of a topic created by `create_topics`. Default 6.
    pub topic_partitions: i32,
    /// Replication factor of a topic created by `create_topics`; -1 takes the broker's default.
    /// Default -1.
    pub topic_replication_factor: i32,
    /// Further librdkafka producer settings, passed as given. A key a typed option above owns,
    /// or one outboxd fixes for at-least-once delivery, is refused. Values of keys that look
    /// secret (password, secret, jaas) are masked when printed.
    pub librdkafka_options: LibrdkafkaOptions,
}

impl Default for KafkaSinkConfig {
    fn default() -> Self {
        KafkaSinkConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            topic: "outbox.event.{aggregatetype}".into(),
            cloudevents: false,
            cloudevents_source: "outboxd".into(),
            message_timeout_ms: 30_000,
            compression: Compression::None,
            security_protocol: SecurityProtocol::Plaintext,
            ssl_ca_location: None,
            sasl_mechanism: SaslMechanism::Plain,
            sasl_username: None,
            sasl_password: Secret::default(),
            create_topics: false,
            topic_partitions: 6,
            topic_replication_factor: -1,
            librdkafka_options: LibrdkafkaOptions::default(),
        }
    }
}

/// librdkafka settings outboxd changes from librdkafka's defaults, which `librdkafka_options`
/// may override: key, value. A producer's metadata request would otherwise create a missing
/// topic (with the broker's defaults) wherever the broker allows it, hiding a typo.
const DEFAULTS: &[(&str, &str)] = &[("allow.auto.create.topics", "false")];

/// librdkafka keys outboxd sets itself for at-least-once, in order: key, value, why.
const FIXED: &[(&str, &str, &str)] = &[
    ("acks", "all", "acks=all is required for at-least-once"),
    (
        "enable.idempotence",
        "true",
        "enable.idempotence=true keeps each partition in order across retries",
    ),
    (
        "max.in.flight.requests.per.connection",
        "5",
        "the idempotent producer keeps order only with at most 5 requests in flight",
    ),
    (
        "delivery.report.only.error",
        "false",
        "every delivery report is needed to mark an event sent",
    ),
];

/// librdkafka keys (and their aliases) owned by a typed option: key, the option's name.
const TYPED: &[(&str, &str)] = &[
    ("bootstrap.servers", "bootstrap_servers"),
    ("metadata.broker.list", "bootstrap_servers"),
    ("message.timeout.ms", "message_timeout_ms"),
    ("delivery.timeout.ms", "message_timeout_ms"),
    ("compression.type", "compression"),
    ("compression.codec", "compression"),
    ("security.protocol", "security_protocol"),
    ("ssl.ca.location", "ssl_ca_location"),
    ("sasl.mechanism", "sasl_mechanism"),
    ("sasl.mechanisms", "sasl_mechanism"),
    ("sasl.username", "sasl_username"),
    ("sasl.password", "sasl_password"),
];

/// Aliases librdkafka accepts for the fixed keys.
const FIXED_ALIASES: &[(&str, &str)] = &[
    ("request.required.acks", "acks"),
    ("max.in.flight", "max.in.flight.requests.per.connection"),
];

impl KafkaSinkConfig {
    /// Settings that weaken transport security without being errors (a test cluster may need
    /// them), as (key, why): logged as warnings when the sink opens.
    pub fn insecure_settings(&self) -> Vec<(&'static str, &'static str)> {
        let mut found = Vec::new();
        let option = |key: &str| self.librdkafka_options.0.get(key).map(String::as_str);
        if option("enable.ssl.certificate.verification") == Some("false") {
            found.push((
                "sink.kafka.librdkafka_options.\"enable.ssl.certificate.verification\"",
                "broker certificates are not verified; anyone on the network path can pose as \
                 the broker",
            ));
        }
        if option("ssl.endpoint.identification.algorithm") == Some("none") {
            found.push((
                "sink.kafka.librdkafka_options.\"ssl.endpoint.identification.algorithm\"",
                "broker host names are not verified",
            ));
        }
        if self.security_protocol == SecurityProtocol::SaslPlaintext
            && self.sasl_mechanism == SaslMechanism::Plain
        {
            found.push((
                "sink.kafka.security_protocol",
                "SASL PLAIN over plaintext sends the password in the clear; use sasl_ssl",
            ));
        }
        found
    }

    /// Checks every `sink.kafka` key; the error names the key and the rule it broke.
    pub fn validate(&self) -> Result<()> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(Error::config(
                "sink.kafka.bootstrap_servers",
                "must name at least one host:port",
            ));
        }
        TopicTemplate::parse(&self.topic)
            .map_err(|reason| Error::config("sink.kafka.topic", reason))?;
        if !(1_000..=3_600_000).contains(&self.message_timeout_ms) {
            return Err(Error::config(
                "sink.kafka.message_timeout_ms",
                format!(
                    "must be between 1000 and 3600000 (got {})",
                    self.message_timeout_ms
                ),
            ));
        }
        if !self.security_protocol.uses_sasl()
            && (self.sasl_username.is_some() || !self.sasl_password.is_empty())
        {
            let key = match self.sasl_username {
                Some(_) => "sink.kafka.sasl_username",
                None => "sink.kafka.sasl_password",
            };
            return Err(Error::config(
                key,
                "is set but sink.kafka.security_protocol is not sasl_plaintext or sasl_ssl",
            ));
        }
        if self.topic_partitions < 1 {
            return Err(Error::config(
                "sink.kafka.topic_partitions",
                format!("must be at least 1 (got {})", self.topic_partitions),
            ));
        }
        if self.topic_replication_factor < -1 || self.topic_replication_factor == 0 {
            return Err(Error::config(
                "sink.kafka.topic_replication_factor",
                format!(
                    "must be -1 (broker default) or at least 1 (got {})",
                    self.topic_replication_factor
                ),
            ));
        }
        for key in self.librdkafka_options.0.keys() {
            refuse_owned_key(key)?;
        }
        Ok(())
    }

    /// Every librdkafka producer setting: the fixed ones, the typed options, then the
    /// passthrough table (which [`Self::validate`] keeps from overlapping the others).
    pub fn client_settings(&self) -> Result<BTreeMap<String, String>> {
        self.validate()?;
        let mut settings: BTreeMap<String, String> = DEFAULTS
            .iter()
            .copied()
            .chain(FIXED.iter().map(|(key, value, _)| (*key, *value)))
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        let mut set = |key: &str, value: String| settings.insert(key.to_string(), value);
        set("bootstrap.servers", self.bootstrap_servers.clone());
        // Later than the sink's own deadline: see its `deadline` module.
        let timeout = self.message_timeout_ms + super::deadline::PURGE_MARGIN.as_millis() as u64;
        set("message.timeout.ms", timeout.to_string());
        set("compression.type", self.compression.as_str().into());
        set("security.protocol", self.security_protocol.as_str().into());
        if let Some(ca) = &self.ssl_ca_location {
            set("ssl.ca.location", ca.display().to_string());
        }
        if self.security_protocol.uses_sasl() {
            set("sasl.mechanism", self.sasl_mechanism.as_str().into());
            if let Some(username) = &self.sasl_username {
                set("sasl.username", username.clone());
            }
            if !self.sasl_password.is_empty() {
                set("sasl.password", self.sasl_password.expose().to_string());
            }
        }
        for (key, value) in &self.librdkafka_options.0 {
            set(key, value.clone());
        }
        Ok(settings)
    }
}

/// Refuses a passthrough `key` that a typed option or outboxd itself sets, naming both.
fn refuse_owned_key(key: &str) -> Result<()> {
    let name = format!("sink.kafka.librdkafka_options.\"{key}\"");
    let fixed_key = FIXED_ALIASES
        .iter()
        .find(|(alias, _)| *alias == key)
        .map_or(key, |(_, canonical)| canonical);
    if let Some((_, _, why)) = FIXED.iter().find(|(fixed, _, _)| *fixed == fixed_key) {
        return Err(Error::config(
            &name,
            format!("is set by sink.kafka ({why})"),
        ));
    }
    if let Some((_, option)) = TYPED.iter().find(|(typed, _)| *typed == key) {
        return Err(Error::config(
            &name,
            format!("is set by sink.kafka.{option}; set that instead"),
        ));
    }
    if key.starts_with("transactional.") {
        return Err(Error::config(
            &name,
            "is not supported: outboxd's producer is idempotent, not transactional",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::MASK;

    /// The default configuration with `key = value` in the passthrough table.
    fn with_option(key: &str, value: &str) -> KafkaSinkConfig {
        let mut config = KafkaSinkConfig::default();
        config.librdkafka_options.0.insert(key.into(), value.into());
        config
    }

    #[test]
    fn defaults_are_valid_and_fix_acks_and_idempotence() {
        let settings = KafkaSinkConfig::default().client_settings().unwrap();
        assert_eq!(settings["acks"], "all");
        assert_eq!(settings["enable.idempotence"], "true");
        assert_eq!(settings["max.in.flight.requests.per.connection"], "5");
        assert_eq!(settings["message.timeout.ms"], "40000");
        assert_eq!(settings["compression.type"], "none");
        assert_eq!(settings["bootstrap.servers"], "127.0.0.1:9092");
        assert!(!settings.contains_key("sasl.password"));
        assert_eq!(settings["allow.auto.create.topics"], "false");
    }

    #[test]
    fn overriding_acks_is_refused_with_both_names() {
        let err = with_option("acks", "1").validate().unwrap_err().to_string();
        assert_eq!(
            err,
            "sink.kafka.librdkafka_options.\"acks\": is set by sink.kafka \
             (acks=all is required for at-least-once)"
        );
        let err = with_option("request.required.acks", "0")
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("acks=all"), "{err}");
        let err = with_option("enable.idempotence", "false")
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("enable.idempotence=true"), "{err}");
    }

    #[test]
    fn a_key_owned_by_a_typed_option_is_refused_naming_the_option() {
        let err = with_option("compression.type", "gzip")
            .validate()
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "sink.kafka.librdkafka_options.\"compression.type\": is set by \
             sink.kafka.compression; set that instead"
        );
        let err = with_option("sasl.password", "x")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("sink.kafka.sasl_password"), "{err}");
    }

    #[test]
    fn other_keys_pass_through_and_typed_options_map_to_librdkafka_names() {
        let mut config = with_option("linger.ms", "20");
        config
            .librdkafka_options
            .0
            .insert("allow.auto.create.topics".into(), "true".into());
        config.compression = Compression::Zstd;
        config.security_protocol = SecurityProtocol::SaslSsl;
        config.sasl_mechanism = SaslMechanism::ScramSha512;
        config.sasl_username = Some("app".into());
        config.sasl_password = Secret::new("hunter2");
        config.ssl_ca_location = Some("/etc/ca.pem".into());
        let settings = config.client_settings().unwrap();
        assert_eq!(settings["linger.ms"], "20");
        assert_eq!(settings["allow.auto.create.topics"], "true");
        assert_eq!(settings["compression.type"], "zstd");
        assert_eq!(settings["security.protocol"], "sasl_ssl");
        assert_eq!(settings["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(settings["sasl.username"], "app");
        assert_eq!(settings["sasl.password"], "hunter2");
        assert_eq!(settings["ssl.ca.location"], "/etc/ca.pem");
    }

    #[test]
    fn secrets_never_print() {
        let mut config = with_option("ssl.key.password", "s3cret");
        config.security_protocol = SecurityProtocol::SaslSsl;
        config.sasl_password = Secret::new("hunter2");
        let text = toml::to_string(&config).unwrap();
        assert!(
            !text.contains("hunter2") && !text.contains("s3cret"),
            "{text}"
        );
        assert!(text.contains(MASK), "{text}");
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("s3cret"),
            "{debug}"
        );
    }

    #[test]
    fn switching_verification_off_or_plain_sasl_without_tls_is_reported() {
        assert!(KafkaSinkConfig::default().insecure_settings().is_empty());
        let config = with_option("enable.ssl.certificate.verification", "false");
        assert_eq!(config.insecure_settings().len(), 1);
        let mut config = KafkaSinkConfig {
            security_protocol: SecurityProtocol::SaslPlaintext,
            ..KafkaSinkConfig::default()
        };
        assert_eq!(
            config.insecure_settings()[0].0,
            "sink.kafka.security_protocol"
        );
        config.security_protocol = SecurityProtocol::SaslSsl;
        assert!(config.insecure_settings().is_empty());
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let config = KafkaSinkConfig {
            message_timeout_ms: 10,
            ..KafkaSinkConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("sink.kafka.message_timeout_ms"), "{err}");
        let config = KafkaSinkConfig {
            topic: "outbox.{aggregate}".into(),
            ..KafkaSinkConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("sink.kafka.topic"), "{err}");
    }
}
