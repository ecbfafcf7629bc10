//! Turning decoded inserts and emitted messages into [`Event`]s.
//!
//! A row goes through the same checks as in polling mode (see `source::decode`), so both modes
//! accept and refuse exactly the same rows. An emitted message carries the same fields as JSON.

use super::timestamp;
use crate::config::ColumnsConfig;
use crate::event::{Event, Operation, Origin, Position, Rejected};
use crate::outbox::decode::{PendingRow, decode};
use crate::source::pgoutput::{Relation, Value};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

/// First half of the id given to an emitted event without one: "outboxd" in ASCII. The second
/// half is the message's LSN, so a replayed message gets the same id and the log dedupes it.
const MESSAGE_ID_NAMESPACE: u64 = 0x6f75_7462_6f78_6400;

/// Where each event field sits in an outbox table's tuples.
#[derive(Debug, Clone, Default)]
pub struct Columns {
    /// Index of the id column.
    id: Option<usize>,
    /// Index of the aggregate type column.
    aggregate_type: Option<usize>,
    /// Index of the aggregate id column.
    aggregate_id: Option<usize>,
    /// Index of the event type column.
    event_type: Option<usize>,
    /// Index of the payload column.
    payload: Option<usize>,
    /// Index of the headers column.
    headers: Option<usize>,
    /// Index of the created-at column.
    created_at: Option<usize>,
}

impl Columns {
    /// Finds the configured columns in `relation`.
    pub fn of(relation: &Relation, names: &ColumnsConfig) -> Self {
        let find = |name: &str| relation.columns.iter().position(|c| c.name == name);
        Columns {
            id: find(&names.id),
            aggregate_type: find(&names.aggregate_type),
            aggregate_id: find(&names.aggregate_id),
            event_type: find(&names.event_type),
            payload: find(&names.payload),
            headers: find(&names.headers),
            created_at: find(&names.created_at),
        }
    }
}

/// The event columns (`source.columns` key and configured name) that `relation` lacks: each
/// one would otherwise read as NULL.
pub fn missing(relation: &Relation, names: &ColumnsConfig) -> Vec<(&'static str, String)> {
    [
        ("id", &names.id),
        ("aggregate_type", &names.aggregate_type),
        ("aggregate_id", &names.aggregate_id),
        ("event_type", &names.event_type),
        ("payload", &names.payload),
        ("headers", &names.headers),
        ("created_at", &names.created_at),
    ]
    .into_iter()
    .filter(|(_, name)| !relation.columns.iter().any(|c| c.name == **name))
    .map(|(key, name)| (key, name.clone()))
    .collect()
}

