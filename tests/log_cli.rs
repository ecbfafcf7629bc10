//! `outboxd log read|stats` against a log written through the library, no database needed.

mod common;

use common::relay::run_cli;
use outboxd::event::{Event, Position};
use outboxd::log::{LogWriter, NewRecord, WriterOptions};
use serde_json::value::RawValue;
use std::path::Path;

/// Appends events numbered `numbers` under topic `topic`.
fn append(writer: &mut LogWriter, topic: &str, numbers: std::ops::Range<u64>) {
    let events: Vec<Event> = numbers
        .map(|n| Event {
            id: format!("event-{n}"),
            aggregate_type: topic.to_owned(),
            aggregate_id: "agg".to_owned(),
            event_type: "Step".to_owned(),
            payload: RawValue::from_string(format!(r#"{{"n":{n}}}"#)).unwrap(),
            headers: None,
            created_at: chrono::Utc::now(),
            position: Position(n),
        })
        .collect();
    let batch: Vec<NewRecord<'_>> = events
        .iter()
        .map(|event| NewRecord { topic, event })
        .collect();
    writer.append(&batch).unwrap();
}

/// The offsets printed by `outboxd log read <args>`.
fn read_offsets(config: &Path, args: &[&str]) -> Vec<u64> {
    let mut all = vec!["log", "read"];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = run_cli(config, &all);
    assert_eq!(code, 0, "{stderr}");
    stdout
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["offset"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// A config file pointing `sink.log.dir` at `log`.
fn config_file(dir: &Path, log: &Path) -> std::path::PathBuf {
    let path = dir.join("outboxd.toml");
    std::fs::write(
        &path,
        format!("[sink.log]\ndir = {:?}\n", log.display().to_string()),
    )
    .unwrap();
    path
}

#[test]
fn a_consumer_group_resumes_after_what_it_already_read() {
    // given a log of 5 records, while the writer stays open
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_file(dir.path(), &log);
    let mut writer = LogWriter::open(&log, WriterOptions::with_segment_bytes(4096)).unwrap();
    append(&mut writer, "order", 0..5);

    // when a group reads, then it gets everything
    assert_eq!(
        read_offsets(&config, &["--group", "billing"]),
        vec![0, 1, 2, 3, 4]
    );

    // and after more appends, only the new records, even across a restart of the reader
    append(&mut writer, "order", 5..8);
    assert_eq!(
        read_offsets(&config, &["--group", "billing"]),
        vec![5, 6, 7]
    );
    assert_eq!(
        read_offsets(&config, &["--group", "billing"]),
        Vec::<u64>::new()
    );
    // and --limit commits only what was printed
    append(&mut writer, "order", 8..12);
    assert_eq!(
        read_offsets(&config, &["--group", "billing", "--limit", "2"]),
        vec![8, 9]
    );
    assert_eq!(read_offsets(&config, &["--group", "billing"]), vec![10, 11]);
    // and another group is independent, and --from-beginning resets a group
    assert_eq!(
        read_offsets(&config, &["--group", "audit", "--limit", "1"]),
        vec![0]
    );
    assert_eq!(
        read_offsets(&config, &["--group", "billing", "--from-beginning"]).len(),
        12
    );
}

#[test]
fn read_from_a_time_and_stats_per_topic() {
    // given two topics appended at different times
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_file(dir.path(), &log);
    let mut writer = LogWriter::open(&log, WriterOptions::default()).unwrap();
    append(&mut writer, "order", 0..3);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let between = chrono::Utc::now().to_rfc3339();
    std::thread::sleep(std::time::Duration::from_millis(20));
    append(&mut writer, "invoice", 3..5);

    // then --from-time starts at the first record appended after that time
    assert_eq!(
        read_offsets(&config, &["--from-time", &between]),
        vec![3, 4]
    );
    assert_eq!(
        read_offsets(&config, &["--topic", "order", "--from", "1"]),
        vec![1, 2]
    );

    // and stats count records per topic
    let (code, stdout, stderr) = run_cli(&config, &["log", "stats", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let stats: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(stats["records"], 5);
    assert_eq!(stats["segments"], 1);
    assert_eq!(stats["first_offset"], 0);
    assert_eq!(stats["last_offset"], 4);
    assert_eq!(stats["topics"]["order"], 3);
    assert_eq!(stats["topics"]["invoice"], 2);
}
