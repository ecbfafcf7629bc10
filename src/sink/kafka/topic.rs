//! The topic template: `outbox.event.{aggregatetype}` and friends, parsed once at start-up.

use crate::event::Event;

/// Longest topic name Kafka accepts.
const MAX_TOPIC_BYTES: usize = 249;

/// One piece of a parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    /// Text copied as written.
    Literal(String),
    /// `{aggregatetype}`.
    AggregateType,
    /// `{type}`.
    EventType,
    /// `{table}`: the outbox table's name.
    Table,
}

/// A topic name with placeholders for the event's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicTemplate {
    /// The template's pieces, in order.
    parts: Vec<Part>,
}

impl TopicTemplate {
    /// Parses `template`; an unknown or unclosed placeholder is an error naming it.
    pub fn parse(template: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed placeholder in \"{template}\""))?;
            let name = &rest[open + 1..open + close];
            parts.push(match name {
                "aggregatetype" => Part::AggregateType,
                "type" => Part::EventType,
                "table" => Part::Table,
                _ => {
                    return Err(format!(
                        "unknown placeholder {{{name}}}; use {{aggregatetype}}, {{type}} or \
                         {{table}}"
                    ));
                }
            });
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("stray '}}' in \"{template}\""));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        let template = TopicTemplate { parts };
        if let Some(fixed) = template.fixed("") {
            // Only literal text is checked here; the table's name is checked with the rest
            // when the sink opens.
            check_name(&fixed)?;
        }
        Ok(template)
    }

    /// The topic for `event` of the outbox table `table`.
    pub fn render(&self, event: &Event, table: &str) -> String {
        let mut topic = String::new();
        for part in &self.parts {
            topic.push_str(match part {
                Part::Literal(text) => text,
                Part::AggregateType => &event.aggregate_type,
                Part::EventType => &event.event_type,
                Part::Table => table,
            });
        }
        topic
    }

    /// The topic, if the template has no per-event placeholder (`{table}` is not one: it is
    /// replaced by `table`).
    pub fn fixed(&self, table: &str) -> Option<String> {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Literal(text) => Some(text.as_str()),
                Part::Table => Some(table),
                Part::AggregateType | Part::EventType => None,
            })
            .collect()
    }
}

/// Why `topic` is not a legal Kafka topic name, if it is not: 1 to 249 bytes of ASCII letters,
/// digits, `.`, `_` and `-`, and not `.` or `..`.
pub fn check_name(topic: &str) -> Result<(), String> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if topic.is_empty() || topic.len() > MAX_TOPIC_BYTES {
        return Err(format!(
            "invalid topic \"{topic}\": must be 1 to {MAX_TOPIC_BYTES} bytes"
        ));
    }
    if topic == "." || topic == ".." || !topic.chars().all(legal) {
        return Err(format!(
            "invalid topic \"{topic}\": only ASCII letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::kafka::message::tests::event;

    #[test]
    fn the_default_template_is_debeziums() {
        let template = TopicTemplate::parse("outbox.event.{aggregatetype}").unwrap();
        assert_eq!(
            template.render(&event(None), "outbox"),
            "outbox.event.order"
        );
        assert_eq!(template.fixed("outbox"), None);
    }

    #[test]
    fn every_placeholder_and_literal_text_is_rendered() {
        let template = TopicTemplate::parse("{table}-{aggregatetype}.{type}_v1").unwrap();
        assert_eq!(
            template.render(&event(None), "outbox"),
            "outbox-order.OrderPlaced_v1"
        );
        let fixed = TopicTemplate::parse("all-events").unwrap();
        assert_eq!(fixed.fixed("outbox").as_deref(), Some("all-events"));
        let per_table = TopicTemplate::parse("{table}.events").unwrap();
        assert_eq!(per_table.fixed("outbox").as_deref(), Some("outbox.events"));
    }

    #[test]
    fn unknown_placeholders_and_illegal_fixed_names_are_errors() {
        let err = TopicTemplate::parse("{aggregateid}").unwrap_err();
        assert!(err.contains("unknown placeholder {aggregateid}"), "{err}");
        assert!(
            TopicTemplate::parse("{type")
                .unwrap_err()
                .contains("unclosed")
        );
        assert!(TopicTemplate::parse("a}b").unwrap_err().contains("stray"));
        let err = TopicTemplate::parse("no spaces").unwrap_err();
        assert!(err.contains("invalid topic \"no spaces\""), "{err}");
    }

    #[test]
    fn rendered_names_are_checked() {
        assert_eq!(check_name("outbox.event.order"), Ok(()));
        assert!(check_name("outbox.event.ordér").is_err());
        assert!(check_name("..").is_err());
        assert!(check_name(&"x".repeat(250)).is_err());
    }
}
