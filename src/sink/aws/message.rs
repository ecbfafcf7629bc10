//! Turning an [`Event`] into an SQS or SNS message: the body is the payload as stored, the
//! headers (the shared mapping, [`crate::sink::headers`]) become message attributes, and on a
//! FIFO queue or topic the key is the message group and the event id the deduplication id.
//!
//! SQS takes at most 10 attributes per message (and SNS's delivery to SQS the same), with
//! names of letters, digits, `_`, `-` and `.`, and non-empty values. When every header fits
//! those rules, each is an attribute. Otherwise the first nine that do (outboxd's own come
//! first) are attributes, and all the rest travel as one JSON object in the attribute
//! [`OVERFLOW_ATTRIBUTE`] (`headers`).

use crate::event::Event;
use crate::sink::headers::{HeaderValue, event_headers};

/// Largest message SQS and SNS take: body and attributes (names, types and values), 256 KiB.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Most attributes one message may carry.
pub const MAX_ATTRIBUTES: usize = 10;

/// The attribute that carries, as one JSON object, the headers that do not fit as attributes.
pub const OVERFLOW_ATTRIBUTE: &str = "headers";

/// Longest `MessageGroupId` or `MessageDeduplicationId` of a FIFO queue or topic.
pub const MAX_FIFO_ID: usize = 128;

/// One message attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    /// Its name.
    pub name: String,
    /// `Number` (the position) or `String` (everything else).
    pub data_type: &'static str,
    /// Its value, as text.
    pub value: String,
}

/// A message ready to send.
#[derive(Clone, Debug)]
pub struct Message<'a> {
    /// The body: the payload's JSON as stored.
    pub body: &'a str,
    /// Its attributes, at most [`MAX_ATTRIBUTES`].
    pub attributes: Vec<Attribute>,
    /// The message group (the key) on a FIFO queue or topic.
    pub group: Option<&'a str>,
    /// The deduplication id (the event id) on a FIFO queue or topic.
    pub dedup: Option<&'a str>,
    /// Its size as AWS counts it: body, attribute names, types and values.
    pub size: usize,
}

/// The message for `event`; `fifo` when its queue or topic is a FIFO one. An error is the
/// reason to refuse the event for good (too large, a key too long for a message group, a
/// header that cannot be read).
pub fn message(event: &Event, fifo: bool) -> Result<Message<'_>, String> {
    let attributes = attributes(event_headers(event, None)?)?;
    let body = event.payload.get();
    let size = body.len()
        + attributes
            .iter()
            .map(|a| a.name.len() + a.data_type.len() + a.value.len())
            .sum::<usize>();
    if size > MAX_MESSAGE_BYTES {
        return Err(format!(
            "message is {size} bytes (body and attributes), over the limit of \
             {MAX_MESSAGE_BYTES} bytes (256 KiB) per SQS/SNS message"
        ));
    }
    let (group, dedup) = if fifo {
        for (what, value) in [("key", &event.key), ("event id", &event.id)] {
            if value.is_empty() || value.chars().count() > MAX_FIFO_ID {
                return Err(format!(
                    "{what} {value:?} cannot be a FIFO message group or deduplication id \
                     (1 to {MAX_FIFO_ID} characters)"
                ));
            }
        }
        (Some(event.key.as_str()), Some(event.id.as_str()))
    } else {
        (None, None)
    };
    Ok(Message {
        body,
        attributes,
        group,
        dedup,
        size,
    })
}

/// The headers as attributes, those that do not fit in [`OVERFLOW_ATTRIBUTE`].
fn attributes(headers: Vec<(String, HeaderValue)>) -> Result<Vec<Attribute>, String> {
    let candidates: Vec<(String, HeaderValue, Attribute)> = headers
        .into_iter()
        .map(|(name, value)| {
            let attribute = Attribute {
                name: name.clone(),
                data_type: if matches!(value, HeaderValue::Integer(_)) {
                    "Number"
                } else {
                    "String"
                },
                value: value.clone().into_text(),
            };
            (name, value, attribute)
        })
        .collect();
    let fits = candidates.len() <= MAX_ATTRIBUTES && candidates.iter().all(|c| valid(&c.2));
    let mut plain = Vec::with_capacity(candidates.len().min(MAX_ATTRIBUTES));
    let mut rest = serde_json::Map::new();
    for (name, value, attribute) in candidates {
        let room = plain.len() < MAX_ATTRIBUTES - 1;
        if fits || (room && valid(&attribute) && name != OVERFLOW_ATTRIBUTE) {
            plain.push(attribute);
        } else {
            let json = match value {
                HeaderValue::Text(text) => serde_json::Value::String(text),
                HeaderValue::Integer(n) => serde_json::Value::from(n),
                HeaderValue::Json(json) => json,
            };
            rest.insert(name, json);
        }
    }
    if !rest.is_empty() {
        let value = serde_json::to_string(&rest)
            .map_err(|err| format!("headers cannot be written as JSON: {err}"))?;
        plain.push(Attribute {
            name: OVERFLOW_ATTRIBUTE.to_string(),
            data_type: "String",
            value,
        });
    }
    Ok(plain)
}

