//! Turning an [`Event`] into NATS message headers: `Nats-Msg-Id` = the event id (JetStream's
//! deduplication), then the shared mapping ([`crate::sink::headers`]) as text, with the
//! CloudEvents binary-mode attributes of the NATS binding (`ce-` prefix, percent-encoded
//! values, `ce-datacontenttype`) when asked for.
//!
//! A row header whose name starts with `Nats-` is left out: JetStream acts on those
//! (`Nats-Rollup` purges the stream, `Nats-Expected-*` reject the message, `Nats-Msg-Id` would
//! replace the deduplication key), and what a row's producer writes must not do that.

use crate::event::Event;
use crate::sink::headers::{CloudEvents, event_headers};
use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue, NATS_MESSAGE_ID};
use std::collections::HashSet;
use std::fmt::Write;

/// The prefix of CloudEvents attributes in the NATS binding's binary mode.
pub const CLOUDEVENTS_PREFIX: &str = "ce-";

/// The headers of `event`'s message. With `cloudevents_source`, the CloudEvents attributes
/// follow outboxd's own; the shared mapping's `content-type` becomes `ce-datacontenttype`, as
/// the NATS binding names it. Names compare case-insensitively (NATS headers do), the first
/// one wins. An error (a header NATS cannot carry: a name with a space or `:`, a value with a
/// line break, or one nested deeper than 128 levels) is the reason to refuse the event.
///
/// Runs once per message, so it allocates little: outboxd's own names are static, and names
/// and values move into the map instead of being copied.
pub fn headers(event: &Event, cloudevents_source: Option<&str>) -> Result<HeaderMap, String> {
    let cloudevents = cloudevents_source.map(|source| CloudEvents {
        source,
        prefix: CLOUDEVENTS_PREFIX,
    });
    let mut all = event_headers(event, cloudevents)?;
    if cloudevents.is_some()
        && let Some(at) = all.iter().position(|(name, _)| name == "content-type")
        && !all[..at]
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("ce-datacontenttype"))
    {
        all[at].0 = "ce-datacontenttype".to_string();
    }
    let keep = first_of_each_name(&all);
    let mut map = HeaderMap::new();
    map.insert(NATS_MESSAGE_ID, value("id", event.id.clone())?);
    for ((name, header), keep) in all.into_iter().zip(keep) {
        if !keep {
            continue;
        }
        let text = header.into_text();
        let text = if cloudevents.is_some() && name.starts_with(CLOUDEVENTS_PREFIX) {
            percent_encode(&text)
        } else {
            text
        };
        let text = value(&name, text)?;
        let header_name = match own_name(&name) {
            Some(own) => own,
            None if name.is_empty() => return Err(bad_name(&name)),
            None => {
                let reason = bad_name(&name);
                HeaderName::try_from(name).map_err(|_| reason)?
            }
        };
        map.insert(header_name, text);
    }
    Ok(map)
}

/// Which of `all` go into the message: not a `Nats-` name (JetStream acts on those), and the
/// first of each name compared case-insensitively (`Nats-Msg-Id` taken already).
fn first_of_each_name(all: &[(String, crate::sink::headers::HeaderValue)]) -> Vec<bool> {
    let mut keep = Vec::with_capacity(all.len());
    let mut seen: HashSet<String> = HashSet::new();
    for (index, (name, _)) in all.iter().enumerate() {
        let jetstream = name
            .as_bytes()
            .get(..5)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"nats-"));
        let repeat = if all.len() <= 32 {
            all[..index]
                .iter()
                .zip(&keep)
                .any(|((earlier, _), kept)| *kept && earlier.eq_ignore_ascii_case(name))
        } else {
            !seen.insert(name.to_ascii_lowercase())
        };
        keep.push(!jetstream && !repeat);
    }
    keep
}
/// `text` as a header value; a line break (which would end the header) is an error naming it.
fn value(name: &str, text: String) -> Result<HeaderValue, String> {
    HeaderValue::try_from(text)
        .map_err(|_| format!("header {name:?} holds a line break, which a NATS header cannot"))
}

/// outboxd's own header names, without an allocation.
fn own_name(name: &str) -> Option<HeaderName> {
    Some(HeaderName::from_static(match name {
        "id" => "id",
        "type" => "type",
        "aggregatetype" => "aggregatetype",
        "aggregateid" => "aggregateid",
        "position" => "position",
        "op" => "op",
        "schema" => "schema",
        "table" => "table",
        _ => return None,
    }))
}

/// The reason to refuse a header whose name NATS cannot carry.
fn bad_name(name: &str) -> String {
    format!(
        "header name {name:?} cannot be a NATS header name (printable ASCII without ':' or \
         spaces)"
    )
}

