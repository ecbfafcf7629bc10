//! Which WAL position may be confirmed to the slot: the end of the last transaction whose events
//! have all been acknowledged (or rejected), and nothing past a transaction still in flight.
//!
//! Transactions are tracked in stream (commit) order. A transaction's events share its position
//! (the commit LSN, known from Begin), so acknowledgements are counted per position. A
//! transaction becomes confirmable once its Commit was seen and its count of outstanding events
//! is zero, and only after every transaction before it.

use std::collections::VecDeque;

/// One transaction (or heartbeat marker) of the stream.
#[derive(Debug)]
struct Txn {
    /// The commit LSN, which is also the position of its events.
    position: u64,
    /// The end of the commit record, once Commit was decoded; what the slot may confirm.
    end: Option<u64>,
    /// Events handed to the relay and not yet acknowledged or rejected.
    outstanding: usize,
}

/// Transactions decoded but not yet confirmable, oldest first.
#[derive(Debug, Default)]
pub struct Progress {
    /// Unconfirmed transactions, in commit order.
    txns: VecDeque<Txn>,
}

impl Progress {
    /// A transaction committing at `position` begins.
    pub fn begin(&mut self, position: u64) {
        self.txns.push_back(Txn {
            position,
            end: None,
            outstanding: 0,
        });
    }

    /// An event of the transaction at `position` was handed out.
    pub fn handed_out(&mut self, position: u64) {
        if let Some(txn) = self.txns.iter_mut().rev().find(|t| t.position == position) {
            txn.outstanding += 1;
        }
    }

    /// The transaction at `position` committed; its commit record ends at `end`.
    pub fn commit(&mut self, position: u64, end: u64) {
        if let Some(txn) = self.txns.iter_mut().rev().find(|t| t.position == position) {
            txn.end = Some(end);
        }
    }

    /// A point between transactions (a heartbeat message at `lsn`) that may be confirmed once
    /// everything before it is.
    pub fn marker(&mut self, lsn: u64) {
        self.txns.push_back(Txn {
            position: lsn,
            end: Some(lsn),
            outstanding: 0,
        });
    }

    /// One event of the transaction at `position` is durably in the sink (or was rejected).
    /// Unknown positions (from before a reconnect) are ignored.
    pub fn done(&mut self, position: u64) {
        if let Some(txn) = self.txns.iter_mut().find(|t| t.position == position) {
            txn.outstanding = txn.outstanding.saturating_sub(1);
        }
    }

    /// Drops every finished transaction at the front and returns the end of the last one, if
    /// any finished: the new position to confirm.
    pub fn confirmable(&mut self) -> Option<u64> {
        let mut confirm = None;
        while let Some(txn) = self.txns.front() {
            match txn.end {
                Some(end) if txn.outstanding == 0 => {
                    confirm = Some(end);
                    self.txns.pop_front();
                }
                _ => break,
            }
        }
        confirm
    }

    /// Forgets everything, after the stream was re-opened from the slot's confirmed position.
    pub fn reset(&mut self) {
        self.txns.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_confirmed_before_commit_even_if_every_chunk_was_acked() {
        let mut progress = Progress::default();
        progress.begin(100);
        progress.handed_out(100);
        progress.handed_out(100);
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
        progress.handed_out(100);
        progress.commit(100, 120);
        progress.begin(200);
        progress.commit(200, 220);
        progress.marker(300);
        assert_eq!(progress.confirmable(), None);
        progress.done(100);
        assert_eq!(progress.confirmable(), Some(300));
    }

    #[test]
    fn heartbeat_alone_confirms_at_once_and_unknown_acks_are_ignored() {
        let mut progress = Progress::default();
        progress.done(42);
        progress.marker(500);
        assert_eq!(progress.confirmable(), Some(500));
    }
}
