//! Retry timing: exponential backoff with a cap and full jitter, and sleeps that end on shutdown.
//!
//! The caller decides what is retryable (see [`crate::error::Error::is_retryable`]); this module
//! only decides how long to wait.

use crate::config::RelayConfig;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Successive delays for one failing operation.
///
/// The exponential sequence comes from `backon`; each delay is then drawn uniformly from
/// `0..=delay` ("full jitter"), so relays that failed together do not retry together.
pub struct Backoff {
    /// The capped exponential sequence, endless.
    steps: ExponentialBackoff,
    /// The cap, repeated once the sequence reaches it.
    max: Duration,
}

impl Backoff {
    /// Delays starting at `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let steps = ExponentialBuilder::default()
            .with_min_delay(initial)
            .with_max_delay(max)
            .with_factor(2.0)
            .without_max_times()
            .build();
        Backoff { steps, max }
    }

    /// The backoff configured for the relay.
    pub fn from_config(relay: &RelayConfig) -> Self {
        Backoff::new(
            Duration::from_millis(relay.retry_initial_ms),
            Duration::from_millis(relay.retry_max_ms),
        )
    }

    /// The next delay to wait, jittered.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.steps.next().unwrap_or(self.max);
        ceiling.mul_f64(fastrand::f64())
    }
}

/// Sleeps for `delay`; returns `false` if shutdown was requested first.
pub async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_stay_jittered_below_it() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(80));
        let delays: Vec<Duration> = (0..50).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(80)));
        assert!(delays[..2].iter().all(|d| *d <= Duration::from_millis(20)));
        let late_max = delays[10..].iter().max().unwrap();
        assert!(
            *late_max > Duration::from_millis(40),
            "jitter never reached the cap's upper half"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_ends_early_on_shutdown() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        assert!(!sleep_or_shutdown(Duration::from_secs(3600), &shutdown).await);
        assert!(sleep_or_shutdown(Duration::from_secs(1), &CancellationToken::new()).await);
    }
}
