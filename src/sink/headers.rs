//! The headers every sink sends with an event, written once: outboxd's own (`id`, `type`,
//! `aggregatetype`, `aggregateid`, `position`, and for table changes `op`, `schema`, `table`),
//! the CloudEvents attributes when asked for, then every member of the row's `headers` object
//! that does not take one of those names. Each sink writes these values in its protocol's types
//! and with its binding's prefix for CloudEvents (`ce_` for Kafka).
//!
//! serde_json refuses values nested deeper than 128 levels. Reading the object as raw members
//! first (which has no depth limit) and each value on its own makes that refusal one member's,
//! with its name, so the event becomes a dead letter that says why instead of silently losing
//! every header.

use crate::event::{Event, Origin};
use chrono::SecondsFormat;
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// The CloudEvents version the attributes follow.
pub const CLOUDEVENTS_SPEC_VERSION: &str = "1.0";

/// One header's value, before a sink writes it in its protocol's types.
#[derive(Clone, Debug, PartialEq)]
pub enum HeaderValue {
    /// Text.
    Text(String),
    /// A whole number (the event's position).
    Integer(i64),
    /// A value of the row's `headers` object, as parsed.
    Json(Value),
}

impl HeaderValue {
    /// The value as text: strings as they are, anything else as its JSON text.
    pub fn into_text(self) -> String {
        match self {
            HeaderValue::Text(text) | HeaderValue::Json(Value::String(text)) => text,
            HeaderValue::Integer(n) => n.to_string(),
            HeaderValue::Json(other) => other.to_string(),
        }
    }
}

/// Whether, and how, CloudEvents attributes go with each event.
#[derive(Clone, Copy, Debug)]
pub struct CloudEvents<'a> {
    /// The `source` attribute.
    pub source: &'a str,
    /// The binding's prefix of attribute names (`ce_` in Kafka's binary mode).
    pub prefix: &'a str,
}

/// Every header of `event`, in order: outboxd's own, then CloudEvents attributes (and
/// `content-type`) if `cloudevents` is given, then the row's headers that do not take a name
/// already used, so consumers can rely on outboxd's. An error (a header nested deeper than 128
/// levels) is the reason to refuse the event.
pub fn event_headers(
    event: &Event,
    cloudevents: Option<CloudEvents<'_>>,
) -> Result<Vec<(String, HeaderValue)>, String> {
    let text = |name: &str, value: &str| (name.to_owned(), HeaderValue::Text(value.to_owned()));
    let mut headers = vec![
        text("id", &event.id),
        text("type", &event.event_type),
        text("aggregatetype", &event.subject),
        text("aggregateid", &event.key),
        (
            "position".to_owned(),
            HeaderValue::Integer(i64::try_from(event.position.0).unwrap_or(i64::MAX)),
        ),
    ];
    if let Origin::Table { schema, table } = &event.origin {
        headers.extend([
            text("op", event.op.name()),
            text("schema", schema),
            text("table", table),
        ]);
    }
    if let Some(ce) = cloudevents {
        let time = event
            .created_at
            .to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let p = ce.prefix;
        headers.extend([
            text(&format!("{p}id"), &event.id),
            text(&format!("{p}type"), &event.event_type),
            text(&format!("{p}source"), ce.source),
            text(&format!("{p}specversion"), CLOUDEVENTS_SPEC_VERSION),
            text(&format!("{p}time"), &time),
            text("content-type", "application/json"),
        ]);
    }
    // Row header names are unique (an object's keys), so only outboxd's own few need checking:
    // linear in the number of row headers.
    let reserved = headers.len();
    for (name, value) in row_headers(event)? {
        if headers[..reserved].iter().any(|(taken, _)| *taken == name) {
            continue;
        }
        headers.push((name, HeaderValue::Json(value)));
    }
    Ok(headers)
}

