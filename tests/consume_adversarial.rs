//! The consumer API against hostile or careless clients, served in this process over a log
//! written directly (no database): absurd query values, a stream client that never reads,
//! and many long polls at once.

use outboxd::config::{HttpConfig, Secret};
use outboxd::event::{Event, Operation, Origin, Position};
use outboxd::log::{Durability, LogWriter, NewRecord, WriterOptions};
use serde_json::Value;
use serde_json::value::RawValue;
use std::net::SocketAddr;
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The token the server accepts.
const TOKEN: &str = "adversarial-token";

/// Appends events `numbers` (~500-byte payloads) as one batch.
fn append(writer: &mut LogWriter, numbers: std::ops::Range<u64>) {
    let events: Vec<Event> = numbers
        .map(|n| Event {
            id: format!("event-{n}"),
            subject: "order".into(),
            key: format!("key-{}", n % 50),
            op: Operation::Insert,
            origin: Origin::Outbox,
            event_type: "Placed".into(),
            payload: RawValue::from_string(format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(480)))
                .unwrap(),
            headers: None,
            created_at: chrono::Utc::now(),
            position: Position(n),
        })
        .collect();
    let batch: Vec<NewRecord<'_>> = events
        .iter()
        .map(|event| NewRecord {
            topic: "order",
            event,
        })
        .collect();
    writer.append(&batch).unwrap();
}

/// A log of `records` records at `dir`, and its writer (durability `none`).
fn log(dir: &Path, records: u64) -> LogWriter {
    let options = WriterOptions {
        durability: Durability::None,
        ..WriterOptions::DEFAULT
    };
    let mut writer = LogWriter::open(dir, options).unwrap();
    for start in (0..records).step_by(1000) {
        append(&mut writer, start..(start + 1000).min(records));
    }
    writer
}

/// Serves the consumer API of the log at `dir` on a free port.
async fn serve(dir: &Path, shutdown: &CancellationToken) -> SocketAddr {
    let mut config = HttpConfig {
        listen: "127.0.0.1:0".into(),
        ..HttpConfig::default()
    };
    config.consume.enabled = true;
    config.consume.tokens = vec![Secret::new(TOKEN)];
    outboxd::http::serve_with(&config, dir, shutdown.clone())
        .await
        .unwrap()
        .0
}

/// `GET path` over HTTP/1.0: the status and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response");
    let status = std::str::from_utf8(&answer[9..12])
        .unwrap()
        .parse()
        .unwrap();
    (status, answer.split_off(end + 4))
}

/// `GET path` answered with a 200 and a page: its records' offsets and `next`.
async fn page(addr: SocketAddr, path: &str) -> (Vec<u64>, u64) {
    let (status, body) = get(addr, path).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{path}: {text}");
    let page: Value = serde_json::from_slice(&body).unwrap_or_else(|err| panic!("{err}: {text}"));
    let offsets = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["offset"].as_u64().unwrap())
        .collect();
    (offsets, page["next"].as_u64().unwrap())
}

/// This process's resident memory, bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_query_values_get_a_400_naming_the_field_or_an_empty_page() {
    let dir = tempfile::tempdir().unwrap();
    let _writer = log(dir.path(), 10);
    let shutdown = CancellationToken::new();
    let addr = serve(dir.path(), &shutdown).await;

    for (path, field) in [
        ("/v1/records?limit=18446744073709551615", "limit"),
        ("/v1/records?limit=100000000000000000000000", "limit"),
        ("/v1/records?limit=-5", "limit"),
        ("/v1/records?from=-1", "from"),
        ("/v1/records?from=18446744073709551615", "from"),
        ("/v1/records?from=99999999999999999999999999", "from"),
        ("/v1/records?from=1e3", "from"),
        ("/v1/stream?from=18446744073709551615", "from"),
    ] {
        let (status, body) = get(addr, path).await;
        let error: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 400, "{path}: {error}");
        assert!(
            error["error"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{field}:")),
            "{path}: {error}"
        );
    }
    // The largest offset accepted is simply past the end: an empty page, and `next` stays.
    let (offsets, next) = page(addr, "/v1/records?from=18446744073709551614").await;
    assert!(offsets.is_empty());
    assert_eq!(next, 18_446_744_073_709_551_614);
    // A topic of any characters matches nothing here, and breaks nothing.
    let long = "t".repeat(6000);
    for topic in [
        "%00",
        "%0A%0D",
        "%22%5C",
        "%F0%9F%98%80",
        "..%2F..%2Fetc",
        &long,
    ] {
        let (offsets, next) = page(addr, &format!("/v1/records?topic={topic}")).await;
        assert!(offsets.is_empty(), "{topic}");
        assert_eq!(next, 10, "{topic}");
    }
    let (offsets, next) = page(addr, "/v1/records?limit=10000&topic=order").await;
    assert_eq!((offsets.len(), next), (10, 10));
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_client_that_never_reads_holds_bounded_memory_and_stalls_nobody() {
    // Given a log of 100,000 records (~60 MB as JSON).
    let dir = tempfile::tempdir().unwrap();
    let mut writer = log(dir.path(), 100_000);
    let shutdown = CancellationToken::new();
    let addr = serve(dir.path(), &shutdown).await;
    let before = rss();

    // When a client opens a stream from offset 0 and never reads it.
    let mut stuck = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /v1/stream?from=0 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    stuck.write_all(request.as_bytes()).await.unwrap();

    // Then others are served meanwhile (100 rounds of a page and a long poll woken by an
    // append) and memory stays far below the log's size.
    let mut peak = before;
    for n in 100_000..100_100 {
        let (offsets, _) = page(addr, "/v1/records?from=99990&limit=5").await;
        assert_eq!(offsets, (99_990..99_995).collect::<Vec<_>>());
        let poll = tokio::spawn(async move {
            page(addr, &format!("/v1/records?from={n}&wait_ms=60000")).await
        });
        append(&mut writer, n..n + 1);
        assert_eq!(poll.await.unwrap().0, vec![n]);
        peak = peak.max(rss());
    }
    let grown = peak.saturating_sub(before);
    assert!(
        grown < 16 << 20,
        "memory grew by {} MB while a client did not read",
        grown >> 20
    );
    drop(stuck);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_long_polls_at_once_all_wake_for_the_next_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = log(dir.path(), 5);
    let shutdown = CancellationToken::new();
    let addr = serve(dir.path(), &shutdown).await;
    let polls: Vec<_> = (0..100)
        .map(|_| tokio::spawn(async move { page(addr, "/v1/records?from=5&wait_ms=60000").await }))
        .collect();
    // Most polls wait by now; one that arrives after the append finds the record at once.
    // Either way every one returns exactly the new record.
    append(&mut writer, 5..6);
    for poll in polls {
        assert_eq!(poll.await.unwrap(), (vec![5], 6));
    }
    shutdown.cancel();
}
