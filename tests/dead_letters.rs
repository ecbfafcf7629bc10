//! Operating dead letters: a skipped one stays skipped, a retry never overtakes a later event of
//! its aggregate, skipped ones stop counting, `status` says what waits behind them and which
//! relay is active, and a NULL payload is a dead letter the table then refuses.

mod common;

use common::faults::start_refusing;
use common::http::{get, sample};
use common::pg::{TestDb, connect, test_db};
use common::relay::*;

use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// Inserts one event per transaction: `(aggregate, type, headers)`.
async fn insert(db: &TestDb, events: &[(&str, &str, Option<&str>)]) {
    let client = connect(&db.url).await;
    for (aggregate, kind, headers) in events {
        client
            .execute(
                "INSERT INTO outbox (aggregatetype, aggregateid, type, payload, headers) \
                 VALUES ('t', $1, $2, '{}', $3::text::jsonb)",
                &[aggregate, kind, headers],
            )
            .await
            .unwrap();
    }
}

/// The id of the event of `event_type`.
async fn id_of(db: &TestDb, event_type: &str) -> String {
    connect(&db.url)
        .await
        .query_one(
            "SELECT id::text FROM outbox WHERE type = $1",
            &[&event_type],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits until `count` rows are marked failed.
async fn wait_failed(db: &TestDb, count: i64) {
    let deadline = Instant::now() + WAIT;
    while failed_rows(db).await < count {
        assert!(Instant::now() < deadline, "fewer than {count} dead letters");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `outboxd status --json`, parsed.
fn status(path: &std::path::Path) -> serde_json::Value {
    let (code, stdout, stderr) = run_cli(path, &["status", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_dead_letter_stays_skipped_and_a_retry_never_overtakes_a_later_event() {
    // Given a sink that refuses Poison, and a1, a2 (poison), a3 written
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_for(&db, &log);
    let (relay, faults) = start_refusing(&config, &["Poison"]).await;
    insert(
        &db,
        &[
            ("a", "One", None),
            ("a", "Poison", None),
            ("a", "Three", None),
        ],
    )
    .await;
    wait_failed(&db, 1).await;
    let poison = id_of(&db, "Poison").await;
    let three = id_of(&db, "Three").await;

    // When the operator skips the dead letter, a3 flows
    let path = write_config(&config, dir.path(), "c");
    let (code, _, stderr) = run_cli(&path, &["dlq", "skip", &poison]);
    assert_eq!(code, 0, "{stderr}");
    wait_for_events(&[&log], 2, WAIT).await;
    faults.lock().unwrap().refuse_types.clear();

    // Then `retry --all` and `retry --aggregate` leave the skipped dead letter alone
    let (code, stdout, stderr) = run_cli(&path, &["dlq", "retry", "--all"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("re-queued 0"), "{stdout}");
    let (code, _, stderr) = run_cli(&path, &["dlq", "retry", "--aggregate", "a"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("skipped ones are retried only by id"),
        "{stderr}"
    );

    // And a retry by id is refused, naming the event and the later one already delivered
    let (code, _, stderr) = run_cli(&path, &["dlq", "retry", &poison]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&poison) && stderr.contains(&three) && stderr.contains("already delivered"),
        "{stderr}"
    );
    let client = connect(&db.url).await;
    let still: bool = client
        .query_one(
            "SELECT failed_at IS NOT NULL AND skipped_at IS NOT NULL FROM outbox WHERE type = 'Poison'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(still, "the refused retry changed the row");

    // And with --out-of-order the operator can deliver it anyway, after a3
    let (code, stdout, stderr) = run_cli(&path, &["dlq", "retry", "--out-of-order", &poison]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("re-queued 1"), "{stdout}");
    let logs = wait_for_events(&[&log], 3, WAIT).await;
    relay.stop().await;
    let types: Vec<&str> = logs[0]
        .iter()
        .map(|r| r.event.event_type.as_str())
        .collect();
    assert_eq!(types, vec!["One", "Three", "Poison"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_on_dead_letter_skip_retry_all_refuses_a_letter_whose_aggregate_moved_on() {
    // Given on_dead_letter = skip: a2 is refused and a3 flows past it
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_for(&db, &log);
    config.relay.on_dead_letter = outboxd::config::OnDeadLetter::Skip;
    let (relay, _) = start_refusing(&config, &["Poison"]).await;
    insert(
        &db,
        &[
            ("a", "One", None),
            ("a", "Poison", None),
            ("a", "Three", None),
        ],
    )
    .await;
    wait_for_events(&[&log], 2, WAIT).await;
    wait_failed(&db, 1).await;
    relay.stop().await;

    // When the operator retries every dead letter
    let path = write_config(&config, dir.path(), "c");
    let (code, _, stderr) = run_cli(&path, &["dlq", "retry", "--all"]);

    // Then it is refused, naming the later event, and the dead letter stays
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&id_of(&db, "Three").await), "{stderr}");
    assert_eq!(failed_rows(&db).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_dead_letter_no_longer_counts_in_status_or_the_gauge() {
    // Given a relay process and two rows rejected for their headers
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_for(&db, &log);
    config.relay.stats_interval_ms = 100;
    let mut relay = RelayProcess::spawn(&config, dir.path(), "relay", &["run"]);
    let addr = relay.http_addr().await;
    insert(
        &db,
        &[
            ("x", "BadHeaders", Some("[1]")),
            ("y", "BadToo", Some("[2]")),
        ],
    )
    .await;
    wait_failed(&db, 2).await;
    let path = write_config(&config, dir.path(), "c");
    assert_eq!(status(&path)["dead_letters"], 2);

    // Then `dlq show` gives the headers that were refused and when the row was written, and
    // `dlq list` when each failed
    let id = id_of(&db, "BadHeaders").await;
    let (code, stdout, stderr) = run_cli(&path, &["dlq", "show", &id, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let shown: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shown["headers"], serde_json::json!([1]), "{stdout}");
    assert!(shown["created_at"].is_string(), "{stdout}");
    assert_eq!(shown["last_error"], "headers must be a JSON object");
    let (_, stdout, _) = run_cli(&path, &["dlq", "list"]);
    let year = chrono::Utc::now().format("failed %Y-").to_string();
    assert!(stdout.lines().all(|l| l.contains(&year)), "{stdout}");

    // When the operator skips them all
    let (code, stdout, stderr) = run_cli(&path, &["dlq", "skip", "--all"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("skipped 2"), "{stdout}");

    // Then status counts them apart, and the gauge alerts watch drops to zero
    let after = status(&path);
    assert_eq!(after["dead_letters"], 0, "{after}");
    assert_eq!(after["skipped_dead_letters"], 2, "{after}");
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, metrics) = get(addr, "/metrics").await;
        if sample(&metrics, "outboxd_dead_letters_current") == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "gauge stuck: {metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_schema_and_table_the_active_relay_and_what_waits_behind_a_dead_letter() {
    // Given a relay process, a dead letter of x and then two more events of x and one of y
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_for(&db, &log);
    let mut relay = RelayProcess::spawn(&config, dir.path(), "relay", &["run"]);
    relay.http_addr().await;
    insert(&db, &[("x", "Bad", Some("[1]"))]).await;
    wait_failed(&db, 1).await;
    insert(
        &db,
        &[("x", "Two", None), ("x", "Three", None), ("y", "One", None)],
    )
    .await;
    wait_for_events(&[&log], 1, WAIT).await;

    // When status is asked
    let path = write_config(&config, dir.path(), "c");
    let status_now = status(&path);

    // Then schema and table are separate fields, the two events of x count as blocked, and the
    // active relay is named
    assert_eq!(status_now["schema"], "public", "{status_now}");
    assert_eq!(status_now["table"], "outbox", "{status_now}");
    assert_eq!(status_now["pending"], 2, "{status_now}");
    assert_eq!(status_now["pending_blocked"], 2, "{status_now}");
    assert_eq!(status_now["relay_active"], true, "{status_now}");
    let active = &status_now["active_relay"];
    assert_eq!(active["application_name"], "outboxd", "{status_now}");
    assert!(active["session_started_at"].is_string(), "{status_now}");
    let (_, text, _) = run_cli(&path, &["status"]);
    assert!(text.contains("2 waiting behind dead letters"), "{text}");
    assert!(text.contains("active: outboxd at"), "{text}");

    // And once the relay is gone, none is active
    relay.kill();
    let deadline = Instant::now() + WAIT;
    while status(&path)["relay_active"] != false {
        assert!(Instant::now() < deadline, "relay still reported active");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_payload_becomes_a_dead_letter_and_the_migrated_table_refuses_new_ones() {
    // Given an existing outbox table that already holds a row with a NULL payload
    let db = test_db().await;
    let client = connect(&db.url).await;
    client
        .batch_execute(
            "CREATE TABLE outbox (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), \
             aggregatetype text NOT NULL, aggregateid text NOT NULL, type text NOT NULL, \
             payload jsonb, headers jsonb); \
             INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             VALUES ('t', 'a', 'NoBody', NULL), ('t', 'b', 'Body', 'null');",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_for(&db, &log);

    // When outboxd migrates and relays it
    let relay = RelayProcess::spawn(&config, dir.path(), "relay", &["run"]);

    // Then the JSON null is relayed and the NULL payload is a dead letter saying why
    let logs = wait_for_events(&[&log], 1, WAIT).await;
    wait_failed(&db, 1).await;
    relay.kill();
    assert_eq!(logs[0][0].event.event_type, "Body");
    let reason: String = client
        .query_one("SELECT last_error FROM outbox WHERE type = 'NoBody'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(reason, "payload is NULL");

    // And the row cannot be retried before it is repaired, and the table now refuses a NULL
    // payload at insert time
    let path = write_config(&config, dir.path(), "c");
    let id = id_of(&db, "NoBody").await;
    let (code, _, stderr) = run_cli(&path, &["dlq", "retry", &id]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("outboxd_outbox_payload_check"), "{stderr}");
    let refused = client
        .execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             VALUES ('t', 'c', 'NoBody2', NULL)",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_parked_behind_a_dead_letter_deleted_by_hand_flow_without_an_outboxd_command() {
    // Given a dead letter of `a` and two later events of `a` parked (marked) behind it
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_for(&db, &log);
    let (relay, _) = start_refusing(&config, &["Poison"]).await;
    insert(&db, &[("a", "Poison", None)]).await;
    wait_failed(&db, 1).await;
    insert(
        &db,
        &[
            ("a", "Two", None),
            ("a", "Three", None),
            ("b", "Other", None),
        ],
    )
    .await;
    wait_for_events(&[&log], 1, WAIT).await;
    let client = connect(&db.url).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let marked: i64 = client
            .query_one(
                "SELECT count(*) FROM outbox WHERE blocked_by IS NOT NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if marked == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{marked} rows marked, not 2");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // When an operator deletes the dead letter by hand (not through `outboxd dlq`, which
    // releases the marks itself)
    client
        .execute("DELETE FROM outbox WHERE type = 'Poison'", &[])
        .await
        .unwrap();

    // Then the parked events are delivered, in order, by the running relay
    let logs = wait_for_events(&[&log], 3, WAIT).await;
    relay.stop().await;
    let types: Vec<&str> = logs[0]
        .iter()
        .map(|r| r.event.event_type.as_str())
        .collect();
    assert_eq!(types, vec!["Other", "Two", "Three"]);
}
