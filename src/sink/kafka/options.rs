//! The `sink.kafka.librdkafka_options` pass-through table, and which of its values may be shown.

use crate::secret::MASK;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

/// The `librdkafka_options` table: librdkafka keys to values, passed through as given. `Debug`
/// and `Serialize` show only the values of keys on [`SHOWN_OPTIONS`] and mask every other one:
/// librdkafka has secrets under many names (`ssl.key.pem`, `sasl.oauthbearer.config`,
/// `ssl.keystore.password`, …), so guessing them by name would miss some.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct LibrdkafkaOptions(pub BTreeMap<String, String>);

/// Pass-through keys whose values are shown by `check-config` and in logs: tuning knobs, file
/// paths and switches that hold no secret.
const SHOWN_OPTIONS: &[&str] = &[
    "allow.auto.create.topics",
    "api.version.request",
    "batch.num.messages",
    "batch.size",
    "broker.address.family",
    "client.dns.lookup",
    "client.id",
    "client.rack",
    "compression.level",
    "connections.max.idle.ms",
    "debug",
    "enable.ssl.certificate.verification",
    "linger.ms",
    "log_level",
    "message.max.bytes",
    "message.send.max.retries",
    "metadata.max.age.ms",
    "partitioner",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.messages",
    "queue.buffering.max.ms",
    "reconnect.backoff.max.ms",
    "reconnect.backoff.ms",
    "request.timeout.ms",
    "retries",
    "retry.backoff.max.ms",
    "retry.backoff.ms",
    "sasl.kerberos.service.name",
    "socket.keepalive.enable",
    "socket.timeout.ms",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.endpoint.identification.algorithm",
    "ssl.key.location",
    "statistics.interval.ms",
    "sticky.partitioning.linger.ms",
    "topic.metadata.refresh.interval.ms",
];

impl LibrdkafkaOptions {
    /// The table with every value not on [`SHOWN_OPTIONS`] replaced by [`MASK`].
    fn masked(&self) -> BTreeMap<&str, &str> {
        self.0
            .iter()
            .map(|(key, value)| {
                let shown = SHOWN_OPTIONS.contains(&key.as_str());
                (key.as_str(), if shown { value.as_str() } else { MASK })
            })
            .collect()
    }
}

impl fmt::Debug for LibrdkafkaOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.masked().fmt(f)
    }
}

impl Serialize for LibrdkafkaOptions {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.masked().serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::super::KafkaSinkConfig;

    #[test]
    fn pass_through_values_are_masked_unless_known_harmless() {
        let mut config = KafkaSinkConfig::default();
        let options = &mut config.librdkafka_options.0;
        options.insert(
            "ssl.key.pem".into(),
            "-----BEGIN PRIVATE KEY-----MIIE".into(),
        );
        options.insert(
            "sasl.oauthbearer.config".into(),
            "clientSecret=Hunter2".into(),
        );
        options.insert("linger.ms".into(), "20".into());
        let text = toml::to_string(&config).unwrap();
        let debug = format!("{config:?}");
        for shown in [&text, &debug] {
            assert!(
                !shown.contains("PRIVATE") && !shown.contains("Hunter2"),
                "{shown}"
            );
            assert!(shown.contains("20"), "{shown}");
        }
    }
}
