//! Kafka as a sink: one record per event, keyed by aggregate id (so an aggregate's events share
//! a partition), produced by an idempotent producer with `acks=all`; an event counts as
//! delivered only once its delivery report succeeded.
//!
//! A batch is sent without waiting (every event handed to librdkafka, which pipelines them),
//! then every delivery report is awaited. Retries are librdkafka's, within
//! `message_timeout_ms`; the idempotent producer keeps each partition in order across them, and
//! a batch not settled by then has its records purged before it fails (see
//! [`deadline`] for why librdkafka's own timeout is not used). A
//! report that still failed fails the whole batch with a retryable error, after every report of
//! the batch is in, so nothing of it is still in flight when the relay sends it again in order:
//! nothing is lost, consumers may see duplicates, and no event is reported delivered while an
//! earlier event of its aggregate is not. A message Kafka can never take (too large, an
//! invalid topic name) is refused with the reason, so its row is marked failed; later events of
//! its aggregate in the same batch are not sent (reported `Deferred`), so `on_dead_letter`
//! decides whether they follow. A refusal that only the broker's delivery report reveals comes
//! after later records of the key were already sent; those cannot be recalled.

mod client;
mod config;
mod deadline;
mod logging;
mod message;
mod options;
mod topic;

pub use self::config::{Compression, KafkaSinkConfig, SaslMechanism, SecurityProtocol};
pub use self::options::LibrdkafkaOptions;
pub use self::topic::TopicTemplate;

use super::{OpenSink, Outcome, Sink, SinkContext};
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use deadline::Deadline;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::{HashSet, VecDeque};
use std::time::Duration;

/// Failed batches in a row after which the producer is replaced even without a fatal error:
/// after a broker restart an idempotent producer can keep failing (`UnknownProducerId`, timed
/// out reports) where a fresh one delivers at once.
const FAILURES_BEFORE_NEW_PRODUCER: u32 = 3;

/// How long to wait before offering a record again when librdkafka's queue is full and none of
/// this batch's own reports is pending to wait on.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

/// Produces events to Kafka with an idempotent producer.
pub struct KafkaSink {
    /// The sink's settings.
    config: KafkaSinkConfig,
    /// The parsed `topic` template.
    topic: TopicTemplate,
    /// The producer; replaced after a fatal (idempotence) error.
    producer: FutureProducer<logging::KafkaContext>,
    /// Topics seen to exist (or created), so metadata is checked once per topic.
    known_topics: HashSet<String>,
    /// Whether the last batch was delivered (for readiness checks).
    healthy: bool,
    /// Batches in a row that failed (see [`FAILURES_BEFORE_NEW_PRODUCER`]).
    failed_batches: u32,
}

impl OpenSink for KafkaSink {
    type Config = KafkaSinkConfig;

    async fn open(config: &KafkaSinkConfig, context: &SinkContext) -> Result<Self> {
        KafkaSink::open(config, context).await
    }

    fn validate(config: &KafkaSinkConfig) -> Result<()> {
        config.validate()
    }

    fn check_destination(destination: &str) -> std::result::Result<(), String> {
        TopicTemplate::parse(destination).map(|_| ())
    }
}

impl KafkaSink {
    /// Creates the producer and checks that the brokers answer, and that the topic exists
    /// (or creates it) when the template names one topic. Failing here is final, so a
    /// misconfigured relay says so at once instead of retrying forever.
    pub async fn open(config: &KafkaSinkConfig, context: &SinkContext) -> Result<Self> {
        let topic = TopicTemplate::parse(&config.topic)
            .map_err(|reason| Error::config("sink.kafka.topic", reason))?
            .for_outbox(&context.outbox);
        for (key, why) in config.insecure_settings() {
            tracing::warn!(key, "insecure Kafka setting: {why}");
        }
        let producer = client::producer(config)?;
        client::check_reachable(&producer, &config.bootstrap_servers).await?;
        let mut sink = KafkaSink {
            config: config.clone(),
            topic,
            producer,
            known_topics: HashSet::new(),
            healthy: true,
            failed_batches: 0,
        };
        if let Some(fixed) = sink.topic.fixed() {
            topic::check_name(&fixed)
                .map_err(|reason| Error::config("sink.kafka.topic", reason))?;
            sink.ensure_topic(&fixed).await?;
        }
        tracing::info!(bootstrap_servers = %config.bootstrap_servers, topic = %config.topic, "connected to Kafka");
        Ok(sink)
    }

    /// Makes sure `topic` exists before the first record is sent to it: creates it when
    /// `create_topics` is on, otherwise fails with an error naming it (retryable, so the
    /// events wait, none lost, until an operator creates the topic).
    async fn ensure_topic(&mut self, topic: &str) -> Result<()> {
        if self.known_topics.contains(topic) {
            return Ok(());
        }
        if !client::topic_exists(&self.producer, topic).await? {
            if !self.config.create_topics {
                return Err(Error::new(
                    ErrorKind::SinkUnavailable,
                    format!(
                        "Kafka topic \"{topic}\" does not exist; create it or set \
                         sink.kafka.create_topics = true"
                    ),
                ));
            }
            client::create_topic(&self.config, topic).await?;
        }
        self.known_topics.insert(topic.to_string());
        Ok(())
    }

