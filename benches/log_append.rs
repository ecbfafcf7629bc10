//! Append and read throughput of the embedded log, next to a raw sequential write + fdatasync
//! of the same bytes on the same disk. A plain `main` that times itself (no bench framework):
//! the numbers are dominated by fsync latency, which a statistics harness cannot shrink.
//!
//! Run: `cargo bench --bench log_append` (env `BENCH_BATCHES`, default 300 batches of 1,000
//! records with ~300-byte payloads; `BENCH_DIR` picks the directory, default `target/`).

use chrono::Utc;
use outboxd::event::{Event, Position};
use outboxd::log::{Durability, LogReader, LogWriter, NewRecord, WriterOptions};
use serde_json::value::RawValue;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Records per batch, as the relay's default `source.batch_size`.
const BATCH: usize = 1_000;

/// Payload bytes per record, roughly.
const PAYLOAD: usize = 300;

fn main() {
    let batches: usize = std::env::var("BENCH_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let base = std::env::var("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
        });
    std::fs::create_dir_all(&base).expect("bench dir");
    let events = make_events(BATCH);
    let total = (batches * BATCH) as f64;
    println!(
        "log_append: {batches} batches x {BATCH} records, payload {PAYLOAD} B, dir {}",
        base.display()
    );

    let records: Vec<NewRecord<'_>> = events
        .iter()
        .map(|event| NewRecord {
            topic: &event.subject,
            event,
        })
        .collect();

    // Batch durability and the raw baseline, interleaved batch by batch so both see the same
    // disk conditions (a virtual disk's fsync latency drifts over seconds).
    let dir = tempfile::tempdir_in(&base).expect("tempdir");
    let mut writer = LogWriter::open(dir.path(), WriterOptions::DEFAULT).expect("open");
    let raw_dir = tempfile::tempdir_in(&base).expect("tempdir");
    let mut raw = std::fs::File::create(raw_dir.path().join("raw")).expect("raw file");
    let (mut append_time, mut raw_time) = (Duration::ZERO, Duration::ZERO);
    let mut written = 0u64;
    for _ in 0..batches {
        let started = Instant::now();
        writer.append(&records).expect("append");
        append_time += started.elapsed();
        // The same bytes the append added, one write + fdatasync.
        let now = dir_bytes(dir.path());
        let chunk = vec![0x5au8; (now - written) as usize];
        written = now;
        let started = Instant::now();
        raw.write_all(&chunk).expect("write");
        raw.sync_data().expect("fdatasync");
        raw_time += started.elapsed();
    }
    report("append (durability=batch)", total, written, append_time);
    report("raw write+fdatasync", total, written, raw_time);
    println!(
        "  append/raw time ratio: {:.2}x",
        append_time.as_secs_f64() / raw_time.as_secs_f64()
    );
    drop(writer);

    let started = Instant::now();
    let mut reader = LogReader::open(dir.path()).expect("reader");
    let mut count = 0u64;
    while let Some(record) = reader.next().expect("read") {
        std::hint::black_box(&record);
        count += 1;
    }
    assert_eq!(count as f64, total);
    report(
        "read (decode every record)",
        total,
        written,
        started.elapsed(),
    );

    // Without fsync: the CPU cost of encoding, checksumming and write(2).
    let dir = tempfile::tempdir_in(&base).expect("tempdir");
    let options = WriterOptions {
        durability: Durability::None,
        ..WriterOptions::DEFAULT
    };
    let mut writer = LogWriter::open(dir.path(), options).expect("open");
    let started = Instant::now();
    for _ in 0..batches {
        writer.append(&records).expect("append");
    }
    report(
        "append (durability=none)",
        total,
        written,
        started.elapsed(),
    );
}

/// `count` events with ~PAYLOAD-byte JSON payloads.
fn make_events(count: usize) -> Vec<Event> {
    (0..count)
        .map(|n| {
            let filler = "x".repeat(PAYLOAD - 40);
            Event {
                id: uuid::Uuid::new_v4().to_string(),
                subject: "order".to_owned(),
                key: format!("order-{}", n % 97),
                op: outboxd::event::Operation::Insert,
                origin: outboxd::event::Origin::Outbox,
                event_type: "OrderPlaced".to_owned(),
                payload: RawValue::from_string(format!(
                    r#"{{"order_id":{n},"total":"19.90","note":"{filler}"}}"#
                ))
                .expect("json"),
                headers: None,
                created_at: Utc::now(),
                position: Position(n as u64),
            }
        })
        .collect()
}

/// Total size of the `.log` files in `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// Prints one result line.
fn report(what: &str, records: f64, bytes: u64, took: Duration) {
    let secs = took.as_secs_f64();
    println!(
        "  {what:<28} {:>10.0} records/s  {:>8.1} MB/s  ({:.2}s)",
        records / secs,
        bytes as f64 / secs / 1e6,
        secs
    );
}
