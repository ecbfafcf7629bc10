//! The topic template: `outbox.event.{aggregatetype}` and friends, parsed once at start-up.

use crate::event::{Event, TableName};
use crate::sink::template::{ALL_FIELDS, Template};

/// Longest topic name Kafka accepts.
const MAX_TOPIC_BYTES: usize = 249;

/// A topic name with placeholders for the event's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicTemplate(Template);

impl TopicTemplate {
    /// The outbox table `{schema}` and `{table}` stand for in its events.
    pub fn outbox(&self) -> &TableName {
        self.0.outbox()
    }

    /// Parses `template`; an unknown or unclosed placeholder is an error naming it, and a
    /// template without per-event placeholders must be a legal topic name.
    pub fn parse(template: &str) -> Result<Self, String> {
        let template = TopicTemplate(Template::parse(template, ALL_FIELDS)?);
        if let Some(fixed) = template.fixed() {
            // Only literal text is checked here; the table's name is checked with the rest
            // when the sink opens.
            check_name(&fixed)?;
        }
        Ok(template)
    }

    /// This template for events of the outbox table `outbox`.
    pub fn for_outbox(self, outbox: &TableName) -> Self {
        TopicTemplate(self.0.for_outbox(outbox))
    }

    /// The topic for `event`.
    pub fn render(&self, event: &Event) -> String {
        self.0.render(event)
    }

    /// The topic of every outbox event, if the template has no placeholder that varies between
    /// them (see [`Template::fixed`]).
    pub fn fixed(&self) -> Option<String> {
        self.0.fixed()
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

    /// The outbox table `public.outbox`.
    fn outbox() -> TableName {
        TableName::new("public", "outbox")
    }

    #[test]
    fn the_default_template_is_debeziums() {
        let template = TopicTemplate::parse("outbox.event.{aggregatetype}")
            .unwrap()
            .for_outbox(&outbox());
        assert_eq!(template.render(&event(None)), "outbox.event.order");
        assert_eq!(template.fixed(), None);
    }

    #[test]
    fn every_placeholder_and_literal_text_is_rendered() {
        let template = TopicTemplate::parse("{table}-{aggregatetype}.{type}_v1")
            .unwrap()
            .for_outbox(&outbox());
        assert_eq!(template.render(&event(None)), "outbox-order.OrderPlaced_v1");
        let fixed = TopicTemplate::parse("all-events")
            .unwrap()
            .for_outbox(&outbox());
        assert_eq!(fixed.fixed().as_deref(), Some("all-events"));
        let per_table = TopicTemplate::parse("{schema}.{table}.{op}")
            .unwrap()
            .for_outbox(&outbox());
        assert_eq!(per_table.fixed().as_deref(), Some("public.outbox.insert"));
        let per_key = TopicTemplate::parse("k.{key}")
            .unwrap()
            .for_outbox(&outbox());
        assert_eq!(per_key.fixed(), None);
        assert_eq!(per_key.render(&event(None)), "k.42");
    }

    #[test]
    fn unknown_placeholders_and_illegal_fixed_names_are_errors() {
        let err = TopicTemplate::parse("{aggregate}").unwrap_err();
        assert!(err.contains("unknown placeholder {aggregate}"), "{err}");
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