    /// Sends every event of the batch, then collects every delivery report, within the
    /// batch's [`Deadline`]; past it, purges what is still queued or in flight.
    async fn publish_batch(&mut self, events: &[Event]) -> Result<Vec<Outcome>> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; events.len()];
        let mut pending: VecDeque<(usize, DeliveryFuture)> = VecDeque::new();
        let mut deadline = Deadline::new(Duration::from_millis(self.config.message_timeout_ms));
        let mut failure: Option<Error> = None;
        // Aggregates with an event refused before it was sent: their later events of this batch
        // are not sent at all (the ordering rule of `Outcome::Deferred`).
        let mut refused: HashSet<&str> = HashSet::new();
        for index in 0..events.len() {
            if refused.contains(events[index].key.as_str()) {
                outcomes[index] = Some(Outcome::Deferred);
                continue;
            }
            let sent = self.send(events, index, &mut pending, &mut outcomes, &mut deadline);
            match sent.await {
                Ok(()) => {}
                Err(Refusal::Permanent(reason)) => {
                    refused.insert(events[index].key.as_str());
                    outcomes[index] = Some(Outcome::Refused(reason));
                }
                Err(Refusal::Retry(err)) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        // Every report is awaited even after a failure, so no record of this batch is still in
        // flight when the relay sends the batch again.
        for (index, report) in pending {
            match deadline.bound(settle(&events[index], report)).await {
                Some(Ok(outcome)) => outcomes[index] = Some(outcome),
                Some(Err(err)) => {
                    failure.get_or_insert(err);
                }
                None => {
                    failure.get_or_insert_with(|| deadline.error());
                }
            }
        }
        if deadline.expired() {
            self.producer
                .purge(PurgeConfig::default().queue().inflight());
        }
        if let Some(err) = failure {
            return Err(err);
        }
        outcomes
            .into_iter()
            .map(|outcome| {
                outcome.ok_or_else(|| Error::new(ErrorKind::Internal, "event left unreported"))
            })
            .collect()
    }

    /// Hands `events[index]` to librdkafka and queues its delivery report in `pending`. While
    /// librdkafka's queue is full, waits for this batch's oldest report (recording its outcome)
    /// or, with none pending, briefly.
    async fn send(
        &mut self,
        events: &[Event],
        index: usize,
        pending: &mut VecDeque<(usize, DeliveryFuture)>,
        outcomes: &mut [Option<Outcome>],
        deadline: &mut Deadline,
    ) -> std::result::Result<(), Refusal> {
        let event = &events[index];
        let topic = self.topic.render(event);
        topic::check_name(&topic).map_err(Refusal::Permanent)?;
        self.ensure_topic(&topic).await.map_err(Refusal::Retry)?;
        let cloudevents_source = self
            .config
            .cloudevents
            .then_some(self.config.cloudevents_source.as_str());
        let pairs = message::headers(event, cloudevents_source).map_err(Refusal::Permanent)?;
        let headers = message::owned_headers(&pairs);
        loop {
            let record = FutureRecord::to(&topic)
                .key(event.key.as_bytes())
                .payload(event.payload.get().as_bytes())
                .timestamp(event.created_at.timestamp_millis())
                .headers(headers.clone());
            match self.producer.send_result(record) {
                Ok(report) => {
                    deadline.start();
                    pending.push_back((index, report));
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    match pending.pop_front() {
                        Some((done, report)) => {
                            let outcome = deadline.bound(settle(&events[done], report)).await;
                            let outcome = outcome.ok_or_else(|| deadline.error());
                            outcomes[done] = Some(outcome.and_then(|o| o).map_err(Refusal::Retry)?);
                        }
                        None => tokio::time::sleep(QUEUE_FULL_PAUSE).await,
                    }
                }
                Err((err, record)) => {
                    let size = record_bytes(record.key, record.payload, record.headers.as_ref());
                    return Err(classify(event, &topic, size, err));
                }
            }
        }
    }
}

/// Why one event was not handed to Kafka.
enum Refusal {
    /// Kafka will never take it: the row is marked failed with this reason.
    Permanent(String),
    /// It may work later: the batch fails and is retried.
    Retry(Error),
}

