//! Turning a deserialization error into a line a person can act on: it names where the bad
//! value came from (the file, or the `OUTBOXD_*` variable that set it) and, for a value of a
//! fixed set, lists the valid values instead of a Rust type name.

use super::Config;
use crate::error::{Error, ErrorKind};
use std::collections::HashMap;

/// Prefix of environment overrides: `OUTBOXD_SOURCE__URL` sets `source.url`.
pub const ENV_PREFIX: &str = "OUTBOXD_";

/// The message for `err`, raised while deserializing `built` (the merged file and environment)
/// into a [`Config`]. `env` holds the `OUTBOXD_*` variables; `file` names the file (or "built-in
/// defaults").
pub fn explain(
    err: &config::ConfigError,
    built: &config::Config,
    env: &HashMap<String, String>,
    file: &str,
) -> String {
    let mut reason = one_line(&err.to_string());
    let key = between(&reason, "for key `", "`").map(str::to_string);
    if let Some(variant) = between(&reason, "does not have variant constructor ", " ")
        && let Some(valid) = valid_values(built, variant)
    {
        let start = reason.find("enum ").unwrap_or(0);
        let end = reason.find(" for key `").unwrap_or(reason.len());
        reason.replace_range(start..end, &format!("unknown value \"{variant}\", {valid}"));
    }
    let field = between(&reason, "unknown field `", "`");
    let variable = key.as_deref().and_then(|key| env_variable(env, key, field));
    let origin = match variable {
        Some(name) => format!("environment variable {name}"),
        None => file.to_string(),
    };
    // "… in the environment" is the parser's own, vaguer, way of saying the same.
    let reason = reason.replace(" in the environment", "");
    format!("invalid configuration ({origin}): {reason}")
}

/// `err` (from [`Config::validate`], "key: constraint"), saying which variable set the key when
/// an `OUTBOXD_*` variable did: the file does not hold the value to fix.
pub fn name_variable(err: Error, env: &HashMap<String, String>) -> Error {
    let text = err.to_string();
    let variable = text
        .split_once(": ")
        .and_then(|(key, _)| env_variable(env, key, None));
    match variable {
        Some(name) if err.kind() == ErrorKind::Config => {
            Error::new(ErrorKind::Config, format!("{text} (set by {name})"))
        }
        _ => err,
    }
}

/// serde's own words for an unknown variant ("expected one of `log`, `amqp`, `kafka`"), got by
/// deserializing the same values again through `serde_json`, whose enum errors list them.
fn valid_values(built: &config::Config, variant: &str) -> Option<String> {
    let value: serde_json::Value = built.clone().try_deserialize().ok()?;
    let err = serde_json::from_value::<Config>(value).err()?.to_string();
    if !err.contains(&format!("unknown variant `{variant}`")) {
        return None;
    }
    // "expected one of `a`, `b`, `c`", or for two "expected `a` or `b`".
    let start = err.find(", expected ")? + 2;
    Some(err[start..].to_string())
}

/// The `OUTBOXD_*` variable that set `key` (or, for an unknown field, `key.field`), if one did.
fn env_variable<'a>(
    env: &'a HashMap<String, String>,
    key: &str,
    field: Option<&str>,
) -> Option<&'a str> {
    let path = match field {
        Some(field) => format!("{key}.{field}"),
        None => key.to_string(),
    };
    let wanted = format!("{ENV_PREFIX}{}", path.replace('.', "__")).to_uppercase();
    env.keys()
        .find(|name| name.to_uppercase() == wanted)
        .map(String::as_str)
}

/// The text between the first `start` and the next `end` in `text`.
fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end).map_or(text.len(), |to| from + to);
    Some(&text[from..to])
}

/// Folds a multi-line parser message (TOML errors quote the offending line and mark it with a
/// caret) into one line, so every configuration error is a single line on stderr.
pub fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('|'))
        .filter(|line| !(line.starts_with(|c: char| c.is_ascii_digit()) && line.contains(" | ")))
        .collect::<Vec<_>>()
        .join(": ")
}
