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
            subject: topic.to_owned(),
            key: "agg".to_owned(),
            op: outboxd::event::Operation::Insert,
            origin: outboxd::event::Origin::Outbox,
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

/// Runs `outboxd log commit --group <group> <args>` and returns its exit code and stderr.
fn commit(config: &Path, group: &str, args: &[&str]) -> (i32, String) {
    let mut all = vec!["log", "commit", "--group", group];
    all.extend_from_slice(args);
    let (code, _, stderr) = run_cli(config, &all);
    (code, stderr)
}

#[test]
fn a_consumer_group_resumes_after_what_it_committed() {
    // given a log of 5 records, while the writer stays open
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_file(dir.path(), &log);
    let mut writer = LogWriter::open(&log, WriterOptions::with_segment_bytes(4096)).unwrap();
    append(&mut writer, "order", 0..5);

    // when a group reads, then it gets everything, and again until it commits
    let all = vec![0, 1, 2, 3, 4];
    assert_eq!(read_offsets(&config, &["--group", "billing"]), all);
    assert_eq!(read_offsets(&config, &["--group", "billing"]), all);

    // and after committing what it processed and more appends, only the rest and the new
    // records, even across a restart of the reader
    assert_eq!(commit(&config, "billing", &["--through", "2"]).0, 0);
    append(&mut writer, "order", 5..8);
    assert_eq!(
        read_offsets(&config, &["--group", "billing"]),
        vec![3, 4, 5, 6, 7]
    );
    assert_eq!(commit(&config, "billing", &["--through", "7"]).0, 0);
    assert_eq!(
        read_offsets(&config, &["--group", "billing"]),
        Vec::<u64>::new()
    );
    // and another group is independent, --from-beginning reads from the start without
    // moving the group, and --next 0 starts it over
    append(&mut writer, "order", 8..12);
    assert_eq!(
        read_offsets(&config, &["--group", "audit", "--limit", "1"]),
        vec![0]
    );
    assert_eq!(
        read_offsets(&config, &["--group", "billing", "--from-beginning"]).len(),
        12
    );
    assert_eq!(
        read_offsets(&config, &["--group", "billing"]),
        vec![8, 9, 10, 11]
    );
    assert_eq!(commit(&config, "billing", &["--next", "0"]).0, 0);
    assert_eq!(read_offsets(&config, &["--group", "billing"]).len(), 12);

    // and a commit beyond the end of the log is refused, naming the end
    let (code, stderr) = commit(&config, "billing", &["--through", "12"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("ends before offset 12"), "{stderr}");
    assert_eq!(read_offsets(&config, &["--group", "billing"]).len(), 12);
}

#[test]
fn a_group_read_through_a_pipe_closed_after_one_line_commits_nothing_past_it() {
    // given a log of 5 records
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_file(dir.path(), &log);
    let mut writer = LogWriter::open(&log, WriterOptions::default()).unwrap();
    append(&mut writer, "order", 0..5);

    // when a consumer reads one line of a group read and closes the pipe (`| head -n 1`)
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .arg("--config")
        .arg(&config)
        .args(["log", "read", "--group", "billing"])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    drop(stdout);
    child.wait().unwrap();
    let consumed: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(consumed["offset"], 0);

    // then the group has committed nothing: the consumer gets every record again
    assert_eq!(
        read_offsets(&config, &["--group", "billing"]),
        vec![0, 1, 2, 3, 4]
    );
    // and once it commits the one record it processed, the rest
    assert_eq!(commit(&config, "billing", &["--through", "0"]).0, 0);
    assert_eq!(
        read_offsets(&config, &["--group", "billing"]),
        vec![1, 2, 3, 4]
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

#[test]
fn log_read_fails_at_a_damaged_length_instead_of_stopping_silently() {
    // given a log of 3,000 records whose record 1,500 has one bit of its length flipped
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_file(dir.path(), &log);
    let mut writer = LogWriter::open(&log, WriterOptions::default()).unwrap();
    append(&mut writer, "order", 0..3_000);
    drop(writer);
    let segment = log.join("00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).unwrap();
    let mut pos = 0;
    for _ in 0..1_500 {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        pos += 8 + len;
    }
    bytes[pos] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();

    // when it is read, then the records before the damage are printed and the command fails,
    // naming the damage and the valid record after it
    let (code, stdout, stderr) = run_cli(&config, &["log", "read", "--from-beginning"]);
    assert_ne!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 1_500);
    assert!(
        stderr.contains(&format!("corrupt at byte {pos}")),
        "{stderr}"
    );
    assert!(stderr.contains("(offset 1501 at byte"), "{stderr}");
}

/// Whether process `pid` holds an inotify descriptor (its follower watches the log).
fn watches_with_inotify(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| target.to_string_lossy().contains("inotify"))
}

#[test]
fn a_tail_follower_in_another_process_sees_an_append_through_the_kernels_report() {
    // Given `log tail -f` in its own process on a log of 3 records, re-checking on its
    // fallback timer only once an hour, and watching the log
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_file(dir.path(), &log);
    let mut writer = LogWriter::open(&log, WriterOptions::default()).unwrap();
    append(&mut writer, "order", 0..3);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .arg("--config")
        .arg(&config)
        .args(["log", "tail", "-f", "-n", "1"])
        .env(outboxd::log::RECHECK_ENV, "3600000")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, printed) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { return };
            let record: serde_json::Value = serde_json::from_str(&line).unwrap();
            if lines.send(record["offset"].as_u64().unwrap()).is_err() {
                return;
            }
        }
    });
    let wait = std::time::Duration::from_secs(60);
    assert_eq!(printed.recv_timeout(wait).unwrap(), 2);
    let deadline = std::time::Instant::now() + wait;
    while !watches_with_inotify(child.id()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the follower never watched the log"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }

    // When this process appends a record
    append(&mut writer, "order", 3..4);

    // Then the follower prints it long before its timer would have looked again
    let offset = printed.recv_timeout(wait);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(offset, Ok(3), "the follower missed the append");
}
