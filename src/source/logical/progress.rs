//! Which WAL position may be confirmed to the slot: the end of the last transaction whose events
//! have all been acknowledged (or rejected), and nothing past a transaction still in flight.
//!
//! Transactions are tracked in stream (commit) order. A transaction's events share its position
//! (the commit LSN, known from Begin), so events are counted per position: decoded and not yet
//! handed out (*pending*), then handed out and not yet settled (*outstanding*). A transaction
//! becomes confirmable once its Commit was seen and both counts are zero, and only after every
//! transaction before it.
//!
//! # Across a lost stream
//! The books outlive the stream. When it is lost, what was handed out stays outstanding (lanes
//! still hold it, and their acknowledgements still count) and only what was pending is dropped
//! ([`Progress::rewind`]). The re-opened stream replays from the slot's confirmed position, which
//! may be older than what was confirmed here: transactions before that are recognised as settled
//! ([`Progress::settled`]), and the others are found again by position, so nothing is counted
//! twice and no late acknowledgement confirms past an event that is not yet settled.

use std::collections::VecDeque;

/// One transaction (or heartbeat marker) of the stream.
#[derive(Debug)]
struct Txn {
    /// The commit LSN, which is also the position of its events.
    position: u64,
    /// The end of the commit record, once Commit was decoded; what the slot may confirm.
    end: Option<u64>,
    /// Events decoded and not yet handed to the relay.
    pending: usize,
    /// Events handed to the relay and not yet acknowledged or rejected.
    outstanding: usize,
}

/// Transactions decoded but not yet confirmable, oldest first.
#[derive(Debug, Default)]
pub struct Progress {
    /// Unconfirmed transactions, by position (which is commit order).
    txns: VecDeque<Txn>,
    /// The newest position confirmed to the slot by this process.
    confirmed: u64,
}

impl Progress {
    /// A transaction committing at `position` begins. A replayed one that is already known, or
    /// settled, is left as it is.
    pub fn begin(&mut self, position: u64) {
        self.track(position, None);
    }

    /// An event of the transaction at `position` was decoded, to be handed out.
    pub fn decoded(&mut self, position: u64) {
        if let Some(txn) = self.find(position) {
            txn.pending += 1;
        }
    }

    /// A decoded event of the transaction at `position` was handed out.
    pub fn handed_out(&mut self, position: u64) {
        if let Some(txn) = self.find(position) {
            txn.pending = txn.pending.saturating_sub(1);
            txn.outstanding += 1;
        }
    }

    /// The transaction at `position` committed; its commit record ends at `end`.
    pub fn commit(&mut self, position: u64, end: u64) {
        if let Some(txn) = self.find(position) {
            txn.end = Some(end);
        }
    }

    /// A point between transactions (a heartbeat message at `lsn`) that may be confirmed once
    /// everything before it is.
    pub fn marker(&mut self, lsn: u64) {
        self.track(lsn, Some(lsn));
    }

    /// One event of the transaction at `position` is durably in the sink (or was rejected).
    /// Unknown positions (from a slot that was re-created since) are ignored.
    pub fn done(&mut self, position: u64) {
        if let Some(txn) = self.find(position) {
            txn.outstanding = txn.outstanding.saturating_sub(1);
        }
    }

    /// Drops every finished transaction at the front and returns the end of the last one, if
    /// any finished: the new position to confirm.
    pub fn confirmable(&mut self) -> Option<u64> {
        let mut confirm = None;
        while let Some(txn) = self.txns.front() {
            match txn.end {
                Some(end) if txn.pending == 0 && txn.outstanding == 0 => {
                    confirm = Some(end);
                    self.txns.pop_front();
                }
                _ => break,
            }
        }
        if let Some(end) = confirm {
            self.confirmed = self.confirmed.max(end);
        }
        confirm
    }

    /// Whether the transaction at `position` was confirmed already: every event of it is
    /// settled. Its commit record starts before the confirmed position (which is the end of a
    /// commit record or a marker); the next transaction's may start exactly there.
    pub fn settled(&self, position: u64) -> bool {
        position < self.confirmed
    }

    /// The stream was lost, and with it every pending event: the next stream decodes them
    /// again. The transaction of the first pending event stays, with what it had handed out,
    /// but is open again (its Commit comes again after the rest of it); nothing after it was
    /// handed out (events are handed out in stream order), so nothing after it is kept.
    pub fn rewind(&mut self) {
        let Some(first) = self.txns.iter().position(|txn| txn.pending > 0) else {
            return;
        };
        debug_assert!(self.txns.iter().skip(first + 1).all(|t| t.outstanding == 0));
        self.txns.truncate(first + 1);
        if let Some(txn) = self.txns.back_mut() {
            txn.pending = 0;
            txn.end = None;
        }
    }

    /// Forgets every transaction: the slot was re-created, so none of them comes again, and
    /// nothing from before the new slot holds its confirmed position back.
    pub fn forget(&mut self) {
        self.txns.clear();
    }

    /// Starts tracking the transaction or marker at `position`, in order, unless it is known
    /// or settled already (a replay).
    fn track(&mut self, position: u64, end: Option<u64>) {
        if self.settled(position) {
            return;
        }
        if let Err(index) = self
            .txns
            .binary_search_by_key(&position, |txn| txn.position)
        {
            let txn = Txn {
                position,
                end,
                pending: 0,
                outstanding: 0,
            };
            self.txns.insert(index, txn);
        }
    }

