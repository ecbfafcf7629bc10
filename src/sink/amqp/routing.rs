//! The routing-key template: `{aggregatetype}.{type}` and friends, parsed once at start-up.

use crate::event::{Event, TableName};
use crate::sink::template::{ALL_FIELDS, Template};

/// A routing key with placeholders for the event's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingKeyTemplate(Template);

impl RoutingKeyTemplate {
    /// The outbox table `{schema}` and `{table}` stand for in its events.
    pub fn outbox(&self) -> &TableName {
        self.0.outbox()
    }

    /// Parses `template`; an unknown or unclosed placeholder is an error naming it.
    pub fn parse(template: &str) -> Result<Self, String> {
        Template::parse(template, ALL_FIELDS).map(RoutingKeyTemplate)
    }

    /// This template for events of the outbox table `outbox`.
    pub fn for_outbox(self, outbox: &TableName) -> Self {
        RoutingKeyTemplate(self.0.for_outbox(outbox))
    }

    /// The routing key for `event`.
    pub fn render(&self, event: &Event) -> String {
        self.0.render(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::amqp::message::tests::event;

    #[test]
    fn the_default_template_joins_aggregate_type_and_event_type() {
        let template = RoutingKeyTemplate::parse("{aggregatetype}.{type}").unwrap();
        assert_eq!(template.render(&event(None)), "order.OrderPlaced");
    }

    #[test]
    fn every_placeholder_and_literal_text_is_rendered() {
        let template =
            RoutingKeyTemplate::parse("evt.{aggregatetype}/{aggregateid}:{type}!").unwrap();
        assert_eq!(template.render(&event(None)), "evt.order/42:OrderPlaced!");
        let fixed = RoutingKeyTemplate::parse("all").unwrap();
        assert_eq!(fixed.render(&event(None)), "all");
    }

    #[test]
    fn unknown_unclosed_and_stray_braces_are_errors() {
        let err = RoutingKeyTemplate::parse("{aggregate}").unwrap_err();
        assert!(err.contains("unknown placeholder {aggregate}"), "{err}");
        assert!(
            RoutingKeyTemplate::parse("{type")
                .unwrap_err()
                .contains("unclosed")
        );
        assert!(
            RoutingKeyTemplate::parse("a}b")
                .unwrap_err()
                .contains("stray")
        );
    }
}
