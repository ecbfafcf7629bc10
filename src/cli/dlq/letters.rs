//! Reading dead letters (rows marked failed) for `dlq list` and `dlq show`.

use crate::error::Result;
use crate::outbox::OutboxTable;
use crate::pg::classify;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

/// One dead letter.
#[derive(Debug, Serialize)]
pub struct DeadLetter {
    /// Event id.
    pub id: String,
    /// Position in the outbox.
    pub position: i64,
    /// Aggregate type.
    pub aggregatetype: Option<String>,
    /// Aggregate id.
    pub aggregateid: Option<String>,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Attempts made.
    pub attempts: i32,
    /// Why it failed.
    pub last_error: Option<String>,
    /// When the application wrote it.
    pub created_at: Option<DateTime<Utc>>,
    /// When it was given up on.
    pub failed_at: Option<DateTime<Utc>>,
    /// When an operator skipped it.
    pub skipped_at: Option<DateTime<Utc>>,
    /// The payload (only in full, for `show`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// The headers (only in full, for `show`; `null` when the row has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<serde_json::Value>,
}

/// Dead letters matching `filter` (a rendered `AND …` clause), oldest first; `full` also reads
/// payload and headers, as stored.
pub async fn select(
    client: &Client,
    table: &OutboxTable,
    filter: &str,
    params: &[&(dyn ToSql + Sync)],
    full: bool,
) -> Result<Vec<DeadLetter>> {
    let bodies = match full {
        true => "{payload}::text, {headers}::text",
        false => "NULL::text, NULL::text",
    };
    let sql = table.render(&format!(
        "SELECT {{id}}::text, {{position}}, {{aggregate_type}}::text, {{aggregate_id}}::text, \
         {{event_type}}::text, {{attempts}}, {{last_error}}, {{created_at}}::timestamptz, \
         {{failed_at}}, {{skipped_at}}, {bodies} \
         FROM {{table}} WHERE {{failed_at}} IS NOT NULL{filter} ORDER BY {{position}}"
    ));
    let rows = client
        .query(&sql, params)
        .await
        .map_err(|err| classify("reading dead letters", err))?;
    // A body that is not JSON is exactly what some dead letters are: show it as a string.
    let json = |text: Option<String>| {
        text.map(|text| serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    };
    Ok(rows
        .iter()
        .map(|row| DeadLetter {
            id: row.get(0),
            position: row.get(1),
            aggregatetype: row.get(2),
            aggregateid: row.get(3),
            event_type: row.get(4),
            attempts: row.get(5),
            last_error: row.get(6),
            created_at: row.try_get(7).ok().flatten(),
            failed_at: row.get(8),
            skipped_at: row.get(9),
            payload: full.then(|| json(row.get(10)).unwrap_or(serde_json::Value::Null)),
            headers: full.then(|| json(row.get(11)).unwrap_or(serde_json::Value::Null)),
        })
        .collect())
}

/// One line of `dlq list`: id, aggregate, type, attempts, when it failed, why.
pub fn list_line(letter: &DeadLetter) -> String {
    let when = |at: Option<DateTime<Utc>>| {
        at.map_or("-".to_string(), |at| {
            at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
        })
    };
    let skipped = match letter.skipped_at {
        Some(at) => format!(" (skipped {})", when(Some(at))),
        None => String::new(),
    };
    format!(
        "{}  {}/{}  {}  attempts={}  failed {}  {}{skipped}",
        letter.id,
        letter.aggregatetype.as_deref().unwrap_or("-"),
        letter.aggregateid.as_deref().unwrap_or("-"),
        letter.event_type.as_deref().unwrap_or("-"),
        letter.attempts,
        when(letter.failed_at),
        letter.last_error.as_deref().unwrap_or("")
    )
}
