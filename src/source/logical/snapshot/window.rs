//! The stream's side of a chunk: between the chunk's low and high watermark messages, the keys
//! of its table that the stream changed (their chunk rows are dropped: the stream's events carry
//! those rows' newer state), and the check that the chunk's snapshot saw every transaction the
//! stream decoded before the low watermark.
//!
//! # Why the second check
//! A transaction's commit record is written before the transaction becomes visible, so one that
//! commits just before the low watermark in the stream can still be invisible to the chunk's
//! snapshot, taken just after it. Its change would come before the chunk's (older) row. The
//! chunk's snapshot lists the transactions still in progress when it was taken; if any of them
//! was decoded before the low watermark, the chunk is read again. The stream's most recent
//! [`RECENT`] transactions are remembered for this: the race lasts as long as a commit takes.

use std::collections::{HashSet, VecDeque};

/// Transactions remembered before a low watermark.
const RECENT: usize = 65_536;

/// A chunk waiting for its watermarks.
#[derive(Debug)]
struct Waiting {
    /// The watermarks' id.
    id: String,
    /// Its table's schema.
    schema: String,
    /// Its table's name.
    table: String,
    /// Transactions the chunk's snapshot did not see.
    invisible: Vec<u32>,
    /// Whether the low watermark was decoded (keys are collected from then on).
    open: bool,
    /// What the stream did to the table since.
    seen: Seen,
}

/// What the stream did to a chunk's table between its watermarks.
#[derive(Debug, Default)]
pub struct Seen {
    /// Keys (as the events' keys) changed.
    pub keys: HashSet<String>,
    /// Whether the table was truncated (every chunk row is then dropped).
    pub truncated: bool,
    /// Whether the chunk's snapshot missed a transaction decoded before the low watermark: the
    /// chunk must be read again.
    pub stale: bool,
}

/// The watermark bookkeeping of one stream.
#[derive(Debug, Default)]
pub struct Window {
    /// Xids of the most recent transactions decoded, oldest first.
    recent: VecDeque<u32>,
    /// The same, to look up.
    recent_set: HashSet<u32>,
    /// The chunk in progress, if any.
    waiting: Option<Waiting>,
}

impl Window {
    /// A transaction `xid` begins in the stream.
    pub fn begin(&mut self, xid: u32) {
        if self.recent.len() == RECENT
            && let Some(old) = self.recent.pop_front()
        {
            self.recent_set.remove(&old);
        }
        self.recent.push_back(xid);
        self.recent_set.insert(xid);
    }

    /// A chunk of `schema`.`table` was read with a snapshot that did not see `invisible`; its
    /// watermarks carry `id`.
    pub fn expect(&mut self, id: String, schema: &str, table: &str, invisible: Vec<u32>) {
        self.waiting = Some(Waiting {
            id,
            schema: schema.to_owned(),
            table: table.to_owned(),
            invisible,
            open: false,
            seen: Seen::default(),
        });
    }

    /// The low watermark `id` was decoded.
    pub fn low(&mut self, id: &str) {
        let Some(waiting) = self.waiting.as_mut().filter(|w| w.id == id) else {
            return;
        };
        waiting.open = true;
        waiting.seen.stale = waiting
            .invisible
            .iter()
            .any(|xid| self.recent_set.contains(xid));
    }

    /// A change of `schema`.`table` with `key` (empty for a truncate) was decoded.
    pub fn change(&mut self, schema: &str, table: &str, key: &str, truncate: bool) {
        let Some(waiting) = self.waiting.as_mut().filter(|w| w.open) else {
            return;
        };
        if waiting.schema != schema || waiting.table != table {
            return;
        }
        match truncate {
            true => waiting.seen.truncated = true,
            false => {
                waiting.seen.keys.insert(key.to_owned());
            }
        }
    }

    /// The high watermark `id` was decoded: what the stream did in between, if this is the
    /// chunk's (and its low watermark was seen).
    pub fn high(&mut self, id: &str) -> Option<Seen> {
        let waiting = self.waiting.take_if(|w| w.id == id)?;
        if !waiting.open {
            return Some(Seen {
                stale: true,
                ..Seen::default()
            });
        }
        Some(waiting.seen)
    }

    /// Whether a chunk waits for its watermarks.
    pub fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// The stream is gone: its chunk is read again on the next one.
    pub fn clear(&mut self) {
        self.recent.clear();
        self.recent_set.clear();
        self.waiting = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_changed_between_the_watermarks_are_collected_and_others_are_not() {
        let mut window = Window::default();
        window.expect("r:1".into(), "public", "t", vec![]);
        window.change("public", "t", "{\"id\":1}", false);
        window.low("r:1");
        window.change("public", "t", "{\"id\":2}", false);
        window.change("public", "other", "{\"id\":3}", false);
        let seen = window.high("r:1").unwrap();
        assert_eq!(seen.keys.len(), 1);
        assert!(seen.keys.contains("{\"id\":2}"));
        assert!(!seen.stale && !seen.truncated);
        assert!(!window.is_waiting());
    }

    #[test]
    fn a_transaction_decoded_before_the_low_watermark_that_the_snapshot_missed_makes_it_stale() {
        let mut window = Window::default();
        window.begin(41);
        window.begin(42);
        window.expect("r:2".into(), "public", "t", vec![42, 50]);
        window.low("r:2");
        assert!(window.high("r:2").unwrap().stale);
        window.expect("r:3".into(), "public", "t", vec![50]);
        window.low("r:3");
        assert!(!window.high("r:3").unwrap().stale);
    }

    #[test]
    fn a_foreign_or_unopened_watermark_is_not_taken_for_the_chunk() {
        let mut window = Window::default();
        window.expect("r:4".into(), "public", "t", vec![]);
        assert!(window.high("old:9").is_none());
        assert!(window.high("r:4").unwrap().stale);
    }
}
