//! Logical replication mode end to end on the throwaway cluster (`wal_level = logical`), and the
//! scenarios every source mode must pass, run for both modes.
//!
//! Each test has its own database and its own slot and publication (named after the database,
//! since slots count cluster-wide), and drops its slot at the end.

mod common;

use common::faults::{FaultSink, Faults};
use common::pg::{TestDb, connect, test_db};
use common::relay::*;
use outboxd::config::{DbUrl, SourceMode};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(120);

/// The slot's confirmed_flush_lsn minus `lsn`, in bytes (positive: the slot is past it).
async fn slot_past(db: &TestDb, lsn: &str) -> i64 {
    let client = connect(&db.url).await;
    client
        .query_one(
            "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, $2::text::pg_lsn)::int8 \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.name, &lsn],
        )
        .await
        .unwrap()
        .get(0)
}
// ---- The shared scenarios, run for both modes ----

/// 8 concurrent writers with per-aggregate sequences: every event arrives, each aggregate in
/// order.
async fn concurrent_writers_keep_aggregate_order(mode: SourceMode) {
    // Given a relay in `mode`
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_in(mode, &db, &log);
    migrate(&config).await;
    create_aggregates(&db, 30).await;
    let relay = InProcessRelay::start(&config).await;

    // When 8 writers write 2,000 events over 30 aggregates
    write_events(&db, 8, 250, 30).await;

    // Then all arrive, each aggregate in order
    let logs = wait_for_events(&[&log], 2000, WAIT).await;
    let repeats = assert_in_order(&logs[0]);
    assert_eq!(
        assert_complete(&logs[0].iter().collect::<Vec<_>>(), 2000),
        repeats
    );
    relay.stop().await;
    drop_slot(&db).await;
}

