//! Amazon SNS as a sink: `PublishBatch` to a topic ARN from a template; an event counts as
//! delivered once SNS lists its entry as successful. On a FIFO topic (an ARN ending in
//! `.fifo`) the key is the message group and the event id the deduplication id, as on SQS.

use super::batch::BatchApi;
use super::config::{SnsSinkConfig, required_template};
use super::handle::AwsSink;
use super::message::Message;
use super::outcome::{EntryFailure, call_failed, entry_outcomes, reached};
use crate::error::{Error, ErrorKind, Result};
use crate::sink::{OpenSink, Outcome, SinkContext};
use aws_sdk_sns::Client;
use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};

/// Publishes events to SNS topics.
pub type SnsSink = AwsSink<SnsApi>;

/// `PublishBatch` through the SDK.
#[derive(Clone)]
pub struct SnsApi {
    /// The SDK client (cheap to clone: shared connection pool).
    client: Client,
    /// A topic to probe: the template's fixed ARN, else the last topic a call reached.
    probe_topic: Option<String>,
}

impl OpenSink for SnsSink {
    type Config = SnsSinkConfig;

    /// Loads region and credentials from the standard chain (failing, naming it, without
    /// them); the topics are not checked here, as the template names them per event.
    async fn open(config: &SnsSinkConfig, context: &SinkContext) -> Result<Self> {
        let template =
            required_template("sink.sns.topic_arn", &config.topic_arn)?.for_outbox(&context.outbox);
        let sdk = super::client::load(config.connection()).await?;
        let client = Client::new(&sdk);
        tracing::info!(topic_arn = %config.topic_arn, region = ?sdk.region(),
            endpoint = ?config.endpoint_url, "SNS sink ready");
        let api = SnsApi {
            client,
            probe_topic: template.fixed(),
        };
        Ok(AwsSink::new(template, api))
    }

    fn validate(config: &SnsSinkConfig) -> Result<()> {
        config.validate()
    }
}

impl BatchApi for SnsApi {
    const NAME: &'static str = "sns";

    /// `GetTopicAttributes` of a known topic, else `ListTopics`.
    async fn reach(&self) -> bool {
        match &self.probe_topic {
            Some(topic) => reached(
                self.client
                    .get_topic_attributes()
                    .topic_arn(topic)
                    .send()
                    .await,
            ),
            None => reached(self.client.list_topics().send().await),
        }
    }

    /// An SNS topic ARN: `arn:<partition>:sns:<region>:<account>:<name>`.
    fn check_target(&self, target: &str) -> Result<(), String> {
        let parts: Vec<&str> = target.split(':').collect();
        let name = parts.get(5).copied().unwrap_or("");
        let valid = parts.len() == 6
            && parts[0] == "arn"
            && parts[2] == "sns"
            && !name.is_empty()
            && name.len() <= 256
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err("is not an SNS topic ARN (arn:aws:sns:region:account:topic)".into());
        }
        Ok(())
    }

    async fn send(&mut self, target: &str, messages: &[Message<'_>]) -> Result<Vec<Outcome>> {
        let entries = messages
            .iter()
            .enumerate()
            .map(|(index, message)| entry(index, message))
            .collect::<Result<Vec<_>>>()?;
        let sent = self
            .client
            .publish_batch()
            .topic_arn(target)
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await;
        match sent {
            Ok(output) => {
                self.probe_topic.get_or_insert_with(|| target.to_string());
                let failed = output.failed().iter().map(|failure| EntryFailure {
                    id: failure.id(),
                    sender_fault: failure.sender_fault(),
                    code: failure.code(),
                    message: failure.message().unwrap_or(""),
                });
                let succeeded = output.successful().iter().filter_map(|entry| entry.id());
                Ok(entry_outcomes("SNS", messages.len(), succeeded, failed))
            }
            Err(err) => Ok(vec![call_failed("SNS", target, err)?; messages.len()]),
        }
    }
}

/// The batch entry `index` for `message`.
fn entry(index: usize, message: &Message<'_>) -> Result<PublishBatchRequestEntry> {
    let mut entry = PublishBatchRequestEntry::builder()
        .id(index.to_string())
        .message(message.body)
        .set_message_group_id(message.group.map(str::to_string))
        .set_message_deduplication_id(message.dedup.map(str::to_string));
    for attribute in &message.attributes {
        let value = MessageAttributeValue::builder()
            .data_type(attribute.data_type)
            .string_value(&attribute.value)
            .build()
            .map_err(internal)?;
        entry = entry.message_attributes(&attribute.name, value);
    }
    entry.build().map_err(internal)
}

/// A request the SDK would not build (a bug: every required field is set).
fn internal(err: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::with_source(ErrorKind::Internal, "building an SNS request", err)
}
