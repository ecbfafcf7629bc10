//! The captured tables as found in the catalog, and the two statements both publications
//! (the main one and the insert-only one, `inserts.rs`) share: what a publication lists, and
//! adding the tables it lacks.

use crate::error::Result;
use crate::pg::{classify, quote_ident};
use tokio_postgres::Client;

/// A table that a `source.cdc.tables` or `source.cdc.insert_only` entry names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub table: String,
    /// Whether PostgreSQL would refuse its UPDATE and DELETE once published.
    pub unusable_identity: bool,
    /// Whether only its inserts are captured (`source.cdc.insert_only` matches it).
    pub insert_only: bool,
}

impl Found {
    /// Whether `listed` (schema, table) pairs include this table.
    pub fn listed_in(&self, listed: &[(String, String)]) -> bool {
        listed
            .iter()
            .any(|(s, t)| *s == self.schema && *t == self.table)
    }

    /// `schema.table` for SQL, each part quoted only if it needs it.
    pub fn quoted(&self) -> String {
        format!("{}.{}", sql_name(&self.schema), sql_name(&self.table))
    }
}

/// A name as SQL needs it: bare if it is a plain lower-case identifier, quoted otherwise.
fn sql_name(name: &str) -> String {
    let plain = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    match plain {
        true => name.to_owned(),
        false => quote_ident(name),
    }
}

/// The tables the publication lists, and whether it publishes every operation.
pub async fn published(
    client: &Client,
    publication: &str,
) -> Result<Option<(Vec<(String, String)>, bool)>> {
    let row = client
        .query_opt(
            "SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate AND pubviaroot, \
                    puballtables FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|err| classify("reading the publication", err))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let every_operation: bool = row.get(0);
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables \
             WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|err| classify("reading the publication's tables", err))?;
    let tables = rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(Some((tables, every_operation)))
}

/// Adds the `tables` that `publication` does not list (`listed`); returns their names.
pub async fn add_to(
    client: &Client,
    publication: &str,
    tables: &[Found],
    listed: &[(String, String)],
) -> Result<Vec<String>> {
    let missing: Vec<String> = tables
        .iter()
        .filter(|t| !t.listed_in(listed))
        .map(Found::quoted)
        .collect();
    if !missing.is_empty() {
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {} ADD TABLE {}",
                quote_ident(publication),
                missing.join(", ")
            ))
            .await
            .map_err(|err| classify("adding tables to the publication", err))?;
        tracing::info!(%publication, tables = %missing.join(", "), "tables added to the publication");
    }
    Ok(missing)
}
