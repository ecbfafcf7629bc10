//! Reading one chunk of a table: up to `snapshot_chunk_rows` rows after the last key, in key
//! order, in a short `REPEATABLE READ` transaction that also reports its snapshot (which
//! transactions it sees), with every value in its type's text form (what pgoutput sends, so the
//! table mapping turns both into the same JSON).
//!
//! Every identifier is quoted; the last key's values are bound as text parameters and cast to
//! the column's type in SQL, so no value is ever spliced into a statement. The only text spliced
//! is an `outboxd backfill --where` condition, checked by [`check_condition`].

use crate::error::{Error, ErrorKind, Result};
use crate::pg::{classify, quote_ident};
use crate::source::pgoutput::Column;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

/// What a chunk read needs to know of a table.
#[derive(Clone, Debug)]
pub struct Shape {
    /// `"schema"."table"`.
    pub quoted: String,
    /// Its published columns, in attribute order.
    pub columns: Vec<Column>,
    /// Indexes of the primary key's columns in `columns`, in key order.
    pub key: Vec<usize>,
    /// Each key column's type as SQL (`format_type`), to cast the last key's text back.
    pub key_types: Vec<String>,
    /// The statistics' row estimate.
    pub estimate: i64,
}

/// Reads a table's shape; the error says why it cannot be read in chunks (gone, no primary
/// key).
pub async fn shape(client: &Client, schema: &str, table: &str) -> Result<Shape> {
    let quoted = format!("{}.{}", quote_ident(schema), quote_ident(table));
    let found = client
        .query_opt(
            "SELECT c.oid, greatest(c.reltuples, 0)::int8 FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &table],
        )
        .await
        .map_err(|err| classify("reading a snapshot table", err))?;
    let Some(found) = found else {
        return Err(Error::new(
            ErrorKind::Schema,
            format!("table {quoted} does not exist"),
        ));
    };
    let oid: u32 = found.get(0);
    let estimate: i64 = found.get(1);
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid, a.atttypmod, format_type(a.atttypid, a.atttypmod), \
                    (SELECT k.ord FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                      WHERE i.indrelid = a.attrelid AND i.indisprimary AND k.attnum = a.attnum) \
             FROM pg_attribute a \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
             ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(|err| classify("reading a snapshot table's columns", err))?;
    let mut columns = Vec::new();
    let mut keyed: Vec<(i64, usize, String)> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let ord: Option<i64> = row.get(4);
        let mut column = Column::named(row.get::<_, String>(0).as_str());
        column.type_id = row.get(1);
        column.type_modifier = row.get(2);
        column.key = ord.is_some();
        if let Some(ord) = ord {
            keyed.push((ord, i, row.get(3)));
        }
        columns.push(column);
    }
    if keyed.is_empty() {
        return Err(Error::new(
            ErrorKind::Schema,
            format!(
                "table {quoted} has no primary key: a snapshot reads rows in key order to resume \
                 and to match them with the stream's changes; add a primary key, or leave the \
                 table out of snapshots (source.cdc.snapshot = \"never\")"
            ),
        ));
    }
    keyed.sort();
    Ok(Shape {
        quoted,
        columns,
        key: keyed.iter().map(|(_, i, _)| *i).collect(),
        key_types: keyed.into_iter().map(|(_, _, t)| t).collect(),
        estimate,
    })
}

/// Refuses a `--where` condition that could end or escape the statement it is put in: a `;`,
/// a comment, or unbalanced parentheses (outside string literals and quoted identifiers).
/// Anything else is an ordinary SQL condition, run as the relay's database user.
pub fn check_condition(condition: &str) -> std::result::Result<(), String> {
    if condition.trim().is_empty() {
        return Err("the condition is empty".into());
    }
    let mut depth = 0i64;
    let mut quote: Option<char> = None;
    let mut previous = '\0';
    for c in condition.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '\'' | '"' => quote = Some(c),
                ';' => return Err("the condition may not contain ';'".into()),
                '-' if previous == '-' => return Err("the condition may not contain '--'".into()),
                '*' if previous == '/' => return Err("the condition may not contain '/*'".into()),
                '$' => return Err("the condition may not contain '$' (dollar quotes)".into()),
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth < 0 {
                        return Err("the condition has an unbalanced ')'".into());
                    }
                }
                _ => {}
            },
        }
        previous = c;
    }
    if quote.is_some() {
        return Err("the condition has an unterminated quote".into());
    }
    if depth != 0 {
        return Err("the condition has an unbalanced '('".into());
    }
    Ok(())
}

