//! How many events a SIGKILLed relay delivers again (issue #21): 8 writers, 10,000 events, the
//! relay process SIGKILLed 8 times while they stream, each time after it published a random
//! number of events, into RabbitMQ and into the Kafka mock cluster, in polling and in logical
//! mode. Nothing may be lost and every key stays in order; the repeat counts depend on where
//! each kill lands, so they are printed (for the closing note and docs), not asserted.

mod common;

use common::amqp::{Topology, assert_queue_order, rabbit};
use common::http::get;
use common::kafka::{TestKafka, assert_partition_order};
use common::pg::test_db;
use common::relay::*;
use outboxd::config::{Config, SourceMode};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Events written, as in the black-box run that measured the repeats.
const EVENTS: usize = 10_000;
/// Concurrent writers.
const WRITERS: usize = 8;
/// SIGKILLs while the events stream.
const KILLS: usize = 8;

/// Where the events go and how to read them back.
enum Broker {
    /// A queue bound to the whole exchange.
    Rabbit(Topology),
    /// One topic of the mock cluster (or the real broker, when configured).
    Kafka(TestKafka, String),
}

impl Broker {
    /// RabbitMQ, or `None` (skip) where none runs outside CI.
    async fn rabbit() -> Option<Broker> {
        let url = rabbit().await?;
        Some(Broker::Rabbit(Topology::declare(&url, "#").await))
    }

    /// A fresh topic of 4 partitions.
    async fn kafka() -> Broker {
        let kafka = TestKafka::start(1);
        let topic = TestKafka::unique_topic("repeats");
        kafka.create_topic(&topic, 4).await;
        Broker::Kafka(kafka, topic)
    }

    /// Points the relay at it.
    fn configure(&self, config: &mut Config) {
        match self {
            Broker::Rabbit(topology) => topology.configure(config),
            Broker::Kafka(kafka, topic) => kafka.configure(config, topic),
        }
    }

    /// (distinct events, repeats), checking per-key order on the way.
    async fn tally(&self) -> (usize, usize) {
        let wait = Duration::from_secs(120);
        match self {
            Broker::Rabbit(topology) => assert_queue_order(&topology.consume_all(wait).await),
            Broker::Kafka(kafka, topic) => {
                assert_partition_order(&kafka.read_whole_topic(topic, wait).await)
            }
        }
    }

    /// What the relay process needs in its environment: the written config masks the
    /// broker's password.
    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Broker::Rabbit(topology) => vec![("OUTBOXD_SINK__AMQP__URL", topology.url.clone())],
            Broker::Kafka(..) => Vec::new(),
        }
    }
}

/// Events the relay at `addr` reports published since it started (summed over its labels).
/// `None` once it no longer answers.
async fn published(addr: SocketAddr) -> Option<f64> {
    tokio::net::TcpStream::connect(addr).await.ok()?;
    let (_, metrics) = get(addr, "/metrics").await;
    Some(
        metrics
            .lines()
            .filter(|line| line.starts_with("outboxd_events_published_total"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// Runs the storm in `mode` into `broker`; returns (distinct, repeats).
async fn storm(mode: SourceMode, broker: Broker) -> (usize, usize) {
    // Given 8 writers producing 10,000 events over 100 keys, and a relay process
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(mode, &db, &dir.path().join("log"));
    broker.configure(&mut config);
    migrate(&config).await;
    create_aggregates(&db, 100).await;
    let writers = tokio::spawn({
        let db = db.clone();
        async move { write_events(&db, WRITERS, EVENTS / WRITERS, 100).await }
    });

    // When it is SIGKILLed 8 times, each time after it published 100 to 1,200 more events
    let env = broker.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let spawn =
        |name: &str| RelayProcess::spawn_with_env(&config, dir.path(), name, &["run"], &env);
    for kill in 0..KILLS {
        let mut relay = spawn(&format!("run-{kill}"));
        let addr = relay.http_addr().await;
        let target = 100.0 + fastrand::f64() * 1100.0;
        let reached = wait_until(Duration::from_secs(60), || async {
            published(addr).await.is_none_or(|n| n >= target)
        })
        .await;
        if reached && published(addr).await.is_none() {
            panic!("the relay stopped answering:\n{}", relay.log_text());
        }
        let at_kill = published(addr).await.unwrap_or_default();
        relay.kill();
        if mode == SourceMode::Logical {
            let client = common::pg::connect(&db.url).await;
            let row = client
                .query_one(
                    "SELECT confirmed_flush_lsn::text, pg_current_wal_lsn()::text \
                     FROM pg_replication_slots WHERE slot_name = $1",
                    &[&db.name],
                )
                .await
                .unwrap();
            let (confirmed, current): (String, String) = (row.get(0), row.get(1));
            // How far the slot trails: what a kill here makes the next run deliver again.
            eprintln!(
                "{mode:?} run {kill}: published {at_kill}; slot confirmed {confirmed} of {current}"
            );
        }
    }
    writers.await.unwrap();

    // Then, after a last run, every event is there, each key in order
    let last = spawn("last");
    drained(mode, &db).await;
    last.kill();
    let (distinct, repeats) = broker.tally().await;
    if mode == SourceMode::Logical {
        drop_slot(&db).await;
    }
    (distinct, repeats)
}

/// Waits until the relay settled everything written: every row marked sent in polling mode;
/// in logical mode the slot confirmed past the WAL position the writers left (the slot is
/// confirmed only past what the broker acknowledged).
async fn drained(mode: SourceMode, db: &common::pg::TestDb) {
    if mode == SourceMode::Poll {
        wait_sent_at_least(db, EVENTS as i64).await;
        return;
    }
    let client = common::pg::connect(&db.url).await;
    let end: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let confirmed = wait_until(Duration::from_secs(180), || async {
        client
            .query_one(
                "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&db.name, &end],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
    assert!(confirmed, "the slot did not confirm {end} within 180 s");
}

/// Polls `check` every 20 ms until it holds (true) or `timeout` passes (false).
async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Runs the storm and prints the counts.
async fn run(mode: SourceMode, broker: Option<Broker>, name: &str) {
    let Some(broker) = broker else {
        return;
    };
    let (distinct, repeats) = storm(mode, broker).await;
    println!(
        "repeats: {name}, {mode:?} mode, {KILLS} kills: {distinct} distinct, {repeats} repeats"
    );
    assert_eq!(distinct, EVENTS, "events lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_mode_into_rabbitmq_loses_nothing_over_eight_sigkills() {
    run(SourceMode::Logical, Broker::rabbit().await, "RabbitMQ").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_mode_into_rabbitmq_loses_nothing_over_eight_sigkills() {
    run(SourceMode::Poll, Broker::rabbit().await, "RabbitMQ").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_mode_into_kafka_loses_nothing_over_eight_sigkills() {
    run(SourceMode::Logical, Some(Broker::kafka().await), "Kafka").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_mode_into_kafka_loses_nothing_over_eight_sigkills() {
    run(SourceMode::Poll, Some(Broker::kafka().await), "Kafka").await;
}
