//! The heartbeat: every `source.logical.heartbeat_interval_ms`, on the ordinary session, a
//! message that gives an idle slot something to confirm, the slot's lag, and two checks that
//! stop the relay rather than let events pass unseen: the slot was invalidated, or the
//! publication no longer carries the outbox (its inserts meanwhile are not in the stream).

use super::publication::{self, Membership};
use super::{LogicalSource, slot};
use crate::error::Result;
use std::time::Duration;
use tokio::time::Instant;

impl LogicalSource {
    /// Writes a heartbeat, measures the slot's lag and checks the publication. Failures to ask
    /// are logged, not fatal (the stream notices a real outage); a lost slot (unless configured
    /// to re-create it) and a publication that stopped carrying the table are.
    pub(super) async fn heartbeat(&mut self) -> Result<()> {
        let interval = Duration::from_millis(self.config.logical.heartbeat_interval_ms);
        self.next_heartbeat = Instant::now() + interval;
        let result = async {
            self.sql_session().await?;
            let Some(sql) = &self.sql else {
                return Ok(None);
            };
            slot::heartbeat(&sql.client, &self.config.logical.message_prefix).await?;
            let membership = match self.config.mode.uses_outbox() {
                true => publication::membership(&sql.client, &self.config, &self.table).await?,
                false => Membership::Covered,
            };
            if !self.tables.is_empty() {
                self.refresh_tables().await?;
            }
            let Some(sql) = &self.sql else {
                return Ok(None);
            };
            let lag = slot::lag(&sql.client, &self.config.logical.slot).await?;
            Ok::<_, crate::error::Error>(Some((membership, lag)))
        }
        .await;
        match result {
            Ok(Some((membership, _))) if membership != Membership::Covered => {
                return Err(self.publication_lost().await);
            }
            Ok(Some((_, Some((_, true))))) => {
                if !self.config.logical.recreate_lost_slot {
                    return Err(slot::lost(&self.config.logical.slot));
                }
                self.drop_stream();
                self.forget_old_slot();
                if let Some(sql) = &self.sql {
                    slot::check_slot(&sql.client, &self.config).await?;
                }
            }
            Ok(Some((_, Some((lag, false))))) => {
                crate::metrics::get().slot_lag.set(lag);
                let over = lag.max(0) as u64 > self.config.logical.lag_warn_bytes;
                if over && !self.lagging {
                    tracing::warn!(slot = %self.config.logical.slot, lag_bytes = lag,
                        threshold = self.config.logical.lag_warn_bytes,
                        "replication slot holds back more WAL than source.logical.lag_warn_bytes");
                }
                self.lagging = over;
            }
            Ok(_) => {}
            Err(err) => {
                self.sql = None;
                tracing::warn!(error = %err.chain(), "heartbeat failed");
            }
        }
        Ok(())
    }

    /// Adds tables created since that a `schema.*` entry matches (with `source.auto_migrate`),
    /// and re-reads keys and types for the table mapping.
    async fn refresh_tables(&mut self) -> Result<()> {
        let Some(sql) = &self.sql else {
            return Ok(());
        };
        if self.config.auto_migrate {
            let added = super::tables::publication::add_new(&sql.client, &self.config).await?;
            if !added.is_empty() {
                tracing::info!(tables = %added.join(", "), "new tables captured from now on");
            }
        }
        let patterns = self.config.cdc.patterns();
        let catalog = super::tables::catalog::load(&sql.client, &patterns).await?;
        self.tables.set_catalog(catalog);
        Ok(())
    }

    /// The publication stopped carrying the outbox: not ready, said loudly, and the error that
    /// stops the relay (skipping on would hide that inserts went unpublished).
    async fn publication_lost(&mut self) -> crate::error::Error {
        crate::metrics::get().source_up.set(0);
        self.drop_stream();
        let err = match &self.sql {
            Some(sql) => publication::check(&sql.client, &self.config, &self.table)
                .await
                .err(),
            None => None,
        };
        let err = err.unwrap_or_else(|| {
            crate::error::Error::new(
                crate::error::ErrorKind::Schema,
                format!(
                    "publication \"{}\" stopped carrying {} while the relay ran",
                    self.config.logical.publication, self.table.qualified
                ),
            )
        });
        tracing::error!(error = %err, publication = %self.config.logical.publication,
            table = %self.table.qualified,
            "the outbox table is not published: events are NOT being captured; stopping");
        err
    }
}
