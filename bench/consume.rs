//! The HTTP consumer API against reading the log in process (issue #23), in one run:
//!
//! 1. writes a log of `RECORDS` records (~300-byte payloads, durability `none`, 1,000 a batch);
//! 2. reads it from offset 0 with `LogReader` in process: the reference rate;
//! 3. serves it with the consumer API exactly as `outboxd run` does (`http::serve_with`, on
//!    127.0.0.1) and reads it from offset 0 over `GET /v1/stream` (counting `id:` lines) and
//!    over `GET /v1/records` pages of 10,000 (each page's JSON parsed, as a client must, to get
//!    `next`): rates, and their ratio to the reference;
//! 4. reopens the writer with durability `batch` and appends one record every 1/`RATE` s for
//!    `SECONDS`, while a stream waits at the end: latency from the start of each append
//!    (write and fsync included) to its event arriving at the client, p50/p99/max.
//!
//! Usage: `cargo run --release --example bench_consume` with env `RECORDS` (default 1,000,000),
//! `RATE` (default 1000), `SECONDS` (default 10). Results: docs/BENCHMARKS.md.

use outboxd::config::{HttpConfig, Secret};
use outboxd::event::{Event, Operation, Origin, Position};
use outboxd::log::{Durability, LogReader, LogWriter, NewRecord, WriterOptions};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The token the benchmark's server accepts.
const TOKEN: &str = "bench";

/// A number from the environment.
fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Event `n`: ~300 bytes of payload, 1,000 keys.
fn event(n: u64) -> Event {
    let payload = format!(
        r#"{{"order":{n},"customer":"c-{}","lines":[{{"sku":"A-1","qty":2}}],"note":"{}"}}"#,
        n % 977,
        "x".repeat(200)
    );
    Event {
        id: format!("00000000-0000-0000-0000-{n:012}"),
        subject: "order".into(),
        key: format!("order-{}", n % 1000),
        op: Operation::Insert,
        origin: Origin::Outbox,
        event_type: "OrderPlaced".into(),
        payload: RawValue::from_string(payload).unwrap(),
        headers: None,
        created_at: chrono::Utc::now(),
        position: Position(n),
    }
}

/// Appends events `range` as one batch.
fn append(writer: &mut LogWriter, range: std::ops::Range<u64>) {
    let events: Vec<Event> = range.map(event).collect();
    let batch: Vec<NewRecord<'_>> = events
        .iter()
        .map(|event| NewRecord {
            topic: "order",
            event,
        })
        .collect();
    writer.append(&batch).unwrap();
}

/// Opens `GET path` and returns the reader positioned after the response headers.
async fn open(addr: SocketAddr, path: &str) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reader = BufReader::with_capacity(1 << 16, stream);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            return reader;
        }
    }
}

/// Reads the stream from offset 0 until `records` events arrived; returns records/s.
async fn stream_rate(addr: SocketAddr, records: u64) -> f64 {
    let started = Instant::now();
    let mut reader = open(addr, "/v1/stream?from=0").await;
    let mut seen = 0;
    let mut line = String::new();
    while seen < records {
        line.clear();
        reader.read_line(&mut line).await.unwrap();
        if line.starts_with("id:") {
            seen += 1;
        }
    }
    records as f64 / started.elapsed().as_secs_f64()
}

/// Pages through `/v1/records` from offset 0 until `records`; returns records/s.
async fn pages_rate(addr: SocketAddr, records: u64) -> f64 {
    let started = Instant::now();
    let mut next = 0;
    let mut seen = 0;
    while next < records {
        let mut reader = open(addr, &format!("/v1/records?from={next}&limit=10000")).await;
        let mut body = Vec::new();
        reader.read_to_end(&mut body).await.unwrap();
        let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
        seen += page["records"].as_array().unwrap().len() as u64;
        next = page["next"].as_u64().unwrap();
    }
    assert_eq!(seen, records);
    records as f64 / started.elapsed().as_secs_f64()
}

/// The `q` quantile of sorted `values`.
fn quantile(values: &[Duration], q: f64) -> Duration {
    values[((values.len() - 1) as f64 * q).round() as usize]
}

/// Appends one record every 1/`rate` s for `seconds` while a stream waits at the end; returns
/// the append-start → arrival latencies.
async fn latencies(addr: SocketAddr, dir: &Path, rate: u64, seconds: u64) -> Vec<Duration> {
    let options = WriterOptions {
        durability: Durability::Batch,
        ..WriterOptions::DEFAULT
    };
    let mut writer = LogWriter::open(dir, options).unwrap();
    let start = writer.next_offset();
    let count = rate * seconds;
    let mut reader = open(addr, &format!("/v1/stream?from={start}")).await;
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let appender = {
        let sent = sent.clone();
        std::thread::spawn(move || {
            let begin = Instant::now();
            for i in 0..count {
                let due = begin + Duration::from_secs_f64(i as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let offset = start + i;
                sent.lock().unwrap().insert(offset, Instant::now());
                append(&mut writer, offset..offset + 1);
            }
            writer
        })
    };
    let mut arrived = HashMap::new();
    let mut line = String::new();
    while (arrived.len() as u64) < count {
        line.clear();
        reader.read_line(&mut line).await.unwrap();
        if let Some(id) = line.strip_prefix("id:") {
            arrived.insert(id.trim().parse::<u64>().unwrap(), Instant::now());
        }
    }
    drop(appender.join().unwrap());
    let sent = sent.lock().unwrap();
    let mut latencies: Vec<Duration> = arrived
        .iter()
        .map(|(offset, at)| *at - sent[offset])
        .collect();
    latencies.sort();
    latencies
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let records = env("RECORDS", 1_000_000);
    let rate = env("RATE", 1000);
    let seconds = env("SECONDS", 10);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");

    let started = Instant::now();
    {
        let options = WriterOptions {
            durability: Durability::None,
            ..WriterOptions::DEFAULT
        };
        let mut writer = LogWriter::open(&dir, options).unwrap();
        for start in (0..records).step_by(1000) {
            append(&mut writer, start..(start + 1000).min(records));
        }
        writer.sync().unwrap();
    }
    println!(
        "wrote {records} records in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let mut reader = LogReader::open(&dir).unwrap();
    let mut read = 0;
    while reader.next().unwrap().is_some() {
        read += 1;
    }
    assert_eq!(read, records);
    let reference = records as f64 / started.elapsed().as_secs_f64();
    println!("LogReader in process: {reference:.0} records/s");

    let mut config = HttpConfig {
        listen: "127.0.0.1:0".into(),
        ..HttpConfig::default()
    };
    config.consume.enabled = true;
    config.consume.tokens = vec![Secret::new(TOKEN)];
    let shutdown = CancellationToken::new();
    let (addr, server) = outboxd::http::serve_with(&config, &dir, shutdown.clone())
        .await
        .unwrap();

    let sse = stream_rate(addr, records).await;
    println!(
        "GET /v1/stream: {sse:.0} records/s ({:.2} x LogReader)",
        sse / reference
    );
    let pages = pages_rate(addr, records).await;
    println!(
        "GET /v1/records (pages of 10,000): {pages:.0} records/s ({:.2} x LogReader)",
        pages / reference
    );

    let latencies = latencies(addr, &dir, rate, seconds).await;
    println!(
        "append -> delivered to a waiting stream at {rate}/s for {seconds} s (durability batch, \
         {} events): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        quantile(&latencies, 0.5).as_secs_f64() * 1e3,
        quantile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3
    );
    shutdown.cancel();
    let _ = server.await;
}
