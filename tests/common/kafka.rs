//! Kafka for the tests: librdkafka's mock cluster (real protocol over TCP on loopback), or the
//! real broker named by `OUTBOXD_TEST_KAFKA_BOOTSTRAP`; uniquely named topics created by the
//! test; and the records read back with a consumer.

use outboxd::config::{Config, SinkKind};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Names the real broker the suite runs against instead of the mock cluster.
const REAL_BROKER_VAR: &str = "OUTBOXD_TEST_KAFKA_BOOTSTRAP";

/// The cluster a test talks to.
pub struct TestKafka {
    /// The mock cluster, when not running against a real broker (dropping it stops it).
    pub mock: Option<MockCluster<'static, DefaultProducerContext>>,
    /// Its bootstrap servers.
    pub bootstrap: String,
}

impl TestKafka {
    /// A mock cluster of `brokers` brokers, or the real broker when `OUTBOXD_TEST_KAFKA_BOOTSTRAP`
    /// is set.
    pub fn start(brokers: i32) -> TestKafka {
        if let Ok(bootstrap) = std::env::var(REAL_BROKER_VAR) {
            return TestKafka {
                mock: None,
                bootstrap,
            };
        }
        let mock = MockCluster::new(brokers).expect("start mock Kafka cluster");
        let bootstrap = mock.bootstrap_servers();
        TestKafka {
            mock: Some(mock),
            bootstrap,
        }
    }

    /// The mock cluster for fault injection; `None` (with a printed note) against a real
    /// broker, where the test that needs it is skipped.
    pub fn mock_or_skip(
        &self,
        test: &str,
    ) -> Option<&MockCluster<'static, DefaultProducerContext>> {
        if self.mock.is_none() {
            eprintln!(
                "skipped {test}: fault injection needs the mock cluster ({REAL_BROKER_VAR} is set)"
            );
        }
        self.mock.as_ref()
    }

    /// A fresh, unused topic name.
    pub fn unique_topic(prefix: &str) -> String {
        format!("outboxd-test-{prefix}-{}", Uuid::new_v4().simple())
    }

    /// Creates `topic` with `partitions` partitions.
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        if let Some(mock) = &self.mock {
            mock.create_topic(topic, partitions, 1)
                .expect("create mock topic");
            return;
        }
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("admin client");
        let topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let results = admin
            .create_topics([&topic], &AdminOptions::new())
            .await
            .expect("create topic");
        for result in results {
            result.expect("topic created");
        }
    }

    /// Points `config` at this cluster with the Kafka sink and `topic` as the template.
    pub fn configure(&self, config: &mut Config, topic: &str) {
        config.sink.kind = SinkKind::Kafka;
        config.sink.kafka.bootstrap_servers = self.bootstrap.clone();
        config.sink.kafka.topic = topic.to_string();
        config.sink.kafka.message_timeout_ms = 30_000;
    }

    /// Reads `topic` from the beginning of every partition until `count` records arrived;
    /// panics with how many did if `timeout` passes first.
    pub async fn read_topic(&self, topic: &str, count: usize, timeout: Duration) -> Vec<Received> {
        let bootstrap = self.bootstrap.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || read_blocking(&bootstrap, &topic, count, timeout))
            .await
            .expect("consumer task")
    }
}

impl TestKafka {
    /// Every record on `topic`, repeats included: counts them by the partitions' watermarks
    /// (call once nothing more is being produced), then reads that many.
    pub async fn read_whole_topic(&self, topic: &str, timeout: Duration) -> Vec<Received> {
        let bootstrap = self.bootstrap.clone();
        let name = topic.to_string();
        let count = tokio::task::spawn_blocking(move || record_count(&bootstrap, &name))
            .await
            .expect("watermarks task");
        self.read_topic(topic, count, timeout).await
    }
}

/// How many records `topic` holds, by the low and high watermarks of each partition.
fn record_count(bootstrap: &str, topic: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let mut count = 0;
    for partition in metadata.topics()[0].partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
            .expect("watermarks");
        count += (high - low) as usize;
    }
    count
}

/// One record as a consumer saw it.
#[derive(Debug)]
pub struct Received {
    /// Its partition.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// The key (the aggregate id).
    pub key: String,
    /// The value bytes.
    pub value: Vec<u8>,
    /// Every header, in order.
    pub headers: Vec<(String, String)>,
}

impl Received {
    /// The first header called `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The `seq` field of the JSON value.
    pub fn seq(&self) -> i64 {
        let body: serde_json::Value = serde_json::from_slice(&self.value).expect("JSON value");
        body["seq"].as_i64().expect("seq in value")
    }
}

