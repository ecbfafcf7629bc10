//! Delivery marks: per key, the last event the sink took, kept in PostgreSQL so that the replay
//! after a crash skips what a broker already holds.
//!
//! # Why
//! The slot has one confirmed position, and it cannot pass the oldest event still in any lane.
//! With several lanes the faster ones deliver well past it, and a crash replayed all of that:
//! in `tests/repeats.rs` (RabbitMQ, 4 lanes, 8 SIGKILLs) about 9,000 repeats in 10,000 events.
//! A broker cannot be read back (the embedded log can, see [`super::resume`]), so outboxd keeps
//! its own note of what was delivered.
//!
//! # What is kept
//! One row per (slot, key): the position and id of the key's last delivered event, in
//! `<schema>.outboxd_delivered`. A lane delivers a key's events in stream order, and everything
//! before a delivered event of its key was delivered, or stored in the dead-letter store before
//! it (refusals are recorded before acknowledgements), so what a row names is a prefix of that
//! key's events: exactly what [`super::resume::Resume`] skips when the stream opens.
//!
//! # Costs and guarantees
//! Marks are written by a task of their own, off the relay's path: one upsert at a time, what
//! arrives meanwhile coalesced (one row per key), and rows behind the slot's confirmed position
//! deleted every few seconds, so the table holds about the keys of what is in flight. A mark
//! only ever names a delivered event, so a late or lost write means more repeats, never a loss;
//! one written just before a crash is the difference between the repeats of polling mode (what
//! was in flight) and of the whole window the slowest lane held back.

use crate::config::SourceConfig;
use crate::error::Result;
use crate::event::{Position, Stored};
use crate::pg::{Session, classify, quote_ident};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_postgres::Client;

/// How often rows behind the slot's confirmed position are deleted.
const PRUNE_INTERVAL: Duration = Duration::from_secs(2);

/// Wait after a failed write before connecting again (the marks are kept meanwhile).
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// The table of `source`'s marks, schema-qualified and quoted.
pub fn table(source: &SourceConfig) -> String {
    format!("{}.outboxd_delivered", quote_ident(&source.table.schema))
}

/// Creates the table if missing (`outboxd migrate`, `auto_migrate`).
pub async fn create(client: &Client, source: &SourceConfig) -> Result<()> {
    let schema = quote_ident(&source.table.schema);
    let table = table(source);
    let sql = format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {table} (
             slot     text   NOT NULL,
             key      text   NOT NULL,
             position bigint NOT NULL,
             event_id text   NOT NULL,
             PRIMARY KEY (slot, key)
         );"
    );
    client
        .batch_execute(&sql)
        .await
        .map_err(|err| classify(format!("creating the delivery marks {table}"), err))
}

/// Whether the table exists.
pub async fn exists(client: &Client, source: &SourceConfig) -> Result<bool> {
    let row = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table(source)])
        .await
        .map_err(|err| classify("looking for the delivery marks", err))?;
    Ok(row.get(0))
}

/// Every mark of the slot, as what the sink holds.
pub async fn load(client: &Client, source: &SourceConfig) -> Result<Vec<Stored>> {
    let rows = client
        .query(
            &format!(
                "SELECT key, position, event_id FROM {} WHERE slot = $1 ORDER BY position",
                table(source)
            ),
            &[&source.logical.slot],
        )
        .await
        .map_err(|err| classify("reading the delivery marks", err))?;
    Ok(rows
        .iter()
        .map(|row| Stored {
            key: row.get(0),
            position: Position(row.get::<_, i64>(1) as u64),
            id: row.get(2),
        })
        .collect())
}

/// The handle the source notes deliveries through; the writing task ends when it is dropped,
/// after writing what it was given.
pub struct Marks {
    /// Deliveries to the writing task.
    notes: mpsc::UnboundedSender<Vec<Stored>>,
    /// The slot's confirmed position, for pruning.
    confirmed: Arc<AtomicU64>,
}

