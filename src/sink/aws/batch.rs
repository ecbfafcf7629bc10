//! Sending a batch of events through `SendMessageBatch` or `PublishBatch`, keeping per-key
//! order.
//!
//! Entries of one batch call are not stored in order on a standard queue, and AWS may fail
//! one entry and store a later one of the same key (FIFO queues keep order within a message
//! group, but a failed entry does not stop later ones). So a batch goes in rounds, each
//! holding the next event of every key that has not stopped: no call ever carries two events
//! of one key, an event is sent only after the one before it of its key was stored, and once
//! an event of a key is not delivered, the later ones of that key are reported `Deferred`
//! without being sent. Within a round, events are grouped by queue or topic and sent in
//! calls of at most 10 entries and 256 KiB, one call at a time.

use super::message::{MAX_MESSAGE_BYTES, Message, message};
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::sink::Outcome;
use crate::sink::template::Template;
use std::collections::{HashMap, HashSet};
use std::future::Future;

/// Most entries AWS takes in one batch call.
pub const MAX_ENTRIES: usize = 10;

/// One batch API: `SendMessageBatch` of SQS or `PublishBatch` of SNS.
pub trait BatchApi: Send {
    /// The sink's name for logs and metrics (`sqs`, `sns`).
    const NAME: &'static str;

    /// Whether AWS answers at all (for readiness): a cheap call on a known queue or topic,
    /// else a listing.
    fn reach(&self) -> impl Future<Output = bool> + Send;

    /// Checks a rendered queue URL or topic ARN; an error is the reason to refuse the event.
    fn check_target(&self, target: &str) -> Result<(), String>;

    /// Sends `messages` (at most [`MAX_ENTRIES`], all to `target`, entry ids their indexes)
    /// in one call: one outcome per message in order, or an error when the call failed in a
    /// way that fails the batch (network, 5xx, credentials).
    fn send(
        &mut self,
        target: &str,
        messages: &[Message<'_>],
    ) -> impl Future<Output = Result<Vec<Outcome>>> + Send;
}

/// Publishes `events` to the queues or topics `template` names, through `api`; one outcome
/// per event, in order.
pub async fn publish<A: BatchApi>(
    api: &mut A,
    template: &Template,
    events: &[Event],
) -> Result<Vec<Outcome>> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; events.len()];
    let mut stopped: HashSet<&str> = HashSet::new();
    let mut pending: Vec<usize> = (0..events.len()).collect();
    while !pending.is_empty() {
        let mut round: Vec<(usize, String, Message<'_>)> = Vec::new();
        let mut later = Vec::new();
        let mut keys: HashSet<&str> = HashSet::new();
        for index in pending {
            let event = &events[index];
            let key = event.key.as_str();
            if stopped.contains(key) {
                outcomes[index] = Some(Outcome::Deferred);
            } else if !keys.insert(key) {
                later.push(index);
            } else {
                match prepare(api, template, event) {
                    Ok((target, message)) => round.push((index, target, message)),
                    Err(reason) => {
                        stopped.insert(key);
                        outcomes[index] = Some(Outcome::Refused(reason));
                    }
                }
            }
        }
        for (target, call) in calls(round) {
            let (indexes, messages): (Vec<usize>, Vec<Message<'_>>) = call.into_iter().unzip();
            let answers = api.send(&target, &messages).await?;
            if answers.len() != indexes.len() {
                return Err(Error::new(ErrorKind::Internal, "batch answered short"));
            }
            for (index, outcome) in indexes.into_iter().zip(answers) {
                if outcome != Outcome::Delivered {
                    stopped.insert(events[index].key.as_str());
                }
                outcomes[index] = Some(outcome);
            }
        }
        pending = later;
    }
    outcomes
        .into_iter()
        .map(|outcome| {
            outcome.ok_or_else(|| Error::new(ErrorKind::Internal, "event left unanswered"))
        })
        .collect()
}

/// The queue or topic and the message of `event`; an error refuses it, naming why.
fn prepare<'e, A: BatchApi>(
    api: &A,
    template: &Template,
    event: &'e Event,
) -> Result<(String, Message<'e>), String> {
    let target = template.render(event);
    api.check_target(&target)
        .map_err(|reason| format!("queue or topic {target:?} from the template: {reason}"))?;
    let message = message(event, target.ends_with(".fifo"))?;
    Ok((target, message))
}

/// One call being filled: its queue or topic, its entries (event index and message), and their
/// bytes together.
type Call<'a> = (String, Vec<(usize, Message<'a>)>, usize);

