//! After a restart, the replay from the slot repeats events the sink may already hold. The sink
//! stores each aggregate's events in stream order (one lane per aggregate), so what it holds of
//! an aggregate is a prefix of that aggregate's events in the stream: everything up to the last
//! one it reported. Those are dropped from the replay; everything after is delivered.
//!
//! The stream may be lost and replayed again before the source handed out anything past what
//! the sink held, so a [`Resume`] can be [rewound](Resume::rewind) to recognise the same events
//! on the next stream.

use super::replay::{Mark, Place};
use crate::event::{Event, Stored};
use std::collections::{HashMap, HashSet};

/// What the sink held at start-up, per aggregate, while the replay has not passed it.
#[derive(Debug)]
pub struct Resume {
    /// Per aggregate: the end of the prefix the sink holds.
    last: HashMap<String, Mark>,
    /// Aggregates whose mark the current stream has passed: nothing later of theirs is held.
    passed: HashSet<String>,
    /// The newest position the sink holds; past it the replay is new.
    end: u64,
}

impl Resume {
    /// From the sink's report, oldest record first; `None` if it holds nothing.
    pub fn new(stored: &[Stored]) -> Option<Self> {
        let end = stored.iter().map(|s| s.position.0).max()?;
        let last = stored
            .iter()
            .map(|s| (s.key.clone(), Mark::new(s.position.0, &s.id)))
            .collect();
        Some(Resume {
            last,
            passed: HashSet::new(),
            end,
        })
    }

    /// Whether the sink already holds `event`. Call with the replay's events in stream order.
    pub fn holds(&mut self, event: &Event) -> bool {
        if self.passed.contains(&event.key) {
            return false;
        }
        let Some(mark) = self.last.get(&event.key) else {
            return false;
        };
        match mark.place(event.position.0, &event.id) {
            Place::Before => true,
            Place::At => {
                self.passed.insert(event.key.clone());
                true
            }
            Place::After => false,
        }
    }

    /// The stream was lost: the next one replays the same events from the start.
    pub fn rewind(&mut self) {
        self.passed.clear();
    }

    /// Whether `position` is past everything the sink held.
    pub fn is_over(&self, position: u64) -> bool {
        position > self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Position;

    /// A stored record.
    fn stored(position: u64, id: &str, aggregate: &str) -> Stored {
        Stored {
            position: Position(position),
            id: id.into(),
            key: aggregate.into(),
        }
    }

    /// An event of the replay.
    fn event(position: u64, id: &str, aggregate: &str) -> Event {
        let mut event = crate::event::sample(None);
        event.position = Position(position);
        event.id = id.into();
        event.key = aggregate.into();
        event
    }

    #[test]
    fn each_aggregate_skips_up_to_its_own_last_stored_event() {
        // Lane of "a" got to position 300, lane of "b" only to 100 when the relay died.
        let mut resume = Resume::new(&[
            stored(100, "a1", "a"),
            stored(100, "b1", "b"),
            stored(300, "a3", "a"),
        ])
        .unwrap();
        assert!(resume.holds(&event(100, "a1", "a")));
        assert!(resume.holds(&event(100, "b1", "b")));
        assert!(
            !resume.holds(&event(200, "b2", "b")),
            "b2 never reached the sink"
        );
        assert!(resume.holds(&event(200, "a2", "a")));
        assert!(resume.holds(&event(300, "a3", "a")));
        assert!(!resume.holds(&event(300, "c1", "c")));
        assert!(!resume.is_over(300));
        assert!(resume.is_over(301));
    }

    #[test]
    fn inside_one_transaction_the_prefix_ends_at_the_stored_id() {
        let mut resume = Resume::new(&[stored(500, "x2", "x")]).unwrap();
        assert!(resume.holds(&event(500, "x1", "x")));
        assert!(resume.holds(&event(500, "x2", "x")));
        assert!(!resume.holds(&event(500, "x3", "x")));
    }

    #[test]
    fn a_rewound_resume_holds_the_same_events_on_the_next_stream() {
        // Given a stream lost after passing the stored x2
        let mut resume = Resume::new(&[stored(500, "x2", "x")]).unwrap();
        assert!(resume.holds(&event(500, "x1", "x")));
        assert!(resume.holds(&event(500, "x2", "x")));
        assert!(!resume.holds(&event(500, "x3", "x")));

        // When the next stream replays the same transaction, then x1 and x2 are held again
        resume.rewind();
        assert!(resume.holds(&event(500, "x1", "x")));
        assert!(resume.holds(&event(500, "x2", "x")));
        assert!(!resume.holds(&event(500, "x3", "x")));
    }

    #[test]
    fn an_empty_report_resumes_nothing() {
        assert!(Resume::new(&[]).is_none());
    }
}
