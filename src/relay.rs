//! The relay loop: take a batch from the source, publish it, acknowledge what the sink confirmed.

use crate::config::RelayConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Event, Position, Rejected};
use crate::metrics::{self, SinkLabels};
use crate::retry::{Backoff, sleep_or_shutdown};
use crate::sink::{Outcome, Sink};
use crate::source::Source;
use tokio_util::sync::CancellationToken;

/// Relays until `shutdown` is cancelled (returns `Ok`) or an error no retry can fix (returns it;
/// e.g. a poisoned log after a failed fsync: nothing more is acknowledged, and `outboxd run`
/// logs the error and exits non-zero).
///
/// Shutdown stops claiming at once. A batch already being published is finished and
/// acknowledged; one waiting to retry a failed publish is abandoned unacknowledged, so its
/// events stay pending and are delivered by the next run. Nothing is lost or marked twice.
pub async fn run<S: Source, K: Sink>(
    source: &mut S,
    sink: &mut K,
    config: &RelayConfig,
    shutdown: CancellationToken,
) -> Result<()> {
    // A previous run may have stored a batch and crashed before acknowledging it: acknowledge
    // what the sink already holds first, so that batch is not fetched and stored again.
    let stored = sink.already_delivered();
    if !stored.is_empty() {
        let acked = source.ack_delivered(&stored, &shutdown).await?;
        if acked > 0 {
            tracing::info!(
                events = acked,
                sink = sink.name(),
                "acknowledged events the sink already held from a previous run"
            );
        }
    }
    loop {
        // The source's wait is cancel-safe and itself watches `shutdown`.
        let Some(batch) = source.next_batch(&shutdown).await? else {
            break;
        };
        if !batch.rejected.is_empty() {
            for bad in &batch.rejected {
                tracing::error!(id = %bad.id, position = %bad.position, reason = %bad.reason,
                    "outbox row cannot be delivered; marked failed");
            }
            source.reject(&batch.rejected, &shutdown).await?;
            metrics::get()
                .dead_letters
                .inc_by(batch.rejected.len() as u64);
        }
        if batch.events.is_empty() {
            continue;
        }
        let Some(outcomes) = publish(sink, &batch.events, config, &shutdown).await? else {
            tracing::info!(
                events = batch.events.len(),
                "shutdown during retries; batch left pending"
            );
            break;
        };
        metrics::get().observe_published(sink.name(), &batch.events, &outcomes);
        let split = split(&batch.events, outcomes);
        for bad in &split.refused {
            tracing::error!(id = %bad.id, position = %bad.position, reason = %bad.reason,
                sink = sink.name(), "sink refused event; marked failed");
        }
        for failed in &split.retry {
            tracing::warn!(id = %failed.id, position = %failed.position, reason = %failed.reason,
                sink = sink.name(), "event failed; its aggregate waits to retry");
        }
        if !split.retry.is_empty() {
            metrics::get()
                .retries
                .get_or_create(&SinkLabels { sink: sink.name() })
                .inc_by(split.retry.len() as u64);
        }
        source.reject(&split.refused, &shutdown).await?;
        source.retry_later(&split.retry, &shutdown).await?;
        source.ack(&split.delivered, &shutdown).await?;
        tracing::debug!(
            delivered = split.delivered.len(),
            refused = split.refused.len(),
            retry = split.retry.len(),
            "batch relayed"
        );
    }
    tracing::info!("relay stopped");
    Ok(())
}

/// Publishes one batch, retrying transient failures with backoff. Returns `None` if shutdown came
/// during a retry wait.
async fn publish<K: Sink>(
    sink: &mut K,
    events: &[Event],
    config: &RelayConfig,
    shutdown: &CancellationToken,
) -> Result<Option<Vec<Outcome>>> {
    let metrics = metrics::get();
    let mut backoff = Backoff::from_config(config);
    metrics.in_flight.set(events.len() as i64);
    let result = loop {
        let timeout = std::time::Duration::from_millis(config.publish_timeout_ms);
        let attempt = match tokio::time::timeout(timeout, sink.publish(events)).await {
            Ok(result) => result,
            Err(_) => Err(Error::new(
                ErrorKind::SinkUnavailable,
                format!(
                    "publish did not complete within relay.publish_timeout_ms ({} ms)",
                    config.publish_timeout_ms
                ),
            )),
        };
        match attempt {
            Ok(outcomes) => {
                metrics.sink_up.set(1);
                break Ok(Some(outcomes));
            }
            Err(err) if err.is_retryable() => {
                metrics.sink_up.set(0);
                metrics
                    .retries
                    .get_or_create(&SinkLabels { sink: sink.name() })
                    .inc();
                let delay = backoff.next_delay();
                tracing::warn!(error = %err.chain(), sink = sink.name(),
                    retry_in_ms = delay.as_millis() as u64, "publish failed; retrying");
                if !sleep_or_shutdown(delay, shutdown).await {
                    break Ok(None);
                }
            }
            Err(err) => {
                metrics.sink_up.set(0);
                break Err(err);
            }
        }
    };
    metrics.in_flight.set(0);
    result
}

/// A batch split by outcome.
#[derive(Debug, Default)]
struct Split {
    /// Positions to acknowledge.
    delivered: Vec<Position>,
    /// Events refused for good.
    refused: Vec<Rejected>,
    /// Events to try again later.
    retry: Vec<Rejected>,
}

/// Splits a batch by outcome.
fn split(events: &[Event], outcomes: Vec<Outcome>) -> Split {
    let mut split = Split::default();
    for (event, outcome) in events.iter().zip(outcomes) {
        let failed = |reason| Rejected {
            position: event.position,
            id: event.id.clone(),
            reason,
        };
        match outcome {
            Outcome::Delivered => split.delivered.push(event.position),
            Outcome::Refused(reason) => split.refused.push(failed(reason)),
            Outcome::Retry(reason) => split.retry.push(failed(reason)),
            Outcome::Deferred => {}
        }
    }
    split
}