/// The members of `event`'s headers object; none if it has no headers. An error names the
/// member that could not be read.
pub fn row_headers(event: &Event) -> Result<Vec<(String, Value)>, String> {
    let Some(raw) = &event.headers else {
        return Ok(Vec::new());
    };
    let members: BTreeMap<String, Box<RawValue>> = serde_json::from_str(raw.get())
        .map_err(|err| format!("headers are not a JSON object: {err}"))?;
    members
        .into_iter()
        .map(|(name, value)| {
            serde_json::from_str(value.get())
                .map(|value| (name.clone(), value))
                .map_err(|err| format!("header {name:?} cannot be relayed: {err}"))
        })
        .collect()
}

/// The header a dead letter published to `relay.dead_letter_topic` carries: why it is one.
pub const DEAD_LETTER_REASON: &str = "outboxd-dead-letter-reason";
/// The header with the attempts a dead letter made, when known.
pub const DEAD_LETTER_ATTEMPTS: &str = "outboxd-dead-letter-attempts";
/// Where the headers of an event whose headers are not a JSON object go, on its dead letter.
pub const DEAD_LETTER_ORIGINAL_HEADERS: &str = "outboxd-dead-letter-headers";

/// `event` as a dead letter: the same event with [`DEAD_LETTER_REASON`] (and
/// [`DEAD_LETTER_ATTEMPTS`], if known) added to its headers object. Every header it had is
/// kept, read as raw members so none is re-encoded and depth is no limit; headers that are
/// not an object are kept whole under [`DEAD_LETTER_ORIGINAL_HEADERS`].
pub fn dead_letter(event: &Event, reason: &str, attempts: Option<i32>) -> Event {
    let mut members: BTreeMap<String, Box<RawValue>> = BTreeMap::new();
    if let Some(raw) = &event.headers {
        match serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(raw.get()) {
            Ok(object) => members = object,
            Err(_) => {
                members.insert(DEAD_LETTER_ORIGINAL_HEADERS.to_owned(), raw.clone());
            }
        }
    }
    // A string and a number always serialize; `ok()` only keeps this free of panics.
    if let Ok(reason) = serde_json::value::to_raw_value(reason) {
        members.insert(DEAD_LETTER_REASON.to_owned(), reason);
    }
    members.remove(DEAD_LETTER_ATTEMPTS);
    if let Some(Ok(attempts)) = attempts.map(|n| serde_json::value::to_raw_value(&n)) {
        members.insert(DEAD_LETTER_ATTEMPTS.to_owned(), attempts);
    }
    let mut letter = event.clone();
    // A map of strings to valid JSON values always serializes.
    letter.headers = serde_json::value::to_raw_value(&members).ok();
    letter
}