/// Builds the event of an inserted row of the transaction committed at `position`.
pub fn from_row(
    columns: &Columns,
    values: &[Value<'_>],
    position: Position,
    commit_time: DateTime<Utc>,
) -> Result<Event, Rejected> {
    from_row_within(columns, values, position, commit_time, usize::MAX)
}

/// [`from_row`], rejecting a row whose payload and headers exceed `max_event_bytes` without
/// copying them (the stream delivers each row whole; this keeps it from being held twice, and
/// from travelling on through the relay).
pub fn from_row_within(
    columns: &Columns,
    values: &[Value<'_>],
    position: Position,
    commit_time: DateTime<Utc>,
    max_event_bytes: usize,
) -> Result<Event, Rejected> {
    let bytes = |index: Option<usize>| match index.and_then(|i| values.get(i)) {
        Some(Value::Text(bytes)) => Some(*bytes),
        _ => None,
    };
    // The server sends text in the database encoding, UTF-8 in practice: check it in one pass,
    // and replace invalid sequences only when there are some.
    let text = |index| {
        bytes(index).map(|bytes| match std::str::from_utf8(bytes) {
            Ok(text) => text.to_owned(),
            Err(_) => String::from_utf8_lossy(bytes).into_owned(),
        })
    };
    let created_at = bytes(columns.created_at).and_then(timestamp::parse);
    let size = [columns.payload, columns.headers]
        .into_iter()
        .map(|index| bytes(index).map_or(0, <[u8]>::len))
        .sum::<usize>();
    let fits = size <= max_event_bytes;
    let body = |index| if fits { text(index) } else { None };
    let row = PendingRow {
        position: position.0 as i64,
        ready: true,
        id: text(columns.id),
        aggregate_type: text(columns.aggregate_type),
        aggregate_id: text(columns.aggregate_id),
        event_type: text(columns.event_type),
        payload: body(columns.payload),
        headers: body(columns.headers),
        created_at: Some(created_at.unwrap_or(commit_time)),
        size: size as i64,
        fits,
        blocked_by: None,
    };
    let mut event = decode(row)?;
    // `decode` round-trips the position through i64; keep the LSN exactly as it was.
    event.position = position;
    Ok(event)
}

/// The JSON body of an event message: `pg_logical_emit_message(true, '<prefix>', <json>)`.
/// Unknown fields are ignored, so producers may add their own.
#[derive(Debug, Deserialize)]
struct MessageBody {
    /// Event id; default: derived from the message's LSN.
    #[serde(default)]
    id: Option<String>,
    /// Aggregate type.
    aggregatetype: String,
    /// Aggregate id.
    aggregateid: String,
    /// Event type.
    #[serde(rename = "type")]
    event_type: String,
    /// Payload, any JSON value.
    payload: Box<RawValue>,
    /// Headers, a JSON object, or absent / null.
    #[serde(default)]
    headers: Option<Box<RawValue>>,
}

/// Builds the event of an emitted message at `lsn` in the transaction committed at `position`,
/// or says (in one sentence) why it is not one.
pub fn from_message(
    prefix: &str,
    content: &[u8],
    lsn: u64,
    position: Position,
    commit_time: DateTime<Utc>,
) -> Result<Event, String> {
    let body: MessageBody = serde_json::from_slice(content)
        .map_err(|err| format!("message is not a valid event object: {err}"))?;
    for (field, value) in [
        ("aggregatetype", &body.aggregatetype),
        ("aggregateid", &body.aggregateid),
        ("type", &body.event_type),
    ] {
        if value.is_empty() {
            return Err(format!("\"{field}\" is empty"));
        }
    }
    let headers = body.headers.filter(|h| h.get() != "null");
    if let Some(headers) = &headers
        && !headers.get().trim_start().starts_with('{')
    {
        return Err("\"headers\" must be a JSON object".into());
    }
    let id = body
        .id
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| uuid::Uuid::from_u64_pair(MESSAGE_ID_NAMESPACE, lsn).to_string());
    Ok(Event {
        id,
        subject: body.aggregatetype,
        key: body.aggregateid,
        event_type: body.event_type,
        op: Operation::Message,
        origin: Origin::Message {
            prefix: prefix.to_owned(),
        },
        payload: body.payload,
        headers,
        created_at: commit_time,
        position,
    })
}

/// Converts a `pgoutput` time (microseconds since 2000-01-01 UTC) to a timestamp.
pub fn pg_time(micros: i64) -> DateTime<Utc> {
    const PG_EPOCH_UNIX_SECONDS: i64 = 946_684_800;
    DateTime::from_timestamp_micros(micros.saturating_add(PG_EPOCH_UNIX_SECONDS * 1_000_000))
        .unwrap_or_else(Utc::now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::pgoutput::{Column, ReplicaIdentity};

    fn outbox() -> Relation {
        Relation {
            id: 1,
            namespace: "public".into(),
            name: "outbox".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: [
                "id",
                "aggregatetype",
                "aggregateid",
                "type",
                "payload",
                "headers",
                "created_at",
            ]
            .map(Column::named)
            .to_vec(),
        }
    }

    #[test]
    fn inserted_row_becomes_an_event_at_the_commit_position() {
        let columns = Columns::of(&outbox(), &ColumnsConfig::default());
        let values = [
            Value::Text(b"6f1c"),
            Value::Text(b"order"),
            Value::Text(b"42"),
            Value::Text(b"OrderPlaced"),
            Value::Text(br#"{"a": 1}"#),
            Value::Null,
            Value::Text(b"2026-11-23 19:19:00.5+00"),
        ];
        let event = from_row(&columns, &values, Position(u64::MAX - 1), pg_time(0)).unwrap();
        assert_eq!(event.position, Position(u64::MAX - 1));
        assert_eq!((event.id.as_str(), event.key.as_str()), ("6f1c", "42"));
        assert_eq!(event.payload.get(), r#"{"a": 1}"#);
        assert_eq!(
            event.created_at.to_rfc3339(),
            "2026-11-23T19:19:00.500+00:00"
        );
    }

    #[test]
    fn created_at_with_and_without_time_zone_is_kept_and_anything_else_is_the_commit_time() {
        // given rows whose created_at is a timestamptz, a timestamp, and infinity
        let columns = Columns::of(&outbox(), &ColumnsConfig::default());
        let commit_time = pg_time(0);
        let created_at = |text: &'static str| {
            let values = [
                Value::Text(b"6f1c"),
                Value::Text(b"order"),
                Value::Text(b"42"),
                Value::Text(b"OrderPlaced"),
                Value::Text(b"{}"),
                Value::Null,
                Value::Text(text.as_bytes()),
            ];
            let event = from_row(&columns, &values, Position(7), commit_time).unwrap();
            event.created_at.to_rfc3339()
        };

        // then a time zone is applied, a timestamp without one is UTC (the session's zone),
        // and a value chrono cannot hold falls back to the commit time
        assert_eq!(
            created_at("2020-01-02 03:04:05.678+05:30"),
            "2020-01-01T21:34:05.678+00:00"
        );
        assert_eq!(
            created_at("2020-01-02 03:04:05.678"),
            "2020-01-02T03:04:05.678+00:00"
        );
        assert_eq!(
            created_at("2020-01-02 03:04:05"),
            "2020-01-02T03:04:05+00:00"
        );
        assert_eq!(created_at("infinity"), commit_time.to_rfc3339());
    }

    #[test]
    fn a_renamed_column_is_reported_missing_with_its_key() {
        let mut relation = outbox();
        assert!(missing(&relation, &ColumnsConfig::default()).is_empty());
        relation.columns[2] = Column::named("agg_id");
        assert_eq!(
            missing(&relation, &ColumnsConfig::default()),
            [("aggregate_id", "aggregateid".to_string())]
        );
    }

    #[test]
    fn row_without_aggregate_id_is_rejected_like_in_polling_mode() {
        let columns = Columns::of(&outbox(), &ColumnsConfig::default());
        let values = [Value::Text(b"6f1c"), Value::Text(b"order"), Value::Null];
        let rejected = from_row(&columns, &values, Position(7), pg_time(0)).unwrap_err();
        assert_eq!(rejected.reason, "aggregate id is NULL");
    }

    #[test]
    fn message_event_gets_a_stable_id_from_its_lsn() {
        let body = br#"{"aggregatetype":"order","aggregateid":"1","type":"X","payload":[1]}"#;
        let a = from_message("outboxd", body, 500, Position(600), pg_time(0)).unwrap();
        let b = from_message("outboxd", body, 500, Position(600), pg_time(0)).unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(a.payload.get(), "[1]");
        assert!(a.headers.is_none());
        let err = from_message(
            "outboxd",
            br#"{"aggregatetype":"order"}"#,
            1,
            Position(2),
            pg_time(0),
        );
        assert!(err.unwrap_err().contains("not a valid event object"));
        let bad_headers =
            br#"{"aggregatetype":"o","aggregateid":"1","type":"X","payload":1,"headers":[1]}"#;
        assert!(from_message("outboxd", bad_headers, 1, Position(2), pg_time(0)).is_err());
    }
}
