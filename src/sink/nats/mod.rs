//! NATS JetStream as a sink: one message per event on a subject from a template, counted as
//! delivered only once JetStream's publish acknowledgement (stream and sequence) arrived.
//!
//! Every message carries `Nats-Msg-Id` = the event id, so JetStream drops a repeat stored
//! within the stream's duplicate window (120 s by default): a batch sent again after a relay
//! crash or a lost acknowledgement stores nothing twice there.
//!
//! Publishes are pipelined: up to `max_in_flight` unacknowledged and at most one per key, so
//! an event refused by the stream (full with `discard: new`, too large) can never be overtaken
//! by a later event of its key. A message over the server's `max_payload` is refused with the
//! limit; the stream's limits push back (busy) without making dead letters. A timeout, a lost
//! connection or "no responders" (no stream for the subject, JetStream down) fail the batch
//! with a retryable error; the client reconnects by itself and the relay publishes the batch
//! again, the duplicate window absorbing what had in fact been stored.

mod config;
mod connection;
mod message;
mod stream;
mod subject;

pub use self::config::NatsSinkConfig;
pub use self::subject::SubjectTemplate;

use self::stream::StreamFacts;
use super::{OpenSink, Outcome, Sink, SinkContext};
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use async_nats::Client;
use async_nats::connection::State;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::{Context, ErrorCode};
use std::collections::{HashSet, VecDeque};
use std::future::IntoFuture;
use std::time::Duration;
use tokio::sync::watch;

/// How long a probe waits for the stream's info.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes events to a JetStream stream.
pub struct NatsSink {
    /// The sink's settings.
    config: NatsSinkConfig,
    /// The parsed subject template.
    subject: SubjectTemplate,
    /// The connection, shared by every fork (the client multiplexes and reconnects).
    client: Client,
    /// How many connections the client lost so far; changes the moment one is lost.
    drops: watch::Receiver<u64>,
    /// This handle's JetStream context (its own bound on acknowledgements in flight).
    js: Context,
    /// The stream checked at start-up.
    stream: StreamFacts,
    /// Whether the last batch or probe went through.
    healthy: bool,
}

impl OpenSink for NatsSink {
    type Config = NatsSinkConfig;

    async fn open(config: &NatsSinkConfig, context: &SinkContext) -> Result<Self> {
        NatsSink::open(config, context).await
    }

    fn validate(config: &NatsSinkConfig) -> Result<()> {
        config.validate()
    }

    fn check_destination(destination: &str) -> std::result::Result<(), String> {
        SubjectTemplate::parse(destination).map(|_| ())
    }
}

impl NatsSink {
    /// Connects and checks (or creates) the stream. Failing here is final: a wrong password, a
    /// missing stream or one that does not cover the subjects stop start-up with an error
    /// naming them.
    pub async fn open(config: &NatsSinkConfig, context: &SinkContext) -> Result<Self> {
        let subject = SubjectTemplate::parse(&config.subject)
            .map_err(|reason| Error::config("sink.nats.subject", reason))?
            .for_outbox(&context.outbox);
        let (client, drops) = connection::connect(config).await?;
        let js = Self::context(config, &client);
        let stream = stream::ensure(&js, config, &subject).await?;
        tracing::info!(
            url = %config.url,
            stream = %stream.name,
            subject = %config.subject,
            duplicate_window_s = stream.duplicate_window.as_secs(),
            max_payload = client.server_info().max_payload,
            "connected to NATS JetStream"
        );
        Ok(NatsSink {
            config: config.clone(),
            subject,
            client,
            drops,
            js,
            stream,
            healthy: true,
        })
    }

    /// A JetStream context of the sink's settings on `client`.
    fn context(config: &NatsSinkConfig, client: &Client) -> Context {
        connection::jetstream(
            client.clone(),
            Duration::from_millis(config.ack_timeout_ms),
            config.max_in_flight,
        )
    }

