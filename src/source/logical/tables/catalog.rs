//! What the mapping needs from the catalog that Relation messages do not say: the database's
//! name, each captured table's primary key, and user types (a domain's base type, an array's
//! element type). Read at start-up and again on every heartbeat, so tables and types created
//! later are known; a type created since is written as its text form until then.

use super::json::Types;
use crate::config::TablePattern;
use crate::error::Result;
use crate::pg::classify;
use std::collections::HashMap;
use tokio_postgres::Client;

/// The catalog facts the table mapping uses.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// The database's name (the envelope's `source.db`).
    pub db: String,
    /// Primary key column names, in key order, by `(schema, table)`.
    pub keys: HashMap<(String, String), Vec<String>>,
    /// Domains and arrays of user types.
    pub types: Types,
}

impl Catalog {
    /// The primary key columns of `schema`.`table`, if it has one.
    pub fn primary_key(&self, schema: &str, table: &str) -> Option<&Vec<String>> {
        self.keys.get(&(schema.to_owned(), table.to_owned()))
    }
}

/// Reads the catalog facts for the tables `patterns` match.
pub async fn load(client: &Client, patterns: &[TablePattern]) -> Result<Catalog> {
    let db: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(|err| classify("reading the database name", err))?
        .get(0);
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, \
                    array_agg(a.attname::text ORDER BY k.ord) \
             FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
             WHERE i.indisprimary AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             GROUP BY 1, 2",
            &[],
        )
        .await
        .map_err(|err| classify("reading primary keys", err))?;
    let keys = rows
        .into_iter()
        .map(|row| ((row.get(0), row.get(1)), row.get(2)))
        .filter(|((schema, table), _): &((String, String), Vec<String>)| {
            patterns.iter().any(|p| p.matches(schema, table))
        })
        .collect();
    let rows = client
        .query(
            "SELECT oid, typtype::text, typbasetype, typelem FROM pg_type \
             WHERE oid >= 16384 AND (typtype = 'd' OR (typcategory = 'A' AND typelem <> 0))",
            &[],
        )
        .await
        .map_err(|err| classify("reading user types", err))?;
    let mut types = Types::default();
    for row in rows {
        let (oid, kind, base, element): (u32, String, u32, u32) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        match kind.as_str() {
            "d" => types.domains.insert(oid, base),
            _ => types.arrays.insert(oid, element),
        };
    }
    Ok(Catalog { db, keys, types })
}
