//! librdkafka's own log lines, through `tracing` and rate-limited: with the brokers down it
//! reports every failed connection attempt, hundreds a minute, which would bury the one error
//! that says what is wrong.

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The window over which lines are counted.
const WINDOW: Duration = Duration::from_secs(30);

/// Lines logged per window; the rest are counted and reported in one line when the next window
/// opens.
const PER_WINDOW: u32 = 5;

/// The client context of outboxd's Kafka handles: routes librdkafka's logs and global errors to
/// `tracing` (target `librdkafka`), at most [`PER_WINDOW`] lines per [`WINDOW`].
#[derive(Default)]
pub struct KafkaContext {
    /// The rate limiter, shared by librdkafka's threads.
    limiter: Mutex<Limiter>,
}

/// Counts lines in the current window.
#[derive(Default)]
struct Limiter {
    /// When the current window opened; `None` before the first line.
    opened: Option<Instant>,
    /// Lines logged in the current window.
    logged: u32,
    /// Lines dropped in the current window.
    dropped: u64,
}

impl Limiter {
    /// Whether a line arriving `now` may be logged, and how many were dropped in the window
    /// that just closed (if one did).
    fn admit(&mut self, now: Instant) -> (bool, u64) {
        let mut dropped = 0;
        if self
            .opened
            .is_none_or(|opened| now.duration_since(opened) >= WINDOW)
        {
            dropped = std::mem::take(&mut self.dropped);
            self.opened = Some(now);
            self.logged = 0;
        }
        if self.logged < PER_WINDOW {
            self.logged += 1;
            (true, dropped)
        } else {
            self.dropped += 1;
            (false, dropped)
        }
    }
}

impl KafkaContext {
    /// Whether to log a line now; reports the lines dropped in the last window first.
    fn admit(&self) -> bool {
        let mut limiter = self
            .limiter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (admitted, dropped) = limiter.admit(Instant::now());
        if dropped > 0 {
            tracing::warn!(target: "librdkafka", dropped, "librdkafka: more messages not logged");
        }
        admitted
    }
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        // Debug lines are off unless asked for, and asked for in full.
        if matches!(level, RDKafkaLogLevel::Debug) {
            tracing::debug!(target: "librdkafka", facility, message);
            return;
        }
        if !self.admit() {
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility, "librdkafka: {message}")
            }
            _ => tracing::info!(target: "librdkafka", facility, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if self.admit() {
            tracing::warn!(target: "librdkafka", error = %error, "librdkafka: {reason}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_logs_a_few_lines_and_counts_the_rest_once_the_window_closes() {
        let mut limiter = Limiter::default();
        let start = Instant::now();
        let admitted = (0..400)
            .filter(|i| limiter.admit(start + Duration::from_millis(*i)).0)
            .count();
        assert_eq!(admitted, PER_WINDOW as usize);
        assert_eq!(limiter.admit(start + WINDOW + WINDOW), (true, 400 - 5));
    }
}
