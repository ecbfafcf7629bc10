//! A sink wrapper that injects faults: transient failures for an aggregate, events refused for
//! good, a publish that hangs, or one held until the test lets it go, a sink that is down.

use outboxd::error::{Error, ErrorKind, Result};
use outboxd::event::Event;
use outboxd::sink::{AnySink, Outcome, Sink};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// What to inject; change it while the relay runs.
#[derive(Debug, Default)]
pub struct Faults {
    /// Remaining transient failures per aggregate id.
    pub fail_aggregate: HashMap<String, usize>,
    /// Event types the sink refuses for good.
    pub refuse_types: HashSet<String>,
    /// Event types that fail transiently every time.
    pub always_fail_types: HashSet<String>,
    /// Aggregates whose events the sink reports busy (a RabbitMQ nack) every time.
    pub busy_aggregates: HashSet<String>,
    /// The next publish sleeps this long before doing anything.
    pub hang_once: Option<Duration>,
    /// Every publish holding an event of one of these aggregates sleeps this long first: a
    /// slow consumer or partition behind one aggregate.
    pub slow_aggregates: HashMap<String, Duration>,
    /// The next publish reports how many events it holds on the sender, then waits for the
    /// receiver: the test knows those events are in a lane, and decides when they land.
    pub hold_once: Option<(oneshot::Sender<usize>, oneshot::Receiver<()>)>,
}

/// Wraps a real sink and applies [`Faults`].
pub struct FaultSink {
    /// The real sink.
    pub inner: AnySink,
    /// The faults to apply.
    pub faults: Arc<Mutex<Faults>>,
}

impl Sink for FaultSink {
    async fn publish(&mut self, events: &[Event]) -> Result<Vec<Outcome>> {
        let hold = self.faults.lock().unwrap().hold_once.take();
        if let Some((started, release)) = hold {
            let _ = started.send(events.len());
            let _ = release.await;
        }
        let hang = {
            let mut faults = self.faults.lock().unwrap();
            let slow = events
                .iter()
                .filter_map(|event| faults.slow_aggregates.get(&event.key))
                .max()
                .copied();
            faults.hang_once.take().max(slow)
        };
        if let Some(hang) = hang {
            tokio::time::sleep(hang).await;
        }
        let mut outcomes: Vec<Option<Outcome>> = vec![None; events.len()];
        let mut pass = Vec::new();
        {
            let mut faults = self.faults.lock().unwrap();
            let mut failed: HashSet<String> = HashSet::new();
            for (i, event) in events.iter().enumerate() {
                let aggregate = &event.key;
                if failed.contains(aggregate) {
                    outcomes[i] = Some(Outcome::Deferred);
                } else if faults.refuse_types.contains(&event.event_type) {
                    failed.insert(aggregate.clone());
                    outcomes[i] = Some(Outcome::Refused("injected: refused for good".into()));
                } else if faults.busy_aggregates.contains(aggregate) {
                    failed.insert(aggregate.clone());
                    outcomes[i] = Some(Outcome::Busy("injected: nacked".into()));
                } else if faults.always_fail_types.contains(&event.event_type) {
                    failed.insert(aggregate.clone());
                    outcomes[i] = Some(Outcome::Retry("injected: always fails".into()));
                } else if let Some(left) =
                    faults.fail_aggregate.get_mut(aggregate).filter(|n| **n > 0)
                {
                    *left -= 1;
                    failed.insert(aggregate.clone());
                    outcomes[i] = Some(Outcome::Retry("injected: transient failure".into()));
                } else {
                    pass.push(i);
                }
            }
        }
        let forwarded: Vec<Event> = pass.iter().map(|&i| events[i].clone()).collect();
        if !forwarded.is_empty() {
            let results = self.inner.publish(&forwarded).await?;
            for (&i, outcome) in pass.iter().zip(results) {
                outcomes[i] = Some(outcome);
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.ok_or_else(|| Error::new(ErrorKind::Internal, "no outcome")))
            .collect()
    }

    async fn fork(&self) -> Result<Self> {
        Ok(FaultSink {
            inner: self.inner.fork().await?,
            faults: self.faults.clone(),
        })
    }

    /// The real sink redirected, without faults: dead letters reach their destination as
    /// the sink would take them.
    async fn redirect(&self, destination: &str) -> Result<Self> {
        Ok(FaultSink {
            inner: self.inner.redirect(destination).await?,
            faults: Arc::default(),
        })
    }

    fn name(&self) -> &'static str {
        "faulty"
    }
}

/// A relay in this process whose sink injects `faults`.
pub async fn start_faulty(
    config: &outboxd::config::Config,
    faults: Arc<Mutex<Faults>>,
) -> super::relay::InProcessRelay {
    super::relay::InProcessRelay::start_with(config, |inner| FaultSink { inner, faults }).await
}

/// A relay in this process whose sink refuses events of `types` for good, and its faults (to
/// change them later).
pub async fn start_refusing(
    config: &outboxd::config::Config,
    types: &[&str],
) -> (super::relay::InProcessRelay, Arc<Mutex<Faults>>) {
    let faults = Arc::new(Mutex::new(Faults::default()));
    let refused = types.iter().map(|t| t.to_string());
    faults.lock().unwrap().refuse_types.extend(refused);
    (start_faulty(config, faults.clone()).await, faults)
}
