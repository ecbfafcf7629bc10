//! Dead letters in logical mode (issue #21): what the sink refuses, or what fails
//! `relay.max_attempts` times, is kept whole in the dead-letter store before the slot moves
//! past it; with `on_dead_letter = "block_aggregate"` the key's later events are parked there
//! while other keys flow; `outboxd dlq list | retry | skip` act on the store, and a retry
//! delivers the dead letter and what was parked behind it in order, through the running relay,
//! also after a SIGKILL.

mod common;

use common::faults::{FaultSink, Faults, start_refusing};
use common::pg::{TestDb, connect, test_db};
use common::relay::*;
use outboxd::config::{Config, OnDeadLetter, SourceMode};
use outboxd::log::Record;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// Inserts one event per (key, type, seq), each in its own transaction, in the order given.
async fn write(db: &TestDb, events: &[(&str, &str, i32)]) {
    let client = connect(&db.url).await;
    for (key, kind, seq) in events {
        client
            .execute(
                "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
                 VALUES ('order', $1, $2, jsonb_build_object('seq', $3::int))",
                &[key, kind, seq],
            )
            .await
            .unwrap();
    }
}

/// 1,000 events over 20 other keys, in 10 transactions.
async fn write_others(db: &TestDb) {
    let client = connect(&db.url).await;
    for start in (0..1000).step_by(100) {
        client
            .execute(
                "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
                 SELECT 'order', 'other-' || (g % 20), 'Step', jsonb_build_object('seq', g / 20 + 1) \
                 FROM generate_series($1::int, $1::int + 99) g",
                &[&start],
            )
            .await
            .unwrap();
    }
}

/// Each key's sequence numbers in log order.
fn sequences(records: &[Record]) -> HashMap<String, Vec<i64>> {
    let mut by_key: HashMap<String, Vec<i64>> = HashMap::new();
    for record in records {
        by_key
            .entry(record.event.key.clone())
            .or_default()
            .push(seq_of(record));
    }
    by_key
}

/// `outboxd dlq <args>` against `config`; panics unless it succeeds. Returns stdout.
fn dlq(config: &Config, dir: &Path, args: &[&str]) -> String {
    let path = write_config(config, dir, "dlq");
    let mut full = vec!["dlq"];
    full.extend_from_slice(args);
    let (code, out, err) = run_cli(&path, &full);
    assert_eq!(code, 0, "outboxd dlq {args:?} failed: {err}");
    out
}

