//! Settings of change data capture (`source.mode = "cdc"`, or tables added to `logical` mode).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The `[source.cdc]` section: which tables' changes become events.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CdcConfig {
    /// Tables to capture, each `schema.table` or `schema.*` (every table of the schema, including
    /// tables created later: see README, "Change data capture"). Required (non-empty) with
    /// `source.mode = "cdc"`; with `mode = "logical"` they are captured beside the outbox through
    /// the same slot. Default: none.
    pub tables: Vec<String>,
}

/// One entry of `source.cdc.tables`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TablePattern {
    /// One table: `schema.table`.
    Table {
        /// The schema.
        schema: String,
        /// The table.
        table: String,
    },
    /// Every table of a schema: `schema.*`.
    Schema(String),
}

impl TablePattern {
    /// Parses `schema.table` or `schema.*`; the error says what is wrong with the entry.
    pub fn parse(entry: &str) -> std::result::Result<Self, String> {
        let Some((schema, table)) = entry.split_once('.') else {
            return Err(format!(
                "\"{entry}\" must be schema.table or schema.* (e.g. public.orders)"
            ));
        };
        for (what, name) in [("schema", schema), ("table", table)] {
            if name.is_empty() || name.len() > 63 || name.contains(['.', '"', '\0']) {
                return Err(format!(
                    "\"{entry}\": the {what} name must be 1 to 63 bytes without '.', '\"' or NUL"
                ));
            }
        }
        Ok(match table {
            "*" => TablePattern::Schema(schema.to_owned()),
            _ => TablePattern::Table {
                schema: schema.to_owned(),
                table: table.to_owned(),
            },
        })
    }

    /// Whether the table `schema`.`table` is matched.
    pub fn matches(&self, schema: &str, table: &str) -> bool {
        match self {
            TablePattern::Table {
                schema: s,
                table: t,
            } => s == schema && t == table,
            TablePattern::Schema(s) => s == schema,
        }
    }
}

impl std::fmt::Display for TablePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TablePattern::Table { schema, table } => write!(f, "{schema}.{table}"),
            TablePattern::Schema(schema) => write!(f, "{schema}.*"),
        }
    }
}

impl CdcConfig {
    /// The parsed `tables` entries.
    pub fn patterns(&self) -> Vec<TablePattern> {
        self.tables
            .iter()
            .filter_map(|entry| TablePattern::parse(entry).ok())
            .collect()
    }

    /// Checks the entries; `required` says whether at least one table must be given (cdc mode)
    /// and `allowed` whether any may be (not in polling mode). The error names the key.
    pub fn validate(&self, required: bool, allowed: bool) -> Result<()> {
        if !allowed && !self.tables.is_empty() {
            return Err(Error::config(
                "source.cdc.tables",
                "is read only with source.mode = \"cdc\" or \"logical\" (table changes come \
                 through a replication slot; polling reads only the outbox)",
            ));
        }
        if required && self.tables.is_empty() {
            return Err(Error::config(
                "source.cdc.tables",
                "must name at least one table with source.mode = \"cdc\", e.g. tables = \
                 [\"public.orders\", \"inventory.*\"]",
            ));
        }
        let mut seen = Vec::new();
        for entry in &self.tables {
            let pattern =
                TablePattern::parse(entry).map_err(|e| Error::config("source.cdc.tables", e))?;
            if seen.contains(&pattern) {
                return Err(Error::config(
                    "source.cdc.tables",
                    format!("\"{entry}\" is listed twice"),
                ));
            }
            seen.push(pattern);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(entries: &[&str]) -> CdcConfig {
        CdcConfig {
            tables: entries.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn tables_and_schema_patterns_parse_and_match() {
        assert_eq!(
            TablePattern::parse("public.orders"),
            Ok(TablePattern::Table {
                schema: "public".into(),
                table: "orders".into()
            })
        );
        let schema = TablePattern::parse("inventory.*").unwrap();
        assert!(schema.matches("inventory", "items"));
        assert!(!schema.matches("public", "items"));
        assert_eq!(schema.to_string(), "inventory.*");
    }

    #[test]
    fn malformed_entries_are_refused_with_the_key() {
        for bad in ["orders", "public.", ".orders", "a.b.c", "\"x\".y"] {
            let err = tables(&[bad]).validate(true, true).unwrap_err().to_string();
            assert!(err.contains("source.cdc.tables"), "{bad}: {err}");
        }
        let err = tables(&["public.a", "public.a"]).validate(true, true);
        assert!(err.unwrap_err().to_string().contains("listed twice"));
    }

    #[test]
    fn logical_mode_refuses_the_outbox_table_as_a_captured_table() {
        let mut config = crate::config::Config::default();
        config.source.mode = crate::config::SourceMode::Logical;
        config.source.cdc = tables(&["public.outbox"]);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("is the outbox table"), "{err}");
        config.source.cdc = tables(&["public.*"]);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn cdc_mode_needs_a_table_and_polling_mode_takes_none() {
        let err = tables(&[]).validate(true, true).unwrap_err().to_string();
        assert!(err.contains("at least one table"), "{err}");
        let err = tables(&["public.a"]).validate(false, false);
        assert!(err.unwrap_err().to_string().contains("source.mode"));
        assert!(tables(&[]).validate(false, true).is_ok());
    }
}
