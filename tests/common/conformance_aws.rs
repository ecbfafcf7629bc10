//! The sink conformance suite's SQS and SNS sinks (tests/conformance_sqs.rs,
//! tests/conformance_sns.rs) as the `moto` emulator serves them (a private `moto_server` per
//! test, [`super::aws`]), reached through a TCP proxy the outage cuts. A standard queue, or a
//! standard topic read back through an SQS queue subscribed to it with raw message delivery,
//! per test; the refused event is addressed to a queue or topic that does not exist, which the
//! service refuses for good. Without `moto_server` the tests are skipped, except under
//! `CI=true`.

use super::aws::{
    Clients, Drainer, Moto, configure_sns, configure_sqs, moto, queue_url, topic_arn, unique_prefix,
};
use super::conformance::{Delivered, DeliveredChange, Refusal, SinkUnderTest};
use super::proxy::Proxy;
use outboxd::config::Config;

/// Destinations `<prefix>-<name>` on a private moto, through a proxy: SNS topics (each with a
/// queue subscribed) when `SNS`, SQS queues otherwise.
pub struct AwsSink<const SNS: bool> {
    /// The emulator (killed on drop).
    moto: Moto,
    /// The destinations' names' prefix.
    prefix: String,
    /// Between the relay and moto.
    proxy: Proxy,
    /// Reads the `Step` queue all along (reading consumes it).
    reader: Drainer,
    /// Creates the change events' destination.
    clients: Clients,
    /// Reads the change events' queue, once the scenario asked for it.
    changes: Option<Drainer>,
}

impl<const SNS: bool> AwsSink<SNS> {
    /// Creates the destination `<prefix>-<name>` and returns the queue to read it from.
    async fn create(clients: &Clients, prefix: &str, name: &str) -> String {
        let name = format!("{prefix}-{name}");
        match SNS {
            true => clients.create_topic_with_queue(&name).await,
            false => clients.create_queue(&name).await,
        }
    }

    /// Points `config` at the destinations `<prefix>-<name>` (`name` a template).
    fn point(&self, config: &mut Config, name: &str) {
        let endpoint = format!("http://{}", self.proxy.addr);
        let name = format!("{}-{name}", self.prefix);
        match SNS {
            true => configure_sns(config, &endpoint, &topic_arn(&name)),
            false => configure_sqs(config, &endpoint, &queue_url(&endpoint, &name)),
        }
    }
}

impl<const SNS: bool> SinkUnderTest for AwsSink<SNS> {
    // At-least-once: a standard queue or topic passes on a message sent again after a lost
    // answer or a SIGKILL (FIFO queues deduplicate: tests/sqs.rs).
    const EXACTLY_ONCE: bool = false;

    // moto answers a batch of 10 in ~150 ms, and each message costs time in proportion to what
    // the queue holds (docs/BENCHMARKS.md, "SQS against the moto emulator"): the full scenarios
    // (10,000 events) did not finish within their 120-s wait. A tenth of the events still
    // checks every promise.
    const SHRINK: usize = 10;

    async fn setup() -> Option<Self> {
        let moto = moto()?;
        let clients = Clients::new(&moto);
        let prefix = unique_prefix();
        let queue = Self::create(&clients, &prefix, "Step").await;
        let proxy = Proxy::start(moto.addr.parse().unwrap());
        Some(AwsSink {
            moto,
            prefix,
            proxy,
            reader: Drainer::start(clients.sqs.clone(), queue),
            clients,
            changes: None,
        })
    }

    fn configure(&self, config: &mut Config) {
        self.point(config, "{type}");
    }

    async fn delivered(&mut self) -> Vec<Delivered> {
        let messages = self.reader.all().await;
        messages.iter().map(|message| message.delivered()).collect()
    }

    /// One destination for every change event, read all along.
    async fn prepare_changes(&mut self, config: &mut Config, _table: &str) -> bool {
        let queue = Self::create(&self.clients, &self.prefix, "changes").await;
        self.point(config, "changes");
        self.changes = Some(Drainer::start(self.clients.sqs.clone(), queue));
        true
    }

    async fn delivered_changes(&mut self, _table: &str) -> Vec<DeliveredChange> {
        let reader = self.changes.as_mut().expect("prepare_changes ran");
        let messages = reader.all().await;
        messages.iter().map(|message| message.change()).collect()
    }

    async fn prepare_outage(&mut self, _config: &mut Config) -> bool {
        true
    }

    /// Every connection through the proxy is closed and new ones are refused, as when the
    /// network to AWS fails.
    async fn outage(&mut self, down: bool) {
        if down {
            self.proxy.cut().await;
        } else {
            self.proxy.restore();
        }
    }

    /// An event addressed (by its type) to a destination that does not exist: SNS answers
    /// `NotFound`, SQS `AWS.SimpleQueueService.NonExistentQueue`, for good.
    fn refusal(&self, _config: &mut Config) -> Refusal {
        Refusal {
            event_type: "Missing".into(),
            pad: 0,
            reason: match SNS {
                true => "Topic does not exist",
                false => "queue does not exist",
            },
        }
    }

    // moto never throttles, and neither service has another way to say "not now".
    fn prepare_backpressure(&self, _config: &mut Config) -> Option<()> {
        None
    }

    async fn backpressure(&mut self, _on: bool) {}

    fn held_back(&self, _metrics: &str, _aggregates: usize) -> bool {
        false
    }

    async fn teardown(self) {
        drop(self.moto);
    }
}
