//! The sink conformance suite (tests/common/conformance.rs) against NATS JetStream: the real
//! server at 127.0.0.1:4222, reached through a TCP proxy the outage cuts, each test with a
//! stream of its own. Without a server the tests are skipped, except under `CI=true`.

mod common;

use common::conformance::{Delivered, DeliveredChange, Refusal, SinkUnderTest, WAIT, total};
use common::nats::{TestStream, nats, server_addr};
use common::proxy::Proxy;
use outboxd::config::Config;

/// A stream of its own, its subjects `<prefix>.>`.
struct NatsSink {
    /// The stream.
    stream: TestStream,
    /// Between the relay and the server.
    proxy: Proxy,
}

/// Most messages the stream holds while it pushes back.
const PUSH_BACK_AT: i64 = 10;

impl SinkUnderTest for NatsSink {
    // Every message carries Nats-Msg-Id = the event id, and the stream's duplicate window (10
    // minutes here) outlasts every scenario: a batch published again after a lost
    // acknowledgement or a SIGKILL stores nothing twice.
    const EXACTLY_ONCE: bool = true;

    async fn setup() -> Option<Self> {
        let js = nats().await?;
        Some(NatsSink {
            stream: TestStream::create(&js).await,
            proxy: Proxy::start(server_addr()),
        })
    }

    fn configure(&self, config: &mut Config) {
        let url = format!("nats://{}", self.proxy.addr);
        self.stream.configure(config, &url);
    }

    async fn delivered(&mut self) -> Vec<Delivered> {
        self.stream
            .read_all(WAIT)
            .await
            .iter()
            .map(|message| Delivered {
                id: message.header("id").expect("id header").to_string(),
                key: message
                    .header("aggregateid")
                    .expect("aggregateid header")
                    .to_string(),
                seq: message.seq(),
                stream: 0,
            })
            .collect()
    }

    /// Subjects `<prefix>.public.items.<op>`, all in the test's stream.
    async fn prepare_changes(&mut self, _config: &mut Config, _table: &str) -> bool {
        true
    }

    async fn delivered_changes(&mut self, _table: &str) -> Vec<DeliveredChange> {
        self.stream
            .read_all(WAIT)
            .await
            .iter()
            .map(|message| DeliveredChange {
                id: message.header("id").expect("id header").to_string(),
                key: message
                    .header("aggregateid")
                    .expect("aggregateid header")
                    .to_string(),
                payload: serde_json::from_slice(&message.payload).expect("JSON body"),
                stream: 0,
            })
            .collect()
    }

    async fn prepare_outage(&mut self, _config: &mut Config) -> bool {
        true
    }

    /// Every connection through the proxy is closed and new ones are refused, as when the
    /// network to the server fails (the shared server itself keeps running for other tests).
    async fn outage(&mut self, down: bool) {
        if down {
            self.proxy.cut().await;
        } else {
            self.proxy.restore();
        }
    }

    /// A payload over the server's `max_payload` (1 MiB by default): NATS cannot carry it.
    fn refusal(&self, _config: &mut Config) -> Refusal {
        Refusal {
            event_type: "Step".into(),
            pad: 1_100_000,
            reason: "max_payload",
        }
    }

    /// The stream is capped at a few messages with `discard: new`: JetStream answers further
    /// publishes "maximum messages exceeded", which the sink reports as busy.
    fn prepare_backpressure(&self, _config: &mut Config) -> Option<()> {
        Some(())
    }

    /// Sets or lifts the stream's message cap.
    async fn backpressure(&mut self, on: bool) {
        self.stream.limit(if on { PUSH_BACK_AT } else { -1 }).await;
    }

    /// Each key has one unacknowledged message at a time and retries the same one after a
    /// push-back, so more than three per key mean some event was pushed back three times:
    /// past `relay.max_attempts` (2) had push-backs counted as failed attempts.
    fn held_back(&self, metrics: &str, aggregates: usize) -> bool {
        total(metrics, "outboxd_publish_busy_total") > (3 * aggregates) as f64
    }

    async fn teardown(self) {
        self.stream.delete().await;
    }
}

common::conformance::suite!(NatsSink);
