//! RabbitMQ for the tests: the broker at 127.0.0.1:5672 (or `OUTBOXD_TEST_AMQP_URL`), a uniquely
//! named exchange and queue per test, a private vhost when a test closes connections, and the
//! messages read back.

use super::pg::{TestDb, connect};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind, message::Delivery};
use outboxd::config::{Config, DbUrl, SinkKind};
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::Command;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The broker the tests use unless `OUTBOXD_TEST_AMQP_URL` names another.
const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The broker's base URL (user, password, host, port), without a vhost.
fn base_url() -> String {
    let url = std::env::var("OUTBOXD_TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.into());
    url.trim_end_matches("/%2f")
        .trim_end_matches('/')
        .to_string()
}

/// The default vhost's URL if RabbitMQ answers. When it does not, the test is skipped with a
/// note, except under `CI=true`, where a missing broker fails the test instead of hiding it.
pub async fn rabbit() -> Option<String> {
    let url = format!("{}/%2f", base_url());
    match Connection::connect(&url, ConnectionProperties::default()).await {
        Ok(connection) => {
            let _ = connection.close(200, "probe".into()).await;
            Some(url)
        }
        Err(err) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipped: RabbitMQ not reachable at 127.0.0.1:5672 ({err})");
            None
        }
        Err(err) => panic!("RabbitMQ not reachable under CI=true: {err}"),
    }
}

/// Runs `rabbitmqctl <args>` and panics with its output if it fails.
pub fn rabbitmqctl(args: &[&str]) {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("run rabbitmqctl");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A private vhost, so a test can close every connection in it without disturbing others.
pub struct Vhost {
    /// The vhost's name.
    pub name: String,
    /// A URL to it, as guest.
    pub url: String,
}

impl Vhost {
    /// Creates a uniquely named vhost that guest may use.
    pub async fn create() -> Vhost {
        let name = format!("outboxd-test-{}", Uuid::new_v4().simple());
        let ctl = name.clone();
        tokio::task::spawn_blocking(move || {
            rabbitmqctl(&["add_vhost", &ctl]);
            rabbitmqctl(&["set_permissions", "-p", &ctl, "guest", ".*", ".*", ".*"]);
        })
        .await
        .expect("create vhost");
        let url = format!("{}/{name}", base_url());
        Vhost { name, url }
    }

    /// Force-closes every client connection to this vhost, as a broker restart or a network
    /// cut would.
    pub async fn close_all_connections(&self) {
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || {
            rabbitmqctl(&["close_all_connections", "--vhost", &name, "test"]);
        })
        .await
        .expect("close connections");
    }

    /// Deletes the vhost and everything in it.
    pub async fn delete(self) {
        tokio::task::spawn_blocking(move || rabbitmqctl(&["delete_vhost", &self.name]))
            .await
            .expect("delete vhost");
    }
}

/// A uniquely named durable topic exchange and a queue bound to it.
pub struct Topology {
    /// URL of the vhost they live in.
    pub url: String,
    /// The exchange's name.
    pub exchange: String,
    /// The queue's name.
    pub queue: String,
}

impl Topology {
    /// Declares the exchange and a durable queue bound with `binding_key`.
    pub async fn declare(url: &str, binding_key: &str) -> Topology {
        Topology::declare_with(url, binding_key, FieldTable::default()).await
    }

