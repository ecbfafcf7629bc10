//! RabbitMQ as a sink: events published persistent and `mandatory` to one exchange on a channel
//! in confirm mode; an event counts as delivered only once the broker has acked it.
//!
//! Publishes are pipelined: a batch is sent without waiting, up to `max_in_flight` unconfirmed
//! and at most one per aggregate, and the confirms are collected as they come. A message the
//! broker cannot route to any queue comes back (`basic.return`) and is refused with the reason,
//! so it is marked failed instead of vanishing. A message the broker cannot take at all (see
//! [`limits`]: a content header over `frame_max`, a body over `max_message_size`, an over-long
//! short string) is refused before it is sent; and if the broker still closes the channel or
//! connection over one message (`PRECONDITION_FAILED`, `FRAME_ERROR`), the batch is sent again
//! one message at a time, so the message that closes the link is found and refused with the
//! broker's reason instead of jamming its lane. A nacked message is reported busy (the relay's lane sends it again after a
//! backoff, in order; the messages acked around it stay delivered, so a small full queue cannot
//! livelock on re-sent duplicates). A confirm timeout or a lost connection fails the whole batch
//! with a retryable error: the relay publishes it again on a fresh connection, so nothing
//! unconfirmed is lost (consumers may see duplicates), and no event is reported delivered while
//! an earlier event of its aggregate is not.

mod config;
mod connection;
mod limits;
mod message;
mod routing;

pub use self::config::{AmqpSinkConfig, ExchangeType};
pub use self::routing::RoutingKeyTemplate;

use self::connection::{Link, connect};
use self::limits::{ClosedOverMessage, Limits, refused_message};
use super::{OpenSink, Outcome, Sink, SinkContext};
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Confirmation, PublisherConfirm};
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

/// Publishes events to a RabbitMQ exchange with publisher confirms.
pub struct AmqpSink {
    /// The sink's settings.
    config: AmqpSinkConfig,
    /// The parsed `routing_key` template.
    routing_key: RoutingKeyTemplate,
    /// How long one confirm may take.
    confirm_timeout: Duration,
    /// The open connection and channel; `None` after a failure until the next publish
    /// reconnects.
    link: Option<Link>,
    /// Whether a link of this handle was lost (so the next connect is a reconnection, worth
    /// a log line); a fresh handle's first connect is not.
    lost: bool,
    /// Whether the last batch failed on a close that one of its messages caused: the next batch
    /// is sent one message at a time, so the message that closes the link is found and refused.
    suspect: bool,
}

impl OpenSink for AmqpSink {
    type Config = AmqpSinkConfig;

    async fn open(config: &AmqpSinkConfig, context: &SinkContext) -> Result<Self> {
        AmqpSink::open(config, context).await
    }

    fn validate(config: &AmqpSinkConfig) -> Result<()> {
        config.validate()
    }
}

impl AmqpSink {
    /// Connects and checks the exchange. Failing here is final: a refusal (credentials, vhost,
    /// missing exchange) is a configuration error, and an unreachable broker stops start-up too,
    /// so a misconfigured relay says so at once instead of retrying forever.
    pub async fn open(config: &AmqpSinkConfig, context: &SinkContext) -> Result<Self> {
        let routing_key = RoutingKeyTemplate::parse(&config.routing_key)
            .map_err(|reason| Error::config("sink.amqp.routing_key", reason))?
            .for_outbox(&context.outbox);
        let link = connect(config, true).await?;
        tracing::info!(url = %config.url, exchange = %config.exchange, "connected to RabbitMQ");
        Ok(AmqpSink {
            config: config.clone(),
            routing_key,
            confirm_timeout: Duration::from_millis(config.confirm_timeout_ms),
            link: Some(link),
            lost: false,
            suspect: false,
        })
    }