/// The blocking core of [`TestKafka::read_topic`].
fn read_blocking(bootstrap: &str, topic: &str, count: usize, timeout: Duration) -> Vec<Received> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("outboxd-test-{}", Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let partitions = metadata.topics()[0].partitions().len() as i32;
    assert!(partitions > 0, "topic {topic} has no partitions");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("assign");
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + timeout;
    let mut received = Vec::new();
    while received.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} records on {topic} within {timeout:?}",
            received.len()
        );
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = result.expect("consume");
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| {
                        let value = header
                            .value
                            .map(|v| String::from_utf8_lossy(v).into_owned());
                        (header.key.to_string(), value.unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        received.push(Received {
            partition: message.partition(),
            offset: message.offset(),
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            value: message.payload().unwrap_or_default().to_vec(),
            headers,
        });
    }
    received
}

/// Checks per-aggregate order partition by partition: ignoring repeats of events already seen
/// (a batch sent again after a failure), each aggregate's `seq` increases by exactly one, and
/// every aggregate stays in one partition. Returns (distinct events, repeats).
pub fn assert_partition_order(records: &[Received]) -> (usize, usize) {
    let mut by_partition: HashMap<i32, Vec<&Received>> = HashMap::new();
    for record in records {
        by_partition
            .entry(record.partition)
            .or_default()
            .push(record);
    }
    let mut seen: HashSet<&str> = HashSet::new();
    let mut partition_of: HashMap<&str, i32> = HashMap::new();
    let mut repeats = 0;
    for (partition, mut records) in by_partition {
        records.sort_by_key(|record| record.offset);
        let mut last: HashMap<&str, i64> = HashMap::new();
        for record in records {
            let id = record.header("id").expect("id header");
            if !seen.insert(id) {
                repeats += 1;
                continue;
            }
            let key = record.key.as_str();
            assert_eq!(
                *partition_of.entry(key).or_insert(partition),
                partition,
                "aggregate {key} in two partitions"
            );
            let seq = record.seq();
            let previous = last.insert(key, seq).unwrap_or(0);
            assert_eq!(
                seq,
                previous + 1,
                "aggregate {key} out of order at partition {partition} offset {}: seq {seq} \
                 after {previous}",
                record.offset
            );
        }
    }
    (seen.len(), repeats)
}

/// A mock cluster owned by a producer handle (`test.mock.num.brokers`), for the faults rdkafka's
/// [`MockCluster`] wrapper does not offer: a delayed response on one broker connection. Such a
/// delay holds up only the connection that sent the request, so it can stall one producer while
/// a new one, on connections of its own, goes through.
pub struct DelayingMock {
    /// The handle that owns the cluster (dropping it stops the cluster).
    owner: rdkafka::producer::BaseProducer,
    /// Its bootstrap servers.
    pub bootstrap: String,
}

impl DelayingMock {
    /// A mock cluster of `brokers` brokers.
    pub fn start(brokers: i32) -> DelayingMock {
        let owner: rdkafka::producer::BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", brokers.to_string())
            .create()
            .expect("mock cluster owner");
        let bootstrap = owner
            .client()
            .mock_cluster()
            .expect("mock cluster")
            .bootstrap_servers();
        DelayingMock { owner, bootstrap }
    }

    /// The cluster, for rdkafka's fault injection.
    pub fn cluster(&self) -> MockCluster<'_, rdkafka::producer::DefaultProducerContext> {
        self.owner.client().mock_cluster().expect("mock cluster")
    }

    /// A [`TestKafka`] reading from this cluster.
    pub fn reader(&self) -> TestKafka {
        TestKafka {
            mock: None,
            bootstrap: self.bootstrap.clone(),
        }
    }

    /// Makes broker `broker` answer the next `api` request (from whichever connection sends it)
    /// only after `delay`, holding up every later answer on that connection meanwhile.
    pub fn delay_next(&self, broker: i32, api: rdkafka::types::RDKafkaApiKey, delay: Duration) {
        use rdkafka::bindings as ffi;
        let millis = i32::try_from(delay.as_millis()).expect("delay fits in an int");
        // SAFETY: the cluster pointer is valid while `owner` lives; the variadic arguments are
        // one (error code, round-trip time in ms) pair, as the count of 1 says.
        let err = unsafe {
            let cluster = ffi::rd_kafka_handle_mock_cluster(self.owner.client().native_ptr());
            ffi::rd_kafka_mock_broker_push_request_error_rtts(
                cluster,
                broker,
                api as i16,
                1,
                ffi::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
                millis,
            )
        };
        assert_eq!(
            err,
            ffi::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
            "delay on broker {broker}"
        );
    }
}
