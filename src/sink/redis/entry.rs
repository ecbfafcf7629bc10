//! Turning an [`Event`] into a stream entry's fields: `id`, `type`, `key`, `payload` (the JSON
//! as stored), `headers` (the shared mapping, [`crate::sink::headers`], as one JSON object),
//! and for change events `op`, `schema` and `table`.

use crate::event::{Event, Origin, TableName};
use crate::sink::headers::{HeaderValue, event_headers};
use serde::ser::{SerializeMap, Serializer};
use std::borrow::Cow;

/// The entry's fields, name and value, in order; the event's own strings are borrowed, not
/// copied (this runs once per entry). An error (a header nested deeper than 128 levels) is the
/// reason to refuse the event.
pub fn fields<'a>(
    event: &'a Event,
    outbox: &'a TableName,
) -> Result<Vec<(&'static str, Cow<'a, str>)>, String> {
    let mut fields = Vec::with_capacity(8);
    fields.extend([
        ("id", Cow::Borrowed(event.id.as_str())),
        ("type", Cow::Borrowed(event.event_type.as_str())),
        ("key", Cow::Borrowed(event.key.as_str())),
        ("payload", Cow::Borrowed(event.payload.get())),
        ("headers", Cow::Owned(headers_json(event)?)),
    ]);
    if !matches!(event.origin, Origin::Outbox) {
        let (schema, table) = event.schema_and_table(outbox);
        fields.extend([
            ("op", Cow::Borrowed(event.op.name())),
            ("schema", Cow::Borrowed(schema)),
            ("table", Cow::Borrowed(table)),
        ]);
    }
    Ok(fields)
}

/// The shared header mapping as one JSON object, written straight to text.
fn headers_json(event: &Event) -> Result<String, String> {
    let headers = event_headers(event, None)?;
    let mut out = Vec::with_capacity(192);
    let mut serializer = serde_json::Serializer::new(&mut out);
    let written: Result<(), serde_json::Error> = (|| {
        let mut map = serializer.serialize_map(Some(headers.len()))?;
        for (name, value) in &headers {
            match value {
                HeaderValue::Text(text) => map.serialize_entry(name, text)?,
                HeaderValue::Integer(n) => map.serialize_entry(name, n)?,
                HeaderValue::Json(json) => map.serialize_entry(name, json)?,
            }
        }
        map.end()
    })();
    written.map_err(|err| format!("headers cannot be written as JSON: {err}"))?;
    String::from_utf8(out).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Operation, sample};
    use serde_json::Value;

    /// The value of field `name`.
    fn get<'a>(fields: &'a [(&'static str, Cow<'_, str>)], name: &str) -> &'a str {
        fields
            .iter()
            .find(|f| f.0 == name)
            .map(|f| f.1.as_ref())
            .expect(name)
    }

    #[test]
    fn an_outbox_event_has_its_fields_and_headers_as_json() {
        let event = sample(Some(r#"{"trace":"t1","n":2}"#));
        let outbox = TableName::default();
        let fields = fields(&event, &outbox).unwrap();
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
        let outbox = TableName::default();
        let fields = fields(&event, &outbox).unwrap();
        assert_eq!(get(&fields, "op"), "update");
        assert_eq!(get(&fields, "schema"), "shop");
        assert_eq!(get(&fields, "table"), "orders");
    }
}
