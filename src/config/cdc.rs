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
    /// Tables (same forms as `tables`) whose inserts alone are captured: for tables without a
    /// usable replica identity, which `tables` refuses. They are published by a second
    /// publication, `<source.logical.publication>_inserts`, that publishes inserts only, so
    /// PostgreSQL keeps accepting the application's UPDATE and DELETE on them. A table matched
    /// here is captured insert-only even if `tables` matches it too. Default: none.
    pub insert_only: Vec<String>,
    /// Whether each captured table's existing rows are delivered first, once per table, as
    /// `"op": "r"` events: `"initial"` (default) or `"never"` (see README, "Snapshots and
    /// backfills").
    pub snapshot: SnapshotMode,
    /// Most rows one snapshot or backfill chunk reads (and holds in memory) at a time.
    pub snapshot_chunk_rows: ChunkRows,
}

/// `source.cdc.snapshot`: whether captured tables' existing rows are delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    /// Each captured table's rows are read once, the first time the relay captures it.
    #[default]
    Initial,
    /// Only changes are captured; rows come only from `outboxd backfill`.
    Never,
}

/// `source.cdc.snapshot_chunk_rows`: rows per snapshot chunk (default 10,000).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChunkRows(pub usize);

impl Default for ChunkRows {
    fn default() -> Self {
        ChunkRows(10_000)
    }
}

/// The suffix of the publication that carries the insert-only tables.
pub const INSERTS_SUFFIX: &str = "_inserts";

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
    /// Every captured table's pattern: `tables`, then `insert_only`.
    pub fn patterns(&self) -> Vec<TablePattern> {
        parsed(&self.tables)
            .chain(parsed(&self.insert_only))
            .collect()
    }

    /// The parsed `tables` entries.
    pub fn table_patterns(&self) -> Vec<TablePattern> {
        parsed(&self.tables).collect()
    }

    /// The parsed `insert_only` entries.
    pub fn insert_only_patterns(&self) -> Vec<TablePattern> {
        parsed(&self.insert_only).collect()
    }

    /// Whether any table is captured.
    pub fn captures(&self) -> bool {
        !self.tables.is_empty() || !self.insert_only.is_empty()
    }

    /// The name of the publication of the insert-only tables, beside `publication`.
    pub fn inserts_publication(publication: &str) -> String {
        format!("{publication}{INSERTS_SUFFIX}")
    }

    /// Checks the entries; `required` says whether at least one table must be given (cdc mode)
    /// and `allowed` whether any may be (not in polling mode); `publication` is the one the
    /// insert-only publication is named after. The error names the key.
    pub fn validate(&self, required: bool, allowed: bool, publication: &str) -> Result<()> {
        for (key, list) in [
            ("source.cdc.tables", &self.tables),
            ("source.cdc.insert_only", &self.insert_only),
        ] {
            if !allowed && !list.is_empty() {
                return Err(Error::config(
                    key,
                    "is read only with source.mode = \"cdc\" or \"logical\" (table changes \
                     come through a replication slot; polling reads only the outbox)",
                ));
            }
            distinct(key, list)?;
        }
        if required && !self.captures() {
            return Err(Error::config(
                "source.cdc.tables",
                "must name at least one table with source.mode = \"cdc\", e.g. tables = \
                 [\"public.orders\", \"inventory.*\"] (or source.cdc.insert_only one)",
            ));
        }
        let inserts = Self::inserts_publication(publication);
        if !self.insert_only.is_empty() && inserts.len() > 63 {
            return Err(Error::config(
                "source.logical.publication",
                format!(
                    "\"{publication}\" is too long for source.cdc.insert_only: \"{inserts}\" \
                     (its insert-only publication) must fit in 63 bytes"
                ),
            ));
        }
        if !(1..=1_000_000).contains(&self.snapshot_chunk_rows.0) {
            return Err(Error::config(
                "source.cdc.snapshot_chunk_rows",
                "must be between 1 and 1000000 (a chunk's rows are held in memory)",
            ));
        }
        Ok(())
    }
}

/// The entries of `list` that parse.
fn parsed(list: &[String]) -> impl Iterator<Item = TablePattern> + '_ {
    list.iter()
        .filter_map(|entry| TablePattern::parse(entry).ok())
}

/// Every entry of the list `key` parses, and none is listed twice.
fn distinct(key: &str, list: &[String]) -> Result<()> {
    let mut seen = Vec::new();
    for entry in list {
        let pattern = TablePattern::parse(entry).map_err(|e| Error::config(key, e))?;
        if seen.contains(&pattern) {
            return Err(Error::config(key, format!("\"{entry}\" is listed twice")));
        }
        seen.push(pattern);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(entries: &[&str]) -> CdcConfig {
        CdcConfig {
            tables: entries.iter().map(|e| e.to_string()).collect(),
            ..CdcConfig::default()
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
            let err = tables(&[bad])
                .validate(true, true, "outboxd")
                .unwrap_err()
                .to_string();
            assert!(err.contains("source.cdc.tables"), "{bad}: {err}");
        }
        let err = tables(&["public.a", "public.a"]).validate(true, true, "outboxd");
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
        let err = tables(&[])
            .validate(true, true, "outboxd")
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least one table"), "{err}");
        let err = tables(&["public.a"]).validate(false, false, "outboxd");
        assert!(err.unwrap_err().to_string().contains("source.mode"));
        assert!(tables(&[]).validate(false, true, "outboxd").is_ok());
    }

    #[test]
    fn insert_only_tables_count_as_captured_and_are_checked_like_tables() {
        let mut config = tables(&[]);
        config.insert_only = vec!["audit.*".into()];
        assert!(config.captures());
        config.validate(true, true, "outboxd").unwrap();
        assert_eq!(config.patterns(), [TablePattern::Schema("audit".into())]);
        assert!(config.table_patterns().is_empty());
        assert_eq!(CdcConfig::inserts_publication("outboxd"), "outboxd_inserts");
        config.insert_only.push("audit".into());
        let err = config
            .validate(true, true, "outboxd")
            .unwrap_err()
            .to_string();
        assert!(err.contains("source.cdc.insert_only"), "{err}");
        config.insert_only.pop();
        let err = config
            .validate(false, false, "outboxd")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("source.cdc.insert_only"), "{err}");
        let long = "p".repeat(60);
        let err = config.validate(true, true, &long).unwrap_err().to_string();
        assert!(err.contains("must fit in 63 bytes"), "{err}");
    }
}
