//! Events made by hand, for tests that publish to a sink directly.

use outboxd::event::{Event, Operation, Origin, Position};
use serde_json::value::RawValue;

/// An outbox event of type `Placed` of key `key`, with payload `{"seq": seq}` and position
/// `seq`.
pub fn outbox_event(key: &str, seq: i64) -> Event {
    Event {
        id: uuid::Uuid::new_v4().to_string(),
        subject: "order".into(),
        key: key.into(),
        event_type: "Placed".into(),
        op: Operation::Insert,
        origin: Origin::Outbox,
        payload: RawValue::from_string(format!(r#"{{"seq":{seq}}}"#)).unwrap(),
        headers: None,
        created_at: chrono::Utc::now(),
        position: Position(seq as u64),
    }
}
