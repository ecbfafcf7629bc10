//! Ordering and exactly-once promises that black-box runs broke (issue #14), each made to
//! happen every time by holding the relay at the moment that matters: a rejected row and its
//! aggregate's later events in one batch, an acknowledgement fenced out after its leader
//! session died, and a clean stop in logical mode.

mod common;

use common::faults::{FaultSink, Faults};
use common::pg::{connect, test_db};
use common::relay::*;
use outboxd::config::{Config, SourceMode};
use outboxd::log::Record;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(60);

/// `aggregate:type` of each record, in log order.
fn names(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| format!("{}:{}", r.event.key, r.event.event_type))
        .collect()
}

/// Inserts one event of `aggregate` and `kind`.
async fn insert(client: &tokio_postgres::Client, aggregate: &str, kind: &str) {
    client
        .execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             VALUES ('t', $1, $2, '{}')",
            &[&aggregate, &kind],
        )
        .await
        .unwrap();
}

/// Polls `probe` every 20 ms until it returns true; panics naming `what` after [`WAIT`].
async fn wait_until<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !probe().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_row_holds_back_the_later_events_of_its_aggregate_in_the_same_batch() {
    // Given a relay with the default on_dead_letter = "block_aggregate"
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_for(&db, &log);
    migrate(&config).await;
    let client = connect(&db.url).await;

    // When one statement writes a row of x1 with bad headers, a good later row of x1, and a
    // row of y
    client
        .batch_execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload, headers) VALUES \
             ('order', 'x1', 'First', '{}', '[1]'), ('order', 'x1', 'Second', '{}', NULL), \
             ('order', 'y', 'One', '{}', NULL)",
        )
        .await
        .unwrap();
    let relay = InProcessRelay::start(&config).await;

    // Then the first row is a dead letter, y flows, and x1's second event waits behind it: a
    // later event of y, fetched after the dead letter was recorded, arrives without it
    wait_for_events(&[&log], 1, WAIT).await;
    wait_until("the dead letter is recorded", || async {
        failed_rows(&db).await == 1
    })
    .await;
    insert(&client, "y", "Two").await;
    wait_for_events(&[&log], 2, WAIT).await;
    assert_eq!(names(&read_log(&log)), vec!["y:One", "y:Two"]);

    // And when an operator retries the dead letter while it is still bad, it fails again and
    // its aggregate still waits
    let path = write_config(&config, dir.path(), "c");
    let id: String = client
        .query_one("SELECT id::text FROM outbox WHERE type = 'First'", &[])
        .await
        .unwrap()
        .get(0);
    let (code, _, stderr) = run_cli(&path, &["dlq", "retry", &id]);
    assert_eq!(code, 0, "{stderr}");
    wait_until("the retried row failed again", || async {
        client
            .query_one(
                "SELECT attempts >= 1 AND failed_at IS NOT NULL FROM outbox WHERE type = 'First'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    })
    .await;
    insert(&client, "y", "Three").await;
    wait_for_events(&[&log], 3, WAIT).await;
    relay.stop().await;
    assert_eq!(names(&read_log(&log)), vec!["y:One", "y:Two", "y:Three"]);
}

/// The leader lock's holder, as the server sees it.
async fn leader_backend(client: &tokio_postgres::Client, key: i64) -> Option<i32> {
    client
        .query_opt(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND objsubid = 1 AND ((classid::int8 << 32) | objid::int8) = $1 \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&key],
        )
        .await
        .unwrap()
        .map(|row| row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_fenced_out_by_a_killed_leader_session_delivers_nothing_twice() {
    // Given a relay that leads and delivers, and whose next publish the test holds
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_for(&db, &log);
    config.relay.lanes = 1;
    migrate(&config).await;
    let faults = Arc::new(Mutex::new(Faults::default()));
    let relay = InProcessRelay::start_with(&config, |inner| FaultSink {
        inner,
        faults: faults.clone(),
    })
    .await;
    let client = connect(&db.url).await;
    insert(&client, "a", "Zero").await;
    wait_for_events(&[&log], 1, WAIT).await;
    let (started_tx, started) = oneshot::channel();
    let (release, release_rx) = oneshot::channel();
    faults.lock().unwrap().hold_once = Some((started_tx, release_rx));

    // When five events are fetched and held in their publish
    client
        .batch_execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             SELECT 't', 'b' || g, 'Step', '{}' FROM generate_series(1, 5) g",
        )
        .await
        .unwrap();
    assert_eq!(started.await.unwrap(), 5);

    // and another session holds a lock that makes their acknowledgement wait
    let mut locker = connect(&db.url).await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE outbox IN SHARE MODE")
        .await
        .unwrap();
    release.send(()).unwrap();
    wait_until("the acknowledgement waits for the table lock", || async {
        client
            .query_one(
                "SELECT count(*) > 0 FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query LIKE '%pg_catalog.pg_locks%'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    })
    .await;

    // and the leader session is terminated before the lock is released
    let key = outboxd::outbox::OutboxTable::new(&config.source).leader_lock_key();
    let leader = leader_backend(&client, key).await.expect("a leader");
    client
        .execute("SELECT pg_terminate_backend($1)", &[&leader])
        .await
        .unwrap();
    lock.commit().await.unwrap();

    // Then the relay leads again, the five rows are marked sent, and a later event arrives
    // behind them with nothing delivered twice
    wait_until("a new leader session", || async {
        leader_backend(&client, key)
            .await
            .is_some_and(|pid| pid != leader)
    })
    .await;
    insert(&client, "c", "Last").await;
    wait_sent_at_least(&db, 7).await;
    let records = read_log(&log);
    relay.stop().await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for record in &records {
        *counts.entry(record.event.id.as_str()).or_default() += 1;
    }
    let twice: Vec<String> = records
        .iter()
        .filter(|r| counts[r.event.id.as_str()] > 1)
        .map(|r| r.event.key.clone())
        .collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    assert_eq!(records.len(), 7, "{:?}", names(&records));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_in_logical_mode_confirms_everything_the_sink_holds() {
    // Given a logical-mode relay process that delivered one event (and confirmed it)
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config: Config = config_in(SourceMode::Logical, &db, &log);
    migrate(&config).await;
    let mut relay = RelayProcess::spawn(&config, dir.path(), "relay", &["run"]);
    let client = connect(&db.url).await;
    insert(&client, "a", "One").await;
    wait_for_events(&[&log], 1, WAIT).await;

    // When a second event is delivered and the relay is stopped at once (standby status
    // updates go out at most once a second, so its confirmation has not gone out yet)
    insert(&client, "a", "Two").await;
    let records = wait_for_events(&[&log], 2, WAIT).await;
    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait_exit(WAIT), Some(0), "{}", relay.log_text());

    // Then the slot is confirmed past the commit of the last event the log holds
    let newest = records[0].iter().map(|r| r.event.position.0).max().unwrap();
    let confirmed: i64 = client
        .query_one(
            "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::int8 FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0);
    drop_slot(&db).await;
    assert!(
        confirmed as u64 > newest,
        "slot confirmed at {confirmed}, the log holds a commit at {newest}"
    );
}
