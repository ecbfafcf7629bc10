//! The HTTP consumer API against reading the log in process (issue #23), in one run:
//!
//! 1. writes a log of `RECORDS` records (~300-byte payloads, durability `none`, 1,000 a batch);
//! 2. reads it from offset 0 with `LogReader` in process: the reference rate;
//! 3. serves it with the consumer API exactly as `outboxd run` does (`http::serve_with`, on
//!    127.0.0.1, with the binary's allocator) and reads it from offset 0 over `GET /v1/stream`
//!    (splitting the stream into lines and counting `id:` lines, as an SSE client must) and
//!    over `GET /v1/records` pages of `PAGE` records (each page parsed, as a client must, into
//!    its records, each a validated raw JSON value, and `next`): rates, and their ratio to
//!    the reference; the reference is read again after the HTTP reads and the mean of both
//!    reads is the divisor, so load changes during the run weigh on both sides;
//! 4. for each durability mode (`batch`, `interval` with the relay's default 50 ms, `none`)
//!    reopens the writer and appends one record every 1/`RATE` s for `SECONDS`, while a stream
//!    waits at the end: latency from the start of each append (write and fsync included) to
//!    its event arriving at the client, and from the append's return to its arrival (what
//!    outboxd adds after the disk), p50/p99/max.
//!
//! Usage: `cargo run --profile profiling --example bench_consume` with env `RECORDS` (default
//! 1,000,000), `PAGE` (default 10,000), `RATE` (default 1000), `SECONDS` (default 10), `MODES`
//! (default `batch,interval,none`). Results: docs/BENCHMARKS.md.

use outboxd::config::{HttpConfig, Secret};
use outboxd::event::{Event, Operation, Origin, Position};
use outboxd::log::{Durability, LogReader, LogWriter, NewRecord, Syncer, WriterOptions};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The binary's allocator (src/main.rs), so the server runs as `outboxd run` does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// The in-process reference: records/s of `LogReader` reading the whole log.
fn reference_rate(dir: &Path, records: u64) -> f64 {
    let started = Instant::now();
    let mut reader = LogReader::open(dir).unwrap();
    let mut read = 0;
    while reader.next().unwrap().is_some() {
        read += 1;
    }
    assert_eq!(read, records);
    records as f64 / started.elapsed().as_secs_f64()
}

/// Sends `GET path` (HTTP/1.0: the body ends when the server closes) and returns the
/// connection and the bytes read after the response headers.
async fn open(addr: SocketAddr, path: &str) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::with_capacity(1 << 16);
    loop {
        let mut buf = [0; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before the response headers");
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = memchr::memmem::find(&head, b"\r\n\r\n") {
            // hyper answers an HTTP/1.0 request in HTTP/1.0.
            let status = &head[..end.min(12)];
            assert!(
                status.starts_with(b"HTTP/1.") && status.ends_with(b" 200"),
                "{}",
                String::from_utf8_lossy(&head[..end])
            );
            return (stream, head.split_off(end + 4));
        }
    }
}

/// An SSE client's line splitter: feeds bytes, calls `line` for each complete line.
struct Lines {
    /// A line begun in an earlier read.
    partial: Vec<u8>,
}

impl Lines {
    /// Splits `bytes` into lines (with any partial line kept for the next call).
    fn feed(&mut self, mut bytes: &[u8], mut line: impl FnMut(&[u8])) {
        while let Some(end) = memchr::memchr(b'\n', bytes) {
            if self.partial.is_empty() {
                line(&bytes[..end]);
            } else {
                self.partial.extend_from_slice(&bytes[..end]);
                line(&self.partial);
                self.partial.clear();
            }
            bytes = &bytes[end + 1..];
        }
        self.partial.extend_from_slice(bytes);
    }
}

/// Reads the stream from `from` until `records` events arrived, calling `event` with each
/// event's id; returns records/s.
async fn read_stream(addr: SocketAddr, from: u64, records: u64, mut event: impl FnMut(u64)) -> f64 {
    let started = Instant::now();
    let (mut stream, first) = open(addr, &format!("/v1/stream?from={from}")).await;
    let mut lines = Lines {
        partial: Vec::new(),
    };
    let seen = std::cell::Cell::new(0);
    let mut on_line = |line: &[u8]| {
        if let Some(id) = line.strip_prefix(b"id: ") {
            let id: u64 = std::str::from_utf8(id).unwrap().parse().unwrap();
            event(id);
            seen.set(seen.get() + 1);
        }
    };
    lines.feed(&first, &mut on_line);
    let mut buf = vec![0; 1 << 18];
    while seen.get() < records {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream ended");
        lines.feed(&buf[..n], &mut on_line);
    }
    records as f64 / started.elapsed().as_secs_f64()
}

/// A page of `/v1/records`, as a client parses it: every record validated, none decoded.
#[derive(Deserialize)]
struct Page<'a> {
    /// The records.
    #[serde(borrow)]
    records: Vec<&'a RawValue>,
    /// Where the next page starts.
    next: u64,
}