    /// Publishes `events`, at most one unacknowledged per key, and collects the
    /// acknowledgements.
    async fn publish_batch(&mut self, events: &[Event]) -> Result<Vec<Outcome>> {
        // Publishing while disconnected would only queue messages in the client until their
        // acknowledgements time out: fail at once, and let the relay retry after a backoff.
        if self.client.connection_state() != State::Connected {
            return Err(Error::new(
                ErrorKind::SinkUnavailable,
                format!("not connected to NATS at {}", self.config.url),
            ));
        }
        let mut drops = self.drops.clone();
        drops.mark_unchanged();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; events.len()];
        let mut in_flight: VecDeque<(usize, PublishAckFuture)> = VecDeque::new();
        let mut keys: HashSet<&str> = HashSet::new();
        let mut stopped: HashSet<&str> = HashSet::new();
        let cloudevents = self
            .config
            .cloudevents
            .then_some(self.config.cloudevents_source.as_str());
        for (index, event) in events.iter().enumerate() {
            while in_flight.len() >= self.config.max_in_flight || keys.contains(event.key.as_str())
            {
                let Some((done, ack)) = in_flight.pop_front() else {
                    break;
                };
                keys.remove(events[done].key.as_str());
                let outcome = settle(&events[done], ack, &mut drops).await?;
                if outcome != Outcome::Delivered {
                    stopped.insert(events[done].key.as_str());
                }
                outcomes[done] = Some(outcome);
            }
            if stopped.contains(event.key.as_str()) {
                outcomes[index] = Some(Outcome::Deferred);
                continue;
            }
            let subject = self.subject.render(event);
            let headers = match subject::unpublishable(&subject) {
                Some(reason) => Err(reason),
                None => message::headers(event, cloudevents),
            };
            let headers = match headers {
                Ok(headers) => headers,
                Err(reason) => {
                    stopped.insert(event.key.as_str());
                    outcomes[index] = Some(Outcome::Refused(reason));
                    continue;
                }
            };
            let payload = bytes::Bytes::copy_from_slice(event.payload.get().as_bytes());
            match self
                .js
                .publish_with_headers(subject, headers, payload)
                .await
            {
                Ok(ack) => {
                    in_flight.push_back((index, ack));
                    keys.insert(event.key.as_str());
                }
                Err(err) if err.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    stopped.insert(event.key.as_str());
                    outcomes[index] = Some(Outcome::Refused(format!(
                        "NATS cannot carry the message for subject \"{}\": {} (the server's \
                         max_payload, headers included)",
                        self.subject.render(event),
                        source_text(&err)
                    )));
                }
                Err(err) => {
                    return Err(Error::with_source(
                        ErrorKind::SinkUnavailable,
                        format!(
                            "publishing event {} to NATS subject \"{}\"",
                            event.id,
                            self.subject.render(event)
                        ),
                        err,
                    ));
                }
            }
        }
        for (done, ack) in in_flight {
            outcomes[done] = Some(settle(&events[done], ack, &mut drops).await?);
        }
        outcomes
            .into_iter()
            .map(|outcome| {
                outcome.ok_or_else(|| Error::new(ErrorKind::Internal, "event left unacknowledged"))
            })
            .collect()
    }
}

impl Sink for NatsSink {
    async fn publish(&mut self, events: &[Event]) -> Result<Vec<Outcome>> {
        let result = self.publish_batch(events).await;
        self.healthy = result.is_ok();
        if result.is_err() {
            // Acknowledgements this batch abandoned hold their permits until they time out; a
            // fresh context lets the retry publish at once.
            self.js = Self::context(&self.config, &self.client);
        }
        result
    }

    /// Shares the connection (NATS multiplexes; one socket serves every lane) with a JetStream
    /// context of its own, so a lane never waits on another lane's acknowledgements.
    async fn fork(&self) -> Result<Self> {
        Ok(NatsSink {
            config: self.config.clone(),
            subject: self.subject.clone(),
            client: self.client.clone(),
            drops: self.drops.clone(),
            js: Self::context(&self.config, &self.client),
            stream: self.stream.clone(),
            healthy: self.healthy,
        })
    }

    /// A handle on the same connection publishing to the `destination` subject template,
    /// which a stream must cover (checked at once, as at open; created with
    /// `sink.nats.create_stream`).
    async fn redirect(&self, destination: &str) -> Result<Self> {
        let subject = SubjectTemplate::parse(destination)
            .map_err(|reason| Error::config(super::DEAD_LETTER_KEY, reason))?
            .for_outbox(self.subject.outbox());
        let mut sink = self.fork().await?;
        sink.stream = stream::ensure(&sink.js, &self.config, &subject)
            .await
            .map_err(|err| match err.kind() {
                ErrorKind::Config => Error::config(super::DEAD_LETTER_KEY, err.chain()),
                _ => err,
            })?;
        sink.subject = subject;
        Ok(sink)
    }