    /// Like [`Topology::declare`], with queue arguments (`x-max-length` and such).
    pub async fn declare_with(url: &str, binding_key: &str, queue_args: FieldTable) -> Topology {
        let suffix = Uuid::new_v4().simple().to_string();
        let topology = Topology {
            url: url.to_string(),
            exchange: format!("outboxd-test-x-{suffix}"),
            queue: format!("outboxd-test-q-{suffix}"),
        };
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.expect("channel");
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                topology.exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .expect("declare exchange");
        let queue = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(topology.queue.as_str().into(), queue, queue_args)
            .await
            .expect("declare queue");
        channel
            .queue_bind(
                topology.queue.as_str().into(),
                topology.exchange.as_str().into(),
                binding_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind queue");
        topology
    }

    /// Binds this queue to the exchange with `binding_key` too.
    pub async fn bind(&self, binding_key: &str) {
        let connection = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                binding_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind queue");
        let _ = connection.close(200, "done".into()).await;
    }

    /// Another uniquely named durable queue with `queue_args`, bound to this exchange with
    /// `binding_key`, as a topology of its own (deleting it deletes the shared exchange too).
    pub async fn another_queue(&self, binding_key: &str, queue_args: FieldTable) -> Topology {
        let topology = Topology {
            url: self.url.clone(),
            exchange: self.exchange.clone(),
            queue: format!("outboxd-test-q-{}", Uuid::new_v4().simple()),
        };
        let connection = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.expect("channel");
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(topology.queue.as_str().into(), durable, queue_args)
            .await
            .expect("declare queue");
        let _ = connection.close(200, "done".into()).await;
        topology.bind(binding_key).await;
        topology
    }

    /// Publishes `body` to the exchange with `routing_key` and waits for the broker's ack
    /// (panics on a nack).
    pub async fn publish(&self, routing_key: &str, body: &[u8]) {
        let connection = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        let confirm = channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "the broker nacked the test's message");
        let _ = connection.close(200, "done".into()).await;
    }

    /// Points `config`'s sink at this exchange.
    pub fn configure(&self, config: &mut Config) {
        config.sink.kind = SinkKind::Amqp;
        config.sink.amqp.url = DbUrl::new(self.url.clone());
        config.sink.amqp.exchange = self.exchange.clone();
    }

    /// Reads `count` messages off the queue, acknowledging each, or panics with how many came
    /// within `timeout`. Messages the broker pushed beyond `count` are left unacknowledged, so
    /// they go back to the queue when the connection closes.
    pub async fn consume(&self, count: usize, timeout: Duration) -> Vec<Delivery> {
        let connection = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .basic_qos(1000, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut consumer = channel
            .basic_consume(
                self.queue.as_str().into(),
                "outboxd-test".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let mut messages = Vec::with_capacity(count);
        let deadline = Instant::now() + timeout;
        while messages.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, consumer.next()).await {
                Ok(Some(delivery)) => {
                    let delivery = delivery.expect("delivery");
                    delivery.ack(BasicAckOptions::default()).await.expect("ack");
                    messages.push(delivery);
                }
                _ => panic!(
                    "only {} of {count} messages within {timeout:?}",
                    messages.len()
                ),
            }
        }
        let _ = connection.close(200, "done".into()).await;
        messages
    }

    /// Reads every message in the queue. Call once every row is settled: a confirmed message
    /// is already enqueued, so the queue's depth is then final.
    pub async fn consume_all(&self, timeout: Duration) -> Vec<Delivery> {
        let depth = self.depth().await;
        self.consume(depth, timeout).await
    }

    /// How many messages the queue holds now (ready ones; unacknowledged deliveries not).
    pub async fn depth(&self) -> usize {
        let connection = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.expect("channel");
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare(self.queue.as_str().into(), passive, FieldTable::default())
            .await
            .expect("queue depth");
        let _ = connection.close(200, "done".into()).await;
        queue.message_count() as usize
    }

    /// Deletes the queue alone (the exchange stays, for a topology from
    /// [`Topology::another_queue`]).
    pub async fn delete_queue(self) {
        let connection = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("delete queue");
        let _ = connection.close(200, "done".into()).await;
    }

