//! The source's calls to the dead-letter store, carried across a lost session.
//!
//! The store lives in the same PostgreSQL as the slot, so when the server restarts or the
//! connection drops, its calls fail like the stream does. They must heal like the stream does
//! too: an error out of [`crate::source::Source::next_batch`] or an acknowledgement would stop
//! the relay. Each call is therefore retried on a fresh session, with backoff, until it succeeds,
//! the error is one that waiting cannot heal, or the relay shuts down. [`super::parking::Parking`]
//! changes its own view only after the store's writes committed, so a repeated call does the
//! work once.

use super::LogicalSource;
use crate::error::{Error, Result};
use crate::retry::{Backoff, sleep_or_shutdown};
use tokio_util::sync::CancellationToken;

/// Runs `$call` (an expression using `$parking: &mut Parking` and `$client: &Client`) until it
/// succeeds, as `Some(value)`; `None` if the relay shut down first. Transient failures are
/// retried (see [`LogicalSource::store_failed`]); others return from the enclosing function.
/// (A macro rather than a method taking an async closure: the source's futures must be `Send`,
/// which async closures borrowing the call's arguments cannot yet promise.)
macro_rules! with_store {
    ($source:ident, $shutdown:expr, $what:expr, |$parking:ident, $client:ident| $call:expr) => {{
        let mut backoff = None;
        loop {
            let result = match $source.sql_client().await {
                Ok(client) => {
                    let $parking = &mut $source.parking;
                    let $client = &*client;
                    $call.await
                }
                Err(err) => Err(err),
            };
            match result {
                Ok(value) => break Some(value),
                Err(err) => {
                    if !$source
                        .store_failed(err, $what, &mut backoff, $shutdown)
                        .await?
                    {
                        break None;
                    }
                }
            }
        }
    }};
}
pub(super) use with_store;

impl LogicalSource {
    /// After a failed call to the store: returns the error if waiting cannot heal it; else
    /// drops the session (with any transaction it had open), waits a backoff delay and returns
    /// whether to try again (`false` on shutdown).
    pub(super) async fn store_failed(
        &mut self,
        err: Error,
        what: &str,
        backoff: &mut Option<Backoff>,
        shutdown: &CancellationToken,
    ) -> Result<bool> {
        if !err.is_retryable() {
            return Err(err);
        }
        self.sql = None;
        let delay = backoff
            .get_or_insert_with(|| Backoff::from_config(&self.relay))
            .next_delay();
        tracing::warn!(error = %err.chain(), retry_in_ms = delay.as_millis() as u64,
            "{what} failed; retrying on a new session");
        Ok(sleep_or_shutdown(delay, shutdown).await)
    }
}