/// Whether `event` is a dead letter (carries [`DEAD_LETTER_REASON`]): the embedded log does
/// not count such a record as the event's delivery.
pub fn is_dead_letter(event: &Event) -> bool {
    let Some(raw) = &event.headers else {
        return false;
    };
    // Cheap first: almost no record mentions the name at all.
    raw.get().contains(DEAD_LETTER_REASON)
        && serde_json::from_str::<BTreeMap<String, &RawValue>>(raw.get())
            .is_ok_and(|members| members.contains_key(DEAD_LETTER_REASON))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of header `name`, as text.
    fn get(headers: &[(String, HeaderValue)], name: &str) -> String {
        let found = headers.iter().find(|(key, _)| key == name).expect(name);
        found.1.clone().into_text()
    }

    #[test]
    fn outboxd_headers_come_first_and_win_over_row_headers() {
        let event = crate::event::sample(Some(r#"{"aggregateid":"spoofed","trace":"t1"}"#));
        let headers = event_headers(&event, None).unwrap();
        let names: Vec<&str> = headers.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(
            names,
            [
                "id",
                "type",
                "aggregatetype",
                "aggregateid",
                "position",
                "trace"
            ]
        );
        assert_eq!(get(&headers, "aggregateid"), "42");
        assert_eq!(headers[4].1, HeaderValue::Integer(7));
    }

    #[test]
    fn a_table_change_names_its_operation_and_table() {
        let mut event = crate::event::sample(Some(r#"{"op":"spoofed"}"#));
        event.op = crate::event::Operation::Delete;
        event.origin = Origin::Table {
            schema: "shop".into(),
            table: "orders".into(),
        };
        let headers = event_headers(&event, None).unwrap();
        assert_eq!(get(&headers, "op"), "delete");
        assert_eq!(get(&headers, "schema"), "shop");
        assert_eq!(get(&headers, "table"), "orders");
        assert_eq!(headers.iter().filter(|(key, _)| key == "op").count(), 1);
    }

    #[test]
    fn cloudevents_attributes_take_the_bindings_prefix_and_cannot_be_spoofed() {
        let event = crate::event::sample(Some(r#"{"ce_id":"spoofed"}"#));
        let ce = CloudEvents {
            source: "/shop/orders",
            prefix: "ce_",
        };
        let headers = event_headers(&event, Some(ce)).unwrap();
        assert_eq!(
            get(&headers, "ce_id"),
            "6f1c0000-0000-4000-8000-000000000001"
        );
        assert_eq!(get(&headers, "ce_type"), "OrderPlaced");
        assert_eq!(get(&headers, "ce_source"), "/shop/orders");
        assert_eq!(get(&headers, "ce_specversion"), "1.0");
        assert_eq!(get(&headers, "ce_time"), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(get(&headers, "content-type"), "application/json");
        assert_eq!(headers.iter().filter(|(key, _)| key == "ce_id").count(), 1);
    }

    #[test]
    fn a_dead_letter_keeps_every_header_and_adds_its_reason() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let headers = format!(r#"{{"trace":"t1","deep":{deep},"{DEAD_LETTER_REASON}":"spoofed"}}"#);
        let event = crate::event::sample(Some(&headers));
        assert!(!is_dead_letter(&crate::event::sample(Some(
            r#"{"trace":"t1"}"#
        ))));
        let letter = dead_letter(&event, "too \"big\"", Some(3));
        assert!(is_dead_letter(&letter));
        let members: BTreeMap<String, Box<RawValue>> =
            serde_json::from_str(letter.headers.as_ref().unwrap().get()).unwrap();
        assert_eq!(members["trace"].get(), r#""t1""#);
        assert_eq!(members["deep"].get(), deep);
        assert_eq!(members[DEAD_LETTER_REASON].get(), r#""too \"big\"""#);
        assert_eq!(members[DEAD_LETTER_ATTEMPTS].get(), "3");
        assert_eq!(letter.payload.get(), event.payload.get());
        assert_eq!((letter.id, letter.position), (event.id, event.position));
        let bare = dead_letter(&crate::event::sample(None), "refused", None);
        assert_eq!(
            bare.headers.unwrap().get(),
            format!(r#"{{"{DEAD_LETTER_REASON}":"refused"}}"#)
        );
        let odd = dead_letter(&crate::event::sample(Some("[1,2]")), "refused", None);
        let members: BTreeMap<String, Box<RawValue>> =
            serde_json::from_str(odd.headers.as_ref().unwrap().get()).unwrap();
        assert_eq!(members[DEAD_LETTER_ORIGINAL_HEADERS].get(), "[1,2]");
    }

    #[test]
    fn a_header_nested_too_deep_is_an_error_naming_it_not_a_silent_loss() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let event = crate::event::sample(Some(&format!(r#"{{"ok":"x","deep":{deep}}}"#)));
        let err = row_headers(&event).unwrap_err();
        assert!(
            err.starts_with("header \"deep\" cannot be relayed: recursion limit"),
            "{err}"
        );
        let event = crate::event::sample(Some(r#"{"b":1,"a":"x"}"#));
        let names: Vec<String> = row_headers(&event)
            .unwrap()
            .into_iter()
            .map(|m| m.0)
            .collect();
        assert_eq!(names, ["a", "b"]);
    }
}
