//! The sink conformance suite (tests/common/conformance.rs) against Kafka: librdkafka's mock
//! cluster of three brokers (or the real broker named by `OUTBOXD_TEST_KAFKA_BOOTSTRAP`, where
//! the scenarios that need the mock's fault injection are skipped).

mod common;

use common::conformance::{Delivered, DeliveredChange, Refusal, SinkUnderTest, WAIT, total};
use common::kafka::TestKafka;
use outboxd::config::Config;
use std::time::Duration;

/// A six-partition topic named by a template, `<prefix>.{aggregatetype}`.
struct KafkaSink {
    /// The cluster.
    kafka: TestKafka,
    /// The template's prefix.
    prefix: String,
}

/// Brokers in the mock cluster.
const BROKERS: i32 = 3;

/// Messages librdkafka's local queue holds while the backpressure scenario runs.
const LOCAL_QUEUE: usize = 20;

impl KafkaSink {
    /// The topic every scenario's events land in (their aggregate type is `order`).
    fn topic(&self) -> String {
        format!("{}.order", self.prefix)
    }

    /// Sets every broker's round-trip time (zero for none).
    fn round_trip(&self, rtt: Duration) {
        let mock = self.kafka.mock.as_ref().expect("the mock cluster");
        for broker in 1..=BROKERS {
            mock.broker_round_trip_time(broker, rtt)
                .expect("broker round-trip time");
        }
    }
}

impl SinkUnderTest for KafkaSink {
    // At-least-once: a batch whose delivery reports were lost is produced again.
    const EXACTLY_ONCE: bool = false;

    async fn setup() -> Option<Self> {
        let kafka = TestKafka::start(BROKERS);
        let sink = KafkaSink {
            kafka,
            prefix: TestKafka::unique_topic("conformance"),
        };
        sink.kafka.create_topic(&sink.topic(), 6).await;
        Some(sink)
    }

    fn configure(&self, config: &mut Config) {
        let template = format!("{}.{{aggregatetype}}", self.prefix);
        self.kafka.configure(config, &template);
    }

    async fn delivered(&mut self) -> Vec<Delivered> {
        let mut records = self.kafka.read_whole_topic(&self.topic(), WAIT).await;
        records.sort_by_key(|record| (record.partition, record.offset));
        records
            .iter()
            .map(|record| Delivered {
                id: record.header("id").expect("id header").to_string(),
                key: record.key.clone(),
                seq: record.seq(),
                stream: record.partition,
            })
            .collect()
    }

    /// Every broker of the mock cluster goes down. A 5-s message timeout makes a publish fail
    /// (and `/readyz` tell) well within the outage.
    async fn prepare_outage(&mut self, config: &mut Config) -> bool {
        if self.kafka.mock_or_skip("the outage scenario").is_none() {
            return false;
        }
        config.sink.kafka.message_timeout_ms = 5_000;
        true
    }

    async fn outage(&mut self, down: bool) {
        let mock = self.kafka.mock.as_ref().expect("the mock cluster");
        for broker in 1..=BROKERS {
            let result = match down {
                true => mock.broker_down(broker),
                false => mock.broker_up(broker),
            };
            result.expect("broker down or up");
        }
    }

    fn refusal(&self, config: &mut Config) -> Refusal {
        let options = &mut config.sink.kafka.librdkafka_options.0;
        options.insert("message.max.bytes".into(), "2000".into());
        Refusal {
            event_type: "Step".into(),
            pad: 5000,
            reason: "too large",
        }
    }

    /// Slow brokers behind a small local queue: librdkafka refuses new messages while its
    /// queue is full (`QueueFull`), which the sink waits out. Needs the mock cluster.
    fn prepare_backpressure(&self, config: &mut Config) -> Option<()> {
        self.kafka.mock_or_skip("the backpressure scenario")?;
        let options = &mut config.sink.kafka.librdkafka_options.0;
        options.insert(
            "queue.buffering.max.messages".into(),
            LOCAL_QUEUE.to_string(),
        );
        Some(())
    }

    async fn backpressure(&mut self, on: bool) {
        let rtt = if on {
            Duration::from_millis(300)
        } else {
            Duration::ZERO
        };
        self.round_trip(rtt);
    }

    /// More events in the sink's hands than librdkafka's queue holds: the rest are waiting
    /// for room, behind brokers that take 300 ms per request.
    fn held_back(&self, metrics: &str, _aggregates: usize) -> bool {
        total(metrics, "outboxd_in_flight_events") >= (5 * LOCAL_QUEUE) as f64
    }

    /// The template names `<prefix>.<schema>.<table>` for the table's events: six partitions.
    async fn prepare_changes(&mut self, _config: &mut Config, table: &str) -> bool {
        let topic = format!("{}.{table}", self.prefix);
        self.kafka.create_topic(&topic, 6).await;
        true
    }

    async fn delivered_changes(&mut self, table: &str) -> Vec<DeliveredChange> {
        let topic = format!("{}.{table}", self.prefix);
        let mut records = self.kafka.read_whole_topic(&topic, WAIT).await;
        records.sort_by_key(|record| (record.partition, record.offset));
        records
            .iter()
            .map(|record| DeliveredChange {
                id: record.header("id").expect("id header").to_string(),
                key: record.key.clone(),
                payload: serde_json::from_slice(&record.value).expect("JSON value"),
                stream: record.partition,
            })
            .collect()
    }
}

common::conformance::suite!(KafkaSink);
