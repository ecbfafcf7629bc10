//! The subject template (`outbox.{aggregatetype}.{type}`) and the NATS subject rules the
//! sink checks with it: which subjects a stream must cover, which one a created stream gets,
//! and whether a rendered subject can be published to at all.

use crate::event::{Event, TableName};
use crate::sink::template::{ALL_FIELDS, Template};

/// A subject with placeholders for the event's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectTemplate {
    /// The parsed template.
    template: Template,
    /// The template's text, `.`-separated tokens read from it.
    text: String,
}

impl SubjectTemplate {
    /// The outbox table `{schema}` and `{table}` stand for in its events.
    pub fn outbox(&self) -> &TableName {
        self.template.outbox()
    }

    /// Parses `template`; an unknown or unclosed placeholder, or a token that can never be
    /// valid (empty, a wildcard), is an error naming it.
    pub fn parse(template: &str) -> Result<Self, String> {
        let parsed = Template::parse(template, ALL_FIELDS)?;
        for token in template.split('.') {
            if token.is_empty() || token == "*" || token == ">" {
                return Err(format!(
                    "\"{template}\" has an empty or wildcard token; subjects are non-empty \
                     tokens separated by '.'"
                ));
            }
        }
        if template.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(format!("\"{template}\" holds whitespace"));
        }
        Ok(SubjectTemplate {
            template: parsed,
            text: template.to_string(),
        })
    }

    /// This template for events of the outbox table `outbox`.
    pub fn for_outbox(mut self, outbox: &TableName) -> Self {
        self.template = self.template.for_outbox(outbox);
        self
    }

    /// The subject for `event`.
    pub fn render(&self, event: &Event) -> String {
        self.template.render(event)
    }

    /// The subjects the template can produce as a NATS filter: every token holding a
    /// placeholder becomes `*` (`outbox.{aggregatetype}.{type}` → `outbox.*.*`). A stream must
    /// cover this; a value holding a `.` makes more tokens and needs a stream ending in `>`.
    pub fn filter(&self) -> String {
        self.tokens()
            .map(|token| if token.contains('{') { "*" } else { token })
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The subject a created stream gets: the literal tokens before the first placeholder,
    /// then `>` (so values with dots fit too), or the template itself without placeholders.
    /// `None` when the first token holds a placeholder: a stream on `>` would capture
    /// every subject of the account.
    pub fn stream_subject(&self) -> Option<String> {
        let literal: Vec<&str> = self.tokens().take_while(|t| !t.contains('{')).collect();
        if literal.len() == self.tokens().count() {
            return Some(self.text.clone());
        }
        (!literal.is_empty()).then(|| format!("{}.>", literal.join(".")))
    }

    /// The template's `.`-separated tokens.
    fn tokens(&self) -> impl Iterator<Item = &str> {
        self.text.split('.')
    }
}

/// Why `subject` cannot be published to, if it cannot: an empty token (a placeholder whose
/// value was empty), a wildcard token, whitespace or a control character.
pub fn unpublishable(subject: &str) -> Option<String> {
    let why = if subject.split('.').any(str::is_empty) {
        "has an empty token"
    } else if subject.split('.').any(|t| t == "*" || t == ">") {
        "has a wildcard token"
    } else if subject.contains(|c: char| c.is_whitespace() || c.is_control()) {
        "holds whitespace or a control character"
    } else {
        return None;
    };
    Some(format!(
        "subject {subject:?} {why}, which NATS cannot publish to"
    ))
}

/// Whether the stream subject `filter` (with `*` and `>` wildcards) matches every subject the
/// filter `wanted` (with `*` wildcards) matches.
pub fn covers(filter: &str, wanted: &str) -> bool {
    let mut wanted = wanted.split('.');
    for token in filter.split('.') {
        match (token, wanted.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (literal, Some(w)) if literal == w && w != "*" => {}
            _ => return false,
        }
    }
    wanted.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_template_renders_and_needs_two_wildcard_tokens() {
        let template = SubjectTemplate::parse("outbox.{aggregatetype}.{type}").unwrap();
        assert_eq!(
            template.render(&crate::event::sample(None)),
            "outbox.order.OrderPlaced"
        );
        assert_eq!(template.filter(), "outbox.*.*");
        assert_eq!(template.stream_subject().as_deref(), Some("outbox.>"));
    }

    #[test]
    fn fixed_and_leading_placeholder_templates() {
        let fixed = SubjectTemplate::parse("events.all").unwrap();
        assert_eq!(fixed.filter(), "events.all");
        assert_eq!(fixed.stream_subject().as_deref(), Some("events.all"));
        let leading = SubjectTemplate::parse("{schema}.{table}.{op}").unwrap();
        assert_eq!(leading.filter(), "*.*.*");
        assert_eq!(leading.stream_subject(), None);
        let mixed = SubjectTemplate::parse("cdc.t-{table}").unwrap();
        assert_eq!(mixed.filter(), "cdc.*");
    }

    #[test]
    fn templates_with_empty_or_wildcard_tokens_are_refused() {
        for bad in ["outbox..x", ".x", "x.", "x.*", "x.>.y", "a b"] {
            assert!(SubjectTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn coverage_follows_nats_wildcards() {
        assert!(covers("outbox.>", "outbox.*.*"));
        assert!(covers("outbox.*.*", "outbox.*.*"));
        assert!(covers(">", "outbox.*"));
        assert!(covers("outbox.order.*", "outbox.order.Placed"));
        assert!(!covers("outbox.order.*", "outbox.*.*"));
        assert!(!covers("outbox.*", "outbox.*.*"));
        assert!(!covers("outbox.*.*.*", "outbox.*.*"));
        assert!(!covers("outbox.>", "outbox"));
        assert!(!covers("other.>", "outbox.*.*"));
    }

    #[test]
    fn rendered_subjects_nats_cannot_take_are_named() {
        assert_eq!(unpublishable("outbox.order.Placed"), None);
        let empty = unpublishable("outbox..Placed").unwrap();
        assert_eq!(
            empty,
            "subject \"outbox..Placed\" has an empty token, which NATS cannot publish to"
        );
        assert!(unpublishable("outbox.*.x").is_some());
        assert!(unpublishable("outbox.a b").is_some());
    }
}
