//! The change-event model every capture mode produces and every sink consumes.
//!
//! An [`Event`] says what changed ([`Operation`]), where it came from ([`Origin`]), which key
//! orders it against others ([`Event::key`]) and what it carries. The outbox is one mapping onto
//! events (its rows are inserts keyed by their aggregate id); changes to other tables and logical
//! decoding messages are others. Nothing below the sources knows outbox column names: lanes hash
//! the key, templates, log records, headers and sinks read these fields.

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

/// What happened to produce the event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// A row was inserted (every outbox event is one).
    #[default]
    Insert,
    /// A row was updated.
    Update,
    /// A row was deleted.
    Delete,
    /// A table was truncated.
    Truncate,
    /// A row read by a snapshot or backfill, not a change.
    Read,
    /// A logical decoding message (`pg_logical_emit_message`).
    Message,
}

impl Operation {
    /// Every operation, in the order of their stored bytes.
    pub const ALL: [Operation; 6] = [
        Operation::Insert,
        Operation::Update,
        Operation::Delete,
        Operation::Truncate,
        Operation::Read,
        Operation::Message,
    ];

    /// The lowercase name, as templates' `{op}` and the log's JSON output write it.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Delete => "delete",
            Operation::Truncate => "truncate",
            Operation::Read => "read",
            Operation::Message => "message",
        }
    }

    /// The byte the embedded log stores (stable: never renumber).
    pub fn to_byte(self) -> u8 {
        match self {
            Operation::Insert => 0,
            Operation::Update => 1,
            Operation::Delete => 2,
            Operation::Truncate => 3,
            Operation::Read => 4,
            Operation::Message => 5,
        }
    }

    /// The operation stored as `byte`, if it is one.
    pub fn from_byte(byte: u8) -> Option<Self> {
        Operation::ALL.into_iter().find(|op| op.to_byte() == byte)
    }
}

/// Where an event was captured.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Origin {
    /// The outbox table (its name is the relay's configuration, not repeated per event).
    #[default]
    Outbox,
    /// A captured table.
    Table {
        /// Its schema.
        schema: String,
        /// Its name.
        table: String,
    },
    /// A logical decoding message.
    Message {
        /// The message's prefix.
        prefix: String,
    },
}

impl Origin {
    /// Whether this is the outbox table (serialization leaves it out: the outbox's shape on the
    /// wire is unchanged).
    pub fn is_outbox(&self) -> bool {
        matches!(self, Origin::Outbox)
    }
}

/// A table's schema and name, e.g. the outbox table's, which its events do not repeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TableName {
    /// The schema, e.g. `public`.
    pub schema: String,
    /// The table's name within it.
    pub table: String,
}

impl TableName {
    /// The name of `schema`.`table`.
    pub fn new(schema: impl Into<String>, table: impl Into<String>) -> Self {
        TableName {
            schema: schema.into(),
            table: table.into(),
        }
    }
}

/// One change event.
///
/// Serialized with the outbox's Debezium-compatible names (`aggregatetype`, `aggregateid`,
/// `type`), so consumers switching from Debezium's outbox event router read the same shape; `op`
/// and a non-outbox `origin` are added beside them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    /// The event's unique id (the outbox row's `id`), kept as text as stored.
    pub id: String,
    /// What the event is about, used to route it: the outbox's aggregate type, a table's
    /// `schema.table`, a message's prefix. Templates' `{aggregatetype}`.
    #[serde(rename = "aggregatetype")]
    pub subject: String,
    /// The ordering key: events with equal keys are delivered in source order (the outbox's
    /// aggregate id; a table row's primary key). Lanes hash it; brokers partition by it.
    #[serde(rename = "aggregateid")]
    pub key: String,
    /// What happened, e.g. `OrderPlaced`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Which change produced it.
    #[serde(default)]
    pub op: Operation,
    /// Where it was captured.
    #[serde(default, skip_serializing_if = "Origin::is_outbox")]
    pub origin: Origin,
    /// The payload exactly as stored: valid JSON, never re-encoded.
    pub payload: Box<RawValue>,
    /// Extra headers: a JSON object, or absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Box<RawValue>>,
    /// When the application wrote the event (the commit time where that is all there is).
    pub created_at: DateTime<Utc>,
    /// Where the event sits in its source.
    pub position: Position,
}

impl Event {
    /// The schema and table the event comes from, as templates' `{schema}` and `{table}` name
    /// them: the outbox's (`outbox`) for outbox events, the captured table's for table changes,
    /// and for a logical message no schema and its prefix.
    pub fn schema_and_table<'a>(&'a self, outbox: &'a TableName) -> (&'a str, &'a str) {
        match &self.origin {
            Origin::Outbox => (&outbox.schema, &outbox.table),
            Origin::Table { schema, table } => (schema, table),
            Origin::Message { prefix } => ("", prefix),
        }
    }

    /// Bytes of variable-size content, used to enforce sinks' size limits before encoding.
    pub fn content_len(&self) -> usize {
        let origin = match &self.origin {
            Origin::Outbox => 0,
            Origin::Table { schema, table } => schema.len() + table.len(),
            Origin::Message { prefix } => prefix.len(),
        };
        self.id.len()
            + self.subject.len()
            + self.key.len()
            + self.event_type.len()
            + origin
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
    /// Its ordering key, whose events a sink stores in source order.
    pub key: String,
}

/// A sample event for unit tests, with the given headers JSON.
#[cfg(test)]
pub(crate) fn sample(headers: Option<&str>) -> Event {
    Event {
        id: "6f1c0000-0000-4000-8000-000000000001".into(),
        subject: "order".into(),
        key: "42".into(),
        event_type: "OrderPlaced".into(),
        op: Operation::Insert,
        origin: Origin::Outbox,
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
        let mut event = sample(None);
        event.payload = RawValue::from_string(r#"{"b":1,"a":[2]}"#.into()).unwrap();
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.contains(r#""aggregatetype":"order""#), "{json}");
        assert!(json.contains(r#""aggregateid":"42""#), "{json}");
        assert!(json.contains(r#""op":"insert""#), "{json}");
        assert!(
            !json.contains("origin"),
            "the outbox origin is implied: {json}"
        );
        assert!(json.contains(r#""payload":{"b":1,"a":[2]}"#), "{json}");
        assert!(json.contains(r#""position":7"#), "{json}");
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back.payload.get(), event.payload.get());
    }

    #[test]
    fn a_table_change_names_its_origin_and_the_first_format_still_reads() {
        let mut event = sample(None);
        event.op = Operation::Delete;
        event.origin = Origin::Table {
            schema: "public".into(),
            table: "orders".into(),
        };
        let json = serde_json::to_string(&event).unwrap();
        assert!(
            json.contains(r#""origin":{"kind":"table","schema":"public","table":"orders"}"#),
            "{json}"
        );
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!((back.op, back.origin), (event.op, event.origin));
        // Records of the first log format have neither field.
        let old = r#"{"id":"1","aggregatetype":"a","aggregateid":"k","type":"T","payload":{},
            "created_at":"2024-01-01T00:00:00Z","position":3}"#;
        let old: Event = serde_json::from_str(old).unwrap();
        assert_eq!((old.op, old.origin), (Operation::Insert, Origin::Outbox));
    }

    #[test]
    fn operation_bytes_round_trip_and_unknown_bytes_are_refused() {
        for op in Operation::ALL {
            assert_eq!(Operation::from_byte(op.to_byte()), Some(op));
        }
        assert_eq!(Operation::from_byte(6), None);
    }
}