    /// The open link, reconnecting first if the last one failed or was closed by the broker.
    async fn link(&mut self) -> Result<&Link> {
        if !Sink::is_healthy(self) {
            // Dropping the old link closes what is left of it.
            self.lost |= self.link.take().is_some();
            let link = connect(&self.config, false).await?;
            if std::mem::take(&mut self.lost) {
                tracing::info!(url = %self.config.url, "reconnected to RabbitMQ");
            } else {
                tracing::debug!(url = %self.config.url, "opened a RabbitMQ connection for a lane");
            }
            self.link = Some(link);
        }
        self.link
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::Internal, "RabbitMQ link missing after connect"))
    }

    /// The open link's channel and limits, reconnecting first if needed.
    async fn channel(&mut self) -> Result<(lapin::Channel, Limits)> {
        let max_message_size = self.config.max_message_size;
        let link = self.link().await?;
        let limits = Limits {
            frame_max: link.connection.configuration().frame_max(),
            max_message_size,
        };
        Ok((link.channel.clone(), limits))
    }

    /// The routing key and properties of `event`, or why the broker would refuse it.
    fn prepare(&self, event: &Event, limits: &Limits) -> Result<(String, BasicProperties), String> {
        let routing_key = self.routing_key.render(event);
        if let Some(reason) = message::unsendable(event, &routing_key) {
            return Err(reason);
        }
        let properties = message::properties(event)?;
        match limits.refusal(&properties, event.payload.get().len()) {
            Some(reason) => Err(reason),
            None => Ok((routing_key, properties)),
        }
    }

    /// Publishes `events` and collects their confirms; any error leaves the link to be
    /// replaced.
    async fn publish_batch(&mut self, events: &[Event]) -> Result<Vec<Outcome>> {
        let exchange = self.config.exchange.clone();
        let max_in_flight = self.config.max_in_flight;
        let timeout = self.confirm_timeout;
        let (channel, limits) = self.channel().await?;
        let mut outcomes: Vec<Option<Outcome>> = vec![None; events.len()];
        let mut in_flight: VecDeque<(usize, Sent<'_>)> = VecDeque::new();
        let mut aggregates: HashSet<&str> = HashSet::new();
        let mut stopped: HashSet<&str> = HashSet::new();
        for (index, event) in events.iter().enumerate() {
            // At most one unconfirmed message per aggregate: a nack does not stop the broker
            // from taking the messages sent after it, so a second one in flight could reach the
            // queue ahead of its rejected predecessor. Other aggregates stay pipelined.
            while in_flight.len() >= max_in_flight || aggregates.contains(event.key.as_str()) {
                let Some((done, sent)) = in_flight.pop_front() else {
                    break;
                };
                aggregates.remove(events[done].key.as_str());
                let confirm = sent.confirm(&events[done], timeout).await?;
                let outcome = settle(&events[done], confirm, timeout, &exchange).await?;
                if outcome != Outcome::Delivered {
                    stopped.insert(events[done].key.as_str());
                }
                outcomes[done] = Some(outcome);
            }
            // An earlier event of this aggregate was refused: do not let this one overtake it.
            if stopped.contains(event.key.as_str()) {
                outcomes[index] = Some(Outcome::Deferred);
                continue;
            }
            let (routing_key, properties) = match self.prepare(event, &limits) {
                Ok(prepared) => prepared,
                Err(reason) => {
                    stopped.insert(event.key.as_str());
                    outcomes[index] = Some(Outcome::Refused(reason));
                    continue;
                }
            };
            let send = channel.basic_publish(
                exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                event.payload.get().as_bytes(),
                properties,
            );
            in_flight.push_back((index, Sent::start(send).await));
            aggregates.insert(event.key.as_str());
        }
        for (done, sent) in in_flight {
            let confirm = sent.confirm(&events[done], timeout).await?;
            outcomes[done] = Some(settle(&events[done], confirm, timeout, &exchange).await?);
        }
        outcomes
            .into_iter()
            .map(|outcome| {
                outcome.ok_or_else(|| Error::new(ErrorKind::Internal, "event left unconfirmed"))
            })
            .collect()
    }

    /// Publishes `events` one at a time, each confirmed before the next is sent, so a close of
    /// the link is known to be over the message just sent: that message is refused with the
    /// broker's reason, and the rest go on over a fresh link.
    async fn publish_singly(&mut self, events: &[Event]) -> Result<Vec<Outcome>> {
        let mut outcomes = Vec::with_capacity(events.len());
        let mut stopped: HashSet<&str> = HashSet::new();
        for event in events {
            let aggregate = event.key.as_str();
            if stopped.contains(aggregate) {
                outcomes.push(Outcome::Deferred);
                continue;
            }
            // A failure to connect is an outage, whatever its code: only a close while this
            // message is published or confirmed is its refusal (see `message_refusal`).
            let outcome = match self.publish_one(event).await {
                Ok(outcome) => outcome,
                Err(err) => {
                    let Some(reason) = message_refusal(&err) else {
                        return Err(err);
                    };
                    tracing::warn!(event = %event.id, reason, "RabbitMQ closed the link over one message; refusing it");
                    // The link is closed; the next message opens a fresh one.
                    self.link = None;
                    Outcome::Refused(reason)
                }
            };
            if outcome != Outcome::Delivered {
                stopped.insert(aggregate);
            }
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// Publishes one event and waits for its confirm.
    async fn publish_one(&mut self, event: &Event) -> Result<Outcome> {
        let timeout = self.confirm_timeout;
        let (channel, limits) = self.channel().await?;
        let (routing_key, properties) = match self.prepare(event, &limits) {
            Ok(prepared) => prepared,
            Err(reason) => return Ok(Outcome::Refused(reason)),
        };
        let send = channel.basic_publish(
            self.config.exchange.as_str().into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            event.payload.get().as_bytes(),
            properties,
        );
        let confirm = Sent::start(send).await.confirm(event, timeout).await?;
        settle(event, confirm, timeout, &self.config.exchange).await
    }
}

impl Sink for AmqpSink {
    async fn publish(&mut self, events: &[Event]) -> Result<Vec<Outcome>> {
        let result = if self.suspect {
            self.publish_singly(events).await
        } else {
            self.publish_batch(events).await
        };
        match &result {
            Ok(_) => self.suspect = false,
            Err(err) => {
                // Confirms still owed on this channel can no longer be matched to a publish
                // call; a fresh connection on the retry starts clean.
                self.lost |= self.link.take().is_some();
                if let Some(reason) = message_refusal(err) {
                    tracing::warn!(
                        reason,
                        "RabbitMQ closed the link over a message of the batch; sending it again \
                         one message at a time to find that message"
                    );
                    self.suspect = true;
                }
            }
        }
        result
    }

    /// A handle with a connection of its own (confirms are per channel, and a lane must not
    /// wait behind another lane's unconfirmed messages), opened by its first publish or probe:
    /// a broker that drops just as the relay starts is retried like any outage, not fatal.
    async fn fork(&self) -> Result<Self> {
        Ok(AmqpSink {
            config: self.config.clone(),
            routing_key: self.routing_key.clone(),
            confirm_timeout: self.confirm_timeout,
            link: None,
            lost: false,
            suspect: false,
        })
    }

    /// A handle on the same exchange publishing under the `destination` routing-key template.
    async fn redirect(&self, destination: &str) -> Result<Self> {
        let routing_key = RoutingKeyTemplate::parse(destination)
            .map_err(|reason| Error::config(super::DEAD_LETTER_KEY, reason))?
            .for_outbox(self.routing_key.outbox());
        let mut sink = self.fork().await?;
        sink.routing_key = routing_key;
        Ok(sink)
    }

    fn name(&self) -> &'static str {
        "amqp"
    }

    /// Whether the connection and channel are open right now; reads cached state only.
    fn is_healthy(&self) -> bool {
        self.link.as_ref().is_some_and(Link::is_open)
    }

    /// Reconnects if the link is down (bounded by the confirm timeout).
    async fn probe(&mut self) -> bool {
        let timeout = self.confirm_timeout;
        matches!(tokio::time::timeout(timeout, self.link()).await, Ok(Ok(_)))
    }
}

/// A publish under way: its frames queued for lapin's I/O loop, either not yet written
/// (waiting would cost a round trip to that loop per message) or written, with the confirm to
/// wait for.
enum Sent<'a> {
    /// Queued, not yet written.
    Queued(Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send + 'a>>),
    /// Written; the broker's confirm is due.
    Written(PublisherConfirm),
}

impl<'a> Sent<'a> {
    /// Polls `send` once, which queues its frames (in call order, so messages go out in the
    /// order they were published), without waiting for them to be written.
    async fn start(
        send: impl Future<Output = lapin::Result<PublisherConfirm>> + Send + 'a,
    ) -> Self {
        let mut send = Box::pin(send);
        match std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await {
            Poll::Ready(Ok(confirm)) => Sent::Written(confirm),
            // Errors surface when the publish is awaited.
            Poll::Ready(Err(err)) => Sent::Queued(Box::pin(std::future::ready(Err(err)))),
            Poll::Pending => Sent::Queued(send),
        }
    }

    /// The confirm to wait for, once the frames are written. Writing blocks while the broker
    /// throttles publishers (a memory or disk alarm): bounded like a confirm, so the batch is
    /// retried rather than stuck.
    async fn confirm(self, event: &Event, timeout: Duration) -> Result<PublisherConfirm> {
        let send = match self {
            Sent::Written(confirm) => return Ok(confirm),
            Sent::Queued(send) => send,
        };
        tokio::time::timeout(timeout, send)
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::SinkUnavailable,
                    format!(
                        "RabbitMQ did not take event {} within {} ms",
                        event.id,
                        timeout.as_millis()
                    ),
                )
            })?
            .map_err(|err| unavailable("publishing to RabbitMQ", err))
    }
}

