//! Amazon SQS as a sink: `SendMessageBatch` to a queue URL from a template; an event counts
//! as delivered once SQS lists its entry as successful (SQS stores a message redundantly
//! before it answers). On a FIFO queue (a URL ending in `.fifo`) the key is the message group,
//! so consumers see each key in order, and the event id the deduplication id, so an event
//! sent again within SQS's 5-minute deduplication window (after a relay crash) is dropped.

use super::batch::BatchApi;
use super::config::{SqsSinkConfig, required_template};
use super::handle::AwsSink;
use super::message::Message;
use super::outcome::{EntryFailure, call_failed, entry_outcomes, reached};
use crate::error::{Error, ErrorKind, Result};
use crate::sink::{OpenSink, Outcome, SinkContext};
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};

/// Sends events to SQS queues.
pub type SqsSink = AwsSink<SqsApi>;

/// `SendMessageBatch` through the SDK.
#[derive(Clone)]
pub struct SqsApi {
    /// The SDK client (cheap to clone: shared connection pool).
    client: Client,
    /// A queue to probe: the template's fixed URL, else the last queue a call reached.
    probe_queue: Option<String>,
}

impl OpenSink for SqsSink {
    type Config = SqsSinkConfig;

    /// Loads region and credentials from the standard chain (failing, naming it, without
    /// them); the queues are not checked here, as the template names them per event.
    async fn open(config: &SqsSinkConfig, context: &SinkContext) -> Result<Self> {
        let template =
            required_template("sink.sqs.queue_url", &config.queue_url)?.for_outbox(&context.outbox);
        let sdk = super::client::load(config.connection()).await?;
        let client = Client::new(&sdk);
        tracing::info!(queue_url = %config.queue_url, region = ?sdk.region(),
            endpoint = ?config.endpoint_url, "SQS sink ready");
        let api = SqsApi {
            client,
            probe_queue: template.fixed(),
        };
        Ok(AwsSink::new(template, api))
    }

    fn validate(config: &SqsSinkConfig) -> Result<()> {
        config.validate()
    }
}

impl BatchApi for SqsApi {
    const NAME: &'static str = "sqs";

    /// `GetQueueAttributes` of a known queue, else `ListQueues` (one result).
    async fn reach(&self) -> bool {
        match &self.probe_queue {
            Some(queue) => reached(
                self.client
                    .get_queue_attributes()
                    .queue_url(queue)
                    .attribute_names(QueueAttributeName::QueueArn)
                    .send()
                    .await,
            ),
            None => reached(self.client.list_queues().max_results(1).send().await),
        }
    }

    /// An SQS queue URL: `http(s)://host/account/name`.
    fn check_target(&self, target: &str) -> Result<(), String> {
        let url = url::Url::parse(target).map_err(|err| format!("is not a URL: {err}"))?;
        let path: Vec<&str> = url.path().split('/').filter(|s| !s.is_empty()).collect();
        if !matches!(url.scheme(), "http" | "https") || path.len() != 2 {
            return Err("is not an SQS queue URL (https://host/account/queue)".into());
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
            .send_message_batch()
            .queue_url(target)
            .set_entries(Some(entries))
            .send()
            .await;
        match sent {
            Ok(output) => {
                self.probe_queue.get_or_insert_with(|| target.to_string());
                let failed = output.failed().iter().map(|failure| EntryFailure {
                    id: failure.id(),
                    sender_fault: failure.sender_fault(),
                    code: failure.code(),
                    message: failure.message().unwrap_or(""),
                });
                let succeeded = output.successful().iter().map(|entry| entry.id());
                Ok(entry_outcomes("SQS", messages.len(), succeeded, failed))
            }
            Err(err) => Ok(vec![call_failed("SQS", target, err)?; messages.len()]),
        }
    }
}

/// The batch entry `index` for `message`.
fn entry(index: usize, message: &Message<'_>) -> Result<SendMessageBatchRequestEntry> {
    let mut entry = SendMessageBatchRequestEntry::builder()
        .id(index.to_string())
        .message_body(message.body)
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
    Error::with_source(ErrorKind::Internal, "building an SQS request", err)
}
