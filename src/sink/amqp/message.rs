//! Turning an [`Event`] into an AMQP message: properties, headers and body.

use crate::event::Event;
use crate::sink::headers::{HeaderValue, event_headers};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde_json::Value;

/// AMQP delivery mode 2: the broker writes the message to disk before confirming it (for durable
/// queues), which is what makes a confirm mean "durably stored".
const PERSISTENT: u8 = 2;

/// AMQP short strings (message id, type, header names) hold at most 255 bytes.
const MAX_SHORT_STRING_BYTES: usize = 255;

/// The message properties: persistent, `message_id` = event id, `type` = event type,
/// `timestamp` = created_at in seconds, JSON content, `app_id` = outboxd, and [`headers`]. An
/// error (a header nested deeper than 128 levels) is the reason to refuse the event.
pub fn properties(event: &Event) -> Result<BasicProperties, String> {
    Ok(BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_message_id(ShortString::from(event.id.as_str()))
        .with_type(ShortString::from(event.event_type.as_str()))
        .with_timestamp(event.created_at.timestamp().max(0) as u64)
        .with_content_type(ShortString::from("application/json"))
        .with_app_id(ShortString::from("outboxd"))
        .with_headers(headers(event)?))
}

/// Why `event` cannot be sent as an AMQP message at all, if it cannot: a field that must fit in
/// a short string is longer than 255 bytes.
pub fn unsendable(event: &Event, routing_key: &str) -> Option<String> {
    let fields = [
        ("routing key", routing_key),
        ("event id", event.id.as_str()),
        ("event type", event.event_type.as_str()),
    ];
    let (name, value) = fields
        .into_iter()
        .find(|(_, value)| value.len() > MAX_SHORT_STRING_BYTES)?;
    Some(format!(
        "{name} of {} bytes exceeds AMQP's limit of {MAX_SHORT_STRING_BYTES}",
        value.len()
    ))
}

/// The AMQP headers: the shared mapping ([`crate::sink::headers`]): outboxd's own (`id`,
/// `type`, `aggregatetype`, `aggregateid`, `position`, …), which win over a row header of the
/// same name so consumers can rely on them, and every member of the row's `headers` object. An
/// error names a header too deeply nested to read, or one whose name is longer than AMQP's 255
/// bytes (dropping it would lose data silently).
pub fn headers(event: &Event) -> Result<FieldTable, String> {
    let mut table = FieldTable::default();
    for (name, value) in event_headers(event, None)? {
        if name.len() > MAX_SHORT_STRING_BYTES {
            let start: String = name.chars().take(32).collect();
            return Err(format!(
                "header name of {} bytes exceeds AMQP's limit of {MAX_SHORT_STRING_BYTES} \
                 (header \"{start}…\")",
                name.len()
            ));
        }
        let value = match value {
            HeaderValue::Text(text) => long_string(text),
            HeaderValue::Integer(n) => AMQPValue::LongLongInt(n),
            HeaderValue::Json(value) => header_value(value),
        };
        table.insert(ShortString::from(name), value);
    }
    Ok(table)
}

/// A JSON value as an AMQP header value: strings as long strings, integers and floats and
/// booleans natively, anything else (null, arrays, objects) as its JSON text, which every
/// consumer can read back, unlike AMQP's nested tables that some clients mangle.
pub fn header_value(value: Value) -> AMQPValue {
    match value {
        Value::String(text) => long_string(text),
        Value::Bool(flag) => AMQPValue::Boolean(flag),
        Value::Number(number) => {
            if let Some(int) = number.as_i64() {
                AMQPValue::LongLongInt(int)
            } else if let Some(float) = number.as_f64().filter(|_| !number.is_u64()) {
                AMQPValue::Double(float)
            } else {
                // A u64 above i64::MAX: AMQP has no unsigned 64-bit field RabbitMQ accepts.
                long_string(number.to_string())
            }
        }
        other => long_string(other.to_string()),
    }
}

/// A UTF-8 long string.
fn long_string(text: String) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A sample event, with the given headers JSON.
    pub(crate) fn event(headers: Option<&str>) -> Event {
        crate::event::sample(headers)
    }

    /// The header `name` of `table`.
    fn get<'a>(table: &'a FieldTable, name: &str) -> &'a AMQPValue {
        table.inner().get(name).expect(name)
    }

    #[test]
    fn json_header_values_map_to_amqp_types() {
        let table = headers(&event(Some(
            r#"{"trace":"abc","n":-3,"big":18446744073709551615,"f":1.5,"ok":true,
                "none":null,"list":[1,"a"],"obj":{"k":1}}"#,
        )))
        .unwrap();
        assert_eq!(get(&table, "trace"), &long_string("abc".into()));
        assert_eq!(get(&table, "n"), &AMQPValue::LongLongInt(-3));
        assert_eq!(
            get(&table, "big"),
            &long_string("18446744073709551615".into())
        );
        assert_eq!(get(&table, "f"), &AMQPValue::Double(1.5));
        assert_eq!(get(&table, "ok"), &AMQPValue::Boolean(true));
        assert_eq!(get(&table, "none"), &long_string("null".into()));
        assert_eq!(get(&table, "list"), &long_string(r#"[1,"a"]"#.into()));
        assert_eq!(get(&table, "obj"), &long_string(r#"{"k":1}"#.into()));
    }

    #[test]
    fn outboxd_headers_are_added_and_win_over_row_headers() {
        let table = headers(&event(Some(r#"{"aggregateid":"spoofed"}"#))).unwrap();
        assert_eq!(get(&table, "aggregatetype"), &long_string("order".into()));
        assert_eq!(get(&table, "aggregateid"), &long_string("42".into()));
        assert_eq!(get(&table, "position"), &AMQPValue::LongLongInt(7));
        assert_eq!(get(&table, "id"), &long_string(event(None).id));
        assert_eq!(get(&table, "type"), &long_string("OrderPlaced".into()));
        assert_eq!(headers(&event(None)).unwrap().inner().len(), 5);
    }

    #[test]
    fn properties_carry_the_event_metadata() {
        let props = properties(&event(None)).unwrap();
        assert_eq!(props.delivery_mode(), &Some(PERSISTENT));
        assert_eq!(
            props.message_id().as_ref().map(|s| s.as_str()),
            Some("6f1c0000-0000-4000-8000-000000000001")
        );
        assert_eq!(
            props.kind().as_ref().map(|s| s.as_str()),
            Some("OrderPlaced")
        );
        assert_eq!(props.timestamp(), &Some(1_700_000_000));
        assert_eq!(
            props.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(props.app_id().as_ref().map(|s| s.as_str()), Some("outboxd"));
    }

    #[test]
    fn over_long_short_strings_make_an_event_unsendable() {
        let mut long = event(None);
        long.event_type = "x".repeat(256);
        let reason = unsendable(&long, "k").unwrap();
        assert_eq!(
            reason,
            "event type of 256 bytes exceeds AMQP's limit of 255"
        );
        assert_eq!(unsendable(&event(None), "order.OrderPlaced"), None);
    }

    #[test]
    fn an_over_long_header_name_is_a_refusal_naming_it() {
        let name = "n".repeat(256);
        let reason = headers(&event(Some(&format!(r#"{{"{name}":1}}"#)))).unwrap_err();
        assert!(
            reason.starts_with("header name of 256 bytes exceeds AMQP's limit of 255"),
            "{reason}"
        );
        let fits = "n".repeat(255);
        assert!(headers(&event(Some(&format!(r#"{{"{fits}":1}}"#)))).is_ok());
    }
}
