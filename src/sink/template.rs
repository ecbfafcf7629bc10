//! Name templates shared by the sinks (`outbox.event.{aggregatetype}`, `{schema}.{table}`,
//! `{aggregatetype}.{type}`): parsed once at start-up, rendered per event.

use crate::event::{Event, TableName};
use std::borrow::Cow;

/// A placeholder a template may contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// `{aggregatetype}`.
    AggregateType,
    /// `{aggregateid}`.
    AggregateId,
    /// `{type}`.
    EventType,
    /// `{table}`: the table the event comes from (the outbox's for outbox events; a logical
    /// message's prefix).
    Table,
    /// `{schema}`: the schema of the table the event comes from (empty for a logical message).
    Schema,
    /// `{op}`: the operation's name (`insert`, `update`, `delete`, `truncate`, `read`,
    /// `message`).
    Op,
    /// `{key}`: the ordering key (for outbox events the same as `{aggregateid}`).
    Key,
}

/// Every placeholder: templates of every sink accept them all.
pub const ALL_FIELDS: &[Field] = &[
    Field::AggregateType,
    Field::AggregateId,
    Field::EventType,
    Field::Schema,
    Field::Table,
    Field::Op,
    Field::Key,
];

impl Field {
    /// The placeholder as written in a template.
    fn placeholder(self) -> &'static str {
        match self {
            Field::AggregateType => "{aggregatetype}",
            Field::AggregateId => "{aggregateid}",
            Field::EventType => "{type}",
            Field::Table => "{table}",
            Field::Schema => "{schema}",
            Field::Op => "{op}",
            Field::Key => "{key}",
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
    /// The outbox table, which `{schema}` and `{table}` stand for in its events.
    outbox: TableName,
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
        Ok(Template {
            parts,
            outbox: TableName::default(),
        })
    }

    /// This template for events of the outbox table `outbox` (which `{schema}` and `{table}`
    /// stand for in them).
    pub fn for_outbox(mut self, outbox: &TableName) -> Self {
        self.outbox = outbox.clone();
        self
    }

    /// The outbox table `{schema}` and `{table}` stand for in its events.
    pub fn outbox(&self) -> &TableName {
        &self.outbox
    }

    /// The name for `event`.
    pub fn render(&self, event: &Event) -> String {
        self.render_cow(event).into_owned()
    }

    /// The name for `event`, borrowed from it when the template is one placeholder of the event
    /// alone (the common `{aggregatetype}`), so the hot path allocates nothing.
    pub fn render_cow<'a>(&self, event: &'a Event) -> Cow<'a, str> {
        if let [Part::Field(field)] = self.parts.as_slice() {
            match field {
                Field::AggregateType => return Cow::Borrowed(&event.subject),
                Field::AggregateId | Field::Key => return Cow::Borrowed(&event.key),
                Field::EventType => return Cow::Borrowed(&event.event_type),
                _ => {}
            }
        }
        let (schema, table) = event.schema_and_table(&self.outbox);
        let mut name = String::new();
        for part in &self.parts {
            name.push_str(match part {
                Part::Literal(text) => text,
                Part::Field(Field::AggregateType) => &event.subject,
                Part::Field(Field::AggregateId | Field::Key) => &event.key,
                Part::Field(Field::EventType) => &event.event_type,
                Part::Field(Field::Schema) => schema,
                Part::Field(Field::Table) => table,
                Part::Field(Field::Op) => event.op.name(),
            });
        }
        Cow::Owned(name)
    }

    /// The text for `event` with each placeholder's value passed through `encode` (which
    /// writes it to the output or refuses it), literal text as written: a URL whose fields
    /// must not change its structure.
    pub fn render_encoded(
        &self,
        event: &Event,
        mut encode: impl FnMut(&str, &mut String) -> Result<(), String>,
    ) -> Result<String, String> {
        let (schema, table) = event.schema_and_table(&self.outbox);
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Field(field) => encode(
                    match field {
                        Field::AggregateType => &event.subject,
                        Field::AggregateId | Field::Key => &event.key,
                        Field::EventType => &event.event_type,
                        Field::Schema => schema,
                        Field::Table => table,
                        Field::Op => event.op.name(),
                    },
                    &mut out,
                )?,
            }
        }
        Ok(out)
    }

    /// The name every outbox event gets, if the template has no placeholder that varies from
    /// one outbox event to the next (`{schema}` and `{table}` are the outbox's, `{op}` is
    /// `insert`).
    pub fn fixed(&self) -> Option<String> {
        let outbox = &self.outbox;
        self.parts
            .iter()
            .map(|part| match part {
                Part::Literal(text) => Some(text.as_str()),
                Part::Field(Field::Schema) => Some(outbox.schema.as_str()),
                Part::Field(Field::Table) => Some(outbox.table.as_str()),
                Part::Field(Field::Op) => Some(crate::event::Operation::Insert.name()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Operation, Origin, sample};

    /// `template` parsed with every placeholder allowed, for the outbox `public.outbox`.
    fn parse(template: &str) -> Template {
        Template::parse(template, ALL_FIELDS)
            .unwrap()
            .for_outbox(&TableName::new("public", "outbox"))
    }

    #[test]
    fn every_placeholder_renders_for_an_outbox_event() {
        let template = parse("{schema}.{table}/{op}/{aggregatetype}.{type}/{aggregateid}={key}");
        assert_eq!(
            template.render(&sample(None)),
            "public.outbox/insert/order.OrderPlaced/42=42"
        );
    }

    #[test]
    fn schema_table_and_op_follow_a_table_change_and_a_message() {
        let template = parse("{schema}.{table}.{op}");
        let mut event = sample(None);
        event.op = Operation::Update;
        event.origin = Origin::Table {
            schema: "shop".into(),
            table: "orders".into(),
        };
        assert_eq!(template.render(&event), "shop.orders.update");
        assert_eq!(template.fixed().as_deref(), Some("public.outbox.insert"));
        event.op = Operation::Message;
        event.origin = Origin::Message {
            prefix: "app".into(),
        };
        assert_eq!(template.render(&event), ".app.message");
    }

    #[test]
    fn a_lone_event_field_is_borrowed_and_per_event_fields_are_not_fixed() {
        let event = sample(None);
        assert!(matches!(
            parse("{aggregatetype}").render_cow(&event),
            Cow::Borrowed("order")
        ));
        assert_eq!(parse("{key}").fixed(), None);
        assert_eq!(parse("x.{table}").fixed().as_deref(), Some("x.outbox"));
    }

    #[test]
    fn unknown_and_disallowed_placeholders_are_named() {
        let err = Template::parse("{op}", &[Field::AggregateType]).unwrap_err();
        assert!(
            err.contains("unknown placeholder {op}; use {aggregatetype}"),
            "{err}"
        );
        let err = Template::parse("{tabel}", ALL_FIELDS).unwrap_err();
        assert!(err.contains("{schema}, {table}, {op} or {key}"), "{err}");
    }
}
