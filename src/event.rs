//! The event model every source produces and every sink consumes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Where an event sits in its source: the outbox row's position column when polling, the commit
/// LSN in logical mode. Sinks store it so a restarted relay can tell what it already delivered.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Position(pub u64);

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One outbox event, as committed by the application.
///
/// Field names on the wire follow Debezium's outbox event router (`aggregatetype`,
/// `aggregateid`, `type`) so consumers switching from it read the same shape.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    /// The event's unique id (the outbox row's `id`), kept as text as stored.
    pub id: String,
    /// The kind of aggregate the event belongs to; the default topic.
    #[serde(rename = "aggregatetype")]
    pub aggregate_type: String,
    /// The aggregate instance; the key that orders events.
    #[serde(rename = "aggregateid")]
    pub aggregate_id: String,
    /// What happened, e.g. `OrderPlaced`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The payload exactly as stored: valid JSON, never re-encoded.
    pub payload: Box<RawValue>,
    /// Extra headers: a JSON object, or absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Box<RawValue>>,
    /// When the application wrote the event.
    pub created_at: DateTime<Utc>,
    /// Where the event sits in its source.
    pub position: Position,
}

impl Event {
    /// Bytes of variable-size content, used to enforce sinks' size limits before encoding.
    pub fn content_len(&self) -> usize {
        self.id.len()
            + self.aggregate_type.len()
            + self.aggregate_id.len()
            + self.event_type.len()
            + self.payload.get().len()
            + self.headers.as_ref().map_or(0, |h| h.get().len())
    }
}

/// A row the source read but could not turn into an [`Event`], with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Where the row sits in its source.
    pub position: Position,
    /// The row's id as text, for the operator to find it.
    pub id: String,
    /// Why it cannot be delivered, in one sentence.
    pub reason: String,
}

/// An event a sink already holds, as the sink reports it at start-up: enough for the source to
/// recognise it when it comes round again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// Where the event sits in its source.
    pub position: Position,
    /// The event's id.
    pub id: String,
    /// Its aggregate, whose events a sink stores in source order.
    pub aggregate_id: String,
}

/// A sample event for unit tests, with the given headers JSON.
#[cfg(test)]
pub(crate) fn sample(headers: Option<&str>) -> Event {
    Event {
        id: "6f1c0000-0000-4000-8000-000000000001".into(),
        aggregate_type: "order".into(),
        aggregate_id: "42".into(),
        event_type: "OrderPlaced".into(),
        payload: RawValue::from_string(r#"{"total": "19.90"}"#.into()).expect("valid JSON"),
        headers: headers.map(|h| RawValue::from_string(h.into()).expect("valid JSON")),
        created_at: DateTime::from_timestamp(1_700_000_000, 5).expect("valid time"),
        position: Position(7),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_with_debezium_field_names_and_payload_untouched() {
        let event = Event {
            id: "6f1c".into(),
            aggregate_type: "order".into(),
            aggregate_id: "42".into(),
            event_type: "OrderPlaced".into(),
            payload: RawValue::from_string(r#"{"b":1,"a":[2]}"#.into()).unwrap(),
            headers: None,
            created_at: DateTime::from_timestamp(0, 0).unwrap(),
            position: Position(7),
        };
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.contains(r#""aggregatetype":"order""#), "{json}");
        assert!(json.contains(r#""payload":{"b":1,"a":[2]}"#), "{json}");
        assert!(json.contains(r#""position":7"#), "{json}");
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back.payload.get(), event.payload.get());
    }
}