/// Whether SQS takes `attribute` as it is: a name of 1 to 256 letters, digits, `_`, `-` and
/// `.` (no leading, trailing or doubled `.`, no `AWS.` or `Amazon.` prefix) and a value.
fn valid(attribute: &Attribute) -> bool {
    let name = &attribute.name;
    let lower = name.to_ascii_lowercase();
    !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && !lower.starts_with("aws.")
        && !lower.starts_with("amazon.")
        && !attribute.value.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::sample;
    use serde_json::Value;

    /// The attribute `name`'s value.
    fn get<'a>(message: &'a Message<'_>, name: &str) -> &'a str {
        let found = message.attributes.iter().find(|a| a.name == name);
        &found.expect(name).value
    }

    #[test]
    fn headers_that_fit_are_attributes_each_and_the_position_is_a_number() {
        let event = sample(Some(r#"{"trace":"t1","n":2}"#));
        let message = message(&event, false).unwrap();
        let names: Vec<&str> = message.attributes.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "id",
                "type",
                "aggregatetype",
                "aggregateid",
                "position",
                "n",
                "trace"
            ]
        );
        assert_eq!(message.attributes[4].data_type, "Number");
        assert_eq!(get(&message, "n"), "2");
        assert_eq!(message.body, r#"{"total": "19.90"}"#);
        assert_eq!((message.group, message.dedup), (None, None));
    }

    #[test]
    fn past_ten_headers_the_rest_travel_in_one_json_attribute() {
        let event = sample(Some(
            r#"{"h1":"a","h2":"b","h3":"c","h4":"d","h5":"e","h6":"f","bad name":"x","e":""}"#,
        ));
        let message = message(&event, false).unwrap();
        assert_eq!(message.attributes.len(), MAX_ATTRIBUTES);
        let names: Vec<&str> = message.attributes.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(&names[5..], ["h1", "h2", "h3", "h4", "headers"]);
        let rest: Value = serde_json::from_str(get(&message, OVERFLOW_ATTRIBUTE)).unwrap();
        assert_eq!(
            rest,
            serde_json::json!({"h5": "e", "h6": "f", "bad name": "x", "e": ""})
        );
    }

    #[test]
    fn an_invalid_name_overflows_even_when_few_headers() {
        let event = sample(Some(r#"{"AWS.trace":"t"}"#));
        let message = message(&event, false).unwrap();
        assert_eq!(get(&message, OVERFLOW_ATTRIBUTE), r#"{"AWS.trace":"t"}"#);
    }

    #[test]
    fn a_message_over_256_kib_is_refused_naming_the_limit() {
        let mut event = sample(None);
        let big = format!("\"{}\"", "x".repeat(MAX_MESSAGE_BYTES));
        event.payload = serde_json::value::RawValue::from_string(big).unwrap();
        let reason = message(&event, false).unwrap_err();
        assert!(
            reason.contains("over the limit of 262144 bytes (256 KiB)"),
            "{reason}"
        );
    }

    #[test]
    fn fifo_messages_are_grouped_by_key_and_deduplicated_by_event_id() {
        let mut event = sample(None);
        let message = message(&event, true).unwrap();
        assert_eq!(message.group, Some("42"));
        assert_eq!(message.dedup, Some("6f1c0000-0000-4000-8000-000000000001"));
        event.key = "k".repeat(129);
        assert!(
            super::message(&event, true)
                .unwrap_err()
                .contains("1 to 128")
        );
    }
}
