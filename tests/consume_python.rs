//! `examples/consumer.py`, the Python consumer of the README, against the real relay binary:
//! it processes every event once, in key order, and skips events it processed before when
//! they come again.

mod common;

use common::consume::{TOKEN, consume_config, ok, start_relay, wait_served};
use common::pg::test_db;
use common::relay::{create_aggregates, write_events};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

/// Runs the example for `max` messages of group `g` with its SQLite file in `dir`; returns the
/// events it printed.
fn run_example(addr: SocketAddr, dir: &Path, max: usize) -> Vec<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/consumer.py");
    let output = Command::new("python3")
        .arg(script)
        .arg("g")
        .args(["--db", dir.join("processed.sqlite").to_str().unwrap()])
        .args(["--max", &max.to_string()])
        .env("OUTBOXD_URL", format!("http://{addr}"))
        .env("OUTBOXD_TOKEN", TOKEN)
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_processes_each_event_once_in_key_order() {
    // Given a relay with 200 events on 5 keys.
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = consume_config(&db, &log);
    create_aggregates(&db, 5).await;
    let (_relay, addr) = start_relay(&config, dir.path(), "relay").await;
    write_events(&db, 2, 100, 5).await;
    wait_served(addr, 200).await;

    // When the example consumes them, then it processes all 200, each key in order.
    let dir_path = dir.path().to_owned();
    let printed = tokio::task::spawn_blocking(move || run_example(addr, &dir_path, 200))
        .await
        .unwrap();
    let ids: HashSet<&str> = printed.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!((printed.len(), ids.len()), (200, 200));
    let mut last: HashMap<&str, i64> = HashMap::new();
    for event in &printed {
        let seq = event["payload"]["seq"].as_i64().unwrap();
        let previous = last
            .insert(event["key"].as_str().unwrap(), seq)
            .unwrap_or(0);
        assert_eq!(seq, previous + 1, "{event}");
    }

    // When the group starts over and the example runs again with the same SQLite file, then
    // it acks everything again but processes nothing twice.
    ok(addr, "DELETE", "/v1/groups/g", None).await;
    let dir_path = dir.path().to_owned();
    let again = tokio::task::spawn_blocking(move || run_example(addr, &dir_path, 200))
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    let status = ok(addr, "GET", "/v1/groups/g", None).await;
    assert_eq!(status["committed"], 200, "{status}");
}
