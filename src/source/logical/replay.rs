//! Recognising what a re-opened replication stream repeats.
//!
//! A lost stream (PostgreSQL restarted, the connection dropped) is opened again at the slot's
//! confirmed position, which may lie well before what this process already handed out: the
//! server hears of confirmations only about once a second, and an immediate restart sets the
//! slot back to its last checkpoint. The source hands events out in stream order, so what it
//! handed out is a prefix of the stream, ending at a [`Mark`]. On the new stream everything up to
//! that mark is a repeat: acknowledged already, or still in a lane, where the relay settles it.
//! Handing it out again would only add duplicates.

use std::cmp::Ordering;

/// The end of a prefix of the stream: the position and id of its last event. Events of one
/// transaction share its position, so the id says where inside that transaction it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// The position (commit LSN) of the prefix's last event.
    pub position: u64,
    /// That event's id.
    pub id: String,
}

/// Where an event of a replay falls against a [`Mark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Inside the prefix, before its last event.
    Before,
    /// The prefix's last event itself.
    At,
    /// Past the prefix.
    After,
}

impl Mark {
    /// A mark at `id`, in the transaction at `position`.
    pub fn new(position: u64, id: &str) -> Self {
        Mark {
            position,
            id: id.to_string(),
        }
    }

    /// Where the event (`position`, `id`) falls. Valid for a replay's events in stream order up
    /// to the first that is [`Place::At`] or [`Place::After`]: inside the mark's transaction, an
    /// event other than the mark's is taken to come before it until the mark was seen. Should
    /// two events of that transaction share the mark's id (a rejected row's id may be empty),
    /// the prefix ends at the first: later ones are delivered again, never lost.
    pub fn place(&self, position: u64, id: &str) -> Place {
        match position.cmp(&self.position) {
            Ordering::Less => Place::Before,
            Ordering::Greater => Place::After,
            Ordering::Equal if id == self.id => Place::At,
            Ordering::Equal => Place::Before,
        }
    }
}

/// What this process handed out, and while a new stream repeats it, how far the repeat goes.
#[derive(Debug, Default)]
pub struct Replay {
    /// The last event (or rejected row) handed out, on any stream.
    handed: Option<Mark>,
    /// While a re-opened stream has not passed it: the end of what it repeats.
    until: Option<Mark>,
    /// Events of the current repeat skipped so far, for the log line once it is passed.
    skipped: u64,
}

impl Replay {
    /// The item (`position`, `id`) was handed out, after everything handed out before it.
    /// Called once per batch with its last item, which is all a prefix needs.
    pub fn handed_out(&mut self, position: u64, id: &str) {
        self.handed = Some(Mark::new(position, id));
    }

    /// The stream was lost: the next one repeats what was handed out so far.
    pub fn rewind(&mut self) {
        self.until.clone_from(&self.handed);
        self.skipped = 0;
    }

    /// Forgets everything: the slot was re-created, so nothing of the old one comes again.
    pub fn forget(&mut self) {
        *self = Replay::default();
    }

    /// Whether the decoded item (`position`, `id`) was handed out already. Call with every item
    /// of the stream, in stream order; once the repeat is passed this costs nothing.
    pub fn repeats(&mut self, position: u64, id: &str) -> bool {
        let Some(until) = &self.until else {
            return false;
        };
        let place = until.place(position, id);
        let repeat = place != Place::After;
        self.skipped += u64::from(repeat);
        if place != Place::Before {
            tracing::info!(
                skipped = self.skipped,
                "replication stream caught up with what was handed out before it was lost"
            );
            self.until = None;
        }
        repeat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_splits_its_own_transaction_at_its_id() {
        let mark = Mark::new(500, "x2");
        assert_eq!(mark.place(400, "zz"), Place::Before);
        assert_eq!(mark.place(500, "x1"), Place::Before);
        assert_eq!(mark.place(500, "x2"), Place::At);
        assert_eq!(mark.place(600, "x2"), Place::After);
    }

    #[test]
    fn nothing_repeats_before_the_stream_was_lost() {
        let mut replay = Replay::default();
        replay.handed_out(100, "a1");
        assert!(
            !replay.repeats(100, "a2"),
            "a later event of the same transaction"
        );
        assert!(!replay.repeats(200, "b1"));
    }

    #[test]
    fn after_a_rewind_everything_up_to_the_last_handed_out_item_repeats_and_no_more() {
        // Given a stream lost after handing out a1, a2 (position 100) and b1 (position 200)
        let mut replay = Replay::default();
        replay.handed_out(100, "a2");
        replay.handed_out(200, "b1");
        replay.rewind();

        // When the new stream replays from before them, then the repeat ends at b1
        assert!(replay.repeats(100, "a1"));
        assert!(replay.repeats(100, "a2"));
        assert!(replay.repeats(200, "b1"));
        assert!(!replay.repeats(200, "b2"), "b2 was never handed out");
        assert!(!replay.repeats(300, "c1"));
    }

    #[test]
    fn a_replay_that_starts_past_the_mark_repeats_nothing() {
        let mut replay = Replay::default();
        replay.handed_out(100, "a1");
        replay.rewind();
        assert!(!replay.repeats(300, "c1"));
        assert!(!replay.repeats(300, "c2"));
    }

    #[test]
    fn a_second_loss_repeats_up_to_what_the_second_stream_handed_out() {
        let mut replay = Replay::default();
        replay.handed_out(100, "a1");
        replay.rewind();
        assert!(replay.repeats(100, "a1"));
        assert!(!replay.repeats(200, "b1"));
        replay.handed_out(200, "b1");
        replay.rewind();
        assert!(replay.repeats(100, "a1"));
        assert!(replay.repeats(200, "b1"));
        assert!(!replay.repeats(300, "c1"));
    }

    #[test]
    fn a_forgotten_replay_repeats_nothing() {
        let mut replay = Replay::default();
        replay.handed_out(100, "a1");
        replay.forget();
        replay.rewind();
        assert!(!replay.repeats(100, "a1"));
    }
}
