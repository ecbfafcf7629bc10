//! The sink conformance suite (tests/common/conformance.rs) against RabbitMQ: the real broker
//! at 127.0.0.1:5672, reached through a TCP proxy the outage cuts. Without a broker the tests
//! are skipped, except under `CI=true`.

mod common;

use common::amqp::url_through;
use common::amqp::{Topology, broker_addr, header, id_of, message_seq, rabbit, rabbitmqctl};
use common::conformance::{Delivered, DeliveredChange, Refusal, SinkUnderTest, WAIT, total};
use common::proxy::Proxy;
use outboxd::config::{Config, DbUrl};

/// A topic exchange and a queue bound to every routing key, in the default vhost.
struct AmqpSink {
    /// The exchange and queue.
    topology: Topology,
    /// Between the relay and the broker.
    proxy: Proxy,
    /// The vhost's URL through the proxy.
    proxied: String,
    /// What was consumed off the queue so far (reading consumes).
    received: Vec<Delivered>,
    /// The change events consumed off the queue so far.
    changes: Vec<DeliveredChange>,
}

/// Most messages the queue holds while it pushes back.
const PUSH_BACK_AT: u32 = 10;

impl SinkUnderTest for AmqpSink {
    // At-least-once: a batch whose confirms were lost is published again.
    const EXACTLY_ONCE: bool = false;

    async fn setup() -> Option<Self> {
        let url = rabbit().await?;
        let topology = Topology::declare(&url, "#").await;
        let proxy = Proxy::start(broker_addr(&url));
        let proxied = url_through(&topology.url, proxy.addr);
        Some(AmqpSink {
            topology,
            proxy,
            proxied,
            received: Vec::new(),
            changes: Vec::new(),
        })
    }

    fn configure(&self, config: &mut Config) {
        self.topology.configure(config);
        config.sink.amqp.url = DbUrl::new(self.proxied.clone());
    }

    fn env(&self) -> Vec<(String, String)> {
        // The written config masks the password.
        vec![("OUTBOXD_SINK__AMQP__URL".into(), self.proxied.clone())]
    }

    async fn delivered(&mut self) -> Vec<Delivered> {
        let messages = self.topology.consume_all(WAIT).await;
        self.received
            .extend(messages.iter().map(|message| Delivered {
                id: id_of(message),
                key: header(message, "aggregateid").expect("aggregateid header"),
                seq: message_seq(message),
                stream: 0,
            }));
        self.received.clone()
    }

    async fn prepare_outage(&mut self, _config: &mut Config) -> bool {
        true
    }

    /// Every connection through the proxy is closed and new ones are refused, as when the
    /// network to the broker fails.
    async fn outage(&mut self, down: bool) {
        if down {
            self.proxy.cut().await;
        } else {
            self.proxy.restore();
        }
    }

    /// A payload over `sink.amqp.max_message_size` (the broker's limit, which AMQP does not
    /// advertise): refused before it is sent, instead of the broker closing the channel.
    fn refusal(&self, config: &mut Config) -> Refusal {
        config.sink.amqp.max_message_size = 2000;
        Refusal {
            event_type: "Step".into(),
            pad: 5000,
            reason: "exceeds the broker's max_message_size of 2000 bytes",
        }
    }

    /// A queue that holds a few messages and rejects publishes beyond them: the broker nacks,
    /// which the sink reports as busy.
    fn prepare_backpressure(&self, _config: &mut Config) -> Option<()> {
        Some(())
    }

    /// Applies or clears a policy (`max-length`, `overflow: reject-publish`) on the queue, so
    /// the queue pushes back without being declared again.
    async fn backpressure(&mut self, on: bool) {
        let queue = self.topology.queue.clone();
        tokio::task::spawn_blocking(move || {
            if on {
                let pattern = format!("^{queue}$");
                let definition =
                    format!(r#"{{"max-length":{PUSH_BACK_AT},"overflow":"reject-publish"}}"#);
                rabbitmqctl(&[
                    "set_policy",
                    "-p",
                    "/",
                    "--apply-to",
                    "queues",
                    "--priority",
                    "999",
                    &queue,
                    &pattern,
                    &definition,
                ]);
            } else {
                rabbitmqctl(&["clear_policy", "-p", "/", &queue]);
            }
        })
        .await
        .expect("rabbitmqctl");
    }

    /// Each aggregate has one unconfirmed message at a time and retries the same one after a
    /// nack, so more nacks than three per aggregate mean some event was nacked three times:
    /// past `relay.max_attempts` (2) had nacks counted as failed attempts.
    fn held_back(&self, metrics: &str, aggregates: usize) -> bool {
        total(metrics, "outboxd_publish_busy_total") > (3 * aggregates) as f64
    }

    /// The queue is bound to every routing key, so the table's events land in it too.
    async fn prepare_changes(&mut self, _config: &mut Config, _table: &str) -> bool {
        true
    }

    async fn delivered_changes(&mut self, _table: &str) -> Vec<DeliveredChange> {
        let messages = self.topology.consume_all(WAIT).await;
        self.changes
            .extend(messages.iter().map(|message| DeliveredChange {
                id: id_of(message),
                key: header(message, "aggregateid").expect("aggregateid header"),
                payload: serde_json::from_slice(&message.data).expect("JSON body"),
                stream: 0,
            }));
        self.changes.clone()
    }

    async fn teardown(self) {
        self.topology.delete().await;
    }
}

common::conformance::suite!(AmqpSink);
