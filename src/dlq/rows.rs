//! Rows of the dead-letter store to and from Rust: the statement parameters of one event, a
//! stored row as the operator sees it, and a parked event ready to go out again.

use crate::error::{Error, ErrorKind, Result};
use crate::event::{Event, Origin};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// The columns [`letter`] reads, in its order.
pub const COLUMNS: &str = "seq, state, event_id, key, origin, operation, type, position, \
    event, reason, attempts, first_failed_at, last_failed_at, parked_at, retried_at, skipped_at";

/// One row of the store, as `outboxd dlq list | show` prints it.
#[derive(Debug, Serialize)]
pub struct Letter {
    /// Its place in the store (insertion order).
    pub seq: i64,
    /// `dead`, `parked` or `skipped`.
    pub state: String,
    /// The event's id.
    pub id: String,
    /// The ordering key (none for a row that never became an event).
    pub key: Option<String>,
    /// Where it was captured: `outbox`, `schema.table` or `message:<prefix>`.
    pub origin: String,
    /// The operation (`insert`, `update`, …).
    pub operation: String,
    /// The event's type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Its source position (for logical modes, the WAL position of its commit or change).
    pub position: i64,
    /// The whole event, exactly as it would have been published (none for a row that never
    /// became an event).
    pub event: Option<serde_json::Value>,
    /// Why it was refused (none for a parked event).
    pub reason: Option<String>,
    /// Failed deliveries.
    pub attempts: i32,
    /// First and last failure.
    pub first_failed_at: Option<DateTime<Utc>>,
    /// The newest failure.
    pub last_failed_at: Option<DateTime<Utc>>,
    /// When it was parked behind a dead letter.
    pub parked_at: Option<DateTime<Utc>>,
    /// When an operator retried it.
    pub retried_at: Option<DateTime<Utc>>,
    /// When an operator skipped it.
    pub skipped_at: Option<DateTime<Utc>>,
}

/// A parked event that may be handed out again.
#[derive(Debug)]
pub struct Ready {
    /// Its row.
    pub seq: i64,
    /// The event as it was captured.
    pub event: Event,
}

/// How an origin reads in the store's `origin` column.
fn origin(event: &Event) -> String {
    match &event.origin {
        Origin::Outbox => "outbox".into(),
        Origin::Table { schema, table } => format!("{schema}.{table}"),
        Origin::Message { prefix } => format!("message:{prefix}"),
    }
}

/// The values of one insert: slot, event id, key, origin, operation, type, position, the
/// event as JSON, reason. Owned, so the caller can borrow them as parameters.
pub struct Params {
    /// The values, in statement order.
    values: (
        String,
        String,
        String,
        String,
        String,
        String,
        i64,
        String,
        Option<String>,
    ),
}

impl Params {
    /// The values as statement parameters.
    pub fn as_slice(&self) -> [&(dyn ToSql + Sync); 9] {
        let v = &self.values;
        [&v.0, &v.1, &v.2, &v.3, &v.4, &v.5, &v.6, &v.7, &v.8]
    }
}

/// The parameters that store `event` for `slot`.
pub fn params(slot: &str, event: &Event, reason: Option<&str>) -> Params {
    // An Event always serializes (its payload is already JSON).
    let json = serde_json::to_string(event).unwrap_or_default();
    Params {
        values: (
            slot.to_string(),
            event.id.clone(),
            event.key.clone(),
            origin(event),
            event.op.name().to_string(),
            event.event_type.clone(),
            event.position.0 as i64,
            json,
            reason.map(str::to_string),
        ),
    }
}

/// A parked row read back for delivery.
pub fn ready(row: &Row) -> Result<Ready> {
    let seq: i64 = row.get(0);
    let text: String = row.get(1);
    let event = serde_json::from_str(&text).map_err(|err| {
        Error::with_source(
            ErrorKind::Database,
            format!("dead-letter store row {seq} does not hold an event"),
            err,
        )
    })?;
    Ok(Ready { seq, event })
}

/// A row read for the operator.
pub fn letter(row: &Row) -> Result<Letter> {
    let text: Option<String> = row.get(8);
    let event =
        text.map(|text| serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)));
    Ok(Letter {
        seq: row.get(0),
        state: row.get(1),
        id: row.get(2),
        key: row.get(3),
        origin: row.get(4),
        operation: row.get(5),
        event_type: row.get(6),
        position: row.get(7),
        event,
        reason: row.get(9),
        attempts: row.get(10),
        first_failed_at: row.get(11),
        last_failed_at: row.get(12),
        parked_at: row.get(13),
        retried_at: row.get(14),
        skipped_at: row.get(15),
    })
}