/// Percent-encodes a CloudEvents attribute value as the NATS binding requires: space, `"`,
/// `%` and every character outside printable ASCII, byte by byte of its UTF-8, upper-case hex.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\u{21}'..='\u{7e}') && c != '"' && c != '%' {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{byte:02X}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample event, with the given headers JSON.
    fn event(headers: Option<&str>) -> Event {
        crate::event::sample(headers)
    }

    /// The value of header `name`.
    fn get(map: &HeaderMap, name: &str) -> Option<String> {
        map.get(name).map(|v| v.as_str().to_string())
    }

    #[test]
    fn the_message_id_is_the_event_id_and_outboxd_headers_win() {
        let map = headers(
            &event(Some(r#"{"aggregateid":"spoofed","trace":"t1"}"#)),
            None,
        )
        .unwrap();
        let id = "6f1c0000-0000-4000-8000-000000000001";
        assert_eq!(get(&map, "Nats-Msg-Id").as_deref(), Some(id));
        assert_eq!(get(&map, "id").as_deref(), Some(id));
        assert_eq!(get(&map, "type").as_deref(), Some("OrderPlaced"));
        assert_eq!(get(&map, "aggregatetype").as_deref(), Some("order"));
        assert_eq!(get(&map, "aggregateid").as_deref(), Some("42"));
        assert_eq!(get(&map, "position").as_deref(), Some("7"));
        assert_eq!(get(&map, "trace").as_deref(), Some("t1"));
        assert_eq!(map.len(), 7);
    }

    #[test]
    fn a_row_header_differing_only_in_case_from_an_earlier_one_is_left_out() {
        let map = headers(&event(Some(r#"{"ID":"spoofed","Trace":"t1"}"#)), None).unwrap();
        assert_eq!(
            get(&map, "id").as_deref(),
            Some("6f1c0000-0000-4000-8000-000000000001")
        );
        assert_eq!(get(&map, "Trace").as_deref(), Some("t1"));
        assert_eq!(map.len(), 7);
    }

    #[test]
    fn row_headers_cannot_steer_jetstream() {
        let map = headers(
            &event(Some(
                r#"{"Nats-Msg-Id":"x","nats-rollup":"all","Nats-Expected-Stream":"s","ok":1}"#,
            )),
            None,
        )
        .unwrap();
        assert_eq!(
            get(&map, "Nats-Msg-Id").as_deref(),
            Some("6f1c0000-0000-4000-8000-000000000001")
        );
        assert_eq!(get(&map, "nats-rollup"), None);
        assert_eq!(get(&map, "Nats-Expected-Stream"), None);
        assert_eq!(get(&map, "ok").as_deref(), Some("1"));
    }

    #[test]
    fn cloudevents_follow_the_nats_binding() {
        let mut e = event(Some(
            r#"{"ce-datacontenttype":"text/plain","ce-id":"spoofed"}"#,
        ));
        e.event_type = "Order Placed €".into();
        let map = headers(&e, Some("/shop/orders")).unwrap();
        assert_eq!(
            get(&map, "ce-id").as_deref(),
            Some("6f1c0000-0000-4000-8000-000000000001")
        );
        assert_eq!(
            get(&map, "ce-type").as_deref(),
            Some("Order%20Placed%20%E2%82%AC")
        );
        assert_eq!(get(&map, "ce-source").as_deref(), Some("/shop/orders"));
        assert_eq!(get(&map, "ce-specversion").as_deref(), Some("1.0"));
        assert_eq!(
            get(&map, "ce-time").as_deref(),
            Some("2023-11-14T22:13:20.000000005Z")
        );
        assert_eq!(
            get(&map, "ce-datacontenttype").as_deref(),
            Some("application/json")
        );
        assert_eq!(get(&map, "content-type"), None);
        assert_eq!(get(&map, "type").as_deref(), Some("Order Placed €"));
    }

    #[test]
    fn headers_nats_cannot_carry_refuse_the_event_naming_them() {
        let newline = headers(&event(Some(r#"{"note":"a\r\nPUB x 1"}"#)), None).unwrap_err();
        assert_eq!(
            newline,
            "header \"note\" holds a line break, which a NATS header cannot"
        );
        let name = headers(&event(Some(r#"{"a b":"x"}"#)), None).unwrap_err();
        assert!(name.starts_with("header name \"a b\" cannot be"), "{name}");
    }

    #[test]
    fn percent_encoding_matches_the_bindings_example() {
        assert_eq!(
            percent_encode("Euro € 😀"),
            "Euro%20%E2%82%AC%20%F0%9F%98%80"
        );
        assert_eq!(percent_encode("a\"b%c"), "a%22b%25c");
    }
}
