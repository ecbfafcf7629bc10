//! Turning an [`Event`] into a Kafka record's headers: the shared mapping
//! ([`crate::sink::headers`]) as text, with CloudEvents binary-mode attributes under `ce_`.

use crate::event::Event;
use crate::sink::headers::{CloudEvents, event_headers};
use rdkafka::message::{Header, OwnedHeaders};

/// The prefix of CloudEvents attributes in Kafka's binary mode.
const CLOUDEVENTS_PREFIX: &str = "ce_";

/// One header, name and value, before it is handed to librdkafka.
pub type HeaderPair = (String, String);

/// The headers of `event`'s record, in order: `id`, `type`, `aggregatetype`, `aggregateid`,
/// `position`; with `cloudevents_source`, the CloudEvents binary-mode attributes and
/// `content-type`; then every member of the row's `headers` object whose name outboxd does not
/// already use (so consumers can rely on outboxd's), string values as-is, others as JSON text.
/// An error (a header nested deeper than 128 levels) is the reason to refuse the event.
pub fn headers(event: &Event, cloudevents_source: Option<&str>) -> Result<Vec<HeaderPair>, String> {
    let cloudevents = cloudevents_source.map(|source| CloudEvents {
        source,
        prefix: CLOUDEVENTS_PREFIX,
    });
    Ok(event_headers(event, cloudevents)?
        .into_iter()
        .map(|(name, value)| (name, value.into_text()))
        .collect())
}

/// `pairs` as librdkafka headers.
pub fn owned_headers(pairs: &[HeaderPair]) -> OwnedHeaders {
    pairs.iter().fold(
        OwnedHeaders::new_with_capacity(pairs.len()),
        |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            })
        },
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A sample event, with the given headers JSON.
    pub(crate) fn event(headers: Option<&str>) -> Event {
        crate::event::sample(headers)
    }

    /// The value of header `name`.
    fn get<'a>(pairs: &'a [HeaderPair], name: &str) -> &'a str {
        pairs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .expect(name)
    }

    #[test]
    fn outboxd_headers_come_first_and_win_over_row_headers() {
        let pairs = headers(
            &event(Some(r#"{"aggregateid":"spoofed","trace":"t1"}"#)),
            None,
        )
        .unwrap();
        let names: Vec<&str> = pairs.iter().map(|(key, _)| key.as_str()).collect();
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
        assert_eq!(get(&pairs, "id"), "6f1c0000-0000-4000-8000-000000000001");
        assert_eq!(get(&pairs, "type"), "OrderPlaced");
        assert_eq!(get(&pairs, "aggregatetype"), "order");
        assert_eq!(get(&pairs, "aggregateid"), "42");
        assert_eq!(get(&pairs, "position"), "7");
        assert_eq!(get(&pairs, "trace"), "t1");
    }

    #[test]
    fn row_header_strings_stay_as_is_and_other_values_become_json_text() {
        let pairs = headers(
            &event(Some(
                r#"{"s":"a\"b","n":-3,"f":1.5,"ok":true,"none":null,"obj":{"k":[1]}}"#,
            )),
            None,
        )
        .unwrap();
        assert_eq!(get(&pairs, "s"), "a\"b");
        assert_eq!(get(&pairs, "n"), "-3");
        assert_eq!(get(&pairs, "f"), "1.5");
        assert_eq!(get(&pairs, "ok"), "true");
        assert_eq!(get(&pairs, "none"), "null");
        assert_eq!(get(&pairs, "obj"), r#"{"k":[1]}"#);
    }

    #[test]
    fn cloudevents_mode_adds_the_binary_mode_attributes() {
        let pairs = headers(&event(Some(r#"{"ce_id":"spoofed"}"#)), Some("/shop/orders")).unwrap();
        assert_eq!(get(&pairs, "ce_id"), "6f1c0000-0000-4000-8000-000000000001");
        assert_eq!(get(&pairs, "ce_type"), "OrderPlaced");
        assert_eq!(get(&pairs, "ce_source"), "/shop/orders");
        assert_eq!(get(&pairs, "ce_specversion"), "1.0");
        assert_eq!(get(&pairs, "ce_time"), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(get(&pairs, "content-type"), "application/json");
        assert_eq!(pairs.iter().filter(|(key, _)| key == "ce_id").count(), 1);
        assert!(
            !headers(&event(None), None)
                .unwrap()
                .iter()
                .any(|(key, _)| key.starts_with("ce_"))
        );
    }

    #[test]
    fn owned_headers_keep_order_and_bytes() {
        use rdkafka::message::Headers;
        let owned = owned_headers(&headers(&event(None), None).unwrap());
        assert_eq!(owned.count(), 5);
        let first = owned.get(0);
        assert_eq!(
            (first.key, first.value),
            ("id", Some(&b"6f1c0000-0000-4000-8000-000000000001"[..]))
        );
    }
}
