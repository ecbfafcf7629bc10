//! The sink conformance suite (tests/common/conformance.rs) against SQS as the `moto` emulator
//! serves it (a private `moto_server` per test, tests/common/aws.rs), reached through a TCP
//! proxy the outage cuts. A standard queue per test; the refused event is addressed to a
//! queue that does not exist, which SQS refuses for good. Without `moto_server` the tests are
//! skipped, except under `CI=true`.

mod common;

use common::aws::{Clients, Drainer, Moto, configure_sqs, moto, queue_url, unique_prefix};
use common::conformance::{Delivered, DeliveredChange, Refusal, SinkUnderTest};
use common::proxy::Proxy;
use outboxd::config::Config;

/// A standard queue `<prefix>-Step` on a private moto, through a proxy.
struct SqsSink {
    /// The emulator (killed on drop).
    moto: Moto,
    /// The queue names' prefix.
    prefix: String,
    /// Between the relay and moto.
    proxy: Proxy,
    /// Reads the queue all along (reading consumes it).
    reader: Drainer,
    /// Creates the change events' destination.
    clients: Clients,
    /// Reads the change events' queue, once the scenario asked for it.
    changes: Option<Drainer>,
}

impl SinkUnderTest for SqsSink {
    // At-least-once: a standard queue keeps a message sent again after a lost answer or a
    // SIGKILL (FIFO queues deduplicate: tests/sqs.rs).
    const EXACTLY_ONCE: bool = false;

    // moto answers a SendMessageBatch of 10 in ~150 ms, and each message costs time in proportion to
    // what the queue holds (docs/BENCHMARKS.md, "SQS against the moto emulator"): the full
    // scenarios (10,000 events) did not finish within their 120-s wait. A tenth of the events
    // still checks every promise.
    const SHRINK: usize = 10;

    async fn setup() -> Option<Self> {
        let moto = moto()?;
        let clients = Clients::new(&moto);
        let prefix = unique_prefix();
        let queue = clients.create_queue(&format!("{prefix}-Step")).await;
        let proxy = Proxy::start(moto.addr.parse().unwrap());
        Some(SqsSink {
            moto,
            prefix,
            proxy,
            reader: Drainer::start(clients.sqs.clone(), queue),
            clients,
            changes: None,
        })
    }

    fn configure(&self, config: &mut Config) {
        let endpoint = format!("http://{}", self.proxy.addr);
        let template = queue_url(&endpoint, &format!("{}-{{type}}", self.prefix));
        configure_sqs(config, &endpoint, &template);
    }

    async fn delivered(&mut self) -> Vec<Delivered> {
        self.reader
            .all()
            .await
            .iter()
            .map(|message| message.delivered())
            .collect()
    }

    /// One queue for every change event, read all along.
    async fn prepare_changes(&mut self, config: &mut Config, _table: &str) -> bool {
        let queue = self
            .clients
            .create_queue(&format!("{}-changes", self.prefix))
            .await;
        let endpoint = format!("http://{}", self.proxy.addr);
        let template = queue_url(&endpoint, &format!("{}-changes", self.prefix));
        configure_sqs(config, &endpoint, &template);
        self.changes = Some(Drainer::start(self.clients.sqs.clone(), queue));
        true
    }

    async fn delivered_changes(&mut self, _table: &str) -> Vec<DeliveredChange> {
        let reader = self.changes.as_mut().expect("prepare_changes ran");
        reader
            .all()
            .await
            .iter()
            .map(|message| message.change())
            .collect()
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

    /// An event addressed (by its type) to a queue that does not exist: SQS answers
    /// `AWS.SimpleQueueService.NonExistentQueue`, for good.
    fn refusal(&self, _config: &mut Config) -> Refusal {
        Refusal {
            event_type: "Missing".into(),
            pad: 0,
            reason: "queue does not exist",
        }
    }

    // moto never throttles, and SQS has no other way to say "not now".
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

common::conformance::suite!(SqsSink);
