//! Redis for the tests: the real server at 127.0.0.1:6379, stream keys of each test's own,
//! a private `redis-server` where a test must change server-wide settings, and reading back
//! every entry of a stream.

use outboxd::config::{Config, DbUrl};
use outboxd::sink::SinkKind;
use redis::aio::MultiplexedConnection;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the shared server listens.
pub const REDIS_ADDR: &str = "127.0.0.1:6379";

/// A connection to the server at `addr` (replies may take 30 s: reading a whole stream of a
/// busy test takes longer than redis-rs's default half second).
pub async fn connect(addr: &str) -> redis::RedisResult<MultiplexedConnection> {
    let options =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    redis::Client::open(format!("redis://{addr}"))?
        .get_multiplexed_async_connection_with_config(&options)
        .await
}

/// A connection to the shared server if it answers. When it does not, the test is skipped
/// with a note, except under `CI=true`, where a missing server fails the test instead of
/// hiding it.
pub async fn redis_server() -> Option<MultiplexedConnection> {
    let attempt = tokio::time::timeout(Duration::from_secs(5), connect(REDIS_ADDR)).await;
    match attempt {
        Ok(Ok(connection)) => Some(connection),
        failed if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipped: Redis not reachable at {REDIS_ADDR} ({failed:?})");
            None
        }
        failed => panic!("Redis not reachable under CI=true: {failed:?}"),
    }
}

/// One stream entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The entry id Redis gave it.
    pub entry_id: String,
    /// Its fields, name and value, in order.
    pub fields: Vec<(String, String)>,
}

impl Entry {
    /// The field `name`'s value.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The `seq` field of the JSON payload.
    pub fn seq(&self) -> i64 {
        let body: serde_json::Value =
            serde_json::from_str(self.field("payload").expect("payload")).expect("JSON payload");
        body["seq"].as_i64().expect("seq in payload")
    }
}

/// Every entry of the stream `key`, in stream order.
pub async fn read_stream(connection: &mut MultiplexedConnection, key: &str) -> Vec<Entry> {
    let reply: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(connection)
        .await
        .expect("XRANGE");
    reply
        .into_iter()
        .map(|(entry_id, flat)| Entry {
            entry_id,
            fields: flat
                .chunks(2)
                .map(|pair| (pair[0].clone(), pair[1].clone()))
                .collect(),
        })
        .collect()
}

/// Points `config`'s sink at the server at `addr`, stream keys from `template`.
pub fn configure(config: &mut Config, addr: &str, template: &str) {
    config.sink.kind = SinkKind::Redis;
    config.sink.redis.url = DbUrl::new(format!("redis://{addr}"));
    config.sink.redis.stream = template.to_string();
}

/// A unique prefix for a test's keys.
pub fn unique_prefix() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A `redis-server` of a test's own on a free port, without persistence; killed on drop.
pub struct PrivateRedis {
    /// The process.
    child: Child,
    /// Where it listens.
    pub addr: String,
}

impl PrivateRedis {
    /// Starts it with extra `args` (`--appendonly yes`, …) and waits until it accepts
    /// connections (blocking: it takes milliseconds, and callers may not be async).
    pub fn start(args: &[&str]) -> PrivateRedis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("free port");
        let dir = std::env::temp_dir();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--dir", &dir.to_string_lossy()])
            .args(["--appendfilename", &format!("outboxd-test-{port}.aof")])
            .args(["--appenddirname", &format!("outboxd-test-{port}")])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let server = PrivateRedis {
            child,
            addr: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&server.addr).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Its address as a socket address.
    pub fn socket_addr(&self) -> SocketAddr {
        self.addr.parse().expect("address")
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sets a server setting with `CONFIG SET`.
pub async fn config_set(connection: &mut MultiplexedConnection, name: &str, value: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async(connection)
        .await
        .expect("CONFIG SET");
}