    /// The tracked transaction at `position`.
    fn find(&mut self, position: u64) -> Option<&mut Txn> {
        let index = self
            .txns
            .binary_search_by_key(&position, |txn| txn.position)
            .ok()?;
        self.txns.get_mut(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes and hands out one event of the transaction at `position`.
    fn hand_out(progress: &mut Progress, position: u64) {
        progress.decoded(position);
        progress.handed_out(position);
    }

    #[test]
    fn nothing_is_confirmed_before_commit_even_if_every_chunk_was_acked() {
        let mut progress = Progress::default();
        progress.begin(100);
        hand_out(&mut progress, 100);
        hand_out(&mut progress, 100);
        progress.done(100);
        progress.done(100);
        assert_eq!(progress.confirmable(), None);
        progress.commit(100, 120);
        assert_eq!(progress.confirmable(), Some(120));
        assert_eq!(progress.confirmable(), None);
    }

    #[test]
    fn a_later_transaction_waits_for_an_earlier_one() {
        let mut progress = Progress::default();
        progress.begin(100);
        hand_out(&mut progress, 100);
        progress.commit(100, 120);
        progress.begin(200);
        progress.commit(200, 220);
        progress.marker(300);
        assert_eq!(progress.confirmable(), None);
        progress.done(100);
        assert_eq!(progress.confirmable(), Some(300));
    }

    #[test]
    fn a_decoded_event_not_yet_handed_out_holds_its_transaction_back() {
        let mut progress = Progress::default();
        progress.begin(100);
        progress.decoded(100);
        progress.commit(100, 120);
        assert_eq!(progress.confirmable(), None);
        progress.handed_out(100);
        assert_eq!(progress.confirmable(), None);
        progress.done(100);
        assert_eq!(progress.confirmable(), Some(120));
    }

    #[test]
    fn heartbeat_alone_confirms_at_once_and_unknown_acks_are_ignored() {
        let mut progress = Progress::default();
        progress.done(42);
        progress.marker(500);
        assert_eq!(progress.confirmable(), Some(500));
    }

    #[test]
    fn late_acks_after_a_lost_stream_do_not_confirm_past_what_the_replay_decodes_again() {
        // Given a transaction of three events, two handed out and one pending, when the stream
        // is lost
        let mut progress = Progress::default();
        progress.begin(100);
        hand_out(&mut progress, 100);
        hand_out(&mut progress, 100);
        progress.decoded(100);
        progress.commit(100, 120);
        progress.rewind();

        // When the lanes acknowledge the two they hold, then the slot stays (the third is not
        // in the sink)
        progress.done(100);
        progress.done(100);
        assert_eq!(progress.confirmable(), None);

        // When the new stream replays the transaction (the source skips the two) and the third
        // is delivered, then it is confirmed
        progress.begin(100);
        progress.decoded(100);
        progress.commit(100, 120);
        assert_eq!(progress.confirmable(), None);
        progress.handed_out(100);
        progress.done(100);
        assert_eq!(progress.confirmable(), Some(120));
    }

    #[test]
    fn what_lanes_still_hold_after_a_lost_stream_is_counted_once() {
        // Given a transaction handed out whole and still in a lane when the stream is lost,
        // and a later one that was only decoded
        let mut progress = Progress::default();
        progress.begin(100);
        hand_out(&mut progress, 100);
        progress.commit(100, 120);
        progress.begin(200);
        progress.decoded(200);
        progress.commit(200, 220);
        progress.marker(250);
        progress.rewind();

        // When the new stream replays both (the source skips the first one's event)
        progress.begin(100);
        progress.commit(100, 120);
        progress.begin(200);
        progress.decoded(200);
        progress.commit(200, 220);
        progress.marker(250);

        // Then the lane's acknowledgement confirms the first, and the second waits for its own
        progress.done(100);
        assert_eq!(progress.confirmable(), Some(120));
        progress.handed_out(200);
        assert_eq!(progress.confirmable(), None);
        progress.done(200);
        assert_eq!(progress.confirmable(), Some(250));
    }

    #[test]
    fn a_replayed_transaction_before_the_confirmed_position_is_settled() {
        // Given a transaction confirmed up to the end of its commit record (120)
        let mut progress = Progress::default();
        progress.begin(100);
        hand_out(&mut progress, 100);
        progress.commit(100, 120);
        progress.done(100);
        assert_eq!(progress.confirmable(), Some(120));
        progress.rewind();

        // When the replay repeats it, then it is settled and not tracked again
        assert!(progress.settled(100));
        progress.begin(100);
        progress.decoded(100);
        progress.commit(100, 120);
        progress.marker(110);
        assert_eq!(progress.confirmable(), None);

        // but a commit record that starts right where that one ended is new
        assert!(!progress.settled(120));
        progress.begin(120);
        hand_out(&mut progress, 120);
        progress.commit(120, 140);
        assert_eq!(progress.confirmable(), None);
        progress.done(120);
        assert_eq!(progress.confirmable(), Some(140));
    }

    #[test]
    fn a_forgotten_transaction_no_longer_holds_the_slot_back() {
        let mut progress = Progress::default();
        progress.begin(100);
        hand_out(&mut progress, 100);
        progress.forget();
        progress.marker(900);
        assert_eq!(progress.confirmable(), Some(900));
        progress.done(100);
    }
}
