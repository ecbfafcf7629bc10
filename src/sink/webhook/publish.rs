//! One `publish` call: events go out in order, one request at a time (one event each, or with
//! `batch` a JSON array of up to `batch_max` consecutive events), and every event gets its
//! [`Outcome`].
//!
//! Order per key: once an event of a key is not delivered, no later event of that key in the
//! call is sent (`Deferred`). A batch refused with a status other than 408/429/5xx is sent
//! again event by event, so only the events the receiver refuses become dead letters. While a
//! `Retry-After` runs (shared by every lane), nothing is sent: the events push back (`Busy`).
//! When no answer comes (no connection, a timeout) before anything was answered in this call,
//! the call fails as a whole (the receiver is away: retried after the relay's backoff, no
//! attempt counted); after something was answered, the rest of the call pushes back instead,
//! so what was delivered is not sent again.

use super::WebhookSink;
use super::answer::{Verdict, judge};
use super::body::write_event;
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::sink::Outcome;
use bytes::Bytes;
use http::Uri;
use std::collections::HashSet;
use std::time::{Instant, SystemTime};

/// One event ready to send: its URL and its body (an element of a batch's array).
struct Item {
    /// Its index in the call.
    index: usize,
    /// Where it goes.
    uri: Uri,
    /// Its JSON (in binary mode: the payload).
    body: Vec<u8>,
}

/// The state of one call.
struct Call<'a> {
    /// The events.
    events: &'a [Event],
    /// One outcome per event, once known.
    outcomes: Vec<Option<Outcome>>,
    /// Keys with an event not delivered: their later events are deferred.
    stopped: HashSet<&'a str>,
    /// Whether the receiver answered any request of this call.
    answered: bool,
    /// Why the receiver could not be reached, once it could not.
    unreachable: Option<String>,
}

impl<'a> Call<'a> {
    /// Records `outcome` for event `index`; anything but delivered stops its key.
    fn settle(&mut self, index: usize, outcome: Outcome) {
        if outcome != Outcome::Delivered {
            self.stopped.insert(self.events[index].key.as_str());
        }
        self.outcomes[index] = Some(outcome);
    }

    /// Whether event `index`'s key already has an undelivered event.
    fn stopped(&self, index: usize) -> bool {
        self.stopped.contains(self.events[index].key.as_str())
    }

    /// Pushes back every event of `items`: the first of each key busy, later ones deferred.
    fn push_back(&mut self, items: &[Item], reason: &str) {
        for item in items {
            let outcome = if self.stopped(item.index) {
                Outcome::Deferred
            } else {
                Outcome::Busy(reason.to_string())
            };
            self.settle(item.index, outcome);
        }
    }
}

impl WebhookSink {
    /// Publishes `events` as the module's doc says.
    pub(super) async fn publish_call(&mut self, events: &[Event]) -> Result<Vec<Outcome>> {
        let mut call = Call {
            events,
            outcomes: vec![None; events.len()],
            stopped: HashSet::new(),
            answered: false,
            unreachable: None,
        };
        let limit = if self.config.batch {
            self.config.batch_max
        } else {
            1
        };
        let max = self.config.max_body_bytes;
        let mut chunk: Vec<Item> = Vec::new();
        let mut size = 0;
        for (index, event) in events.iter().enumerate() {
            if call.stopped(index) {
                call.settle(index, Outcome::Deferred);
                continue;
            }
            let item = match self.prepare(index, event) {
                Ok(item) => item,
                Err(reason) => {
                    // An earlier event of its key still waiting in the batch goes first, so
                    // a refusal never lands before it is settled.
                    if chunk.iter().any(|held| events[held.index].key == event.key) {
                        self.flush(&mut call, std::mem::take(&mut chunk)).await?;
                        size = 0;
                    }
                    let outcome = if call.stopped(index) {
                        Outcome::Deferred
                    } else {
                        Outcome::Refused(reason)
                    };
                    call.settle(index, outcome);
                    continue;
                }
            };
            let full = chunk.len() >= limit
                || chunk.first().is_some_and(|first| first.uri != item.uri)
                || size + item.body.len() + 2 > max;
            if full && !chunk.is_empty() {
                self.flush(&mut call, std::mem::take(&mut chunk)).await?;
                size = 0;
                if call.stopped(index) {
                    call.settle(index, Outcome::Deferred);
                    continue;
                }
            }
            size += item.body.len() + 1;
            chunk.push(item);
        }
        if !chunk.is_empty() {
            self.flush(&mut call, chunk).await?;
        }
        call.outcomes
            .into_iter()
            .map(|outcome| {
                outcome.ok_or_else(|| Error::new(ErrorKind::Internal, "event left unanswered"))
            })
            .collect()
    }

