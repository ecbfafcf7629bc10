//! Delivery under failure: a failing aggregate holds back only itself, dead letters block or
//! skip as configured, operators retry them in order, and a hanging publish is retried.

mod common;

use common::faults::{Faults, start_faulty};
use common::pg::{connect, test_db};
use common::relay::*;
use outboxd::config::OnDeadLetter;
use outboxd::log::Record;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// Inserts events `(aggregate, type, seq)` one transaction each, in order.
async fn insert(db_url: &str, events: &[(&str, &str, i32)]) {
    let client = connect(db_url).await;
    for (aggregate, kind, seq) in events {
        client
            .execute(
                "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
                 VALUES ('t', $1, $2, jsonb_build_object('seq', $3::int))",
                &[aggregate, kind, seq],
            )
            .await
            .unwrap();
    }
}

/// `aggregate:type` of each record, in log order.
fn names(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| format!("{}:{}", r.event.key, r.event.event_type))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_aggregate_holds_back_only_itself_and_then_arrives_complete_in_order() {
    // Given a sink that fails aggregate "a" three times
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_for(&db, &log);
    config.relay.retry_initial_ms = 200;
    let faults = Arc::new(Mutex::new(Faults::default()));
    faults.lock().unwrap().fail_aggregate.insert("a".into(), 3);
    let relay = start_faulty(&config, faults).await;

    // When a, b and c each write 20 events, interleaved
    let mut events = Vec::new();
    for seq in 1..=20 {
        for aggregate in ["a", "b", "c"] {
            events.push((aggregate, "Step", seq));
        }
    }
    insert(&db.url, &events).await;

    // Then everything arrives, each aggregate in order, and b and c did not wait for a
    let logs = wait_for_events(&[&log], 60, WAIT).await;
    relay.stop().await;
    assert_eq!(assert_in_order(&logs[0]), 0);
    let first_a = logs[0].iter().position(|r| r.event.key == "a").unwrap();
    let others_before = logs[0][..first_a]
        .iter()
        .filter(|r| r.event.key != "a")
        .count();
    assert!(
        others_before >= 20,
        "only {others_before} events of b and c passed the failing a"
    );
    let client = connect(&db.url).await;
    let attempts: i32 = client
        .query_one(
            "SELECT attempts FROM outbox WHERE aggregateid = 'a' ORDER BY position LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        attempts, 4,
        "three failed attempts and the one that succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_blocks_its_aggregate_until_dlq_retry_redelivers_in_order() {
    // Given a sink that refuses events of type Poison, and the default block_aggregate
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_for(&db, &log);
    // One lane hands events to the sink in the order the source read them (see below).
    config.relay.lanes = 1;
    let faults = Arc::new(Mutex::new(Faults::default()));
    faults.lock().unwrap().refuse_types.insert("Poison".into());
    let relay = start_faulty(&config, faults.clone()).await;

    // When a1, a2 (poison), a3 and b1 are written
    insert(
        &db.url,
        &[
            ("a", "One", 1),
            ("a", "Poison", 2),
            ("a", "Three", 3),
            ("b", "One", 1),
        ],
    )
    .await;

    // Then a1 and b1 arrive, a3 waits behind the dead letter, which `dlq list` shows. Checked
    // once c1, written after the dead letter, arrived: with one lane, a3 (read before c1)
    // would have reached the sink before it
    wait_failed_rows(&db, 1).await;
    insert(&db.url, &[("c", "One", 1)]).await;
    wait_for_events(&[&log], 3, WAIT).await;
    assert_eq!(names(&read_log(&log)), vec!["a:One", "b:One", "c:One"]);
    let path = write_config(&config, dir.path(), "c");
    let (code, stdout, stderr) = run_cli(&path, &["dlq", "list", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let letters: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(letters.as_array().unwrap().len(), 1, "{stdout}");
    assert_eq!(letters[0]["type"], "Poison");
    assert_eq!(letters[0]["last_error"], "injected: refused for good");
    let id = letters[0]["id"].as_str().unwrap().to_string();
    let (code, stdout, _) = run_cli(&path, &["dlq", "show", &id]);
    assert_eq!(code, 0);
    assert!(stdout.contains("\"seq\": 2"), "{stdout}");

    // When the sink is fixed and the operator retries it
    faults.lock().unwrap().refuse_types.clear();
    let (code, stdout, stderr) = run_cli(&path, &["dlq", "retry", &id]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("re-queued 1"), "{stdout}");

    // Then a2 and a3 arrive, in order
    let logs = wait_for_events(&[&log], 5, WAIT).await;
    relay.stop().await;
    assert_eq!(
        names(&logs[0]),
        vec!["a:One", "b:One", "c:One", "a:Poison", "a:Three"]
    );
    let (_, stdout, _) = run_cli(&path, &["dlq", "list"]);
    assert!(stdout.contains("no dead letters"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_skip_later_events_pass_a_dead_letter_and_dlq_skip_records_it() {
    // Given on_dead_letter = skip and a sink that refuses Poison
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_for(&db, &log);
    config.relay.on_dead_letter = OnDeadLetter::Skip;
    let faults = Arc::new(Mutex::new(Faults::default()));
    faults.lock().unwrap().refuse_types.insert("Poison".into());
    let relay = start_faulty(&config, faults).await;

    // When a1, a2 (poison), a3 are written, then a3 arrives right behind a1
    insert(
        &db.url,
        &[("a", "One", 1), ("a", "Poison", 2), ("a", "Three", 3)],
    )
    .await;
    let logs = wait_for_events(&[&log], 2, WAIT).await;
    relay.stop().await;
    assert_eq!(names(&logs[0]), vec!["a:One", "a:Three"]);

    // And skipping the dead letter keeps it, marked, out of the default list
    let path = write_config(&config, dir.path(), "c");
    let (_, stdout, _) = run_cli(&path, &["dlq", "list", "--json"]);
    let letters: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let id = letters[0]["id"].as_str().unwrap().to_string();
    let (code, _, stderr) = run_cli(&path, &["dlq", "skip", &id]);
    assert_eq!(code, 0, "{stderr}");
    let (_, stdout, _) = run_cli(&path, &["dlq", "list", "--all", "--json"]);
    let all: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(all[0]["skipped_at"].is_string(), "{stdout}");
    let (_, stdout, _) = run_cli(&path, &["dlq", "list"]);
    assert!(stdout.contains("no dead letters"), "{stdout}");
    let (code, _, stderr) = run_cli(&path, &["dlq", "skip", "no-such-id"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no dead letter matches"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_failing_max_attempts_times_becomes_a_dead_letter_and_others_flow() {
    // Given max_attempts = 3 and a sink on which events of type Flaky always fail
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_for(&db, &log);
    config.relay.max_attempts = 3;
    config.relay.lanes = 1;
    config.relay.retry_initial_ms = 10;
    config.relay.retry_max_ms = 50;
    let faults = Arc::new(Mutex::new(Faults::default()));
    faults
        .lock()
        .unwrap()
        .always_fail_types
        .insert("Flaky".into());
    let relay = start_faulty(&config, faults).await;

    // When x1 (flaky), x2 and y1 are written
    insert(
        &db.url,
        &[("x", "Flaky", 1), ("x", "Two", 2), ("y", "One", 1)],
    )
    .await;

    // Then y1 arrives; x1 is dead after 3 attempts with the reason, and x2 waits behind it
    wait_for_events(&[&log], 1, WAIT).await;
    let client = connect(&db.url).await;
    let deadline = std::time::Instant::now() + WAIT;
    let row = loop {
        let row = client
            .query_opt("SELECT attempts, last_error FROM outbox WHERE type = 'Flaky' AND failed_at IS NOT NULL", &[])
            .await
            .unwrap();
        if let Some(row) = row {
            break row;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Flaky never became a dead letter"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // (x2 is checked once z1, written after the dead letter, arrived: with one lane, x2 (read
    // before z1) would have reached the sink before it)
    insert(&db.url, &[("z", "One", 1)]).await;
    wait_for_events(&[&log], 2, WAIT).await;
    relay.stop().await;
    assert_eq!(row.get::<_, i32>(0), 3);
    assert_eq!(row.get::<_, String>(1), "injected: always fails");
    assert_eq!(names(&read_log(&log)), vec!["y:One", "z:One"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_hanging_past_its_timeout_is_retried_and_nothing_is_lost() {
    // Given a sink whose next publish hangs for 3 s, and a 300 ms publish timeout
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_for(&db, &log);
    config.relay.publish_timeout_ms = 300;
    let faults = Arc::new(Mutex::new(Faults::default()));
    faults.lock().unwrap().hang_once = Some(Duration::from_secs(3));
    let relay = start_faulty(&config, faults).await;

    // When events are written, then they arrive well before the hang would have ended
    let started = std::time::Instant::now();
    insert(
        &db.url,
        &[("a", "One", 1), ("a", "Two", 2), ("b", "One", 1)],
    )
    .await;
    let logs = wait_for_events(&[&log], 3, WAIT).await;
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "waited out the hang"
    );
    relay.stop().await;
    assert_eq!(assert_in_order(&logs[0]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_rows_past_their_retention_are_deleted_in_the_background() {
    // Given a relay binary keeping sent rows for 300 ms, cleaning in batches of 7
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_for(&db, &log);
    config.source.retention_ms = 300;
    config.source.cleanup_batch = 7;
    config.source.cleanup_interval_ms = 50;
    migrate(&config).await;
    let _relay = RelayProcess::spawn(&config, dir.path(), "r", &["run"]);

    // When 50 events are relayed, then the table empties once they have aged
    let events: Vec<(&str, &str, i32)> = (1..=50).map(|i| ("a", "Step", i)).collect();
    insert(&db.url, &events).await;
    wait_for_events(&[&log], 50, WAIT).await;
    let client = connect(&db.url).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left: i64 = client
            .query_one("SELECT count(*) FROM outbox", &[])
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} rows never cleaned up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `count` aggregate ids that take a different lane than `than` when there are `lanes`.
fn aggregates_off_the_lane_of(than: &str, lanes: usize, count: usize) -> Vec<String> {
    let lane = outboxd::relay::lane_of(than, lanes);
    (0..)
        .map(|n| format!("other-{n}"))
        .filter(|id| outboxd::relay::lane_of(id, lanes) != lane)
        .take(count)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_aggregate_holds_up_only_its_own_lane() {
    // Given four lanes and a sink that takes 4 s for every publish holding aggregate "slow"
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_for(&db, &log);
    config.relay.lanes = 4;
    let faults = Arc::new(Mutex::new(Faults::default()));
    let slow = Duration::from_secs(4);
    faults
        .lock()
        .unwrap()
        .slow_aggregates
        .insert("slow".into(), slow);
    let relay = start_faulty(&config, faults.clone()).await;

    // When "slow" writes 3 events, then three aggregates on other lanes write 20 each
    let others = aggregates_off_the_lane_of("slow", 4, 3);
    let mut events: Vec<(&str, &str, i32)> = (1..=3).map(|seq| ("slow", "Step", seq)).collect();
    for seq in 1..=20 {
        for other in &others {
            events.push((other.as_str(), "Step", seq));
        }
    }
    let started = std::time::Instant::now();
    insert(&db.url, &events).await;

    // Then the others all arrive while the first publish of "slow" is still under way
    let logs = wait_for_events(&[&log], 60, WAIT).await;
    let waited = started.elapsed();
    assert!(
        waited < slow * 3 / 4,
        "the other lanes waited {waited:?} behind a {slow:?} publish"
    );
    assert!(logs[0].iter().all(|r| r.event.key != "slow"));

    // And once it is no longer slow, "slow" arrives complete and in order
    faults.lock().unwrap().slow_aggregates.clear();
    let logs = wait_for_events(&[&log], 63, WAIT).await;
    relay.stop().await;
    assert_eq!(assert_in_order(&logs[0]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_logical_mode_a_failing_aggregate_is_retried_in_order_and_a_poisoned_one_dead_lettered()
{
    // Given logical replication, a sink that fails aggregate "a" three times and refuses
    // aggregate "p" transiently for ever, at most 4 attempts, and on_dead_letter = "skip"
    // (with the default block_aggregate, p's later events are parked instead:
    // tests/logical_dead_letters.rs)
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_in(outboxd::config::SourceMode::Logical, &db, &log);
    config.relay.on_dead_letter = outboxd::config::OnDeadLetter::Skip;
    config.relay.retry_initial_ms = 50;
    config.relay.retry_max_ms = 200;
    config.relay.max_attempts = 4;
    let faults = Arc::new(Mutex::new(Faults::default()));
    {
        let mut faults = faults.lock().unwrap();
        faults.fail_aggregate.insert("a".into(), 3);
        faults.always_fail_types.insert("Poison".into());
    }
    let relay = start_faulty(&config, faults).await;
    let dead_before = outboxd::metrics::get().dead_letters.get();

    // When a, b and p write interleaved events, p's first one poisoned
    let mut events = Vec::new();
    for seq in 1..=10 {
        events.push(("a", "Step", seq));
        events.push(("b", "Step", seq));
        events.push(("p", if seq == 1 { "Poison" } else { "Step" }, seq));
    }
    insert(&db.url, &events).await;

    // Then a's failed events are not lost (the stream is not read again) and arrive in order,
    // and p's poisoned event is dead-lettered after 4 attempts while its later events follow
    let logs = wait_for_events(&[&log], 29, WAIT).await;
    relay.stop().await;
    let count = |aggregate: &str| logs[0].iter().filter(|r| r.event.key == aggregate).count();
    assert_eq!((count("a"), count("b"), count("p")), (10, 10, 9));
    let seqs: Vec<i64> = logs[0]
        .iter()
        .filter(|r| r.event.key == "a")
        .map(seq_of)
        .collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    assert!(outboxd::metrics::get().dead_letters.get() > dead_before);
    drop_slot(&db).await;
}

/// Waits until `count` rows are marked failed.
async fn wait_failed_rows(db: &common::pg::TestDb, count: i64) {
    let deadline = std::time::Instant::now() + WAIT;
    while failed_rows(db).await < count {
        assert!(std::time::Instant::now() < deadline, "no row marked failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
