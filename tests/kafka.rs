//! The Kafka sink end to end, against librdkafka's mock cluster (or the real broker named by
//! `OUTBOXD_TEST_KAFKA_BOOTSTRAP`) and real PostgreSQL. Each test uses its own topics; the
//! fault-injection tests need the mock cluster and are skipped, with a note, on a real broker.

mod common;

use common::amqp::wait_settled;
use common::kafka::*;
use common::pg::{TestDb, connect, test_db};
use common::relay::*;
use outboxd::config::{OnDeadLetter, SinkKind};
use outboxd::error::ErrorKind;
use outboxd::sink::{AnySink, Sink};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_carries_key_value_and_headers_and_cloudevents_attributes() {
    // Given a relay in CloudEvents mode producing to one fixed topic
    let kafka = TestKafka::start(1);
    let topic = TestKafka::unique_topic("headers");
    kafka.create_topic(&topic, 1).await;
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    kafka.configure(&mut config, &topic);
    config.sink.kafka.cloudevents = true;
    config.sink.kafka.cloudevents_source = "/shop".into();
    let relay = InProcessRelay::start(&config).await;

    // When one event with row headers is written
    connect(&db.url)
        .await
        .execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload, headers, created_at) \
             VALUES ('order', '42', 'OrderPlaced', '{\"seq\": 1, \"total\": \"19.90\"}', \
             '{\"trace\": \"t1\", \"try\": 2}', '2024-05-06T07:08:09.5Z')",
            &[],
        )
        .await
        .unwrap();

    // Then the record is keyed by aggregate id, the value is the payload as stored, and the
    // headers carry the event's metadata, the row's headers and the CloudEvents attributes
    wait_settled(&db, 1, WAIT).await;
    relay.stop().await;
    let records = kafka.read_topic(&topic, 1, WAIT).await;
    let record = &records[0];
    assert_eq!(record.key, "42");
    assert_eq!(record.value, br#"{"seq": 1, "total": "19.90"}"#);
    assert_eq!(record.header("type"), Some("OrderPlaced"));
    assert_eq!(record.header("aggregatetype"), Some("order"));
    assert_eq!(record.header("aggregateid"), Some("42"));
    assert_eq!(record.header("position"), Some("1"));
    assert_eq!(record.header("trace"), Some("t1"));
    assert_eq!(record.header("try"), Some("2"));
    assert_eq!(record.header("ce_id"), record.header("id"));
    assert_eq!(record.header("ce_type"), Some("OrderPlaced"));
    assert_eq!(record.header("ce_source"), Some("/shop"));
    assert_eq!(record.header("ce_specversion"), Some("1.0"));
    assert_eq!(record.header("ce_time"), Some("2024-05-06T07:08:09.500Z"));
    assert_eq!(record.header("content-type"), Some("application/json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_produce_errors_and_a_broker_down_and_up_lose_nothing_and_keep_key_order() {
    let kafka = TestKafka::start(1);
    let Some(mock) = kafka.mock_or_skip("injected_produce_errors") else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter("outboxd=info")
        .with_ansi(false)
        .with_test_writer()
        .try_init();
    // Given a relay whose messages time out quickly, so an outage fails whole batches
    let topic = TestKafka::unique_topic("faults");
    kafka.create_topic(&topic, 6).await;
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    kafka.configure(&mut config, &topic);
    config.sink.kafka.message_timeout_ms = 2_000;
    config.source.batch_size = 200;
    let relay = InProcessRelay::start(&config).await;
    create_aggregates(&db, 20).await;
    let writers = tokio::spawn({
        let db = db.clone();
        async move { write_events(&db, 4, 1000, 20).await }
    });

    // When produce requests fail with retriable errors, and later the broker goes away for
    // longer than the message timeout and comes back
    wait_sent_at_least(&db, 300).await;
    let retriable = [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
    ];
    mock.request_errors(RDKafkaApiKey::Produce, &retriable.repeat(4));
    wait_sent_at_least(&db, 1500).await;
    mock.broker_down(1).expect("broker down");
    // A fixed wait: this is the outage itself, which must outlast the 2-s message timeout so
    // that whole batches fail and are sent again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    mock.broker_up(1).expect("broker up");
    writers.await.unwrap();

    // Then every event still reaches the topic; repeats come only from batches sent again and
    // never break an aggregate's order
    wait_settled(&db, 4000, WAIT).await;
    relay.stop().await;
    let records = kafka.read_whole_topic(&topic, WAIT).await;
    let (distinct, repeats) = assert_partition_order(&records);
    eprintln!("produce errors and broker outage: {distinct} distinct, {repeats} repeats");
    assert_eq!(distinct, 4000);
    assert_eq!(failed_rows(&db).await, 0);
}

/// An oversize event between two small ones of aggregate `1`, and one event of aggregate `2`,
/// all committed before the relay starts so they arrive in one batch; returns the failed row's
/// reason and the `seq` of each record of aggregate `1` on the topic, once `settled` rows are
/// left pending.
async fn relay_an_oversize_event(on_dead_letter: OnDeadLetter, settled: i64) -> (String, Vec<i64>) {
    // Given a producer whose messages may not exceed 2,000 bytes
    let kafka = TestKafka::start(1);
    let topic = TestKafka::unique_topic("oversize");
    kafka.create_topic(&topic, 1).await;
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    kafka.configure(&mut config, &topic);
    config.relay.on_dead_letter = on_dead_letter;
    config
        .sink
        .kafka
        .librdkafka_options
        .0
        .insert("message.max.bytes".into(), "2000".into());

    // When a 5,000-byte event sits between two small ones of the same aggregate
    migrate(&config).await;
    let client = connect(&db.url).await;
    client
        .execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             SELECT 'order', agg, 'Step', jsonb_build_object('seq', seq, 'pad', repeat('x', pad)) \
             FROM (VALUES ('1', 1, 0), ('1', 2, 5000), ('1', 3, 0), ('2', 1, 0)) AS v(agg, seq, pad) \
             ORDER BY agg, seq",
            &[],
        )
        .await
        .unwrap();
    let relay = InProcessRelay::start(&config).await;
    let records = kafka.read_topic(&topic, 2, WAIT).await;
    assert!(
        records.iter().any(|r| r.key == "2"),
        "aggregate 2 never arrived"
    );
    wait_until_failed(&db, 1).await;
    wait_pending(&db, settled).await;
    // All four rows were committed before the relay started, so they went out in one batch:
    // once that batch is settled (stopping the relay settles what it has in flight), the
    // event behind the dead letter has had its one chance to overtake it.
    relay.stop().await;
    assert_eq!(
        pending_rows(&db).await,
        settled,
        "pending after the relay stopped"
    );
    let failed: String = client
        .query_one(
            "SELECT last_error FROM outbox WHERE failed_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    eprintln!("oversize: {failed}");
    assert!(failed.contains(&format!("topic \"{topic}\"")), "{failed}");
    assert!(failed.to_lowercase().contains("too large"), "{failed}");
    let expected = if on_dead_letter == OnDeadLetter::Skip {
        3
    } else {
        2
    };
    let mut records = kafka.read_topic(&topic, expected, WAIT).await;
    records.sort_by_key(|record| record.offset);
    let of_aggregate_1 = records
        .iter()
        .filter(|record| record.key == "1")
        .map(Received::seq)
        .collect();
    (failed, of_aggregate_1)
}

/// Waits until `count` rows are marked failed.
async fn wait_until_failed(db: &TestDb, count: i64) {
    let deadline = std::time::Instant::now() + WAIT;
    while failed_rows(db).await < count {
        assert!(std::time::Instant::now() < deadline, "no row marked failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rows neither sent nor failed.
async fn pending_rows(db: &TestDb) -> i64 {
    connect(&db.url)
        .await
        .query_one(
            "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits until exactly `pending` rows are neither sent nor failed.
async fn wait_pending(db: &TestDb, pending: i64) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = pending_rows(db).await;
        if now == pending {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{now} rows pending, expected {pending}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_event_is_dead_lettered_and_blocks_only_its_own_aggregate() {
    // Then (default block_aggregate) it is marked failed with Kafka's reason, the event before it
    // and the other aggregate arrive, and the event after it waits for an operator
    let (_, of_aggregate_1) = relay_an_oversize_event(OnDeadLetter::BlockAggregate, 1).await;
    assert_eq!(of_aggregate_1, [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_event_is_dead_lettered_and_with_skip_the_later_events_flow() {
    // Then (skip) it is marked failed with Kafka's reason and both small events arrive in order
    let (_, of_aggregate_1) = relay_an_oversize_event(OnDeadLetter::Skip, 0).await;
    assert_eq!(of_aggregate_1, [1, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_an_error_naming_it() {
    // Given a fixed topic that does not exist
    let kafka = TestKafka::start(1);
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    let topic = TestKafka::unique_topic("missing");
    kafka.configure(&mut config, &topic);

    // When the sink opens, then it fails naming the topic and how to fix it
    let Err(err) = AnySink::open(&config.sink, &outboxd::cli::run::sink_context(&config)).await
    else {
        panic!("a missing topic was accepted")
    };
    let line = err.chain();
    eprintln!("missing topic: {line}");
    assert!(
        line.contains(&format!("\"{topic}\" does not exist")),
        "{line}"
    );
    assert!(line.contains("sink.kafka.create_topics"), "{line}");

    // And the binary stops at start-up with that one error line
    let path = write_config(&config, dir.path(), "missing-topic");
    let (code, _, stderr) = run_cli(&path, &["run"]);
    assert_ne!(code, 0, "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains(&format!("\"{topic}\" does not exist")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_topics_creates_a_missing_topic() {
    let kafka = TestKafka::start(1);
    if kafka.mock.is_some() {
        eprintln!(
            "skipped create_topics_creates_a_missing_topic: the mock cluster has no CreateTopics"
        );
        return;
    }
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    let topic = TestKafka::unique_topic("created");
    kafka.configure(&mut config, &topic);
    config.sink.kafka.create_topics = true;
    config.sink.kafka.topic_partitions = 3;
    config.sink.kafka.topic_replication_factor = 1;
    let sink = AnySink::open(&config.sink, &outboxd::cli::run::sink_context(&config))
        .await
        .expect("open creates the topic");
    assert!(sink.is_healthy());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_at_start_up_is_one_clear_error() {
    let mut config = outboxd::config::Config::default();
    config.sink.kind = SinkKind::Kafka;
    config.sink.kafka.bootstrap_servers = "127.0.0.1:1".into();
    let Err(err) = AnySink::open(&config.sink, &outboxd::cli::run::sink_context(&config)).await
    else {
        panic!("an unreachable cluster was accepted")
    };
    assert_eq!(err.kind(), ErrorKind::SinkUnavailable, "{}", err.chain());
    assert!(
        err.chain()
            .starts_with("connecting to Kafka at 127.0.0.1:1"),
        "{}",
        err.chain()
    );
}

#[test]
fn a_librdkafka_option_that_a_typed_option_sets_is_a_config_error_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    for (key, expected) in [
        (
            "acks",
            "sink.kafka.librdkafka_options.\"acks\": is set by sink.kafka (acks=all is \
             required for at-least-once)",
        ),
        (
            "\"compression.type\"",
            "sink.kafka.librdkafka_options.\"compression.type\": is set by \
             sink.kafka.compression; set that instead",
        ),
    ] {
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!("[sink]\ntype = \"kafka\"\n[sink.kafka.librdkafka_options]\n{key} = \"1\"\n"),
        )
        .unwrap();
        let (code, _, stderr) = run_cli(&path, &["check-config"]);
        assert_ne!(code, 0, "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
}

#[test]
fn check_config_masks_the_sasl_password_and_secret_options() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[sink]\ntype = \"kafka\"\n[sink.kafka]\nsecurity_protocol = \"sasl_ssl\"\n\
         sasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"app\"\nsasl_password = \"hunter2\"\n\
         [sink.kafka.librdkafka_options]\n\"ssl.key.password\" = \"s3cret\"\n\"linger.ms\" = \"5\"\n",
    )
    .unwrap();
    let (code, stdout, stderr) = run_cli(&path, &["check-config"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !stdout.contains("hunter2") && !stdout.contains("s3cret"),
        "{stdout}"
    );
    assert!(stdout.contains("sasl_password = \"********\""), "{stdout}");
    assert!(stdout.contains("\"linger.ms\" = \"5\""), "{stdout}");
    assert!(
        stdout.contains("topic = \"outbox.event.{aggregatetype}\""),
        "{stdout}"
    );
}