impl Marks {
    /// Starts the writing task, with a session of its own.
    pub fn start(source: &SourceConfig) -> Marks {
        let (notes, received) = mpsc::unbounded_channel();
        let confirmed = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            source: source.clone(),
            table: table(source),
            confirmed: confirmed.clone(),
            session: None,
            latest: HashMap::new(),
            next_prune: Instant::now() + PRUNE_INTERVAL,
        };
        tokio::spawn(writer.run(received));
        Marks { notes, confirmed }
    }

    /// Events now durably in the sink (stream events only).
    pub fn delivered(&self, stored: Vec<Stored>) {
        // The task only ends when this handle is dropped.
        let _ = self.notes.send(stored);
    }

    /// The slot's confirmed position rose to `lsn`: marks behind it are no longer needed.
    pub fn confirmed(&self, lsn: u64) {
        self.confirmed.fetch_max(lsn, Ordering::Relaxed);
    }
}

/// The writing task's state.
struct Writer {
    /// Connection settings.
    source: SourceConfig,
    /// The table, quoted.
    table: String,
    /// The slot's confirmed position.
    confirmed: Arc<AtomicU64>,
    /// Its own session, while open.
    session: Option<Session>,
    /// Per key, the last delivered (position, id) not yet written.
    latest: HashMap<String, (i64, String)>,
    /// When to delete marks behind the confirmed position next.
    next_prune: Instant,
}

impl Writer {
    /// Writes what arrives until the handle is dropped and everything received is written (or
    /// the database is unreachable at that point).
    async fn run(mut self, mut received: mpsc::UnboundedReceiver<Vec<Stored>>) {
        let mut open = true;
        while open || !self.latest.is_empty() {
            if self.latest.is_empty() {
                match tokio::time::timeout_at(self.next_prune, received.recv()).await {
                    Ok(Some(stored)) => self.take(stored),
                    Ok(None) => open = false,
                    Err(_) => {}
                }
            }
            // Coalesce whatever else is waiting: one row per key.
            while let Ok(stored) = received.try_recv() {
                self.take(stored);
            }
            if let Err(err) = self.write().await {
                self.session = None;
                tracing::warn!(error = %err.chain(), "delivery marks not written; retrying");
                if !open {
                    return;
                }
                tokio::time::sleep(RETRY_DELAY).await;
            }
        }
    }

    /// Keeps the newest mark of each key (notes arrive in delivery order).
    fn take(&mut self, stored: Vec<Stored>) {
        for mark in stored {
            self.latest
                .insert(mark.key, (mark.position.0 as i64, mark.id));
        }
    }

    /// Writes the pending marks, and prunes when due.
    async fn write(&mut self) -> Result<()> {
        if self.session.as_ref().is_none_or(Session::is_closed) {
            self.session = Some(crate::pg::connect(&self.source).await?);
        }
        let client = &self.session.as_ref().expect("opened above").client;
        if !self.latest.is_empty() {
            let mut keys = Vec::with_capacity(self.latest.len());
            let mut positions = Vec::with_capacity(self.latest.len());
            let mut ids = Vec::with_capacity(self.latest.len());
            for (key, (position, id)) in &self.latest {
                keys.push(key.as_str());
                positions.push(*position);
                ids.push(id.as_str());
            }
            client
                .execute(
                    &format!(
                        "INSERT INTO {} (slot, key, position, event_id) \
                         SELECT $1, k, p, i FROM unnest($2::text[], $3::bigint[], $4::text[]) \
                             AS m(k, p, i) \
                         ON CONFLICT (slot, key) DO UPDATE \
                         SET position = excluded.position, event_id = excluded.event_id",
                        self.table
                    ),
                    &[&self.source.logical.slot, &keys, &positions, &ids],
                )
                .await
                .map_err(|err| classify("writing delivery marks", err))?;
            self.latest.clear();
        }
        if Instant::now() >= self.next_prune {
            self.next_prune = Instant::now() + PRUNE_INTERVAL;
            let confirmed = self.confirmed.load(Ordering::Relaxed) as i64;
            client
                .execute(
                    &format!(
                        "DELETE FROM {} WHERE slot = $1 AND position < $2",
                        self.table
                    ),
                    &[&self.source.logical.slot, &confirmed],
                )
                .await
                .map_err(|err| classify("pruning delivery marks", err))?;
        }
        Ok(())
    }
}
