//! Turning fetched outbox rows into events, and holding back rows that could still be overtaken.

use crate::event::{Event, Operation, Origin, Position, Rejected};
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use std::collections::HashSet;
use tokio_postgres::Row;

/// One pending outbox row, as fetched (columns in `OutboxTable::fetch_pending` order).
#[derive(Debug, Clone)]
pub struct PendingRow {
    /// The row's position.
    pub position: i64,
    /// Whether every transaction that began before the row's own has ended.
    pub ready: bool,
    /// Event id as text.
    pub id: Option<String>,
    /// Aggregate type.
    pub aggregate_type: Option<String>,
    /// Aggregate id.
    pub aggregate_id: Option<String>,
    /// Event type.
    pub event_type: Option<String>,
    /// Payload as text.
    pub payload: Option<String>,
    /// Headers as text.
    pub headers: Option<String>,
    /// When the row was written; `None` if NULL or beyond what chrono can represent.
    pub created_at: Option<DateTime<Utc>>,
    /// Bytes of payload and headers (as text when loaded, as stored otherwise).
    pub size: i64,
    /// Whether the body fits `source.max_event_bytes`; when not, payload and headers were not
    /// loaded and the row is rejected.
    pub fits: bool,
    /// The dead letter the blocking fetch found the row waiting behind; such a row carries
    /// nothing else and is never delivered, only marked (see `outbox::blocked`).
    pub blocked_by: Option<i64>,
}

impl PendingRow {
    /// Reads a row of `fetch_pending`.
    pub fn from_row(row: &Row) -> Self {
        PendingRow {
            position: row.get(0),
            ready: row.get(1),
            id: row.get(2),
            aggregate_type: row.get(3),
            aggregate_id: row.get(4),
            event_type: row.get(5),
            payload: row.get(6),
            headers: row.get(7),
            // `infinity` or a year past 262143 is a valid timestamptz that chrono cannot hold.
            // Such a row is still an event, stamped when decoded (as logical mode stamps it
            // with its commit time); `get` would panic, and the relay would crash on the same
            // row after every restart.
            created_at: row.try_get(8).ok().flatten(),
            size: row.get(9),
            fits: row.get(10),
            blocked_by: row.get(11),
        }
    }
}

/// The rows of one fetch, split into what may be delivered now and what must wait.
#[derive(Debug, Default)]
pub struct Selection {
    /// Events that may be delivered, in position order.
    pub events: Vec<Event>,
    /// Rows that can never become events.
    pub rejected: Vec<Rejected>,
    /// How many rows the visibility guard held back, itself or behind such a row of their
    /// aggregate (a re-check is due soon while there are any).
    pub held_back: usize,
    /// Rows the fetch found behind a dead letter, as `(position, dead letter)`, to be marked:
    /// more pending rows may follow them, so the caller fetches again at once.
    pub blocked: Vec<(i64, i64)>,
}

/// Selects deliverable rows from `rows` (all pending rows up to the fetch limit, by position).
///
/// A row is held back while it is not `ready`, and so is every later row of the same aggregate:
/// an earlier event of that aggregate may belong to a transaction still in flight, and publishing
/// the later one first would reorder the aggregate.
///
/// With `hold_after_rejected` (`on_dead_letter = "block_aggregate"`), a row that cannot become
/// an event holds back every later row of its aggregate in the same way: it is about to become
/// a dead letter, and its aggregate waits behind it. Those rows stay pending; once the dead
/// letter is recorded, fetches leave them out until an operator retries or skips it.
pub fn select(rows: Vec<PendingRow>, hold_after_rejected: bool) -> Selection {
    let mut selection = Selection::default();
    let mut blocked: HashSet<Option<String>> = HashSet::new();
    let mut dead: HashSet<String> = HashSet::new();
    for row in rows {
        if let Some(letter) = row.blocked_by {
            selection.blocked.push((row.position, letter));
            continue;
        }
        if let Some(aggregate) = &row.aggregate_id
            && dead.contains(aggregate)
        {
            continue;
        }
        if !row.ready || blocked.contains(&row.aggregate_id) {
            blocked.insert(row.aggregate_id.clone());
            selection.held_back += 1;
            continue;
        }
        let aggregate = row.aggregate_id.clone();
        match decode(row) {
            Ok(event) => selection.events.push(event),
            Err(rejected) => {
                if hold_after_rejected && let Some(aggregate) = aggregate {
                    dead.insert(aggregate);
                }
                selection.rejected.push(rejected);
            }
        }
    }
    selection
}