/// SIGKILL of the relay binary mid-stream and a restart: nothing lost, no duplicate in the log.
async fn sigkill_and_restart_lose_nothing(mode: SourceMode) {
    // Given a relay process and writers producing 6,000 events
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_in(mode, &db, &log);
    config.source.batch_size = 200;
    migrate(&config).await;
    create_aggregates(&db, 40).await;
    let relay = RelayProcess::spawn(&config, dir.path(), "first", &["run"]);
    let writers = tokio::spawn({
        let db = db.clone();
        async move { write_events(&db, 4, 1500, 40).await }
    });

    // When it is SIGKILLed mid-stream and started again
    wait_for_records(&log, 500).await;
    relay.kill();
    let before = read_log(&log).len();
    let restarted = RelayProcess::spawn(&config, dir.path(), "second", &["run"]);
    writers.await.unwrap();

    // Then every event arrives, each aggregate in order, and the log holds no duplicate
    let logs = wait_for_events(&[&log], 6000, WAIT).await;
    let repeats = assert_in_order(&logs[0]);
    assert_eq!(
        assert_complete(&logs[0].iter().collect::<Vec<_>>(), 6000),
        repeats
    );
    assert_eq!(
        repeats, 0,
        "{repeats} duplicates across a SIGKILL ({mode:?})"
    );
    assert!(before < 6000, "the kill came after the stream ended");
    restarted.kill();
    drop_slot(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_mode_concurrent_writers_keep_aggregate_order() {
    concurrent_writers_keep_aggregate_order(SourceMode::Poll).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_mode_concurrent_writers_keep_aggregate_order() {
    concurrent_writers_keep_aggregate_order(SourceMode::Logical).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_mode_sigkill_and_restart_lose_nothing() {
    sigkill_and_restart_lose_nothing(SourceMode::Poll).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_mode_sigkill_and_restart_lose_nothing() {
    sigkill_and_restart_lose_nothing(SourceMode::Logical).await;
}

// ---- Logical mode only ----

/// Inserts one event row with `payload` (SQL expression) in its own transaction.
const INSERT: &str = "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
                      VALUES ('order', $1, 'E', $2::text::jsonb)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_one_transaction_of_100000_rows_arrives_with_bounded_memory() {
    // Given a relay binary in logical mode
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_in(SourceMode::Logical, &db, &log);
    migrate(&config).await;
    let relay = RelayProcess::spawn(&config, dir.path(), "big", &["run"]);

    // When one transaction inserts 100,000 rows
    let client = connect(&db.url).await;
    client
        .batch_execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             SELECT 'order', 'big-' || (i % 100), 'E', jsonb_build_object('i', i, 'pad', \
             repeat('x', 200)) FROM generate_series(1, 100000) i",
        )
        .await
        .unwrap();

    // Then all arrive, and the relay's peak RSS stays bounded
    wait_for_events(&[&log], 100_000, WAIT).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", relay.child.id())).unwrap();
    let hwm_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM");
    println!("peak RSS of the relay over a 100,000-row transaction: {hwm_kb} kB");
    assert!(hwm_kb < 150 * 1024, "peak RSS {hwm_kb} kB");
    relay.kill();
    drop_slot(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_toasted_payload_deleted_rows_and_event_messages_arrive() {
    // Given a relay in logical mode
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_in(SourceMode::Logical, &db, &log);
    migrate(&config).await;
    let relay = InProcessRelay::start(&config).await;
    let mut client = connect(&db.url).await;

    // When a 1 MB payload (TOASTed) is written
    let big: String = (0..31_250).map(|i| format!("{:032x}", i * 7919)).collect();
    let big_json = serde_json::json!({ "blob": big }).to_string();
    client
        .execute(INSERT, &[&"toast", &big_json])
        .await
        .unwrap();
    // And a row is inserted and deleted in the same transaction
    let tx = client.transaction().await.unwrap();
    tx.execute(INSERT, &[&"gone", &"{\"n\":1}"]).await.unwrap();
    tx.execute("DELETE FROM outbox WHERE aggregateid = 'gone'", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // And an invalid and a valid event message are emitted, then one more row
    client
        .batch_execute(
            "BEGIN; SELECT pg_logical_emit_message(true, 'outboxd', 'not json'); \
             SELECT pg_logical_emit_message(true, 'outboxd', \
             '{\"aggregatetype\":\"order\",\"aggregateid\":\"msg\",\"type\":\"Emitted\",\
             \"payload\":{\"n\":2},\"headers\":{\"h\":\"v\"}}'); COMMIT;",
        )
        .await
        .unwrap();
    client.execute(INSERT, &[&"after", &"{}"]).await.unwrap();

    // Then all four events arrive intact, in commit order
    let logs = wait_for_events(&[&log], 4, WAIT).await;
    let ids: Vec<&str> = logs[0].iter().map(|r| r.event.key.as_str()).collect();
    assert_eq!(ids, ["toast", "gone", "msg", "after"]);
    let payload: serde_json::Value = serde_json::from_str(logs[0][0].event.payload.get()).unwrap();
    assert_eq!(payload["blob"].as_str().unwrap(), big);
    assert_eq!(logs[0][2].event.event_type, "Emitted");
    assert_eq!(
        logs[0][2].event.headers.as_ref().unwrap().get(),
        r#"{"h":"v"}"#
    );
    let rows: i64 = client
        .query_one(
            "SELECT count(*) FROM outbox WHERE aggregateid = 'gone'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
    relay.stop().await;
    drop_slot(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_idle_heartbeat_advances_the_slot() {
    // Given a relay in logical mode with a 200 ms heartbeat
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_in(SourceMode::Logical, &db, &log);
    migrate(&config).await;
    let relay = InProcessRelay::start(&config).await;

    // When WAL is written only outside the outbox
    let client = connect(&db.url).await;
    client
        .batch_execute(
            "CREATE TABLE other (x int); INSERT INTO other SELECT generate_series(1, 1000)",
        )
        .await
        .unwrap();
    let lsn: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);

    // Then the slot still moves past it
    let deadline = Instant::now() + Duration::from_secs(30);
    while slot_past(&db, &lsn).await < 0 {
        assert!(Instant::now() < deadline, "slot never passed {lsn}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.stop().await;
    drop_slot(&db).await;
}

/// The process streaming from the test's slot, if one does.
async fn walsender_pid(db: &TestDb) -> Option<i32> {
    connect(&db.url)
        .await
        .query_one(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0)
}

/// Writes one transaction of 60 events over 6 aggregates, the `round`-th (from 0): each
/// aggregate's sequence goes on from the previous round.
async fn write_round(db: &TestDb, round: i32) {
    connect(&db.url)
        .await
        .execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             SELECT 'order', 'agg-' || (i % 6), 'Step', jsonb_build_object('seq', $1 * 10 + i / 6 + 1) \
             FROM generate_series(0, 59) i",
            &[&round],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_lost_stream_hands_out_nothing_again_that_a_lane_still_holds() {
    // Given a relay in logical mode whose sink holds its first publish: of a transaction of 60
    // events over 6 aggregates (and 4 lanes), some are in a lane, unacknowledged, the rest
    // acknowledged or about to be
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_in(SourceMode::Logical, &db, &log);
    config.source.batch_size = 100;
    migrate(&config).await;
    let (started_tx, started) = oneshot::channel();
    let (release, release_rx) = oneshot::channel();
    let faults = Arc::new(Mutex::new(Faults {
        hold_once: Some((started_tx, release_rx)),
        ..Faults::default()
    }));
    let relay = InProcessRelay::start_with(&config, |inner| FaultSink { inner, faults }).await;
    write_round(&db, 0).await;
    assert!(started.await.unwrap() > 0);

    // When the replication connection is lost, the relay re-opens it (the server replays the
    // transaction: nothing of it was confirmed), and another transaction follows
    let old = walsender_pid(&db).await.expect("streaming");
    connect(&db.url)
        .await
        .execute("SELECT pg_terminate_backend($1)", &[&old])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while walsender_pid(&db).await.is_none_or(|pid| pid == old) {
        assert!(Instant::now() < deadline, "the stream was never re-opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    write_round(&db, 1).await;
    release.send(()).unwrap();

    // Then every event arrives once, each aggregate in order, and the slot moves past them all
    let logs = wait_for_events(&[&log], 120, WAIT).await;
    let repeats = assert_in_order(&logs[0]);
    assert_eq!(
        assert_complete(&logs[0].iter().collect::<Vec<_>>(), 120),
        repeats
    );
    assert_eq!(repeats, 0, "events handed out again after the reconnect");
    let lsn: String = connect(&db.url)
        .await
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while slot_past(&db, &lsn).await < 0 {
        assert!(Instant::now() < deadline, "slot never passed {lsn}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.stop().await;
    drop_slot(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_migrate_without_replication_privilege_names_the_fix() {
    // Given an outbox migrated by its owner and a role without REPLICATION
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_in(SourceMode::Logical, &db, &log);
    config.source.mode = SourceMode::Poll;
    migrate(&config).await;
    let role = format!("norepl_{}", &db.name[db.name.len() - 8..]);
    connect(&db.url)
        .await
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA public TO {role}; \
             GRANT SELECT ON outbox, outboxd_migrations TO {role};"
        ))
        .await
        .unwrap();
    config.source.mode = SourceMode::Logical;
    config.source.url = DbUrl::new(db.url.replacen("postgres@", &format!("{role}@"), 1));

    // When it runs `outboxd migrate`, then it fails with the exact message
    let path = write_config(&config, dir.path(), "norepl");
    let (code, _, stderr) = run_cli(&path, &["migrate"]);
    assert_eq!(code, 1, "{stderr}");
    let expected = format!(
        "role \"{role}\" lacks the REPLICATION attribute that source.mode = \"logical\" needs; \
         grant it with: ALTER ROLE \"{role}\" WITH REPLICATION"
    );
    assert!(stderr.contains(&expected), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_second_relay_on_the_slot_stands_by_and_takes_over() {
    // Given two relay processes on one slot, each with its own log
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let (log_a, log_b) = (dir.path().join("a"), dir.path().join("b"));
    let config_a = config_in(SourceMode::Logical, &db, &log_a);
    let mut config_b = config_a.clone();
    config_b.sink.log.dir = log_b.clone();
    migrate(&config_a).await;
    create_aggregates(&db, 10).await;
    let first = RelayProcess::spawn(&config_a, dir.path(), "first", &["run"]);
    write_events(&db, 1, 1, 10).await;
    wait_for_events(&[&log_a], 1, WAIT).await;
    let second = RelayProcess::spawn(&config_b, dir.path(), "second", &["run"]);

    // When events flow, the second stands by; then the first is killed
    write_events(&db, 2, 200, 10).await;
    wait_for_events(&[&log_a], 401, WAIT).await;
    assert!(
        read_log(&log_b).is_empty(),
        "the standby relayed while the slot was held"
    );
    let standby_log = std::fs::read_to_string(dir.path().join("second.log")).unwrap();
    assert!(standby_log.contains("standing by"), "{standby_log}");
    first.kill();
    write_events(&db, 2, 200, 10).await;

    // Then the second takes over and, together, nothing is missing
    let logs = wait_for_events(&[&log_a, &log_b], 801, WAIT).await;
    assert!(!logs[1].is_empty());
    let mut last = std::collections::HashMap::new();
    for record in &logs[1] {
        let previous = last.insert(record.event.key.clone(), seq_of(record));
        assert!(
            previous < Some(seq_of(record)),
            "aggregate out of order in the standby's log"
        );
    }
    second.kill();
    drop_slot(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_status_reports_the_slot_lag() {
    // Given a migrated logical-mode outbox with a slot
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(SourceMode::Logical, &db, &dir.path().join("log"));
    migrate(&config).await;
    let path = write_config(&config, dir.path(), "c");

    // When `outboxd status --json` runs, then it names the mode and gives the slot's lag
    let (code, stdout, stderr) = run_cli(&path, &["status", "--json"]);
    drop_slot(&db).await;
    assert_eq!(code, 0, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["mode"], "logical", "{stdout}");
    assert!(
        status["slot_lag_bytes"]
            .as_i64()
            .is_some_and(|lag| lag >= 0),
        "{stdout}"
    );
}