    /// `event`'s URL and body, or why it is refused (an invalid URL, a body over the limit).
    fn prepare(&self, index: usize, event: &Event) -> std::result::Result<Item, String> {
        let uri = self.url.render(event)?;
        let mut body = Vec::with_capacity(256 + event.payload.get().len());
        write_event(
            event,
            self.config.cloudevents,
            &self.config.cloudevents_source,
            &mut body,
        )?;
        let wrapped = body.len() + if self.config.batch { 2 } else { 0 };
        if wrapped > self.config.max_body_bytes {
            return Err(format!(
                "the request body would be {wrapped} bytes, over sink.webhook.max_body_bytes ({})",
                self.config.max_body_bytes
            ));
        }
        Ok(Item { index, uri, body })
    }

    /// Sends `items` as one request and settles them; a batch refused for good is sent again
    /// event by event. Fails the call when the receiver cannot be reached before it answered
    /// anything in this call.
    async fn flush(&mut self, call: &mut Call<'_>, items: Vec<Item>) -> Result<()> {
        match self.exchange(call, &items).await? {
            Verdict::Delivered => {
                for item in &items {
                    call.settle(item.index, Outcome::Delivered);
                }
            }
            Verdict::Busy(reason, _) => call.push_back(&items, &reason),
            Verdict::Refused(reason) if items.len() == 1 => {
                call.settle(items[0].index, Outcome::Refused(reason));
            }
            Verdict::Refused(reason) => {
                tracing::warn!(
                    events = items.len(),
                    reason,
                    "webhook batch refused; sending its events one by one"
                );
                for item in items {
                    if call.stopped(item.index) {
                        call.settle(item.index, Outcome::Deferred);
                        continue;
                    }
                    let index = item.index;
                    let single = [item];
                    match self.exchange(call, &single).await? {
                        Verdict::Delivered => call.settle(index, Outcome::Delivered),
                        Verdict::Busy(reason, _) => call.push_back(&single, &reason),
                        Verdict::Refused(reason) => call.settle(index, Outcome::Refused(reason)),
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends `items` as one request (unless a `Retry-After` runs or the receiver was found
    /// unreachable in this call: then the verdict is busy without sending) and judges the
    /// answer. No answer is an error before anything was answered in this call, busy after.
    async fn exchange(&mut self, call: &mut Call<'_>, items: &[Item]) -> Result<Verdict> {
        if let Some(reason) = &call.unreachable {
            return Ok(Verdict::Busy(reason.clone(), None));
        }
        if let Some(wait) = self.hold.remaining() {
            return Ok(Verdict::Busy(
                format!(
                    "the webhook receiver asked to wait (Retry-After), {} ms more",
                    wait.as_millis()
                ),
                None,
            ));
        }
        let events = call.events;
        let first = &events[items[0].index];
        let (id, body) = if self.config.batch {
            let last = &events[items[items.len() - 1].index];
            let id = if items.len() == 1 {
                first.id.clone()
            } else {
                format!("{}_{}", first.id, last.id)
            };
            let mut body =
                Vec::with_capacity(items.iter().map(|i| i.body.len() + 1).sum::<usize>() + 1);
            body.push(b'[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&item.body);
            }
            body.push(b']');
            (id, Bytes::from(body))
        } else {
            (first.id.clone(), Bytes::copy_from_slice(&items[0].body))
        };
        let request = match self
            .requests
            .make(items[0].uri.clone(), &id, body.clone(), Some(first))
        {
            Ok(request) => request,
            Err(reason) => return Ok(Verdict::Refused(reason)),
        };
        let requests = &self.requests;
        let again = || {
            requests
                .make(items[0].uri.clone(), &id, body, Some(first))
                .ok()
        };
        match self.client.send(request, again, self.timeout).await {
            Ok(answer) => {
                call.answered = true;
                self.healthy = true;
                if answer.status.is_success() {
                    return Ok(Verdict::Delivered);
                }
                let url = shown(&items[0].uri);
                let verdict = judge(&answer, &url, SystemTime::now());
                if let Verdict::Busy(_, Some(wait)) = &verdict {
                    self.hold.until(Instant::now() + *wait);
                }
                Ok(verdict)
            }
            Err(reason) => {
                self.healthy = false;
                let url = shown(&items[0].uri);
                let reason = format!("the webhook receiver at {url} did not answer: {reason}");
                if !call.answered {
                    return Err(Error::new(ErrorKind::SinkUnavailable, reason));
                }
                call.unreachable = Some(reason.clone());
                Ok(Verdict::Busy(reason, None))
            }
        }
    }
}

/// `uri` as shown in reasons and logs: any password and the query left out.
fn shown(uri: &Uri) -> String {
    crate::secret::DbUrl::new(uri.to_string()).masked()
}
