//! Bad rows, bad configuration, and outbox tables that already exist. The hostile-rows matrix
//! (issue #10) runs in both source modes.

mod common;

use common::http::{get, sample};
use common::pg::{connect, test_db};
use common::relay::*;
use outboxd::config::SourceMode;
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// The `created_at` of every row of the matrix but one.
const CREATED_AT: &str = "2020-01-02 03:04:05.678";

/// One row of the hostile-rows matrix, and what must become of it.
struct Row {
    /// Event id; two rows share one to make a duplicate.
    id: Uuid,
    /// Aggregate type (`kind`).
    kind: Option<String>,
    /// Aggregate id (`entity`).
    entity: Option<String>,
    /// Event type (`name`); names the row in messages.
    name: String,
    /// Payload (`body`, a text column, so it can hold anything).
    body: Option<String>,
    /// Headers (`hdrs`, a text column too).
    hdrs: Option<String>,
    /// `created_at`, as SQL text.
    created_at: &'static str,
    /// `None`: relayed intact; otherwise the beginning of its dead-letter reason.
    dead: Option<&'static str>,
}

impl Row {
    /// A row of aggregate type `k` that is relayed intact.
    fn good(entity: &str, name: &str, body: &str) -> Row {
        Row {
            id: Uuid::new_v4(),
            kind: Some("k".into()),
            entity: Some(entity.into()),
            name: name.into(),
            body: Some(body.into()),
            hdrs: None,
            created_at: CREATED_AT,
            dead: None,
        }
    }

    /// Like `self`, but a dead letter with a reason starting `reason`.
    fn dead(self, reason: &'static str) -> Row {
        Row {
            dead: Some(reason),
            ..self
        }
    }
}

