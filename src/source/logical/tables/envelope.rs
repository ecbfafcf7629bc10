//! Debezium's change-event envelope, as its JSON converter writes it with schemas disabled:
//! `{"before", "after", "source": {...}, "op", "ts_ms"}`, and rows as JSON objects.
//!
//! # Unchanged TOAST values
//! An UPDATE that leaves a large (TOASTed) column alone sends no value for it. Under `REPLICA
//! IDENTITY FULL` the old row carries it and `after` takes it from there. Otherwise the column
//! is left out of `after` and named in the envelope's extra member `"unchanged_toast": [...]`,
//! so a consumer keeps the value it has; it is never written as `null` or a placeholder.

use super::json::{self, Types};
use crate::source::pgoutput::{Column, Value};
use std::fmt::Write;

/// Where a change comes from: the envelope's `source` block.
pub struct Origin<'a> {
    /// The database's name.
    pub db: &'a str,
    /// The table's schema.
    pub schema: &'a str,
    /// The table's name.
    pub table: &'a str,
    /// The change's LSN.
    pub lsn: u64,
    /// The transaction's id.
    pub xid: u32,
    /// The commit time, milliseconds since the Unix epoch.
    pub commit_ms: i64,
    /// `source.snapshot`: `"false"` for the stream's changes, `"true"` for a snapshot's rows
    /// (`"last"` in its final chunk).
    pub snapshot: &'static str,
}

