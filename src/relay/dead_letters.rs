//! The dead-letter destination (`relay.dead_letter_topic`): every dead letter is also published,
//! with its reason in the header `outboxd-dead-letter-reason`, through one handle on the same
//! sink whose destination the template replaces ([`Sink::redirect`]).
//!
//! # Order and failure
//! A refusal is published here *before* the source records it, so a crash in between publishes
//! it again (duplicates in the dead-letter destination are possible; losses are not). An event
//! the polling source turns into a dead letter after `relay.max_attempts` is known only once
//! the source recorded it, so it is published after: a crash in between leaves it in the outbox
//! table alone. Transient failures are retried with the relay's backoff until shutdown; a dead
//! letter the destination refuses for good (often for the very reason it is one: too large) is
//! logged with its id and reason, counted, and left to the durable record.

use super::settled::Settled;
use crate::config::RelayConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::metrics;
use crate::retry::{Backoff, sleep_or_shutdown};
use crate::sink::headers::dead_letter;
use crate::sink::{Outcome, Sink};
use crate::source::{Exhausted, Leadership};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The handle dead letters are published through.
pub(super) struct DeadLetters<K> {
    /// The sink, redirected to `relay.dead_letter_topic`.
    sink: K,
    /// Retry timing, attempts and the publish timeout.
    config: Arc<RelayConfig>,
    /// What is confirmed before each publish, if the source elects a leader: a deposed relay
    /// publishes no dead letters its successor will publish anyway.
    leadership: Option<Leadership>,
}

/// How a round of dead letters went.
#[derive(Debug, PartialEq, Eq)]
enum Published {
    /// Each is published, or refused for good by the destination (logged and counted).
    Settled,
    /// Shutdown came, or this relay no longer leads, before all were.
    Interrupted,
}

