//! NATS JetStream for the tests: the real server at 127.0.0.1:4222 (`nats-server -js`), a
//! stream of each test's own, and reading back every message a stream holds.

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use futures_util::StreamExt;
use outboxd::config::{Config, DbUrl};
use outboxd::sink::SinkKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Where the shared server listens.
pub const NATS_ADDR: &str = "127.0.0.1:4222";

/// A JetStream context on the shared server if it answers. When it does not, the test is
/// skipped with a note, except under `CI=true`, where a missing server fails the test instead
/// of hiding it.
pub async fn nats() -> Option<Context> {
    let attempt = tokio::time::timeout(
        Duration::from_secs(5),
        async_nats::connect(format!("nats://{NATS_ADDR}")),
    )
    .await;
    match attempt {
        Ok(Ok(client)) => Some(jetstream::new(client)),
        failed if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipped: NATS not reachable at {NATS_ADDR} ({failed:?})");
            None
        }
        failed => panic!("NATS not reachable under CI=true: {failed:?}"),
    }
}

/// One message as a stream holds it.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its subject.
    pub subject: String,
    /// Its stream sequence.
    pub sequence: u64,
    /// Its headers, name and value.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub payload: Vec<u8>,
}

impl Stored {
    /// The header `name`'s value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The `seq` field of the JSON body.
    pub fn seq(&self) -> i64 {
        let body: serde_json::Value = serde_json::from_slice(&self.payload).expect("JSON body");
        body["seq"].as_i64().expect("seq in body")
    }
}

/// A stream of a test's own, on subjects `<prefix>.>`, file storage, `discard: new` (so a
/// limit set later pushes back instead of dropping old messages), and a 10-minute duplicate
/// window (longer than any test, so every repeat within a test is dropped).
pub struct TestStream {
    /// JetStream on the shared server.
    pub js: Context,
    /// The stream's name.
    pub name: String,
    /// The first token of its subjects.
    pub prefix: String,
}

impl TestStream {
    /// Creates the stream.
    pub async fn create(js: &Context) -> TestStream {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let stream = TestStream {
            js: js.clone(),
            name: format!("T{}", &id[..12]),
            prefix: format!("t{}", &id[..12]),
        };
        // The server answers a failure to make a stream's files with one fixed sentence
        // ("error creating store for stream", code 10049) and logs the cause only to its own
        // log; it has been seen once in a CI run. Try again a few times, and if it persists,
        // fail naming the free disk space, the likeliest cause on a shared machine.
        let mut attempt = 0;
        loop {
            match js.create_stream(stream.config(-1)).await {
                Ok(_) => return stream,
                Err(err) if attempt < 5 => {
                    eprintln!("create test stream {}: {err}; trying again", stream.name);
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                Err(err) => panic!(
                    "create test stream {} (6 attempts): {err}; free disk space:\n{}",
                    stream.name,
                    free_space()
                ),
            }
        }
    }

    /// The stream's configuration with `max_messages` (-1: unlimited).
    fn config(&self, max_messages: i64) -> StreamConfig {
        StreamConfig {
            name: self.name.clone(),
            subjects: vec![format!("{}.>", self.prefix)],
            storage: StorageType::File,
            discard: DiscardPolicy::New,
            max_messages,
            duplicate_window: Duration::from_secs(600),
            ..StreamConfig::default()
        }
    }

    /// Caps the stream at `max_messages` (-1: no cap).
    pub async fn limit(&self, max_messages: i64) {
        self.js
            .update_stream(self.config(max_messages))
            .await
            .expect("update test stream");
    }

    /// Points `config`'s sink at this stream through `url`, subject
    /// `<prefix>.{aggregatetype}.{type}`.
    pub fn configure(&self, config: &mut Config, url: &str) {
        config.sink.kind = SinkKind::Nats;
        config.sink.nats.url = DbUrl::new(url);
        config.sink.nats.subject = format!("{}.{{aggregatetype}}.{{type}}", self.prefix);
        config.sink.nats.stream = Some(self.name.clone());
    }

    /// How many messages the stream holds.
    pub async fn count(&self) -> u64 {
        let mut stream = self.js.get_stream(&self.name).await.expect("get stream");
        stream.info().await.expect("stream info").state.messages
    }

    /// Every message the stream holds, in stream order; panics if they cannot all be read
    /// within `timeout`.
    pub async fn read_all(&self, timeout: Duration) -> Vec<Stored> {
        let stream = self.js.get_stream(&self.name).await.expect("get stream");
        let expected = self.count().await as usize;
        if expected == 0 {
            return Vec::new();
        }
        let consumer = stream
            .create_consumer(OrderedConfig::default())
            .await
            .expect("ordered consumer");
        let mut messages = consumer.messages().await.expect("consume");
        let deadline = Instant::now() + timeout;
        let mut read = Vec::with_capacity(expected);
        while read.len() < expected {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(left, messages.next())
                .await
                .unwrap_or_else(|_| panic!("read {} of {expected} messages", read.len()))
                .expect("message stream ended")
                .expect("message");
            let sequence = next.info().expect("message info").stream_sequence;
            let headers = next
                .headers
                .as_ref()
                .map(|headers| {
                    headers
                        .iter()
                        .flat_map(|(name, values)| {
                            values
                                .iter()
                                .map(move |value| (name.to_string(), value.to_string()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            read.push(Stored {
                subject: next.subject.to_string(),
                sequence,
                headers,
                payload: next.payload.to_vec(),
            });
        }
        read
    }

    /// Deletes the stream.
    pub async fn delete(self) {
        let _ = self.js.delete_stream(&self.name).await;
    }
}

/// The shared server's address.
pub fn server_addr() -> SocketAddr {
    NATS_ADDR.parse().expect("NATS address")
}

/// `df -h` of the file systems the server and the tests write to, for a failure message.
fn free_space() -> String {
    std::process::Command::new("df")
        .args(["-h", "/var/lib", "/tmp", "."])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_else(|err| format!("(df failed: {err})"))
}
