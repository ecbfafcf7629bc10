//! What the sink already holds, so the replay from the slot skips it: the embedded log reports
//! its own tail at start-up; for brokers, the delivery marks ([`super::marks`]) are started with
//! the source, noted on every acknowledgement and read when a stream opens.

use super::LogicalSource;
use super::marks;
use super::parking::Parking;
use super::resume::Resume;
use crate::config::SourceConfig;
use crate::error::{Error, Result};
use crate::event::Stored;
use pgwire_replication::Lsn;
use tokio_postgres::Client;

impl LogicalSource {
    /// Remembers where the sink stands at start-up (see
    /// [`crate::source::Source::ack_delivered`]): nothing can be marked, the replay decides.
    /// Events re-delivered from the dead-letter store have no place in the WAL, and a sink
    /// holding positions beyond this server's WAL comes from another cluster: both are ignored.
    pub(super) async fn resume_from_sink(&mut self, delivered: &[Stored]) {
        let from_stream: Vec<Stored> = delivered
            .iter()
            .filter(|d| !Parking::is_store(d.position))
            .cloned()
            .collect();
        let Some(resume) = Resume::new(&from_stream) else {
            return;
        };
        let newest = from_stream
            .iter()
            .map(|stored| stored.position)
            .max()
            .unwrap_or_default();
        let current = match self.current_wal_lsn().await {
            Ok(lsn) => lsn,
            Err(err) => {
                tracing::warn!(error = %err.chain(),
                    "cannot read the current WAL position; the sink's tail may be delivered again");
                return;
            }
        };
        if newest.0 > current {
            tracing::warn!(sink_position = %Lsn::from_u64(newest.0).to_pg_string(),
                server_position = %Lsn::from_u64(current).to_pg_string(),
                "the sink holds events from beyond this server's WAL (another cluster?); not \
                 using them to skip the replay");
            return;
        }
        self.resume = Some(resume);
    }

    /// The server's current WAL position.
    async fn current_wal_lsn(&mut self) -> Result<u64> {
        self.sql_session().await?;
        let Some(sql) = &self.sql else {
            return Ok(0);
        };
        let row = sql
            .client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|err| crate::pg::classify("reading the current WAL position", err))?;
        let text: String = row.get(0);
        Lsn::parse(&text).map(Lsn::as_u64).map_err(|_| {
            Error::new(
                crate::error::ErrorKind::Internal,
                format!("unparseable WAL position {text:?}"),
            )
        })
    }

    /// When a stream opens with nothing else to resume from (the embedded log reports its own
    /// tail instead): what the marks say the sink holds, so the replay skips it. A failure to
    /// read them only costs repeats.
    pub(super) async fn resume_from_marks(&mut self) {
        if self.marks.is_none() || self.resume.is_some() {
            return;
        }
        let client = match self.sql_client().await {
            Ok(client) => client,
            Err(err) => {
                tracing::warn!(error = %err.chain(), "delivery marks not read; the replay may repeat more");
                return;
            }
        };
        match marks::load(&client, &self.config).await {
            Ok(stored) => self.resume = Resume::new(&stored),
            Err(err) => {
                self.sql = None;
                tracing::warn!(error = %err.chain(), "delivery marks not read; the replay may repeat more");
            }
        }
    }
}

/// The delivery marks of logical mode, if their table exists (created with `auto_migrate`).
/// Without it the relay runs as before, repeating more after a crash, and says so.
pub(super) async fn start(client: &Client, config: &SourceConfig) -> Option<marks::Marks> {
    let ready = match marks::exists(client, config).await {
        Ok(true) => Ok(()),
        Ok(false) if config.auto_migrate => marks::create(client, config).await,
        Ok(false) => {
            tracing::warn!(table = %marks::table(config),
                "the delivery marks table does not exist (run `outboxd migrate`): after a \
                 crash, brokers get back everything past the slot's confirmed position");
            return None;
        }
        Err(err) => Err(err),
    };
    match ready {
        Ok(()) => Some(marks::Marks::start(config)),
        Err(err) => {
            tracing::warn!(error = %err.chain(),
                "delivery marks unavailable: after a crash, brokers get back everything past \
                 the slot's confirmed position");
            None
        }
    }
}