    /// Deletes the queue and the exchange.
    pub async fn delete(self) {
        let connection = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.expect("channel");
        let _ = channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

/// Waits until no outbox row is pending (every row sent or failed) and at least `count` rows
/// exist; panics if `timeout` passes first.
pub async fn wait_settled(db: &TestDb, count: i64, timeout: Duration) {
    let client = connect(&db.url).await;
    let deadline = Instant::now() + timeout;
    loop {
        let row = client
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE sent_at IS NULL AND failed_at IS NULL) \
                 FROM outbox",
                &[],
            )
            .await
            .expect("count rows");
        let (total, pending): (i64, i64) = (row.get(0), row.get(1));
        if total >= count && pending == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} of {total} rows still pending after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A message's header `name` as text.
pub fn header(message: &Delivery, name: &str) -> Option<String> {
    let headers = message.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(text) => Some(text.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// The `seq` field of a message's JSON body.
pub fn message_seq(message: &Delivery) -> i64 {
    let body: serde_json::Value = serde_json::from_slice(&message.data).expect("JSON body");
    body["seq"].as_i64().expect("seq in body")
}

/// The message id (the event id).
pub fn id_of(message: &Delivery) -> String {
    message
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string())
        .expect("message_id")
}

/// Checks per-aggregate order as the queue delivered it: ignoring repeats of events already
/// seen (republished after a lost connection), each aggregate's sequence increases by exactly
/// one. Returns (distinct events, repeats).
pub fn assert_queue_order(messages: &[Delivery]) -> (usize, usize) {
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut repeats = 0;
    for (index, message) in messages.iter().enumerate() {
        if !seen.insert(id_of(message)) {
            repeats += 1;
            continue;
        }
        let aggregate = header(message, "aggregateid").expect("aggregateid header");
        let seq = message_seq(message);
        let previous = last.insert(aggregate.clone(), seq).unwrap_or(0);
        assert_eq!(
            seq,
            previous + 1,
            "aggregate {aggregate} out of order at message {index}: seq {seq} after {previous}"
        );
    }
    (seen.len(), repeats)
}

/// The `host:port` of an `amqp://user:password@host:port/vhost` URL, resolved.
pub fn broker_addr(url: &str) -> SocketAddr {
    let authority = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next());
    let authority = authority.unwrap_or_else(|| panic!("no host:port in {url}"));
    authority
        .to_socket_addrs()
        .expect("resolve broker")
        .next()
        .expect("a broker address")
}

/// `url` with its `host:port` replaced by `addr` (a [`super::proxy::Proxy`]'s).
pub fn url_through(url: &str, addr: SocketAddr) -> String {
    let (credentials, rest) = url.split_once('@').expect("credentials in URL");
    let (_, vhost) = rest.split_once('/').expect("vhost in URL");
    format!("{credentials}@{addr}/{vhost}")
}

/// RabbitMQ's `max_message_size` lowered for as long as this guard lives, then restored. The
/// setting is node-wide and read when a channel opens: only channels opened meanwhile see it, so
/// a test keeps the lowered value above any message other tests send.
pub struct LoweredMaxMessageSize {
    /// The value to restore (the broker's own setting before the test).
    previous: String,
}

impl LoweredMaxMessageSize {
    /// Sets the broker's `max_message_size` to `bytes`.
    pub fn set(bytes: usize) -> LoweredMaxMessageSize {
        let output = Command::new("rabbitmqctl")
            .args(["eval", "application:get_env(rabbit, max_message_size)."])
            .output()
            .expect("run rabbitmqctl");
        let text = String::from_utf8_lossy(&output.stdout);
        // `{ok,134217728}`; `undefined` means the built-in default.
        let previous = text
            .trim()
            .strip_prefix("{ok,")
            .and_then(|rest| rest.strip_suffix('}'))
            .unwrap_or("134217728")
            .to_string();
        set_max_message_size(&bytes.to_string());
        LoweredMaxMessageSize { previous }
    }
}

impl Drop for LoweredMaxMessageSize {
    fn drop(&mut self) {
        set_max_message_size(&self.previous);
    }
}

/// `rabbitmqctl eval` setting `max_message_size`.
fn set_max_message_size(value: &str) {
    rabbitmqctl(&[
        "eval",
        &format!("application:set_env(rabbit, max_message_size, {value})."),
    ]);
}
