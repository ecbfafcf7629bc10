//! An SQS/SNS emulator for the tests: a private `moto_server` (PyPI `moto[server]`) per test on
//! a free port, dummy credentials for the relay, and clients that create queues and topics
//! and read back what the relay sent. Without `moto_server` a test is skipped, except under
//! `CI=true`, where that fails it.

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, QueueAttributeName,
};
use outboxd::config::Config;
use outboxd::sink::SinkKind;
use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// The account moto gives every queue and topic.
pub const ACCOUNT: &str = "123456789012";

/// The region the tests use.
pub const REGION: &str = "us-east-1";

/// A `moto_server` of a test's own; killed on drop.
pub struct Moto {
    /// The process.
    child: Child,
    /// Where it listens, `127.0.0.1:<port>`.
    pub addr: String,
}

impl Moto {
    /// Its endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a `moto_server` on a free port and waits until it answers; `None` (after saying
/// why) when it is not installed, unless `CI=true`. Also puts dummy credentials and the
/// region in this process's environment, which relay processes inherit.
pub fn moto() -> Option<Moto> {
    dummy_credentials();
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("free port");
    let spawned = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(err) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipped: moto_server not available ({err}); pip install 'moto[server]'");
            return None;
        }
        Err(err) => panic!("moto_server not available under CI=true: {err}"),
    };
    let moto = Moto {
        child,
        addr: format!("127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&moto.addr).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(moto)
}

/// Dummy credentials and the region, in the environment the standard chain reads.
fn dummy_credentials() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: set once, before any relay of this test binary reads the environment, and
        // only to the same values; no C code of the tests reads these variables.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
            std::env::set_var("AWS_REGION", REGION);
            std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        }
    });
}

/// Points `config`'s sink at SQS through `endpoint`, queue URLs from `queue_url` (calls may
/// take 30 s: moto is slow on a busy machine).
pub fn configure_sqs(config: &mut Config, endpoint: &str, queue_url: &str) {
    config.sink.kind = SinkKind::Sqs;
    config.sink.sqs.queue_url = queue_url.to_string();
    config.sink.sqs.endpoint_url = Some(endpoint.to_string());
    config.sink.sqs.region = Some(REGION.to_string());
    config.sink.sqs.timeout_ms = 30_000;
}

/// Points `config`'s sink at SNS through `endpoint`, topic ARNs from `topic_arn`.
pub fn configure_sns(config: &mut Config, endpoint: &str, topic_arn: &str) {
    config.sink.kind = SinkKind::Sns;
    config.sink.sns.topic_arn = topic_arn.to_string();
    config.sink.sns.endpoint_url = Some(endpoint.to_string());
    config.sink.sns.region = Some(REGION.to_string());
    config.sink.sns.timeout_ms = 30_000;
}

/// A unique prefix for a test's queue and topic names.
pub fn unique_prefix() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// The queue URL of `name` as the relay addresses it through `endpoint`.
pub fn queue_url(endpoint: &str, name: &str) -> String {
    format!("{endpoint}/{ACCOUNT}/{name}")
}

/// The topic ARN of `name`.
pub fn topic_arn(name: &str) -> String {
    format!("arn:aws:sns:{REGION}:{ACCOUNT}:{name}")
}

/// Test clients on moto (straight, not through any proxy).
pub struct Clients {
    /// SQS.
    pub sqs: aws_sdk_sqs::Client,
    /// SNS.
    pub sns: aws_sdk_sns::Client,
}

impl Clients {
    /// Clients of `moto` with the dummy credentials.
    pub fn new(moto: &Moto) -> Clients {
        let http = aws_smithy_http_client::Builder::new().build_http();
        let credentials = Credentials::new("testing", "testing", None, None, "tests");
        let sqs = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(moto.endpoint())
            .credentials_provider(credentials.clone())
            .http_client(http.clone())
            .build();
        let sns = aws_sdk_sns::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(aws_sdk_sns::config::Region::new(REGION))
            .endpoint_url(moto.endpoint())
            .credentials_provider(credentials)
            .http_client(http)
            .build();
        Clients {
            sqs: aws_sdk_sqs::Client::from_conf(sqs),
            sns: aws_sdk_sns::Client::from_conf(sns),
        }
    }

    /// Creates the queue `name` (FIFO if it ends in `.fifo`); returns its URL at moto.
    pub async fn create_queue(&self, name: &str) -> String {
        let mut request = self.sqs.create_queue().queue_name(name);
        if name.ends_with(".fifo") {
            request = request.attributes(QueueAttributeName::FifoQueue, "true");
        }
        let created = request.send().await.expect("CreateQueue");
        created.queue_url().expect("queue URL").to_string()
    }

    /// Creates the topic `name` and subscribes a new queue to it with raw message delivery
    /// (the message and its attributes as published); returns the queue's URL.
    pub async fn create_topic_with_queue(&self, name: &str) -> String {
        let mut request = self.sns.create_topic().name(name);
        if name.ends_with(".fifo") {
            request = request.attributes("FifoTopic", "true");
        }
        let topic = request.send().await.expect("CreateTopic");
        let queue = self.create_queue(&format!("{name}-sub")).await;
        let arn = self
            .sqs
            .get_queue_attributes()
            .queue_url(&queue)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("GetQueueAttributes");
        let arn = arn.attributes().expect("attributes")[&QueueAttributeName::QueueArn].clone();
        self.sns
            .subscribe()
            .topic_arn(topic.topic_arn().expect("topic ARN"))
            .protocol("sqs")
            .endpoint(arn)
            .attributes("RawMessageDelivery", "true")
            .send()
            .await
            .expect("Subscribe");
        queue
    }