/// A round's messages grouped by queue or topic (in the order each first appears) and cut
/// into calls of at most [`MAX_ENTRIES`] entries and [`MAX_MESSAGE_BYTES`] together.
fn calls(round: Vec<(usize, String, Message<'_>)>) -> Vec<(String, Vec<(usize, Message<'_>)>)> {
    let mut calls: Vec<Call<'_>> = Vec::new();
    // The call each target is filling.
    let mut open: HashMap<String, usize> = HashMap::new();
    for (index, target, message) in round {
        let size = message.size;
        let fits = open.get(&target).is_some_and(|&call| {
            let (_, entries, bytes) = &calls[call];
            entries.len() < MAX_ENTRIES && bytes + size <= MAX_MESSAGE_BYTES
        });
        if fits {
            let call = &mut calls[open[&target]];
            call.1.push((index, message));
            call.2 += size;
        } else {
            open.insert(target.clone(), calls.len());
            calls.push((target, vec![(index, message)], size));
        }
    }
    calls
        .into_iter()
        .map(|(target, entries, _)| (target, entries))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::sample;
    use crate::sink::template::ALL_FIELDS;

    /// A batch API that records its calls and fails the entries whose body names `fail`.
    #[derive(Default)]
    struct Recorder {
        /// (target, the seq of each entry) of each call.
        calls: Vec<(String, Vec<String>)>,
    }

    impl BatchApi for Recorder {
        const NAME: &'static str = "recorder";

        async fn reach(&self) -> bool {
            true
        }

        fn check_target(&self, target: &str) -> Result<(), String> {
            if target.contains("bad") {
                return Err("is bad".into());
            }
            Ok(())
        }

        async fn send(&mut self, target: &str, messages: &[Message<'_>]) -> Result<Vec<Outcome>> {
            let bodies = messages.iter().map(|m| m.body.to_string()).collect();
            self.calls.push((target.to_string(), bodies));
            Ok(messages
                .iter()
                .map(|m| {
                    if m.body.contains("fail") {
                        Outcome::Retry("failed".into())
                    } else {
                        Outcome::Delivered
                    }
                })
                .collect())
        }
    }

    /// An event of key `key`, type `kind`, with `body` as its payload.
    fn event(key: &str, kind: &str, body: &str) -> Event {
        let mut event = sample(None);
        event.key = key.into();
        event.event_type = kind.into();
        event.payload = serde_json::value::RawValue::from_string(format!("\"{body}\"")).unwrap();
        event
    }

    #[tokio::test]
    async fn no_call_carries_two_events_of_a_key_and_a_failure_defers_the_rest_of_its_key() {
        let template = Template::parse("q/{type}", ALL_FIELDS).unwrap();
        let events = [
            event("a", "T", "a1 fail"),
            event("b", "T", "b1"),
            event("a", "T", "a2"),
            event("b", "bad", "b2"),
            event("b", "T", "b3"),
            event("c", "T", "c1"),
            event("c", "U", "c2"),
        ];
        let mut api = Recorder::default();
        let outcomes = publish(&mut api, &template, &events).await.unwrap();
        assert!(matches!(outcomes[0], Outcome::Retry(_)));
        assert_eq!(outcomes[1], Outcome::Delivered);
        assert_eq!(outcomes[2], Outcome::Deferred);
        assert!(matches!(&outcomes[3], Outcome::Refused(r) if r.contains("\"q/bad\"")));
        assert_eq!(outcomes[4], Outcome::Deferred);
        assert_eq!(outcomes[5], Outcome::Delivered);
        assert_eq!(outcomes[6], Outcome::Delivered);
        let calls: Vec<(&str, Vec<&str>)> = api
            .calls
            .iter()
            .map(|(t, b)| (t.as_str(), b.iter().map(|s| s.trim_matches('"')).collect()))
            .collect();
        assert_eq!(
            calls,
            [("q/T", vec!["a1 fail", "b1", "c1"]), ("q/U", vec!["c2"]),]
        );
    }

    #[tokio::test]
    async fn calls_hold_at_most_ten_entries() {
        let template = Template::parse("q", ALL_FIELDS).unwrap();
        let events: Vec<Event> = (0..25).map(|k| event(&k.to_string(), "T", "x")).collect();
        let mut api = Recorder::default();
        publish(&mut api, &template, &events).await.unwrap();
        let sizes: Vec<usize> = api.calls.iter().map(|c| c.1.len()).collect();
        assert_eq!(sizes, [10, 10, 5]);
    }
}
