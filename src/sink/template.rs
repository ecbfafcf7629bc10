//! Name templates shared by the brokers' sinks (`outbox.event.{aggregatetype}`,
//! `{aggregatetype}.{type}`): parsed once at start-up, rendered per event.

use crate::event::Event;

/// A placeholder a template may contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// `{aggregatetype}`.
    AggregateType,
    /// `{aggregateid}`.
    AggregateId,
    /// `{type}`.
    EventType,
    /// `{table}`: the outbox table's name.
    Table,
}

impl Field {
    /// The placeholder as written in a template.
    fn placeholder(self) -> &'static str {
        match self {
            Field::AggregateType => "{aggregatetype}",
            Field::AggregateId => "{aggregateid}",
            Field::EventType => "{type}",
            Field::Table => "{table}",
        }
    }
}

/// One piece of a parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    /// Text copied as written.
    Literal(String),
    /// A placeholder.
    Field(Field),
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// The pieces, in order.
    parts: Vec<Part>,
}

impl Template {
    /// Parses `template`, accepting only the placeholders in `allowed`; an unknown or unclosed
    /// placeholder or a stray `}` is an error naming it.
    pub fn parse(template: &str, allowed: &[Field]) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed placeholder in \"{template}\""))?;
            let written = &rest[open..=open + close];
            let field = allowed
                .iter()
                .find(|f| f.placeholder() == written)
                .ok_or_else(|| format!("unknown placeholder {written}; use {}", one_of(allowed)))?;
            parts.push(Part::Field(*field));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("stray '}}' in \"{template}\""));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// The name for `event` from the outbox table `table`.
    pub fn render(&self, event: &Event, table: &str) -> String {
        let mut name = String::new();
        for part in &self.parts {
            name.push_str(match part {
                Part::Literal(text) => text,
                Part::Field(Field::AggregateType) => &event.aggregate_type,
                Part::Field(Field::AggregateId) => &event.aggregate_id,
                Part::Field(Field::EventType) => &event.event_type,
                Part::Field(Field::Table) => table,
            });
        }
        name
    }

    /// The name, if the template has no per-event placeholder (`{table}` is replaced by
    /// `table`).
    pub fn fixed(&self, table: &str) -> Option<String> {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Literal(text) => Some(text.as_str()),
                Part::Field(Field::Table) => Some(table),
                Part::Field(_) => None,
            })
            .collect()
    }
}

/// `{a}, {b} or {c}`.
fn one_of(fields: &[Field]) -> String {
    let names: Vec<&str> = fields.iter().map(|f| f.placeholder()).collect();
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => "no placeholder".to_string(),
    }
}