/// Builds an event, or says why the row cannot be one.
pub(crate) fn decode(row: PendingRow) -> Result<Event, Rejected> {
    let position = Position(row.position as u64);
    let id = row.id.unwrap_or_default();
    let reject = |reason: String| Rejected {
        position,
        id: id.clone(),
        reason,
    };
    let required = |value: Option<String>, what: &str| match value {
        Some(text) if !text.is_empty() => Ok(text),
        Some(_) => Err(reject(format!("{what} is empty"))),
        None => Err(reject(format!("{what} is NULL"))),
    };
    if !row.fits {
        return Err(reject(format!(
            "payload and headers of {} bytes exceed source.max_event_bytes; not loaded",
            row.size
        )));
    }
    let aggregate_id = required(row.aggregate_id, "aggregate id")?;
    let aggregate_type = required(row.aggregate_type, "aggregate type")?;
    let event_type = required(row.event_type, "event type")?;
    // A NULL payload is not JSON `null`: consumers expect a body, and relaying one the
    // application never wrote would hide the bug that left it out. Migration 6 refuses new ones.
    let payload = RawValue::from_string(
        row.payload
            .ok_or_else(|| reject("payload is NULL".into()))?,
    )
    .map_err(|err| reject(format!("payload is not valid JSON: {err}")))?;
    let headers = match row.headers {
        None => None,
        Some(text) => {
            let raw = RawValue::from_string(text)
                .map_err(|err| reject(format!("headers are not valid JSON: {err}")))?;
            if !raw.get().trim_start().starts_with('{') {
                return Err(reject("headers must be a JSON object".into()));
            }
            Some(raw)
        }
    };
    Ok(Event {
        id: id.clone(),
        subject: aggregate_type,
        key: aggregate_id,
        event_type,
        op: Operation::Insert,
        origin: Origin::Outbox,
        payload,
        headers,
        created_at: row.created_at.unwrap_or_else(Utc::now),
        position,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(position: i64, aggregate: &str, ready: bool) -> PendingRow {
        PendingRow {
            position,
            ready,
            id: Some(format!("id-{position}")),
            aggregate_type: Some("order".into()),
            aggregate_id: Some(aggregate.into()),
            event_type: Some("Placed".into()),
            payload: Some(r#"{"n":1}"#.into()),
            headers: None,
            created_at: None,
            size: 7,
            fits: true,
            blocked_by: None,
        }
    }

    fn positions(selection: &Selection) -> Vec<u64> {
        selection.events.iter().map(|e| e.position.0).collect()
    }

    #[test]
    fn a_row_found_behind_a_dead_letter_is_never_an_event_only_a_mark() {
        let mut behind = row(2, "a", true);
        behind.blocked_by = Some(1);
        let selection = select(vec![behind, row(3, "b", true)], true);
        assert_eq!(positions(&selection), vec![3]);
        assert_eq!(selection.blocked, vec![(2, 1)]);
        assert!(selection.rejected.is_empty());
    }

    #[test]
    fn a_row_not_ready_holds_back_its_aggregate_only() {
        let rows = vec![
            row(1, "a", true),
            row(2, "b", false),
            row(3, "a", true),
            row(4, "b", true),
        ];
        let selection = select(rows, true);
        assert_eq!(positions(&selection), vec![1, 3]);
        assert_eq!(selection.held_back, 2, "b2 and b4 behind it");
    }

    #[test]
    fn bad_rows_are_rejected_with_a_reason_and_the_rest_flow() {
        let mut null_key = row(1, "a", true);
        null_key.aggregate_id = None;
        let mut bad_json = row(2, "b", true);
        bad_json.payload = Some("{not json".into());
        let mut bad_headers = row(3, "c", true);
        bad_headers.headers = Some("[1,2]".into());
        let selection = select(
            vec![null_key, bad_json, bad_headers, row(4, "d", true)],
            true,
        );
        assert_eq!(positions(&selection), vec![4]);
        let reasons: Vec<&str> = selection
            .rejected
            .iter()
            .map(|r| r.reason.as_str())
            .collect();
        assert_eq!(reasons[0], "aggregate id is NULL");
        assert!(
            reasons[1].starts_with("payload is not valid JSON"),
            "{}",
            reasons[1]
        );
        assert_eq!(reasons[2], "headers must be a JSON object");
        assert_eq!(selection.held_back, 0);
    }

    #[test]
    fn a_rejected_row_holds_back_the_later_rows_of_its_aggregate_when_blocking() {
        // given a bad row of aggregate x1 followed by a good one of x1 and one of another
        let mut first = row(1, "x1", true);
        first.headers = Some("[1]".into());
        let rows = || vec![first.clone(), row(2, "x1", true), row(3, "y", true)];

        // when the dead letter blocks its aggregate, then only the other aggregate flows
        let selection = select(rows(), true);
        assert_eq!(positions(&selection), vec![3]);
        assert_eq!(selection.rejected.len(), 1);

        // and with on_dead_letter = "skip" the later row flows
        assert_eq!(positions(&select(rows(), false)), vec![2, 3]);
    }

    #[test]
    fn a_null_payload_is_rejected_and_a_json_null_is_not() {
        let mut missing = row(1, "a", true);
        missing.payload = None;
        let mut json_null = row(2, "b", true);
        json_null.payload = Some("null".into());
        let selection = select(vec![missing, json_null], true);
        assert_eq!(selection.rejected[0].reason, "payload is NULL");
        assert_eq!(positions(&selection), vec![2]);
    }
}
