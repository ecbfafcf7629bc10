//! What an operator reads: a fatal error printed once, a start-up line naming what outboxd
//! uses, and `log` commands that behave in a pipe.

mod common;

use std::process::Command;

/// A local port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs `outboxd <args>` with built-in defaults plus `env`; returns (code, stderr).
fn outboxd(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args(args)
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env_remove("OUTBOXD_CONFIG")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn run_and_migrate_print_a_fatal_error_once() {
    // Given a database that is not there
    let url = format!("postgres://postgres@127.0.0.1:{}/db", closed_port());
    for command in ["run", "migrate"] {
        for format in ["text", "json"] {
            // When the command starts
            let (code, stderr) = outboxd(
                &[command],
                &[
                    ("OUTBOXD_SOURCE__URL", url.as_str()),
                    ("OUTBOXD_LOGGING__FORMAT", format),
                ],
            );

            // Then it fails, and the error is in exactly one line
            assert_eq!(code, 1, "{command} {format}: {stderr}");
            let mentions = stderr
                .lines()
                .filter(|line| line.contains("Connection refused"))
                .count();
            assert_eq!(mentions, 1, "{command} {format}: {stderr}");
            if format == "text" {
                assert!(stderr.lines().any(|l| l.starts_with("error: ")), "{stderr}");
            } else {
                for line in stderr.lines() {
                    serde_json::from_str::<serde_json::Value>(line)
                        .unwrap_or_else(|_| panic!("not a JSON line: {line}"));
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_line_names_config_database_log_directory_mode_and_sink() {
    // Given a database whose URL carries a password, and no config file in the directory
    let db = common::pg::test_db().await;
    let cwd = tempfile::tempdir().unwrap();
    let url = db.url.replacen("postgres@", "postgres:hunter2@", 1);
    assert!(url.contains("hunter2"), "{url}");
    let log = cwd.path().join("outboxd.log");

    // When `outboxd run` starts there with built-in defaults
    let mut child = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .arg("run")
        .current_dir(cwd.path())
        .env_remove("RUST_LOG")
        .env_remove("OUTBOXD_CONFIG")
        .env("OUTBOXD_SOURCE__URL", &url)
        .env("OUTBOXD_HTTP__ENABLED", "false")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if let Some(line) = text.lines().find(|l| l.contains("outboxd started")) {
            break line.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no start-up line: {text}"
        );
        assert!(child.try_wait().unwrap().is_none(), "exited: {text}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();

    // Then it names each, the log directory as an absolute path, and never the password
    let log_dir = format!("log_dir={}/data/log", cwd.path().display());
    for wanted in [
        "config=\"built-in defaults\"",
        "database=postgres://postgres:",
        &log_dir,
        "mode=\"poll\"",
        "sink=\"log\"",
    ] {
        assert!(line.contains(wanted), "{wanted} not in {line}");
    }
    assert!(!line.contains("hunter2"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_sink_without_a_broker_logs_a_few_lines_not_hundreds() {
    // Given a Kafka sink whose only broker address refuses connections
    let db = common::pg::test_db().await;
    let brokers = format!("127.0.0.1:{}", closed_port());

    // When `outboxd run` starts and gives up on the brokers (after about 10 s)
    let (code, stderr) = tokio::task::spawn_blocking(move || {
        outboxd(
            &["run"],
            &[
                ("OUTBOXD_SOURCE__URL", db.url.as_str()),
                ("OUTBOXD_HTTP__ENABLED", "false"),
                ("OUTBOXD_SINK__TYPE", "kafka"),
                ("OUTBOXD_SINK__KAFKA__BOOTSTRAP_SERVERS", brokers.as_str()),
            ],
        )
    })
    .await
    .unwrap();

    // Then librdkafka's complaints are a few lines, through the log, and the error says it all
    assert_eq!(code, 1, "{stderr}");
    let lines = stderr.lines().count();
    assert!(lines <= 15, "{lines} lines:\n{stderr}");
    assert!(
        stderr
            .lines()
            .last()
            .unwrap()
            .starts_with("error: connecting to Kafka at"),
        "{stderr}"
    );
}

/// A log of `count` records under `dir/log` (the writer is closed), and a config file for it.
fn small_log(dir: &std::path::Path, count: u64) -> std::path::PathBuf {
    use outboxd::event::{Event, Position};
    use outboxd::log::{LogWriter, NewRecord, WriterOptions};
    let log = dir.join("log");
    let mut writer = LogWriter::open(&log, WriterOptions::default()).unwrap();
    let events: Vec<Event> = (0..count)
        .map(|n| Event {
            id: format!("event-{n}"),
            subject: "order".into(),
            key: "agg".into(),
            op: outboxd::event::Operation::Insert,
            origin: outboxd::event::Origin::Outbox,
            event_type: "Step".into(),
            payload: serde_json::value::RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap(),
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
    drop(writer);
    let path = dir.join("outboxd.toml");
    let text = format!("[sink.log]\ndir = {:?}\n", log.display().to_string());
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn log_read_from_past_the_end_says_so_on_stderr() {
    // Given a log of 3 records
    let dir = tempfile::tempdir().unwrap();
    let config = small_log(dir.path(), 3);

    // When a read starts past its end
    let (code, stdout, stderr) = common::relay::run_cli(&config, &["log", "read", "--from", "10"]);

    // Then nothing is printed, and stderr says why
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("offset 10 is past the end of the log") && stderr.contains("offset 3"),
        "{stderr}"
    );
    // And a read from the end itself (the next record) stays quiet
    let (_, _, stderr) = common::relay::run_cli(&config, &["log", "read", "--from", "3"]);
    assert_eq!(stderr, "");
}

#[test]
fn log_tail_follow_exits_once_its_reader_goes_away() {
    // Given `log tail -f` printing into a pipe, on a log nobody appends to, never re-checking
    // the log on its own (so only noticing the closed pipe can end it)
    let dir = tempfile::tempdir().unwrap();
    let config = small_log(dir.path(), 3);
    let mut child = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .arg("--config")
        .arg(&config)
        .args(["log", "tail", "-f"])
        .env(outboxd::log::RECHECK_ENV, "3600000")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    for _ in 0..3 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(line.contains("\"offset\""), "{line}");
    }

    // When the reader closes the pipe
    drop(stdout);

    // Then it exits, though no record came that it could fail to write
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("log tail -f still running after its reader went away");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_backlog_logs_progress_and_when_it_is_done() {
    // Given 3,000 pending events and a relay that samples every 100 ms and takes 5 per batch
    let db = common::pg::test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::relay::config_for(&db, &dir.path().join("log"));
    config.relay.stats_interval_ms = 100;
    config.source.batch_size = 5;
    common::relay::migrate(&config).await;
    common::pg::connect(&db.url)
        .await
        .batch_execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             SELECT 't', (n % 50)::text, 'E', '{}' FROM generate_series(1, 3000) AS n",
        )
        .await
        .unwrap();

    // When the relay drains them
    let mut relay = common::relay::RelayProcess::spawn(&config, dir.path(), "relay", &["run"]);

    // Then it logs progress lines with rate, pending, lag and ETA, then that it is done
    let wait = std::time::Duration::from_secs(120);
    let line = relay
        .wait_for_log_line(
            &["draining backlog", "rate=", "pending=", "lag=", "eta="],
            wait,
        )
        .await;
    assert!(line.contains("delivered="), "{line}");
    relay.wait_for_log_line(&["backlog drained"], wait).await;
    relay.kill();
}
