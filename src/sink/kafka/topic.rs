//! The topic template: `outbox.event.{aggregatetype}` and friends, parsed once at start-up.

use crate::event::Event;
use crate::sink::template::{Field, Template};

/// Longest topic name Kafka accepts.
const MAX_TOPIC_BYTES: usize = 249;

/// The placeholders a topic may use.
const FIELDS: &[Field] = &[Field::AggregateType, Field::EventType, Field::Table];

/// A topic name with placeholders for the event's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicTemplate(Template);

impl TopicTemplate {
    /// Parses `template`; an unknown or unclosed placeholder is an error naming it, and a
    /// template without per-event placeholders must be a legal topic name.
    pub fn parse(template: &str) -> Result<Self, String> {
        let template = TopicTemplate(Template::parse(template, FIELDS)?);
        if let Some(fixed) = template.fixed("") {
            // Only literal text is checked here; the table's name is checked with the rest
            // when the sink opens.
            check_name(&fixed)?;
        }
        Ok(template)
    }

    /// The topic for `event` of the outbox table `table`.
    pub fn render(&self, event: &Event, table: &str) -> String {
        self.0.render(event, table)
    }

    /// The topic, if the template has no per-event placeholder (`{table}` is not one: it is
    /// replaced by `table`).
    pub fn fixed(&self, table: &str) -> Option<String> {
        self.0.fixed(table)
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
