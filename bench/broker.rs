//! Brokers for `bench/run.sh`.
//!
//! - `bench_broker kafka-mock TOPIC PARTITIONS`: starts librdkafka's mock cluster (one broker,
//!   the real protocol over loopback TCP), creates TOPIC, prints `bootstrap=HOST:PORT` and
//!   keeps running until stdin closes or it is killed.
//! - `bench_broker kafka-count BOOTSTRAP TOPIC`: prints how many records were ever appended to
//!   TOPIC, the sum of its partitions' high watermarks (the mock cluster drops old segments,
//!   so the low watermark moves: a 1,000,000-record run keeps only the last ~75,000).
//! - `bench_broker amqp-setup URL EXCHANGE QUEUE`: declares a durable topic exchange and a
//!   durable queue bound to it with `#`, purging the queue. More arguments `KEY=VALUE` are
//!   queue arguments (e.g. `x-queue-version=2`, `x-queue-type=quorum`).
//! - `bench_broker amqp-count URL QUEUE`: prints the queue's message count.
//! - `bench_broker amqp-delete URL EXCHANGE QUEUE`: deletes both.
//! - `bench_broker amqp-ceiling URL EXCHANGE MESSAGES CONNECTIONS`: RabbitMQ's own rate on this
//!   machine, without outboxd: MESSAGES persistent ~300-byte messages with publisher confirms,
//!   spread over CONNECTIONS connections, each keeping up to 1,000 unconfirmed; prints
//!   `messages/s`. A last argument `transient` sends them non-persistent, to tell the broker's
//!   disk work from the rest.
//! - `bench_broker nats-count URL STREAM`: prints how many messages STREAM holds.
//! - `bench_broker nats-delete URL STREAM`: deletes it.
//! - `bench_broker nats-ceiling URL MESSAGES`: JetStream's own rate on this machine, without
//!   outboxd: MESSAGES messages shaped as the relay's (~300-byte body, `Nats-Msg-Id` and
//!   outboxd's five headers), acknowledged, from one connection with up to 1,000
//!   unacknowledged, into a fresh file stream; prints `messages/s`.

mod broker_nats;

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
        ["amqp-setup", url, exchange, queue, ref args @ ..] => amqp(url, |channel| async move {
            let mut arguments = FieldTable::default();
            for arg in args {
                let (key, value) = arg.split_once('=').expect("queue argument KEY=VALUE");
                let value = match value.parse::<i64>() {
                    Ok(number) => lapin::types::AMQPValue::LongLongInt(number),
                    Err(_) => lapin::types::AMQPValue::LongString(value.into()),
                };
                arguments.insert(key.into(), value);
            }
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
                    arguments,
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
        [
            "amqp-ceiling",
            url,
            exchange,
            messages,
            connections,
            ref mode @ ..,
        ] => amqp_ceiling(
            url,
            exchange,
            messages.parse().expect("count"),
            connections.parse().expect("count"),
            mode != ["transient"],
        ),
        ["nats-count", url, stream] => {
            broker_nats::with_jetstream(url, |js| broker_nats::count(js, stream))
        }
        ["nats-delete", url, stream] => broker_nats::with_jetstream(url, |js| async move {
            js.delete_stream(stream).await.expect("delete stream");
        }),
        ["nats-ceiling", url, messages] => broker_nats::with_jetstream(url, |js| {
            broker_nats::ceiling(js, messages.parse().expect("count"))
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

/// Publishes `messages` over `connections` connections as fast as RabbitMQ confirms them and
/// prints the rate: the broker's ceiling for the relay's kind of traffic.
fn amqp_ceiling(url: &str, exchange: &str, messages: usize, connections: usize, persistent: bool) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let body = format!("{{\"seq\": 1, \"pad\": \"{}\"}}", "x".repeat(270));
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for lane in 0..connections {
            let (url, exchange, body) = (url.to_owned(), exchange.to_owned(), body.clone());
            let share = messages / connections + usize::from(lane < messages % connections);
            tasks.push(tokio::spawn(async move {
                let connection = Connection::connect(&url, ConnectionProperties::default())
                    .await
                    .expect("connect to RabbitMQ");
                let channel = connection.create_channel().await.expect("channel");
                channel
                    .confirm_select(lapin::options::ConfirmSelectOptions::default())
                    .await
                    .expect("confirm mode");
                let mut unconfirmed = std::collections::VecDeque::new();
                for n in 0..share {
                    if unconfirmed.len() >= 1000 {
                        let confirm: lapin::PublisherConfirm =
                            unconfirmed.pop_front().expect("one");
                        confirm.await.expect("confirm");
                    }
                    let properties = lapin::BasicProperties::default()
                        .with_delivery_mode(if persistent { 2 } else { 1 })
                        .with_message_id(format!("{lane}-{n}").into())
                        .with_content_type("application/json".into());
                    let confirm = channel
                        .basic_publish(
                            exchange.as_str().into(),
                            "order".into(),
                            lapin::options::BasicPublishOptions {
                                mandatory: true,
                                ..Default::default()
                            },
                            body.as_bytes(),
                            properties,
                        )
                        .await
                        .expect("publish");
                    unconfirmed.push_back(confirm);
                }
                for confirm in unconfirmed {
                    confirm.await.expect("confirm");
                }
                let _ = connection.close(200, "done".into()).await;
            }));
        }
        for task in tasks {
            task.await.expect("publisher");
        }
        let rate = messages as f64 / started.elapsed().as_secs_f64();
        println!("{}", rate as u64);
    });
}