/// Pages through `/v1/records` from offset 0 in pages of `page` until `records`; returns
/// records/s.
async fn pages_rate(addr: SocketAddr, records: u64, page: u64) -> f64 {
    let started = Instant::now();
    let mut next = 0;
    let mut seen = 0;
    let mut body = Vec::with_capacity(page as usize * 700);
    while next < records {
        let (mut stream, first) =
            open(addr, &format!("/v1/records?from={next}&limit={page}")).await;
        body.clear();
        body.extend_from_slice(&first);
        stream.read_to_end(&mut body).await.unwrap();
        let page: Page<'_> = serde_json::from_slice(&body).unwrap();
        seen += page.records.len() as u64;
        next = page.next;
    }
    assert_eq!(seen, records);
    records as f64 / started.elapsed().as_secs_f64()
}

/// The `q` quantile of sorted `values`, in ms.
fn quantile(values: &[Duration], q: f64) -> f64 {
    values[((values.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3
}

/// Latencies of one durability mode, sorted: append start → arrival, append return →
/// arrival, and the appends themselves.
struct Latencies {
    /// From the start of the append to the event's arrival.
    total: Vec<Duration>,
    /// From the append's return to the event's arrival.
    after_append: Vec<Duration>,
    /// The appends (write, and fsync with `batch`).
    append: Vec<Duration>,
}

/// Appends one record every 1/`rate` s for `seconds` with `durability` while a stream waits
/// at the end; returns the latencies.
async fn latencies(
    addr: SocketAddr,
    dir: &Path,
    durability: Durability,
    rate: u64,
    seconds: u64,
) -> Latencies {
    let options = WriterOptions {
        durability,
        ..WriterOptions::DEFAULT
    };
    let writer = Arc::new(Mutex::new(LogWriter::open(dir, options).unwrap()));
    // The relay's default `sink.log.fsync_interval_ms`.
    let syncer = (durability == Durability::Interval)
        .then(|| Syncer::start(writer.clone(), Duration::from_millis(50)).unwrap());
    let start = writer.lock().unwrap().next_offset();
    let count = rate * seconds;
    let times: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let appender = {
        let (times, writer) = (times.clone(), writer.clone());
        std::thread::spawn(move || {
            let begin = Instant::now();
            for i in 0..count {
                let due = begin + Duration::from_secs_f64(i as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let offset = start + i;
                let before = Instant::now();
                append(&mut writer.lock().unwrap(), offset..offset + 1);
                times.lock().unwrap().push((before, Instant::now()));
            }
        })
    };
    let mut arrived = Vec::with_capacity(count as usize);
    read_stream(addr, start, count, |id| {
        assert_eq!(id, start + arrived.len() as u64);
        arrived.push(Instant::now());
    })
    .await;
    appender.join().unwrap();
    drop(syncer);
    let times = times.lock().unwrap();
    let mut latencies = Latencies {
        total: Vec::new(),
        after_append: Vec::new(),
        append: Vec::new(),
    };
    for (&(before, after), &at) in times.iter().zip(&arrived) {
        latencies.total.push(at - before);
        latencies
            .after_append
            .push(at.saturating_duration_since(after));
        latencies.append.push(after - before);
    }
    latencies.total.sort();
    latencies.after_append.sort();
    latencies.append.sort();
    latencies
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let records = env("RECORDS", 1_000_000);
    let page = env("PAGE", 10_000);
    let rate = env("RATE", 1000);
    let seconds = env("SECONDS", 10);
    let modes = std::env::var("MODES").unwrap_or_else(|_| "batch,interval,none".into());
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

    let before = reference_rate(&dir, records);
    println!("LogReader in process: {before:.0} records/s");

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

    let sse = read_stream(addr, 0, records, |_| {}).await;
    println!("GET /v1/stream: {sse:.0} records/s");
    let pages = pages_rate(addr, records, page).await;
    println!("GET /v1/records (pages of {page}): {pages:.0} records/s");
    let after = reference_rate(&dir, records);
    let reference = (before + after) / 2.0;
    println!(
        "LogReader in process again: {after:.0} records/s; mean {reference:.0}\n\
         ratios: stream {:.2} x LogReader, records {:.2} x LogReader",
        sse / reference,
        pages / reference
    );

    for mode in modes.split(',') {
        let durability = match mode {
            "batch" => Durability::Batch,
            "interval" => Durability::Interval,
            "none" => Durability::None,
            other => panic!("MODES: unknown durability {other}"),
        };
        let l = latencies(addr, &dir, durability, rate, seconds).await;
        println!(
            "durability {mode}, {rate}/s for {seconds} s ({} events): append start -> \
             delivered p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; append return -> delivered \
             p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; the append itself p50 {:.2} ms, p99 \
             {:.2} ms, max {:.2} ms",
            l.total.len(),
            quantile(&l.total, 0.5),
            quantile(&l.total, 0.99),
            quantile(&l.total, 1.0),
            quantile(&l.after_append, 0.5),
            quantile(&l.after_append, 0.99),
            quantile(&l.after_append, 1.0),
            quantile(&l.append, 0.5),
            quantile(&l.append, 0.99),
            quantile(&l.append, 1.0),
        );
    }
    shutdown.cancel();
    let _ = server.await;
}