/// Waits for one confirm: an ack is delivered, an ack of a returned (unroutable) message is
/// refused with the reason, a nack is busy (tried again later, in order, as the messages
/// confirmed before it stay delivered); a timeout or a channel failure fail the batch.
async fn settle(
    event: &Event,
    confirm: PublisherConfirm,
    timeout: Duration,
    exchange: &str,
) -> Result<Outcome> {
    let confirmation = tokio::time::timeout(timeout, confirm)
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::SinkUnavailable,
                format!(
                    "RabbitMQ did not confirm event {} within {} ms",
                    event.id,
                    timeout.as_millis()
                ),
            )
        })?
        .map_err(|err| unavailable("waiting for RabbitMQ's confirm", err))?;
    match confirmation {
        Confirmation::Ack(None) => Ok(Outcome::Delivered),
        Confirmation::Ack(Some(returned)) => Ok(Outcome::Refused(format!(
            "unroutable: exchange {exchange} routing key {}: {}",
            returned.delivery.routing_key, returned.reply_text
        ))),
        Confirmation::Nack(_) => Ok(Outcome::Busy(format!(
            "RabbitMQ nacked event {} (a full queue with reject-publish, or a broker error)",
            event.id
        ))),
        Confirmation::NotRequested => Err(Error::new(
            ErrorKind::Internal,
            "RabbitMQ channel is not in confirm mode",
        )),
    }
}

/// The broker's refusal of one message behind `err`, if it is one: a close of a kind one
/// message causes while publishing (see [`refused_message`]), never one met while connecting.
fn message_refusal(err: &Error) -> Option<String> {
    let source = std::error::Error::source(err)?;
    refused_message(&source.downcast_ref::<ClosedOverMessage>()?.0)
}

/// A broker or network failure while publishing: retryable. A close one message may have
/// caused is marked as such (see [`message_refusal`]).
fn unavailable(context: &str, err: lapin::Error) -> Error {
    if refused_message(&err).is_some() {
        return Error::with_source(ErrorKind::SinkUnavailable, context, ClosedOverMessage(err));
    }
    Error::with_source(ErrorKind::SinkUnavailable, context, err)
}
