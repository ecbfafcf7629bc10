//! A long writing transaction must not look like a hang: while the visibility guard holds
//! events back, the metrics, `outboxd status` and the log say how many and which transaction
//! holds them.

mod common;

use common::http::{get, sample};
use common::pg::{connect, test_db};
use common::relay::*;
use outboxd::config::SourceMode;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_holding_events_back_shows_in_metrics_status_and_log() {
    // Given a polling relay process
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_in(SourceMode::Poll, &db, &log);
    migrate(&config).await;
    let mut relay = RelayProcess::spawn(&config, dir.path(), "relay", &["run"]);
    let addr = relay.http_addr().await;

    // When a transaction takes an xid and stays open, and an event is committed after it began
    let holder = connect(&db.url).await;
    holder
        .batch_execute("CREATE TABLE side (x int); BEGIN; INSERT INTO side VALUES (1)")
        .await
        .unwrap();
    let pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    connect(&db.url)
        .await
        .execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             VALUES ('order', 'held', 'E', '{}')",
            &[],
        )
        .await
        .unwrap();

    // Then the metrics name the held-back count and the holding transaction's pid and age
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, metrics) = get(addr, "/metrics").await;
        let held = sample(&metrics, "outboxd_held_back_events");
        let holder_pid = sample(&metrics, "outboxd_holding_transaction_pid");
        let age = sample(&metrics, "outboxd_holding_transaction_age_seconds");
        if held >= 1.0 && holder_pid == f64::from(pid) && age > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "held {held}, pid {holder_pid} (want {pid}), age {age}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And `status` says the same
    let path = write_config(&config, dir.path(), "status");
    let (code, stdout, stderr) = run_cli(&path, &["status", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["held_back_events"], 1, "{stdout}");
    assert_eq!(status["holding_transaction"]["pid"], pid, "{stdout}");
    // And the log says it once the hold lasted a while
    relay
        .wait_for_log_line(
            &["WARN", "holds 1 events back", &format!("pid {pid}")],
            WAIT,
        )
        .await;
    assert!(read_log(&log).is_empty(), "the guard let the event through");

    // When the transaction ends, then the event arrives and the metrics clear
    holder.batch_execute("COMMIT").await.unwrap();
    wait_for_events(&[&log], 1, WAIT).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, metrics) = get(addr, "/metrics").await;
        if sample(&metrics, "outboxd_held_back_events") == 0.0
            && sample(&metrics, "outboxd_holding_transaction_pid") == 0.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.kill();
}
