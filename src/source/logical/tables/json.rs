//! A column's text form (what `pgoutput` sends) as natural JSON, chosen by the column's type
//! OID: integers as numbers, `numeric` as an exact string, floats as numbers (NaN and
//! ±Infinity as strings), booleans, `json`/`jsonb` embedded, `bytea` as base64, dates and times
//! as ISO 8601, intervals as ISO 8601 durations, arrays as JSON arrays, enums and domains as
//! their base type, and anything else as its text.

use super::array::{self, Item};
use super::temporal;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::fmt::Write;

/// How a type's values are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// int2, int4, int8, oid: a number.
    Integer,
    /// numeric: an exact string.
    Numeric,
    /// float4, float8: a number, or `"NaN"`, `"Infinity"`, `"-Infinity"`.
    Float,
    /// bool.
    Bool,
    /// json, jsonb: embedded.
    Json,
    /// bytea: base64.
    Bytea,
    /// date.
    Date,
    /// time.
    Time,
    /// timetz.
    TimeTz,
    /// timestamp.
    Timestamp,
    /// timestamptz.
    TimestampTz,
    /// interval.
    Interval,
    /// An array of the element type with this OID.
    Array(u32),
    /// Anything else (text, uuid, enums, …): a string of its text form.
    Text,
}

/// Built-in array types and their element types.
const ARRAYS: &[(u32, u32)] = &[
    (1000, 16),
    (1001, 17),
    (1002, 18),
    (1003, 19),
    (1005, 21),
    (1007, 23),
    (1009, 25),
    (1014, 1042),
    (1015, 1043),
    (1016, 20),
    (1021, 700),
    (1022, 701),
    (1028, 26),
    (1115, 1114),
    (1182, 1082),
    (1183, 1083),
    (1185, 1184),
    (1187, 1186),
    (1231, 1700),
    (1270, 1266),
    (2951, 2950),
    (199, 114),
    (3807, 3802),
];

/// The kind of a built-in type.
fn builtin(oid: u32) -> Kind {
    match oid {
        20 | 21 | 23 | 26 => Kind::Integer,
        1700 => Kind::Numeric,
        700 | 701 => Kind::Float,
        16 => Kind::Bool,
        114 | 3802 => Kind::Json,
        17 => Kind::Bytea,
        1082 => Kind::Date,
        1083 => Kind::Time,
        1266 => Kind::TimeTz,
        1114 => Kind::Timestamp,
        1184 => Kind::TimestampTz,
        1186 => Kind::Interval,
        _ => match ARRAYS.iter().find(|(array, _)| *array == oid) {
            Some((_, element)) => Kind::Array(*element),
            None => Kind::Text,
        },
    }
}

/// Types outside the built-in set, read from `pg_type`: a domain's base type, an array's
/// element type (enums need nothing: their text is their value).
#[derive(Clone, Debug, Default)]
pub struct Types {
    /// Domain OID to its base type's OID.
    pub domains: HashMap<u32, u32>,
    /// Array type OID to its element type's OID, for arrays of user types.
    pub arrays: HashMap<u32, u32>,
}

impl Types {
    /// How values of `oid` are written (domains resolved to their base type).
    pub fn kind(&self, oid: u32) -> Kind {
        let mut oid = oid;
        // Domains may be over domains; the catalog has no cycles, the bound is for safety.
        for _ in 0..16 {
            match self.domains.get(&oid) {
                Some(base) => oid = *base,
                None => break,
            }
        }
        match self.arrays.get(&oid) {
            Some(element) => Kind::Array(*element),
            None => builtin(oid),
        }
    }
}

/// Appends `text` (a value of type `oid`) to `out` as JSON; the error says why the text is not
/// a value of its type.
pub fn write(out: &mut String, types: &Types, oid: u32, text: &str) -> Result<(), String> {
    match types.kind(oid) {
        // PostgreSQL writes integers in JSON's own form; anything else is parsed to be sure.
        Kind::Integer if is_plain_integer(text) => out.push_str(text),
        Kind::Integer => match text.parse::<i64>() {
            Ok(n) => {
                let _ = write!(out, "{n}");
            }
            Err(_) => return Err(format!("{text:?} is not an integer")),
        },
        Kind::Numeric | Kind::Text => string(out, text),
        Kind::Float => match text.parse::<f64>() {
            Ok(f) if f.is_finite() => out.push_str(
                &serde_json::Number::from_f64(f).map_or_else(|| text.to_owned(), |n| n.to_string()),
            ),
            Ok(_) => string(out, text),
            Err(_) => return Err(format!("{text:?} is not a floating-point number")),
        },
        Kind::Bool => match text {
            "t" => out.push_str("true"),
            "f" => out.push_str("false"),
            _ => return Err(format!("{text:?} is not a boolean")),
        },
        Kind::Json => match serde_json::from_str::<&RawValue>(text) {
            Ok(raw) => out.push_str(raw.get()),
            Err(err) => return Err(format!("invalid JSON: {err}")),
        },
        Kind::Bytea => match text.strip_prefix("\\x").and_then(hex) {
            Some(bytes) => string(out, &base64(&bytes)),
            None => return Err("bytea is not in hex form (set bytea_output = 'hex')".into()),
        },
        Kind::Date => temporal_or_text(out, temporal::date(text), text),
        Kind::Time => temporal_or_text(out, temporal::time(text), text),
        Kind::TimeTz => temporal_or_text(out, temporal::timetz(text), text),
        Kind::Timestamp => temporal_or_text(out, temporal::timestamp(text), text),
        Kind::TimestampTz => temporal_or_text(out, temporal::timestamptz(text), text),
        Kind::Interval => temporal_or_text(out, temporal::interval(text), text),
        Kind::Array(element) => match array::parse(text) {
            Some(items) => write_items(out, types, element, &items)?,
            None => return Err(format!("{text:?} is not an array literal")),
        },
    }
    Ok(())
}

/// Whether `text` is an integer as JSON writes one (`-?(0|[1-9][0-9]*)`) that fits in 64 bits,
/// so it can be copied as it is.
fn is_plain_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text).as_bytes();
    match digits {
        [] => false,
        [b'0'] => text.len() == 1,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit) && digits.len() <= 18,
        _ => false,
    }
}

/// Appends nested array items as JSON arrays.
fn write_items(
    out: &mut String,
    types: &Types,
    element: u32,
    items: &[Item],
) -> Result<(), String> {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            Item::Array(nested) => write_items(out, types, element, nested)?,
            Item::Text(text) => write(out, types, element, text)?,
            Item::Null => out.push_str("null"),
        }
    }
    out.push(']');
    Ok(())
}

/// The converted text as a string, or the text as it came if it has an unexpected shape.
fn temporal_or_text(out: &mut String, converted: Option<String>, text: &str) {
    string(out, converted.as_deref().unwrap_or(text));
}

/// Appends `text` as a JSON string, escaped as serde_json escapes it (`\"`, `\\`, the short
/// escapes of control characters, `\u00xx` for the others), straight into `out`: this runs for
/// every column name and text value of every change.
pub fn string(out: &mut String, text: &str) {
    out.push('"');
    let mut start = 0;
    for (i, &b) in text.as_bytes().iter().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        // Escaped bytes are ASCII, so these slice at character boundaries.
        out.push_str(&text[start..i]);
        match escape {
            "" => {
                let _ = write!(out, "\\u{b:04x}");
            }
            short => out.push_str(short),
        }
        start = i + 1;
    }
    out.push_str(&text[start..]);
    out.push('"');
}

/// Hex digits to bytes.
fn hex(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    digits
        .chunks(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
