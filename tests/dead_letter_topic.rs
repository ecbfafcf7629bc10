//! The dead-letter destination (`relay.dead_letter_topic`, issue #21): in polling and logical
//! mode, every event the sink refuses and every event that fails `relay.max_attempts` times is
//! also published to the destination, with its reason in a header, and stays in the durable
//! record; the main topic gets none of them, other keys flow, and a dead letter in the log is
//! never taken for the event's delivery after a restart.

mod common;

use common::faults::{FaultSink, Faults};
use common::pg::{TestDb, connect, test_db};
use common::relay::*;
use outboxd::config::{Config, SourceMode};
use outboxd::log::Record;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// The dead-letter topic the tests configure, and what it renders to for their events.
const DEAD_TOPIC: &str = "dead.{aggregatetype}";
const DEAD_RENDERED: &str = "dead.order";

/// Inserts one event per (key, type, seq), each in its own transaction, in the order given;
/// each with the header `trace`.
async fn write(db: &TestDb, events: &[(&str, &str, i32)]) {
    let client = connect(&db.url).await;
    for (key, kind, seq) in events {
        client
            .execute(
                "INSERT INTO outbox (aggregatetype, aggregateid, type, payload, headers) \
                 VALUES ('order', $1, $2, jsonb_build_object('seq', $3::int), \
                 jsonb_build_object('trace', $1::text || '-' || $3::int))",
                &[key, kind, seq],
            )
            .await
            .unwrap();
    }
}

/// The id of the one event of `event_type`.
async fn id_of(db: &TestDb, event_type: &str) -> String {
    let client = connect(&db.url).await;
    let row = client
        .query_one(
            "SELECT id::text FROM outbox WHERE type = $1",
            &[&event_type],
        )
        .await
        .unwrap();
    row.get(0)
}

/// The records of the log under `topic`.
fn records_in(log: &Path, topic: &str) -> Vec<Record> {
    read_log(log)
        .into_iter()
        .filter(|r| r.topic == topic)
        .collect()
}