impl Sink for KafkaSink {
    async fn publish(&mut self, events: &[Event]) -> Result<Vec<Outcome>> {
        let result = self.publish_batch(events).await;
        self.healthy = result.is_ok();
        if result.is_ok() {
            self.failed_batches = 0;
            return result;
        }
        // A topic seen once may be gone (a broker restart that lost it): check again before the
        // retry, so a missing topic is reported as such, or re-created with create_topics.
        self.known_topics.clear();
        self.failed_batches += 1;
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            // An idempotent producer that lost track of its sequence numbers refuses every
            // further send; a fresh one (new producer id) lets the relay's retry go through.
            tracing::warn!(error = %code, reason, "kafka producer failed fatally; recreating it");
            self.producer = client::producer(&self.config)?;
            self.failed_batches = 0;
        } else if self.failed_batches >= FAILURES_BEFORE_NEW_PRODUCER {
            tracing::warn!(
                failed_batches = self.failed_batches,
                "kafka batches keep failing; recreating the producer"
            );
            self.producer = client::producer(&self.config)?;
            self.failed_batches = 0;
        }
        result
    }

    /// Shares the producer, which pipelines every handle's records over the same connections.
    async fn fork(&self) -> Result<Self> {
        Ok(KafkaSink {
            config: self.config.clone(),
            topic: self.topic.clone(),
            producer: self.producer.clone(),
            known_topics: self.known_topics.clone(),
            healthy: self.healthy,
            failed_batches: 0,
        })
    }

    /// A handle on the same producer sending to the `destination` topic template; a fixed
    /// topic is checked (or created) at once, as at open.
    async fn redirect(&self, destination: &str) -> Result<Self> {
        let topic = TopicTemplate::parse(destination)
            .map_err(|reason| Error::config(super::DEAD_LETTER_KEY, reason))?
            .for_outbox(self.topic.outbox());
        let mut sink = self.fork().await?;
        sink.topic = topic;
        if let Some(fixed) = sink.topic.fixed() {
            topic::check_name(&fixed)
                .map_err(|reason| Error::config(super::DEAD_LETTER_KEY, reason))?;
            sink.ensure_topic(&fixed).await?;
        }
        Ok(sink)
    }

    fn name(&self) -> &'static str {
        "kafka"
    }

    /// Whether the last batch went through; reads cached state only.
    fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Asks the cluster for its brokers.
    async fn probe(&mut self) -> bool {
        self.healthy = client::check_reachable(&self.producer, &self.config.bootstrap_servers)
            .await
            .is_ok();
        self.healthy
    }
}

/// Waits for one delivery report: success is delivered, a permanent error refuses the event,
/// anything else fails the batch.
async fn settle(event: &Event, report: DeliveryFuture) -> Result<Outcome> {
    match report.await {
        Ok(Ok(_)) => Ok(Outcome::Delivered),
        Ok(Err((err, message))) => {
            use rdkafka::Message;
            let topic = message.topic().to_string();
            let size = record_bytes(message.key(), message.payload(), message.headers());
            match classify(event, &topic, size, err) {
                Refusal::Permanent(reason) => Ok(Outcome::Refused(reason)),
                Refusal::Retry(err) => Err(err),
            }
        }
        Err(_) => Err(Error::new(
            ErrorKind::SinkUnavailable,
            format!("Kafka producer closed before reporting event {}", event.id),
        )),
    }
}

/// Bytes of a record as Kafka counts them for its size limits, near enough: key, value, and
/// every header's name and value.
fn record_bytes<H: rdkafka::message::Headers>(
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: Option<&H>,
) -> usize {
    let headers = headers.map_or(0, |headers| {
        headers
            .iter()
            .map(|header| header.key.len() + header.value.map_or(0, <[u8]>::len))
            .sum()
    });
    key.map_or(0, <[u8]>::len) + payload.map_or(0, <[u8]>::len) + headers
}

/// Sorts a produce error into permanent (the message itself is unacceptable) or retryable;
/// `size` is the whole record's (key, value and headers).
fn classify(event: &Event, topic: &str, size: usize, err: KafkaError) -> Refusal {
    let permanent = matches!(
        err.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidTopic
        )
    );
    if permanent {
        Refusal::Permanent(format!(
            "Kafka refused the {size} byte record (key, payload and headers) for topic \
             \"{topic}\": {err}"
        ))
    } else {
        Refusal::Retry(Error::with_source(
            ErrorKind::SinkUnavailable,
            format!("Kafka did not take event {} (topic \"{topic}\")", event.id),
            err,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::kafka::message::tests::event;

    /// A produce error with librdkafka's `code`.
    fn produce_error(code: RDKafkaErrorCode) -> KafkaError {
        KafkaError::MessageProduction(code)
    }

    #[test]
    fn a_message_kafka_can_never_take_is_refused_with_the_topic_and_size() {
        let refusal = classify(
            &event(None),
            "orders",
            1_048_700,
            produce_error(RDKafkaErrorCode::MessageSizeTooLarge),
        );
        let Refusal::Permanent(reason) = refusal else {
            panic!("too large must be permanent")
        };
        assert!(
            reason.starts_with(
                "Kafka refused the 1048700 byte record (key, payload and headers) for topic \
                 \"orders\": "
            ),
            "{reason}"
        );
        assert!(matches!(
            classify(
                &event(None),
                "x",
                0,
                produce_error(RDKafkaErrorCode::InvalidTopic)
            ),
            Refusal::Permanent(_)
        ));
    }

    #[test]
    fn timeouts_and_broker_errors_fail_the_batch_retryably() {
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ] {
            let Refusal::Retry(err) = classify(&event(None), "orders", 0, produce_error(code))
            else {
                panic!("{code:?} must be retried")
            };
            assert_eq!(err.kind(), ErrorKind::SinkUnavailable);
            assert!(err.is_retryable());
        }
    }
}
