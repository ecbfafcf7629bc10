//! Brokers for `bench/run.sh`.
//!
//! - `bench_broker kafka-mock TOPIC PARTITIONS`: starts librdkafka's mock cluster (one broker,
//!   the real protocol over loopback TCP), creates TOPIC, prints `bootstrap=HOST:PORT` and
//!   keeps running until stdin closes or it is killed.
//! - `bench_broker kafka-count BOOTSTRAP TOPIC`: prints how many records were ever appended to
//!   TOPIC, the sum of its partitions' high watermarks (the mock cluster drops old segments,
//!   so the low watermark moves: a 1,000,000-record run keeps only the last ~75,000).
//! - `bench_broker amqp-setup URL EXCHANGE QUEUE`: declares a durable topic exchange and a
//!   durable queue bound to it with `#`, purging the queue.
//! - `bench_broker amqp-count URL QUEUE`: prints the queue's message count.
//! - `bench_broker amqp-delete URL EXCHANGE QUEUE`: deletes both.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use std::io::{Read, Write};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args[..] {
        ["kafka-mock", topic, partitions] => kafka_mock(topic, partitions.parse().expect("count")),
        ["kafka-count", bootstrap, topic] => println!("{}", kafka_count(bootstrap, topic)),
        ["amqp-setup", url, exchange, queue] => amqp(url, |channel| async move {
            channel
                .exchange_declare(
                    exchange.into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("declare exchange");
            channel
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("declare queue");
            channel
                .queue_bind(
                    queue.into(),
                    exchange.into(),
                    "#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bind");
            channel
                .queue_purge(queue.into(), QueuePurgeOptions::default())
                .await
                .expect("purge");
        }),
        ["amqp-count", url, queue] => amqp(url, |channel| async move {
            let declared = channel
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("queue");
            println!("{}", declared.message_count());
        }),
        ["amqp-delete", url, exchange, queue] => amqp(url, |channel| async move {
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await
                .expect("delete queue");
            channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await
                .expect("delete exchange");
        }),
        _ => {
            eprintln!("usage: see the comment at the top of bench/broker.rs");
            std::process::exit(2);
        }
    }
}

/// Runs the mock cluster until stdin closes.
fn kafka_mock(topic: &str, partitions: i32) {
    let mock = MockCluster::new(1).expect("start mock cluster");
    mock.create_topic(topic, partitions, 1)
        .expect("create topic");
    println!("bootstrap={}", mock.bootstrap_servers());
    std::io::stdout().flush().expect("flush");
    // Block until the parent closes our stdin (or kills us).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(mock);
}

/// Records appended to the fresh `topic`: the sum of its partitions' high watermarks.
fn kafka_count(bootstrap: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "outboxd-bench")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|partition| {
            let (_low, high) = consumer
                .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
                .expect("watermarks");
            high
        })
        .sum()
}

/// Runs `work` on a channel of a connection to `url`.
fn amqp<F, Fut>(url: &str, work: F)
where
    F: FnOnce(Channel) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.expect("channel");
        work(channel).await;
        let _ = connection.close(200, "done".into()).await;
    });
}