impl<K: Sink> DeadLetters<K> {
    /// The handle for `relay.dead_letter_topic`, if set, redirected from `sink`. (Not an
    /// `async fn`: holding `&K` across its await would ask sinks to be `Sync`; the redirect's
    /// own future is `Send` by contract.)
    pub(super) fn open<'a>(
        sink: &'a K,
        config: &'a Arc<RelayConfig>,
        leadership: Option<Leadership>,
    ) -> impl Future<Output = Result<Option<Self>>> + Send + 'a {
        let destination = config.dead_letter_topic.as_deref();
        let redirected = destination.map(|destination| sink.redirect(destination));
        async move {
            let (Some(destination), Some(redirected)) = (destination, redirected) else {
                return Ok(None);
            };
            // Boxed: every sink's future inline made the relay's too deeply nested to lay out.
            let sink = Box::pin(redirected).await?;
            tracing::info!(
                destination,
                sink = sink.name(),
                "dead letters are also published to relay.dead_letter_topic"
            );
            Ok(Some(DeadLetters {
                sink,
                config: config.clone(),
                leadership,
            }))
        }
    }

    /// Publishes the round's refusals, before the source records them. If shutdown comes
    /// first, the refusals and the events parked behind them are handed back unsettled
    /// instead: the source is told nothing of them, and the next run does it all again.
    pub(super) async fn before_refusing(
        &mut self,
        settled: &mut Settled,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let letters = settled
            .refused
            .iter()
            .map(|refusal| Letter::new(&refusal.event, &refusal.rejected.reason, None))
            .collect();
        if Box::pin(self.publish(letters, shutdown)).await? == Published::Interrupted {
            let refused = std::mem::take(&mut settled.refused);
            let parked = std::mem::take(&mut settled.parked);
            let positions = refused.iter().map(|refusal| refusal.event.position);
            settled.released.extend(positions);
            settled
                .released
                .extend(parked.iter().map(|event| event.position));
        }
        Ok(())
    }

    /// Publishes the events the source turned into dead letters when it recorded their last
    /// failed attempt (`exhausted`, out of the round's `settled.retry`).
    pub(super) async fn after_exhausting(
        &mut self,
        settled: &Settled,
        exhausted: &[Exhausted],
        shutdown: &CancellationToken,
    ) -> Result<()> {
        if exhausted.is_empty() {
            return Ok(());
        }
        let attempts: HashMap<_, _> = exhausted.iter().map(|e| (e.position, e.attempts)).collect();
        let letters: Vec<Letter> = settled
            .retry
            .iter()
            .zip(&settled.retried)
            .filter_map(|(failed, event)| {
                let attempts = *attempts.get(&failed.position)?;
                let reason = crate::dlq::exhausted(attempts, &failed.reason);
                Some(Letter::new(event, &reason, Some(attempts)))
            })
            .collect();
        let ids: Vec<String> = letters.iter().map(|l| l.event.id.clone()).collect();
        if Box::pin(self.publish(letters, shutdown)).await? == Published::Interrupted {
            tracing::warn!(
                ?ids,
                "stopping before these dead letters reached \
                relay.dead_letter_topic; they are in the outbox table only"
            );
        }
        Ok(())
    }

    /// Publishes `letters` until each is published or refused for good. An error no retry can
    /// fix (a poisoned log) is returned, as a lane's would be.
    async fn publish(
        &mut self,
        mut letters: Vec<Letter>,
        shutdown: &CancellationToken,
    ) -> Result<Published> {
        let metrics = metrics::get();
        let mut backoff = Backoff::from_config(&self.config);
        let mut attempts: HashMap<String, i32> = HashMap::new();
        while !letters.is_empty() {
            if !self.still_leads().await {
                return Ok(Published::Interrupted);
            }
            let events: Vec<Event> = letters.iter().map(|l| l.event.clone()).collect();
            let outcomes = match self.attempt(&events).await {
                Ok(outcomes) => outcomes,
                Err(err) if err.is_retryable() => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err.chain(), sink = self.sink.name(),
                        retry_in_ms = delay.as_millis() as u64,
                        "publishing dead letters failed; retrying");
                    if !sleep_or_shutdown(delay, shutdown).await {
                        return Ok(Published::Interrupted);
                    }
                    continue;
                }
                Err(err) => return Err(err),
            };
            let mut again = Vec::new();
            for (letter, outcome) in letters.into_iter().zip(outcomes) {
                match outcome {
                    Outcome::Delivered => {
                        metrics.dead_letters_published.inc();
                    }
                    Outcome::Refused(why) => refused(&letter, &why),
                    Outcome::Retry(why) => {
                        let tries = attempts.entry(letter.event.id.clone()).or_default();
                        *tries += 1;
                        match *tries >= self.config.max_attempts {
                            true => refused(&letter, &why),
                            false => again.push(letter),
                        }
                    }
                    Outcome::Busy(_) | Outcome::Deferred => again.push(letter),
                }
            }
            letters = again;
            if !letters.is_empty() && !sleep_or_shutdown(backoff.next_delay(), shutdown).await {
                return Ok(Published::Interrupted);
            }
        }
        Ok(Published::Settled)
    }

    /// One publish, bounded by `relay.publish_timeout_ms`.
    async fn attempt(&mut self, letters: &[Event]) -> Result<Vec<Outcome>> {
        let timeout = Duration::from_millis(self.config.publish_timeout_ms);
        match tokio::time::timeout(timeout, self.sink.publish(letters)).await {
            Ok(result) => result,
            Err(_) => Err(Error::new(
                ErrorKind::SinkUnavailable,
                "publishing dead letters did not complete within relay.publish_timeout_ms",
            )),
        }
    }

    /// Whether this relay still leads (always, when the source elects none). (`&mut`: a
    /// shared borrow of the sink held across the await would ask sinks to be `Sync`.)
    async fn still_leads(&mut self) -> bool {
        match &self.leadership {
            Some(leadership) => leadership.confirm().await,
            None => true,
        }
    }
}

/// A dead letter on its way, with its reason for the logs.
struct Letter {
    /// The event with the dead-letter headers added.
    event: Event,
    /// Why it is a dead letter.
    reason: String,
}

impl Letter {
    /// `event` as a dead letter for `reason`.
    fn new(event: &Event, reason: &str, attempts: Option<i32>) -> Self {
        Letter {
            event: dead_letter(event, reason, attempts),
            reason: reason.to_owned(),
        }
    }
}

/// Logs and counts a dead letter the destination refused for good.
fn refused(letter: &Letter, why: &str) {
    let event = &letter.event;
    tracing::error!(id = %event.id, position = %event.position, reason = %letter.reason,
        error = why, "relay.dead_letter_topic refused a dead letter; it is kept in the outbox \
        table or dead-letter store only");
    metrics::get().dead_letter_publish_failures.inc();
}
