//! The librdkafka handles: the producer built from the configuration, and the topic checks
//! (metadata, creation) it needs before the first send to a topic.

use super::config::KafkaSinkConfig;
use super::logging::KafkaContext;
use crate::error::{Error, ErrorKind, Result};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// Most time one metadata request or topic creation may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The librdkafka client configuration for `config`.
fn client_config(config: &KafkaSinkConfig) -> Result<ClientConfig> {
    let mut client = ClientConfig::new();
    for (key, value) in config.client_settings()? {
        client.set(key, value);
    }
    Ok(client)
}

/// Creates the producer. librdkafka connects lazily, so this fails only on settings it rejects
/// (an unknown `librdkafka_options` key, a bad value); its message names the key, never a value.
pub fn producer(config: &KafkaSinkConfig) -> Result<FutureProducer<KafkaContext>> {
    client_config(config)?
        .create_with_context(KafkaContext::default())
        .map_err(|err| {
            Error::with_source(
                ErrorKind::Config,
                "sink.kafka: librdkafka refused the settings",
                err,
            )
        })
}

/// Checks that the brokers answer, by fetching the cluster's metadata.
pub async fn check_reachable(
    producer: &FutureProducer<KafkaContext>,
    bootstrap: &str,
) -> Result<()> {
    let producer = producer.clone();
    let found = tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(None, ADMIN_TIMEOUT)
            .map(|metadata| metadata.brokers().len())
    })
    .await
    .map_err(|err| Error::with_source(ErrorKind::Internal, "metadata task failed", err))?;
    match found {
        Ok(brokers) if brokers > 0 => Ok(()),
        Ok(_) => Err(Error::new(
            ErrorKind::SinkUnavailable,
            format!("Kafka at {bootstrap} reported no brokers"),
        )),
        Err(err) => Err(Error::with_source(
            ErrorKind::SinkUnavailable,
            format!("connecting to Kafka at {bootstrap}"),
            err,
        )),
    }
}

/// Whether `topic` exists, by its metadata. An unreachable cluster is a retryable error.
pub async fn topic_exists(producer: &FutureProducer<KafkaContext>, topic: &str) -> Result<bool> {
    let producer = producer.clone();
    let name = topic.to_string();
    let answer = tokio::task::spawn_blocking(move || {
        let metadata = producer
            .client()
            .fetch_metadata(Some(&name), ADMIN_TIMEOUT)?;
        Ok::<_, KafkaError>(
            metadata
                .topics()
                .iter()
                .find(|found| found.name() == name)
                .map(|found| (found.error(), found.partitions().len())),
        )
    })
    .await
    .map_err(|err| Error::with_source(ErrorKind::Internal, "metadata task failed", err))?
    .map_err(|err| {
        Error::with_source(
            ErrorKind::SinkUnavailable,
            format!("reading the metadata of Kafka topic \"{topic}\""),
            err,
        )
    })?;
    match answer {
        Some((None, partitions)) => Ok(partitions > 0),
        Some((Some(code), _))
            if RDKafkaErrorCode::from(code) == RDKafkaErrorCode::UnknownTopicOrPartition =>
        {
            Ok(false)
        }
        None => Ok(false),
        Some((Some(code), _)) => Err(Error::new(
            ErrorKind::SinkUnavailable,
            format!("Kafka topic \"{topic}\": {}", RDKafkaErrorCode::from(code)),
        )),
    }
}

/// Creates `topic` with the configured partitions and replication factor; a topic created
/// meanwhile by someone else is fine.
pub async fn create_topic(config: &KafkaSinkConfig, topic: &str) -> Result<()> {
    let admin: AdminClient<KafkaContext> = client_config(config)?
        .create_with_context(KafkaContext::default())
        .map_err(|err| Error::with_source(ErrorKind::Config, "sink.kafka: admin client", err))?;
    let new = NewTopic::new(
        topic,
        config.topic_partitions,
        TopicReplication::Fixed(config.topic_replication_factor),
    );
    // Both timeouts: the operation's (at the broker) and the request's, without which a cluster
    // with no controller to take it holds the call for librdkafka's 60 s socket timeout.
    let options = AdminOptions::new()
        .operation_timeout(Some(ADMIN_TIMEOUT))
        .request_timeout(Some(ADMIN_TIMEOUT));
    let results = admin.create_topics([&new], &options).await.map_err(|err| {
        Error::with_source(
            ErrorKind::SinkUnavailable,
            format!("creating Kafka topic \"{topic}\""),
            err,
        )
    })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(Error::new(
                    ErrorKind::SinkUnavailable,
                    format!("creating Kafka topic \"{name}\": {code}"),
                ));
            }
        }
    }
    tracing::info!(
        topic,
        partitions = config.topic_partitions,
        "created Kafka topic"
    );
    Ok(())
}
