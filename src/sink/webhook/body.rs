//! Writing events into request bodies: outboxd's JSON object (`id`, `type`, `key`,
//! `aggregatetype`, `op`, `origin`, `time`, `position`, `payload` as stored, `headers` from
//! the shared mapping), a CloudEvents 1.0 structured-mode event, or for binary mode the
//! payload alone with the attributes as `ce-` headers (values percent-encoded as the HTTP
//! binding requires).

use super::config::CloudEventsMode;
use crate::event::Event;
use crate::sink::headers::{CLOUDEVENTS_SPEC_VERSION, HeaderValue, event_headers};
use chrono::SecondsFormat;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use std::fmt::Write;

/// The `Content-Type` of a request in `mode`, of one event or of a batch.
pub fn content_type(mode: CloudEventsMode, batch: bool) -> &'static str {
    match (mode, batch) {
        (CloudEventsMode::Structured, false) => "application/cloudevents+json",
        (CloudEventsMode::Structured, true) => "application/cloudevents-batch+json",
        _ => "application/json",
    }
}

/// Appends `event` as one body (or one element of a batch's array) in `mode` to `out`; in
/// binary mode that is the payload. An error (a header nested deeper than 128 levels) is the
/// reason to refuse the event.
pub fn write_event(
    event: &Event,
    mode: CloudEventsMode,
    source: &str,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let written = match mode {
        CloudEventsMode::Binary => {
            out.extend_from_slice(event.payload.get().as_bytes());
            Ok(())
        }
        CloudEventsMode::Structured => structured(event, source, out),
        CloudEventsMode::None => own(event, out)?,
    };
    written.map_err(|err| format!("the event cannot be written as JSON: {err}"))
}

/// outboxd's JSON object; the outer error is the shared header mapping's refusal.
fn own(event: &Event, out: &mut Vec<u8>) -> Result<Result<(), serde_json::Error>, String> {
    let headers = event_headers(event, None)?;
    let time = event
        .created_at
        .to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let mut serializer = serde_json::Serializer::new(out);
    Ok((|| {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &event.id)?;
        map.serialize_entry("type", &event.event_type)?;
        map.serialize_entry("key", &event.key)?;
        map.serialize_entry("aggregatetype", &event.subject)?;
        map.serialize_entry("op", event.op.name())?;
        map.serialize_entry("origin", &event.origin)?;
        map.serialize_entry("time", &time)?;
        map.serialize_entry("position", &event.position.0)?;
        map.serialize_entry("payload", &event.payload)?;
        map.serialize_entry("headers", &Headers(&headers))?;
        map.end()
    })())
}

/// The CloudEvent: the required attributes, `time`, `datacontenttype`, the `partitionkey`
/// extension (the ordering key) and the payload as `data`.
fn structured(event: &Event, source: &str, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let time = event
        .created_at
        .to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let mut serializer = serde_json::Serializer::new(out);
    let mut map = serializer.serialize_map(None)?;
    map.serialize_entry("specversion", CLOUDEVENTS_SPEC_VERSION)?;
    map.serialize_entry("id", &event.id)?;
    map.serialize_entry("source", source)?;
    map.serialize_entry("type", &event.event_type)?;
    map.serialize_entry("time", &time)?;
    map.serialize_entry("datacontenttype", "application/json")?;
    map.serialize_entry("partitionkey", &event.key)?;
    map.serialize_entry("data", &event.payload)?;
    map.end()
}

/// The binary-mode headers of `event`: name and percent-encoded value.
pub fn binary_headers(event: &Event, source: &str) -> Vec<(&'static str, String)> {
    let time = event
        .created_at
        .to_rfc3339_opts(SecondsFormat::AutoSi, true);
    vec![
        ("ce-specversion", CLOUDEVENTS_SPEC_VERSION.to_string()),
        ("ce-id", percent_encode(&event.id)),
        ("ce-source", percent_encode(source)),
        ("ce-type", percent_encode(&event.event_type)),
        ("ce-time", time),
        ("ce-partitionkey", percent_encode(&event.key)),
    ]
}

/// The shared header mapping as a JSON object.
struct Headers<'a>(&'a [(String, HeaderValue)]);

impl Serialize for Headers<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            match value {
                HeaderValue::Text(text) => map.serialize_entry(name, text)?,
                HeaderValue::Integer(n) => map.serialize_entry(name, n)?,
                HeaderValue::Json(json) => map.serialize_entry(name, json)?,
            }
        }
        map.end()
    }
}

/// Percent-encodes a header value as the CloudEvents HTTP binding requires: space, `"`, `%`
/// and every byte outside printable ASCII, upper-case hex.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x21..=0x7e).contains(&byte) && byte != b'"' && byte != b'%' {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::sample;
    use serde_json::Value;

    /// `event` written in `mode`, parsed back.
    fn written(event: &Event, mode: CloudEventsMode) -> Value {
        let mut out = Vec::new();
        write_event(event, mode, "/shop", &mut out).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn the_default_body_is_the_event_with_its_payload_and_headers() {
        let body = written(&sample(Some(r#"{"trace":"t1"}"#)), CloudEventsMode::None);
        assert_eq!(body["id"], "6f1c0000-0000-4000-8000-000000000001");
        assert_eq!(body["type"], "OrderPlaced");
        assert_eq!(body["key"], "42");
        assert_eq!(body["origin"]["kind"], "outbox");
        assert_eq!(body["payload"]["total"], "19.90");
        assert_eq!(body["headers"]["trace"], "t1");
        assert_eq!(body["position"], 7);
    }

    #[test]
    fn structured_mode_is_a_cloudevent_with_the_payload_as_data() {
        let body = written(&sample(None), CloudEventsMode::Structured);
        assert_eq!(body["specversion"], "1.0");
        assert_eq!(body["id"], "6f1c0000-0000-4000-8000-000000000001");
        assert_eq!(body["source"], "/shop");
        assert_eq!(body["type"], "OrderPlaced");
        assert_eq!(body["time"], "2023-11-14T22:13:20.000000005Z");
        assert_eq!(body["data"]["total"], "19.90");
        assert_eq!(body["partitionkey"], "42");
        assert_eq!(
            content_type(CloudEventsMode::Structured, true),
            "application/cloudevents-batch+json"
        );
    }

    #[test]
    fn binary_mode_sends_the_payload_and_encoded_attributes() {
        let mut event = sample(None);
        event.event_type = "Order Placed €".into();
        let mut out = Vec::new();
        write_event(&event, CloudEventsMode::Binary, "/shop", &mut out).unwrap();
        assert_eq!(out, br#"{"total": "19.90"}"#);
        let headers = binary_headers(&event, "/shop");
        assert!(headers.contains(&("ce-type", "Order%20Placed%20%E2%82%AC".to_string())));
        assert!(headers.contains(&("ce-specversion", "1.0".to_string())));
    }

    #[test]
    fn a_header_too_deep_refuses_the_event() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let event = sample(Some(&format!(r#"{{"deep":{deep}}}"#)));
        let err = write_event(&event, CloudEventsMode::None, "s", &mut Vec::new()).unwrap_err();
        assert!(err.starts_with("header \"deep\""), "{err}");
    }
}