/// One chunk as read.
#[derive(Debug, Default)]
pub struct Rows {
    /// The rows as received: every column's value in its text form (NULL as NULL), in column
    /// order, read in place with [`value`] (no copy per value).
    pub rows: Vec<Row>,
    /// Whether no row comes after these (the final chunk).
    pub last: bool,
    /// Transactions the chunk's snapshot does not see although they began before it (their
    /// 32-bit xids): see [`super::window`].
    pub invisible: Vec<u32>,
}

/// Reads the rows after `after` (the first ones when `None`), at most `limit`, that
/// `condition` selects.
pub async fn read(
    client: &Client,
    shape: &Shape,
    after: Option<&[String]>,
    condition: Option<&str>,
    limit: usize,
) -> Result<Rows> {
    let names: Vec<String> = shape.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let values: Vec<String> = names
        .iter()
        .map(|n| format!("CASE WHEN {n} IS NULL THEN NULL ELSE format('%s', {n}) END"))
        .collect();
    let key_names: Vec<&str> = shape.key.iter().map(|&i| names[i].as_str()).collect();
    let mut conditions = Vec::new();
    if after.is_some() {
        let bounds: Vec<String> = shape
            .key_types
            .iter()
            .enumerate()
            .map(|(i, t)| format!("CAST(${}::text AS {t})", i + 1))
            .collect();
        conditions.push(format!(
            "({}) > ({})",
            key_names.join(", "),
            bounds.join(", ")
        ));
    }
    if let Some(condition) = condition {
        check_condition(condition)
            .map_err(|reason| Error::new(ErrorKind::Config, format!("--where: {reason}")))?;
        conditions.push(format!("({condition})"));
    }
    let filter = match conditions.is_empty() {
        true => String::new(),
        false => format!(" WHERE {}", conditions.join(" AND ")),
    };
    let sql = format!(
        "SELECT {} FROM {}{filter} ORDER BY {} LIMIT {}",
        values.join(", "),
        shape.quoted,
        key_names.join(", "),
        limit + 1
    );
    let params: Vec<&(dyn ToSql + Sync)> = after
        .unwrap_or_default()
        .iter()
        .map(|v| v as &(dyn ToSql + Sync))
        .collect();
    let what = |err| classify(format!("reading a snapshot chunk of {}", shape.quoted), err);
    // On an error the caller drops the session, and the open transaction with it.
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(what)?;
    // The first statement takes the transaction's snapshot; the chunk is read with the same.
    let snapshot: String = client
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .await
        .map_err(what)?
        .get(0);
    let mut rows = client.query(&sql, &params).await.map_err(what)?;
    client.batch_execute("COMMIT").await.map_err(what)?;
    let last = rows.len() <= limit;
    rows.truncate(limit);
    Ok(Rows {
        rows,
        last,
        invisible: in_progress(&snapshot),
    })
}

/// Column `i` of a chunk's row, in its text form (`None` for NULL).
pub fn value(row: &Row, i: usize) -> Option<&str> {
    row.get(i)
}

/// The in-progress transactions of a `pg_snapshot` (`xmin:xmax:xip,...`), as 32-bit xids.
fn in_progress(snapshot: &str) -> Vec<u32> {
    snapshot
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .split(',')
        .filter_map(|xid| xid.trim().parse::<u64>().ok())
        .map(|xid| xid as u32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_that_could_escape_their_parentheses_are_refused() {
        for bad in [
            "id > 1; DROP TABLE t",
            "id > 1) OR (true",
            "id > 1 -- rest",
            "id > 1 /* x */",
            "name = 'x",
            "(id > 1",
            "x = $$a$$",
        ] {
            assert!(check_condition(bad).is_err(), "{bad}");
        }
        for good in [
            "id % 2 = 0",
            "name = 'a;b--c' AND \"we;ird\" > 0",
            "(a > 1) OR (b < 2)",
        ] {
            assert_eq!(check_condition(good), Ok(()), "{good}");
        }
    }

    #[test]
    fn in_progress_transactions_come_from_the_snapshots_list() {
        assert_eq!(in_progress("100:105:100,103"), [100, 103]);
        assert!(in_progress("100:100:").is_empty());
        assert_eq!(in_progress("4294967400:4294967401:4294967400"), [104]);
    }
}
