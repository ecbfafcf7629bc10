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
//! [`RECENT`] transactions are remembered for this, each with its place in the stream, so the
//! check can be made once the chunk's snapshot is known, which may be after the stream passed
//! the low watermark (the chunk is read in a task of its own). The race lasts as long as a
//! commit takes.

use std::collections::{HashMap, HashSet, VecDeque};

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
    /// What the stream did to the table since the low watermark; its `low_at` says whether
    /// that was decoded (keys are collected from then on).
    seen: Seen,
}

/// What the stream did to a chunk's table between its watermarks.
#[derive(Debug, Default)]
pub struct Seen {
    /// Keys (as the events' keys) changed.
    pub keys: HashSet<String>,
    /// Whether the table was truncated (every chunk row is then dropped).
    pub truncated: bool,
    /// Transactions the stream had begun at the low watermark; `None` if it never decoded
    /// it (the chunk must then be read again). See [`Window::missed`].
    pub low_at: Option<u64>,
}

/// The watermark bookkeeping of one stream.
#[derive(Debug, Default)]
pub struct Window {
    /// Xids of the most recent transactions decoded and their places, oldest first.
    recent: VecDeque<(u32, u64)>,
    /// Each xid's place in the stream (the transactions begun before it), to look up.
    recent_at: HashMap<u32, u64>,
    /// Transactions begun on this stream.
    begun: u64,
    /// The chunk in progress, if any.
    waiting: Option<Waiting>,
}

impl Window {
    /// A transaction `xid` begins in the stream.
    pub fn begin(&mut self, xid: u32) {
        if self.recent.len() == RECENT
            && let Some((old, at)) = self.recent.pop_front()
            && self.recent_at.get(&old) == Some(&at)
        {
            self.recent_at.remove(&old);
        }
        self.recent.push_back((xid, self.begun));
        self.recent_at.insert(xid, self.begun);
        self.begun += 1;
    }

    /// A chunk of `schema`.`table` is being read; its watermarks carry `id`.
    pub fn expect(&mut self, id: String, schema: &str, table: &str) {
        self.waiting = Some(Waiting {
            id,
            schema: schema.to_owned(),
            table: table.to_owned(),
            seen: Seen::default(),
        });
    }

    /// The low watermark `id` was decoded.
    pub fn low(&mut self, id: &str) {
        if let Some(waiting) = self.waiting.as_mut().filter(|w| w.id == id) {
            waiting.seen.low_at = Some(self.begun);
        }
    }

    /// Whether a chunk whose snapshot did not see `invisible`, and whose low watermark the
    /// stream decoded after `low_at` transactions ([`Seen::low_at`]), missed a transaction the
    /// stream decoded before it: then the chunk must be read again.
    pub fn missed(&self, invisible: &[u32], low_at: Option<u64>) -> bool {
        let Some(low_at) = low_at else {
            return true;
        };
        invisible
            .iter()
            .any(|xid| self.recent_at.get(xid).is_some_and(|&at| at < low_at))
    }

    /// A change of `schema`.`table` with `key` (empty for a truncate) was decoded.
    pub fn change(&mut self, schema: &str, table: &str, key: &str, truncate: bool) {
        let Some(waiting) = self.waiting.as_mut().filter(|w| w.seen.low_at.is_some()) else {
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
        Some(waiting.seen)
    }

    /// Whether a chunk waits for its watermarks.
    pub fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// The chunk in progress is given up (its read failed); the transactions are kept.
    pub fn abandon(&mut self) {
        self.waiting = None;
    }

    /// The stream is gone: its chunk is read again on the next one.
    pub fn clear(&mut self) {
        self.recent.clear();
        self.recent_at.clear();
        self.begun = 0;
        self.waiting = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_changed_between_the_watermarks_are_collected_and_others_are_not() {
        let mut window = Window::default();
        window.expect("r:1".into(), "public", "t");
        window.change("public", "t", "{\"id\":1}", false);
        window.low("r:1");
        window.change("public", "t", "{\"id\":2}", false);
        window.change("public", "other", "{\"id\":3}", false);
        let seen = window.high("r:1").unwrap();
        assert_eq!(seen.keys.len(), 1);
        assert!(seen.keys.contains("{\"id\":2}"));
        assert!(!seen.truncated);
        assert!(!window.missed(&[], seen.low_at));
        assert!(!window.is_waiting());
    }

    #[test]
    fn a_transaction_decoded_before_the_low_watermark_that_the_snapshot_missed_makes_it_stale() {
        let mut window = Window::default();
        window.begin(41);
        window.begin(42);
        window.expect("r:2".into(), "public", "t");
        window.low("r:2");
        // Decoded after the low watermark: the chunk's rows are dropped for its keys instead.
        window.begin(50);
        let seen = window.high("r:2").unwrap();
        // The snapshot, known only now, did not see 42 (decoded before the low watermark).
        assert!(window.missed(&[42, 50], seen.low_at));
        assert!(!window.missed(&[50, 77], seen.low_at));
    }

    #[test]
    fn a_foreign_or_unopened_watermark_is_not_taken_for_the_chunk() {
        let mut window = Window::default();
        window.expect("r:4".into(), "public", "t");
        assert!(window.high("old:9").is_none());
        let seen = window.high("r:4").unwrap();
        assert!(window.missed(&[], seen.low_at));
    }

    #[test]
    fn an_xid_pushed_out_of_the_remembered_ones_is_forgotten() {
        let mut window = Window::default();
        window.begin(7);
        for xid in 1_000..1_000 + RECENT as u32 {
            window.begin(xid);
        }
        window.expect("r:5".into(), "public", "t");
        window.low("r:5");
        let seen = window.high("r:5").unwrap();
        assert!(!window.missed(&[7], seen.low_at));
        assert!(window.missed(&[1_000 + RECENT as u32 - 1], seen.low_at));
    }
}