/// Every kind of hostile row, each in an aggregate of its own, between two good events of
/// aggregate `a`.
fn hostile_rows() -> Vec<Row> {
    let huge = format!("{{\"blob\":\"{}\"}}", "x".repeat(16 << 20));
    let duplicate = Uuid::new_v4();
    let control = "\u{1}\t\u{7f}\u{1b}[31m\u{202e}\u{feff}\u{2028}\r\n";
    vec![
        Row::good("a", "Good1", "{\"seq\":1}"),
        Row {
            entity: None,
            ..Row::good("-", "NullKey", "{}").dead("aggregate id is NULL")
        },
        Row::good("", "EmptyKey", "{}").dead("aggregate id is empty"),
        Row {
            kind: None,
            ..Row::good("b", "NullKind", "{}").dead("aggregate type is NULL")
        },
        Row::good("c", "NotJson", "{oops").dead("payload is not valid JSON"),
        Row::good("d", "RawControl", "{\"s\":\"a\u{1}b\"}").dead("payload is not valid JSON"),
        Row::good("e", "Huge", &huge).dead("record of"),
        Row {
            hdrs: Some("[1,2]".into()),
            ..Row::good("f", "HeadersArray", "{}").dead("headers must be a JSON object")
        },
        Row {
            hdrs: Some("null".into()),
            ..Row::good("g", "HeadersNull", "{}").dead("headers must be a JSON object")
        },
        Row {
            hdrs: Some("nope".into()),
            ..Row::good("h", "HeadersNotJson", "{}").dead("headers are not valid JSON")
        },
        Row {
            id: duplicate,
            ..Row::good("dup", "Duplicate1", "{\"n\":1}")
        },
        Row {
            id: duplicate,
            ..Row::good("dup", "Duplicate2", "{\"n\":2}")
        },
        Row {
            kind: Some(format!("k{control}é")),
            entity: Some(format!("ü{control}😀")),
            name: format!("Unicode{control}"),
            body: Some(r#"{"s":"zażółć \u0000 \u001f \ud83d\ude00 😀","\u2028":[]}"#.into()),
            hdrs: Some(r#"{"h\n":"v\u0001 ☃","n":1,"o":{"x":null}}"#.into()),
            ..Row::good("-", "-", "-")
        },
        Row {
            created_at: "infinity",
            ..Row::good("i", "InfiniteTime", "{}")
        },
        Row::good("a", "Good2", "{\"seq\":2}"),
    ]
}

/// Hostile rows in `mode`: each is relayed intact or becomes a dead letter with its reason
/// (logged, counted in `outboxd_dead_letters_total`, and in polling mode marked failed on its
/// row), and none stops the flow: the good event written after them all arrives.
async fn hostile_rows_are_relayed_intact_or_dead_lettered_and_never_stop_the_flow(
    mode: SourceMode,
) {
    // Given a Debezium-style outbox with its own column names, nullable columns, text payload
    // and headers, a created_at without time zone and no primary key, and a relay process (so
    // the metrics are its own). The database's time zone is UTC, the zone logical mode reads a
    // timestamp without time zone in, so both modes read created_at alike.
    let db = test_db().await;
    let client = connect(&db.url).await;
    client
        .batch_execute(&format!(
            "ALTER DATABASE {} SET timezone = 'UTC';
             CREATE SCHEMA app;
             CREATE TABLE app.events (
                 event_id uuid NOT NULL DEFAULT gen_random_uuid(),
                 kind varchar(255), entity varchar(255), name varchar(255), body text, hdrs text,
                 created_at timestamp NOT NULL DEFAULT now()
             );",
            db.name
        ))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_in(mode, &db, &log);
    config.source.table.schema = "app".into();
    config.source.table.name = "events".into();
    let columns = &mut config.source.columns;
    columns.id = "event_id".into();
    columns.aggregate_type = "kind".into();
    columns.aggregate_id = "entity".into();
    columns.event_type = "name".into();
    columns.payload = "body".into();
    columns.headers = "hdrs".into();
    migrate(&config).await;
    let mut relay = RelayProcess::spawn(&config, dir.path(), "relay", &["run"]);
    let addr = relay.http_addr().await;

    // When the rows are committed, one transaction each
    let rows = hostile_rows();
    for row in &rows {
        client
            .execute(
                "INSERT INTO app.events (event_id, kind, entity, name, body, hdrs, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7::text::timestamp)",
                &[
                    &row.id,
                    &row.kind,
                    &row.entity,
                    &row.name,
                    &row.body,
                    &row.hdrs,
                    &row.created_at,
                ],
            )
            .await
            .unwrap();
    }

    // Then the good rows arrive intact and in order, the last one too
    let good: Vec<&Row> = rows.iter().filter(|row| row.dead.is_none()).collect();
    let dead: Vec<&Row> = rows.iter().filter(|row| row.dead.is_some()).collect();
    wait_for_records(&log, good.len()).await;
    let records = read_log(&log);
    assert_eq!(records.len(), good.len(), "{mode:?}: {records:?}");
    for (record, row) in records.iter().zip(&good) {
        let event = &record.event;
        let name = &row.name;
        assert_eq!(event.id, row.id.to_string(), "{mode:?} {name}");
        assert_eq!(Some(&event.subject), row.kind.as_ref(), "{mode:?} {name}");
        assert_eq!(Some(&event.key), row.entity.as_ref(), "{mode:?} {name}");
        assert_eq!(&event.event_type, name, "{mode:?}");
        assert_eq!(
            Some(event.payload.get()),
            row.body.as_deref(),
            "{mode:?} {name}"
        );
        let headers = event.headers.as_ref().map(|h| h.get());
        assert_eq!(headers, row.hdrs.as_deref(), "{mode:?} {name}");
        if row.created_at == CREATED_AT {
            let created_at = event.created_at.format("%Y-%m-%d %H:%M:%S%.3f").to_string();
            assert_eq!(created_at, CREATED_AT, "{mode:?} {name}");
        }
    }

    // And each hostile row that is not relayed is logged with its id and reason, and counted
    for row in &dead {
        let id = row.id.to_string();
        let reason = format!("reason={}", row.dead.unwrap());
        relay.wait_for_log_line(&[&id, &reason], WAIT).await;
    }
    let counted = "outboxd_dead_letters_total";
    let deadline = std::time::Instant::now() + WAIT;
    let metrics = loop {
        let (_, metrics) = get(addr, "/metrics").await;
        if sample(&metrics, counted) >= dead.len() as f64 || std::time::Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(sample(&metrics, counted), dead.len() as f64, "{mode:?}");

    // And in polling mode, each is marked failed on its row with the reason
    if mode == SourceMode::Poll {
        let failed = client
            .query(
                "SELECT event_id, last_error FROM app.events WHERE failed_at IS NOT NULL \
                 ORDER BY position",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(failed.len(), dead.len());
        for (row, expected) in failed.iter().zip(&dead) {
            let (id, reason): (Uuid, String) = (row.get(0), row.get(1));
            assert_eq!(id, expected.id);
            let prefix = expected.dead.unwrap();
            assert!(reason.starts_with(prefix), "{}: {reason}", expected.name);
        }
    }
    relay.kill();
    drop_slot(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_mode_hostile_rows_are_relayed_intact_or_dead_lettered_and_never_stop_the_flow() {
    hostile_rows_are_relayed_intact_or_dead_lettered_and_never_stop_the_flow(SourceMode::Poll)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_mode_hostile_rows_are_relayed_intact_or_dead_lettered_and_never_stop_the_flow() {
    hostile_rows_are_relayed_intact_or_dead_lettered_and_never_stop_the_flow(SourceMode::Logical)
        .await;
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
    let files = std::fs::read_dir("migrations").unwrap().count() as i64;
    assert_eq!(versions, files);
    let relay = InProcessRelay::start(&config).await;
    let logs = wait_for_events(&[&log], 1, WAIT).await;
    relay.stop().await;
    assert_eq!(logs[0][0].event.event_type, "Placed");
}

/// An aggregate id of 4 KB that no compression shrinks much (random hex), larger than a btree
/// index entry may be.
const LONG_AGGREGATE_ID: &str =
    "(SELECT string_agg(md5(random()::text || i::text), '') FROM generate_series(1, 128) i)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_with_a_long_incompressible_aggregate_id_never_stops_the_relay() {
    // Given a relay process, and a row with a 4 KB random aggregate id and headers that are
    // not an object, then an event of another aggregate
    let db = test_db().await;
    let client = connect(&db.url).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_for(&db, &log);
    migrate(&config).await;
    let mut relay = RelayProcess::spawn(&config, dir.path(), "first", &["run"]);
    relay.http_addr().await;
    client
        .batch_execute(&format!(
            "CREATE TEMP TABLE long_id AS SELECT {LONG_AGGREGATE_ID} AS id;
             INSERT INTO outbox (aggregatetype, aggregateid, type, payload, headers)
                 SELECT 'order', id, 'Bad', '{{}}', '[1]' FROM long_id;
             INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
                 VALUES ('order', 'other', 'Other1', '{{}}');"
        ))
        .await
        .unwrap();

    // Then the bad row is recorded as a dead letter and the other event is delivered
    wait_delivered(&mut relay, &log, 1).await;
    wait_until_failed(&db, 1).await;
    assert_eq!(types_in(&log), ["Other1"]);
    assert_eq!(
        relay.child.try_wait().unwrap(),
        None,
        "{}",
        relay.log_text()
    );

    // And when a later event of the long aggregate and one of another follow, the relay keeps
    // delivering, and the later event waits behind its aggregate's dead letter
    client
        .batch_execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
                 SELECT 'order', id, 'AfterBad', '{}' FROM long_id;
             INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
                 VALUES ('order', 'other', 'Other2', '{}');",
        )
        .await
        .unwrap();
    wait_delivered(&mut relay, &log, 2).await;
    assert_eq!(types_in(&log), ["Other1", "Other2"]);

    // And when it restarts, it still runs and delivers, and the long aggregate stays blocked
    relay.kill();
    let mut relay = RelayProcess::spawn(&config, dir.path(), "second", &["run"]);
    relay.http_addr().await;
    client
        .batch_execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
                 VALUES ('order', 'other', 'Other3', '{}');",
        )
        .await
        .unwrap();
    wait_delivered(&mut relay, &log, 3).await;
    assert_eq!(types_in(&log), ["Other1", "Other2", "Other3"]);
    assert_eq!(failed_rows(&db).await, 1);
    assert_eq!(
        relay.child.try_wait().unwrap(),
        None,
        "{}",
        relay.log_text()
    );
    relay.kill();
}

/// Waits until the log at `log` holds `count` records; panics with the relay's log if it exits
/// first.
async fn wait_delivered(relay: &mut RelayProcess, log: &std::path::Path, count: usize) {
    let deadline = std::time::Instant::now() + WAIT;
    while read_log(log).len() < count {
        let exited = relay.child.try_wait().unwrap();
        assert!(
            exited.is_none() && std::time::Instant::now() < deadline,
            "{count} records not delivered (exited: {exited:?}):\n{}",
            relay.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `count` rows are marked failed.
async fn wait_until_failed(db: &common::pg::TestDb, count: i64) {
    let deadline = std::time::Instant::now() + WAIT;
    while failed_rows(db).await < count {
        assert!(
            std::time::Instant::now() < deadline,
            "no dead letter recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The event types in the log at `log`, in order.
fn types_in(log: &std::path::Path) -> Vec<String> {
    read_log(log)
        .into_iter()
        .map(|record| record.event.event_type)
        .collect()
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
