//! Consumer groups with queue semantics over HTTP, against the real relay binary and
//! PostgreSQL: work shared between consumers, a consumer that dies holding messages, per-key
//! order, and acks that survive a relay restart.

mod common;

use common::consume::{TOKEN, consume_config, ok, record, start_relay, try_call, wait_served};
use common::http::{get, sample};
use common::pg::test_db;
use common::relay::{assert_in_order, create_aggregates, run_cli, write_events};
use outboxd::log::Record;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Everything consumers processed, in the order they processed it.
type Processed = Arc<Mutex<Vec<Record>>>;

/// Distinct events in `processed`.
fn distinct(processed: &Processed) -> usize {
    let processed = processed.lock().unwrap();
    processed
        .iter()
        .map(|r| r.event.id.clone())
        .collect::<HashSet<_>>()
        .len()
}

/// Receives from `group` once; returns the messages.
async fn receive(addr: SocketAddr, group: &str, max: u64, visibility_ms: u64) -> Vec<Value> {
    let body = json!({"max": max, "wait_ms": 1000, "visibility_ms": visibility_ms});
    let answer = ok(
        addr,
        "POST",
        &format!("/v1/groups/{group}/receive"),
        Some(&body),
    )
    .await;
    answer["messages"].as_array().unwrap().clone()
}

