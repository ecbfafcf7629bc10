//! Bad rows, bad configuration, and outbox tables that already exist.

mod common;

use common::pg::{connect, test_db};
use common::relay::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_marked_failed_with_a_reason_and_the_rest_keep_flowing() {
    // Given a Debezium-style outbox that already exists, with its own column names, nullable
    // columns and a text payload, and a relay configured for it with a small record limit
    let db = test_db().await;
    let client = connect(&db.url).await;
    client
        .batch_execute(
            "CREATE SCHEMA app;
             CREATE TABLE app.events (
                 event_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                 kind varchar(255), entity varchar(255), name varchar(255), body text
             );",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_for(&db, &log);
    config.source.table.schema = "app".into();
    config.source.table.name = "events".into();
    let columns = &mut config.source.columns;
    columns.id = "event_id".into();
    columns.aggregate_type = "kind".into();
    columns.aggregate_id = "entity".into();
    columns.event_type = "name".into();
    columns.payload = "body".into();
    config.sink.log.max_record_bytes = 4096;
    let relay = InProcessRelay::start(&config).await;

    // When good rows and bad rows are committed together
    let big = format!("{{\"blob\":\"{}\"}}", "x".repeat(10_000));
    let rows: [(Option<&str>, &str, &str); 6] = [
        (Some("a"), "Good1", "{\"ok\":1}"),
        (None, "NullKey", "{}"),
        (Some("b"), "NotJson", "{oops"),
        (Some("c"), "TooBig", &big),
        (Some("d"), "Unicode", "{\"s\":\"zażółć \\u0000 \u{1F600}\"}"),
        (Some("a"), "Good2", "{\"ok\":2}"),
    ];
    for (entity, name, body) in rows {
        client
            .execute(
                "INSERT INTO app.events (kind, entity, name, body) VALUES ('k', $1, $2, $3)",
                &[&entity, &name, &body],
            )
            .await
            .unwrap();
    }

    // Then the good rows arrive in order, and each bad row is failed with its reason
    let logs = wait_for_events(&[&log], 3, WAIT).await;
    let names: Vec<&str> = logs[0]
        .iter()
        .map(|r| r.event.event_type.as_str())
        .collect();
    assert_eq!(names, vec!["Good1", "Unicode", "Good2"]);
    let deadline = std::time::Instant::now() + WAIT;
    let failed = loop {
        let rows = client
            .query(
                "SELECT name, last_error FROM app.events WHERE failed_at IS NOT NULL ORDER BY position",
                &[],
            )
            .await
            .unwrap();
        if rows.len() == 3 || std::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    relay.stop().await;
    let failed: Vec<(String, String)> = failed.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert_eq!(failed[0], ("NullKey".into(), "aggregate id is NULL".into()));
    assert_eq!(failed[1].0, "NotJson");
    assert!(
        failed[1].1.starts_with("payload is not valid JSON"),
        "{}",
        failed[1].1
    );
    assert_eq!(failed[2].0, "TooBig");
    assert!(
        failed[2].1.contains("sink.log.max_record_bytes"),
        "{}",
        failed[2].1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_existing_rows_are_relayed() {
    // Given a Debezium outbox table holding one event already
    let db = test_db().await;
    let client = connect(&db.url).await;
    client
        .batch_execute(
            "CREATE TABLE outbox (id uuid PRIMARY KEY, aggregatetype varchar(255) NOT NULL,
                 aggregateid varchar(255) NOT NULL, type varchar(255) NOT NULL, payload jsonb);
             INSERT INTO outbox VALUES (gen_random_uuid(), 'order', '1', 'Placed', '{\"n\":1}');",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_for(&db, &log);
    let path = write_config(&config, dir.path(), "outboxd");

    // When `outboxd migrate` runs twice
    for _ in 0..2 {
        let (code, _, stderr) = run_cli(&path, &["migrate"]);
        assert_eq!(code, 0, "{stderr}");
    }

    // Then the migrations are recorded once, and the relay delivers the old row
    let versions: i64 = client
        .query_one(
            "SELECT count(*) FROM outboxd_migrations WHERE outbox = 'outbox'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions, 4);
    let relay = InProcessRelay::start(&config).await;
    let logs = wait_for_events(&[&log], 1, WAIT).await;
    relay.stop().await;
    assert_eq!(logs[0][0].event.event_type, "Placed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_one_clear_error_line_and_a_non_zero_exit() {
    // Given a configuration pointing at a port nobody listens on, with a password in the URL
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = outboxd::config::Config::default();
    config.source.url =
        outboxd::config::DbUrl::new(format!("postgres://app:hunter2@127.0.0.1:{port}/x"));
    config.source.connect_timeout_ms = 2000;
    config.sink.log.dir = dir.path().join("log");
    let path = std::fs::read_to_string(write_config(&config, dir.path(), "c")).unwrap();
    // (the config writer masks the password; put the real one back)
    let path_real = dir.path().join("real.toml");
    std::fs::write(&path_real, path.replace(outboxd::config::MASK, "hunter2")).unwrap();

    // When the relay starts
    let (code, _, stderr) = run_cli(&path_real, &["run"]);

    // Then it exits non-zero with one error line that names the target but not the password
    assert_eq!(code, 1, "{stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("error: connecting to PostgreSQL at postgres://app:********@"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_without_auto_migrate_is_a_clear_error() {
    // Given an empty database and auto_migrate off
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    config.source.auto_migrate = false;
    let path = write_config(&config, dir.path(), "c");

    // When the relay starts, then it says which table is missing and how to create it
    let (code, _, stderr) = run_cli(&path, &["run"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("outbox table \"public\".\"outbox\" does not exist; run `outboxd migrate`"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_masks_secrets_and_rejects_typos() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[source]\nurl = \"postgres://app:hunter2@db/x\"\npassword = \"s3cret\"\n",
    )
    .unwrap();
    let (code, stdout, stderr) = run_cli(&path, &["check-config"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("postgres://app:********@db/x"), "{stdout}");
    assert!(
        !stdout.contains("hunter2") && !stdout.contains("s3cret"),
        "{stdout}"
    );

    std::fs::write(&path, "[sink.log]\ndirectory = \"x\"\n").unwrap();
    let (code, _, stderr) = run_cli(&path, &["check-config"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown field `directory`"), "{stderr}");
}
