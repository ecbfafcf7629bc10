//! The per-key order check of the sink conformance suite.

use super::conformance::Delivered;
use std::collections::{HashMap, HashSet};

/// Checks per-key order stream by stream: ignoring repeats of events already seen (sent again
/// after a failure), each key's `seq` increases by exactly one, and each key stays in one
/// stream. Returns (distinct events, repeats).
pub fn check_order(delivered: &[Delivered]) -> (usize, usize) {
    let mut seen: HashSet<&str> = HashSet::new();
    let mut last: HashMap<&str, i64> = HashMap::new();
    let mut stream_of: HashMap<&str, i32> = HashMap::new();
    let mut repeats = 0;
    for (index, event) in delivered.iter().enumerate() {
        if !seen.insert(&event.id) {
            repeats += 1;
            continue;
        }
        let key = event.key.as_str();
        let stream = *stream_of.entry(key).or_insert(event.stream);
        assert_eq!(
            stream, event.stream,
            "key {key} in streams {stream} and {}",
            event.stream
        );
        let previous = last.insert(key, event.seq).unwrap_or(0);
        assert_eq!(
            event.seq,
            previous + 1,
            "key {key} out of order at delivery {index}: seq {} after {previous}",
            event.seq
        );
    }
    (seen.len(), repeats)
}