    fn name(&self) -> &'static str {
        "nats"
    }

    /// Whether the connection is up and the last batch or probe went through; reads cached
    /// state only.
    fn is_healthy(&self) -> bool {
        self.healthy && self.client.connection_state() == State::Connected
    }

    /// Asks JetStream for the stream's info (bounded), so readiness also follows JetStream
    /// and the stream, not just the socket.
    async fn probe(&mut self) -> bool {
        let ok = self.client.connection_state() == State::Connected
            && matches!(
                tokio::time::timeout(PROBE_TIMEOUT, self.js.get_stream(&self.stream.name)).await,
                Ok(Ok(_))
            );
        self.healthy = ok;
        ok
    }
}

/// Waits for one acknowledgement: an ack (a first store or a dropped duplicate) is delivered;
/// a message over the stream's size limits is refused; the stream's other limits (full with
/// `discard: new`, no storage) push back; anything else JetStream says counts an attempt. No
/// answer, no responders or a lost connection (seen as a change of `drops`, the moment it
/// happens) fail the batch.
async fn settle(
    event: &Event,
    ack: PublishAckFuture,
    drops: &mut watch::Receiver<u64>,
) -> Result<Outcome> {
    let answer = tokio::select! {
        answer = ack.into_future() => answer,
        _ = drops.changed() => {
            return Err(Error::new(
                ErrorKind::SinkUnavailable,
                format!(
                    "the connection to NATS was lost before JetStream acknowledged event {}",
                    event.id
                ),
            ));
        }
    };
    let err = match answer {
        Ok(_) => return Ok(Outcome::Delivered),
        Err(err) => err,
    };
    let code = std::error::Error::source(&err)
        .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
        .map(|js| js.error_code());
    match (err.kind(), code) {
        (PublishErrorKind::Other, Some(code)) => Ok(classify(code, &source_text(&err))),
        (PublishErrorKind::StreamNotFound, _) => Err(Error::new(
            ErrorKind::SinkUnavailable,
            format!(
                "no JetStream stream answered for event {} (no responders): the stream is \
                 missing or JetStream is down",
                event.id
            ),
        )),
        _ => Err(Error::with_source(
            ErrorKind::SinkUnavailable,
            format!(
                "waiting for JetStream's acknowledgement of event {}",
                event.id
            ),
            err,
        )),
    }
}

/// What a JetStream error answering a publish means for the event.
fn classify(code: ErrorCode, text: &str) -> Outcome {
    match code {
        ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM | ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM => {
            Outcome::Refused(format!(
                "JetStream refused the message: {text} (the stream's max_msg_size)"
            ))
        }
        ErrorCode::STREAM_STORE_FAILED
        | ErrorCode::INSUFFICIENT_RESOURCES
        | ErrorCode::STORAGE_RESOURCES_EXCEEDED
        | ErrorCode::MEMORY_RESOURCES_EXCEEDED
        | ErrorCode::ACCOUNT_RESOURCES_EXCEEDED
        | ErrorCode::STREAM_MAX_STREAM_BYTES_EXCEEDED => {
            Outcome::Busy(format!("JetStream cannot store the message now: {text}"))
        }
        _ => Outcome::Retry(format!("JetStream refused the message: {text}")),
    }
}

/// The error's own text and its cause's, for a reason.
fn source_text(err: &dyn std::error::Error) -> String {
    match err.source() {
        Some(source) => format!("{err}: {source}"),
        None => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_limits_push_back_and_size_limits_refuse() {
        assert!(matches!(
            classify(ErrorCode::STREAM_STORE_FAILED, "maximum messages exceeded"),
            Outcome::Busy(reason) if reason.contains("maximum messages exceeded")
        ));
        assert!(matches!(
            classify(ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM, "message size exceeds maximum allowed"),
            Outcome::Refused(reason) if reason.contains("max_msg_size")
        ));
        assert!(matches!(
            classify(ErrorCode::STREAM_SEALED, "sealed"),
            Outcome::Retry(_)
        ));
    }
}