/// Waits until the log holds at least `main` records in topic `order` and `dead` in the
/// dead-letter topic.
async fn wait_for(log: &Path, main: usize, dead: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (m, d) = (
            records_in(log, "order").len(),
            records_in(log, DEAD_RENDERED).len(),
        );
        if m >= main && d >= dead {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {m} of {main} main records and {d} of {dead} dead letters arrived"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A record's headers as a map.
fn headers(record: &Record) -> BTreeMap<String, Value> {
    let raw = record.event.headers.as_ref().expect("headers");
    serde_json::from_str(raw.get()).unwrap()
}

/// The ids `outboxd dlq list --json` shows (the outbox's dead rows when polling, the store's
/// dead letters in logical mode).
fn listed(config: &Config, dir: &Path) -> HashSet<String> {
    let path = write_config(config, dir, "dlq");
    let (code, out, err) = run_cli(&path, &["dlq", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).expect("JSON list");
    rows.iter()
        .map(|row| {
            let id = row.get("id").or_else(|| row["event"].get("id"));
            id.and_then(Value::as_str).expect("an id").to_string()
        })
        .collect()
}

/// A configuration in `mode` with three attempts per event and the dead-letter topic set.
fn config(mode: SourceMode, db: &TestDb, dir: &Path) -> Config {
    let mut config = config_in(mode, db, &dir.join("log"));
    config.relay.max_attempts = 3;
    config.relay.dead_letter_topic = Some(DEAD_TOPIC.into());
    config
}

/// A relay for `config` whose sink refuses `Poison` and always fails `Flaky`.
async fn faulty_relay(config: &Config) -> InProcessRelay {
    migrate(config).await;
    let faults = Arc::new(Mutex::new(Faults::default()));
    {
        let mut faults = faults.lock().unwrap();
        faults.refuse_types.insert("Poison".into());
        faults.always_fail_types.insert("Flaky".into());
    }
    InProcessRelay::start_with(config, |inner| FaultSink { inner, faults }).await
}

/// The scenario, in `mode`.
async fn refused_and_exhausted_events_reach_the_dead_letter_topic(mode: SourceMode) {
    // Given a relay whose sink refuses Poison and always fails Flaky, with a dead-letter topic
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config(mode, &db, dir.path());
    let relay = faulty_relay(&config).await;

    // When key p writes Step, Poison, Step; key f Flaky, Step; and 10 other keys 5 Steps each
    write(
        &db,
        &[("p", "Step", 1), ("p", "Poison", 2), ("p", "Step", 3)],
    )
    .await;
    write(&db, &[("f", "Flaky", 1), ("f", "Step", 2)]).await;
    let others: Vec<(String, i32)> = (1..=5)
        .flat_map(|seq| (0..10).map(move |k| (format!("o{k}"), seq)))
        .collect();
    let others: Vec<(&str, &str, i32)> = others
        .iter()
        .map(|(key, seq)| (key.as_str(), "Step", *seq))
        .collect();
    write(&db, &others).await;

    // Then both dead letters reach the dead-letter topic, and the other keys the main one
    wait_for(&log, 51, 2).await;
    // (a little longer, so a third dead letter or a blocked event would have arrived too)
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (poison, flaky) = (id_of(&db, "Poison").await, id_of(&db, "Flaky").await);
    let dead = records_in(&log, DEAD_RENDERED);
    let ids: HashSet<String> = dead.iter().map(|r| r.event.id.clone()).collect();
    assert_eq!(
        ids,
        HashSet::from([poison.clone(), flaky.clone()]),
        "{dead:?}"
    );
    for record in &dead {
        let headers = headers(record);
        let reason = headers["outboxd-dead-letter-reason"].as_str().unwrap();
        let seq = record.event.payload.get();
        if record.event.id == poison {
            assert_eq!(reason, "injected: refused for good");
            assert_eq!(headers["trace"], "p-2", "the event's own headers are kept");
            assert_eq!(seq, r#"{"seq": 2}"#, "the payload is kept as stored");
        } else {
            assert!(
                reason.contains("failed 3 times") && reason.contains("injected: always fails"),
                "{reason}"
            );
            assert_eq!(headers["trace"], "f-1");
            if mode == SourceMode::Poll {
                assert_eq!(headers["outboxd-dead-letter-attempts"], 3);
            }
        }
    }

    // And the main topic has neither, nor what waits behind them, and every other event
    let main = records_in(&log, "order");
    let main_ids: HashSet<&str> = main.iter().map(|r| r.event.id.as_str()).collect();
    assert_eq!(main_ids.len(), 51, "duplicates or extras in the main topic");
    assert!(main.iter().all(|r| r.event.event_type == "Step"));
    let blocked: Vec<_> = main
        .iter()
        .filter(|r| (r.event.key == "p" && seq_of(r) > 1) || r.event.key == "f")
        .collect();
    assert!(blocked.is_empty(), "{blocked:?}");
    assert!(
        main.iter()
            .all(|r| !headers(r).contains_key("outboxd-dead-letter-reason"))
    );

    // And both stay in the durable record
    relay.stop().await;
    assert_eq!(listed(&config, dir.path()), HashSet::from([poison, flaky]));
    if mode.is_logical() {
        drop_slot(&db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_refused_and_exhausted_events_reach_the_dead_letter_topic() {
    refused_and_exhausted_events_reach_the_dead_letter_topic(SourceMode::Poll).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_refused_and_exhausted_events_reach_the_dead_letter_topic() {
    refused_and_exhausted_events_reach_the_dead_letter_topic(SourceMode::Logical).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_in_the_log_is_not_taken_for_the_events_delivery_after_a_crash() {
    // Given a polling relay that published Poison to the dead-letter topic and marked it dead
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config(SourceMode::Poll, &db, dir.path());
    let relay = faulty_relay(&config).await;
    write(&db, &[("p", "Step", 1), ("p", "Poison", 2)]).await;
    wait_for(&log, 1, 1).await;
    while failed_rows(&db).await < 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.stop().await;

    // When the row is pending again, as if the relay had crashed between publishing the dead
    // letter and marking the row (the dead letter is among the last records of the log), and
    // a relay whose sink takes Poison starts
    let client = connect(&db.url).await;
    client
        .execute(
            "UPDATE outbox SET failed_at = NULL, last_error = NULL, attempts = 0 \
             WHERE type = 'Poison'",
            &[],
        )
        .await
        .unwrap();
    let relay = InProcessRelay::start(&config).await;

    // Then Poison is delivered to the main topic, not marked sent unseen
    wait_for(&log, 2, 1).await;
    relay.stop().await;
    let main = records_in(&log, "order");
    assert_eq!(main.last().unwrap().event.event_type, "Poison");
    let row = client
        .query_one(
            "SELECT sent_at IS NOT NULL, failed_at IS NULL FROM outbox WHERE type = 'Poison'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, bool>(0), row.get::<_, bool>(1)), (true, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_the_destination_refuses_too_is_logged_counted_and_kept_while_others_flow() {
    // Given the log refusing records over 1 KiB, with a dead-letter topic on the same log
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config(SourceMode::Poll, &db, dir.path());
    config.sink.log.max_record_bytes = 1024;
    let failures = || outboxd::metrics::get().dead_letter_publish_failures.get();
    let before = failures();
    let relay = InProcessRelay::start(&config).await;

    // When key big writes an event of 4 KiB (refused by the main topic and, being as large,
    // by the dead-letter topic too), then every key writes small ones
    let client = connect(&db.url).await;
    client
        .execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             VALUES ('order', 'big', 'Huge', jsonb_build_object('pad', repeat('x', 4096)))",
            &[],
        )
        .await
        .unwrap();
    write(
        &db,
        &[("big", "Step", 2), ("o1", "Step", 1), ("o2", "Step", 1)],
    )
    .await;

    // Then the other keys flow, the dead letter is counted as not published, and kept
    wait_for(&log, 2, 0).await;
    while failed_rows(&db).await < 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + WAIT;
    while failures() == before {
        assert!(
            Instant::now() < deadline,
            "the refused dead letter was not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    write(&db, &[("o3", "Step", 1)]).await;
    wait_for(&log, 3, 0).await;
    relay.stop().await;
    assert!(records_in(&log, DEAD_RENDERED).is_empty());
    let huge = id_of(&db, "Huge").await;
    assert_eq!(listed(&config, dir.path()), HashSet::from([huge]));
    let main = records_in(&log, "order");
    assert!(main.iter().all(|r| r.event.key != "big"), "{main:?}");
}
