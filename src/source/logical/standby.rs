//! Opening the stream, and standing by while another relay streams from the slot.
//!
//! A standby is a normal, documented state (see the module docs of `logical`): it says so at
//! INFO once, retries quietly (DEBUG), and says so again when it takes over. Before each
//! attempt it asks the server whether the slot is active, so it does not send
//! START_REPLICATION only to be refused (which the replication client logs as an error).

use super::{LogicalSource, publication, slot, stream};
use crate::error::Result;
use crate::retry::{Backoff, sleep_or_shutdown};
use tokio_util::sync::CancellationToken;

/// How loudly a refusal because the slot is in use is logged: once, then quietly.
#[derive(Debug, Default)]
pub(super) struct Standby {
    /// Whether this relay is standing by (said so already).
    standing_by: bool,
}

impl Standby {
    /// The slot is in use by another session: `true` if this is the first time in a row (log
    /// at INFO), `false` while it goes on (log at DEBUG).
    pub fn refused(&mut self) -> bool {
        !std::mem::replace(&mut self.standing_by, true)
    }

    /// The stream opened: whether this relay had been standing by (log the take-over).
    pub fn opened(&mut self) -> bool {
        std::mem::take(&mut self.standing_by)
    }
}

impl LogicalSource {
    /// Opens the stream if it is not open, standing by while another relay holds the slot;
    /// `false` on shutdown.
    pub(super) async fn ensure_stream(&mut self, shutdown: &CancellationToken) -> Result<bool> {
        while self.stream.is_none() {
            if let Some(pid) = self.slot_active_pid().await {
                self.standing_by(pid);
                let delay = self.backoff.next_delay();
                if !sleep_or_shutdown(delay, shutdown).await {
                    return Ok(false);
                }
                continue;
            }
            let err = match stream::open(&self.config).await {
                Ok(client) => {
                    let slot = &self.config.logical.slot;
                    match self.standby.opened() {
                        true => tracing::info!(%slot, "replication slot is free; took over"),
                        false => tracing::info!(%slot, "replication stream open"),
                    }
                    self.stream = Some(client);
                    self.backoff = Backoff::from_config(&self.relay);
                    self.resume_from_marks().await;
                    crate::metrics::get().source_up.set(1);
                    crate::metrics::get().relay_active.set(1);
                    return Ok(true);
                }
                Err(err) => err,
            };
            crate::metrics::get().source_up.set(0);
            crate::metrics::get().relay_active.set(0);
            let delay = self.backoff.next_delay();
            if stream::is_slot_busy(&err) {
                // Taken between the check and the attempt.
                self.standing_by(0);
            } else if err.is_retryable() {
                tracing::warn!(error = %err.chain(), retry_in_ms = delay.as_millis() as u64,
                    "postgres unavailable");
            } else {
                // A lost or missing slot, or a re-created publication, gets its own clear
                // message (or a lost slot is re-created).
                self.sql_session().await?;
                let Some(sql) = &self.sql else {
                    return Err(err);
                };
                let err = publication::explain_stream_error(&sql.client, &self.config, err).await;
                // Retry only if the slot was lost and has just been re-created.
                if !slot::check_slot(&sql.client, &self.config).await? {
                    return Err(err);
                }
                self.forget_old_slot();
            }
            if !sleep_or_shutdown(delay, shutdown).await {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The server process streaming from the slot, if another session does; `None` when the
    /// slot is free or the question cannot be asked (the attempt to open then tells).
    async fn slot_active_pid(&mut self) -> Option<i32> {
        self.sql_session().await.ok()?;
        let sql = self.sql.as_ref()?;
        let row = sql
            .client
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.config.logical.slot],
            )
            .await
            .ok()??;
        row.get(0)
    }

    /// Logs that the slot is in use (`pid` 0: unknown), at INFO the first time in a row.
    fn standing_by(&mut self, pid: i32) {
        crate::metrics::get().source_up.set(0);
        crate::metrics::get().relay_active.set(0);
        let slot = &self.config.logical.slot;
        if self.standby.refused() {
            tracing::info!(%slot, pid, "replication slot is active for PID {pid} (another \
                relay); standing by until it is free");
        } else {
            tracing::debug!(%slot, pid, "replication slot still active; standing by");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_says_so_once_and_again_after_it_took_over() {
        let mut standby = Standby::default();
        assert!(standby.refused(), "the first refusal is logged at INFO");
        assert!(!standby.refused(), "later ones are quiet");
        assert!(!standby.refused());
        assert!(standby.opened(), "the take-over is logged");
        assert!(!standby.opened());
        assert!(standby.refused(), "a new stand-by is logged again");
    }
}