/// Acks `messages` of `group`.
async fn ack(addr: SocketAddr, group: &str, messages: &[Value]) {
    let ids: Vec<&Value> = messages.iter().map(|m| &m["ack_id"]).collect();
    let answer = ok(
        addr,
        "POST",
        &format!("/v1/groups/{group}/ack"),
        Some(&json!({ "ack_ids": ids })),
    )
    .await;
    assert_eq!(answer["acked"], messages.len(), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_consumers_share_a_group_and_the_messages_of_one_that_dies_go_to_the_other() {
    // Given a relay serving the consumer API while 8 writers write 10,000 events on 100 keys.
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = consume_config(&db, &log);
    create_aggregates(&db, 100).await;
    let (_relay, addr) = start_relay(&config, dir.path(), "relay").await;
    let writers = {
        let db = db.clone();
        tokio::spawn(async move { write_events(&db, 8, 1250, 100).await })
    };
    let processed: Processed = Arc::default();
    const VISIBILITY_MS: u64 = 3000;

    // When consumer A processes and acks a few batches, then dies half-way through a batch
    // without acking it, while consumer B keeps processing and acking.
    let a = {
        let processed = processed.clone();
        tokio::spawn(async move {
            let mut acked = 0;
            loop {
                let asked = Instant::now();
                let messages = receive(addr, "workers", 100, VISIBILITY_MS).await;
                if acked >= 1000 && messages.len() >= 10 {
                    let half = messages.len() / 2;
                    processed
                        .lock()
                        .unwrap()
                        .extend(messages[..half].iter().map(|m| record(&m["record"])));
                    let dropped: HashSet<u64> = messages[half..]
                        .iter()
                        .map(|m| m["record"]["offset"].as_u64().unwrap())
                        .collect();
                    return (asked, dropped);
                }
                processed
                    .lock()
                    .unwrap()
                    .extend(messages.iter().map(|m| record(&m["record"])));
                ack(addr, "workers", &messages).await;
                acked += messages.len();
            }
        })
    };
    let (a_died_after, dropped) = a.await.unwrap();
    let mut redelivered_at: HashMap<u64, Instant> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while distinct(&processed) < 10_000 {
        assert!(
            Instant::now() < deadline,
            "only {} processed",
            distinct(&processed)
        );
        let messages = receive(addr, "workers", 100, 30_000).await;
        let now = Instant::now();
        for message in &messages {
            let offset = message["record"]["offset"].as_u64().unwrap();
            if dropped.contains(&offset) {
                assert_eq!(message["redelivered"], true);
                redelivered_at.entry(offset).or_insert(now);
            }
        }
        processed
            .lock()
            .unwrap()
            .extend(messages.iter().map(|m| record(&m["record"])));
        ack(addr, "workers", &messages).await;
    }
    writers.await.unwrap();

    // Then every event was processed, each key in order across both consumers, and what A
    // held went to B only after its visibility timeout.
    let processed = processed.lock().unwrap().clone();
    let repeats = assert_in_order(&processed);
    assert_eq!(
        processed
            .iter()
            .map(|r| &r.event.id)
            .collect::<HashSet<_>>()
            .len(),
        10_000
    );
    assert_eq!(
        redelivered_at.len(),
        dropped.len(),
        "B got every message A dropped"
    );
    for (offset, at) in &redelivered_at {
        assert!(
            *at >= a_died_after + Duration::from_millis(VISIBILITY_MS),
            "offset {offset} went to B {:?} after A received it",
            *at - a_died_after
        );
    }
    println!(
        "processed {} records, {repeats} repeats, {} dropped by A",
        processed.len(),
        dropped.len()
    );
    let status = ok(addr, "GET", "/v1/groups/workers", None).await;
    assert_eq!(status["committed"], 10_000, "{status}");
    assert_eq!(status["in_flight"], 0, "{status}");
    let (_, metrics) = get(addr, "/metrics").await;
    let redeliveries = sample(
        &metrics,
        "outboxd_consumer_group_redeliveries_total{group=\"workers\"}",
    );
    assert!(
        redeliveries >= dropped.len() as f64,
        "{redeliveries} in\n{metrics}"
    );
    let acks = sample(
        &metrics,
        "outboxd_consumer_group_acks_total{group=\"workers\"}",
    );
    assert_eq!(acks, 10_000.0, "each message is acked once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_restart_loses_no_ack_and_hands_out_no_acked_message_again() {
    // Given a relay with 2,000 events and a consumer acking them in batches.
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = consume_config(&db, &log);
    create_aggregates(&db, 20).await;
    let (mut relay, addr) = start_relay(&config, dir.path(), "relay").await;
    write_events(&db, 4, 500, 20).await;
    wait_served(addr, 2000).await;
    // And 3 messages handed out for 12 hours and never acked (their keys wait behind them).
    let held = receive(addr, "workers", 3, 43_200_000).await;
    assert_eq!(held.len(), 3);
    let acked: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let consumer = {
        let (acked, stop, count) = (acked.clone(), stop.clone(), count.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let body = json!({"max": 50, "visibility_ms": 60_000});
                let Ok(answer) = try_call(
                    addr,
                    "POST",
                    "/v1/groups/workers/receive",
                    Some(TOKEN),
                    Some(&body),
                )
                .await
                else {
                    return;
                };
                if answer.status != 200 {
                    return;
                }
                let messages = answer.json["messages"].as_array().unwrap().clone();
                let ids: Vec<&Value> = messages.iter().map(|m| &m["ack_id"]).collect();
                let Ok(answer) = try_call(
                    addr,
                    "POST",
                    "/v1/groups/workers/ack",
                    Some(TOKEN),
                    Some(&json!({"ack_ids": ids})),
                )
                .await
                else {
                    return;
                };
                if answer.status != 200 {
                    return;
                }
                assert_eq!(answer.json["acked"], messages.len());
                let mut acked = acked.lock().unwrap();
                acked.extend(
                    messages
                        .iter()
                        .map(|m| m["record"]["offset"].as_u64().unwrap()),
                );
                count.store(acked.len(), Ordering::SeqCst);
            }
        })
    };

    // When the relay is killed while the consumer is acking, and started again.
    while count.load(Ordering::SeqCst) < 800 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    consumer.await.unwrap();
    let acked_before = acked.lock().unwrap().clone();
    let (_relay, addr) = start_relay(&config, dir.path(), "relay-again").await;

    // Then `log read --group` and the API agree where the group stands.
    let status = ok(addr, "GET", "/v1/groups/workers", None).await;
    let committed = status["committed"].as_u64().unwrap();
    let path = common::consume::write_config_with_tokens(&config, dir.path(), "cli");
    let (code, stdout, stderr) = run_cli(
        &path,
        &["log", "read", "--group", "workers", "--limit", "1"],
    );
    assert_eq!(code, 0, "{stderr}");
    let first: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(first["offset"].as_u64(), Some(committed));

    // And no acked message is handed out again, while every other one is, at once: those out
    // when the relay stopped too (visibility timeouts are kept in memory only).
    let mut after = HashSet::new();
    while acked_before.len() + after.len() < 2000 {
        let messages = receive(addr, "workers", 100, 60_000).await;
        assert!(
            !messages.is_empty(),
            "messages left unacked are not handed out: {} acked before, {} after",
            acked_before.len(),
            after.len()
        );
        for message in &messages {
            let offset = message["record"]["offset"].as_u64().unwrap();
            assert!(
                !acked_before.contains(&offset),
                "offset {offset} was acked before the restart"
            );
            after.insert(offset);
        }
        ack(addr, "workers", &messages).await;
    }
    assert!(acked_before.len() >= 800);
    for message in &held {
        let offset = message["record"]["offset"].as_u64().unwrap();
        assert!(after.contains(&offset), "held offset {offset} came back");
    }
    let status = ok(addr, "GET", "/v1/groups/workers", None).await;
    assert_eq!(status["committed"], 2000, "{status}");
}
