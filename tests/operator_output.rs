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
