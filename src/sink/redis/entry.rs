//! Turning an [`Event`] into a stream entry's fields: `id`, `type`, `key`, `payload` (the JSON
//! as stored), `headers` (the shared mapping, [`crate::sink::headers`], as one JSON object),
//! and for change events `op`, `schema` and `table`.

use crate::event::{Event, Origin, TableName};
use crate::sink::headers::{HeaderValue, event_headers};
use serde_json::{Map, Value};

/// The entry's fields, name and value, in order. An error (a header nested deeper than 128
/// levels) is the reason to refuse the event.
pub fn fields<'a>(
    event: &'a Event,
    outbox: &'a TableName,
) -> Result<Vec<(&'static str, String)>, String> {
    let mut headers = Map::new();
    for (name, value) in event_headers(event, None)? {
        let value = match value {
            HeaderValue::Text(text) => Value::String(text),
            HeaderValue::Integer(n) => Value::from(n),
            HeaderValue::Json(value) => value,
        };
        headers.insert(name, value);
    }
    let mut fields = vec![
        ("id", event.id.clone()),
        ("type", event.event_type.clone()),
        ("key", event.key.clone()),
        ("payload", event.payload.get().to_string()),
        ("headers", Value::Object(headers).to_string()),
    ];
    if !matches!(event.origin, Origin::Outbox) {
        let (schema, table) = event.schema_and_table(outbox);
        fields.extend([
            ("op", event.op.name().to_string()),
            ("schema", schema.to_string()),
            ("table", table.to_string()),
        ]);
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Operation, sample};

    /// The value of field `name`.
    fn get<'a>(fields: &'a [(&'static str, String)], name: &str) -> &'a str {
        fields
            .iter()
            .find(|f| f.0 == name)
            .map(|f| f.1.as_str())
            .expect(name)
    }

    #[test]
    fn an_outbox_event_has_its_fields_and_headers_as_json() {
        let event = sample(Some(r#"{"trace":"t1","n":2}"#));
        let fields = fields(&event, &TableName::default()).unwrap();
        let names: Vec<&str> = fields.iter().map(|f| f.0).collect();
        assert_eq!(names, ["id", "type", "key", "payload", "headers"]);
        assert_eq!(get(&fields, "id"), "6f1c0000-0000-4000-8000-000000000001");
        assert_eq!(get(&fields, "type"), "OrderPlaced");
        assert_eq!(get(&fields, "key"), "42");
        assert_eq!(get(&fields, "payload"), r#"{"total": "19.90"}"#);
        let headers: Value = serde_json::from_str(get(&fields, "headers")).unwrap();
        assert_eq!(headers["aggregatetype"], "order");
        assert_eq!(headers["position"], 7);
        assert_eq!(headers["trace"], "t1");
        assert_eq!(headers["n"], 2);
    }

    #[test]
    fn a_change_event_adds_op_schema_and_table() {
        let mut event = sample(None);
        event.op = Operation::Update;
        event.origin = Origin::Table {
            schema: "shop".into(),
            table: "orders".into(),
        };
        let fields = fields(&event, &TableName::default()).unwrap();
        assert_eq!(get(&fields, "op"), "update");
        assert_eq!(get(&fields, "schema"), "shop");
        assert_eq!(get(&fields, "table"), "orders");
    }
}
