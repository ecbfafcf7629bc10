//! The Kafka sink's own deadline for a batch's delivery reports, in place of librdkafka's
//! message timeout.
//!
//! librdkafka times out a partition's oldest records and then, with a new producer epoch, goes
//! on sending the records queued behind them. A broker that comes back in between takes an
//! aggregate's event 18 after its events 16 and 17 timed out, and the relay's retry then puts
//! 16 and 17 after 18: consumers see the aggregate out of order. So the sink waits for a batch's
//! reports until `message_timeout_ms` after its first record was handed over and then purges
//! every record still queued or in flight: a purge fails all queued records at once, and of
//! those already in flight the broker keeps at most a prefix per partition (it refuses a
//! sequence number with a gap), so what reached the topic is in order and the retry only
//! repeats. librdkafka's own timeout is set [`PURGE_MARGIN`] later, so it does
//! not fire first.

use crate::error::{Error, ErrorKind};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// How much later than the sink's own deadline (`message_timeout_ms`) librdkafka times a
/// message out, so the sink's purge comes first.
pub const PURGE_MARGIN: Duration = Duration::from_secs(10);

/// One batch's deadline.
pub struct Deadline {
    /// `message_timeout_ms`.
    timeout: Duration,
    /// When the reports must be in; set when the first record is handed over.
    at: Option<Instant>,
    /// Whether a wait ran past it (the batch's records must then be purged).
    expired: bool,
}

impl Deadline {
    /// A deadline `timeout` after the first record.
    pub fn new(timeout: Duration) -> Self {
        Deadline {
            timeout,
            at: None,
            expired: false,
        }
    }

    /// A record was handed to librdkafka: the clock starts with the first.
    pub fn start(&mut self) {
        let timeout = self.timeout;
        self.at.get_or_insert_with(|| Instant::now() + timeout);
    }

    /// `wait`'s output, or `None` (and the deadline marked expired) once it has passed.
    pub async fn bound<F: Future>(&mut self, wait: F) -> Option<F::Output> {
        let Some(at) = self.at else {
            return Some(wait.await);
        };
        match tokio::time::timeout_at(at, wait).await {
            Ok(output) => Some(output),
            Err(_) => {
                self.expired = true;
                None
            }
        }
    }

    /// Whether a wait ran past the deadline.
    pub fn expired(&self) -> bool {
        self.expired
    }

    /// The batch's error once the deadline passed (retryable).
    pub fn error(&self) -> Error {
        Error::new(
            ErrorKind::SinkUnavailable,
            format!(
                "Kafka did not acknowledge the batch within sink.kafka.message_timeout_ms \
                 ({} ms); its unacknowledged records were purged and the batch is retried",
                self.timeout.as_millis()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_clock_starts_with_the_first_record_and_a_late_report_expires_it() {
        let mut deadline = Deadline::new(Duration::from_secs(2));
        // Before any record, a wait is unbounded (looking up a topic's metadata, say).
        let slow = tokio::time::sleep(Duration::from_secs(5));
        assert_eq!(deadline.bound(slow).await, Some(()));
        assert!(!deadline.expired());
        deadline.start();
        let quick = tokio::time::sleep(Duration::from_secs(1));
        assert_eq!(deadline.bound(quick).await, Some(()));
        // A second start does not move it.
        deadline.start();
        let late = tokio::time::sleep(Duration::from_millis(1500));
        assert_eq!(deadline.bound(late).await, None);
        assert!(deadline.expired());
        assert!(deadline.error().is_retryable());
        assert!(deadline.error().to_string().contains("2000 ms"));
    }
}