/// Appends a row as a JSON object of the columns in `only` (every column when `None`), in the
/// table's order. An unchanged TOAST value is taken from `fill` (the old row under FULL
/// identity) when it has it, and otherwise left out and its column's name returned. The error
/// names the column whose value is not one of its type.
pub fn row(
    out: &mut String,
    types: &Types,
    columns: &[Column],
    values: &[Value<'_>],
    only: Option<&[usize]>,
    fill: Option<&[Value<'_>]>,
) -> Result<Vec<String>, String> {
    let mut unchanged = Vec::new();
    out.push('{');
    let mut first = true;
    let every: Vec<usize>;
    let indexes = match only {
        Some(indexes) => indexes,
        None => {
            every = (0..columns.len()).collect();
            &every
        }
    };
    for &i in indexes {
        let (Some(column), Some(value)) = (columns.get(i), values.get(i)) else {
            continue;
        };
        let value = match value {
            Value::Unchanged => match fill.and_then(|old| old.get(i)) {
                Some(old @ (Value::Text(_) | Value::Null | Value::Binary(_))) => old,
                _ => {
                    unchanged.push(column.name.clone());
                    continue;
                }
            },
            other => other,
        };
        if !first {
            out.push(',');
        }
        first = false;
        json::string(out, &column.name);
        out.push(':');
        match value {
            Value::Null | Value::Unchanged => out.push_str("null"),
            Value::Text(bytes) => {
                let text = String::from_utf8_lossy(bytes);
                json::write(out, types, column.type_id, &text)
                    .map_err(|reason| format!("column \"{}\": {reason}", column.name))?;
            }
            Value::Binary(bytes) => json::string(out, &String::from_utf8_lossy(bytes)),
        }
    }
    out.push('}');
    Ok(unchanged)
}

/// Starts an envelope in `out`. The caller then writes `before` (a row, or `null`), calls
/// [`after`], writes `after` the same way, and ends with [`close`]: the rows go straight into
/// the one buffer.
pub fn open(out: &mut String) {
    out.push_str("{\"before\":");
}

/// Between `before` and `after` (see [`open`]).
pub fn after(out: &mut String) {
    out.push_str(",\"after\":");
}

/// Ends the envelope (see [`open`]): the `source` block, the Debezium operation letter (`c`,
/// `u`, `d`, `t`, `r`), the time, and the columns left out of `after`.
pub fn close(out: &mut String, origin: &Origin<'_>, op: char, unchanged: &[String], now_ms: i64) {
    out.push_str(",\"source\":{\"connector\":\"outboxd\",\"db\":");
    json::string(out, origin.db);
    out.push_str(",\"schema\":");
    json::string(out, origin.schema);
    out.push_str(",\"table\":");
    json::string(out, origin.table);
    // Straight into the buffer: a temporary string per change is measurable at this rate.
    let _ = write!(
        out,
        ",\"lsn\":{},\"txId\":{},\"ts_ms\":{},\"snapshot\":\"{}\"}},\"op\":\"{op}\",\"ts_ms\":{now_ms}",
        origin.lsn, origin.xid, origin.commit_ms, origin.snapshot
    );
    if !unchanged.is_empty() {
        out.push_str(",\"unchanged_toast\":");
        out.push_str(&serde_json::to_string(unchanged).unwrap_or_default());
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The envelope around `before` and `after` (JSON objects, or `None` for `null`).
    fn envelope(
        before: Option<&str>,
        after_row: Option<&str>,
        origin: &Origin<'_>,
        op: char,
        unchanged: &[String],
        now_ms: i64,
    ) -> String {
        let mut out = String::new();
        open(&mut out);
        out.push_str(before.unwrap_or("null"));
        after(&mut out);
        out.push_str(after_row.unwrap_or("null"));
        close(&mut out, origin, op, unchanged, now_ms);
        out
    }

    fn columns() -> Vec<Column> {
        let mut id = Column::named("id");
        id.type_id = 23;
        id.key = true;
        let mut doc = Column::named("doc");
        doc.type_id = 25;
        let mut data = Column::named("data");
        data.type_id = 3802;
        vec![id, doc, data]
    }

    #[test]
    fn a_row_is_an_object_of_typed_values_with_nulls() {
        let mut out = String::new();
        let values = [Value::Text(b"42"), Value::Null, Value::Text(br#"{"a":1}"#)];
        let unchanged = row(&mut out, &Types::default(), &columns(), &values, None, None);
        assert_eq!(unchanged.unwrap(), Vec::<String>::new());
        assert_eq!(out, r#"{"id":42,"doc":null,"data":{"a":1}}"#);
    }

    #[test]
    fn the_key_is_an_object_of_the_key_columns_only() {
        let mut out = String::new();
        let values = [Value::Text(b"42"), Value::Null, Value::Null];
        row(
            &mut out,
            &Types::default(),
            &columns(),
            &values,
            Some(&[0]),
            None,
        )
        .unwrap();
        assert_eq!(out, r#"{"id":42}"#);
    }

    #[test]
    fn an_unchanged_toast_value_comes_from_the_old_row_or_is_left_out_never_null() {
        let new = [Value::Text(b"42"), Value::Unchanged, Value::Text(b"1")];
        let old = [Value::Text(b"42"), Value::Text(b"big"), Value::Text(b"0")];
        let mut full = String::new();
        let left = row(
            &mut full,
            &Types::default(),
            &columns(),
            &new,
            None,
            Some(&old),
        );
        assert!(left.unwrap().is_empty());
        assert_eq!(full, r#"{"id":42,"doc":"big","data":1}"#);

        let mut default = String::new();
        let left = row(
            &mut default,
            &Types::default(),
            &columns(),
            &new,
            None,
            None,
        )
        .unwrap();
        assert_eq!(default, r#"{"id":42,"data":1}"#);
        assert_eq!(left, ["doc"]);
    }

    #[test]
    fn a_value_that_is_not_of_its_type_names_the_column() {
        let values = [Value::Text(b"42"), Value::Null, Value::Text(b"{oops")];
        let err = row(
            &mut String::new(),
            &Types::default(),
            &columns(),
            &values,
            None,
            None,
        );
        assert!(
            err.unwrap_err()
                .starts_with("column \"data\": invalid JSON")
        );
    }

    #[test]
    fn the_envelope_has_debeziums_members() {
        let origin = Origin {
            db: "shop",
            schema: "public",
            table: "orders",
            lsn: 100,
            xid: 7,
            commit_ms: 1_700_000_000_000,
            snapshot: "false",
        };
        let out = envelope(Some(r#"{"id":1}"#), None, &origin, 'd', &[], 5);
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "before": {"id": 1}, "after": null,
                "source": {"connector": "outboxd", "db": "shop", "schema": "public",
                    "table": "orders", "lsn": 100, "txId": 7, "ts_ms": 1_700_000_000_000i64,
                    "snapshot": "false"},
                "op": "d", "ts_ms": 5
            })
        );
        let out = envelope(None, Some("{}"), &origin, 'u', &["doc".into()], 5);
        assert!(out.ends_with(r#""unchanged_toast":["doc"]}"#), "{out}");
    }
}
