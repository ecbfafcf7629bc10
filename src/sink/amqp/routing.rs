//! The routing-key template: `{aggregatetype}.{type}` and friends, parsed once at start-up.

use crate::event::Event;

/// One piece of a parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    /// Text copied as written.
    Literal(String),
    /// `{aggregatetype}`.
    AggregateType,
    /// `{aggregateid}`.
    AggregateId,
    /// `{type}`.
    EventType,
}

/// A routing key with placeholders for the event's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingKeyTemplate {
    /// The template's pieces, in order.
    parts: Vec<Part>,
}

impl RoutingKeyTemplate {
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
                "aggregateid" => Part::AggregateId,
                "type" => Part::EventType,
                _ => {
                    return Err(format!(
                        "unknown placeholder {{{name}}}; use {{aggregatetype}}, {{aggregateid}} \
                         or {{type}}"
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
        Ok(RoutingKeyTemplate { parts })
    }

    /// The routing key for `event`.
    pub fn render(&self, event: &Event) -> String {
        let mut key = String::new();
        for part in &self.parts {
            key.push_str(match part {
                Part::Literal(text) => text,
                Part::AggregateType => &event.aggregate_type,
                Part::AggregateId => &event.aggregate_id,
                Part::EventType => &event.event_type,
            });
        }
        key
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
