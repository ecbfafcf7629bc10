//! The row's `headers` object, as the broker sinks read it: every member, in key order, with its
//! value parsed — or the reason the event cannot carry them.
//!
//! serde_json refuses values nested deeper than 128 levels. Reading the object as raw members
//! first (which has no depth limit) and each value on its own makes that refusal one member's,
//! with its name, so the event becomes a dead letter that says why instead of silently losing
//! every header.

use crate::event::Event;
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// The members of `event`'s headers object; none if it has no headers. An error names the
/// member that could not be read.
pub fn row_headers(event: &Event) -> Result<Vec<(String, Value)>, String> {
    let Some(raw) = &event.headers else {
        return Ok(Vec::new());
    };
    let members: BTreeMap<String, Box<RawValue>> = serde_json::from_str(raw.get())
        .map_err(|err| format!("headers are not a JSON object: {err}"))?;
    members
        .into_iter()
        .map(|(name, value)| {
            serde_json::from_str(value.get())
                .map(|value| (name.clone(), value))
                .map_err(|err| format!("header {name:?} cannot be relayed: {err}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_nested_too_deep_is_an_error_naming_it_not_a_silent_loss() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let event = crate::event::sample(Some(&format!(r#"{{"ok":"x","deep":{deep}}}"#)));
        let err = row_headers(&event).unwrap_err();
        assert!(
            err.starts_with("header \"deep\" cannot be relayed: recursion limit"),
            "{err}"
        );
        let event = crate::event::sample(Some(r#"{"b":1,"a":"x"}"#));
        let names: Vec<String> = row_headers(&event)
            .unwrap()
            .into_iter()
            .map(|m| m.0)
            .collect();
        assert_eq!(names, ["a", "b"]);
    }
}