/// The store's rows as (state, key, seq) in store order.
fn stored(config: &Config, dir: &Path) -> Vec<(String, String, i64)> {
    let out = dlq(config, dir, &["list", "--all", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON list");
    rows.iter()
        .map(|row| {
            (
                row["state"].as_str().unwrap().to_string(),
                row["key"].as_str().unwrap_or("-").to_string(),
                row["event"]["payload"]["seq"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

/// A logical-mode configuration with 3 attempts per event.
fn config(db: &TestDb, dir: &Path, on_dead_letter: OnDeadLetter) -> Config {
    let mut config = config_in(SourceMode::Logical, db, &dir.join("log"));
    config.relay.max_attempts = 3;
    config.relay.on_dead_letter = on_dead_letter;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_exhausted_events_are_stored_block_their_keys_and_a_retry_delivers_in_order() {
    // Given a logical relay whose sink refuses type Poison and always fails type Flaky
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(&db, dir.path(), OnDeadLetter::BlockAggregate);
    migrate(&config).await;
    let faults = Arc::new(Mutex::new(Faults::default()));
    {
        let mut faults = faults.lock().unwrap();
        faults.refuse_types.insert("Poison".into());
        faults.always_fail_types.insert("Flaky".into());
    }
    let relay = InProcessRelay::start_with(&config, |inner| FaultSink {
        inner,
        faults: faults.clone(),
    })
    .await;

    // When key k writes Step, Poison, then three Steps; key j Flaky then two Steps; and 20
    // other keys 1,000 events
    let k = [
        ("k", "Step", 1),
        ("k", "Poison", 2),
        ("k", "Step", 3),
        ("k", "Step", 4),
    ];
    write(&db, &k).await;
    write(
        &db,
        &[
            ("j", "Flaky", 1),
            ("j", "Step", 2),
            ("k", "Step", 5),
            ("j", "Step", 3),
        ],
    )
    .await;
    write_others(&db).await;

    // Then the other keys and k's first event arrive; the dead letters are stored with their
    // reasons, the later events of k and j parked behind them, in order
    let logs = wait_for_events(&[&dir.path().join("log")], 1001, WAIT).await;
    let by_key = sequences(&logs[0]);
    assert_eq!(by_key["k"], vec![1]);
    assert!(
        !by_key.contains_key("j"),
        "j delivered past its dead letter"
    );
    let dead = dlq(&config, dir.path(), &["list"]);
    assert_eq!(dead.lines().count(), 2, "{dead}");
    assert!(dead.contains("injected: refused for good"), "{dead}");
    assert!(
        dead.contains("attempts=3") && dead.contains("failed 3 times"),
        "{dead}"
    );
    // (per key in order; keys interleave as their lanes settled)
    let rows = stored(&config, dir.path());
    let of = |key: &str| -> Vec<(String, i64)> {
        rows.iter()
            .filter(|(_, k, _)| k == key)
            .map(|(state, _, seq)| (state.clone(), *seq))
            .collect()
    };
    let states = |list: &[(&str, i64)]| -> Vec<(String, i64)> {
        list.iter().map(|(s, q)| (s.to_string(), *q)).collect()
    };
    assert_eq!(
        of("k"),
        states(&[("dead", 2), ("parked", 3), ("parked", 4), ("parked", 5)])
    );
    assert_eq!(
        of("j"),
        states(&[("dead", 1), ("parked", 2), ("parked", 3)])
    );

    // When the sink is repaired and the operator retries every dead letter
    {
        let mut faults = faults.lock().unwrap();
        faults.refuse_types.clear();
        faults.always_fail_types.clear();
    }
    let out = dlq(&config, dir.path(), &["retry", "--all"]);
    assert!(out.contains("re-queued 2"), "{out}");

    // Then k and j arrive whole and in order, the store empties, and k's next event flows
    let logs = wait_for_events(&[&dir.path().join("log")], 1008, WAIT).await;
    let by_key = sequences(&logs[0]);
    assert_eq!(by_key["k"], vec![1, 2, 3, 4, 5]);
    assert_eq!(by_key["j"], vec![1, 2, 3]);
    write(&db, &[("k", "Step", 6)]).await;
    let logs = wait_for_events(&[&dir.path().join("log")], 1009, WAIT).await;
    assert_eq!(sequences(&logs[0])["k"], vec![1, 2, 3, 4, 5, 6]);
    assert!(stored(&config, dir.path()).is_empty());
    relay.stop().await;
    drop_slot(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_skip_the_dead_letter_is_stored_and_later_events_flow() {
    // Given a logical relay with on_dead_letter = "skip" whose sink refuses type Poison
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(&db, dir.path(), OnDeadLetter::Skip);
    migrate(&config).await;
    let (relay, _) = start_refusing(&config, &["Poison"]).await;

    // When key k writes Step, Poison, Step
    write(
        &db,
        &[("k", "Step", 1), ("k", "Poison", 2), ("k", "Step", 3)],
    )
    .await;

    // Then 1 and 3 arrive, 2 is stored, nothing parked; `dlq skip` marks it skipped
    let logs = wait_for_events(&[&dir.path().join("log")], 2, WAIT).await;
    assert_eq!(sequences(&logs[0])["k"], vec![1, 3]);
    let rows = stored(&config, dir.path());
    assert_eq!(rows, vec![("dead".to_string(), "k".to_string(), 2)]);
    let out = dlq(&config, dir.path(), &["skip", "--aggregate", "k"]);
    assert!(out.contains("skipped 1"), "{out}");
    assert_eq!(stored(&config, dir.path())[0].0, "skipped");
    assert!(dlq(&config, dir.path(), &["list"]).contains("no dead letters"));
    relay.stop().await;
    drop_slot(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_events_survive_a_sigkill_and_go_out_in_order_after_the_retry() {
    // Given a relay process whose log refuses records over 2 KiB
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&db, dir.path(), OnDeadLetter::BlockAggregate);
    config.sink.log.max_record_bytes = 2048;
    migrate(&config).await;
    let relay = RelayProcess::spawn(&config, dir.path(), "first", &["run"]);

    // When key k writes a small event, a 10 KB one, then three small ones, and others write
    // 1,000 events
    let client = connect(&db.url).await;
    for seq in 1..=5 {
        let pad = if seq == 2 { 10_000 } else { 1 };
        client
            .execute(
                "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
                 VALUES ('order', 'k', 'Step', jsonb_build_object('seq', $1::int, \
                 'pad', repeat('x', $2)))",
                &[&seq, &pad],
            )
            .await
            .unwrap();
    }
    write_others(&db).await;
    let logs = wait_for_events(&[&dir.path().join("log")], 1001, WAIT).await;
    assert_eq!(sequences(&logs[0])["k"], vec![1]);
    let rows = stored(&config, dir.path());
    assert_eq!(rows.len(), 4, "{rows:?}");

    // And the relay is SIGKILLed, then started again with room for the large record
    relay.kill();
    config.sink.log.max_record_bytes = 1 << 20;
    let relay = RelayProcess::spawn(&config, dir.path(), "second", &["run"]);
    write(&db, &[("k", "Step", 6)]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Then nothing of k went out past its dead letter, and after the retry all of it arrives
    // once, in order
    assert_eq!(sequences(&read_log(&dir.path().join("log")))["k"], vec![1]);
    assert_eq!(stored(&config, dir.path()).len(), 5);
    dlq(&config, dir.path(), &["retry", "--aggregate", "k"]);
    let logs = wait_for_events(&[&dir.path().join("log")], 1006, WAIT).await;
    assert_eq!(sequences(&logs[0])["k"], vec![1, 2, 3, 4, 5, 6]);
    relay.kill();
    drop_slot(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_mode_stores_a_refused_change_parks_the_rows_later_changes_and_retries_in_order() {
    // Given a table captured in cdc mode, and a sink that refuses deletes
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let client = connect(&db.url).await;
    client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL)")
        .await
        .unwrap();
    let mut config = config(&db, dir.path(), OnDeadLetter::BlockAggregate);
    config.source.mode = SourceMode::Cdc;
    config.source.cdc.tables = vec!["public.items".into()];
    migrate(&config).await;
    let (relay, faults) = start_refusing(&config, &["delete"]).await;

    // When row 1 is inserted, updated, deleted, inserted again and updated, and 100 other rows
    // are inserted
    for sql in [
        "INSERT INTO items VALUES (1, 1)",
        "UPDATE items SET v = 2 WHERE id = 1",
        "DELETE FROM items WHERE id = 1",
        "INSERT INTO items VALUES (1, 3)",
        "UPDATE items SET v = 4 WHERE id = 1",
        "INSERT INTO items SELECT g, 0 FROM generate_series(100, 199) g",
    ] {
        client.batch_execute(sql).await.unwrap();
    }

    // Then the other rows and row 1's first two changes arrive; the delete is a dead letter
    // and the two changes after it are parked
    let log = dir.path().join("log");
    let ops_of_row_1 = |records: &[Record]| -> Vec<String> {
        records
            .iter()
            .filter(|r| r.event.key == r#"{"id":1}"#)
            .map(|r| r.event.op.name().to_string())
            .collect()
    };
    let logs = wait_for_events(&[&log], 102, WAIT).await;
    assert_eq!(ops_of_row_1(&logs[0]), ["insert", "update"]);
    let rows = stored(&config, dir.path());
    let states: Vec<&str> = rows.iter().map(|(state, _, _)| state.as_str()).collect();
    assert_eq!(states, ["dead", "parked", "parked"], "{rows:?}");
    assert!(dlq(&config, dir.path(), &["list"]).contains("public.items"));

    // When the sink takes deletes again and the operator retries row 1's dead letter
    faults.lock().unwrap().refuse_types.clear();
    dlq(
        &config,
        dir.path(),
        &["retry", "--aggregate", r#"{"id":1}"#],
    );

    // Then row 1's changes arrive whole and in order
    let logs = wait_for_events(&[&log], 105, WAIT).await;
    let ops = ops_of_row_1(&logs[0]);
    assert_eq!(ops, ["insert", "update", "delete", "insert", "update"]);
    relay.stop().await;
    drop_slot(&db).await;
}

/// Terminates every other session of the test database: the relay's ordinary session (the
/// dead-letter store's) and its replication stream.
async fn terminate_sessions(db: &TestDb) -> i64 {
    let client = connect(&db.url).await;
    let row = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_reached_again_after_its_session_is_terminated_at_every_step() {
    // Given a logical relay whose sink refuses type Poison, with k blocked behind a dead letter
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config(&db, dir.path(), OnDeadLetter::BlockAggregate);
    config.relay.retry_max_ms = 200;
    migrate(&config).await;
    let (relay, faults) = start_refusing(&config, &["Poison"]).await;
    write(&db, &[("k", "Step", 1), ("k", "Poison", 2)]).await;
    wait_for_events(&[&log], 1, WAIT).await;
    let deadline = std::time::Instant::now() + WAIT;
    while stored(&config, dir.path()).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no dead letter stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // When the relay's sessions are terminated, and k's next events must be parked
    assert!(terminate_sessions(&db).await >= 1);
    write(&db, &[("k", "Step", 3), ("j", "Step", 1)]).await;
    assert!(terminate_sessions(&db).await >= 0);
    write(&db, &[("k", "Step", 4), ("j", "Step", 2)]).await;

    // Then the relay goes on: j flows, k's events are parked behind the dead letter
    let logs = wait_for_events(&[&log], 3, WAIT).await;
    assert_eq!(sequences(&logs[0])["j"], vec![1, 2]);
    assert_eq!(sequences(&logs[0])["k"], vec![1]);
    let deadline = std::time::Instant::now() + WAIT;
    while stored(&config, dir.path()).len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "k's events not parked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // When the sink is repaired, the operator retries, and the sessions are terminated again
    // while the store's events go out and are removed
    faults.lock().unwrap().refuse_types.clear();
    dlq(&config, dir.path(), &["retry", "--aggregate", "k"]);
    for _ in 0..5 {
        terminate_sessions(&db).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    // Then k's events arrive in order, the store empties, and k's next event flows directly
    let logs = wait_for_events(&[&log], 6, WAIT).await;
    assert_eq!(sequences(&logs[0])["k"], vec![1, 2, 3, 4]);
    write(&db, &[("k", "Step", 5)]).await;
    let logs = wait_for_events(&[&log], 7, WAIT).await;
    let k = sequences(&logs[0])["k"].clone();
    assert_eq!(k, vec![1, 2, 3, 4, 5], "k repeated or out of order");
    let deadline = std::time::Instant::now() + WAIT;
    while !stored(&config, dir.path()).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the store kept rows");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.stop().await;
    drop_slot(&db).await;
}
