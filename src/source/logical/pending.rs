//! What was decoded and not yet handed out, in stream order.
//!
//! Events and rejected rows wait in one queue and leave it in the order they were decoded, so
//! what the source handed out is always a prefix of the stream: after a lost stream, one
//! [`Mark`](super::replay::Mark) says what the next one repeats.

use super::progress::Progress;
use super::replay::Replay;
use crate::event::{Event, Rejected};
use crate::source::Batch;
use std::collections::VecDeque;

/// A decoded insert or event message.
#[derive(Debug)]
pub enum Decoded {
    /// An event to deliver.
    Event(Event),
    /// A row that cannot become one.
    Rejected(Rejected),
}

impl Decoded {
    /// Its position in the stream (its transaction's commit LSN).
    pub fn position(&self) -> u64 {
        match self {
            Decoded::Event(event) => event.position.0,
            Decoded::Rejected(rejected) => rejected.position.0,
        }
    }

    /// Its id (the event's, or the rejected row's as text): what tells items of one
    /// transaction apart.
    pub fn id(&self) -> &str {
        match self {
            Decoded::Event(event) => &event.id,
            Decoded::Rejected(rejected) => &rejected.id,
        }
    }
}

/// Decoded items waiting to be handed out, oldest first.
#[derive(Debug, Default)]
pub struct Pending {
    /// The items, in stream order.
    items: VecDeque<Decoded>,
    /// How many of them are events (a batch is sized by events).
    events: usize,
    /// Bytes of the events' variable-size content (a batch is also sized by bytes).
    bytes: usize,
}

impl Pending {
    /// Queues an item after every other.
    pub fn push(&mut self, item: Decoded) {
        if let Decoded::Event(event) = &item {
            self.events += 1;
            self.bytes += event.content_len();
        }
        self.items.push_back(item);
    }

    /// Events waiting.
    pub fn events(&self) -> usize {
        self.events
    }

    /// Bytes of the events waiting (see [`Event::content_len`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Drops everything: the stream it came from is gone.
    pub fn clear(&mut self) {
        self.items.clear();
        self.events = 0;
        self.bytes = 0;
    }

    /// Hands out the oldest items: up to `max_events` events holding up to `max_bytes` bytes
    /// (at least one event), and the rejected rows among and right after them. Each is counted
    /// as handed out in `progress`, and the last one is recorded in `replay`.
    pub fn take(
        &mut self,
        max_events: usize,
        max_bytes: usize,
        progress: &mut Progress,
        replay: &mut Replay,
    ) -> Batch {
        let mut batch = Batch::default();
        let mut last_is_event = None;
        let mut bytes = 0;
        while let Some(item) = self.items.front() {
            if let Decoded::Event(event) = item {
                let full = batch.events.len() == max_events
                    || (!batch.events.is_empty() && bytes + event.content_len() > max_bytes);
                if full {
                    break;
                }
                bytes += event.content_len();
            }
            let is_event = matches!(item, Decoded::Event(_));
            let Some(item) = self.items.pop_front() else {
                break;
            };
            progress.handed_out(item.position());
            last_is_event = Some(is_event);
            match item {
                Decoded::Event(event) => {
                    self.events -= 1;
                    self.bytes -= event.content_len();
                    batch.events.push(event);
                }
                Decoded::Rejected(rejected) => batch.rejected.push(rejected),
            }
        }
        let last = match last_is_event {
            Some(true) => batch.events.last().map(|e| (e.position.0, e.id.as_str())),
            Some(false) => batch.rejected.last().map(|r| (r.position.0, r.id.as_str())),
            None => None,
        };
        if let Some((position, id)) = last {
            replay.handed_out(position, id);
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Position;

    /// An event at `position` with `id`.
    fn event(position: u64, id: &str) -> Decoded {
        let mut event = crate::event::sample(None);
        event.position = Position(position);
        event.id = id.into();
        Decoded::Event(event)
    }

    /// A rejected row at `position` with `id`.
    fn rejected(position: u64, id: &str) -> Decoded {
        Decoded::Rejected(Rejected {
            position: Position(position),
            id: id.into(),
            reason: "no aggregate id".into(),
        })
    }

    #[test]
    fn items_leave_in_stream_order_and_the_last_one_handed_out_is_the_mark() {
        // Given two events, a rejected row, and two more events
        let mut pending = Pending::default();
        let mut progress = Progress::default();
        let mut replay = Replay::default();
        progress.begin(100);
        for item in [
            event(100, "e1"),
            event(100, "e2"),
            rejected(100, "r1"),
            event(100, "e3"),
            event(100, "e4"),
        ] {
            progress.decoded(item.position());
            pending.push(item);
        }
        assert_eq!(pending.events(), 4);

        // When a batch of two events is taken, then the rejected row right after them goes too,
        // and nothing later
        let batch = pending.take(2, usize::MAX, &mut progress, &mut replay);
        let ids: Vec<_> = batch.events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["e1", "e2"]);
        assert_eq!(batch.rejected.len(), 1);
        assert_eq!(pending.events(), 2);

        // Then a lost stream repeats up to the rejected row, and e3 is new
        replay.rewind();
        assert!(replay.repeats(100, "e1"));
        assert!(replay.repeats(100, "r1"));
        assert!(!replay.repeats(100, "e3"));
        let rest = pending.take(10, usize::MAX, &mut progress, &mut replay);
        assert_eq!(rest.events.len(), 2);
        assert!(pending.is_empty());
    }
}
