//! Kafka faults that outlast one batch (issue #15, items 4 and 5), against librdkafka's mock
//! cluster: a topic that disappears after the sink has seen it is reported by name (and its
//! creation attempted with `create_topics = true`) instead of being trusted from the cache
//! forever; and a producer that keeps failing without a fatal error is replaced, so the rows go
//! out while the old producer is still stuck.

mod common;

use common::kafka::*;
use common::pg::{TestDb, connect, test_db};
use common::relay::*;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::time::{Duration, Instant};

/// Writes events `from..=to` (the payload's `seq`) for each of `aggregates` aggregates.
async fn write(db: &TestDb, aggregates: i32, from: i32, to: i32) {
    connect(&db.url)
        .await
        .execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             SELECT 't', 'agg-' || a, 'Step', jsonb_build_object('seq', s) \
             FROM generate_series($2::int, $3::int) s, generate_series(1, $1::int) a \
             ORDER BY s, a",
            &[&aggregates, &from, &to],
        )
        .await
        .expect("insert events");
}

/// Runs the topic-loss scenario with `create_topics` and returns the relay's log line that
/// reports the loss; `expected` is what that line must contain besides the topic's name.
async fn topic_loss(create_topics: bool, expected: &str) -> Option<String> {
    let kafka = TestKafka::start(1);
    let mock = kafka.mock_or_skip("topic_loss")?;
    // Given a relay process that has delivered to a topic (so the sink knows it exists)
    let topic = TestKafka::unique_topic("lost");
    kafka.create_topic(&topic, 1).await;
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    kafka.configure(&mut config, &topic);
    config.sink.kafka.message_timeout_ms = 2_000;
    config.sink.kafka.create_topics = create_topics;
    migrate(&config).await;
    let mut relay = RelayProcess::spawn(&config, dir.path(), "relay", &["run"]);
    write(&db, 3, 1, 5).await;
    wait_sent_at_least(&db, 15).await;

    // When the topic disappears (the cluster's metadata no longer has it, and every produce to
    // it fails with UnknownTopicOrPartition) while more events are written
    let unknown = RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
    mock.topic_error(&topic, unknown).expect("topic error");
    mock.request_errors(RDKafkaApiKey::Produce, &[unknown; 2000]);
    write(&db, 3, 6, 10).await;

    // Then the relay checks the topic again and says what is wrong, naming it
    let line = relay
        .wait_for_log_line(&[expected, &topic], Duration::from_secs(60))
        .await;

    // And once the topic is back, every row is delivered, each aggregate in order
    mock.topic_error(&topic, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
        .expect("clear topic error");
    mock.clear_request_errors(RDKafkaApiKey::Produce);
    wait_sent_at_least(&db, 30).await;
    let records = kafka
        .read_whole_topic(&topic, Duration::from_secs(30))
        .await;
    let (distinct, _) = assert_partition_order(&records);
    assert_eq!(distinct, 30);
    relay.kill();
    Some(line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_disappears_is_reported_missing_by_name() {
    let Some(line) = topic_loss(false, "does not exist").await else {
        return;
    };
    assert!(line.contains("sink.kafka.create_topics = true"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_create_topics_a_topic_that_disappears_is_created_again() {
    // (the mock cluster has no CreateTopics, so the attempt itself fails there; what matters is
    // that the sink makes it instead of trusting its cache)
    topic_loss(true, "creating Kafka topic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_that_keeps_failing_without_a_fatal_error_is_replaced() {
    if std::env::var("OUTBOXD_TEST_KAFKA_BOOTSTRAP").is_ok() {
        eprintln!("skipped: the stalled producer needs the mock cluster");
        return;
    }
    // Given a relay that has delivered through its idempotent producer, whose messages time
    // out after 2 s, and which keeps a connection whose requests go unanswered (socket.max.fails
    // = 0: librdkafka does not drop it after a timed-out request, standing in for a producer that
    // stays broken however often it retries, as after the broker restart in the issue)
    let mock = DelayingMock::start(1);
    let kafka = mock.reader();
    let topic = TestKafka::unique_topic("stalled");
    mock.cluster()
        .create_topic(&topic, 2, 1)
        .expect("create topic");
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    kafka.configure(&mut config, &topic);
    config.sink.kafka.message_timeout_ms = 2_000;
    let options = &mut config.sink.kafka.librdkafka_options.0;
    options.insert("socket.max.fails".into(), "0".into());
    options.insert("socket.timeout.ms".into(), "300000".into());
    migrate(&config).await;
    let relay = InProcessRelay::start(&config).await;
    write(&db, 4, 1, 5).await;
    wait_sent_at_least(&db, 20).await;

    // When the broker answers the producer's next produce request only after 4 minutes (every
    // later answer on that connection waits behind it), so this producer fails every batch
    // without librdkafka calling it fatal
    mock.delay_next(1, RDKafkaApiKey::Produce, Duration::from_secs(240));
    let stalled = Instant::now();
    write(&db, 4, 6, 10).await;

    // Then the relay replaces it (a new producer gets its id at once) and every row goes out
    // long before the old producer's request could have been answered
    wait_sent_at_least(&db, 40).await;
    eprintln!("delivered {:?} after the stall began", stalled.elapsed());
    assert!(stalled.elapsed() < Duration::from_secs(90));
    relay.stop().await;
    let records = kafka
        .read_whole_topic(&topic, Duration::from_secs(30))
        .await;
    let (distinct, _) = assert_partition_order(&records);
    assert_eq!(distinct, 40);
}
