//! The HTTP consumer API from a test: a relay configured to serve it, bare HTTP/1.0 requests
//! with a bearer token, and a Server-Sent Events reader.

use super::pg::TestDb;
use super::relay::{RelayProcess, config_for, write_config};
use outboxd::config::{Config, Secret};
use outboxd::log::Record;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The token tests configure.
pub const TOKEN: &str = "test-token-5f0c0ffee";

/// A configuration for `db` with the log under `log` and the consumer API on, accepting
/// [`TOKEN`].
pub fn consume_config(db: &TestDb, log: &Path) -> Config {
    let mut config = config_for(db, log);
    config.http.consume.enabled = true;
    config.http.consume.tokens = vec![Secret::new(TOKEN)];
    config.source.poll_interval_ms = 50;
    config
}

/// Writes `config` to `dir/<name>.toml` with the tokens in clear (the serializer masks them).
pub fn write_config_with_tokens(config: &Config, dir: &Path, name: &str) -> PathBuf {
    let path = write_config(config, dir, name);
    let text = std::fs::read_to_string(&path).unwrap();
    let tokens: Vec<String> = config
        .http
        .consume
        .tokens
        .iter()
        .map(|token| format!("{:?}", token.expose()))
        .collect();
    let lines: Vec<String> = text
        .lines()
        .map(|line| match line.starts_with("tokens = ") {
            true => format!("tokens = [{}]", tokens.join(", ")),
            false => line.to_owned(),
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// Starts the relay binary with `config` and returns it with its HTTP address.
pub async fn start_relay(config: &Config, dir: &Path, name: &str) -> (RelayProcess, SocketAddr) {
    let path = write_config_with_tokens(config, dir, name);
    let mut relay = RelayProcess::spawn_file(&path, dir, name, &["run"], &[]);
    let addr = relay.http_addr().await;
    (relay, addr)
}

/// An answer: status and body as JSON (`Value::Null` if the body is not JSON).
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body, parsed.
    pub json: Value,
    /// The body as text.
    pub text: String,
}

/// Sends `method path` with `body` (JSON, if any) and `token` (if any) over HTTP/1.0.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    try_call(addr, method, path, token, body)
        .await
        .unwrap_or_else(|err| panic!("{method} {path}: {err}"))
}

/// [`call`] that returns an error instead of panicking when the server is gone (refused, reset
/// or closed before a whole answer).
pub async fn try_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> std::io::Result<Answer> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: test\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let Some(status) = response.get(9..12).and_then(|code| code.parse().ok()) else {
        return Err(std::io::Error::other("no HTTP answer"));
    };
    let text = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Answer { status, json, text })
}

/// `call` with [`TOKEN`], panicking unless the answer is 200; returns the JSON.
pub async fn ok(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Value {
    let answer = call(addr, method, path, Some(TOKEN), body).await;
    assert_eq!(answer.status, 200, "{method} {path}: {}", answer.text);
    answer.json
}

/// A record as the API serves it.
pub fn record(json: &Value) -> Record {
    serde_json::from_value(json.clone()).expect("a record")
}

/// A Server-Sent Events stream being read.
pub struct Sse {
    /// The response, after its headers.
    reader: BufReader<TcpStream>,
}

/// One event of a stream.
#[derive(Debug)]
pub struct SseEvent {
    /// Its `id:`.
    pub id: Option<String>,
    /// Its `event:` (none for a plain message).
    pub event: Option<String>,
    /// Its `data:`.
    pub data: String,
}

impl Sse {
    /// Opens `GET path` with [`TOKEN`] and `Last-Event-ID: last` if given; panics unless 200.
    pub async fn open(addr: SocketAddr, path: &str, last: Option<&str>) -> Sse {
        let mut request =
            format!("GET {path} HTTP/1.0\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\n");
        if let Some(last) = last {
            request.push_str(&format!("Last-Event-ID: {last}\r\n"));
        }
        request.push_str("\r\n");
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).await.expect("status line");
        assert!(status.contains(" 200 "), "stream answered {status}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.expect("header");
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        Sse { reader }
    }

    /// The next event (keep-alive comments skipped); panics after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> SseEvent {
        tokio::time::timeout(timeout, self.read_event())
            .await
            .expect("an event in time")
    }

    /// Reads lines up to the blank line that ends an event.
    async fn read_event(&mut self) -> SseEvent {
        let mut event = SseEvent {
            id: None,
            event: None,
            data: String::new(),
        };
        loop {
            let mut line = String::new();
            let read = self.reader.read_line(&mut line).await.expect("read");
            assert!(read > 0, "the stream ended");
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if event.id.is_some() || !event.data.is_empty() {
                    return event;
                }
                continue;
            }
            if let Some(id) = line.strip_prefix("id:") {
                event.id = Some(id.trim().to_owned());
            } else if let Some(name) = line.strip_prefix("event:") {
                event.event = Some(name.trim().to_owned());
            } else if let Some(data) = line.strip_prefix("data:") {
                event.data.push_str(data.trim_start());
            }
        }
    }
}

/// Waits (long polls) until the API serves at least `count` records; a record on disk is
/// served only once the relay made it durable.
pub async fn wait_served(addr: SocketAddr, count: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut next = 0;
    while next < count {
        assert!(
            std::time::Instant::now() < deadline,
            "only {next} of {count} records served"
        );
        let page = ok(
            addr,
            "GET",
            &format!("/v1/records?from={next}&limit=10000&wait_ms=5000"),
            None,
        )
        .await;
        next = page["next"].as_u64().unwrap();
    }
}