    /// Receives and deletes every message now in the queue `url`, in the order received.
    pub async fn drain(&self, url: &str) -> Vec<Received> {
        drain(&self.sqs, url).await
    }
}

/// Receives and deletes every message now in the queue `url`, in the order received.
async fn drain(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<Received> {
    let mut all = Vec::new();
    let mut empty = 0;
    while empty < 3 {
        let more = receive_once(sqs, url).await;
        if more.is_empty() {
            empty += 1;
        }
        all.extend(more);
    }
    all
}

/// Receives up to 10 messages from the queue `url` and deletes them.
async fn receive_once(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<Received> {
    let reply = sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .message_attribute_names("All")
        .visibility_timeout(600)
        .send()
        .await
        .expect("ReceiveMessage");
    let messages = reply.messages();
    if messages.is_empty() {
        return Vec::new();
    }
    let mut received = Vec::new();
    let mut deletes = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        let attributes = message
            .message_attributes()
            .map(|map| map.iter().map(|(k, v)| (k.clone(), text(v))).collect())
            .unwrap_or_default();
        received.push(Received {
            body: message.body().unwrap_or("").to_string(),
            attributes,
        });
        let handle = message.receipt_handle().expect("receipt handle");
        deletes.push(
            DeleteMessageBatchRequestEntry::builder()
                .id(index.to_string())
                .receipt_handle(handle)
                .build()
                .expect("delete entry"),
        );
    }
    sqs.delete_message_batch()
        .queue_url(url)
        .set_entries(Some(deletes))
        .send()
        .await
        .expect("DeleteMessageBatch");
    received
}

/// Reads a standard queue continuously while a scenario runs, so it stays short: moto reckons
/// a queue's attributes (a pass over every message held) for each message sent, which makes a
/// queue of 10,000 messages take minutes to fill.
pub struct Drainer {
    /// The client.
    sqs: aws_sdk_sqs::Client,
    /// The queue.
    url: String,
    /// Stops the background reader.
    stop: tokio_util::sync::CancellationToken,
    /// The background reader, until stopped; it returns what it read.
    task: Option<tokio::task::JoinHandle<Vec<Received>>>,
    /// Everything read once the reader stopped, in the order received.
    received: Vec<Received>,
}

impl Drainer {
    /// Starts reading the queue `url` in the background.
    pub fn start(sqs: aws_sdk_sqs::Client, url: String) -> Drainer {
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn({
            let (sqs, url, stop) = (sqs.clone(), url.clone(), stop.clone());
            async move {
                let mut all = Vec::new();
                // (checked between receives only, so what a receive took is always kept)
                while !stop.is_cancelled() {
                    let more = receive_once(&sqs, &url).await;
                    if more.is_empty() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    all.extend(more);
                }
                all
            }
        });
        Drainer {
            sqs,
            url,
            stop,
            task: Some(task),
            received: Vec::new(),
        }
    }

    /// Everything the queue received so far, in order: stops the background reader, then
    /// reads what is left.
    pub async fn all(&mut self) -> &[Received] {
        if let Some(task) = self.task.take() {
            self.stop.cancel();
            self.received.extend(task.await.expect("queue reader"));
        }
        let more = drain(&self.sqs, &self.url).await;
        self.received.extend(more);
        &self.received
    }
}

impl Drop for Drainer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An attribute's value as text.
fn text(value: &MessageAttributeValue) -> String {
    value.string_value().unwrap_or("").to_string()
}

/// One message read back.
#[derive(Debug, Clone)]
pub struct Received {
    /// The body (the event's payload).
    pub body: String,
    /// Its attributes, name to value.
    pub attributes: HashMap<String, String>,
}

impl Received {
    /// The attribute `name`.
    pub fn attribute(&self, name: &str) -> &str {
        self.attributes.get(name).map(String::as_str).expect(name)
    }

    /// The `seq` of the JSON payload.
    pub fn seq(&self) -> i64 {
        let body: serde_json::Value = serde_json::from_str(&self.body).expect("JSON body");
        body["seq"].as_i64().expect("seq in payload")
    }

    /// As the conformance suite reads an event back (one ordered stream).
    pub fn delivered(&self) -> super::conformance::Delivered {
        super::conformance::Delivered {
            id: self.attribute("id").to_string(),
            key: self.attribute("aggregateid").to_string(),
            seq: self.seq(),
            stream: 0,
        }
    }

    /// As the conformance suite reads a change event back (its payload, the envelope, parsed).
    pub fn change(&self) -> super::conformance::DeliveredChange {
        super::conformance::DeliveredChange {
            id: self.attribute("id").to_string(),
            key: self.attribute("aggregateid").to_string(),
            payload: serde_json::from_str(&self.body).expect("JSON payload"),
            stream: 0,
        }
    }
}
